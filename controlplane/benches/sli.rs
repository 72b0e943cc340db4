//! What the programming-latency tracker (`setpoint_controlplane::sli`)
//! costs per ack, at fleet size: N nodes connected, then
//!
//! - `one-by-one`: each revision acked by every node before the next;
//! - `churn`: C revisions committed while agents apply, then one ack of the
//!   newest per node answering all C (coalescing).
//!
//! Prints CPU time per revision and per ack of the tracker's task alone
//! (events applied in this thread; the channel and the metrics' atomics
//! are not in it). `SETPOINT_BENCH_NODES` (5000), `_REVISIONS` (100),
//! `_CHURN` (20).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use setpoint_controlplane::sli::{Event, Start, StartedBy, Tracker};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = env("SETPOINT_BENCH_NODES", 5000);
    let revisions = env("SETPOINT_BENCH_REVISIONS", 100) as u64;
    let churn = env("SETPOINT_BENCH_CHURN", 20) as u64;
    let names: Vec<Arc<str>> = (0..nodes).map(|i| format!("node-{i:05}").into()).collect();
    let t0 = SystemTime::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);

    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for (i, node) in names.iter().enumerate() {
        tracker.apply(
            Event::Joined {
                node: node.clone(),
                session: i as u64,
            },
            &mut out,
        );
    }

    let started = Instant::now();
    for r in 1..=revisions {
        tracker.apply(
            Event::Started {
                revision: r,
                start: Start {
                    at: at(r * 1000),
                    by: StartedBy::Trigger,
                },
            },
            &mut out,
        );
        for (i, node) in names.iter().enumerate() {
            tracker.apply(
                Event::Acked {
                    node: node.clone(),
                    revision: r,
                    at: at(r * 1000 + i as u64 / 10),
                },
                &mut out,
            );
        }
        out.clear();
    }
    let took = started.elapsed();
    println!(
        "one-by-one: {nodes} nodes x {revisions} revisions: {:.2} ms per revision, {:.0} ns per ack",
        took.as_secs_f64() * 1e3 / revisions as f64,
        took.as_nanos() as f64 / (revisions as f64 * nodes as f64)
    );

    let started = Instant::now();
    let rounds = (revisions / churn.max(1)).max(1);
    let mut r = revisions;
    for _ in 0..rounds {
        let first = r + 1;
        for _ in 0..churn {
            r += 1;
            tracker.apply(
                Event::Started {
                    revision: r,
                    start: Start {
                        at: at(r * 1000),
                        by: StartedBy::Seen,
                    },
                },
                &mut out,
            );
        }
        for node in &names {
            tracker.apply(
                Event::Acked {
                    node: node.clone(),
                    revision: r,
                    at: at(r * 1000 + 500),
                },
                &mut out,
            );
        }
        assert_eq!(tracker.newest_pending(), 0, "revisions {first}..={r}");
        out.clear();
    }
    let took = started.elapsed();
    println!(
        "churn: {nodes} nodes, {churn} revisions per ack round, {rounds} rounds: {:.2} ms per revision, {:.0} ns per ack (each answering {churn} revisions)",
        took.as_secs_f64() * 1e3 / (rounds * churn) as f64,
        took.as_nanos() as f64 / (rounds as f64 * nodes as f64)
    );
    let reports = tracker.reports(1);
    println!(
        "newest: revision {} {}/{} acked",
        reports[0].revision, reports[0].acked, reports[0].total
    );
}
