//! Scale benchmark: `cargo bench -p setpoint-compute --bench scale`.
//!
//! Builds a synthetic cluster (default 5,000 nodes, 10,000 Services,
//! 100,000 endpoints, 3 zones; override with SETPOINT_BENCH_NODES /
//! _SERVICES / _ENDPOINTS), computes every node's state, then changes one
//! endpoint at a time 1,000 times and times each incremental commit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn kind_label(kind: synthetic::Kind) -> &'static str {
    match kind {
        synthetic::Kind::ClusterIp => "ClusterIP",
        synthetic::Kind::NodePort => "NodePort",
        synthetic::Kind::LoadBalancer => "LoadBalancer",
        synthetic::Kind::InternalLocal => "InternalLocal",
        synthetic::Kind::Topology => "Topology",
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let shape = ClusterShape {
        nodes: env_or("SETPOINT_BENCH_NODES", ClusterShape::TARGET.nodes),
        services: env_or("SETPOINT_BENCH_SERVICES", ClusterShape::TARGET.services),
        endpoints: env_or("SETPOINT_BENCH_ENDPOINTS", ClusterShape::TARGET.endpoints),
        zones: ClusterShape::TARGET.zones,
    };
    let changes = env_or("SETPOINT_BENCH_CHANGES", 1_000);
    println!(
        "cluster: {} nodes, {} services, {} endpoints, {} zones",
        shape.nodes, shape.services, shape.endpoints, shape.zones
    );
    let objects = synthetic::cluster(&shape);
    let rss_before = peak_rss_mib().unwrap_or(0.0);

    let started = Instant::now();
    let mut index = Index::new(ComputeConfig::default());
    for object in objects {
        index.upsert(object);
    }
    let outcome = index.commit();
    let commit_time = started.elapsed();
    let names: Vec<_> = index.node_names().cloned().collect();
    let mut digests = HashMap::with_capacity(names.len());
    let mut states = Vec::with_capacity(names.len());
    for name in &names {
        if let Some(state) = index.node_state(name) {
            digests.insert(name.clone(), state.digest());
            states.push(state);
        }
    }
    let full_time = started.elapsed();
    let atoms: u64 = states.iter().map(|s| s.atom_count()).sum();
    println!(
        "full compute: {:.2} s (index+plans {:.2} s, {} node states with digests {:.2} s); {} nodes changed; {:.1} M atoms in all states",
        full_time.as_secs_f64(),
        commit_time.as_secs_f64(),
        states.len(),
        (full_time - commit_time).as_secs_f64(),
        outcome.changed_nodes.len(),
        atoms as f64 / 1e6
    );
    println!(
        "peak RSS: {:.0} MiB (of which {:.0} MiB before compute: the input objects)",
        peak_rss_mib().unwrap_or(0.0),
        rss_before
    );
    if let Some(state) = states.first() {
        let problems = state.validate();
        println!("validation of {}: {} problems", names[0], problems.len());
    }
    drop(states);

    // SETPOINT_BENCH_ONLY=NodePort (or ClusterIP, …) changes only Services
    // of that kind, to look at one case in isolation.
    let only = std::env::var("SETPOINT_BENCH_ONLY").ok();
    let picks: Vec<usize> = (0..shape.services * 10)
        .map(|j| (j * 7907) % shape.services)
        .filter(|i| {
            only.as_deref()
                .is_none_or(|k| kind_label(synthetic::kind_of(*i)) == k)
        })
        .take(changes)
        .collect();
    let mut generation: HashMap<usize, usize> = HashMap::new();
    let mut commit_times = Vec::with_capacity(changes);
    let mut with_digests = Vec::with_capacity(changes);
    let mut touched = Vec::with_capacity(changes);
    let mut changed_digests = Vec::with_capacity(changes);
    for &i in &picks {
        let g = generation.entry(i).or_insert(0);
        *g += 1;
        let slice = synthetic::slice(i, &shape, *g);
        let t0 = Instant::now();
        index.upsert(slice);
        let outcome = index.commit();
        let t1 = Instant::now();
        let mut really_changed = 0usize;
        for name in &outcome.changed_nodes {
            if let Some(digest) = index.node_digest(name)
                && digests.insert(name.clone(), digest) != Some(digest)
            {
                really_changed += 1;
            }
        }
        let t2 = Instant::now();
        commit_times.push(t1 - t0);
        with_digests.push(t2 - t0);
        touched.push(outcome.changed_nodes.len());
        changed_digests.push(really_changed);
    }
    commit_times.sort();
    with_digests.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "incremental (one endpoint changes, {} changes{}): commit p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
        picks.len(),
        only.as_deref()
            .map(|k| format!(", {k} only"))
            .unwrap_or_default(),
        ms(percentile(&commit_times, 0.5)),
        ms(percentile(&commit_times, 0.99)),
        ms(*commit_times.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "incremental incl. new digests of touched nodes: p50 {:.3} ms p99 {:.3} ms",
        ms(percentile(&with_digests, 0.5)),
        ms(percentile(&with_digests, 0.99)),
    );
    let mut kinds: HashMap<&str, (usize, usize)> = HashMap::new();
    for ((&t, &c), &i) in touched.iter().zip(&changed_digests).zip(&picks) {
        let kind = kind_label(synthetic::kind_of(i));
        let e = kinds.entry(kind).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(t.max(c));
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    for (kind, (count, max_touched)) in kinds {
        println!("  {kind}: {count} changes, at most {max_touched} node states touched per change");
    }
    let mean_touched = touched.iter().sum::<usize>() as f64 / touched.len().max(1) as f64;
    let mean_changed =
        changed_digests.iter().sum::<usize>() as f64 / changed_digests.len().max(1) as f64;
    println!(
        "node states touched per change: mean {mean_touched:.0} reported, {mean_changed:.0} with a new digest"
    );
    println!("peak RSS at end: {:.0} MiB", peak_rss_mib().unwrap_or(0.0));
}
