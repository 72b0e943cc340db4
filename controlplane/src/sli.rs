//! The programming-latency SLI as Kubernetes defines it, and each
//! revision's progress through the fleet.
//!
//! ```text
//!  leader: batch → Start (earliest trigger annotation, else seen) ─┐
//!  replica: admin/rollout write → Start (the write)                 │  events (bounded mpsc, never waits)
//!  sessions: joined / left / acked / nacked / unchanged ────────────┤─────────▶ task ─▶ Tracker (pure, time as input)
//!  head (watch): a revision this replica did not start itself ──────┘                   │
//!                                  metrics: network programming, 50/99/100% ◀───────────┤
//!                                  admin `Convergence` / `Status` ◀──────────────────────┘ (newest KEEP revisions)
//! ```
//!
//! **Where latency starts.** kube-proxy measures
//! `kubeproxy_network_programming_duration_seconds` from the
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation the
//! EndpointSlice controller writes (when the Pod or Service change that
//! moved the endpoints happened), ignoring trigger times from before it
//! started and deletions. A revision here starts at the earliest such
//! annotation among the EndpointSlices its batch changed (upserts only,
//! not before this leader started: the first sync of a new leader carries
//! every object); without one, at when the control plane saw the change
//! (the manifest look or the watch event); for a revision an admin write
//! or the rollout commits, at the write. The earliest trigger is the
//! batch's worst case: kube-proxy records one observation per changed
//! EndpointSlice, here one per node and revision — so a batch of several
//! slices is one observation per node (of the oldest change), not several.
//!
//! **Where it ends.** When a node's agent acks that revision or a newer
//! one (revisions coalesce: an agent that skipped to a newer head holds
//! this change too). Each such ack is one observation of
//! `setpoint_network_programming_duration_seconds` — the same meaning as
//! kube-proxy's, where every node's proxy observes each change once — with
//! kube-proxy's buckets (plus finer ones below 250 ms).
//!
//! **Which nodes count.** Those with an agent stream to this replica when
//! the revision became its head. A node leaves the count when it turns out
//! to have nothing to program (its state did not change: `unchanged`; or
//! it is no node of the cluster) or when its stream ends (`left`). So
//! "100% acked" is reachable, and a node that nacks stays counted and
//! named until it acks. The time until 50%, 99% and 100% of the counted
//! nodes acked is observed once per revision in
//! `setpoint_revision_convergence_seconds{share}`.
//!
//! **Bounds.** The newest [`KEEP`] revisions are tracked; a revision's
//! record holds its pending set (a copy of the connected set when the
//! revision is tracked, hashed: every ack removes a name), one latency per
//! ack and a few names. Events that do not
//! fit the channel are dropped and counted (`setpoint_sli_events_dropped`).
//!
//! **Replicas.** Each replica measures the agents connected to it. A
//! follower learns a revision from the store (NOTIFY or poll), so its
//! start is when it learnt of it: later than the truth.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use imbl::OrdSet;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// The annotation the EndpointSlice controller stamps with the time of the
/// change that triggered its last update (RFC 3339).
pub const TRIGGER_ANNOTATION: &str = setpoint_kube::TRIGGER_ANNOTATION;

/// Revisions whose progress is kept.
pub const KEEP: usize = 64;

/// Events waiting for the tracker at most; beyond, dropped and counted.
pub const MAX_PENDING_EVENTS: usize = 1 << 16;

/// Nodes named per revision (waiting, slowest).
pub const NAMED: usize = 5;

/// The shares of counted nodes whose time to ack is observed per revision.
pub const SHARES: [(f64, &str); 3] = [(0.5, "0.5"), (0.99, "0.99"), (1.0, "1")];

/// What a revision's latency is measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartedBy {
    /// An EndpointSlice's last-change-trigger-time annotation.
    Trigger,
    /// When the control plane saw the change.
    Seen,
    /// An admin write or the rollout committed it.
    Write,
}

impl StartedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            StartedBy::Trigger => "trigger",
            StartedBy::Seen => "seen",
            StartedBy::Write => "write",
        }
    }
}

/// Where a revision's clock starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub at: SystemTime,
    pub by: StartedBy,
}

pub use setpoint_kube::{parse_time, trigger_time};

/// The start of a batch: the earliest trigger time among its changed
/// EndpointSlices that is not before `not_before` (when this leader
/// started: older ones belong to changes some earlier process programmed)
/// nor after `seen_at` (a change is not triggered after it was seen: such
/// an annotation is a skewed clock or anyone's manifest, and would make
/// the latency look shorter than it was), else `seen_at`.
pub fn batch_start(
    triggers: impl IntoIterator<Item = SystemTime>,
    seen_at: SystemTime,
    not_before: SystemTime,
) -> Start {
    match triggers
        .into_iter()
        .filter(|t| *t >= not_before && *t <= seen_at)
        .min()
    {
        Some(at) => Start {
            at,
            by: StartedBy::Trigger,
        },
        None => Start {
            at: seen_at,
            by: StartedBy::Seen,
        },
    }
}

/// What the tracker is told; `at` is when it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A revision is about to become the head (before the head moves).
    Started {
        revision: u64,
        start: Start,
    },
    /// The head is `revision` (seen on the head watch).
    Head {
        revision: u64,
        at: SystemTime,
    },
    Joined {
        node: Arc<str>,
        session: u64,
    },
    Left {
        node: Arc<str>,
        session: u64,
    },
    Acked {
        node: Arc<str>,
        revision: u64,
        at: SystemTime,
    },
    Nacked {
        node: Arc<str>,
        revision: u64,
    },
    /// The node holds the state of `revision` already (or has none): it
    /// has nothing to program up to `revision`.
    Unchanged {
        node: Arc<str>,
        revision: u64,
    },
}

/// What the tracker asks the metrics to record.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// One node programmed one revision's change, this long after its start.
    Programming(Duration),
    /// `share` of a revision's counted nodes had acked this long after its start.
    Converged {
        share: &'static str,
        after: Duration,
    },
}

/// One revision's progress.
#[derive(Clone, Debug)]
struct Progress {
    revision: u64,
    start: Start,
    /// Counted nodes that have not acked: hashed, every ack removes one
    /// (a persistent ordered set copied a path per removal, 2% of the
    /// control plane's CPU at 5,000 agents); named in order when reported.
    pending: HashSet<Arc<str>>,
    /// Latencies of the acks so far, ascending.
    acks: Vec<Duration>,
    /// The slowest acks, slowest first, at most NAMED.
    slowest: Vec<(Arc<str>, Duration)>,
    /// Pending nodes whose last answer was a nack.
    failing: OrdSet<Arc<str>>,
    nacks: u64,
    unchanged: u64,
    left: u64,
    /// Per share of SHARES, when it was reached.
    reached: [Option<Duration>; 3],
}

/// A revision's progress as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub revision: u64,
    pub start: Start,
    /// Counted nodes: acked + pending.
    pub total: u64,
    pub acked: u64,
    pub pending: u64,
    pub nacks: u64,
    pub unchanged: u64,
    pub left: u64,
    /// Per share of [`SHARES`] (50%, 99%, 100%), when reached.
    pub reached: [Option<Duration>; 3],
    /// Pending nodes, failing ones first, at most [`NAMED`].
    pub waiting: Vec<String>,
    /// Pending nodes whose last answer was a nack, at most [`NAMED`].
    pub failing: Vec<String>,
    /// The slowest acks, slowest first, at most [`NAMED`].
    pub slowest: Vec<(String, Duration)>,
}

impl Report {
    pub fn complete(&self) -> bool {
        self.pending == 0
    }
}

/// Every revision's progress, fed [`Event`]s; pure: time is in the events.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Nodes with a stream now, and the session that counts.
    sessions: BTreeMap<Arc<str>, u64>,
    connected: HashSet<Arc<str>>,
    /// Ascending by revision, at most KEEP.
    revisions: VecDeque<Progress>,
}

fn since(start: Start, at: SystemTime) -> Duration {
    // A trigger stamped by a clock ahead of ours counts as no time.
    at.duration_since(start.at).unwrap_or_default()
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Applies `event`; what it observed goes to `out`.
    pub fn apply(&mut self, event: Event, out: &mut Vec<Observation>) {
        match event {
            Event::Started { revision, start } => {
                if let Some(p) = self.get_mut(revision) {
                    // Seen on the head watch first: the leader's start is the truth.
                    if p.acks.is_empty() {
                        p.start = start;
                    }
                } else {
                    self.track(revision, start);
                }
            }
            Event::Head { revision, at } => {
                if self.get_mut(revision).is_none() {
                    self.track(
                        revision,
                        Start {
                            at,
                            by: StartedBy::Seen,
                        },
                    );
                }
            }
            Event::Joined { node, session } => {
                self.sessions.insert(node.clone(), session);
                self.connected.insert(node);
            }
            Event::Left { node, session } => {
                if self.sessions.get(&node) != Some(&session) {
                    // A newer stream of the node took over: it still counts.
                    return;
                }
                self.sessions.remove(&node);
                self.connected.remove(&node);
                for p in &mut self.revisions {
                    if p.pending.remove(&node) {
                        p.failing.remove(&node);
                        p.left += 1;
                        p.check(out);
                    }
                }
            }
            Event::Acked { node, revision, at } => {
                for p in self.answered_by(revision) {
                    if !p.pending.remove(&node) {
                        break;
                    }
                    p.failing.remove(&node);
                    let latency = since(p.start, at);
                    out.push(Observation::Programming(latency));
                    let i = p.acks.partition_point(|a| *a <= latency);
                    p.acks.insert(i, latency);
                    let j = p.slowest.partition_point(|(_, a)| *a >= latency);
                    if j < NAMED {
                        p.slowest.insert(j, (node.clone(), latency));
                        p.slowest.truncate(NAMED);
                    }
                    p.check(out);
                }
            }
            Event::Nacked { node, revision } => {
                for p in self.answered_by(revision) {
                    if !p.pending.contains(&node) {
                        break;
                    }
                    p.nacks += 1;
                    p.failing.insert(node.clone());
                }
            }
            Event::Unchanged { node, revision } => {
                for p in self.answered_by(revision) {
                    if !p.pending.remove(&node) {
                        break;
                    }
                    p.failing.remove(&node);
                    p.unchanged += 1;
                    p.check(out);
                }
            }
        }
    }

    /// The revisions an answer about `revision` answers, newest first.
    ///
    /// A node is pending in a run of consecutive revisions ending with the
    /// newest created while it was connected: each was created with it
    /// connected, an answer resolves every older one, and its stream's end
    /// resolves all. So a walk stops at the first revision that does not
    /// hold it pending — an ack costs the revisions it answers, not all
    /// KEEP of them.
    fn answered_by(&mut self, revision: u64) -> impl Iterator<Item = &mut Progress> {
        self.revisions
            .iter_mut()
            .rev()
            .skip_while(move |p| p.revision > revision)
    }

    fn get_mut(&mut self, revision: u64) -> Option<&mut Progress> {
        self.revisions.iter_mut().find(|p| p.revision == revision)
    }

    /// Starts tracking `revision` with every connected node counted. A
    /// revision older than the oldest kept is not tracked.
    fn track(&mut self, revision: u64, start: Start) {
        let p = Progress {
            revision,
            start,
            pending: self.connected.clone(),
            acks: Vec::new(),
            slowest: Vec::new(),
            failing: OrdSet::new(),
            nacks: 0,
            unchanged: 0,
            left: 0,
            reached: [None; 3],
        };
        let at = self.revisions.partition_point(|q| q.revision < revision);
        if at == 0 && self.revisions.len() >= KEEP {
            return;
        }
        self.revisions.insert(at, p);
        while self.revisions.len() > KEEP {
            self.revisions.pop_front();
        }
    }

    /// The newest `limit` revisions' progress, newest first.
    pub fn reports(&self, limit: usize) -> Vec<Report> {
        self.revisions
            .iter()
            .rev()
            .take(limit)
            .map(Progress::report)
            .collect()
    }

    /// Counted nodes that have not acked the newest tracked revision.
    pub fn newest_pending(&self) -> usize {
        self.revisions.back().map(|p| p.pending.len()).unwrap_or(0)
    }
}

impl Progress {
    /// Records the shares reached by now.
    fn check(&mut self, out: &mut Vec<Observation>) {
        let acked = self.acks.len();
        let total = acked + self.pending.len();
        if total == 0 {
            return;
        }
        for (i, (share, label)) in SHARES.iter().enumerate() {
            if self.reached[i].is_some() {
                continue;
            }
            // The k-th fastest ack reaches `share` of `total` (k ≥ 1).
            let needed = ((share * total as f64).ceil() as usize).clamp(1, total);
            if acked >= needed
                && let Some(after) = self.acks.get(needed - 1).copied()
            {
                self.reached[i] = Some(after);
                out.push(Observation::Converged {
                    share: label,
                    after,
                });
            }
        }
    }

    fn report(&self) -> Report {
        let names = |set: &OrdSet<Arc<str>>| -> Vec<String> {
            set.iter().take(NAMED).map(|n| n.to_string()).collect()
        };
        let failing = names(&self.failing);
        let mut waiting = failing.clone();
        // The first few pending names in order, without sorting them all.
        let mut first: BTreeSet<&str> = BTreeSet::new();
        for n in self.pending.iter().filter(|n| !self.failing.contains(*n)) {
            first.insert(n);
            if first.len() > NAMED {
                first.pop_last();
            }
        }
        waiting.extend(
            first
                .into_iter()
                .take(NAMED.saturating_sub(waiting.len()))
                .map(str::to_string),
        );
        Report {
            revision: self.revision,
            start: self.start,
            total: (self.acks.len() + self.pending.len()) as u64,
            acked: self.acks.len() as u64,
            pending: self.pending.len() as u64,
            nacks: self.nacks,
            unchanged: self.unchanged,
            left: self.left,
            reached: self.reached,
            waiting,
            failing,
            slowest: self
                .slowest
                .iter()
                .map(|(n, d)| (n.to_string(), *d))
                .collect(),
        }
    }
}

/// The handle sessions, the leader and the admin API share. Cheap to clone.
#[derive(Clone)]
pub struct Sli {
    events: mpsc::Sender<Event>,
    tracker: Arc<Mutex<Tracker>>,
    metrics: Arc<Metrics>,
}

impl Sli {
    /// Starts the tracker task (on the current runtime), following `head`
    /// for revisions nobody announced; it ends when the last handle is
    /// dropped.
    pub fn start(metrics: Arc<Metrics>, head: watch::Receiver<u64>) -> Sli {
        Sli::start_bounded(metrics, head, MAX_PENDING_EVENTS)
    }

    fn start_bounded(metrics: Arc<Metrics>, mut head: watch::Receiver<u64>, bound: usize) -> Sli {
        let (events, mut rx) = mpsc::channel::<Event>(bound.max(1));
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        let (shared, task_metrics) = (tracker.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1024);
            let mut observed = Vec::new();
            // A head present before the task started is no change to time.
            head.borrow_and_update();
            let mut following = true;
            loop {
                let moved = tokio::select! {
                    n = rx.recv_many(&mut batch, 1024) => {
                        if n == 0 {
                            return;
                        }
                        None
                    }
                    changed = head.changed(), if following => match changed {
                        Ok(()) => Some(*head.borrow_and_update()),
                        // The head's sender is gone: events still count.
                        Err(_) => {
                            following = false;
                            None
                        }
                    },
                };
                // A leader announces its revision before moving the head:
                // what is queued is taken first, so its start is known.
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                    if batch.len() >= 4096 {
                        break;
                    }
                }
                if let Some(revision) = moved {
                    batch.push(Event::Head {
                        revision,
                        at: SystemTime::now(),
                    });
                }
                let Ok(mut t) = shared.lock() else { return };
                for event in batch.drain(..) {
                    t.apply(event, &mut observed);
                }
                task_metrics
                    .convergence_pending_nodes
                    .set(i64::try_from(t.newest_pending()).unwrap_or(i64::MAX));
                drop(t);
                for o in observed.drain(..) {
                    match o {
                        Observation::Programming(d) => {
                            task_metrics.programming.observe(d.as_secs_f64())
                        }
                        Observation::Converged { share, after } => task_metrics
                            .convergence
                            .get_or_create(&crate::metrics::ShareLabel { share })
                            .observe(after.as_secs_f64()),
                    }
                }
            }
        });
        Sli {
            events,
            tracker,
            metrics,
        }
    }

    fn send(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.metrics.sli_events_dropped.inc();
        }
    }

    /// `revision` is about to become the head, measured from `start`. Call
    /// before moving the head.
    pub fn started(&self, revision: u64, start: Start) {
        self.send(Event::Started { revision, start });
    }

    pub fn joined(&self, node: impl Into<Arc<str>>, session: u64) {
        self.send(Event::Joined {
            node: node.into(),
            session,
        });
    }

    pub fn left(&self, node: impl Into<Arc<str>>, session: u64) {
        self.send(Event::Left {
            node: node.into(),
            session,
        });
    }

    pub fn acked(&self, node: impl Into<Arc<str>>, revision: u64) {
        self.send(Event::Acked {
            node: node.into(),
            revision,
            at: SystemTime::now(),
        });
    }

    pub fn nacked(&self, node: impl Into<Arc<str>>, revision: u64) {
        self.send(Event::Nacked {
            node: node.into(),
            revision,
        });
    }

    pub fn unchanged(&self, node: impl Into<Arc<str>>, revision: u64) {
        self.send(Event::Unchanged {
            node: node.into(),
            revision,
        });
    }

    /// The newest `limit` revisions' progress, newest first.
    pub fn reports(&self, limit: usize) -> Vec<Report> {
        self.tracker
            .lock()
            .map(|t| t.reports(limit))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_compute::ClusterObject;
    use std::time::UNIX_EPOCH;

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn start(at: u64) -> Start {
        Start {
            at: t(at),
            by: StartedBy::Seen,
        }
    }

    fn node(n: &str) -> Arc<str> {
        n.into()
    }

    /// A tracker with `nodes` connected (session 1 each).
    fn fleet(nodes: &[&str]) -> Tracker {
        let mut tracker = Tracker::new();
        let mut out = Vec::new();
        for n in nodes {
            tracker.apply(
                Event::Joined {
                    node: node(n),
                    session: 1,
                },
                &mut out,
            );
        }
        tracker
    }

    fn run(tracker: &mut Tracker, events: Vec<Event>) -> Vec<Observation> {
        let mut out = Vec::new();
        for e in events {
            tracker.apply(e, &mut out);
        }
        out
    }

    fn ack(n: &str, revision: u64, at: u64) -> Event {
        Event::Acked {
            node: node(n),
            revision,
            at: t(at),
        }
    }

    #[test]
    fn trigger_annotations_parse_as_the_controller_writes_them() {
        let at = |s: &str| parse_time(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default());
        assert_eq!(
            at("2026-12-07T17:19:57Z"),
            Some(Duration::from_secs(1_796_663_997))
        );
        assert_eq!(
            at("2026-12-07T17:19:57.25Z"),
            Some(Duration::from_millis(1_796_663_997_250))
        );
        assert_eq!(
            at("2026-12-07T18:19:57+01:00"),
            Some(Duration::from_secs(1_796_663_997))
        );
        for bad in ["", "yesterday", "1969-12-31T23:59:59Z", &"9".repeat(100)] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
        let slice: ClusterObject = ClusterObject::EndpointSlice(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-abc", "namespace": "shop",
                    "annotations": {TRIGGER_ANNOTATION: "2026-12-07T17:19:57Z"}},
                "addressType": "IPv4", "endpoints": []
            }))
            .expect("slice"),
        );
        assert_eq!(trigger_time(&slice), parse_time("2026-12-07T17:19:57Z"));
    }

    #[test]
    fn a_batch_starts_at_its_earliest_trigger_after_the_leader_started() {
        let (seen, leader) = (t(5000), t(1000));
        assert_eq!(batch_start([], seen, leader), start(5000));
        assert_eq!(
            batch_start([t(4000), t(3000), t(4500)], seen, leader),
            Start {
                at: t(3000),
                by: StartedBy::Trigger
            }
        );
        // Older than this leader: a change an earlier process programmed.
        assert_eq!(batch_start([t(500)], seen, leader), start(5000));
        assert_eq!(batch_start([t(500), t(2000)], seen, leader).at, t(2000));
        // After it was seen: a skewed clock or a made-up annotation.
        assert_eq!(batch_start([t(9000)], seen, leader), start(5000));
        assert_eq!(batch_start([t(9000), t(4000)], seen, leader).at, t(4000));
    }

    #[test]
    fn shares_are_reached_by_the_kth_fastest_ack() {
        let nodes: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut tracker = fleet(&names);
        run(
            &mut tracker,
            vec![Event::Started {
                revision: 7,
                start: start(0),
            }],
        );
        let mut out = Vec::new();
        // Node i acks at 10·(i+1) ms.
        for (i, n) in names.iter().enumerate() {
            out.extend(run(&mut tracker, vec![ack(n, 7, 10 * (i as u64 + 1))]));
        }
        let converged: Vec<(&str, Duration)> = out
            .iter()
            .filter_map(|o| match o {
                Observation::Converged { share, after } => Some((*share, *after)),
                _ => None,
            })
            .collect();
        assert_eq!(
            converged,
            [("0.5", ms(500)), ("0.99", ms(990)), ("1", ms(1000))]
        );
        let programming = out
            .iter()
            .filter(|o| matches!(o, Observation::Programming(_)))
            .count();
        assert_eq!(programming, 100);
        let r = &tracker.reports(1)[0];
        assert!(r.complete());
        assert_eq!((r.total, r.acked), (100, 100));
        assert_eq!(r.slowest[0], ("n099".to_string(), ms(1000)));
        assert_eq!(r.slowest.len(), NAMED);
    }

    /// An ack of a newer revision programs the older ones too (coalescing),
    /// each observed from its own start.
    #[test]
    fn a_newer_ack_covers_older_revisions() {
        let mut tracker = fleet(&["a", "b"]);
        let out = run(
            &mut tracker,
            vec![
                Event::Started {
                    revision: 1,
                    start: start(0),
                },
                Event::Started {
                    revision: 2,
                    start: start(100),
                },
                ack("a", 2, 300),
            ],
        );
        // One of two: half of each revision, at its own latency.
        assert_eq!(
            out,
            [
                Observation::Programming(ms(200)),
                Observation::Converged {
                    share: "0.5",
                    after: ms(200)
                },
                Observation::Programming(ms(300)),
                Observation::Converged {
                    share: "0.5",
                    after: ms(300)
                },
            ]
        );
        let reports = tracker.reports(10);
        assert_eq!(
            reports.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [2, 1]
        );
        assert!(reports.iter().all(|r| r.acked == 1 && r.pending == 1));
        assert!(
            reports
                .iter()
                .all(|r| r.reached[0].is_some() && r.reached[2].is_none())
        );
        // An ack of revision 1 does not answer for 2.
        run(&mut tracker, vec![ack("b", 1, 400)]);
        let reports = tracker.reports(10);
        assert_eq!((reports[0].pending, reports[1].pending), (1, 0));
        assert_eq!(reports[0].waiting, ["b"]);
    }

    /// Nodes with nothing to program and nodes that left stop counting;
    /// a nacking node stays counted and is named first.
    #[test]
    fn unchanged_and_departed_nodes_leave_the_count_failing_ones_stay() {
        let mut tracker = fleet(&["a", "b", "c", "d"]);
        let out = run(
            &mut tracker,
            vec![
                Event::Started {
                    revision: 3,
                    start: start(0),
                },
                Event::Unchanged {
                    node: node("a"),
                    revision: 3,
                },
                Event::Nacked {
                    node: node("d"),
                    revision: 3,
                },
                ack("b", 3, 50),
            ],
        );
        // b is 1 of 3 counted: not yet half.
        assert!(
            !out.iter()
                .any(|o| matches!(o, Observation::Converged { .. }))
        );
        let r = &tracker.reports(1)[0];
        assert_eq!((r.total, r.acked, r.unchanged, r.nacks), (3, 1, 1, 1));
        assert_eq!(r.failing, ["d"]);
        assert_eq!(r.waiting, ["d", "c"]);
        // c's stream ends: 1 of 2, half reached at b's ack.
        let out = run(
            &mut tracker,
            vec![Event::Left {
                node: node("c"),
                session: 1,
            }],
        );
        assert_eq!(
            out,
            [Observation::Converged {
                share: "0.5",
                after: ms(50)
            }]
        );
        // d's retry succeeds.
        let out = run(&mut tracker, vec![ack("d", 3, 900)]);
        assert_eq!(
            out,
            [
                Observation::Programming(ms(900)),
                Observation::Converged {
                    share: "0.99",
                    after: ms(900)
                },
                Observation::Converged {
                    share: "1",
                    after: ms(900)
                },
            ]
        );
        let r = &tracker.reports(1)[0];
        assert!(r.complete() && r.failing.is_empty());
        assert_eq!((r.total, r.left), (2, 1));
    }

    /// A stale session's end does not drop a node whose newer stream lives;
    /// a node that connects after a revision is not counted for it.
    #[test]
    fn sessions_count_from_when_the_revision_became_head() {
        let mut tracker = fleet(&["a"]);
        run(
            &mut tracker,
            vec![
                Event::Joined {
                    node: node("a"),
                    session: 2,
                },
                Event::Started {
                    revision: 1,
                    start: start(0),
                },
                Event::Joined {
                    node: node("late"),
                    session: 1,
                },
                Event::Left {
                    node: node("a"),
                    session: 1,
                },
            ],
        );
        let r = &tracker.reports(1)[0];
        assert_eq!((r.total, r.pending, r.left), (1, 1, 0));
        assert_eq!(run(&mut tracker, vec![ack("late", 1, 10)]), []);
    }

    /// The head watch names a revision nobody announced (a follower): it
    /// starts then; the leader's announcement, when it comes before any
    /// ack, wins.
    #[test]
    fn the_leaders_start_wins_over_the_head_watch() {
        let mut tracker = fleet(&["a", "b"]);
        run(
            &mut tracker,
            vec![
                Event::Head {
                    revision: 4,
                    at: t(500),
                },
                Event::Started {
                    revision: 4,
                    start: Start {
                        at: t(100),
                        by: StartedBy::Trigger,
                    },
                },
                Event::Head {
                    revision: 4,
                    at: t(600),
                },
                Event::Head {
                    revision: 5,
                    at: t(700),
                },
            ],
        );
        let reports = tracker.reports(10);
        assert_eq!(reports[0].start, start(700));
        assert_eq!(reports[1].start.at, t(100));
        assert_eq!(reports[1].start.by, StartedBy::Trigger);
    }

    #[test]
    fn only_the_newest_revisions_are_kept() {
        let mut tracker = fleet(&["a"]);
        for r in 1..=(KEEP as u64 + 10) {
            run(
                &mut tracker,
                vec![Event::Started {
                    revision: r,
                    start: start(r),
                }],
            );
        }
        // Older than everything kept: not tracked.
        run(
            &mut tracker,
            vec![Event::Started {
                revision: 2,
                start: start(2),
            }],
        );
        let reports = tracker.reports(usize::MAX);
        assert_eq!(reports.len(), KEEP);
        assert_eq!(reports.last().map(|r| r.revision), Some(11));
        assert_eq!(tracker.newest_pending(), 1);
        // One ack answers every kept revision.
        let out = run(&mut tracker, vec![ack("a", KEEP as u64 + 10, 10_000)]);
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Observation::Programming(_)))
                .count(),
            KEEP
        );
        assert_eq!(tracker.newest_pending(), 0);
    }

    /// Through the task: events in, metrics out, reports for the admin API.
    #[tokio::test]
    async fn the_task_feeds_metrics_and_reports() {
        let metrics = Metrics::new();
        let (head, rx) = watch::channel(0);
        let sli = Sli::start(metrics.clone(), rx);
        sli.joined("a", 1);
        sli.started(
            1,
            Start {
                at: SystemTime::now() - Duration::from_millis(20),
                by: StartedBy::Trigger,
            },
        );
        head.send_replace(1);
        sli.acked("a", 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = sli.reports(5);
            if r.first().is_some_and(Report::complete) {
                assert_eq!(r[0].start.by, StartedBy::Trigger);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{r:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = metrics.encode();
        assert!(
            text.contains("setpoint_network_programming_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("setpoint_revision_convergence_seconds_count{share=\"1\"} 1"),
            "{text}"
        );
    }
}
