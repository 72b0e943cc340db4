//! The agent's side of the stream: connect, say what the kernel holds,
//! apply what comes, ack or nack; reconnect with jittered backoff and keep
//! the kernel as it is while the control plane is away (fail static),
//! with one exception, the [`Failsafe`].
//!
//! ```text
//!  run: resume (record) ─▶ loop { session ─▶ backoff ─▶ fail-safe revert if due }
//!  session: connect ─▶ hello ─▶ ┬─ message ─▶ receive ─▶ apply ─▶ ack | nack
//!                               ├─ heartbeats (their own task)
//!                               └─ drift repaired, drained real servers reaped
//! ```
//!
//! `connect` opens the channel, `session` serves one stream, `receive`
//! takes one message to its reply, `record` keeps the state directory,
//! `failsafe` decides, time as input, when to step back.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::apply::{Applier, Base, Verified};
use crate::health::{Health, HealthConfig};
use crate::metrics::AgentMetrics;
use crate::node_addresses::{NodeAddresses, NodePortAddresses};
use crate::services::{IpvsMode, for_target};
use crate::target::Target;

mod addresses;
mod connect;
mod endpoints;
mod failsafe;
mod health;
mod receive;
mod record;
mod session;

pub use connect::{AgentTls, MAX_ENDPOINTS, check_transport};
pub use endpoints::Endpoints;
pub use failsafe::{Failsafe, FailsafeConfig, Held, Reverted};
use record::Recorder;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// `https://host:port` of the control plane's agent listener: one
    /// per replica when there are several (or one name or load balancer in
    /// front of them). Each agent starts at a random one of the list, so a
    /// fleet spreads over the replicas, and moves to the next whenever a
    /// stream ends or a connection fails (see [`Endpoints`]).
    pub controlplanes: Vec<String>,
    pub target: Target,
    /// Plan and report, touch nothing; acks mean "accepted".
    pub dry_run: bool,
    pub state_dir: Option<PathBuf>,
    pub ipvs: IpvsMode,
    pub drift_interval: Duration,
    /// mTLS to the control plane (every endpoint must then be `https://`).
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
    /// The health servers (kube-proxy's health-check node ports and
    /// `/healthz`, `/livez`), in `target`'s network namespace; none by
    /// default. The health-check ports are not opened in a dry run.
    pub health: HealthConfig,
    /// Where the node-port address sets come from: the control plane's
    /// list (`primary`), or the node's own addresses, followed.
    pub node_port_addresses: NodePortAddresses,
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
            controlplanes: vec![controlplane.into()],
            target: Target::default(),
            dry_run: false,
            state_dir: None,
            ipvs: IpvsMode::Kernel,
            drift_interval: Duration::from_secs(30),
            tls: None,
            heartbeat: Duration::from_secs(10),
            silence_limit: Duration::from_secs(45),
            failsafe: Some(FailsafeConfig::default()),
            health: HealthConfig::default(),
            node_port_addresses: NodePortAddresses::Primary,
        }
    }
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
    /// Told of every revision applied.
    health: Health,
    /// The node's own NodePort addresses as they change, when followed.
    addresses: Option<tokio::sync::watch::Receiver<NodeAddresses>>,
    /// Reads the policy verdicts the applied state logs; none in a dry
    /// run, which has no kernel.
    verdicts: Option<crate::verdicts::VerdictLog>,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
        let metrics = AgentMetrics::new();
        let health = health::servers(&options, &metrics);
        let verdicts = (!options.dry_run).then(|| {
            crate::verdicts::VerdictLog::new(options.target.netns.clone(), metrics.verdicts.clone())
        });
        Agent {
            verdicts,
            options,
            applier: Arc::new(Mutex::new(applier)),
            held: None,
            was_connected: false,
            progress: Arc::default(),
            metrics,
            recorder: None,
            failsafe,
            reverted: None,
            addresses: None,
            health,
        }
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

    /// Connects, serves, reconnects; returns only if the task is dropped.
    /// The proxy health server, when configured, runs as long.
    pub async fn run(mut self) {
        let _proxy_health = self.serve_proxy_health();
        self.follow_addresses().await;
        self.resume().await;
        let mut endpoints = Endpoints::default();
        let draw = rand::rng().random_range(0..self.options.controlplanes.len().max(1));
        Endpoints::start(&mut self.options.controlplanes, draw);
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
            // The next endpoint, after a jittered wait: a stream that was
            // up starts the backoff over; failures to connect to every
            // endpoint in turn grow it.
            let wait = endpoints.ended(
                &mut self.options.controlplanes,
                self.was_connected,
                started.elapsed(),
                rand::rng().random_range(0.5..1.5),
            );
            self.was_connected = false;
            let mut wake = Instant::now() + wait;
            // The revert comes when due, not after a long backoff.
            if let Some(due) = self.failsafe.as_ref().and_then(Failsafe::due_at) {
                wake = wake.min(due);
            }
            self.sleep_following_addresses(wake).await;
            self.revert_if_due().await;
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
                self.health_applied(&state).await;
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
}
