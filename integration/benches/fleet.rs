//! The running system at fleet scale: one control plane (PostgreSQL, real
//! gRPC on loopback) and N dry-run agents (the real client code; a dry-run
//! agent plans from what it is sent and touches no kernel) on a synthetic
//! cluster written as manifest files. Measures the time until every agent
//! holds the first revision, then one-endpoint changes: programming latency
//! (file written → every agent acked), bytes per agent per change, CPU and
//! peak memory of the process (control plane and agents together).
//!
//! `cargo bench -p setpoint-integration --bench fleet`; sizes from
//! SETPOINT_BENCH_AGENTS (200), _SERVICES (1,000), _ENDPOINTS (5 per
//! Service), _CHANGES (50). Needs PostgreSQL (SETPOINT_TEST_POSTGRES).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions, AgentProgress};
use setpoint_agent::services::IpvsMode;
use setpoint_compute::ClusterObject;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_controlplane::serve::{ServeConfig, start};
use setpoint_integration::postgres::fresh_postgres_database;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn yaml(object: &ClusterObject) -> String {
    let text = match object {
        ClusterObject::Service(o) => serde_yaml_ng::to_string(o),
        ClusterObject::EndpointSlice(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Node(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Pod(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Namespace(o) => serde_yaml_ng::to_string(o),
        ClusterObject::NetworkPolicy(o) => serde_yaml_ng::to_string(o),
    };
    text.expect("k8s objects serialise")
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn write_slice(dir: &Path, i: usize, shape: &ClusterShape, generation: usize) {
    let path = dir.join(format!("slice-{i:05}.yaml"));
    let tmp = dir.join(format!(".slice-{i:05}.tmp"));
    std::fs::write(&tmp, yaml(&synthetic::slice(i, shape, generation))).expect("write");
    // A rename is atomic: the control plane never reads half a file.
    std::fs::rename(&tmp, &path).expect("rename");
}

/// Every agent holds `revision`: acked it, or the control plane found its
/// state unchanged at that revision (then nothing is sent).
fn all_at(
    fleet: &Mutex<std::collections::BTreeMap<String, setpoint_controlplane::stream::AgentView>>,
    agents: usize,
    revision: u64,
) -> bool {
    fleet
        .lock()
        .map(|f| f.len() == agents && f.values().all(|v| v.acked_revision >= revision))
        .unwrap_or(false)
}

fn main() {
    let agents_n = env_or("SETPOINT_BENCH_AGENTS", 200);
    let services = env_or("SETPOINT_BENCH_SERVICES", 1_000);
    let shape = ClusterShape {
        nodes: agents_n,
        services,
        endpoints: services * env_or("SETPOINT_BENCH_ENDPOINTS", 5),
        zones: 3,
    };
    let changes = env_or("SETPOINT_BENCH_CHANGES", 50);
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: String = (0..shape.nodes)
        .map(|i| format!("---\n{}", yaml(&synthetic::node(i, &shape))))
        .collect();
    std::fs::write(dir.path().join("nodes.yaml"), nodes).expect("nodes");
    let svcs: String = (0..shape.services)
        .map(|i| format!("---\n{}", yaml(&synthetic::service(i))))
        .collect();
    std::fs::write(dir.path().join("services.yaml"), svcs).expect("services");
    for i in 0..shape.services {
        write_slice(dir.path(), i, &shape, 0);
    }
    println!(
        "fleet: {} agents (dry run), {} services × {} endpoints, PostgreSQL",
        shape.nodes,
        shape.services,
        shape.endpoints / shape.services.max(1)
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let running = start(ServeConfig {
            manifests: dir.path().to_path_buf(),
            kube: None,
            database: fresh_postgres_database(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: "127.0.0.1:0".parse().expect("addr"),
            batch: Duration::from_millis(20),
            poll: Duration::from_millis(50),
            compute: Default::default(),
            rollout: None,
            admin: Default::default(),
            tls: None,
            election: Default::default(),
        })
        .await
        .expect("control plane");
        let mut progress: Vec<Arc<Mutex<AgentProgress>>> = Vec::with_capacity(shape.nodes);
        for i in 0..shape.nodes {
            let agent = Agent::new(AgentOptions {
                dry_run: true,
                ipvs: IpvsMode::Simulated,
                drift_interval: Duration::from_secs(3600),
                ..AgentOptions::new(
                    synthetic::node_name(i),
                    format!("http://{}", running.agent_addr),
                )
            });
            progress.push(agent.progress.clone());
            tokio::spawn(agent.run());
        }
        let mut head = running.head.clone();
        while *head.borrow() == 0 || !all_at(&running.service.fleet, shape.nodes, *head.borrow()) {
            let _ = tokio::time::timeout(Duration::from_millis(100), head.changed()).await;
            assert!(started.elapsed() < Duration::from_secs(1800), "no convergence");
        }
        println!(
            "first revision on every agent (load, compute, commit, {} snapshots): {:.2?}",
            shape.nodes,
            started.elapsed()
        );

        let bytes_before = running.metrics.delta_bytes.get();
        let deltas_before = running.metrics.deltas_sent.get();
        let cpu_before = cpu_seconds();
        let phase = Instant::now();
        let mut latencies = Vec::with_capacity(changes);
        for k in 0..changes {
            let before = *running.head.borrow();
            let i = (k * 7919) % shape.services;
            let t0 = Instant::now();
            // An odd generation marks one endpoint not ready: a real change.
            write_slice(dir.path(), i, &shape, 2 * k + 1);
            loop {
                let now = *running.head.borrow();
                if now > before && all_at(&running.service.fleet, shape.nodes, now) {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(120), "change {k} did not converge");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies.push(t0.elapsed());
        }
        let cpu = cpu_seconds() - cpu_before;
        let deltas = running.metrics.deltas_sent.get() - deltas_before;
        let bytes = running.metrics.delta_bytes.get() - bytes_before;
        latencies.sort();
        println!(
            "{changes} one-endpoint changes, file written → every agent acked: p50 {:.0?}, p99 {:.0?}, max {:.0?}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
        println!(
            "{deltas} deltas, {:.0} bytes per agent per change (payload); CPU {:.1} s over {:.1?} ({:.0}% of one core), process peak RSS {:.0} MiB (control plane and agents)",
            bytes as f64 / deltas.max(1) as f64,
            cpu,
            phase.elapsed(),
            100.0 * cpu / phase.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
    });
}
