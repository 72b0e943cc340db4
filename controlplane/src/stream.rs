//! The agent stream: one session per connected agent, fed from the store.
//!
//! A session keeps the state it last sent the agent (persistent maps, so
//! this is cheap) and at most one revision in flight. When the head moves
//! while the agent applies, the next message is one delta from what the
//! agent acked to the newest head: revisions coalesce, nothing queues. A
//! reconnecting agent whose revision and digest the store confirms gets a
//! delta; any doubt gets a snapshot. A nack is retried with backoff, as a
//! snapshot, and the node counts as degraded until it acks.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use setpoint_dataplane::{Digest, NodeDataplane};
use setpoint_proto::pieces::{PIECE_BYTES, into_pieces};
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_server::AgentStream;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{AgentMessage, ControlMessage, Heartbeat, Hello};
use setpoint_proto::{PROTOCOL_VERSION, digest_from};
use setpoint_store::{AgentResult, AgentStatus, RevisionId, Store};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::status::StatusWriter;

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(10);
/// An agent silent this long is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    sessions: Arc<Mutex<BTreeMap<String, u64>>>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
    pub fleet: Arc<Mutex<BTreeMap<String, AgentView>>>,
    metrics: Arc<Metrics>,
    /// When the change behind each revision was first seen.
    pub seen: Arc<Mutex<BTreeMap<u64, SystemTime>>>,
    /// States the leader published, and memoized encodings.
    pub fanout: Arc<Fanout>,
    statuses: StatusWriter,
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

/// W3C trace context for a revision's rollout to a node: every node's
/// span of one revision shares the trace id (derived from the revision, so
/// any replica derives the same one), each node has its own span id.
pub fn traceparent(revision: u64, node: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let trace = Sha256::digest(format!("setpoint/revision/{revision}"));
    let span = Sha256::digest(format!("setpoint/revision/{revision}/{node}"));
    format!(
        "00-{}-{}-01",
        hex::encode(&trace[..16]),
        hex::encode(&span[..8])
    )
}

impl AgentService {
    pub fn new(store: Store, head: watch::Receiver<u64>, metrics: Arc<Metrics>) -> AgentService {
        let statuses = StatusWriter::start(store.clone());
        AgentService {
            store,
            head,
            sessions: Arc::default(),
            next_session: Arc::default(),
            fleet: Arc::default(),
            metrics,
            seen: Arc::default(),
            fanout: Arc::default(),
            statuses,
        }
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
        let certified = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??
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
        if hello.node.is_empty() || hello.node.len() > 253 {
            return Err(Status::invalid_argument("hello names no valid node"));
        }
        if let Some(certs) = certified
            && !certs
                .first()
                .is_some_and(|c| crate::tls::names_node(c, &hello.node))
        {
            self.metrics.identity_refusals.inc();
            tracing::warn!(node = %hello.node, "refused: the client certificate names another node");
            return Err(Status::permission_denied(format!(
                "this connection's client certificate does not name node '{}' (as a SAN DNS name): an agent may speak only for its own node",
                hello.node
            )));
        }
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A newer stream for the node replaces the older one (the agent
        // restarted); the older session notices and ends.
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(hello.node.clone(), id);
        }
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            service: self.clone(),
            id,
            node: hello.node.clone(),
            agent_version: hello.agent_version.clone(),
            tx,
            sent: None,
            acked: None,
            in_flight: None,
            retry_at: None,
            retry_delay: RETRY_FIRST,
            snapshot_permit: None,
            rollout: None,
            last_report: Default::default(),
        };
        self.metrics.agents_connected.inc();
        let metrics = self.metrics.clone();
        let errors = session.tx.clone();
        tokio::spawn(async move {
            let node = session.node.clone();
            match session.run(hello, inbound).await {
                Ok(()) => tracing::info!(%node, "agent stream ended"),
                Err(e) => {
                    tracing::warn!(%node, "agent stream ended: {e}");
                    // The agent learns why, not just that the stream ended.
                    let _ = errors.send(Err(e)).await;
                }
            }
            metrics.agents_connected.dec();
        });
        // Large messages go out as pieces, cut as tonic pulls them, so a
        // session never waits on a slow agent with a snapshot half sent.
        use futures::StreamExt as _;
        let outbound = ReceiverStream::new(rx).flat_map(|m| {
            let pieces: Vec<Result<ControlMessage, Status>> = match m {
                Ok(m) => into_pieces(m, PIECE_BYTES).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// What the agent holds, as far as this session knows.
#[derive(Clone)]
struct Held {
    revision: u64,
    state: NodeDataplane,
}

struct Session {
    service: AgentService,
    id: u64,
    node: String,
    agent_version: String,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    /// The last state sent (the agent holds it once it acks).
    sent: Option<Held>,
    acked: Option<Held>,
    in_flight: Option<(u64, Instant)>,
    retry_at: Option<tokio::time::Instant>,
    retry_delay: Duration,
    /// Held from sending a snapshot until the agent answers it.
    snapshot_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The span of the revision in flight.
    rollout: Option<tracing::Span>,
    /// The last report recorded, stamped again by heartbeats.
    last_report: std::sync::Mutex<Option<AgentStatus>>,
}

impl Session {
    fn current(&self) -> bool {
        self.service
            .sessions
            .lock()
            .map(|s| s.get(&self.node) == Some(&self.id))
            .unwrap_or(false)
    }

    async fn record(&self, applied: Option<&Held>, result: AgentResult) {
        let status = AgentStatus {
            node: self.node.clone(),
            applied_revision: applied.map(|h| RevisionId(h.revision)),
            applied_digest: applied.map(|h| h.state.digest()),
            result,
            contact_ms: now_ms(),
            agent_version: self.agent_version.clone(),
        };
        if let Ok(mut last) = self.last_report.lock() {
            *last = Some(status.clone());
        }
        self.service.statuses.record(status);
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
        self.acked = self.confirm(&hello).await;
        if let Some(acked) = &self.acked {
            // Reconnected holding a state the store confirms: it is there.
            self.update_fleet(acked.revision, None, None);
        }
        self.record(self.acked.as_ref(), AgentResult::Ack).await;
        let mut head = self.service.head.clone();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        let mut last_heard = Instant::now();
        loop {
            if !self.current() {
                return Err(Status::aborted("a newer stream for this node took over"));
            }
            if self.in_flight.is_none()
                && self
                    .retry_at
                    .is_none_or(|t| t <= tokio::time::Instant::now())
            {
                let target = *head.borrow_and_update();
                self.send_next(target).await?;
            }
            let retry = self.retry_at;
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
                    let beat = message(ControlBody::Heartbeat(Heartbeat {
                        unix_millis: u64::try_from(now_ms()).unwrap_or(0),
                    }));
                    self.tx.send(Ok(beat)).await.map_err(|_| Status::cancelled("agent gone"))?;
                }
            }
        }
    }

    /// Sends the node's state at `head` if the agent does not hold it:
    /// a delta from what it acked, or a snapshot.
    async fn send_next(&mut self, head: u64) -> Result<(), Status> {
        if head == 0 || self.acked.as_ref().is_some_and(|a| a.revision >= head) {
            return Ok(());
        }
        let store_error = |e: setpoint_store::StoreError| Status::unavailable(e.to_string());
        let Some(state) = self
            .service
            .fanout
            .state(&self.service.store, &self.node, head)
            .await
            .map_err(store_error)?
        else {
            // Not (yet) a node of the cluster: nothing to program, and
            // an empty state would wipe a working node.
            if let Some(a) = self.acked.as_mut() {
                a.revision = head;
            }
            return Ok(());
        };
        let body = match &self.acked {
            Some(acked) if acked.state.digest() == state.digest() => {
                // Nothing changed for this node: acknowledge on its behalf.
                let digest = state.digest();
                let held = Held {
                    revision: head,
                    state,
                };
                self.acked = Some(held.clone());
                self.update_fleet(head, None, None);
                tracing::debug!(node = %self.node, head, %digest, "unchanged");
                return Ok(());
            }
            Some(acked) => {
                let d = self
                    .service
                    .fanout
                    .delta(acked.revision, &acked.state, head, &state)
                    .map_err(Status::internal)?;
                self.service.metrics.deltas_sent.inc();
                self.service
                    .metrics
                    .delta_bytes
                    .inc_by(u64::try_from(d.changes.len()).unwrap_or(0));
                ControlBody::Delta(d)
            }
            None => {
                if self.snapshot_permit.is_none() {
                    let permit = self.service.fanout.snapshots.clone().acquire_owned().await;
                    self.snapshot_permit = permit.ok();
                }
                let s = self
                    .service
                    .fanout
                    .snapshot(head, &state)
                    .map_err(Status::internal)?;
                self.service.metrics.snapshots_sent.inc();
                ControlBody::Snapshot(s)
            }
        };
        self.sent = Some(Held {
            revision: head,
            state,
        });
        self.in_flight = Some((head, Instant::now()));
        let mut m = message(body);
        // The rollout of this revision to this node, open until the agent
        // answers; exported (with the agent's apply span as its child)
        // when OTLP is configured.
        let derived = traceparent(head, &self.node);
        let rollout = tracing::info_span!("rollout", revision = head, node = %self.node);
        setpoint_agent::telemetry::set_remote_parent(&rollout, &derived);
        m.traceparent = setpoint_agent::telemetry::traceparent_of(&rollout).unwrap_or(derived);
        self.rollout = Some(rollout);
        tracing::debug!(node = %self.node, revision = head, traceparent = %m.traceparent, "sent");
        self.tx
            .send(Ok(m))
            .await
            .map_err(|_| Status::cancelled("agent gone"))
    }

    async fn receive(&mut self, m: AgentMessage) -> Result<(), Status> {
        if m.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(
                "protocol version changed mid-stream",
            ));
        }
        match m.body {
            Some(AgentBody::Ack(ack)) => {
                self.snapshot_permit = None;
                self.rollout = None;
                let Some(sent) = self.sent.clone().filter(|s| s.revision == ack.revision) else {
                    return Err(Status::invalid_argument(format!(
                        "ack for revision {} which was not sent",
                        ack.revision
                    )));
                };
                let digest = digest_from(&ack.digest)
                    .map_err(|e| Status::invalid_argument(format!("ack: {e}")))?;
                if digest != sent.state.digest() {
                    // The agent holds something else: start over from a snapshot.
                    self.acked = None;
                    self.in_flight = None;
                    return Ok(());
                }
                if let Some((_, since)) = self.in_flight.take() {
                    self.service
                        .metrics
                        .round_trip
                        .observe(since.elapsed().as_secs_f64());
                }
                self.observe_programming(ack.revision);
                self.retry_delay = RETRY_FIRST;
                self.retry_at = None;
                let apply = Duration::from_micros(ack.apply_micros);
                self.service
                    .metrics
                    .apply_seconds
                    .observe(apply.as_secs_f64());
                self.update_fleet(ack.revision, None, Some(apply));
                self.acked = Some(sent);
                self.record(self.acked.as_ref(), AgentResult::Ack).await;
            }
            Some(AgentBody::Nack(nack)) => {
                self.snapshot_permit = None;
                self.rollout = None;
                self.service.metrics.nacks.inc();
                tracing::warn!(node = %self.node, revision = nack.revision, "nack: {} ({})", nack.error, nack.failed_operation);
                self.in_flight = None;
                // The kernel may be anywhere now: the retry is a snapshot.
                self.acked = None;
                self.retry_at = Some(tokio::time::Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                let reason = format!("{} ({})", nack.error, nack.failed_operation);
                self.update_fleet(0, Some(reason.clone()), None);
                self.record(
                    None,
                    AgentResult::Nack {
                        error: nack.error,
                        operation: nack.failed_operation,
                    },
                )
                .await;
            }
            Some(AgentBody::Heartbeat(_)) => {
                // The contact, for the rollout's canary liveness: the last
                // ack's report stamped again (never a nack's, which would
                // then look new).
                let last = self.last_report.lock().ok().and_then(|l| l.clone());
                if let Some(status) = last.filter(|s| s.result == AgentResult::Ack) {
                    self.service.statuses.record(AgentStatus {
                        contact_ms: now_ms(),
                        ..status
                    });
                }
            }
            Some(AgentBody::Hello(_)) => {
                return Err(Status::invalid_argument("hello twice on one stream"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
        Ok(())
    }

    fn observe_programming(&self, revision: u64) {
        let seen = self
            .service
            .seen
            .lock()
            .ok()
            .and_then(|s| s.get(&revision).copied());
        if let Some(seen) = seen
            && let Ok(latency) = SystemTime::now().duration_since(seen)
        {
            self.service
                .metrics
                .programming
                .observe(latency.as_secs_f64());
        }
    }

    fn update_fleet(&self, revision: u64, degraded: Option<String>, apply: Option<Duration>) {
        if let Ok(mut fleet) = self.service.fleet.lock() {
            let view = fleet.entry(self.node.clone()).or_default();
            if revision > 0 {
                view.acked_revision = revision;
            }
            view.degraded = degraded;
            if let Some(a) = apply {
                view.last_apply = a;
            }
        }
    }
}
