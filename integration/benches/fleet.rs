//! The running system at fleet scale: one control plane (PostgreSQL, real
//! gRPC on loopback) and N dry-run agents (the real client code; a dry-run
//! agent plans from what it is sent and touches no kernel) on a synthetic
//! cluster written as manifest files. The agents run in a child process
//! (this binary again, `SETPOINT_BENCH_ROLE=agents`), one HTTP/2
//! connection each, so the control plane's CPU and memory are measured
//! apart from theirs. Measures the time until every agent holds the first
//! revision, then one-endpoint changes: programming latency (file written
//! → every agent acked), bytes per agent per change, CPU (the control
//! plane's per change and per agent, the agents process's per change:
//! on one machine both share its cores) and peak memory;
//! then a rollback of every node through the admin API to the revision
//! before the last change (held in memory) and to the first revision
//! (read from the store): time until every agent acked it.
//!
//! `cargo bench -p setpoint-integration --bench fleet`; sizes from
//! SETPOINT_BENCH_AGENTS (200), _SERVICES (1,000), _ENDPOINTS (5 per
//! Service), _CHANGES (50). Needs PostgreSQL (SETPOINT_TEST_POSTGRES).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_controlplane::admin::AdminConfig;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_controlplane::tls::ServerTls;
use setpoint_integration::measure::{
    cluster_shape_from_env, cpu_seconds, env_or, peak_rss_mib, percentile, rss_mib,
    start_bench_process,
};
use setpoint_integration::pki::Pki;
use setpoint_integration::postgres::fresh_postgres_database;
use setpoint_proto::admin::RollbackRequest;
use setpoint_proto::admin::admin_client::AdminClient;

#[path = "../synthetic_manifests.rs"]
mod synthetic_manifests;
use synthetic_manifests::{write_cluster, write_slice};

/// Every agent holds `revision`: acked it, or the control plane found its
/// state unchanged at that revision (then nothing is sent).
fn all_at(
    fleet: &Mutex<HashMap<String, setpoint_controlplane::stream::AgentView>>,
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
    start_bench_process();
    if std::env::var("SETPOINT_BENCH_ROLE").as_deref() == Ok("agents") {
        setpoint_integration::fleet_agents::run_until_stdin_closes();
    } else {
        control_plane();
    }
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
    fleet: &Mutex<HashMap<String, setpoint_controlplane::stream::AgentView>>,
    revision: u64,
) -> usize {
    fleet
        .lock()
        .map(|f| f.values().filter(|v| v.acked_revision >= revision).count())
        .unwrap_or(0)
}

/// `rate` one-endpoint changes a second for `seconds`, each to a Service
/// the earlier phase left alone: for each change, the time from its write
/// until every agent acked the first revision whose load began after the
/// write (an upper bound: an earlier revision may already have carried
/// it); how many revisions carried them, and the control plane's memory
/// meanwhile. Returns the revision before the last one.
async fn churn(
    running: &Running,
    manifests: &std::path::Path,
    shape: &ClusterShape,
    offset: usize,
    rate: usize,
    seconds: usize,
) -> u64 {
    let total = rate * seconds;
    let mut commits = running.commits.subscribe();
    let revisions_before = running.metrics.revisions.get();
    let deltas_before = running.metrics.deltas_sent.get();
    let merged_before = running.metrics.revisions_coalesced.get();
    let cpu_before = cpu_seconds();
    let phase = Instant::now();
    let writer = {
        let (manifests, shape) = (manifests.to_path_buf(), *shape);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut written = Vec::with_capacity(total);
            for k in offset..offset + total {
                tick.tick().await;
                let i = (k * 7919) % shape.services;
                write_slice(&manifests, i, &shape, 2 * k + 1);
                written.push(SystemTime::now());
            }
            written
        })
    };
    // Revision → when its load began, and when every agent held it.
    let mut seen: BTreeMap<u64, SystemTime> = BTreeMap::new();
    let mut converged: BTreeMap<u64, SystemTime> = BTreeMap::new();
    let mut rss = Vec::new();
    let mut sample_at = Instant::now();
    let mut writer = Some(writer);
    let mut written = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 120);
    loop {
        while let Ok(c) = commits.try_recv() {
            seen.insert(c.revision.0, c.seen_at);
        }
        let low = min_acked(&running.service.fleet, shape.nodes);
        let now = SystemTime::now();
        for r in seen.keys().filter(|r| **r <= low) {
            converged.entry(*r).or_insert(now);
        }
        if Instant::now() >= sample_at {
            sample_at += Duration::from_secs(5);
            rss.push(rss_mib("VmRSS:"));
        }
        if let Some(w) = writer.take_if(|w| w.is_finished()) {
            written = w.await.expect("writer");
        }
        // Done when every write went out and every agent has held the
        // head for a second with nothing newer committed: that head
        // carries every write.
        let head = *running.head.borrow();
        let settled = converged.get(&head).is_some_and(|at| {
            now.duration_since(*at).unwrap_or_default() >= Duration::from_secs(1)
        });
        if writer.is_none() && settled {
            break;
        }
        assert!(Instant::now() < deadline, "the churn did not converge");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu = cpu_seconds() - cpu_before;
    let mut latencies: Vec<Duration> = written
        .iter()
        .filter_map(|t| {
            // The first revision whose load began after the write, else
            // the last one (which carries everything).
            let r = seen
                .iter()
                .find(|(_, at)| *at >= t)
                .or_else(|| seen.iter().next_back())?
                .0;
            converged.get(r)?.duration_since(*t).ok()
        })
        .collect();
    latencies.sort();
    let revisions = running.metrics.revisions.get() - revisions_before;
    let deltas = running.metrics.deltas_sent.get() - deltas_before;
    println!(
        "churn: {total} one-endpoint changes at {rate}/s for {seconds} s, write → every agent acked (upper bound): p50 {:.2?}, p99 {:.2?}, max {:.2?} ({} of {total} attributed)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len(),
    );
    println!(
        "churn: {revisions} revisions carried them ({:.1} changes each); {deltas} deltas ({:.1} per agent), {} revisions merged into later ones by sessions; control plane CPU {:.1} s over {:.1?} ({:.0}% of one core), {:.3} CPU-s per change",
        total as f64 / revisions.max(1) as f64,
        deltas as f64 / shape.nodes.max(1) as f64,
        running.metrics.revisions_coalesced.get() - merged_before,
        cpu,
        phase.elapsed(),
        100.0 * cpu / phase.elapsed().as_secs_f64(),
        cpu / total.max(1) as f64,
    );
    println!(
        "churn: control plane RSS every 5 s (MiB): {}",
        rss.iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let head = *running.head.borrow();
    seen.range(..head)
        .next_back()
        .map(|(r, _)| *r)
        .unwrap_or(head)
}

/// CPU seconds (user and system) process `pid` has used, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
fn process_cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): state
            // is field 3, utime and stime fields 14 and 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

/// The lowest revision any of the `agents` acked (0 until all reported).
fn min_acked(
    fleet: &Mutex<HashMap<String, setpoint_controlplane::stream::AgentView>>,
    agents: usize,
) -> u64 {
    fleet
        .lock()
        .ok()
        .filter(|f| f.len() == agents)
        .and_then(|f| f.values().map(|v| v.acked_revision).min())
        .unwrap_or(0)
}

fn control_plane() {
    let shape = cluster_shape_from_env(200, 1_000);
    let changes = env_or("SETPOINT_BENCH_CHANGES", 50);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    write_cluster(&manifests, &shape);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ADMIN_TOKEN}\n")).expect("tokens");
    // As deployed: every agent with its own client certificate.
    let pki = (env_or("SETPOINT_BENCH_TLS", 0) != 0).then(|| {
        let pki = Pki::new();
        let t0 = Instant::now();
        for i in 0..shape.nodes {
            let node = synthetic::node_name(i);
            pki.node(&node, &node);
        }
        eprintln!(
            "{} node certificates issued in {:.1?}",
            shape.nodes,
            t0.elapsed()
        );
        pki
    });
    let tls = pki.as_ref().map(|pki| {
        let (cert, key) = pki.server_files();
        ServerTls {
            cert,
            key,
            client_ca: pki.ca_file.clone(),
            reload_every: Duration::from_secs(60),
        }
    });
    println!(
        "fleet: {} agents (dry run, in a child process), {} services × {} endpoints, PostgreSQL, {}",
        shape.nodes,
        shape.services,
        shape.endpoints / shape.services.max(1),
        if tls.is_some() { "mTLS" } else { "plaintext" },
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
            tls: tls.clone(),
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
        let mut agents = Command::new(std::env::current_exe().expect("this binary"));
        agents
            .env("SETPOINT_BENCH_ROLE", "agents")
            .env("SETPOINT_BENCH_AGENTS", shape.nodes.to_string());
        match &pki {
            Some(pki) => agents.env("SETPOINT_BENCH_PKI", pki.dir.path()).env(
                "SETPOINT_BENCH_CONTROLPLANE",
                format!("https://localhost:{}", running.agent_addr.port()),
            ),
            None => agents.env(
                "SETPOINT_BENCH_CONTROLPLANE",
                format!("http://{}", running.agent_addr),
            ),
        };
        let mut child = agents
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
            "first revision committed after {committed:.2?} (load, compute, commit); then {} snapshots acked in {snapshots:.2?}, {:.0} KiB per snapshot on the wire",
            shape.nodes,
            running.metrics.snapshot_bytes.get() as f64
                / running.metrics.snapshots_sent.get().max(1) as f64
                / 1024.0,
        );
        println!(
            "control plane after the snapshots: peak RSS {:.0} MiB",
            peak_rss_mib()
        );

        let bytes_before = running.metrics.delta_bytes.get();
        let deltas_before = running.metrics.deltas_sent.get();
        let cpu_before = cpu_seconds();
        let agents_cpu_before = process_cpu_seconds(child.id());
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
        let agents_cpu = process_cpu_seconds(child.id()) - agents_cpu_before;
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
            "{deltas} deltas, {:.0} bytes per agent per change (payload); control plane CPU {:.1} s over {:.1?} ({:.0}% of one core), {:.3} CPU-s per change ({:.1} µs per agent); the agents process {:.3} CPU-s per change; load average {}",
            bytes as f64 / deltas.max(1) as f64,
            cpu,
            phase.elapsed(),
            100.0 * cpu / phase.elapsed().as_secs_f64(),
            cpu / changes.max(1) as f64,
            1e6 * cpu / (changes.max(1) * shape.nodes.max(1)) as f64,
            agents_cpu / changes.max(1) as f64,
            std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
                .unwrap_or_default(),
        );

        let rate = env_or("SETPOINT_BENCH_CHURN", 0);
        if rate > 0 {
            let seconds = env_or("SETPOINT_BENCH_CHURN_SECONDS", 60);
            before_last = churn(&running, &manifests, &shape, changes, rate, seconds).await;
        }

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
