//! The benchmarks' fleet: N dry-run agents (the real client code) in one
//! child process, one connection each, so the control plane's CPU and
//! memory are measured apart from theirs.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions, AgentTls};
use setpoint_agent::services::IpvsMode;
use setpoint_compute::synthetic;

use crate::measure::{cpu_seconds, env_or, peak_rss_mib};

/// The child's side: `SETPOINT_BENCH_AGENTS` agents named as the synthetic
/// cluster's nodes, against the comma-separated `SETPOINT_BENCH_CONTROLPLANE`
/// endpoints (with mTLS when `SETPOINT_BENCH_PKI` names a directory of
/// `ca.pem` and `<node>.crt/.key`), until stdin closes; then prints its CPU
/// time and peak memory and exits.
pub fn run_until_stdin_closes() -> ! {
    let n = env_or("SETPOINT_BENCH_AGENTS", 200);
    let urls: Vec<String> = std::env::var("SETPOINT_BENCH_CONTROLPLANE")
        .expect("control plane URLs")
        .split(',')
        .map(str::to_string)
        .collect();
    let pki = std::env::var_os("SETPOINT_BENCH_PKI").map(PathBuf::from);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..n {
            let node = synthetic::node_name(i);
            let tls = pki.as_ref().map(|dir| AgentTls {
                cert: dir.join(format!("{node}.crt")),
                key: dir.join(format!("{node}.key")),
                ca: dir.join("ca.pem"),
                server_name: None,
            });
            let agent = Agent::new(AgentOptions {
                dry_run: true,
                ipvs: IpvsMode::Simulated,
                drift_interval: Duration::from_secs(3600),
                tls,
                controlplanes: urls.clone(),
                ..AgentOptions::new(node, String::new())
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
