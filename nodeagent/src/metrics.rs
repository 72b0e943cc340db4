//! The agent's Prometheus metrics, and its readiness (once the kernel
//! holds a revision) for the `/readyz` endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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
