//! The agent's side of the stream: connect, say what the kernel holds,
//! apply what comes, ack or nack; reconnect with jittered backoff and keep
//! the kernel as it is while the control plane is away (fail static).
//! Between messages it drains removed TCP real servers and repairs drift.
//!
//! One exception to fail static, the fail-safe ([`Failsafe`]): a revision
//! may cut the node's own path to the control plane, and then no later
//! revision could ever replace it. When the stream is lost within
//! `window` of applying revision R, the state before R was proven good
//! (the control plane was heard from while it was held), and the control
//! plane is not back within `after`, the agent goes back to that state by
//! itself — once: it refuses R's state from then on, until it restarts
//! (a nack naming the fail-safe), and never steps back further.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use setpoint_dataplane::text::clean_text;
use setpoint_dataplane::{Digest, NodeDataplane};
use setpoint_proto::parts::{FragmentCache, apply_delta, snapshot_state_cached};
use setpoint_proto::pieces::Reassembly;
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_client::AgentStreamClient;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{Ack, AgentMessage, ControlMessage, Heartbeat, Hello, Nack};
use setpoint_proto::{PROTOCOL_VERSION, digest_bytes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use crate::apply::{Applier, ApplyError, Base, Verified};
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
    /// mTLS to the control plane (`controlplane` must then be `https://`).
    /// Without it the control plane must be on loopback.
    pub tls: Option<AgentTls>,
    /// How often the agent says it is alive (the rollout's canary check
    /// counts on it).
    pub heartbeat: Duration,
    /// Nothing heard from the control plane (it heartbeats every 10 s)
    /// for this long ends the stream.
    pub silence_limit: Duration,
    /// The fail-safe; `None`: always fail static.
    pub failsafe: Option<FailsafeConfig>,
}

/// When the agent returns to the previous state by itself (see the module
/// doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailsafeConfig {
    /// Losing the stream this soon after applying a revision arms the
    /// fail-safe; later, the control plane is simply away.
    pub window: Duration,
    /// How long the control plane may stay unreachable after such a loss
    /// before the agent reverts.
    pub after: Duration,
}

impl Default for FailsafeConfig {
    fn default() -> Self {
        FailsafeConfig {
            window: Duration::from_secs(120),
            after: Duration::from_secs(30),
        }
    }
}

impl AgentOptions {
    /// `node` talking to `controlplane` with the binary's defaults: this
    /// network namespace, applying for real with kernel IPVS, a drift check
    /// every 30 s, no state directory, no TLS, a heartbeat every 10 s, the
    /// stream given up after 45 s of silence, the fail-safe's defaults.
    /// Callers change what differs.
    pub fn new(node: impl Into<String>, controlplane: impl Into<String>) -> AgentOptions {
        AgentOptions {
            node: node.into(),
            controlplane: controlplane.into(),
            target: Target::default(),
            dry_run: false,
            state_dir: None,
            ipvs: IpvsMode::Kernel,
            drift_interval: Duration::from_secs(30),
            tls: None,
            heartbeat: Duration::from_secs(10),
            silence_limit: Duration::from_secs(45),
            failsafe: Some(FailsafeConfig::default()),
        }
    }
}

/// The agent's certificate (naming its node as a SAN DNS name), its key,
/// and the CA the control plane's certificate must chain to; PEM files,
/// read again at every connection, so a rotated Secret is used from the
/// next reconnect on.
#[derive(Clone, Debug)]
pub struct AgentTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The name the control plane's certificate must carry (default: the
    /// host of the `controlplane` URL).
    pub server_name: Option<String>,
}

/// Refuses a transport that would carry the node's state unauthenticated
/// over a network: plaintext is for a loopback control plane only, and TLS
/// needs an `https://` URL.
pub fn check_transport(options: &AgentOptions) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = options
        .controlplane
        .parse()
        .map_err(|e| anyhow::anyhow!("the control plane URL {:?}: {e}", options.controlplane))?;
    let host = uri.host().unwrap_or_default();
    match (&options.tls, uri.scheme_str()) {
        (Some(_), Some("https")) => Ok(()),
        (Some(_), _) => anyhow::bail!(
            "with --tls-cert the control plane URL must be https://, not {}",
            options.controlplane
        ),
        (None, Some("http")) if is_loopback_host(host) => Ok(()),
        (None, _) => anyhow::bail!(
            "refusing to talk to the control plane at {} without TLS: give --tls-cert, --tls-key and --ca \
             (plaintext is for a loopback control plane only, in development)",
            options.controlplane
        ),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (as a URL writes it, in brackets).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A channel to the control plane: plaintext, or mTLS from the files as
/// they are now.
async fn connect(options: &AgentOptions) -> anyhow::Result<tonic::transport::Channel> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let endpoint = Endpoint::from_shared(options.controlplane.clone())
        .with_context(|| format!("the control plane URL {}", options.controlplane))?;
    let endpoint = match &options.tls {
        None => endpoint,
        Some(tls) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
                .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint.tls_config(config).context("the TLS settings")?
        }
    };
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", options.controlplane))
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
    /// Times the fail-safe returned to the previous state.
    pub failsafe_reverts: u64,
}

/// A state the kernel held, by revision.
pub type Held = (u64, NodeDataplane);

/// The fail-safe's memory, pure: time is an input.
///
/// Armed by an apply when the state before it was proven good (something
/// arrived from the control plane after that state was applied); a loss
/// of the stream within `window` of the apply starts the clock, anything
/// heard from the control plane stops it; `after` later the revert is
/// due. After a revert nothing is armed until the next apply, and the
/// reverted-from state is refused, so it never loops.
#[derive(Debug)]
pub struct Failsafe {
    config: FailsafeConfig,
    /// The proven state before the latest apply.
    previous: Option<Held>,
    applied_at: Option<Instant>,
    heard_since_apply: bool,
    lost_at: Option<Instant>,
    reverted_from: Option<Digest>,
}

/// Why a state is refused: the fail-safe left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reverted {
    pub from_revision: u64,
    pub to_revision: u64,
}

impl Failsafe {
    pub fn new(config: FailsafeConfig) -> Failsafe {
        Failsafe {
            config,
            previous: None,
            applied_at: None,
            heard_since_apply: false,
            lost_at: None,
            reverted_from: None,
        }
    }

    /// A state was applied at `now`; `before` is what the kernel held.
    pub fn applied(&mut self, before: Option<Held>, now: Instant) {
        self.previous = before.filter(|_| self.heard_since_apply);
        self.applied_at = Some(now);
        self.heard_since_apply = false;
        self.lost_at = None;
    }

    /// Something arrived from the control plane.
    pub fn heard(&mut self) {
        self.heard_since_apply = true;
        self.lost_at = None;
    }

    /// The stream is gone (or could not be opened) at `now`.
    pub fn lost(&mut self, now: Instant) {
        let recent = self
            .applied_at
            .is_some_and(|t| now.saturating_duration_since(t) <= self.config.window);
        if self.lost_at.is_none() && recent && self.previous.is_some() {
            self.lost_at = Some(now);
        }
    }

    /// When the revert is due, if the clock runs.
    pub fn due_at(&self) -> Option<Instant> {
        self.lost_at.map(|t| t + self.config.after)
    }

    /// The state to return to, if the revert is due at `now`; `current`
    /// (the state left) is refused from then on.
    pub fn take_revert(&mut self, now: Instant, current: Option<Digest>) -> Option<Held> {
        if self.due_at().is_none_or(|due| now < due) {
            return None;
        }
        self.lost_at = None;
        self.applied_at = None;
        self.reverted_from = current;
        self.previous.take()
    }

    /// Whether `digest` is the state the fail-safe left.
    pub fn refuses(&self, digest: &Digest) -> bool {
        self.reverted_from.as_ref() == Some(digest)
    }
}

pub struct Agent {
    options: AgentOptions,
    applier: Arc<Mutex<Applier>>,
    /// What the kernel holds, as this agent applied and verified it (or
    /// found it recorded and the kernel still holding it); `None` when
    /// that is not known for sure. Deltas apply to it, and are planned
    /// from its kernel view in time that grows with the change.
    held: Option<Verified>,
    was_connected: bool,
    pub progress: Arc<Mutex<AgentProgress>>,
    pub metrics: Arc<AgentMetrics>,
    /// Writes what was applied to the state directory (started on first
    /// use, inside the runtime).
    recorder: Option<Recorder>,
    failsafe: Option<Failsafe>,
    /// The revisions of the fail-safe's last revert (from, to).
    reverted: Option<Reverted>,
}

/// Records applied states in the state directory after the ack, the newest
/// one when several arrive during a write. The record only lets a
/// restarted agent skip a snapshot, and the restart checks the kernel
/// against it first, so it need not be on disk before the control plane
/// hears of the apply; writing and syncing a 10,000-Service state takes
/// ~16 ms, ~17× a one-endpoint delta's apply.
struct Recorder {
    latest: tokio::sync::watch::Sender<Option<(Applied, NodeDataplane)>>,
}

impl Recorder {
    fn start(local: LocalState) -> Recorder {
        let (latest, mut pending) = tokio::sync::watch::channel(None);
        let local = Arc::new(local);
        tokio::spawn(async move {
            // Ends once the agent is gone and its last record written.
            while pending.changed().await.is_ok() {
                let Some((record, state)) = pending.borrow_and_update().clone() else {
                    continue;
                };
                let local = local.clone();
                let saved =
                    tokio::task::spawn_blocking(move || local.save_with_state(&record, &state))
                        .await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("cannot record the applied state: {e}"),
                    Err(e) => tracing::warn!("the state recorder failed: {e}"),
                }
            }
        });
        Recorder { latest }
    }

    fn record(&self, applied: Applied, state: NodeDataplane) {
        self.latest.send_replace(Some((applied, state)));
    }
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

/// A nack that always fits the control plane's upstream limit, whatever
/// the failing tool printed: the error is cut and cleaned, or the control
/// plane would end the stream without recording why.
fn nack_message(revision: u64, error: &str, operation: &str) -> AgentMessage {
    envelope(AgentBody::Nack(Nack {
        revision,
        error: clean_text(error, setpoint_proto::MAX_NACK_TEXT_BYTES),
        failed_operation: clean_text(operation, 256),
    }))
}

/// Which step failed, for the nack.
fn failed_operation(e: &ApplyError) -> String {
    match e {
        ApplyError::Ipset(_) => "ipset restore".into(),
        ApplyError::Iptables(_) => "iptables-restore".into(),
        ApplyError::Plan(_) => "plan".into(),
        ApplyError::Template(_) => "NodePort expansion".into(),
        ApplyError::Refused { .. } => "validate".into(),
        ApplyError::Unsupported { .. } => "kernel capability check".into(),
        ApplyError::Service { operation, .. } => operation.clone(),
        ApplyError::Mismatch { .. } => "verify read-back".into(),
    }
}

impl Agent {
    pub fn new(options: AgentOptions) -> Agent {
        let applier = if options.dry_run {
            Applier::dry_run()
        } else {
            Applier::new(
                options.target.clone(),
                for_target(&options.target, options.ipvs),
            )
        };
        // A dry run applies nothing, so it has nothing to go back from.
        let failsafe = options
            .failsafe
            .filter(|f| !options.dry_run && !f.window.is_zero())
            .map(Failsafe::new);
        Agent {
            options,
            applier: Arc::new(Mutex::new(applier)),
            held: None,
            was_connected: false,
            progress: Arc::default(),
            metrics: AgentMetrics::new(),
            recorder: None,
            failsafe,
            reverted: None,
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
        let revision = record.revision;
        let verified = self
            .with_applier(move |a| {
                let held = Verified::check(revision, state)?;
                a.verify(&held)?;
                Ok::<_, ApplyError>(held)
            })
            .await;
        match verified {
            Some(Ok(held)) => {
                tracing::info!(revision, "the kernel still holds the recorded state");
                self.note(|p| p.revision = revision);
                self.held = Some(held);
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
            if let Some(f) = &mut self.failsafe {
                f.lost(Instant::now());
            }
            // A stream that was up starts the backoff over; repeated
            // failures to connect grow it.
            if self.was_connected || started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            self.was_connected = false;
            let jitter = rand::rng().random_range(0.5..1.5);
            let mut wake = Instant::now() + backoff.mul_f64(jitter);
            // The revert comes when due, not after a long backoff.
            if let Some(due) = self.failsafe.as_ref().and_then(Failsafe::due_at) {
                wake = wake.min(due);
            }
            tokio::time::sleep_until(wake.into()).await;
            self.revert_if_due().await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// The fail-safe: back to the proven previous state when the control
    /// plane has stayed unreachable since shortly after an apply.
    async fn revert_if_due(&mut self) {
        let current = self.held.as_ref().map(|h| h.state.digest());
        let left = self.held.as_ref().map_or(0, |h| h.revision);
        let Some((revision, state)) = self
            .failsafe
            .as_mut()
            .and_then(|f| f.take_revert(Instant::now(), current))
        else {
            return;
        };
        tracing::error!(
            from = left,
            to = revision,
            "fail-safe: the control plane has been unreachable since shortly after revision {left} \
             was applied; returning to revision {revision}, which it was reachable with, and \
             refusing revision {left}'s state"
        );
        self.metrics.failsafe_reverts.inc();
        self.note(|p| p.failsafe_reverts += 1);
        self.reverted = Some(Reverted {
            from_revision: left,
            to_revision: revision,
        });
        let target = state.clone();
        match self
            .with_applier(move |a| a.apply(Base::Kernel, &target).map(|(_, view)| view))
            .await
        {
            Some(Ok(view)) => {
                self.record_applied(revision, &state);
                self.held = Some(Verified {
                    revision,
                    state,
                    view,
                });
                self.metrics
                    .revision
                    .set(i64::try_from(revision).unwrap_or(i64::MAX));
                self.note(|p| p.revision = revision);
            }
            failed => {
                let why = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "the apply worker failed".to_string(),
                };
                tracing::error!("fail-safe: the revert to revision {revision} failed: {why}");
                // What the kernel holds is no longer known for sure.
                self.held = None;
            }
        }
    }

    /// Has the state directory record `state` as applied at `revision`.
    fn record_applied(&mut self, revision: u64, state: &NodeDataplane) {
        if let Some(local) = self.local() {
            let record = Applied {
                node: self.options.node.clone(),
                revision,
                digest: state.digest(),
                applied_at: unix_millis() / 1000,
            };
            self.recorder
                .get_or_insert_with(|| Recorder::start(local))
                .record(record, state.clone());
        }
    }

    async fn session(&mut self) -> anyhow::Result<()> {
        let mut client = AgentStreamClient::new(connect(&self.options).await?)
            .max_decoding_message_size(setpoint_proto::MAX_DOWNSTREAM_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(8);
        let (revision, digest) = match &self.held {
            Some(held) => (held.revision, digest_bytes(&held.state.digest())),
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
        // Heartbeats go out from their own task: an apply (or a decode)
        // that takes longer than the control plane's silence limit must
        // not get the stream cut under it.
        let beats = tx.clone();
        let every = self.options.heartbeat;
        let _heartbeats = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(every);
            loop {
                heartbeat.tick().await;
                let beat = envelope(AgentBody::Heartbeat(Heartbeat {
                    unix_millis: unix_millis(),
                }));
                if beats.send(beat).await.is_err() {
                    return;
                }
            }
        }));
        let mut drift = tokio::time::interval(self.options.drift_interval);
        drift.tick().await;
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        let mut reassembly = Reassembly::default();
        // A control plane whose packets stop arriving (a blackholed path)
        // leaves the stream open; its heartbeats tell.
        let silence = tokio::time::sleep(self.options.silence_limit);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                biased;
                message = inbound.message() => match message? {
                    None => return Ok(()),
                    Some(m) => {
                        silence
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.options.silence_limit);
                        if let Some(f) = &mut self.failsafe {
                            f.heard();
                        }
                        let Some(m) = reassembly
                            .push(m)
                            .map_err(|e| anyhow::anyhow!("the control plane's message pieces: {e}"))?
                        else {
                            continue;
                        };
                        if let Some(reply) = self.handle(m).await? {
                            tx.send(reply).await?;
                        }
                    }
                },
                _ = &mut silence => anyhow::bail!(
                    "nothing heard from the control plane for {:?}",
                    self.options.silence_limit
                ),
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
            Some(ControlBody::Piece(_)) => {
                anyhow::bail!("a message piece outside reassembly (a bug on this side)")
            }
            Some(ControlBody::Snapshot(s)) => {
                self.note(|p| p.snapshots += 1);
                self.metrics.snapshots.inc();
                // Parts are decoded through the process's cache: a part
                // this process already holds (another revision's, or in
                // the fleet benchmark another node's) is not decoded again.
                // Megabytes of JSON: decoded off the async threads.
                let revision = s.revision;
                let decoded = tokio::task::spawn_blocking(move || {
                    snapshot_state_cached(&s, FragmentCache::process()).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the decoder failed: {e}")));
                match decoded {
                    Ok(state) => (revision, state),
                    Err(e) => {
                        return Ok(Some(self.nack(revision, e, "decode snapshot")));
                    }
                }
            }
            Some(ControlBody::Delta(d)) => {
                self.note(|p| p.deltas += 1);
                self.metrics.deltas.inc();
                // The control plane acknowledges a revision that leaves this
                // node's state unchanged on the agent's behalf, so a delta's
                // base may be a newer revision of the very state held: the
                // parts' and the result's digests decide, not the revision
                // number (`apply_delta` checks both).
                let Some(held) = &self.held else {
                    return Ok(Some(self.nack(
                        d.to_revision,
                        format!(
                            "delta from revision {} but this agent holds no state",
                            d.from_revision
                        ),
                        "apply delta",
                    )));
                };
                match apply_delta(&held.state, &d, FragmentCache::process()) {
                    Ok(next) => (d.to_revision, next),
                    Err(e) => {
                        return Ok(Some(self.nack(d.to_revision, e.to_string(), "apply delta")));
                    }
                }
            }
        };
        if let Some(reverted) = self
            .failsafe
            .as_ref()
            .filter(|f| f.refuses(&wanted.digest()))
            .and(self.reverted.as_ref())
        {
            // The kernel is untouched and still holds what it held.
            let error = format!(
                "refused: the fail-safe left this state (revision {}) after it cut this node off \
                 from the control plane, and returned to revision {}",
                reverted.from_revision, reverted.to_revision
            );
            tracing::warn!(revision, "nack: {error}");
            self.metrics.nacks.inc();
            self.note(|p| p.nacks += 1);
            return Ok(Some(envelope(AgentBody::Nack(Nack {
                revision,
                error,
                failed_operation: "fail-safe".to_string(),
            }))));
        }
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
        setpoint_runtime::telemetry::set_remote_parent(&span, &m.traceparent);
        use tracing::Instrument as _;
        Ok(Some(self.apply(revision, wanted).instrument(span).await))
    }

    fn nack(&mut self, revision: u64, error: String, operation: &str) -> AgentMessage {
        tracing::warn!(revision, "nack: {error} ({operation})");
        self.metrics.nacks.inc();
        let message = nack_message(revision, &error, operation);
        self.note(|p| {
            p.nacks += 1;
            p.last_error = Some(error);
        });
        // What the kernel holds is no longer known for sure.
        self.held = None;
        message
    }

    async fn apply(&mut self, revision: u64, state: NodeDataplane) -> AgentMessage {
        let started = Instant::now();
        // From a state this agent verified, only the difference is applied
        // and read back; otherwise the whole kernel is.
        let held = self.held.clone();
        let target = state.clone();
        let apply = move |a: &mut Applier| {
            let base = held.as_ref().map_or(Base::Kernel, Base::Held);
            a.apply(base, &target).map(|(_, view)| view)
        };
        let result = if self.options.dry_run && self.held.is_some() {
            // Plans from the held view and touches nothing: time grows
            // with the change, and a thread hand-off would cost more than
            // the plan.
            self.applier.lock().ok().map(|mut a| apply(&mut a))
        } else {
            // Kernel tools, or a whole state expanded: off the async
            // threads.
            self.with_applier(apply).await
        };
        match result {
            Some(Ok(view)) => {
                let took = started.elapsed();
                let digest = state.digest();
                self.record_applied(revision, &state);
                let before = self.held.replace(Verified {
                    revision,
                    state,
                    view,
                });
                if let Some(f) = &mut self.failsafe {
                    f.applied(before.map(|h| (h.revision, h.state)), Instant::now());
                }
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
        let Some(held) = self.held.clone() else {
            return;
        };
        if self.options.dry_run {
            return;
        }
        let (revision, state) = (held.revision, held.state.clone());
        self.metrics.drift_checks.inc();
        match self.with_applier(move |a| a.verify(&held)).await {
            Some(Err(ApplyError::Mismatch { differences, .. })) => {
                tracing::warn!(revision, "drift: {}", differences.join("; "));
                match self
                    .with_applier(move |a| a.apply(Base::Kernel, &state))
                    .await
                {
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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::apply::tests::state;

    #[test]
    fn a_nack_fits_the_upstream_limit_whatever_the_tool_printed() {
        let printed = "iptables-restore: line 1 failed\n\0".repeat(100_000);
        let message = nack_message(7, &printed, "iptables-restore");
        assert!(message.encoded_len() <= setpoint_proto::MAX_UPSTREAM_MESSAGE_BYTES);
        let Some(AgentBody::Nack(nack)) = message.body else {
            panic!("not a nack: {message:?}");
        };
        assert!(nack.error.starts_with("iptables-restore: line 1 failed"));
        assert!(!nack.error.chars().any(char::is_control));
        assert_eq!(nack.failed_operation, "iptables-restore");
    }

    fn delta_message(
        from: u64,
        to: u64,
        base: &NodeDataplane,
        want: &NodeDataplane,
    ) -> ControlMessage {
        let changes = setpoint_dataplane::diff(base, want);
        let d = setpoint_proto::delta(from, to, &changes, &want.digest()).expect("delta");
        ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            traceparent: String::new(),
            body: Some(ControlBody::Delta(d)),
        }
    }

    fn agent() -> Agent {
        Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        })
    }

    #[tokio::test]
    async fn a_delta_from_a_newer_revision_of_the_held_state_applies() {
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let mut a = agent();
        a.held = Some(Verified::check(1, one.clone()).expect("valid"));
        // Revision 2 left this node unchanged: the control plane acked it on
        // the agent's behalf and sends revision 3 as a delta from 2.
        let reply = a
            .handle(delta_message(2, 3, &one, &two))
            .await
            .expect("handled")
            .expect("a reply");
        assert!(
            matches!(reply.body, Some(AgentBody::Ack(Ack { revision: 3, .. }))),
            "{reply:?}"
        );
        assert_eq!(
            a.held.as_ref().map(|h| (h.revision, h.state.digest())),
            Some((3, two.digest()))
        );
        // A delta that does not fit the held state is refused by its digest.
        let other = state(&["10.0.0.9"]);
        let reply = a
            .handle(delta_message(
                3,
                4,
                &other,
                &state(&["10.0.0.9", "10.0.0.8"]),
            ))
            .await
            .expect("handled")
            .expect("a reply");
        let Some(AgentBody::Nack(nack)) = reply.body else {
            panic!("expected a nack: {reply:?}");
        };
        assert_eq!(nack.failed_operation, "apply delta");
        assert!(a.held.is_none(), "after a nack nothing is held");
    }

    /// One row of the fail-safe's table: events at seconds since the
    /// start, and whether a revert (to which revision) comes out at the end.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Apply(u64),
        Heard,
        Lost,
    }

    fn failsafe_after(events: &[(u64, Event)], at: u64) -> Option<u64> {
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let mut f = Failsafe::new(FailsafeConfig {
            window: Duration::from_secs(60),
            after: Duration::from_secs(10),
        });
        let mut held: Option<Held> = None;
        for (t, e) in events {
            match e {
                Event::Apply(r) => {
                    let before = held.replace((*r, state(&[])));
                    f.applied(before, secs(*t));
                }
                Event::Heard => f.heard(),
                Event::Lost => f.lost(secs(*t)),
            }
        }
        f.take_revert(secs(at), None).map(|(r, _)| r)
    }

    #[test]
    fn the_failsafe_reverts_only_shortly_after_an_apply_from_a_proven_state() {
        use Event::*;
        let proven = [(0, Apply(1)), (5, Heard), (6, Apply(2))];
        let with = |more: &[(u64, Event)]| -> Vec<(u64, Event)> {
            proven.iter().chain(more).copied().collect()
        };
        // Lost 10 s after applying 2, not back for 10 s: back to 1.
        assert_eq!(failsafe_after(&with(&[(16, Lost)]), 26), Some(1));
        // … not before the bound.
        assert_eq!(failsafe_after(&with(&[(16, Lost)]), 25), None);
        // Reconnect attempts failing again do not restart the clock.
        assert_eq!(
            failsafe_after(&with(&[(16, Lost), (20, Lost), (24, Lost)]), 26),
            Some(1)
        );
        // Heard from the control plane again in time: no revert.
        assert_eq!(failsafe_after(&with(&[(16, Lost), (20, Heard)]), 40), None);
        // Lost after the window: the control plane is simply away.
        assert_eq!(failsafe_after(&with(&[(67, Lost)]), 200), None);
        // At the window's edge it still counts.
        assert_eq!(failsafe_after(&with(&[(66, Lost)]), 76), Some(1));
        // Nothing heard while 1 was held: 1 is not proven, nothing to go
        // back to.
        assert_eq!(
            failsafe_after(&[(0, Apply(1)), (6, Apply(2)), (7, Lost)], 100),
            None
        );
        // The first state has no previous.
        assert_eq!(failsafe_after(&[(0, Apply(1)), (1, Lost)], 100), None);
        // Heartbeats after applying 2 do not disarm it.
        assert_eq!(
            failsafe_after(&with(&[(7, Heard), (8, Heard), (9, Lost)]), 19),
            Some(1)
        );
    }

    #[test]
    fn the_failsafe_steps_back_once_and_refuses_the_state_it_left() {
        let t0 = Instant::now();
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.2"]));
        let mut f = Failsafe::new(FailsafeConfig {
            window: Duration::from_secs(60),
            after: Duration::from_secs(1),
        });
        f.applied(None, t0);
        f.heard();
        f.applied(Some((1, one.clone())), t0);
        f.lost(t0);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            f.take_revert(later, Some(two.digest())).map(|(r, _)| r),
            Some(1)
        );
        assert!(f.refuses(&two.digest()) && !f.refuses(&one.digest()));
        // Still unreachable: never a second step back.
        f.lost(later);
        assert_eq!(f.due_at(), None);
        assert_eq!(f.take_revert(later + Duration::from_secs(60), None), None);
    }

    #[tokio::test]
    async fn a_state_the_failsafe_left_is_refused_with_the_kernel_untouched() {
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let mut a = agent();
        let mut f = Failsafe::new(FailsafeConfig::default());
        f.reverted_from = Some(two.digest());
        a.failsafe = Some(f);
        a.reverted = Some(Reverted {
            from_revision: 2,
            to_revision: 1,
        });
        a.held = Some(Verified::check(1, one.clone()).expect("valid"));
        let reply = a
            .handle(delta_message(1, 2, &one, &two))
            .await
            .expect("handled")
            .expect("a reply");
        let Some(AgentBody::Nack(nack)) = reply.body else {
            panic!("expected a nack: {reply:?}");
        };
        assert_eq!(nack.failed_operation, "fail-safe");
        assert!(nack.error.contains("returned to revision 1"), "{nack:?}");
        assert_eq!(
            a.held.as_ref().map(|h| (h.revision, h.state.digest())),
            Some((1, one.digest())),
            "still holding what the kernel holds"
        );
        // Another state is applied as usual.
        let three = state(&["10.0.0.3"]);
        let reply = a
            .handle(delta_message(1, 3, &one, &three))
            .await
            .expect("handled")
            .expect("a reply");
        assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
    }

    #[tokio::test]
    async fn applied_states_are_recorded_after_the_ack_newest_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            state_dir: Some(dir.path().to_path_buf()),
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        });
        let states = [
            state(&["10.0.0.1"]),
            state(&["10.0.0.1", "10.0.0.2"]),
            state(&["10.0.0.2"]),
        ];
        for (revision, s) in (1u64..).zip(states.iter()) {
            let reply = a.apply(revision, s.clone()).await;
            assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
        }
        // Written in the background: wait for the newest, then check the
        // record and the state agree.
        let local = LocalState::new(dir.path());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let record = local.load().expect("readable record");
            if record.as_ref().is_some_and(|r| r.revision == 3) {
                break;
            }
            assert!(Instant::now() < deadline, "newest record: {record:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let record = local.load().expect("record").expect("present");
        assert_eq!(record.digest, states[2].digest());
        assert_eq!(local.load_state().expect("state"), Some(states[2].clone()));
    }
}
