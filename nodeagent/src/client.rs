//! The agent's side of the stream: connect, say what the kernel holds,
//! apply what comes, ack or nack; reconnect with jittered backoff and keep
//! the kernel as it is while the control plane is away. Between messages
//! it drains removed TCP real servers and repairs drift.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use setpoint_dataplane::NodeDataplane;
use setpoint_proto::parts::{FragmentCache, apply_delta, snapshot_state_cached};
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_client::AgentStreamClient;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{Ack, AgentMessage, ControlMessage, Heartbeat, Hello, Nack};
use setpoint_proto::{PROTOCOL_VERSION, digest_bytes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::apply::{Applier, ApplyError};
use crate::local_state::{Applied, LocalState};
use crate::metrics::AgentMetrics;
use crate::services::{IpvsMode, for_target};
use crate::target::Target;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// `http://host:port` of the control plane's agent listener.
    pub controlplane: String,
    pub target: Target,
    /// Plan and report, touch nothing; acks mean "accepted".
    pub dry_run: bool,
    pub state_dir: Option<PathBuf>,
    pub ipvs: IpvsMode,
    pub drift_interval: Duration,
}

/// What the agent has done, for displays and tests.
#[derive(Clone, Debug, Default)]
pub struct AgentProgress {
    pub revision: u64,
    pub snapshots: u64,
    pub deltas: u64,
    pub nacks: u64,
    pub drift_repairs: u64,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_apply: Duration,
}

pub struct Agent {
    options: AgentOptions,
    applier: Arc<Mutex<Applier>>,
    held: Option<(u64, NodeDataplane)>,
    was_connected: bool,
    pub progress: Arc<Mutex<AgentProgress>>,
    pub metrics: Arc<AgentMetrics>,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn envelope(body: AgentBody) -> AgentMessage {
    AgentMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

/// Which step failed, for the nack.
fn failed_operation(e: &ApplyError) -> String {
    match e {
        ApplyError::Ipset(_) => "ipset restore".into(),
        ApplyError::Iptables(_) => "iptables-restore".into(),
        ApplyError::Plan(_) => "plan".into(),
        ApplyError::Unsupported { .. } => "kernel capability check".into(),
        ApplyError::Service { operation, .. } => operation.clone(),
        ApplyError::Mismatch { .. } => "verify read-back".into(),
    }
}

impl Agent {
    pub fn new(options: AgentOptions) -> Agent {
        let services = for_target(&options.target, options.ipvs);
        let applier = Applier::new(options.target.clone(), services);
        Agent {
            options,
            applier: Arc::new(Mutex::new(applier)),
            held: None,
            was_connected: false,
            progress: Arc::default(),
            metrics: AgentMetrics::new(),
        }
    }

    fn local(&self) -> Option<LocalState> {
        self.options.state_dir.as_ref().map(LocalState::new)
    }

    fn note(&self, f: impl FnOnce(&mut AgentProgress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }

    /// Runs `f` on the applier off the async threads.
    async fn with_applier<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Applier) -> T + Send + 'static,
    ) -> Option<T> {
        let applier = self.applier.clone();
        tokio::task::spawn_blocking(move || applier.lock().ok().map(|mut a| f(&mut a)))
            .await
            .ok()
            .flatten()
    }

    /// Resumes from the state directory when the kernel still holds what
    /// it records: no re-apply, and the hello lets the control plane send
    /// a delta.
    pub async fn resume(&mut self) {
        let Some(local) = self.local() else { return };
        let (record, state) = match (local.load(), local.load_state()) {
            (Ok(Some(r)), Ok(Some(s))) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("ignoring the local state: {e}");
                return;
            }
            _ => return,
        };
        if record.node != self.options.node || record.digest != state.digest() {
            tracing::warn!("the local state is for another node or inconsistent; ignoring it");
            return;
        }
        if self.options.dry_run {
            self.held = Some((record.revision, state));
            return;
        }
        let check = state.clone();
        let verified = self.with_applier(move |a| a.verify(&check)).await;
        match verified {
            Some(Ok(_)) => {
                tracing::info!(
                    revision = record.revision,
                    "the kernel still holds the recorded state"
                );
                self.note(|p| p.revision = record.revision);
                self.held = Some((record.revision, state));
            }
            Some(Err(e)) => {
                tracing::info!("the kernel moved since the last run ({e}); asking for a snapshot")
            }
            None => {}
        }
    }

    /// Connects, serves, reconnects; returns only if the task is dropped.
    pub async fn run(mut self) {
        self.resume().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.session().await {
                Ok(()) => tracing::info!("control plane closed the stream"),
                Err(e) => {
                    tracing::warn!("stream: {e:#}");
                    self.note(|p| p.last_error = Some(format!("{e:#}")));
                }
            }
            self.note(|p| p.connected = false);
            self.metrics.connected.set(0);
            // A stream that was up starts the backoff over; repeated
            // failures to connect grow it.
            if self.was_connected || started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            self.was_connected = false;
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn session(&mut self) -> anyhow::Result<()> {
        let mut client = AgentStreamClient::connect(self.options.controlplane.clone()).await?;
        let (tx, rx) = mpsc::channel(8);
        let (revision, digest) = match &self.held {
            Some((r, s)) => (*r, digest_bytes(&s.digest())),
            None => (0, Vec::new()),
        };
        tx.send(envelope(AgentBody::Hello(Hello {
            node: self.options.node.clone(),
            agent_version: format!(
                "setpoint-agent {}{}",
                env!("CARGO_PKG_VERSION"),
                if self.options.dry_run {
                    " (dry-run)"
                } else {
                    ""
                }
            ),
            applied_revision: revision,
            applied_digest: digest,
        })))
        .await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        self.was_connected = true;
        self.metrics.connected.set(1);
        self.note(|p| {
            p.connected = true;
            p.last_error = None;
        });
        let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
        let mut drift = tokio::time::interval(self.options.drift_interval);
        drift.tick().await;
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = inbound.message() => match message? {
                    None => return Ok(()),
                    Some(m) => {
                        if let Some(reply) = self.handle(m).await? {
                            tx.send(reply).await?;
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    tx.send(envelope(AgentBody::Heartbeat(Heartbeat { unix_millis: unix_millis() }))).await?;
                }
                _ = drift.tick() => self.repair_drift().await,
                _ = reap.tick() => {
                    if !self.options.dry_run {
                        match self.with_applier(|a| a.reap_drained()).await {
                            Some(Ok(n)) => {
                                self.metrics.drained.inc_by(u64::try_from(n).unwrap_or(0));
                            }
                            Some(Err(e)) => tracing::warn!("draining real servers: {e}"),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    async fn handle(&mut self, m: ControlMessage) -> anyhow::Result<Option<AgentMessage>> {
        if m.protocol_version != PROTOCOL_VERSION {
            anyhow::bail!(
                "the control plane speaks protocol {}, this agent {PROTOCOL_VERSION}",
                m.protocol_version
            );
        }
        let (revision, wanted) = match m.body {
            Some(ControlBody::Heartbeat(_)) | None => return Ok(None),
            Some(ControlBody::Snapshot(s)) => {
                self.note(|p| p.snapshots += 1);
                self.metrics.snapshots.inc();
                // Parts are decoded through the process's cache: a part
                // this process already holds (another revision's, or in
                // the fleet benchmark another node's) is not decoded again.
                match snapshot_state_cached(&s, FragmentCache::process()) {
                    Ok(state) => (s.revision, state),
                    Err(e) => {
                        return Ok(Some(self.nack(
                            s.revision,
                            e.to_string(),
                            "decode snapshot",
                        )));
                    }
                }
            }
            Some(ControlBody::Delta(d)) => {
                self.note(|p| p.deltas += 1);
                self.metrics.deltas.inc();
                let base = match &self.held {
                    Some((r, s)) if *r == d.from_revision => s,
                    other => {
                        let holding = other.as_ref().map(|(r, _)| *r).unwrap_or(0);
                        return Ok(Some(self.nack(
                            d.to_revision,
                            format!(
                                "delta from revision {} but this agent holds {holding}",
                                d.from_revision
                            ),
                            "apply delta",
                        )));
                    }
                };
                match apply_delta(base, &d, FragmentCache::process()) {
                    Ok(next) => (d.to_revision, next),
                    Err(e) => {
                        return Ok(Some(self.nack(d.to_revision, e.to_string(), "apply delta")));
                    }
                }
            }
        };
        // The control plane's trace id for this revision, so the agent's
        // logs of the apply join the rollout's trace.
        let trace_id = m
            .traceparent
            .split('-')
            .nth(1)
            .filter(|t| t.len() == 32)
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!("apply", revision, trace_id = %trace_id);
        // A child of the control plane's rollout span, when exported.
        crate::telemetry::set_remote_parent(&span, &m.traceparent);
        use tracing::Instrument as _;
        Ok(Some(self.apply(revision, wanted).instrument(span).await))
    }

    fn nack(&mut self, revision: u64, error: String, operation: &str) -> AgentMessage {
        tracing::warn!(revision, "nack: {error} ({operation})");
        self.metrics.nacks.inc();
        self.note(|p| {
            p.nacks += 1;
            p.last_error = Some(error.clone());
        });
        // What the kernel holds is no longer known for sure.
        self.held = None;
        envelope(AgentBody::Nack(Nack {
            revision,
            error,
            failed_operation: operation.to_string(),
        }))
    }

    async fn apply(&mut self, revision: u64, state: NodeDataplane) -> AgentMessage {
        let started = Instant::now();
        let target = state.clone();
        let result = if self.options.dry_run {
            // Touches nothing, reads nothing: plans from what it was sent.
            let held = self
                .held
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let planned = Applier::plan_from(&held, &target).map(|ops| {
                tracing::info!(
                    revision,
                    operations = ops.len(),
                    "dry run: planned, nothing applied"
                );
            });
            Some(planned)
        } else {
            // From a state this agent verified, only the difference is
            // applied and read back; otherwise the whole kernel is.
            let held = self.held.as_ref().map(|(_, s)| s.clone());
            self.with_applier(move |a| match held {
                Some(held) => a.apply_from(&held, &target).map(|_| ()),
                None => a.apply(&target).map(|_| ()),
            })
            .await
        };
        match result {
            Some(Ok(())) => {
                let took = started.elapsed();
                let digest = state.digest();
                if let Some(local) = self.local() {
                    let record = Applied {
                        node: self.options.node.clone(),
                        revision,
                        digest,
                        applied_at: unix_millis() / 1000,
                    };
                    if let Err(e) = local.save_with_state(&record, &state) {
                        tracing::warn!("cannot record the applied state: {e}");
                    }
                }
                self.held = Some((revision, state));
                self.metrics
                    .revision
                    .set(i64::try_from(revision).unwrap_or(i64::MAX));
                self.metrics.apply_seconds.observe(took.as_secs_f64());
                self.metrics
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.note(|p| {
                    p.revision = revision;
                    p.last_apply = took;
                    p.last_error = None;
                });
                envelope(AgentBody::Ack(Ack {
                    revision,
                    digest: digest_bytes(&digest),
                    apply_micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                }))
            }
            Some(Err(e)) => {
                let operation = failed_operation(&e);
                self.nack(revision, e.to_string(), &operation)
            }
            None => self.nack(revision, "the apply worker failed".into(), "apply"),
        }
    }

    /// Re-reads the kernel; puts back what someone changed.
    async fn repair_drift(&mut self) {
        let Some((revision, state)) = self.held.clone() else {
            return;
        };
        if self.options.dry_run {
            return;
        }
        let check = state.clone();
        self.metrics.drift_checks.inc();
        match self.with_applier(move |a| a.verify(&check)).await {
            Some(Err(ApplyError::Mismatch { differences, .. })) => {
                tracing::warn!(revision, "drift: {}", differences.join("; "));
                match self.with_applier(move |a| a.apply(&state)).await {
                    Some(Ok(_)) => {
                        self.note(|p| p.drift_repairs += 1);
                        self.metrics.drift_repairs.inc();
                    }
                    Some(Err(e)) => tracing::warn!("drift repair failed: {e}"),
                    None => {}
                }
            }
            Some(Err(e)) => tracing::warn!("drift check failed: {e}"),
            _ => {}
        }
    }
}
