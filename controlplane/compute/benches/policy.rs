//! NetworkPolicy scale: `cargo bench -p setpoint-compute --bench policy`.
//!
//! 500 nodes, 1,000 namespaces, 10,000 pods, 3,000 policies (override with
//! SETPOINT_BENCH_NODES / _NAMESPACES / _PODS / _POLICIES): full compute,
//! peak memory, then SETPOINT_BENCH_CHANGES (default 100) pod label changes.

use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, PolicyShape};
use setpoint_compute::{ComputeConfig, Index};

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

fn main() {
    let t = PolicyShape::TARGET;
    let shape = PolicyShape {
        nodes: env_or("SETPOINT_BENCH_NODES", t.nodes),
        namespaces: env_or("SETPOINT_BENCH_NAMESPACES", t.namespaces),
        pods: env_or("SETPOINT_BENCH_PODS", t.pods),
        policies: env_or("SETPOINT_BENCH_POLICIES", t.policies),
    };
    let changes = env_or("SETPOINT_BENCH_CHANGES", 100);
    println!("policy workload: {shape:?}");
    let started = Instant::now();
    let mut index = Index::new(ComputeConfig::default());
    for o in synthetic::policy_cluster(&shape) {
        index.upsert(o);
    }
    index.commit();
    let full = started.elapsed();
    let states: Vec<_> = index
        .node_names()
        .filter_map(|n| index.node_state(n))
        .collect();
    let chains: usize = states
        .iter()
        .map(|s| {
            s.flatten()
                .chains()
                .filter(|(k, _)| k.name.starts_with("SP-I-") || k.name.starts_with("SP-E-"))
                .count()
        })
        .sum();
    println!(
        "full compute: {:.2} s; peak RSS {:.0} MiB; {} per-pod chains over {} nodes; {} problems",
        full.as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0),
        chains,
        states.len(),
        index.problems().count()
    );
    drop(states);
    let mut times: Vec<Duration> = Vec::with_capacity(changes);
    let mut touched = 0usize;
    for j in 0..changes {
        let i = (j * 7919) % shape.pods.max(1);
        let pod = synthetic::policy_pod(i, &shape, j + 1);
        let t0 = Instant::now();
        index.upsert(pod);
        let outcome = index.commit();
        times.push(t0.elapsed());
        touched += outcome.changed_nodes.len();
    }
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "incremental (one pod label change, {changes} changes): p50 {:.2} ms p99 {:.2} ms; {:.0} node states changed per change",
        pct(0.5),
        pct(0.99),
        touched as f64 / changes.max(1) as f64
    );
}
