//! Prometheus metrics of the control plane, and the HTTP endpoint that
//! serves them with `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub ready: AtomicBool,
    pub agents_connected: Gauge,
    pub revisions: Counter,
    pub snapshots_sent: Counter,
    pub deltas_sent: Counter,
    pub delta_bytes: Counter,
    pub snapshot_bytes: Counter,
    /// Revisions a session never sent because a newer head superseded
    /// them first (coalescing: merged into the next send, not queued).
    pub revisions_coalesced: Counter,
    pub nacks: Counter,
    pub store_errors: Counter,
    /// Agent connections that failed the TLS handshake (no or a bad
    /// client certificate, plaintext to a TLS port, a timeout).
    pub tls_handshake_failures: Counter,
    /// Times the agent listener's certificate files were reloaded.
    pub tls_reloads: Counter,
    /// Streams refused because the hello named another node than the
    /// client certificate.
    pub identity_refusals: Counter,
    /// Agent connections closed because they carried no agent session for
    /// the idle limit (a peer that connects and never says hello).
    pub agent_idle_closes: Counter,
    /// Snapshot slots taken back from sessions whose agent did not answer
    /// the snapshot in time.
    pub snapshot_slot_expiries: Counter,
    /// Agent reports the store refused (bad node name, a row refused).
    pub agent_statuses_refused: Counter,
    /// Agent reports dropped because too many nodes' reports were waiting.
    pub agent_statuses_dropped: Counter,
    pub compute_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub round_trip: Histogram,
    /// The SLI, one observation per node and revision (see `crate::sli`).
    pub programming: Histogram,
    /// Per revision: the time until a share of the counted nodes acked.
    pub convergence: Family<ShareLabel, Histogram, fn() -> Histogram>,
    /// Counted nodes that have not acked the newest revision.
    pub convergence_pending_nodes: Gauge,
    /// SLI events that did not fit the tracker's queue.
    pub sli_events_dropped: Counter,
    pub rollouts_promoted: Counter,
    pub rollouts_halted: Counter,
    pub rollout_rollbacks: Counter,
    /// Compute's refusals: addresses, Services left out, invalid states.
    pub service_problems: crate::leader::ProblemGauges,
    /// 1 for a kind the Kubernetes API does not serve to this replica (404:
    /// not installed, 403: not allowed by its ClusterRole), counted as
    /// empty; 0 once it is.
    pub kube_kinds_not_served: Family<KindLabel, Gauge>,
    /// Connections a listener closed before or instead of serving them
    /// (limits, handshakes, silence), by listener and reason.
    pub connections_dropped: crate::peer_limits::Drops,
    /// Times the admin token file was read again after a change.
    pub admin_token_reloads: Counter,
    /// Times the admin listener's certificate files were reloaded.
    pub admin_tls_reloads: Counter,
}

fn seconds() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The share of a revision's counted nodes: "0.5", "0.99" or "1".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShareLabel {
    pub share: &'static str,
}

/// A kind of object the Kubernetes source watches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// kube-proxy's `network_programming_duration_seconds` buckets (0.25 s,
/// 0.5 s, 1–59 s by 1 s, 60–115 s by 5 s, 120–300 s by 30 s), so histograms
/// of both compare bucket for bucket, with finer ones below 250 ms where
/// Setpoint's figures are.
pub fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| f64::from(60 + 5 * i)));
    b.extend((0..7).map(|i| f64::from(120 + 30 * i)));
    b
}

fn programming() -> Histogram {
    Histogram::new(programming_buckets())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            agents_connected: Gauge::default(),
            revisions: Counter::default(),
            snapshots_sent: Counter::default(),
            deltas_sent: Counter::default(),
            delta_bytes: Counter::default(),
            snapshot_bytes: Counter::default(),
            revisions_coalesced: Counter::default(),
            nacks: Counter::default(),
            store_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            tls_reloads: Counter::default(),
            identity_refusals: Counter::default(),
            agent_idle_closes: Counter::default(),
            snapshot_slot_expiries: Counter::default(),
            agent_statuses_refused: Counter::default(),
            agent_statuses_dropped: Counter::default(),
            compute_seconds: seconds(),
            commit_seconds: seconds(),
            apply_seconds: seconds(),
            round_trip: seconds(),
            programming: programming(),
            convergence: Family::new_with_constructor(programming),
            convergence_pending_nodes: Gauge::default(),
            sli_events_dropped: Counter::default(),
            rollouts_promoted: Counter::default(),
            rollouts_halted: Counter::default(),
            rollout_rollbacks: Counter::default(),
            service_problems: Default::default(),
            kube_kinds_not_served: Family::default(),
            connections_dropped: Default::default(),
            admin_token_reloads: Counter::default(),
            admin_tls_reloads: Counter::default(),
        };
        let r = &mut registry;
        r.register(
            "setpoint_agents_connected",
            "Agents with an open stream",
            m.agents_connected.clone(),
        );
        r.register(
            "setpoint_revisions",
            "Revisions committed by this process",
            m.revisions.clone(),
        );
        r.register(
            "setpoint_snapshots_sent",
            "Full states sent to agents",
            m.snapshots_sent.clone(),
        );
        r.register(
            "setpoint_deltas_sent",
            "Deltas sent to agents",
            m.deltas_sent.clone(),
        );
        r.register(
            "setpoint_delta_bytes",
            "Bytes of delta payloads sent",
            m.delta_bytes.clone(),
        );
        r.register(
            "setpoint_snapshot_bytes",
            "Bytes of snapshot payloads sent (as encoded for each agent: deflated parts or JSON)",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "setpoint_revisions_coalesced",
            "Revisions an agent was never sent because a newer one superseded them first (merged into the next delta or snapshot, not queued)",
            m.revisions_coalesced.clone(),
        );
        r.register(
            "setpoint_nacks",
            "Applies agents reported as failed",
            m.nacks.clone(),
        );
        r.register(
            "setpoint_store_errors",
            "Store operations that failed",
            m.store_errors.clone(),
        );
        r.register(
            "setpoint_tls_handshake_failures",
            "Agent connections that failed the TLS handshake",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "setpoint_tls_reloads",
            "Reloads of the agent listener's certificate files",
            m.tls_reloads.clone(),
        );
        r.register(
            "setpoint_identity_refusals",
            "Agent streams refused: the hello named another node than the certificate",
            m.identity_refusals.clone(),
        );
        r.register(
            "setpoint_agent_idle_closes",
            "Agent connections closed for carrying no agent session (no hello) too long",
            m.agent_idle_closes.clone(),
        );
        r.register(
            "setpoint_snapshot_slot_expiries",
            "Snapshot slots taken back because the agent did not answer the snapshot in time",
            m.snapshot_slot_expiries.clone(),
        );
        r.register(
            "setpoint_agent_statuses_refused",
            "Agent reports the store refused to record",
            m.agent_statuses_refused.clone(),
        );
        r.register(
            "setpoint_agent_statuses_dropped",
            "Agent reports dropped because too many nodes' reports were waiting",
            m.agent_statuses_dropped.clone(),
        );
        r.register(
            "setpoint_compute_duration_seconds",
            "Index update and state computation per revision",
            m.compute_seconds.clone(),
        );
        r.register(
            "setpoint_commit_duration_seconds",
            "Store commit per revision",
            m.commit_seconds.clone(),
        );
        r.register(
            "setpoint_apply_duration_seconds",
            "Agent apply time, as acked",
            m.apply_seconds.clone(),
        );
        r.register(
            "setpoint_send_to_ack_seconds",
            "From sending a revision to its ack",
            m.round_trip.clone(),
        );
        // kube-proxy's `kubeproxy_network_programming_duration_seconds`
        // under this project's prefix: same meaning, same buckets.
        r.register(
            "setpoint_network_programming_duration_seconds",
            "From the change (an EndpointSlice's last-change-trigger-time, else when the control plane saw it) to a node's ack of a revision carrying it; one per node and revision",
            m.programming.clone(),
        );
        r.register(
            "setpoint_revision_convergence_seconds",
            "Per revision, from its start to when this share of the nodes it counts had acked",
            m.convergence.clone(),
        );
        r.register(
            "setpoint_convergence_pending_nodes",
            "Nodes counted for the newest revision that have not acked it",
            m.convergence_pending_nodes.clone(),
        );
        r.register(
            "setpoint_sli_events_dropped",
            "Acks and session events the programming-latency tracker had no room for",
            m.sli_events_dropped.clone(),
        );
        r.register(
            "setpoint_rollouts_promoted",
            "Canary rollouts whose revision went on to every node",
            m.rollouts_promoted.clone(),
        );
        r.register(
            "setpoint_rollouts_halted",
            "Canary rollouts halted by failing canaries",
            m.rollouts_halted.clone(),
        );
        r.register(
            "setpoint_rollout_rollbacks",
            "Canary nodes rolled back automatically by a halted rollout",
            m.rollout_rollbacks.clone(),
        );
        r.register(
            "setpoint_connections_dropped",
            "Connections a listener closed unserved: over a limit, a failed or slow handshake, silence",
            m.connections_dropped.clone(),
        );
        r.register(
            "setpoint_admin_token_reloads",
            "Reloads of the admin token file after a change",
            m.admin_token_reloads.clone(),
        );
        r.register(
            "setpoint_admin_tls_reloads",
            "Reloads of the admin listener's certificate files",
            m.admin_tls_reloads.clone(),
        );
        r.register(
            "setpoint_kube_kind_not_served",
            "1 for a kind the Kubernetes API answers 404 or 403 for (an optional CRD not installed, a ClusterRole older than the control plane): watched as empty and asked again after a backoff",
            m.kube_kinds_not_served.clone(),
        );
        m.service_problems.register(r);
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl setpoint_runtime::http::Exposed for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
    fn not_ready(&self) -> Option<&'static str> {
        (!self.ready.load(Ordering::Relaxed)).then_some("not ready")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve_http(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    setpoint_runtime::http::serve(metrics, listener).await
}
