//! Leader failover at fleet scale: two control-plane replicas (`serve`,
//! each in its own child process: this binary again with
//! `SETPOINT_BENCH_ROLE=replica`) on one PostgreSQL database, and N dry-run
//! agents in a third (`SETPOINT_BENCH_ROLE=agents`), each given both
//! replicas' endpoints as an operator gives `--controlplane` (one per
//! replica): it starts at a random one and moves to the next when its
//! stream ends. Once every agent holds the first revision, the leader's
//! process is SIGKILLed and one Service's endpoints change at once; then
//! the survivor is watched: when it leads, when every agent is connected
//! to it, and when every agent is confirmed at its head (the revision with
//! the change), with the snapshots and deltas it sent meanwhile. Then a
//! few one-endpoint changes on the survivor alone (file written → every
//! agent acked).
//!
//! `cargo bench -p setpoint-integration --bench failover`; sizes from
//! SETPOINT_BENCH_AGENTS (500), _SERVICES (1,000), _ENDPOINTS (5 per
//! Service), _CHANGES (3, after the failover). Needs PostgreSQL
//! (SETPOINT_TEST_POSTGRES).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use setpoint_controlplane::serve::{Role, ServeConfig, start};
use setpoint_integration::measure::{
    cluster_shape_from_env, cpu_seconds, env_or, rss_mib, start_bench_process,
};
use setpoint_integration::postgres::fresh_postgres_database;

#[path = "../synthetic_manifests.rs"]
mod synthetic_manifests;
use synthetic_manifests::{write_cluster, write_slice};

fn main() {
    start_bench_process();
    match std::env::var("SETPOINT_BENCH_ROLE").as_deref() {
        Ok("agents") => setpoint_integration::fleet_agents::run_until_stdin_closes(),
        Ok("replica") => replica(),
        _ => parent(),
    }
}

/// What a replica says of itself when asked (one line on its stdout).
#[derive(Clone, Copy, Debug, Default)]
struct Status {
    leader: bool,
    head: u64,
    /// Agents this replica has confirmed at `head` (acked it, found
    /// unchanged, or said hello holding it).
    at_head: usize,
    connected: i64,
    snapshots: u64,
    deltas: u64,
    nacks: u64,
    cpu: f64,
    peak_rss: f64,
}

impl Status {
    fn line(&self) -> String {
        format!(
            "status {} {} {} {} {} {} {} {:.3} {:.1}",
            u8::from(self.leader),
            self.head,
            self.at_head,
            self.connected,
            self.snapshots,
            self.deltas,
            self.nacks,
            self.cpu,
            self.peak_rss
        )
    }

    fn parse(line: &str) -> Option<Status> {
        let mut w = line.split_whitespace();
        (w.next()? == "status").then_some(())?;
        Some(Status {
            leader: w.next()? == "1",
            head: w.next()?.parse().ok()?,
            at_head: w.next()?.parse().ok()?,
            connected: w.next()?.parse().ok()?,
            snapshots: w.next()?.parse().ok()?,
            deltas: w.next()?.parse().ok()?,
            nacks: w.next()?.parse().ok()?,
            cpu: w.next()?.parse().ok()?,
            peak_rss: w.next()?.parse().ok()?,
        })
    }
}

/// A replica child: `serve` on SETPOINT_BENCH_DATABASE and
/// SETPOINT_BENCH_MANIFESTS; prints `agents <addr>`, then answers each line
/// on stdin with a [`Status`] line, until stdin closes.
fn replica() {
    let manifests = std::env::var("SETPOINT_BENCH_MANIFESTS").expect("manifests");
    let database = std::env::var("SETPOINT_BENCH_DATABASE").expect("database");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let running = start(ServeConfig {
            batch: Duration::from_millis(20),
            poll: Duration::from_millis(50),
            // Every agent of the fleet connects from this one address.
            agents: setpoint_controlplane::stream::AgentLimits::default()
                .with_connections_per_peer(1 << 20),
            ..ServeConfig::local(manifests, database)
        })
        .await
        .expect("control plane");
        println!("agents {}", running.agent_addr);
        let _ = std::io::stdout().flush();
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<()>(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
                if lines_tx.blocking_send(()).is_err() {
                    return;
                }
            }
        });
        while lines.recv().await.is_some() {
            let head = *running.head.borrow();
            let at_head = running
                .service
                .fleet
                .lock()
                .map(|f| f.values().filter(|v| v.acked_revision >= head).count())
                .unwrap_or(0);
            let m = &running.metrics;
            let status = Status {
                leader: *running.role.borrow() == Role::Leader,
                head,
                at_head,
                connected: m.agents_connected.get(),
                snapshots: m.snapshots_sent.get(),
                deltas: m.deltas_sent.get(),
                nacks: m.nacks.get(),
                cpu: cpu_seconds(),
                peak_rss: rss_mib("VmHWM:"),
            };
            println!("{}", status.line());
            let _ = std::io::stdout().flush();
        }
    });
    std::process::exit(0);
}

/// A replica as the parent drives it.
struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    agent_addr: String,
}

impl Replica {
    fn spawn(manifests: &std::path::Path, database: &str) -> Replica {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env("SETPOINT_BENCH_ROLE", "replica")
            .env("SETPOINT_BENCH_MANIFESTS", manifests)
            .env("SETPOINT_BENCH_DATABASE", database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("replica process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the replica starts");
        let agent_addr = line
            .strip_prefix("agents ")
            .expect("the replica's agent address")
            .trim()
            .to_string();
        Replica {
            child,
            stdin,
            stdout,
            agent_addr,
        }
    }

    fn status(&mut self) -> Status {
        writeln!(self.stdin, "status").expect("the replica reads");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("the replica answers");
        Status::parse(&line).unwrap_or_else(|| panic!("a status line: {line:?}"))
    }

    /// Polls until `done`; panics after `limit`.
    fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&Status) -> bool) -> Status {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(t0.elapsed() < limit, "{what}: not within {limit:?} ({s:?})");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn parent() {
    let shape = cluster_shape_from_env(500, 1_000);
    let changes = env_or("SETPOINT_BENCH_CHANGES", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests dir");
    write_cluster(&manifests, &shape);
    let database = fresh_postgres_database();
    println!(
        "failover: 2 replicas (child processes) on one PostgreSQL database, {} agents (dry run, in a child process, both endpoints each), {} services × {} endpoints",
        shape.nodes,
        shape.services,
        shape.endpoints / shape.services.max(1)
    );

    // The first replica leads: the second starts once it does.
    let started = Instant::now();
    let mut first = Replica::spawn(&manifests, &database);
    let s = first.until("the first replica leads", Duration::from_secs(1800), |s| {
        s.leader && s.head > 0
    });
    println!(
        "first revision {} committed by the first replica after {:.2?}",
        s.head,
        started.elapsed()
    );
    let mut second = Replica::spawn(&manifests, &database);
    let first_head = s.head;
    second.until(
        "the second replica follows",
        Duration::from_secs(600),
        |s| s.head >= first_head && !s.leader,
    );
    let mut agents = Command::new(std::env::current_exe().expect("this binary"))
        .env("SETPOINT_BENCH_ROLE", "agents")
        .env("SETPOINT_BENCH_AGENTS", shape.nodes.to_string())
        .env(
            "SETPOINT_BENCH_CONTROLPLANE",
            format!("http://{},http://{}", first.agent_addr, second.agent_addr),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("agents process");
    let t0 = Instant::now();
    let (a, b) = loop {
        let (a, b) = (first.status(), second.status());
        if a.at_head + b.at_head >= shape.nodes && a.head == b.head {
            break (a, b);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "every agent at the first revision: {a:?} {b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "every agent at revision {} after {:.2?}: {} on the leader, {} on the follower",
        a.head,
        t0.elapsed(),
        a.connected,
        b.connected
    );

    // The failover: SIGKILL, and a change at once (the survivor commits it).
    let before = second.status();
    let killed = Instant::now();
    first.child.kill().expect("SIGKILL the leader");
    let _ = first.child.wait();
    write_slice(&manifests, 0, &shape, 1);
    let mut leads = None;
    let mut all_connected = None;
    let mut old_head_confirmed = None;
    let mut committed = None;
    let limit = Duration::from_secs(600);
    let at_head = loop {
        let s = second.status();
        let now = killed.elapsed();
        if s.leader && leads.is_none() {
            leads = Some(now);
        }
        if s.connected >= shape.nodes as i64 && all_connected.is_none() {
            all_connected = Some(now);
        }
        // Every agent back, at the head it held, before the survivor
        // committed anything (a follower confirms hellos too).
        if s.head == before.head && s.at_head >= shape.nodes && old_head_confirmed.is_none() {
            old_head_confirmed = Some(now);
        }
        if s.head > before.head && committed.is_none() {
            committed = Some(now);
        }
        if s.leader && s.head > before.head && s.at_head >= shape.nodes {
            break s;
        }
        assert!(
            now < limit,
            "the survivor did not confirm every agent: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let confirmed = killed.elapsed();
    let fmt = |d: Option<Duration>| d.map_or("—".to_string(), |d| format!("{d:.2?}"));
    println!(
        "leader SIGKILLed ({} agents on it) and one Service changed: the survivor led after {}, had all {} agents connected after {} (all confirmed at the old head {} after {}), committed the change after {}, and confirmed every agent at its head {} after {confirmed:.2?}",
        a.connected,
        fmt(leads),
        shape.nodes,
        fmt(all_connected),
        before.head,
        fmt(old_head_confirmed),
        fmt(committed),
        at_head.head,
    );
    println!(
        "the survivor sent {} snapshots and {} deltas meanwhile ({} nacks); CPU {:.1} s; peak RSS {:.0} MiB",
        at_head.snapshots - before.snapshots,
        at_head.deltas - before.deltas,
        at_head.nacks - before.nacks,
        at_head.cpu - before.cpu,
        at_head.peak_rss,
    );

    let mut latencies = Vec::with_capacity(changes);
    let phase = second.status();
    for k in 0..changes {
        let i = 1 + (k * 7919) % shape.services.saturating_sub(1).max(1);
        let before = second.status().head;
        let t0 = Instant::now();
        write_slice(&manifests, i, &shape, 2 * k + 3);
        second.until(
            &format!("change {k} on the survivor"),
            Duration::from_secs(120),
            |s| s.head > before && s.at_head >= shape.nodes,
        );
        latencies.push(t0.elapsed());
    }
    let end = second.status();
    if changes > 0 {
        latencies.sort();
        println!(
            "then {changes} one-endpoint changes on the survivor alone, file written → every agent acked: median {:.2?}, max {:.2?}; {} snapshots, {} deltas",
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1],
            end.snapshots - phase.snapshots,
            end.deltas - phase.deltas,
        );
    }

    drop(second.stdin);
    let _ = second.child.kill();
    let _ = second.child.wait();
    drop(agents.stdin.take());
    let mut report = String::new();
    if let Some(out) = agents.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            report.push_str(&line);
        }
    }
    let _ = agents.wait();
    println!("{report}");
    let _ = std::io::stdout().flush();
}
