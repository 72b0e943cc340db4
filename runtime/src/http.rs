//! The HTTP endpoint both binaries serve beside their main port:
//! `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the process does its job; why not, when not).

use std::sync::Arc;

/// What a binary exposes over HTTP.
pub trait Exposed: Send + Sync + 'static {
    /// The Prometheus text exposition of every metric.
    fn encode(&self) -> String;
    /// Why the process is not ready yet, or `None` when it is.
    fn not_ready(&self) -> Option<&'static str>;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// process ends.
pub async fn serve<M: Exposed>(
    exposed: Arc<M>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    let for_metrics = exposed.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { for_metrics.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match exposed.not_ready() {
                    None => (StatusCode::OK, "ready"),
                    Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }),
        );
    axum::serve(listener, app).await
}
