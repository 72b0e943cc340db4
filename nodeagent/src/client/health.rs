//! The client's side of the health servers: built from the options,
//! told of each state the kernel comes to hold.

use setpoint_dataplane::NodeDataplane;
use tokio_util::task::AbortOnDropHandle;

use super::{Agent, AgentOptions};
use crate::health::{Health, ServiceCheck, ServiceServers};
use crate::metrics::AgentMetrics;

/// The health-check servers `options` ask for, answering from `metrics`'
/// proxy health. A dry run must not answer load balancers for a node it
/// does not program: no health-check ports then.
pub(super) fn servers(options: &AgentOptions, metrics: &AgentMetrics) -> Health {
    metrics.proxy_health.set_bound(options.health.stale_after);
    let services = options
        .health
        .service_ip
        .filter(|_| !options.dry_run)
        .map(|ip| {
            ServiceServers::new(
                options.target.netns.clone(),
                ip,
                options.health.limits,
                metrics.proxy_health.clone(),
                metrics.health.clone(),
            )
        });
    Health {
        tracker: metrics.proxy_health.clone(),
        services,
    }
}

/// The health checks a state names, as the servers take them.
fn checks(state: &NodeDataplane) -> std::collections::BTreeMap<u16, ServiceCheck> {
    state
        .health_checks()
        .into_iter()
        .map(|(port, c)| {
            let check = ServiceCheck {
                namespace: c.namespace,
                name: c.name,
                local_endpoints: c.local_endpoints,
            };
            (port, check)
        })
        .collect()
}

impl Agent {
    /// The kernel holds `state`: the proxy is up to date, and the
    /// health-check ports answer from it.
    /// Tells what follows the applied state (the health servers, the
    /// verdict log) that `state` is now applied.
    pub(super) async fn health_applied(&mut self, state: &NodeDataplane) {
        self.health
            .applied(&checks(state), state.node_draining())
            .await;
        if let Some(v) = &mut self.verdicts {
            v.applied(state);
        }
    }

    /// The proxy health server, when configured, until the handle drops.
    pub(super) fn serve_proxy_health(&self) -> Option<AbortOnDropHandle<()>> {
        let addr = self.options.health.proxy_listen?;
        Some(AbortOnDropHandle::new(tokio::spawn(
            crate::health::proxy::run(
                addr,
                self.options.target.netns.clone(),
                self.options.health.limits,
                self.metrics.proxy_health.clone(),
                self.metrics.health.clone(),
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::time::Duration;

    use setpoint_dataplane::{Fragment, HealthCheck, NodeCondition};
    use setpoint_integration::{Netns, require_root_and_tools};
    use setpoint_proto::v1::agent_message::Body as AgentBody;

    use super::*;
    use crate::health::HealthConfig;
    use crate::health::listen::ALL_ADDRESSES;
    use crate::services::IpvsMode;
    use crate::target::Target;

    const PORT: u16 = 31_999;

    fn state(local_endpoints: u32, draining: bool) -> NodeDataplane {
        let mut f = Fragment::new();
        f.put_health_check(
            PORT,
            HealthCheck {
                namespace: "shop".to_string(),
                name: "web".to_string(),
                local_endpoints,
            },
        );
        if draining {
            f.add_node_condition(NodeCondition::Draining);
        }
        NodeDataplane::from_fragment(f)
    }

    /// The status a GET of the health-check port answers inside `netns`,
    /// `None` when nothing listens.
    fn status_in(netns: &str) -> Option<u16> {
        crate::in_netns(Some(netns), || {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            conn.write_all(b"GET / HTTP/1.1\r\n\r\n").ok()?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply).ok()?;
            reply.split(' ').nth(1)?.parse().ok()
        })
        .ok()
        .flatten()
    }

    async fn apply(a: &mut Agent, revision: u64, state: NodeDataplane) {
        a.metrics.proxy_health.received();
        let reply = a.apply(revision, state).await;
        assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
    }

    /// The agent's applies drive the health-check port inside its
    /// namespace: opened by the first state naming it, 200/503 with the
    /// count, closed by a state without it; draining reaches the tracker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applied_states_drive_the_health_check_ports() {
        require_root_and_tools();
        let ns = Netns::create("agent-hc").expect("netns");
        let name = ns.name().to_string();
        let mut a = Agent::new(AgentOptions {
            target: Target {
                netns: Some(name.clone()),
            },
            ipvs: IpvsMode::Simulated,
            failsafe: None,
            health: HealthConfig {
                service_ip: Some(ALL_ADDRESSES),
                ..HealthConfig::default()
            },
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        });
        let probe = || {
            let name = name.clone();
            tokio::task::spawn_blocking(move || status_in(&name))
        };
        apply(&mut a, 1, state(2, false)).await;
        assert_eq!(probe().await.expect("probe"), Some(200));
        apply(&mut a, 2, state(0, false)).await;
        assert_eq!(probe().await.expect("probe"), Some(503));
        apply(&mut a, 3, state(1, true)).await;
        assert_eq!(probe().await.expect("probe"), Some(200));
        let report = a
            .metrics
            .proxy_health
            .report(std::time::Instant::now(), std::time::SystemTime::now());
        assert!(report.healthy && !report.node_eligible, "{report:?}");
        apply(&mut a, 4, NodeDataplane::default()).await;
        let mut closed = false;
        for _ in 0..100 {
            if probe().await.expect("probe").is_none() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the port closed with the state that dropped it");
        assert!(
            a.metrics.encode().contains(
                "setpoint_agent_health_requests_total{server=\"service\",code=\"503\"} 1"
            )
        );
    }
}
