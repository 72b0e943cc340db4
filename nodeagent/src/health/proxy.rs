//! The proxy health server (kube-proxy's `--healthz-bind-address`):
//! `/healthz` for load balancers, `/livez` for liveness probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Tracker;
use super::decide::Endpoint;
use super::http::{self, Answer, Limits, Outcome, Request, Response};
use super::listen::bind_all;
use crate::metrics::{HealthMetrics, HealthServer};

/// How long a failed bind waits before the next try (kube-proxy's 5 s).
pub const REBIND_AFTER: Duration = Duration::from_secs(5);

struct ProxyAnswer {
    proxy: Tracker,
    metrics: HealthMetrics,
}

impl Answer for ProxyAnswer {
    fn answer(&self, request: &Request) -> Response {
        let Some(endpoint) = Endpoint::from_path(&request.path) else {
            return Response::not_found();
        };
        let report = self.proxy.report(Instant::now(), SystemTime::now());
        Response::json(endpoint.status(&report), endpoint.body(&report))
    }

    fn count(&self, outcome: Outcome) {
        self.metrics.request(HealthServer::Proxy, outcome);
    }
}

/// Serves `/healthz` and `/livez` on `listener` until dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    proxy: Tracker,
    metrics: HealthMetrics,
) {
    http::serve(listener, limits, Arc::new(ProxyAnswer { proxy, metrics })).await
}

/// Binds `addr` in `netns` and serves; a failed bind is logged, counted
/// and tried again every [`REBIND_AFTER`]. Returns only when dropped.
pub async fn run(
    addr: SocketAddr,
    netns: Option<String>,
    limits: Limits,
    proxy: Tracker,
    metrics: HealthMetrics,
) {
    loop {
        let ns = netns.clone();
        let bound = tokio::task::spawn_blocking(move || bind_all(ns.as_deref(), &[addr]))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .and_then(|mut v| {
                v.pop()
                    .unwrap_or_else(|| Err(std::io::Error::other("no socket")))
            })
            .and_then(tokio::net::TcpListener::from_std);
        match bound {
            Ok(listener) => {
                tracing::info!("proxy health on http://{addr}/healthz and /livez");
                serve(listener, limits, proxy.clone(), metrics.clone()).await;
            }
            Err(e) => {
                tracing::warn!(
                    netns = netns.as_deref().unwrap_or(""),
                    "cannot open the proxy health server on {addr}: {e}; trying again in {REBIND_AFTER:?}"
                );
                metrics.bind_failed(HealthServer::Proxy);
                tokio::time::sleep(REBIND_AFTER).await;
            }
        }
    }
}
