//! NetworkPolicy and ClusterNetworkPolicy scale:
//! `cargo bench -p setpoint-compute --bench policy`.
//!
//! 500 nodes, 1,000 namespaces, 10,000 pods, 3,000 policies (override with
//! SETPOINT_BENCH_NODES / _NAMESPACES / _PODS / _POLICIES): full compute,
//! peak memory, then SETPOINT_BENCH_CHANGES (default 100) pod label
//! changes. The same workload runs twice, each in its own process so that
//! peak memory is its own: without ClusterNetworkPolicies and with
//! SETPOINT_BENCH_CLUSTER_POLICIES (default 200, `synthetic::cluster_policy`:
//! both tiers, all three actions, every peer kind), where it also times
//! SETPOINT_BENCH_CNP_CHANGES (default 20) changes of one
//! ClusterNetworkPolicy; then the two side by side. Peak memory is the
//! process's peak resident set after the full compute, and at the end
//! (the incremental changes included).

use std::process::Command;
use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, PolicyShape};
use setpoint_compute::{ComputeConfig, Index};

/// Set in the environment of the child processes, to the number of
/// ClusterNetworkPolicies that run has.
const ONE_RUN: &str = "SETPOINT_BENCH_ONE_RUN";
/// The line a run ends with, read by the parent.
const FIGURES: &str = "figures:";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// p50 and p99 in milliseconds.
fn percentiles(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (pct(0.5), pct(0.99))
}

fn run(shape: &PolicyShape, cluster_policies: usize, changes: usize, cnp_changes: usize) {
    println!("policy workload: {shape:?}, {cluster_policies} ClusterNetworkPolicies");
    let started = Instant::now();
    let mut index = Index::new(ComputeConfig::default());
    for o in synthetic::policy_cluster(shape) {
        index.upsert(o);
    }
    for i in 0..cluster_policies {
        index.upsert(synthetic::cluster_policy(i, 0));
    }
    index.commit();
    let full = started.elapsed();
    let peak = peak_rss_mib().unwrap_or(0.0);
    let states: Vec<_> = index
        .node_names()
        .filter_map(|n| index.node_state(n))
        .collect();
    let (mut chains, mut rules) = (0usize, 0usize);
    for s in &states {
        for (k, chain) in s.flatten().chains() {
            if k.name.starts_with("SP-I-") || k.name.starts_with("SP-E-") {
                chains += 1;
                rules += chain.rules.len();
            }
        }
    }
    let problems = index.problems().count();
    println!(
        "full compute: {:.2} s; peak RSS {peak:.0} MiB; {chains} per-pod chains ({rules} rules) over {} nodes; {problems} problems",
        full.as_secs_f64(),
        states.len(),
    );
    for p in index.problems().take(3) {
        println!("  problem: {p:?}");
    }
    drop(states);
    let mut times: Vec<Duration> = Vec::with_capacity(changes);
    let mut touched = 0usize;
    for j in 0..changes {
        let i = (j * 7919) % shape.pods.max(1);
        let pod = synthetic::policy_pod(i, shape, j + 1);
        let t0 = Instant::now();
        index.upsert(pod);
        let outcome = index.commit();
        times.push(t0.elapsed());
        touched += outcome.changed_nodes.len();
    }
    let (label_p50, label_p99) = percentiles(&mut times);
    let label_nodes = touched as f64 / changes.max(1) as f64;
    println!(
        "incremental (one pod label change, {changes} changes): p50 {label_p50:.2} ms p99 {label_p99:.2} ms; {label_nodes:.0} node states changed per change"
    );
    let (mut cnp_p50, mut cnp_p99, mut cnp_nodes) = (f64::NAN, f64::NAN, f64::NAN);
    if cluster_policies > 0 {
        let mut times: Vec<Duration> = Vec::with_capacity(cnp_changes);
        let mut touched = 0usize;
        for j in 0..cnp_changes {
            let i = (j * 7) % cluster_policies;
            let policy = synthetic::cluster_policy(i, j + 1);
            let t0 = Instant::now();
            index.upsert(policy);
            let outcome = index.commit();
            times.push(t0.elapsed());
            touched += outcome.changed_nodes.len();
        }
        (cnp_p50, cnp_p99) = percentiles(&mut times);
        cnp_nodes = touched as f64 / cnp_changes.max(1) as f64;
        println!(
            "incremental (one ClusterNetworkPolicy change, {cnp_changes} changes): p50 {cnp_p50:.2} ms p99 {cnp_p99:.2} ms; {cnp_nodes:.0} node states changed per change"
        );
    }
    let peak_end = peak_rss_mib().unwrap_or(0.0);
    println!("peak RSS over the whole run {peak_end:.0} MiB");
    println!(
        "{FIGURES} {} {peak} {chains} {rules} {problems} {label_p50} {label_p99} {label_nodes} {cnp_p50} {cnp_p99} {cnp_nodes} {peak_end}",
        full.as_secs_f64()
    );
}

fn main() {
    let t = PolicyShape::TARGET;
    let shape = PolicyShape {
        nodes: env_or("SETPOINT_BENCH_NODES", t.nodes),
        namespaces: env_or("SETPOINT_BENCH_NAMESPACES", t.namespaces),
        pods: env_or("SETPOINT_BENCH_PODS", t.pods),
        policies: env_or("SETPOINT_BENCH_POLICIES", t.policies),
    };
    let changes = env_or("SETPOINT_BENCH_CHANGES", 100);
    let cnp_changes = env_or("SETPOINT_BENCH_CNP_CHANGES", 20);
    if let Some(n) = std::env::var(ONE_RUN).ok().and_then(|v| v.parse().ok()) {
        run(&shape, n, changes, cnp_changes);
        return;
    }
    let with = env_or("SETPOINT_BENCH_CLUSTER_POLICIES", 200);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this benchmark's executable: {e}");
            std::process::exit(1);
        }
    };
    let mut rows = Vec::new();
    for n in [0, with] {
        let output = match Command::new(&exe).env(ONE_RUN, n.to_string()).output() {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                eprintln!(
                    "the run with {n} ClusterNetworkPolicies failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("cannot start the run with {n} ClusterNetworkPolicies: {e}");
                std::process::exit(1);
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let mut figures = None;
        for line in text.lines() {
            match line.strip_prefix(FIGURES) {
                Some(rest) => {
                    figures = Some(
                        rest.split_whitespace()
                            .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                            .collect::<Vec<_>>(),
                    )
                }
                None => println!("{line}"),
            }
        }
        println!();
        match figures {
            Some(f) if f.len() == 12 => rows.push((n, f)),
            _ => {
                eprintln!("the run with {n} ClusterNetworkPolicies printed no figures");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:>6} {:>9} {:>15} {:>10} {:>9} {:>26} {:>26}",
        "CNPs",
        "full (s)",
        "peak MiB (end)",
        "chains",
        "rules",
        "label p50/p99 ms (nodes)",
        "CNP p50/p99 ms (nodes)"
    );
    for (n, f) in rows {
        let cnp = if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}/{:.1} ({:.0})", f[8], f[9], f[10])
        };
        println!(
            "{n:>6} {:>9.2} {:>15} {:>10.0} {:>9.0} {:>26} {:>26}",
            f[0],
            format!("{:.0} ({:.0})", f[1], f[11]),
            f[2],
            f[3],
            format!("{:.1}/{:.1} ({:.0})", f[5], f[6], f[7]),
            cnp
        );
    }
}
