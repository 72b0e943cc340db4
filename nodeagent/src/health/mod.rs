//! The agent's health servers, as kube-proxy serves them: a Service's
//! health-check node port (200 while this node has a local endpoint for it
//! and the proxy is healthy, else 503: cloud load balancers send
//! `externalTrafficPolicy: Local` traffic only to nodes that answer 200),
//! and the proxy's own `/healthz` and `/livez` (10256 by default).
//!
//! ```text
//!  client: revision received ─▶ Tracker::received      (oldest waiting)
//!          revision applied  ─▶ Tracker::applied       (draining from the state)
//!                            ─▶ ServiceServers::update (ports open/close, counts)
//!  servers: request ─▶ decide (status, kube-proxy's body) ─▶ answer, close
//! ```
//!
//! `decide` is pure, time as input; `http` the bounded one-request server;
//! `listen` makes sockets inside the agent's network namespace;
//! `services` and `proxy` the two kinds of server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

pub mod decide;
pub mod http;
pub mod listen;
pub mod proxy;
pub mod services;

pub use decide::{Endpoint, ProxyHealth, Report};
pub use http::Limits;
pub use services::{ServiceCheck, ServiceServers, Updated};

/// kube-proxy's bound: twice its 30 s sync period.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_PROXY_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 10256);

/// Which health servers the agent runs.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// How long a received revision may wait unapplied before the proxy
    /// is unhealthy.
    pub stale_after: Duration,
    /// Where `/healthz` and `/livez` listen; `None`: not served.
    pub proxy_listen: Option<SocketAddr>,
    /// Where the Services' health-check ports listen
    /// ([`listen::ALL_ADDRESSES`] on a node); `None`: not served.
    pub service_ip: Option<IpAddr>,
    pub limits: Limits,
}

impl Default for HealthConfig {
    /// Nothing served (what tests and embedded agents want); the binary
    /// turns the servers on.
    fn default() -> HealthConfig {
        HealthConfig {
            stale_after: DEFAULT_STALE_AFTER,
            proxy_listen: None,
            service_ip: None,
            limits: Limits::default(),
        }
    }
}

/// The proxy's health, shared by the client that writes it, the servers
/// that answer from it and the metrics that export it.
#[derive(Clone, Debug)]
pub struct Tracker(Arc<Mutex<ProxyHealth>>);

impl Tracker {
    pub fn new(stale_after: Duration) -> Tracker {
        Tracker(Arc::new(Mutex::new(ProxyHealth::new(
            stale_after,
            Instant::now(),
        ))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProxyHealth) -> T) -> T {
        // A panic elsewhere while holding it leaves a valid value.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn set_bound(&self, stale_after: Duration) {
        self.with(|h| h.bound = stale_after);
    }

    /// A revision arrived.
    pub fn received(&self) {
        self.with(|h| h.received(Instant::now()));
    }

    /// The kernel holds what arrived last; `draining` as that state says.
    pub fn applied(&self, draining: bool) {
        self.with(|h| h.applied(Instant::now(), SystemTime::now(), draining));
    }

    pub fn healthy(&self) -> bool {
        self.with(|h| h.healthy(Instant::now()))
    }

    pub fn report(&self, now: Instant, wall: SystemTime) -> Report {
        self.with(|h| h.report(now, wall))
    }
}

/// `setpoint_agent_proxy_healthy`, evaluated at each scrape (staleness
/// comes with time, not with an event).
impl Collector for Tracker {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = self.report(Instant::now(), SystemTime::now());
        for (name, help, value) in [
            (
                "setpoint_agent_proxy_healthy",
                "1 while no received revision has waited past the bound (what /livez answers)",
                r.healthy,
            ),
            (
                "setpoint_agent_node_eligible",
                "0 while the applied state says the node is being deleted or drained (/healthz answers 503)",
                r.node_eligible,
            ),
        ] {
            let gauge = ConstGauge::new(i64::from(value));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// What the client drives after each apply: the tracker and, when served,
/// the Services' health-check ports.
pub struct Health {
    pub tracker: Tracker,
    pub services: Option<ServiceServers>,
}

impl Health {
    /// The kernel now holds a state with these health checks; `draining`
    /// from the same state.
    pub async fn applied(&mut self, checks: &BTreeMap<u16, ServiceCheck>, draining: bool) {
        self.tracker.applied(draining);
        if let Some(servers) = &mut self.services {
            servers.update(checks).await;
        }
    }
}
