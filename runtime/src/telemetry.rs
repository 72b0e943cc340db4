//! Logs, and trace export over OTLP when an endpoint is configured
//! (`--otlp-endpoint URL` or `OTEL_EXPORTER_OTLP_ENDPOINT`), for both
//! binaries. The `traceparent` text format is the protocol's
//! (`setpoint_proto::traceparent`); here it is attached to spans.
//!
//! A rollout is one trace per revision: the control plane's `rollout` span
//! for a node (open from send to ack) travels as a W3C `traceparent` on
//! the snapshot or delta, and the agent's `apply` span takes it as its
//! remote parent. Without an endpoint no exporter exists and the spans cost
//! what any disabled `tracing` span costs.
//!
//! The SDK's batch processor exports from its own thread; the gRPC
//! exporter needs a Tokio reactor, so exports run on a small runtime owned
//! here.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use setpoint_proto::traceparent::Traceparent;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Keeps the exporter running; dropping it flushes what is buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            // A runtime may not be dropped on an async thread.
            let _ = std::thread::spawn(move || drop(runtime)).join();
        }
    }
}

/// The exporter, driven on a runtime of its own.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            Err(OTelSdkError::InternalFailure(
                "export called on an async thread".into(),
            ))
        } else {
            self.runtime.block_on(self.inner.export(batch))
        };
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The endpoint to export to: the flag, else the standard variable.
pub fn endpoint(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

/// Whether this process exports spans (set once by [`init`]).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans leave this process: without an exporter, a span made only
/// to carry a trace context costs its allocation and bookkeeping for
/// nothing (the control plane would make one per node per revision).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs logging (`RUST_LOG`, else `default_filter`) and, with an
/// endpoint, span export as `service` over OTLP/gRPC.
pub fn init(
    service: &'static str,
    default_filter: &str,
    otlp: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer().with_filter(filter);
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry::default());
    };
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?,
    );
    let exporter = {
        let _context = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: exporter,
            runtime: runtime.clone(),
        })
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("setpoint_controlplane", tracing::Level::INFO)
        .with_target("setpoint_agent", tracing::Level::INFO);
    let export = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(spans);
    tracing_subscriber::registry()
        .with(logs)
        .with(export)
        .try_init()?;
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Telemetry {
        provider: Some(provider),
        runtime: Some(runtime),
    })
}

/// The span context `traceparent` describes, from another process.
fn remote_context(traceparent: &str) -> Option<SpanContext> {
    let parsed = Traceparent::parse(traceparent)?;
    let context = SpanContext::new(
        TraceId::from_bytes(parsed.trace_id),
        SpanId::from_bytes(parsed.span_id),
        TraceFlags::new(parsed.flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Makes the span described by `traceparent` (another process's) the
/// parent of `span`. A malformed value is ignored.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(context) = remote_context(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }
}

/// `span` as a `traceparent`, when it is exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| {
        Traceparent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_parent_keeps_the_ids_it_was_sent() {
        let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = remote_context(sent).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(remote_context("00-zz-b7ad6b7169203331-01").is_none());
    }
}
