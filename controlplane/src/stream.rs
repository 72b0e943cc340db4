//! The agent stream: one session per connected agent, fed from the store.
//!
//! What a session sends when is [`crate::delivery::Delivery`]'s decision
//! (one revision in flight, revisions coalesce, nacks retried as snapshots
//! with backoff); here is the I/O around it. A reconnecting agent whose
//! revision and digest the store confirms gets a delta; any doubt gets a
//! snapshot. A nacking node counts as degraded until it acks.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use setpoint_dataplane::Digest;
use setpoint_proto::pieces::{PIECE_BYTES, fits_one_piece, into_pieces};
use setpoint_proto::traceparent::Traceparent;
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_server::AgentStream;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{AgentMessage, ControlMessage, Heartbeat, Hello};
use setpoint_proto::{PROTOCOL_VERSION, digest_from};
use setpoint_store::{
    AgentResult, AgentStatus, MAX_NACK_ERROR_BYTES, MAX_NACK_OPERATION_BYTES, RevisionId, Store,
    clean_text,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::delivery::{Acked, Delivery, Held, Next, Outgoing};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::peer_limits::ListenerLimits;
use crate::status::StatusWriter;
use crate::tls::{AgentPeer, SessionOnConnection};

const KEEPALIVE: Duration = Duration::from_secs(10);
/// An agent silent this long is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// What the agent listener lets a peer hold, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Connections per peer address and in total, pending handshakes, and
    /// how long a connection may take to start or stay without a byte.
    pub listener: ListenerLimits,
    /// Concurrent streams on one connection (an agent uses one).
    pub streams_per_connection: u32,
    /// A stream must say hello within this; a connection carrying no
    /// agent session for twice as long is closed (the stream's own
    /// refusal, with its reason, comes first).
    pub hello_timeout: Duration,
    /// How long a snapshot holds one of the [`crate::fanout::SNAPSHOTS_IN_FLIGHT`] slots
    /// without an answer from its agent; then the slot goes to another
    /// node (the session still takes the late answer).
    pub snapshot_answer: Duration,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            listener: ListenerLimits {
                per_peer: 16,
                total: 65_536,
                pending_handshakes: 1024,
                handshake: Duration::from_secs(10),
                // Longer than the agents' heartbeat (10 s) and the
                // session's silence limit (45 s).
                idle: Duration::from_secs(60),
            },
            streams_per_connection: 4,
            hello_timeout: Duration::from_secs(10),
            snapshot_answer: Duration::from_secs(60),
        }
    }
}

impl AgentLimits {
    /// The same limits with `n` connections per peer address (a fleet
    /// of agents on one host, as benchmarks run it).
    pub fn with_connections_per_peer(self, n: usize) -> AgentLimits {
        AgentLimits {
            listener: ListenerLimits {
                per_peer: n,
                ..self.listener
            },
            ..self
        }
    }
}

/// Whether `node` can be a Kubernetes Node's name (a DNS-1123 subdomain:
/// lowercase letters, digits, `-` and `.`, alphanumeric at both ends, at
/// most 253 bytes). Nothing else is ever compared with a certificate.
pub fn valid_node_name(node: &str) -> bool {
    let bytes = node.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= setpoint_store::MAX_NODE_NAME_BYTES
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-' || *b == b'.')
}

/// Node → its live session's id and "replaced" flag.
type LiveSessions = HashMap<String, (u64, Arc<AtomicBool>)>;

/// What the fleet looks like right now, for progress displays and readiness.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub acked_revision: u64,
    pub degraded: Option<String>,
    pub last_apply: Duration,
}

#[derive(Clone)]
pub struct AgentService {
    store: Store,
    head: watch::Receiver<u64>,
    /// The live session of each node, and the flag that tells it a newer
    /// one replaced it (checked on every turn of its loop: no lock).
    sessions: Arc<Mutex<LiveSessions>>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
    /// Each node's view by name; hashed, not ordered: every ack looks
    /// its node up here, and a 5,000-entry B-tree of names costs a dozen
    /// string comparisons (cache misses) per lookup.
    pub fleet: Arc<Mutex<HashMap<String, AgentView>>>,
    metrics: Arc<Metrics>,
    /// Programming latency and each revision's progress (`crate::sli`).
    pub sli: crate::sli::Sli,
    /// States the leader published, and memoized encodings.
    pub fanout: Arc<Fanout>,
    statuses: StatusWriter,
    limits: AgentLimits,
    /// Whether every stream must come with a client certificate naming
    /// its node (the listener has mTLS).
    identities_required: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn message(body: ControlBody) -> ControlMessage {
    ControlMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
        traceparent: String::new(),
    }
}

impl AgentService {
    pub fn new(store: Store, head: watch::Receiver<u64>, metrics: Arc<Metrics>) -> AgentService {
        let statuses = StatusWriter::start(store.clone(), metrics.clone());
        let sli = crate::sli::Sli::start(metrics.clone(), head.clone());
        AgentService {
            store,
            head,
            sessions: Arc::default(),
            next_session: Arc::default(),
            fleet: Arc::default(),
            metrics,
            sli,
            fanout: Arc::default(),
            statuses,
            limits: AgentLimits::default(),
            identities_required: false,
        }
    }

    /// The same service under `limits`; with `identities_required`, a
    /// stream without a client certificate naming its node is refused.
    pub fn with_limits(self, limits: AgentLimits, identities_required: bool) -> AgentService {
        AgentService {
            limits,
            identities_required,
            ..self
        }
    }

    /// Refuses `hello` unless the connection's certificate names its
    /// node exactly (see [`crate::tls::names_node`]).
    fn check_identity(&self, peer: Option<&AgentPeer>, hello: &Hello) -> Result<(), Status> {
        let certs = peer.and_then(|p| p.certs.as_ref());
        if certs.is_none() && !self.identities_required {
            return Ok(());
        }
        if certs
            .and_then(|c| c.first())
            .is_some_and(|c| crate::tls::names_node(c, &hello.node))
        {
            return Ok(());
        }
        self.metrics.identity_refusals.inc();
        tracing::warn!(node = %hello.node, "refused: the client certificate names another node");
        Err(Status::permission_denied(format!(
            "this connection's client certificate does not name node '{}' (exactly, as a SAN DNS name): an agent may speak only for its own node",
            hello.node
        )))
    }
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentStream for AgentService {
    type StreamStream = ControlStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ControlStream>, Status> {
        // Over mTLS the client certificate says which node may speak here.
        let peer = request.extensions().get::<AgentPeer>().cloned();
        let mut inbound = request.into_inner();
        let hello_timeout = self.limits.hello_timeout;
        let first = tokio::time::timeout(hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no hello within {hello_timeout:?}")))??
            .ok_or_else(|| Status::invalid_argument("stream ended before hello"))?;
        if first.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not spoken here (this control plane speaks {PROTOCOL_VERSION})",
                first.protocol_version
            )));
        }
        let Some(AgentBody::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        if !valid_node_name(&hello.node) {
            return Err(Status::invalid_argument(
                "hello names no valid node (a Kubernetes Node name: lowercase letters, digits, '-' and '.', at most 253 bytes)",
            ));
        }
        self.check_identity(peer.as_ref(), &hello)?;
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A newer stream for the node replaces the older one (the agent
        // restarted); the older session notices and ends.
        let replaced = Arc::new(AtomicBool::new(false));
        if let Ok(mut s) = self.sessions.lock()
            && let Some((_, older)) = s.insert(hello.node.clone(), (id, replaced.clone()))
        {
            older.store(true, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            service: self.clone(),
            replaced,
            node: hello.node.clone(),
            node_arc: Arc::from(hello.node.as_str()),
            agent_version: hello.agent_version.clone(),
            encoding: setpoint_proto::parts::PartsEncoding::accepted_by(&hello),
            tx,
            delivery: Delivery::new(None),
            snapshot_slot: None,
            rollout: None,
            _on_connection: peer.as_ref().map(AgentPeer::session),
            last_ack: None,
            // Nothing sent yet: the first tick's heartbeat goes out at
            // once, as before.
            last_sent: Instant::now()
                .checked_sub(KEEPALIVE)
                .unwrap_or_else(Instant::now),
            coalescing: Coalescing::default(),
        };
        self.metrics.agents_connected.inc();
        self.sli.joined(session.node_arc.clone(), id);
        let (metrics, sessions, sli) = (
            self.metrics.clone(),
            self.sessions.clone(),
            self.sli.clone(),
        );
        let errors = session.tx.clone();
        let node_arc = session.node_arc.clone();
        tokio::spawn(async move {
            let node = session.node.clone();
            match session.run(hello, inbound).await {
                Ok(()) => tracing::info!(%node, "agent stream ended"),
                Err(e) => {
                    tracing::warn!(%node, "agent stream ended: {e}");
                    // The agent learns why, not just that the stream ended
                    // (unless it reads nothing at all).
                    let _ = errors.send_timeout(Err(e), KEEPALIVE).await;
                }
            }
            // Only live sessions are remembered.
            if let Ok(mut s) = sessions.lock()
                && s.get(&node).is_some_and(|(live, _)| *live == id)
            {
                s.remove(&node);
            }
            metrics.agents_connected.dec();
            sli.left(node_arc, id);
        });
        Ok(Response::new(Box::pin(Outbound {
            queue: rx,
            pieces: Vec::new().into_iter(),
        })))
    }
}

/// What tonic sends a session's agent: its queue, with a large message
/// cut into pieces as tonic pulls them (a session never waits on a slow
/// agent with a snapshot half sent); a small one (every delta, every
/// heartbeat) goes out as it is, with no allocation.
struct Outbound {
    queue: mpsc::Receiver<Result<ControlMessage, Status>>,
    pieces: std::vec::IntoIter<ControlMessage>,
}

impl Stream for Outbound {
    type Item = Result<ControlMessage, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(piece) = self.pieces.next() {
            return Poll::Ready(Some(Ok(piece)));
        }
        match self.queue.poll_recv(cx) {
            Poll::Ready(Some(Ok(m))) if !fits_one_piece(&m, PIECE_BYTES) => {
                self.pieces = into_pieces(m, PIECE_BYTES).into_iter();
                Poll::Ready(self.pieces.next().map(Ok))
            }
            other => other,
        }
    }
}

struct Session {
    service: AgentService,
    /// Set when a newer stream for this node took over.
    replaced: Arc<AtomicBool>,
    node: String,
    /// The node's name for the SLI tracker's events: shared, not copied
    /// per ack.
    node_arc: Arc<str>,
    agent_version: String,
    /// How its snapshots are encoded: deflated when its hello accepts it.
    encoding: setpoint_proto::parts::PartsEncoding,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    /// What to send next; the rest of the session does the I/O.
    delivery: Delivery,
    /// Held from sending a snapshot until the agent answers it.
    snapshot_slot: Option<SnapshotSlot>,
    /// The span of the revision in flight.
    rollout: Option<tracing::Span>,
    /// Keeps the connection open while this session lives.
    _on_connection: Option<SessionOnConnection>,
    /// What the last ack reported (revision and digest held), stamped
    /// again by heartbeats; `None` before it or after a nack.
    last_ack: Option<(Option<RevisionId>, Option<Digest>)>,
    /// When this session last queued a message: a keepalive tick right
    /// after one sends no heartbeat (any message tells the agent the
    /// control plane is there).
    last_sent: Instant,
    coalescing: Coalescing,
}

/// Heads a session saw but never sent because a newer one came first:
/// with one revision in flight, a burst of commits becomes one delta.
#[derive(Default)]
struct Coalescing {
    newest_seen: u64,
    last_sent: u64,
    superseded: u64,
}

impl Coalescing {
    fn saw(&mut self, head: u64) {
        if head > self.newest_seen {
            if self.newest_seen > self.last_sent {
                self.superseded += 1;
            }
            self.newest_seen = head;
        }
    }

    /// `head` went out (or needed nothing): the heads superseded before it.
    fn sent(&mut self, head: u64) -> u64 {
        self.last_sent = self.last_sent.max(head);
        std::mem::take(&mut self.superseded)
    }
}

/// One of the [`crate::fanout::SNAPSHOTS_IN_FLIGHT`] slots, held while an agent has a
/// snapshot to answer. Given back when dropped (the answer came, the
/// session ended) or when the deadline passes, whichever is first: an
/// agent that takes a snapshot and never answers holds a slot only that
/// long, so a few hung agents cannot stop every other node's snapshot.
struct SnapshotSlot {
    _answered: tokio::sync::oneshot::Sender<()>,
}

impl SnapshotSlot {
    fn hold(
        permit: tokio::sync::OwnedSemaphorePermit,
        deadline: Duration,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> SnapshotSlot {
        let (answered, dropped) = tokio::sync::oneshot::channel::<()>();
        let node = node.to_string();
        tokio::spawn(async move {
            if tokio::time::timeout(deadline, dropped).await.is_err() {
                metrics.snapshot_slot_expiries.inc();
                tracing::warn!(%node, "no answer to the snapshot within {deadline:?}: its slot goes to another node");
            }
            drop(permit);
        });
        SnapshotSlot {
            _answered: answered,
        }
    }
}

impl Session {
    fn current(&self) -> bool {
        !self.replaced.load(Ordering::Relaxed)
    }

    /// Hands the agent's report to the status writer; an ack's is kept
    /// for heartbeats to stamp again.
    fn record(&mut self, result: AgentResult) {
        let applied = self.delivery.acked().filter(|_| result == AgentResult::Ack);
        let (revision, digest) = (
            applied.map(|h| RevisionId(h.revision)),
            applied.map(|h| h.state.digest()),
        );
        self.last_ack = (result == AgentResult::Ack).then_some((revision, digest));
        self.report(revision, digest, result);
    }

    fn report(&self, revision: Option<RevisionId>, digest: Option<Digest>, result: AgentResult) {
        self.service.statuses.record(AgentStatus {
            node: self.node.clone(),
            applied_revision: revision,
            applied_digest: digest,
            result,
            contact_ms: now_ms(),
            agent_version: self.agent_version.clone(),
        });
    }

    /// What the store confirms of the agent's claim: its revision's state
    /// for this node, when the digest agrees.
    async fn confirm(&self, hello: &Hello) -> Option<Held> {
        if hello.applied_revision == 0 {
            return None;
        }
        let claimed: Digest = digest_from(&hello.applied_digest).ok()?;
        let state = self
            .service
            .fanout
            .state(&self.service.store, &self.node, hello.applied_revision)
            .await
            .ok()??;
        (state.digest() == claimed).then_some(Held {
            revision: hello.applied_revision,
            state,
        })
    }

    async fn run(
        mut self,
        hello: Hello,
        mut inbound: Streaming<AgentMessage>,
    ) -> Result<(), Status> {
        self.delivery = Delivery::new(self.confirm(&hello).await);
        if let Some(acked) = self.delivery.acked() {
            // Reconnected holding a state the store confirms: it is there.
            self.update_fleet(acked.revision, None, None);
        }
        self.record(AgentResult::Ack);
        let mut head = self.service.head.clone();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        let mut last_heard = Instant::now();
        loop {
            if !self.current() {
                return Err(Status::aborted("a newer stream for this node took over"));
            }
            let target = *head.borrow_and_update();
            self.coalescing.saw(target);
            if self.delivery.wants(target, Instant::now()) {
                self.send_next(target).await?;
            }
            let retry = self.delivery.retry_at().map(tokio::time::Instant::from_std);
            tokio::select! {
                // What the agent sent first: after waiting for a snapshot
                // permit, its queued heartbeats must count before the
                // silence check does.
                biased;
                message = inbound.message() => {
                    last_heard = Instant::now();
                    match message? {
                        None => return Ok(()),
                        Some(m) => self.receive(m).await?,
                    }
                }
                changed = head.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("the control plane is shutting down"));
                    }
                }
                _ = async {
                    match retry {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        return Err(Status::deadline_exceeded("agent silent"));
                    }
                    // A message went out since the last tick: the agent
                    // heard from this control plane without a heartbeat.
                    if self.last_sent.elapsed() < KEEPALIVE / 2 {
                        continue;
                    }
                    let beat = message(ControlBody::Heartbeat(Heartbeat {
                        unix_millis: u64::try_from(now_ms()).unwrap_or(0),
                    }));
                    self.send(beat).await?;
                }
            }
        }
    }

    /// Sends the node's state at `head`, which the agent does not hold:
    /// a delta from what it acked, or a snapshot.
    async fn send_next(&mut self, head: u64) -> Result<(), Status> {
        let store_error = |e: setpoint_store::StoreError| Status::unavailable(e.to_string());
        let state = self
            .service
            .fanout
            .state(&self.service.store, &self.node, head)
            .await
            .map_err(store_error)?;
        let next = self.delivery.toward(head, state, Instant::now());
        // Whatever goes out (or nothing, when nothing is needed) is for
        // `head`: the heads seen before it were merged into it.
        let merged = self.coalescing.sent(head);
        self.service.metrics.revisions_coalesced.inc_by(merged);
        let body = match next {
            Next::NotANode => {
                self.service.sli.unchanged(self.node_arc.clone(), head);
                return Ok(());
            }
            Next::Unchanged { revision, digest } => {
                self.service.sli.unchanged(self.node_arc.clone(), revision);
                self.update_fleet(revision, None, None);
                tracing::debug!(node = %self.node, head, %digest, "unchanged");
                return Ok(());
            }
            Next::Send(Outgoing::Delta { from, to }) => {
                let d = self
                    .service
                    .fanout
                    .delta(from.revision, &from.state, to.revision, &to.state)
                    .map_err(|e| Status::internal(e.to_string()))?;
                self.service.metrics.deltas_sent.inc();
                self.service
                    .metrics
                    .delta_bytes
                    .inc_by(u64::try_from(d.changes.len()).unwrap_or(0));
                ControlBody::Delta(d)
            }
            Next::Send(Outgoing::Snapshot { to }) => {
                if self.snapshot_slot.is_none() {
                    let permit = self.service.fanout.snapshots.clone().acquire_owned().await;
                    self.snapshot_slot = permit.ok().map(|p| {
                        SnapshotSlot::hold(
                            p,
                            self.service.limits.snapshot_answer,
                            &self.node,
                            self.service.metrics.clone(),
                        )
                    });
                }
                let s = self
                    .service
                    .fanout
                    .snapshot_as(to.revision, &to.state, self.encoding)
                    .map_err(|e| Status::internal(e.to_string()))?;
                self.service.metrics.snapshots_sent.inc();
                self.service
                    .metrics
                    .snapshot_bytes
                    .inc_by(u64::try_from(s.state.len()).unwrap_or(0));
                ControlBody::Snapshot(s)
            }
        };
        let mut m = message(body);
        // The rollout of this revision to this node: the derived context
        // (any replica derives the same), and with OTLP configured a span
        // open until the agent answers (the agent's apply span its child).
        let derived = Traceparent::of_rollout(head, &self.node).to_string();
        m.traceparent = if setpoint_runtime::telemetry::exporting() {
            let rollout = tracing::info_span!("rollout", revision = head, node = %self.node);
            setpoint_runtime::telemetry::set_remote_parent(&rollout, &derived);
            let traceparent = setpoint_runtime::telemetry::traceparent_of(&rollout);
            self.rollout = Some(rollout);
            traceparent.unwrap_or(derived)
        } else {
            derived
        };
        tracing::debug!(node = %self.node, revision = head, traceparent = %m.traceparent, "sent");
        self.send(m).await
    }

    /// Queues `m` for the agent; an agent that reads nothing for the
    /// silence limit (its queue stays full) is gone.
    async fn send(&mut self, m: ControlMessage) -> Result<(), Status> {
        use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
        self.last_sent = Instant::now();
        // Room in the queue (nearly always): no timer is set up.
        let m = match self.tx.try_send(Ok(m)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(Status::cancelled("agent gone")),
            Err(TrySendError::Full(m)) => m,
        };
        match self.tx.send_timeout(m, SILENCE_LIMIT).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(Status::deadline_exceeded(
                "the agent reads nothing of what it is sent",
            )),
            Err(SendTimeoutError::Closed(_)) => Err(Status::cancelled("agent gone")),
        }
    }

    async fn receive(&mut self, m: AgentMessage) -> Result<(), Status> {
        if m.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(
                "protocol version changed mid-stream",
            ));
        }
        match m.body {
            Some(AgentBody::Ack(ack)) => {
                self.snapshot_slot = None;
                self.rollout = None;
                let digest = digest_from(&ack.digest);
                let round_trip = match self.delivery.on_ack(ack.revision, digest, Instant::now()) {
                    Ok(Acked::Holds { round_trip, .. }) => round_trip,
                    // The agent holds something else: start over from a snapshot.
                    Ok(Acked::HoldsOther) => return Ok(()),
                    Err(e) => return Err(Status::invalid_argument(e.to_string())),
                };
                if let Some(round_trip) = round_trip {
                    self.service
                        .metrics
                        .round_trip
                        .observe(round_trip.as_secs_f64());
                }
                self.service.sli.acked(self.node_arc.clone(), ack.revision);
                let apply = Duration::from_micros(ack.apply_micros);
                self.service
                    .metrics
                    .apply_seconds
                    .observe(apply.as_secs_f64());
                self.update_fleet(ack.revision, None, Some(apply));
                self.record(AgentResult::Ack);
            }
            Some(AgentBody::Nack(nack)) => {
                self.snapshot_slot = None;
                self.rollout = None;
                // The kernel may be anywhere now: the retry is a snapshot.
                self.delivery
                    .on_nack(nack.revision, Instant::now())
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.service.metrics.nacks.inc();
                self.service
                    .sli
                    .nacked(self.node_arc.clone(), nack.revision);
                // What the agent wrote goes to logs and the fleet view
                // (and, cleaned the same way, to the store): one line,
                // bounded.
                let error = clean_text(&nack.error, MAX_NACK_ERROR_BYTES);
                let operation = clean_text(&nack.failed_operation, MAX_NACK_OPERATION_BYTES);
                tracing::warn!(node = %self.node, revision = nack.revision, "nack: {error} ({operation})");
                let reason = format!("{error} ({operation})");
                self.update_fleet(0, Some(reason), None);
                self.record(AgentResult::Nack { error, operation });
            }
            Some(AgentBody::Heartbeat(_)) => {
                // The contact, for the rollout's canary liveness: the last
                // ack's report stamped again (never a nack's, which would
                // then look new).
                if let Some((revision, digest)) = self.last_ack {
                    self.report(revision, digest, AgentResult::Ack);
                }
            }
            Some(AgentBody::Hello(_)) => {
                return Err(Status::invalid_argument("hello twice on one stream"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
        Ok(())
    }

    fn update_fleet(&self, revision: u64, degraded: Option<String>, apply: Option<Duration>) {
        let update = |view: &mut AgentView| {
            if revision > 0 {
                view.acked_revision = revision;
            }
            view.degraded = degraded;
            if let Some(a) = apply {
                view.last_apply = a;
            }
        };
        if let Ok(mut fleet) = self.service.fleet.lock() {
            // Found without copying the name (one lookup): every node acks
            // every revision.
            match fleet.get_mut(&self.node) {
                Some(view) => update(view),
                None => update(fleet.entry(self.node.clone()).or_default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_names_are_kubernetes_node_names() {
        for good in [
            "node-a",
            "a",
            "ip-10-0-0-1.ec2.internal",
            "0node9",
            &"n".repeat(253),
        ] {
            assert!(valid_node_name(good), "{good}");
        }
        for bad in [
            "",
            "Node-A",
            "NODE-A",
            "*.nodes.test",
            "-node",
            "node-",
            "node.",
            "node a",
            "node\0a",
            "node\na",
            "nöde",
            &"n".repeat(254),
        ] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_valid_node_name_has_only_lowercase_digits_dashes_and_dots(name in "\\PC{0,40}") {
            if valid_node_name(&name) {
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            }
        }
    }
}
