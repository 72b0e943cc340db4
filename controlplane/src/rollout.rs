//! Progressive rollout (`serve --rollout canary`): a new revision reaches
//! the canary nodes first; the rest get it once every canary acked it and
//! the soak time passed without failures. Too many failures halt the
//! rollout and roll the failing canaries back to the last good revision.
//!
//! ```text
//!             commit R                 all canaries acked R, soak passed
//!  Idle{good} ───────▶ Canary{R, good} ─────────────────────────────────▶ Idle{good: R}
//!      ▲                  │    ▲  commit R2 (restart with the newest; failed canaries released)
//!      │                  │    └──────────────────────┐
//!      │                  │ failures ≥ threshold       │
//!      │                  └──────────────────────▶ Halted{R, good, failed}
//! ```
//!
//! Mechanism, all on the store's pins: non-canary nodes are held — pinned
//! at their current state (reason `rollout: …`) — before every sync that
//! may commit, so a commit reaches only the unpinned canaries. Promotion
//! resumes the held nodes (their computed states are the target's); a
//! halt is a rollback of the failing canaries to `good`. The stream needs
//! no change. [`Machine`] is the pure state machine (time in
//! milliseconds as input); [`Rollout`] runs it against the store from the
//! leader loop, which is the only writer, so nothing races a hold.
//!
//! Operators keep control: `setpointctl resume` releases held nodes (they
//! follow the computed head at once: an override), `rollback` and `pause`
//! pin what they name (the rollout never releases those pins); the next
//! sync holds released non-canaries again at the head. A sync that ends up
//! committing nothing leaves its hold in place (same states, shown as
//! pinned) until the next revision's promotion.
//! Nodes new to the cluster have no state to hold and get the revision
//! that introduces them. The phase lives in the leader's memory: a new
//! leader starts idle (holds persist in the store) and its first commit
//! rolls out like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use setpoint_store::{AgentResult, Epoch, RevisionId, RollbackRequest, Store};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// The reason prefix of every pin the rollout writes: pins without it are
/// an operator's, and the rollout never releases them.
pub const REASON_PREFIX: &str = "rollout: ";

/// The labels of every Node among `objects`, by node name.
pub fn node_labels(
    objects: &[setpoint_compute::ClusterObject],
) -> BTreeMap<String, BTreeMap<String, String>> {
    objects
        .iter()
        .filter_map(|o| match o {
            setpoint_compute::ClusterObject::Node(n) => Some((
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// How many nodes are canaries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Share {
    /// A percentage of the candidates (rounded up, at least one node).
    Percent(f64),
    /// This many candidates.
    Count(usize),
}

/// Why a `--canary-share` does not parse.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ShareError {
    #[error("{0:?}: expected a percentage like 5%")]
    NotAPercentage(String),
    #[error("{0:?}: the share must be in (0%, 100%]")]
    PercentageOutOfRange(String),
    #[error("{0:?}: expected a node count or a percentage like 5%")]
    NotACount(String),
    #[error("the canary count must be at least 1")]
    NoCanaries,
}

impl std::str::FromStr for Share {
    type Err = ShareError;
    fn from_str(s: &str) -> Result<Share, ShareError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| ShareError::NotAPercentage(s.to_string()))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(ShareError::PercentageOutOfRange(s.to_string()));
            }
            Ok(Share::Percent(p))
        } else {
            let n: usize = s
                .parse()
                .map_err(|_| ShareError::NotACount(s.to_string()))?;
            if n == 0 {
                return Err(ShareError::NoCanaries);
            }
            Ok(Share::Count(n))
        }
    }
}

/// A `key=value` Node label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    pub value: String,
}

/// A `--canary-selector` that is not `key=value`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0:?}: expected key=value")]
pub struct LabelSelectorError(String);

impl std::str::FromStr for LabelSelector {
    type Err = LabelSelectorError;
    fn from_str(s: &str) -> Result<LabelSelector, LabelSelectorError> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(LabelSelector {
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            }),
            _ => Err(LabelSelectorError(s.to_string())),
        }
    }
}

/// `serve --rollout canary` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutConfig {
    /// How many candidates are canaries; `None`: all candidates when a
    /// selector is given, else 5%.
    pub share: Option<Share>,
    /// Candidates are the nodes with all these labels (all nodes if none).
    pub selector: Vec<LabelSelector>,
    /// How long every canary must have held the revision, without a
    /// failure, before the rest get it.
    pub soak: Duration,
    /// This many failing canaries (a nack after the rollout started, or
    /// silence after acking) halt the rollout.
    pub failure_threshold: usize,
    /// A canary that acked the target and has not been heard from (ack,
    /// heartbeat) for longer than this has failed: the revision may have
    /// cut its path to the control plane.
    pub canary_silence: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            share: None,
            selector: Vec::new(),
            soak: Duration::from_secs(30),
            failure_threshold: 1,
            canary_silence: Duration::from_secs(30),
        }
    }
}

/// Deterministic and stable: candidates ordered by SHA-256 of their name
/// (a node keeps its place whatever other nodes come and go), the first
/// `share` of them.
pub fn choose_canaries(
    config: &RolloutConfig,
    nodes: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeSet<String> {
    let mut candidates: Vec<([u8; 32], &String)> = nodes
        .iter()
        .filter(|(_, labels)| {
            config
                .selector
                .iter()
                .all(|s| labels.get(&s.key) == Some(&s.value))
        })
        .map(|(name, _)| (Sha256::digest(name.as_bytes()).into(), name))
        .collect();
    candidates.sort();
    let share = config.share.unwrap_or(if config.selector.is_empty() {
        Share::Percent(5.0)
    } else {
        Share::Percent(100.0)
    });
    let count = match share {
        Share::Count(n) => n,
        Share::Percent(p) => (candidates.len() as f64 * p / 100.0).ceil() as usize,
    }
    .max(1)
    .min(candidates.len());
    candidates
        .into_iter()
        .take(count)
        .map(|(_, n)| n.clone())
        .collect()
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing in flight; `good` is the newest revision every node may have
    /// (`None` before the first).
    Idle { good: Option<u64> },
    /// `target` is on the canaries; the rest are held at `good`.
    Canary {
        target: u64,
        good: Option<u64>,
        started_ms: i64,
        /// Since when every canary has acked `target`.
        acked_ms: Option<i64>,
    },
    /// `target` failed on `failed` (rolled back to `good`); the rest stay
    /// held until a newer revision.
    Halted {
        target: u64,
        good: Option<u64>,
        failed: BTreeSet<String>,
        reason: String,
    },
}

/// One canary as the store reports it for the rollout's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryReport {
    pub node: String,
    /// Its agent applied the target's state (digest equal).
    pub acked: bool,
    /// Its agent nacked since the rollout started: the error.
    pub failure: Option<String>,
    /// When its agent was last heard from (Unix ms; `None`: never).
    pub contact_ms: Option<i64>,
}

/// What the driver must do after an observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Move the rest to `target`.
    Promote {
        target: u64,
    },
    /// Roll `nodes` back to `to` (nothing to roll back to when `None`).
    Halt {
        target: u64,
        to: Option<u64>,
        nodes: BTreeSet<String>,
        reason: String,
    },
}

/// The pure state machine: no I/O, time as an input.
///
/// A canary fails by a nack, or by silence: once it acked the target it
/// must be heard from (ack, heartbeat) at least every `silence_ms`, and
/// the soak ends only when every canary was heard from after it — so a
/// canary stays connected and heartbeating through the whole soak, or
/// the rollout halts. (Silence is judged when observed: the leader ticks
/// about once a second.)
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub phase: Phase,
    pub soak_ms: i64,
    pub failure_threshold: usize,
    pub silence_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Machine {
    pub fn new(good: Option<u64>, config: &RolloutConfig) -> Machine {
        Machine {
            phase: Phase::Idle { good },
            soak_ms: millis(config.soak),
            failure_threshold: config.failure_threshold.max(1),
            silence_ms: millis(config.canary_silence),
        }
    }

    /// Why `r` failed, if it did: its nack, or its silence since acking.
    fn failure(&self, r: &CanaryReport, now_ms: i64) -> Option<String> {
        if let Some(error) = &r.failure {
            return Some(error.clone());
        }
        if !r.acked {
            return None;
        }
        match r.contact_ms {
            None => Some("acked but never heard from".to_string()),
            Some(heard) if now_ms.saturating_sub(heard) > self.silence_ms => Some(format!(
                "silent for {} ms after acking (bound {} ms): disconnected or not heartbeating",
                now_ms.saturating_sub(heard),
                self.silence_ms
            )),
            Some(_) => None,
        }
    }

    fn good(&self) -> Option<u64> {
        match &self.phase {
            Phase::Idle { good } | Phase::Canary { good, .. } | Phase::Halted { good, .. } => *good,
        }
    }

    /// A revision was committed: the rollout (re)starts with it — a newer
    /// revision replaces an unfinished target, never skipping the canary.
    /// Returns the canaries a halted rollout had rolled back, to release.
    pub fn committed(&mut self, revision: u64, now_ms: i64) -> BTreeSet<String> {
        let released = match &mut self.phase {
            Phase::Halted { failed, .. } => std::mem::take(failed),
            _ => BTreeSet::new(),
        };
        self.phase = Phase::Canary {
            target: revision,
            good: self.good(),
            started_ms: now_ms,
            acked_ms: None,
        };
        released
    }

    /// Looks at the canaries' reports.
    pub fn observe(&mut self, reports: &[CanaryReport], now_ms: i64) -> Step {
        let Phase::Canary { target, good, .. } = self.phase else {
            return Step::Wait;
        };
        let failures: Vec<(&str, String)> = reports
            .iter()
            .filter_map(|r| {
                self.failure(r, now_ms)
                    .map(|reason| (r.node.as_str(), reason))
            })
            .collect();
        let failed: BTreeSet<String> = failures.iter().map(|(n, _)| n.to_string()).collect();
        let Phase::Canary { acked_ms, .. } = &mut self.phase else {
            return Step::Wait;
        };
        if failed.len() >= self.failure_threshold {
            let mut reason = format!(
                "{REASON_PREFIX}revision {target} failed on {} canary node(s) (threshold {}):",
                failed.len(),
                self.failure_threshold
            );
            for (node, why) in failures.iter().take(3) {
                reason.push_str(&format!(" {node}: {why};"));
            }
            match good {
                Some(g) => reason.push_str(&format!(" rolled back to {g}")),
                None => reason.push_str(" no earlier revision to roll back to"),
            }
            self.phase = Phase::Halted {
                target,
                good,
                failed: failed.clone(),
                reason: reason.clone(),
            };
            return Step::Halt {
                target,
                to: good,
                nodes: failed,
                reason,
            };
        }
        if !reports.iter().all(|r| r.acked) {
            *acked_ms = None;
            return Step::Wait;
        }
        let since = *acked_ms.get_or_insert(now_ms);
        let soaked = since.saturating_add(self.soak_ms);
        if now_ms < soaked
            || !reports
                .iter()
                .all(|r| r.contact_ms.is_some_and(|heard| heard >= soaked))
        {
            return Step::Wait;
        }
        self.phase = Phase::Idle { good: Some(target) };
        Step::Promote { target }
    }
}

/// What `setpointctl status` shows of the rollout: the admin API's
/// message, published on a watch channel.
pub use setpoint_proto::admin::RolloutStatus;

/// Runs the [`Machine`] against the store from the leader loop. Every
/// method returns the revisions it wrote, for the caller to publish.
pub struct Rollout {
    config: RolloutConfig,
    machine: Machine,
    canaries: BTreeSet<String>,
    status: watch::Sender<RolloutStatus>,
    /// The target's desired digest per canary (read once per target).
    desired: BTreeMap<String, Option<setpoint_dataplane::Digest>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Rollout {
    /// Starts idle, the head counted as good.
    pub async fn start(
        config: RolloutConfig,
        store: &Store,
        status: watch::Sender<RolloutStatus>,
    ) -> anyhow::Result<Rollout> {
        let good = store.head().await?.map(|r| r.0);
        let machine = Machine::new(good, &config);
        let rollout = Rollout {
            config,
            machine,
            canaries: BTreeSet::new(),
            status,
            desired: BTreeMap::new(),
        };
        rollout.publish();
        Ok(rollout)
    }

    pub fn phase(&self) -> &Phase {
        &self.machine.phase
    }

    fn publish(&self) {
        let (phase, target, good, failed, reason) = match &self.machine.phase {
            Phase::Idle { good } => ("idle", 0, *good, Vec::new(), String::new()),
            Phase::Canary { target, good, .. } => {
                ("canary", *target, *good, Vec::new(), String::new())
            }
            Phase::Halted {
                target,
                good,
                failed,
                reason,
            } => (
                "halted",
                *target,
                *good,
                failed.iter().cloned().collect(),
                reason.clone(),
            ),
        };
        self.status.send_replace(RolloutStatus {
            phase: phase.to_string(),
            target,
            good: good.unwrap_or(0),
            canaries: self.canaries.iter().cloned().collect(),
            failed,
            reason,
        });
    }

    /// Before a sync that may commit: chooses the canaries among the
    /// head's nodes and pins every other node not pinned yet at its current
    /// state, so that the commit reaches the canaries only.
    pub async fn hold(
        &mut self,
        store: &Store,
        epoch: Epoch,
        labels: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> anyhow::Result<Option<RevisionId>> {
        let head = store.head().await?;
        let names = match head {
            Some(h) => store.node_names(h).await?,
            None => BTreeSet::new(),
        };
        // The head's nodes and the source's Nodes (labels from the latter).
        let nodes: BTreeMap<String, BTreeMap<String, String>> = names
            .iter()
            .chain(labels.keys())
            .map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default()))
            .collect();
        self.canaries = choose_canaries(&self.config, &nodes);
        self.publish();
        let Some(head) = head else {
            return Ok(None);
        };
        let pinned: BTreeSet<String> = store.pins().await?.into_iter().map(|p| p.node).collect();
        let hold: BTreeSet<String> = names
            .iter()
            .filter(|n| !self.canaries.contains(*n) && !pinned.contains(*n))
            .cloned()
            .collect();
        if hold.is_empty() {
            return Ok(None);
        }
        let revision = store
            .rollback(RollbackRequest {
                epoch,
                to: head,
                nodes: Some(hold.clone()),
                reason: format!("{REASON_PREFIX}held at {head} until the canaries pass"),
            })
            .await
            .context("holding the non-canary nodes")?;
        tracing::info!(nodes = hold.len(), revision = revision.0, "rollout: held");
        Ok(Some(revision))
    }

    /// A sync committed `revision`: the rollout restarts with it; canaries
    /// a halted rollout had rolled back are released to it. `since_ms`:
    /// when the commit began (agents may report on it before this runs).
    pub async fn committed(
        &mut self,
        store: &Store,
        epoch: Epoch,
        revision: RevisionId,
        since_ms: i64,
    ) -> anyhow::Result<Option<RevisionId>> {
        let released = self.machine.committed(revision.0, since_ms);
        self.desired.clear();
        self.publish();
        tracing::info!(
            revision = revision.0,
            canaries = self.canaries.len(),
            "rollout: started"
        );
        if !released.is_empty() {
            tracing::info!(
                ?released,
                "rollout: the canaries a halt rolled back get the new revision"
            );
        }
        // Every canary this rollout pinned (rolled back by a halt, or held
        // before it became a canary) follows the new revision; an
        // operator's pins stay.
        let ours: BTreeSet<String> = self
            .held_by_us(store)
            .await?
            .intersection(&self.canaries)
            .cloned()
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        let written = store
            .resume(epoch, Some(ours))
            .await
            .context("releasing the rolled-back canaries")?;
        Ok(Some(written))
    }

    /// The nodes pinned by this rollout; without the canaries when
    /// promoting (a halted canary is released by the next revision only).
    async fn held_by_us(&self, store: &Store) -> anyhow::Result<BTreeSet<String>> {
        let promoting = matches!(self.machine.phase, Phase::Idle { .. });
        Ok(store
            .pins()
            .await?
            .into_iter()
            .filter(|p| p.reason.starts_with(REASON_PREFIX))
            .filter(|p| !promoting || !self.canaries.contains(&p.node))
            .map(|p| p.node)
            .collect())
    }

    /// Looks at the canaries' agent reports; promotes or halts when due.
    pub async fn tick(
        &mut self,
        store: &Store,
        epoch: Epoch,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Option<RevisionId>> {
        let Phase::Canary {
            target, started_ms, ..
        } = self.machine.phase
        else {
            return Ok(None);
        };
        let mut reports = Vec::with_capacity(self.canaries.len());
        for node in &self.canaries {
            if !self.desired.contains_key(node) {
                // The computed state: a canary rolled back by a halt is
                // still pinned at the target's commit, released just after.
                let digest = store
                    .computed_state(node, RevisionId(target))
                    .await?
                    .map(|s| s.digest());
                self.desired.insert(node.clone(), digest);
            }
            let Some(Some(want)) = self.desired.get(node) else {
                // Not a node at the target (removed): nothing to wait for.
                continue;
            };
            let agent = store.agent_status(node).await?;
            let acked = agent.as_ref().and_then(|a| a.applied_digest) == Some(*want);
            // Sessions record every contact of an agent holding an acked
            // state (heartbeats too), whichever replica it is connected to.
            let contact_ms = agent.as_ref().map(|a| a.contact_ms);
            let failure = match agent {
                Some(a) if a.contact_ms >= started_ms => match a.result {
                    AgentResult::Nack { error, operation } => {
                        Some(format!("{error} ({operation})"))
                    }
                    AgentResult::Ack => None,
                },
                _ => None,
            };
            reports.push(CanaryReport {
                node: node.clone(),
                acked,
                failure,
                contact_ms,
            });
        }
        let step = self.machine.observe(&reports, now_ms());
        let written = match step {
            Step::Wait => None,
            Step::Promote { target } => {
                // The held nodes follow their computed states again: the
                // target's, as no newer revision was committed (it would
                // have restarted the rollout). An operator's pins stay.
                let rest = self.held_by_us(store).await?;
                metrics.rollouts_promoted.inc();
                tracing::info!(target, nodes = rest.len(), "rollout: promoted");
                if rest.is_empty() {
                    None
                } else {
                    Some(
                        store
                            .resume(epoch, Some(rest))
                            .await
                            .context("promoting the rollout")?,
                    )
                }
            }
            Step::Halt {
                target,
                to,
                nodes,
                reason,
            } => {
                metrics.rollouts_halted.inc();
                tracing::warn!(target, "{reason}");
                match to {
                    None => None,
                    Some(good) => {
                        let existed = store.node_names(RevisionId(good)).await?;
                        let back: BTreeSet<String> =
                            nodes.intersection(&existed).cloned().collect();
                        if back.is_empty() {
                            None
                        } else {
                            metrics.rollout_rollbacks.inc_by(back.len() as u64);
                            Some(
                                store
                                    .rollback(RollbackRequest {
                                        epoch,
                                        to: RevisionId(good),
                                        nodes: Some(back),
                                        reason,
                                    })
                                    .await
                                    .context("rolling back the failing canaries")?,
                            )
                        }
                    }
                }
            }
        };
        self.publish();
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A canary's report, its agent last heard from at `heard`.
    fn report_heard(node: &str, acked: bool, failure: Option<&str>, heard: i64) -> CanaryReport {
        CanaryReport {
            node: node.into(),
            acked,
            failure: failure.map(String::from),
            contact_ms: Some(heard),
        }
    }

    /// A canary's report, its agent heard from just now (every row's time
    /// is below `NOW`).
    fn report(node: &str, acked: bool, failure: Option<&str>) -> CanaryReport {
        report_heard(node, acked, failure, NOW)
    }

    const NOW: i64 = 1_000_000;

    /// One row: a machine in a phase, the reports at a time, the step and
    /// the phase after.
    fn check(mut m: Machine, reports: &[CanaryReport], now: i64, step: Step, phase: Phase) {
        let got = m.observe(reports, now);
        assert_eq!(got, step);
        assert_eq!(m.phase, phase);
    }

    fn canary(target: u64, good: Option<u64>, acked_ms: Option<i64>) -> Machine {
        Machine {
            phase: Phase::Canary {
                target,
                good,
                started_ms: 0,
                acked_ms,
            },
            soak_ms: 1000,
            failure_threshold: 1,
            silence_ms: 500,
        }
    }

    /// The nodes and reason of a halt of revision 5 back to 4.
    fn halt_of_5_to_4(step: Step) -> (BTreeSet<String>, String) {
        match step {
            Step::Halt {
                target: 5,
                to: Some(4),
                nodes,
                reason,
            } => (nodes, reason),
            other => panic!("expected a halt of 5 back to 4, got {other:?}"),
        }
    }

    /// Revision 5 on the canaries, 4 good.
    fn waiting(acked_ms: Option<i64>) -> Phase {
        Phase::Canary {
            target: 5,
            good: Some(4),
            started_ms: 0,
            acked_ms,
        }
    }

    #[test]
    fn transitions_table() {
        let ok = [report("a", true, None), report("b", true, None)];
        // Not all acked: wait, and the soak clock is reset.
        check(
            canary(5, Some(4), Some(10)),
            &[report("a", true, None), report("b", false, None)],
            2000,
            Step::Wait,
            waiting(None),
        );
        // All acked: the soak starts now.
        check(
            canary(5, Some(4), None),
            &ok,
            100,
            Step::Wait,
            waiting(Some(100)),
        );
        // Soak not over yet.
        check(
            canary(5, Some(4), Some(100)),
            &ok,
            1099,
            Step::Wait,
            waiting(Some(100)),
        );
        // Soak over: promote.
        check(
            canary(5, Some(4), Some(100)),
            &ok,
            1100,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // A failure halts even during the soak, and rolls back to good.
        let mut halted = canary(5, Some(4), Some(100));
        let (nodes, reason) = halt_of_5_to_4(halted.observe(
            &[report("a", true, None), report("b", false, Some("boom"))],
            500,
        ));
        assert_eq!(nodes, BTreeSet::from(["b".to_string()]));
        assert!(reason.starts_with(REASON_PREFIX) && reason.contains("b: boom"));
        // Halted: nothing happens on observation, even if all ack later.
        check(
            halted.clone(),
            &ok,
            10_000,
            Step::Wait,
            halted.phase.clone(),
        );
        // Idle: nothing to do.
        check(
            Machine::new(Some(3), &RolloutConfig::default()),
            &ok,
            0,
            Step::Wait,
            Phase::Idle { good: Some(3) },
        );
        // Below the threshold: no halt.
        let mut two = canary(5, Some(4), None);
        two.failure_threshold = 2;
        assert_eq!(
            two.observe(&[report("a", false, Some("x")), report("b", true, None)], 5),
            Step::Wait
        );
        // No canary at all (none exists at the target): promote after soak.
        check(
            canary(5, Some(4), Some(0)),
            &[],
            1000,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // Every canary acked and the soak is over, but one was last heard
        // before its end: wait for it.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 1099)],
            1500,
            Step::Wait,
            waiting(Some(100)),
        );
        // … heard after it: promote.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 1100)],
            1500,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // An acked canary silent for longer than the bound during the soak
        // has failed: halt and roll it back, though it never nacked.
        let mut silent = canary(5, Some(4), Some(100));
        let (nodes, reason) = halt_of_5_to_4(silent.observe(
            &[report("a", true, None), report_heard("b", true, None, 200)],
            701,
        ));
        assert_eq!(nodes, BTreeSet::from(["b".to_string()]));
        assert!(reason.contains("b: silent for 501 ms"), "{reason}");
        // At the bound exactly it is still live.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 200)],
            700,
            Step::Wait,
            waiting(Some(100)),
        );
        // Acked but never heard from at all: failed.
        let never = CanaryReport {
            contact_ms: None,
            ..report("b", true, None)
        };
        assert!(matches!(
            canary(5, Some(4), None).observe(&[never], 10),
            Step::Halt { .. }
        ));
        // Not acked yet (waiting for its revision): silence is not judged.
        check(
            canary(5, Some(4), None),
            &[report_heard("b", false, None, 0)],
            10_000,
            Step::Wait,
            waiting(None),
        );
        // No good revision: halt without a rollback target.
        assert!(matches!(
            canary(1, None, None).observe(&[report("a", false, Some("x"))], 0),
            Step::Halt { to: None, .. }
        ));
    }

    #[test]
    fn a_newer_revision_restarts_and_releases_the_failed() {
        let mut m = canary(5, Some(4), None);
        let step = m.observe(&[report("a", false, Some("boom"))], 10);
        assert!(matches!(step, Step::Halt { .. }));
        let released = m.committed(6, 20);
        assert_eq!(released, BTreeSet::from(["a".to_string()]));
        // Good stays the last promoted revision, never the failed one.
        assert_eq!(
            m.phase,
            Phase::Canary {
                target: 6,
                good: Some(4),
                started_ms: 20,
                acked_ms: None
            }
        );
        // During a canary phase, a newer revision replaces the target.
        assert!(m.committed(7, 30).is_empty());
        assert!(matches!(
            m.phase,
            Phase::Canary {
                target: 7,
                good: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn canaries_are_deterministic_stable_and_sized() {
        let nodes: BTreeMap<String, BTreeMap<String, String>> = (0..200)
            .map(|i| {
                let zone = if i % 2 == 0 { "z1" } else { "z2" };
                (
                    format!("node-{i}"),
                    BTreeMap::from([("zone".to_string(), zone.to_string())]),
                )
            })
            .collect();
        let config = RolloutConfig::default();
        let five = choose_canaries(&config, &nodes);
        assert_eq!(five.len(), 10, "5% of 200");
        assert_eq!(five, choose_canaries(&config, &nodes));
        // Adding nodes never removes a canary that still ranks first.
        let mut more = nodes.clone();
        more.insert("node-new".into(), BTreeMap::new());
        let with_new = choose_canaries(&config, &more);
        assert!(five.difference(&with_new).count() <= 1);
        let selected = RolloutConfig {
            selector: vec!["zone=z1".parse().expect("selector")],
            ..RolloutConfig::default()
        };
        let z1 = choose_canaries(&selected, &nodes);
        assert_eq!(z1.len(), 100, "a selector alone: every match");
        assert!(z1.iter().all(|n| nodes[n]["zone"] == "z1"));
        let two = RolloutConfig {
            share: Some(Share::Count(2)),
            ..selected
        };
        assert_eq!(choose_canaries(&two, &nodes).len(), 2);
        let one = BTreeMap::from([("only".to_string(), BTreeMap::new())]);
        assert_eq!(choose_canaries(&config, &one).len(), 1, "at least one");
        assert!(choose_canaries(&config, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn shares_and_selectors_parse() {
        assert_eq!("5%".parse::<Share>(), Ok(Share::Percent(5.0)));
        assert_eq!("3".parse::<Share>(), Ok(Share::Count(3)));
        for (bad, says) in [
            ("0", "the canary count must be at least 1"),
            ("0%", r#""0%": the share must be in (0%, 100%]"#),
            ("101%", r#""101%": the share must be in (0%, 100%]"#),
            ("x%", r#""x%": expected a percentage like 5%"#),
            ("x", r#""x": expected a node count or a percentage like 5%"#),
            (
                "-1",
                r#""-1": expected a node count or a percentage like 5%"#,
            ),
            ("", r#""": expected a node count or a percentage like 5%"#),
        ] {
            let e = bad.parse::<Share>().expect_err(bad);
            assert_eq!(e.to_string(), says, "{bad}");
        }
        assert!("a=b".parse::<LabelSelector>().is_ok());
        assert!("a=".parse::<LabelSelector>().is_ok());
        for bad in ["=b", "ab"] {
            let e = bad.parse::<LabelSelector>().expect_err(bad);
            assert_eq!(e.to_string(), format!("{bad:?}: expected key=value"));
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        Commit,
        Observe {
            acked: Vec<bool>,
            failed: Vec<bool>,
            heard: Vec<bool>,
            dt: i64,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::Commit),
            4 => (
                proptest::collection::vec(any::<bool>(), 3),
                proptest::collection::vec(proptest::bool::weighted(0.1), 3),
                proptest::collection::vec(proptest::bool::weighted(0.8), 3),
                0i64..800
            )
                .prop_map(|(acked, failed, heard, dt)| Event::Observe { acked, failed, heard, dt }),
        ]
    }

    proptest! {
        /// Whatever happens: a promotion is of the newest commit, only after
        /// every canary acked it continuously for the soak with no failure
        /// under the threshold and was heard from after the soak; a halt
        /// names exactly the failing canaries (a nack, or acked and silent
        /// past the bound) and rolls back to the last promoted revision; a
        /// failed revision never becomes good.
        #[test]
        fn transitions_keep_the_invariants(
            threshold in 1usize..3,
            events in proptest::collection::vec(event(), 1..60),
        ) {
            let (soak, silence) = (1000, 600);
            let mut m = Machine::new(Some(1), &RolloutConfig {
                soak: Duration::from_millis(soak as u64),
                failure_threshold: threshold,
                canary_silence: Duration::from_millis(silence as u64),
                ..RolloutConfig::default()
            });
            let mut contacts: [Option<i64>; 3] = [None; 3];
            let (mut now, mut newest, mut promoted) = (0i64, 1u64, 1u64);
            let mut all_acked_since: Option<i64> = None;
            let mut halted = false;
            let mut rolled_back = BTreeSet::new();
            for e in events {
                match e {
                    Event::Commit => {
                        newest += 1;
                        let released = m.committed(newest, now);
                        prop_assert_eq!(&released, &std::mem::take(&mut rolled_back));
                        all_acked_since = None;
                        halted = false;
                    }
                    Event::Observe { acked, failed, heard, dt } => {
                        now += dt;
                        for (contact, heard) in contacts.iter_mut().zip(&heard) {
                            if *heard {
                                *contact = Some(now);
                            }
                        }
                        let reports: Vec<CanaryReport> = (0..3)
                            .map(|i| CanaryReport {
                                node: format!("c{i}"),
                                acked: acked[i],
                                failure: failed[i].then(|| "err".to_string()),
                                contact_ms: contacts[i],
                            })
                            .collect();
                        let failing: BTreeSet<String> = reports
                            .iter()
                            .filter(|r| {
                                r.failure.is_some()
                                    || (r.acked
                                        && r.contact_ms.is_none_or(|c| now - c > silence))
                            })
                            .map(|r| r.node.clone())
                            .collect();
                        let in_canary = matches!(m.phase, Phase::Canary { .. });
                        if in_canary && failing.len() < threshold && acked.iter().all(|a| *a) {
                            all_acked_since.get_or_insert(now);
                        } else if in_canary {
                            all_acked_since = None;
                        }
                        match m.observe(&reports, now) {
                            Step::Wait => {}
                            Step::Promote { target } => {
                                prop_assert!(in_canary && !halted);
                                prop_assert_eq!(target, newest);
                                prop_assert!(failing.len() < threshold);
                                let since = all_acked_since.take();
                                prop_assert!(since.is_some_and(|s| now - s >= soak));
                                let soaked = since.unwrap_or_default() + soak;
                                prop_assert!(contacts.iter().all(|c| c.is_some_and(|c| c >= soaked)));
                                promoted = target;
                                prop_assert_eq!(&m.phase, &Phase::Idle { good: Some(target) });
                            }
                            Step::Halt { target, to, nodes, .. } => {
                                prop_assert!(in_canary);
                                prop_assert_eq!(target, newest);
                                prop_assert_eq!(to, Some(promoted));
                                prop_assert!(failing.len() >= threshold);
                                prop_assert_eq!(&nodes, &failing);
                                rolled_back = nodes;
                                halted = true;
                            }
                        }
                    }
                }
                prop_assert_ne!(m.good(), Some(newest).filter(|_| halted));
            }
        }
    }
}
