//! The agent's Prometheus metrics, and its readiness (once the kernel
//! holds a revision) for the `/readyz` endpoint; the health servers'
//! counters and the proxy's health ([`crate::health::Tracker`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct AgentMetrics {
    registry: Registry,
    pub ready: AtomicBool,
    pub connected: Gauge,
    pub revision: Gauge,
    pub snapshots: Counter,
    pub deltas: Counter,
    pub nacks: Counter,
    pub drift_checks: Counter,
    pub drift_repairs: Counter,
    pub drained: Counter,
    pub failsafe_reverts: Counter,
    pub apply_seconds: Histogram,
    /// Writing the applied state to the state directory (after the ack).
    pub record_seconds: Histogram,
    /// Failed reads of the node's addresses (`--nodeport-addresses`).
    pub nodeport_address_failures: Counter,
    pub health: HealthMetrics,
    /// The proxy's health the health servers answer from, written by the
    /// client; exported as `setpoint_agent_proxy_healthy`.
    pub proxy_health: crate::health::Tracker,
    /// The policy verdict log ([`crate::verdicts`]).
    pub verdicts: crate::verdicts::VerdictMetrics,
}

/// Which kind of health server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HealthServer {
    /// A Service's health-check node port.
    Service,
    /// `/healthz` and `/livez`.
    Proxy,
}

/// `service`, `proxy`.
impl EncodeLabelValue for HealthServer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            HealthServer::Service => "service",
            HealthServer::Proxy => "proxy",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthRequestLabels {
    pub server: HealthServer,
    /// The status answered, `timeout` or `gone` (closed before a request).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthServerLabels {
    pub server: HealthServer,
}

/// The health servers' metrics; clones count into the same series.
#[derive(Clone, Debug, Default)]
pub struct HealthMetrics {
    pub requests: Family<HealthRequestLabels, Counter>,
    pub bind_failures: Family<HealthServerLabels, Counter>,
    /// Health-check ports listening now.
    pub service_servers: Gauge,
}

impl HealthMetrics {
    pub fn request(&self, server: HealthServer, outcome: crate::health::http::Outcome) {
        use crate::health::http::Outcome;
        let code = match outcome {
            Outcome::Answered(status) => status.to_string(),
            Outcome::TimedOut => "timeout".to_string(),
            Outcome::Gone => "gone".to_string(),
        };
        self.requests
            .get_or_create(&HealthRequestLabels { server, code })
            .inc();
    }

    pub fn bind_failed(&self, server: HealthServer) {
        self.bind_failures
            .get_or_create(&HealthServerLabels { server })
            .inc();
    }

    /// Requests answered with `code` (`"200"`, `"timeout"`, …) so far.
    pub fn requests_with(&self, server: HealthServer, code: &str) -> u64 {
        self.requests
            .get_or_create(&HealthRequestLabels {
                server,
                code: code.to_string(),
            })
            .get()
    }
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        let mut registry = Registry::default();
        let m = AgentMetrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            connected: Gauge::default(),
            revision: Gauge::default(),
            snapshots: Counter::default(),
            deltas: Counter::default(),
            nacks: Counter::default(),
            drift_checks: Counter::default(),
            drift_repairs: Counter::default(),
            drained: Counter::default(),
            failsafe_reverts: Counter::default(),
            // 0.5 ms … ~16 s.
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            record_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            nodeport_address_failures: Counter::default(),
            health: HealthMetrics::default(),
            proxy_health: crate::health::Tracker::new(crate::health::DEFAULT_STALE_AFTER),
            verdicts: crate::verdicts::VerdictMetrics::default(),
        };
        let r = &mut registry;
        r.register(
            "setpoint_agent_connected",
            "1 while the stream to the control plane is up",
            m.connected.clone(),
        );
        r.register(
            "setpoint_agent_revision",
            "The revision the kernel holds",
            m.revision.clone(),
        );
        r.register(
            "setpoint_agent_snapshots",
            "Full states received",
            m.snapshots.clone(),
        );
        r.register("setpoint_agent_deltas", "Deltas received", m.deltas.clone());
        r.register(
            "setpoint_agent_nacks",
            "Revisions this agent could not apply",
            m.nacks.clone(),
        );
        r.register(
            "setpoint_agent_drift_checks",
            "Full kernel re-reads",
            m.drift_checks.clone(),
        );
        r.register(
            "setpoint_agent_drift_repairs",
            "Re-applies after someone changed the kernel",
            m.drift_repairs.clone(),
        );
        r.register(
            "setpoint_agent_drained_real_servers",
            "Removed TCP real servers deleted after draining",
            m.drained.clone(),
        );
        r.register(
            "setpoint_agent_failsafe_reverts",
            "Returns to the previous state after losing the control plane shortly after an apply",
            m.failsafe_reverts.clone(),
        );
        r.register(
            "setpoint_agent_apply_duration_seconds",
            "Apply including read-back",
            m.apply_seconds.clone(),
        );
        r.register(
            "setpoint_agent_record_duration_seconds",
            "Writing the applied state to the state directory after the ack (encode, write, fsync, rename)",
            m.record_seconds.clone(),
        );
        r.register(
            "setpoint_agent_nodeport_address_read_failures",
            "Failed reads of, or subscriptions to, the node's interface addresses for --nodeport-addresses (retried)",
            m.nodeport_address_failures.clone(),
        );
        r.register(
            "setpoint_agent_health_requests",
            "Requests to the health servers by server (service: a health-check node port; proxy: /healthz, /livez) and answer",
            m.health.requests.clone(),
        );
        r.register(
            "setpoint_agent_health_bind_failures",
            "Health server ports that could not be bound (tried again: a health-check port with the next state, the proxy's every 5 s)",
            m.health.bind_failures.clone(),
        );
        r.register(
            "setpoint_agent_health_check_servers",
            "Services' health-check node ports listening",
            m.health.service_servers.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdicts",
            "Policy verdicts the kernel logged (control plane --log-policy-verdicts), by policy, rule and verdict; rate-limited per rule in the kernel",
            m.verdicts.verdicts.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdicts_unmatched",
            "Logged packets whose prefix names no rule of the applied state, or that could not be read",
            m.verdicts.unmatched.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdicts_lost",
            "Times the kernel dropped logged packets because the agent's NFLOG queue was full",
            m.verdicts.lost.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdict_lines_suppressed",
            "Verdicts counted but not written as a log line (line rate limit)",
            m.verdicts.lines_suppressed.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdict_log_errors",
            "Failures to open, bind or read an NFLOG group (retried)",
            m.verdicts.errors.clone(),
        );
        r.register(
            "setpoint_agent_policy_verdict_groups_read",
            "NFLOG groups of the policy verdict log bound and read now",
            m.verdicts.groups_read.clone(),
        );
        r.register_collector(Box::new(m.proxy_health.clone()));
        Arc::new(AgentMetrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Ready once the kernel holds a revision (`setpoint_runtime::http`
/// serves it).
impl setpoint_runtime::http::Exposed for AgentMetrics {
    fn encode(&self) -> String {
        AgentMetrics::encode(self)
    }
    fn not_ready(&self) -> Option<&'static str> {
        (!self.ready.load(Ordering::Relaxed)).then_some("no revision applied yet")
    }
}
