//! The Services' health-check ports (kube-proxy's `healthCheckNodePort`
//! servers): one listener per port the applied state names, opened and
//! closed as the states come, the counts behind them changed in place.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio_util::task::AbortOnDropHandle;

use super::Tracker;
use super::decide::{service_body, service_status};
use super::http::{self, Answer, Limits, Outcome, Request, Response};
use super::listen::bind_all;
use crate::metrics::{HealthMetrics, HealthServer};

/// One Service's health check, as the applied state names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCheck {
    pub namespace: String,
    pub name: String,
    /// Ready (or serving-terminating) endpoints on this node.
    pub local_endpoints: u32,
}

/// What one [`ServiceServers::update`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Updated {
    pub opened: Vec<u16>,
    pub closed: Vec<u16>,
    /// Ports that could not be bound (in use, most likely), with why;
    /// tried again on the next update.
    pub failed: Vec<(u16, String)>,
}

struct Port {
    check: Arc<RwLock<ServiceCheck>>,
    /// Dropping it stops the accept loop and closes the listener.
    _serving: AbortOnDropHandle<()>,
}

/// The health-check listeners of one network namespace.
pub struct ServiceServers {
    netns: Option<String>,
    ip: IpAddr,
    limits: Limits,
    proxy: Tracker,
    metrics: HealthMetrics,
    open: BTreeMap<u16, Port>,
}

impl ServiceServers {
    /// Servers on `ip` (`listen::ALL_ADDRESSES` on a node) in `netns`;
    /// their 200 also needs `proxy` healthy.
    pub fn new(
        netns: Option<String>,
        ip: IpAddr,
        limits: Limits,
        proxy: Tracker,
        metrics: HealthMetrics,
    ) -> ServiceServers {
        ServiceServers {
            netns,
            ip,
            limits,
            proxy,
            metrics,
            open: BTreeMap::new(),
        }
    }

    /// The ports listening now.
    pub fn ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }

    /// Makes the listeners those of `wanted`: ports no longer named close,
    /// new ones open (in the namespace, off the async threads), the rest
    /// answer from the new counts at once, without rebinding. A port that
    /// cannot be bound is logged and counted, never fatal.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, ServiceCheck>) -> Updated {
        let mut done = Updated::default();
        self.open.retain(|port, _| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, "closing a health-check port");
                done.closed.push(*port);
            }
            keep
        });
        let mut missing = Vec::new();
        for (port, check) in wanted {
            match self.open.get(port) {
                Some(open) => {
                    if let Ok(mut held) = open.check.write() {
                        held.clone_from(check);
                    }
                }
                None => missing.push(SocketAddr::new(self.ip, *port)),
            }
        }
        if !missing.is_empty() {
            let netns = self.netns.clone();
            let addrs = missing.clone();
            let bound = tokio::task::spawn_blocking(move || bind_all(netns.as_deref(), &addrs))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            let results = match bound {
                Ok(results) => results,
                Err(e) => {
                    let why = e.to_string();
                    missing
                        .iter()
                        .map(|_| Err(std::io::Error::other(why.clone())))
                        .collect()
                }
            };
            for (addr, result) in missing.iter().zip(results) {
                let port = addr.port();
                let listener = result.and_then(tokio::net::TcpListener::from_std);
                match listener {
                    Ok(listener) => {
                        let Some(check) = wanted.get(&port) else {
                            continue;
                        };
                        tracing::info!(port, service = %format!("{}/{}", check.namespace, check.name), "opened a health-check port");
                        let check = Arc::new(RwLock::new(check.clone()));
                        let answer = Arc::new(ServiceAnswer {
                            check: check.clone(),
                            proxy: self.proxy.clone(),
                            metrics: self.metrics.clone(),
                        });
                        let serving = tokio::spawn(http::serve(listener, self.limits, answer));
                        self.open.insert(
                            port,
                            Port {
                                check,
                                _serving: AbortOnDropHandle::new(serving),
                            },
                        );
                        done.opened.push(port);
                    }
                    Err(e) => {
                        tracing::warn!(
                            port,
                            netns = self.netns.as_deref().unwrap_or(""),
                            "cannot open the health-check port {addr}: {e}; trying again with the next state"
                        );
                        self.metrics.bind_failed(HealthServer::Service);
                        done.failed.push((port, e.to_string()));
                    }
                }
            }
        }
        self.metrics
            .service_servers
            .set(i64::try_from(self.open.len()).unwrap_or(i64::MAX));
        done
    }
}

struct ServiceAnswer {
    check: Arc<RwLock<ServiceCheck>>,
    proxy: Tracker,
    metrics: HealthMetrics,
}

impl Answer for ServiceAnswer {
    /// Any method, any path, as kube-proxy's handler.
    fn answer(&self, _request: &Request) -> Response {
        let check = self.check.read().map(|c| c.clone()).unwrap_or_default();
        let healthy = self.proxy.healthy();
        Response::json(
            service_status(check.local_endpoints, healthy),
            service_body(
                &check.namespace,
                &check.name,
                check.local_endpoints,
                healthy,
            ),
        )
    }

    fn count(&self, outcome: Outcome) {
        self.metrics.request(HealthServer::Service, outcome);
    }
}
