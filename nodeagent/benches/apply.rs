//! Apply benchmark, in a network namespace it creates (root): cold apply of
//! a node's state for a synthetic 10,000-Service × 5-endpoint cluster
//! (ipsets and iptables real; IPVS kept in memory — this kernel has none,
//! the VM test covers it), a no-op re-apply, one-endpoint deltas, and a
//! 100,000-entry set, against the baseline kube-proxy's ipvs mode uses for
//! sets: one `ipset add` process per entry.
//!
//! `cargo bench -p setpoint-agent --bench apply`; sizes from
//! SETPOINT_BENCH_SERVICES / _ENDPOINTS / _SET_ENTRIES / _BASELINE_ENTRIES.

use std::time::{Duration, Instant};

use setpoint_agent::apply::{Applier, Base, Verified, kernel_view};
use setpoint_agent::kernel_model::ModelServices;
use setpoint_agent::target::Target;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::{Family, Fragment, NodeDataplane, SetEntry, SetSpec, SetType};
use setpoint_integration::{Netns, require_root_and_tools};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn applier(ns: &Netns) -> Applier {
    let target = Target {
        netns: Some(ns.name().to_string()),
    };
    Applier::new(target, Box::new(ModelServices::default()))
}

fn main() {
    require_root_and_tools();
    let services = env_or("SETPOINT_BENCH_SERVICES", 10_000);
    let shape = ClusterShape {
        nodes: 3,
        services,
        endpoints: services * env_or("SETPOINT_BENCH_ENDPOINTS", 5),
        zones: 1,
    };
    let node = synthetic::node_name(0);
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(&shape) {
        index.upsert(object);
    }
    index.commit();
    let Some(state) = index.node_state(&node) else {
        panic!("node {node} exists");
    };
    let flat = state.flatten();
    let entries: usize = flat.all_entries().map(|(_, e)| e.len()).sum();
    let rules: usize = flat.chains().map(|(_, c)| c.rules.len()).sum();
    println!(
        "state of {node}: {} services × {} endpoints → {} sets / {entries} entries, {} chains / {rules} rules, {} virtual servers",
        shape.services,
        shape.endpoints / shape.services.max(1),
        flat.sets().count(),
        flat.chains().count(),
        flat.virtual_server_count()
    );

    // What checking a whole state costs: every snapshot pays it, a delta
    // from the held state checks only what it changes.
    let view = setpoint_agent::apply::kernel_view(&state).expect("kernel view");
    let started = Instant::now();
    let problems = setpoint_dataplane::validate::validate_fragment(&view);
    println!(
        "whole-state check of the kernel view (each snapshot): {:.2?}, {} problems",
        started.elapsed(),
        problems.len()
    );
    let ns = Netns::create("bench-apply").expect("netns");
    let mut agent = applier(&ns);
    let started = Instant::now();
    let (report, _) = agent.apply(Base::Kernel, &state).expect("cold apply");
    let cold = started.elapsed();
    println!(
        "cold apply: {cold:.2?} ({} operations, verified digest {})",
        report.operations, report.digest
    );
    let started = Instant::now();
    let (again, _) = agent.apply(Base::Kernel, &state).expect("no-op apply");
    println!(
        "no-op re-apply (full read-back, nothing to do): {:.2?}, {} operations",
        started.elapsed(),
        again.operations
    );

    // One-endpoint changes: a generation flips one endpoint's readiness.
    let rounds = env_or("SETPOINT_BENCH_DELTAS", 20);
    let mut times = Vec::with_capacity(rounds);
    let mut full_times = Vec::with_capacity(rounds);
    let mut current = state;
    for generation in 1..=rounds {
        let i = (generation * 7) % shape.services;
        index.upsert(synthetic::slice(i, &shape, generation));
        index.commit();
        let Some(next) = index.node_state(&node) else {
            panic!("node exists")
        };
        let first_diff = setpoint_dataplane::diff(&current, &next);
        let changes = first_diff.size();
        let started = Instant::now();
        agent.apply(Base::Kernel, &next).expect("delta apply");
        full_times.push(started.elapsed());
        index.upsert(synthetic::slice(i, &shape, generation + rounds));
        index.commit();
        let Some(after) = index.node_state(&node) else {
            panic!("node exists")
        };
        let started = Instant::now();
        // The held view expanded here as before; the agent keeps the one
        // its last apply handed back.
        let held = Verified {
            revision: 0,
            state: next.clone(),
            view: kernel_view(&next).expect("kernel view"),
        };
        agent
            .apply(Base::Held(&held), &after)
            .expect("delta apply from held");
        times.push(started.elapsed());
        let next = after;
        if generation == 1 {
            let first: Vec<String> = first_diff
                .changes
                .iter()
                .map(setpoint_agent::apply::describe)
                .collect();
            println!("one-endpoint change: {changes} atoms in the diff: {first:?}");
        }
        current = next;
    }
    times.sort();
    full_times.sort();
    println!(
        "one-endpoint delta, whole kernel read before and after: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(&full_times, 0.5),
        percentile(&full_times, 0.99),
        percentile(&full_times, 1.0)
    );
    println!(
        "one-endpoint delta from the held state, touched objects read back ({rounds} rounds): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    drop(agent);
    drop(ns);

    // What recording the applied state costs (the agent's --state-dir
    // journal: the first record writes the whole state, fsynced and
    // renamed; the later ones, of the same state, append an empty frame).
    let dir = tempfile::tempdir().expect("tempdir");
    let local = setpoint_agent::local_state::LocalState::new(dir.path());
    let mut saves = Vec::new();
    for revision in 1..=5 {
        let record = setpoint_agent::local_state::Applied {
            node: node.clone(),
            revision,
            digest: current.digest(),
            applied_at: 0,
        };
        let started = Instant::now();
        local
            .save_with_state(&record, &current)
            .expect("record the state");
        saves.push(started.elapsed());
    }
    saves.sort();
    let bytes = std::fs::metadata(dir.path().join("state.journal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "recording the applied state (journal {:.1} MiB, fsync; max = the whole-state first record): p50 {:.2?}, max {:.2?}",
        bytes as f64 / (1024.0 * 1024.0),
        percentile(&saves, 0.5),
        percentile(&saves, 1.0)
    );

    // A large set alone.
    let n = env_or("SETPOINT_BENCH_SET_ENTRIES", 100_000);
    let mut big = Fragment::new();
    big.put_set(
        "SP-BENCH-BIG",
        SetSpec {
            kind: SetType::HashIp,
            family: Family::Inet,
            maxelem: u32::try_from(n * 2).unwrap_or(u32::MAX),
            comment: String::new(),
        },
    );
    let ip = |k: usize| -> SetEntry {
        let k = u32::try_from(k).unwrap_or(0);
        SetEntry::Ip(std::net::IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + k,
        )))
    };
    for k in 0..n {
        big.add_entry("SP-BENCH-BIG", ip(k));
    }
    let big = NodeDataplane::from_fragment(big);
    let ns = Netns::create("bench-set").expect("netns");
    let mut agent = applier(&ns);
    let started = Instant::now();
    agent.apply(Base::Kernel, &big).expect("big set");
    let set_cold = started.elapsed();
    println!(
        "cold apply of a {n}-entry set: {set_cold:.2?} ({:.0} entries/s, read-back verified)",
        n as f64 / set_cold.as_secs_f64()
    );

    // Baseline: one `ipset add` process per entry, as kube-proxy does.
    let baseline_n = env_or("SETPOINT_BENCH_BASELINE_ENTRIES", 2_000);
    ns.exec(
        &[
            "ipset",
            "create",
            "SP-BASELINE",
            "hash:ip",
            "maxelem",
            "1000000",
        ],
        None,
    )
    .expect("create baseline set");
    let started = Instant::now();
    for k in 0..baseline_n {
        let entry = ip(k).to_string();
        ns.exec(&["ipset", "add", "SP-BASELINE", &entry], None)
            .expect("ipset add");
    }
    let per_entry = started.elapsed() / u32::try_from(baseline_n.max(1)).unwrap_or(1);
    let extrapolated = per_entry * u32::try_from(n).unwrap_or(u32::MAX);
    println!(
        "baseline, one `ipset add` per entry (ip netns exec): {per_entry:.2?}/entry over {baseline_n} entries → {n} entries ≈ {extrapolated:.1?} (extrapolated); Setpoint is {:.0}× faster",
        extrapolated.as_secs_f64() / set_cold.as_secs_f64()
    );
    let (rss, hwm) = rss_mib();
    println!("bench process: RSS {rss:.0} MiB, peak {hwm:.0} MiB (holds the compute index too)");
}
