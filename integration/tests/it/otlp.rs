//! Trace export over OTLP. `setpoint-controlplane serve --otlp-endpoint`
//! and an agent (the real client, dry-run, in this process, exporting
//! through the same telemetry module both binaries use) send their
//! spans to a small OTLP/gRPC receiver on loopback. One revision's spans
//! from both sides share a trace, and the agent's `apply` span is a child
//! of the control plane's `rollout` span for that node.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_proto::traceparent::Traceparent;
use tonic::{Request, Response, Status};

/// Every span received, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(received);
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, to.join(name)).expect("copy");
        }
    }
}

#[test]
fn spans_of_one_revision_reach_the_collector_from_both_sides_as_parent_and_child() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let receiver = Receiver::default();
    let collector = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("addr");
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        addr
    });
    let endpoint = format!("http://{collector}");

    // This process plays the agent; its spans go out as `setpoint-agent`
    // (after the batch processor's usual delay: other tests share this
    // process, so its environment is left alone).
    let telemetry = setpoint_runtime::telemetry::init("setpoint-agent", "warn", Some(&endpoint))
        .expect("telemetry");

    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("dir");
    copy_dir(&crate::render_applies::examples(), &manifests);
    let listen = crate::running_failures::free_addr();
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
    let _serve = crate::sigkill::Serve(
        Command::new(crate::sigkill::controlplane_binary())
            .arg("serve")
            .arg("--manifests")
            .arg(&manifests)
            .args(["--database", &database])
            .args(["--listen", &listen.to_string()])
            .args([
                "--metrics-listen",
                &crate::running_failures::free_addr().to_string(),
            ])
            .args([
                "--admin-listen",
                &crate::running_failures::free_addr().to_string(),
            ])
            .args(["--otlp-endpoint", &endpoint])
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );

    let (rollout, apply) = runtime.block_on(async {
        let agent = Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            drift_interval: Duration::from_secs(3600),
            ..AgentOptions::new("node-a", format!("http://{listen}"))
        });
        let progress = agent.progress.clone();
        tokio::spawn(agent.run());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let revision = progress.lock().map(|p| p.revision).unwrap_or(0);
            let spans = receiver.spans.lock().map(|s| s.clone()).unwrap_or_default();
            let rollout = spans.iter().find(|(service, s)| {
                service == "setpoint-controlplane"
                    && s.name == "rollout"
                    && attribute(s, "node").as_deref() == Some("node-a")
                    && revision > 0
                    && attribute(s, "revision") == Some(revision.to_string())
            });
            let apply = rollout.and_then(|(_, r)| {
                spans.iter().find(|(service, s)| {
                    service == "setpoint-agent" && s.name == "apply" && s.trace_id == r.trace_id
                })
            });
            if let (Some((_, r)), Some((_, a))) = (rollout, apply) {
                break (r.clone(), a.clone());
            }
            assert!(
                Instant::now() < deadline,
                "no rollout/apply pair for node-a at revision {revision}; received: {:?}",
                spans
                    .iter()
                    .map(|(service, s)| format!("{service}/{}", s.name))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(
        apply.parent_span_id, rollout.span_id,
        "apply is the rollout's child"
    );
    let revision: u64 = attribute(&rollout, "revision")
        .and_then(|r| r.parse().ok())
        .expect("revision attribute");
    // The trace is the revision's, as every replica derives it.
    let derived = Traceparent::of_rollout(revision, "node-a");
    assert_eq!(rollout.trace_id, derived.trace_id);
    drop(telemetry);
}
