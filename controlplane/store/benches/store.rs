//! Store benchmark: `cargo bench -p setpoint-store --bench store`.
//!
//! Computes a synthetic cluster (default 5,000 nodes, 10,000 Services,
//! 100,000 endpoints, 3 zones; SETPOINT_BENCH_NODES / _SERVICES /
//! _ENDPOINTS), then SETPOINT_BENCH_CHANGES (default 1,000) revisions of
//! one endpoint change each, as commit requests. Replays them on each
//! backend: a fresh SQLite file and a fresh PostgreSQL database (created on
//! SETPOINT_BENCH_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres,
//! dropped afterwards), or only SETPOINT_STORE_URL when set;
//! SETPOINT_BENCH_BACKENDS=sqlite or =postgres picks one. Reports the
//! initial commit's time and bytes, commit latency p50/p99 and bytes per
//! revision (sizes from the database itself), and reading one node's state
//! at an old revision: one after the other on one handle (as a control
//! plane does), and cold on a new handle each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::{Digest, Fragment};
use setpoint_store::{Cause, CommitRequest, Epoch, NodeParts, RevisionId, Store, StoreStats};
use sqlx::Connection;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

/// Everything to replay on a backend.
struct Workload {
    initial: CommitRequest,
    changes: Vec<(&'static str, CommitRequest)>,
    /// (revision index from 1, node, digest the index had then).
    probes: Vec<(u64, String, Digest)>,
}

/// The shared parts of the index's states (one node per zone is enough).
fn shared_parts(index: &Index, req: &mut CommitRequest, per_zone: &[Arc<str>]) {
    for n in per_zone {
        if let Some(state) = index.node_state(n) {
            let (_, shared) = NodeParts::split(&state);
            for (name, f) in shared {
                req.shared.insert(name, f);
            }
        }
    }
}

fn build_workload(shape: &ClusterShape, changes: usize) -> Workload {
    let t0 = Instant::now();
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(shape) {
        index.upsert(object);
    }
    index.commit();
    let names: Vec<Arc<str>> = index.node_names().cloned().collect();
    // A representative node per zone.
    let mut per_zone: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut own: HashMap<Arc<str>, BTreeMap<String, Arc<Fragment>>> = HashMap::new();
    let mut initial = CommitRequest::new(
        Epoch(0),
        Cause {
            objects: vec![],
            summary: "initial".into(),
        },
    );
    let mut atoms_own = 0u64;
    for n in &names {
        if let Some(state) = index.node_state(n) {
            for (part, _) in state.parts() {
                if part.starts_with("zone/") {
                    per_zone.entry(part.clone()).or_insert_with(|| n.clone());
                }
            }
            let (parts, _) = NodeParts::split(&state);
            atoms_own += parts.own.values().map(|f| f.atom_count()).sum::<u64>();
            own.insert(n.clone(), parts.own.clone());
            initial.add_node_state(n.to_string(), &state);
        }
    }
    let per_zone: Vec<Arc<str>> = per_zone.into_values().collect();
    let shared_atoms: Vec<String> = initial
        .shared
        .iter()
        .map(|(n, f)| format!("{n} {}", f.atom_count()))
        .collect();
    println!(
        "computed in {:.1} s: shared parts (atoms) [{}]; own parts {} atoms over {} nodes",
        t0.elapsed().as_secs_f64(),
        shared_atoms.join(", "),
        atoms_own,
        names.len()
    );

    // SETPOINT_BENCH_ONLY=ClusterIP (or NodePort, …) changes only Services
    // of that kind, as the compute benchmark does.
    let only = std::env::var("SETPOINT_BENCH_ONLY").ok();
    let picks: Vec<usize> = (0..shape.services * 10)
        .map(|j| (j * 7907) % shape.services)
        .filter(|i| {
            only.as_deref()
                .is_none_or(|k| kind_label(synthetic::kind_of(*i)) == k)
        })
        .take(changes)
        .collect();
    let probe_at = (changes as u64 / 2).max(1) + 1;
    let probe_nodes: Vec<Arc<str>> = names
        .iter()
        .step_by((names.len() / 20).max(1))
        .cloned()
        .collect();
    let mut probes: Vec<(u64, String, Digest)> = Vec::new();
    if changes == 0 {
        for n in &probe_nodes {
            if let Some(d) = index.node_digest(n) {
                probes.push((1, n.to_string(), d));
            }
        }
    }
    let mut generation: HashMap<usize, usize> = HashMap::new();
    let mut out = Vec::with_capacity(changes);
    let mut own_changed = 0usize;
    for (k, &i) in picks.iter().enumerate() {
        let g = generation.entry(i).or_insert(0);
        *g += 1;
        let slice = synthetic::slice(i, shape, *g);
        let key = slice.key().to_string();
        index.upsert(slice);
        let outcome = index.commit();
        let mut req = CommitRequest::new(
            Epoch(0),
            Cause {
                objects: vec![key],
                summary: format!("endpoint change {k}"),
            },
        );
        shared_parts(&index, &mut req, &per_zone);
        // Nodes whose own parts changed (pointer comparison: the index
        // keeps an unchanged fragment's Arc).
        for n in &outcome.changed_nodes {
            let Some(state) = index.node_state(n) else {
                continue;
            };
            let (parts, _) = NodeParts::split(&state);
            let last = own.get(n);
            let same = last.is_some_and(|last| {
                last.len() == parts.own.len()
                    && last
                        .iter()
                        .zip(&parts.own)
                        .all(|((a, fa), (b, fb))| a == b && Arc::ptr_eq(fa, fb))
            });
            if !same {
                own.insert(n.clone(), parts.own.clone());
                req.nodes.insert(n.to_string(), parts);
                own_changed += 1;
            }
        }
        out.push((kind_label(synthetic::kind_of(i)), req));
        if k as u64 + 2 == probe_at {
            for n in &probe_nodes {
                if let Some(d) = index.node_digest(n) {
                    probes.push((probe_at, n.to_string(), d));
                }
            }
        }
    }
    println!(
        "{} change requests built in {:.1} s; {} node compositions changed in all",
        out.len(),
        t0.elapsed().as_secs_f64(),
        own_changed
    );
    Workload {
        initial,
        changes: out,
        probes,
    }
}

fn with_epoch(req: &CommitRequest, epoch: Epoch) -> CommitRequest {
    let mut r = req.clone();
    r.epoch = epoch;
    r
}

fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

async fn run(label: &str, url: &str, w: &Workload) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n== {label}");
    let store = Store::open(url).await?;
    let epoch = store.acquire_epoch().await?;
    let empty = store.stats().await?;

    let t0 = Instant::now();
    let r1 = store.commit(with_epoch(&w.initial, epoch)).await?;
    let initial_time = t0.elapsed();
    let after_initial = store.stats().await?;
    println!(
        "initial commit (revision {r1}): {:.2} s, {:.1} MiB ({} chunks, {} manifests, {} fragments, {} node rows)",
        initial_time.as_secs_f64(),
        (after_initial.bytes - empty.bytes) as f64 / 1048576.0,
        after_initial.chunks,
        after_initial.manifests,
        after_initial.fragments,
        after_initial.nodes,
    );

    let mut times: Vec<Duration> = Vec::with_capacity(w.changes.len());
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut by_kind_rows: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut last: StoreStats = after_initial;
    let track_kinds = w.changes.len() <= 2000;
    for (kind, req) in &w.changes {
        let req = with_epoch(req, epoch);
        let t = Instant::now();
        store.commit(req).await?;
        let d = t.elapsed();
        times.push(d);
        by_kind.entry(kind).or_default().push(d);
        if track_kinds {
            let s = store.stats().await?;
            let e = by_kind_rows.entry(kind).or_default();
            e.0 += s.nodes - last.nodes;
            e.1 += s.bytes.saturating_sub(last.bytes);
            last = s;
        }
    }
    let after = store.stats().await?;
    let n = w.changes.len().max(1) as f64;
    let grown = after.bytes.saturating_sub(after_initial.bytes) as f64;
    times.sort();
    println!(
        "{} revisions of one endpoint change: commit p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; growth {:.1} KiB/revision ({:.1} MiB in all); per revision {:.1} chunks, {:.1} manifests, {:.1} node rows",
        w.changes.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
        kib(grown / n),
        grown / 1048576.0,
        (after.chunks - after_initial.chunks) as f64 / n,
        (after.manifests - after_initial.manifests) as f64 / n,
        (after.nodes - after_initial.nodes) as f64 / n,
    );
    for (kind, mut ts) in by_kind {
        ts.sort();
        let rows = by_kind_rows.get(kind).copied();
        let extra = rows
            .map(|(nodes, bytes)| {
                format!(
                    ", {:.1} node rows and {:.1} KiB per revision",
                    nodes as f64 / ts.len() as f64,
                    kib(bytes as f64 / ts.len() as f64)
                )
            })
            .unwrap_or_default();
        println!(
            "  {kind}: {} revisions, commit p50 {:.2} ms, p99 {:.2} ms{extra}",
            ts.len(),
            ms(percentile(&ts, 0.5)),
            ms(percentile(&ts, 0.99)),
        );
    }

    // Reading one node's state at an old revision.
    let mut reads = Vec::new();
    for (rev, node, digest) in &w.probes {
        let t = Instant::now();
        let state = store
            .node_state(node, RevisionId(*rev))
            .await?
            .ok_or("probe node missing")?;
        reads.push(t.elapsed());
        if state.digest() != *digest {
            return Err(format!("{node} at {rev}: digest differs from the index's").into());
        }
    }
    let probe_rev = w.probes.first().map(|p| p.0).unwrap_or(0);
    reads.sort();
    println!(
        "read one node's state at old revision {probe_rev} ({} nodes, digests checked): p50 {:.1} ms, max {:.1} ms",
        reads.len(),
        ms(percentile(&reads, 0.5)),
        ms(reads.last().copied().unwrap_or_default()),
    );
    // The same reads on a new handle each (nothing decoded in memory yet):
    // what a first read after a restart, or of a fragment no longer in the
    // store's recent tier, costs.
    let mut cold = Vec::new();
    for (rev, node, digest) in w.probes.iter().take(5) {
        let fresh = Store::open(url).await?;
        let t = Instant::now();
        let state = fresh
            .node_state(node, RevisionId(*rev))
            .await?
            .ok_or("probe node missing")?;
        cold.push(t.elapsed());
        if state.digest() != *digest {
            return Err(format!("{node} at {rev}: digest differs from the index's").into());
        }
        fresh.close().await;
    }
    cold.sort();
    println!(
        "read one node's state at old revision {probe_rev} cold, new store handle each ({} nodes, digests checked): p50 {:.1} ms, max {:.1} ms",
        cold.len(),
        ms(percentile(&cold, 0.5)),
        ms(cold.last().copied().unwrap_or_default()),
    );
    store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = ClusterShape {
        nodes: env_or("SETPOINT_BENCH_NODES", ClusterShape::TARGET.nodes),
        services: env_or("SETPOINT_BENCH_SERVICES", ClusterShape::TARGET.services),
        endpoints: env_or("SETPOINT_BENCH_ENDPOINTS", ClusterShape::TARGET.endpoints),
        zones: ClusterShape::TARGET.zones,
    };
    let changes = env_or("SETPOINT_BENCH_CHANGES", 1_000);
    println!(
        "cluster: {} nodes, {} services, {} endpoints, {} zones; {changes} changes",
        shape.nodes, shape.services, shape.endpoints, shape.zones
    );
    let workload = build_workload(&shape, changes);

    if let Ok(url) = std::env::var("SETPOINT_STORE_URL") {
        return run(&url, &url, &workload).await;
    }
    let backends =
        std::env::var("SETPOINT_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        run("SQLite (file, WAL, synchronous=FULL)", &url, &workload).await?;
    }
    if backends.contains("postgres") {
        let admin_url = std::env::var("SETPOINT_BENCH_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .map_err(|e| format!("PostgreSQL at {admin_url}: {e}"))?;
        let name = format!("sp_bench_{}", std::process::id());
        let drop_db = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop_db.clone()))
            .execute(&mut admin)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        let result = run("PostgreSQL", &format!("{base}/{name}"), &workload).await;
        sqlx::query(sqlx::AssertSqlSafe(drop_db))
            .execute(&mut admin)
            .await?;
        result?;
    }
    Ok(())
}
