//! The running system at fleet scale: one control plane (PostgreSQL, real
//! gRPC on loopback) and N dry-run agents (the real client code; a dry-run
//! agent plans from what it is sent and touches no kernel) on a synthetic
//! cluster written as manifest files. The agents run in a child process
//! (this binary again, `SETPOINT_BENCH_ROLE=agents`), one HTTP/2
//! connection each, so the control plane's CPU and memory are measured
//! apart from theirs. Measures the time until every agent holds the first
//! revision, then one-endpoint changes: programming latency (file written
//! → every agent acked), bytes per agent per change, CPU and peak memory;
//! then a rollback of every node through the admin API to the revision
//! before the last change (held in memory) and to the first revision
//! (read from the store): time until every agent acked it.
//!
//! `cargo bench -p setpoint-integration --bench fleet`; sizes from
//! SETPOINT_BENCH_AGENTS (200), _SERVICES (1,000), _ENDPOINTS (5 per
//! Service), _CHANGES (50). Needs PostgreSQL (SETPOINT_TEST_POSTGRES).

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_controlplane::admin::AdminConfig;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_integration::postgres::fresh_postgres_database;
use setpoint_proto::admin::RollbackRequest;
use setpoint_proto::admin::admin_client::AdminClient;

#[path = "../synthetic_manifests.rs"]
mod synthetic_manifests;
use synthetic_manifests::{write_cluster, write_slice};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lifts the open-file limit to its hard maximum (one socket per agent).
fn raise_nofile() {
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::zeroed();
    // SAFETY: getrlimit fills the struct; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) == 0 {
            let mut limit = limit.assume_init();
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
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
    rss_mib("VmHWM:")
}

/// A memory line of /proc/self/status (`VmHWM:` peak, `VmRSS:` now), in MiB.
fn rss_mib(line: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(line))
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

const ADMIN_TOKEN: &str = "fleet-bench-admin-token-0123456789";

fn main() {
    raise_nofile();
    // Logs only when asked (RUST_LOG), on stderr: the agents' stdout is
    // the parent's pipe.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if std::env::var("SETPOINT_BENCH_ROLE").as_deref() == Ok("agents") {
        agents();
    } else {
        control_plane();
    }
}

/// The child: N agents against SETPOINT_BENCH_CONTROLPLANE until stdin
/// closes; then prints its CPU time and peak memory.
fn agents() {
    let n = env_or("SETPOINT_BENCH_AGENTS", 200);
    let url = std::env::var("SETPOINT_BENCH_CONTROLPLANE").expect("control plane URL");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..n {
            let agent = Agent::new(AgentOptions {
                dry_run: true,
                ipvs: IpvsMode::Simulated,
                drift_interval: Duration::from_secs(3600),
                ..AgentOptions::new(synthetic::node_name(i), url.clone())
            });
            tokio::spawn(agent.run());
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
            }
        })
        .await;
    });
    println!(
        "agents process: CPU {:.1} s over {:.1?}, peak RSS {:.0} MiB",
        cpu_seconds(),
        started.elapsed(),
        peak_rss_mib()
    );
    std::process::exit(0);
}

async fn wait_all_at(running: &Running, agents: usize, revision: u64, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut report = t0 + Duration::from_secs(10);
    while !all_at(&running.service.fleet, agents, revision) {
        assert!(
            t0.elapsed() < limit,
            "revision {revision} did not reach every agent"
        );
        if Instant::now() >= report {
            // A long wait says how far it got, and what it costs meanwhile.
            report += Duration::from_secs(10);
            let m = &running.metrics;
            eprintln!(
                "  … {:.0?}: {} of {agents} agents at revision {revision}; {} connected, {} snapshots and {} deltas sent, {} nacks; RSS {:.0} MiB",
                t0.elapsed(),
                count_at(&running.service.fleet, revision),
                m.agents_connected.get(),
                m.snapshots_sent.get(),
                m.deltas_sent.get(),
                m.nacks.get(),
                rss_mib("VmRSS:"),
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

fn count_at(
    fleet: &Mutex<std::collections::BTreeMap<String, setpoint_controlplane::stream::AgentView>>,
    revision: u64,
) -> usize {
    fleet
        .lock()
        .map(|f| f.values().filter(|v| v.acked_revision >= revision).count())
        .unwrap_or(0)
}

fn control_plane() {
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
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    write_cluster(&manifests, &shape);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ADMIN_TOKEN}\n")).expect("tokens");
    println!(
        "fleet: {} agents (dry run, in a child process), {} services × {} endpoints, PostgreSQL",
        shape.nodes,
        shape.services,
        shape.endpoints / shape.services.max(1)
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let any = "127.0.0.1:0".parse().expect("addr");
        let running = start(ServeConfig {
            manifests: manifests.clone(),
            manifest_limits: Default::default(),
            kube: None,
            database: fresh_postgres_database(),
            listen: any,
            metrics_listen: any,
            batch: Duration::from_millis(20),
            poll: Duration::from_millis(50),
            compute: Default::default(),
            rollout: None,
            tls: None,
            // Every agent of the fleet connects from this one address.
            agents: setpoint_controlplane::stream::AgentLimits::default()
                .with_connections_per_peer(1 << 20),
            election: Default::default(),
            admin: AdminConfig {
                listen: Some(any),
                token_file: Some(tokens.clone()),
                ..AdminConfig::default()
            },
        })
        .await
        .expect("control plane");
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env("SETPOINT_BENCH_ROLE", "agents")
            .env("SETPOINT_BENCH_AGENTS", shape.nodes.to_string())
            .env(
                "SETPOINT_BENCH_CONTROLPLANE",
                format!("http://{}", running.agent_addr),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("agents process");
        let mut head = running.head.clone();
        while *head.borrow() == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), head.changed()).await;
            assert!(started.elapsed() < Duration::from_secs(1800), "no first revision");
        }
        let committed = started.elapsed();
        let first = *head.borrow();
        let snapshots = wait_all_at(&running, shape.nodes, first, Duration::from_secs(1800)).await;
        println!(
            "first revision committed after {committed:.2?} (load, compute, commit); then {} snapshots acked in {snapshots:.2?}",
            shape.nodes,
        );
        println!(
            "control plane after the snapshots: peak RSS {:.0} MiB",
            peak_rss_mib()
        );

        let bytes_before = running.metrics.delta_bytes.get();
        let deltas_before = running.metrics.deltas_sent.get();
        let cpu_before = cpu_seconds();
        let phase = Instant::now();
        let mut latencies = Vec::with_capacity(changes);
        let mut before_last = first;
        for k in 0..changes {
            let before = *running.head.borrow();
            before_last = before;
            let i = (k * 7919) % shape.services;
            let t0 = Instant::now();
            // An odd generation marks one endpoint not ready: a real change.
            write_slice(&manifests, i, &shape, 2 * k + 1);
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
            "{changes} one-endpoint changes, file written → every agent acked: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
        println!(
            "{deltas} deltas, {:.0} bytes per agent per change (payload); control plane CPU {:.1} s over {:.1?} ({:.0}% of one core)",
            bytes as f64 / deltas.max(1) as f64,
            cpu,
            phase.elapsed(),
            100.0 * cpu / phase.elapsed().as_secs_f64(),
        );

        let addr = running.admin_addr.expect("admin API");
        let mut admin = AdminClient::connect(format!("http://{addr}"))
            .await
            .expect("admin API reachable");
        for (to, what) in [
            (before_last, "the revision before the last change, in memory"),
            (first, "the first revision, read from the store"),
        ] {
            let mut request = tonic::Request::new(RollbackRequest {
                to,
                nodes: Vec::new(),
                reason: "fleet benchmark".into(),
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
            );
            let t0 = Instant::now();
            let written = admin
                .rollback(request)
                .await
                .expect("rollback")
                .into_inner();
            let wrote = t0.elapsed();
            wait_all_at(&running, shape.nodes, written.revision, Duration::from_secs(600)).await;
            println!(
                "rollback of all {} nodes to revision {to} ({what}): written in {wrote:.2?}, every agent acked after {:.2?}",
                shape.nodes,
                t0.elapsed()
            );
        }
        println!(
            "control plane peak RSS {:.0} MiB (this process; PostgreSQL not counted)",
            peak_rss_mib()
        );
        drop(child.stdin.take());
        let mut report = String::new();
        if let Some(out) = child.stdout.take() {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                report.push_str(&line);
            }
        }
        let _ = child.wait();
        println!("{report}");
        let _ = std::io::stdout().flush();
    });
}
