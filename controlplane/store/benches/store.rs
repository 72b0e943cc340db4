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
//!
//! Then growth per kind of Service: for each kind, SETPOINT_BENCH_PER_KIND
//! (default 200) consecutive one-endpoint changes of Services of that kind
//! only, measured over the whole block (a page the database allocates in
//! one revision fills over the next ones, so per-commit deltas in a mixed
//! run would charge it to whichever kind came first), with where the bytes
//! went: each table's heap and its indexes (PostgreSQL: table with TOAST,
//! and indexes; SQLite: dbstat pages per b-tree) and the bytes of chunk and
//! manifest bodies written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::{Digest, Fragment};
use setpoint_store::{Cause, CommitRequest, Epoch, NodeParts, RevisionId, Store};
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
    /// After `changes`: per kind of Service, changes of that kind only.
    per_kind: Vec<(&'static str, Vec<CommitRequest>)>,
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

const KINDS: [synthetic::Kind; 5] = [
    synthetic::Kind::ClusterIp,
    synthetic::Kind::NodePort,
    synthetic::Kind::LoadBalancer,
    synthetic::Kind::InternalLocal,
    synthetic::Kind::Topology,
];

/// The index and what the requests built so far left it at.
struct Builder {
    index: Index,
    /// A representative node per zone.
    per_zone: Vec<Arc<str>>,
    own: HashMap<Arc<str>, BTreeMap<String, Arc<Fragment>>>,
    generation: HashMap<usize, usize>,
    own_changed: usize,
}

impl Builder {
    /// The commit request of one endpoint change of Service `i`.
    fn change(&mut self, shape: &ClusterShape, i: usize, k: usize) -> CommitRequest {
        let g = self.generation.entry(i).or_insert(0);
        *g += 1;
        let slice = synthetic::slice(i, shape, *g);
        let key = slice.key().to_string();
        self.index.upsert(slice);
        let outcome = self.index.commit();
        let mut req = CommitRequest::new(
            Epoch(0),
            Cause {
                objects: vec![key],
                summary: format!("endpoint change {k}"),
            },
        );
        shared_parts(&self.index, &mut req, &self.per_zone);
        // Nodes whose own parts changed (pointer comparison: the index
        // keeps an unchanged fragment's Arc).
        for n in &outcome.changed_nodes {
            let Some(state) = self.index.node_state(n) else {
                continue;
            };
            let (parts, _) = NodeParts::split(&state);
            let last = self.own.get(n);
            let same = last.is_some_and(|last| {
                last.len() == parts.own.len()
                    && last
                        .iter()
                        .zip(&parts.own)
                        .all(|((a, fa), (b, fb))| a == b && Arc::ptr_eq(fa, fb))
            });
            if !same {
                self.own.insert(n.clone(), parts.own.clone());
                req.nodes.insert(n.to_string(), parts);
                self.own_changed += 1;
            }
        }
        req
    }
}

/// Services to change, in a fixed spread-out order, of kind `only` when
/// given; a Service comes back once every one of its kind has had a turn.
fn picks(shape: &ClusterShape, only: Option<&str>, changes: usize) -> Vec<usize> {
    let kind_ok = |i: &usize| only.is_none_or(|k| kind_label(synthetic::kind_of(*i)) == k);
    if !(0..shape.services).any(|i| kind_ok(&i)) {
        return Vec::new();
    }
    (0..)
        .map(|j: usize| (j * 7907) % shape.services.max(1))
        .filter(kind_ok)
        .take(changes)
        .collect()
}

fn build_workload(shape: &ClusterShape, changes: usize, per_kind: usize) -> Workload {
    let t0 = Instant::now();
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(shape) {
        index.upsert(object);
    }
    index.commit();
    let names: Vec<Arc<str>> = index.node_names().cloned().collect();
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
    let mut b = Builder {
        index,
        per_zone: per_zone.into_values().collect(),
        own,
        generation: HashMap::new(),
        own_changed: 0,
    };

    // SETPOINT_BENCH_ONLY=ClusterIP (or NodePort, …) changes only Services
    // of that kind, as the compute benchmark does.
    let only = std::env::var("SETPOINT_BENCH_ONLY").ok();
    let picks_mixed = picks(shape, only.as_deref(), changes);
    let probe_at = (changes as u64 / 2).max(1) + 1;
    let probe_nodes: Vec<Arc<str>> = names
        .iter()
        .step_by((names.len() / 20).max(1))
        .cloned()
        .collect();
    let mut probes: Vec<(u64, String, Digest)> = Vec::new();
    if changes == 0 {
        for n in &probe_nodes {
            if let Some(d) = b.index.node_digest(n) {
                probes.push((1, n.to_string(), d));
            }
        }
    }
    let mut out = Vec::with_capacity(changes);
    for (k, &i) in picks_mixed.iter().enumerate() {
        let req = b.change(shape, i, k);
        out.push((kind_label(synthetic::kind_of(i)), req));
        if k as u64 + 2 == probe_at {
            for n in &probe_nodes {
                if let Some(d) = b.index.node_digest(n) {
                    probes.push((probe_at, n.to_string(), d));
                }
            }
        }
    }
    let mut blocks = Vec::new();
    let mut k = out.len();
    for kind in KINDS {
        let label = kind_label(kind);
        if only.as_deref().is_some_and(|o| o != label) {
            continue;
        }
        let mut reqs = Vec::with_capacity(per_kind);
        for i in picks(shape, Some(label), per_kind) {
            reqs.push(b.change(shape, i, k));
            k += 1;
        }
        blocks.push((label, reqs));
    }
    println!(
        "{} change requests built in {:.1} s ({} mixed, then up to {per_kind} per kind); {} node compositions changed in all",
        k,
        t0.elapsed().as_secs_f64(),
        out.len(),
        b.own_changed
    );
    Workload {
        initial,
        changes: out,
        per_kind: blocks,
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
    for (kind, req) in &w.changes {
        let req = with_epoch(req, epoch);
        let t = Instant::now();
        store.commit(req).await?;
        let d = t.elapsed();
        times.push(d);
        by_kind.entry(kind).or_default().push(d);
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
        println!(
            "  {kind}: {} revisions, commit p50 {:.2} ms, p99 {:.2} ms",
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

    // Growth per kind of Service, one block of changes of one kind each.
    let mut sizes = Sizes::connect(url).await?;
    for (kind, reqs) in &w.per_kind {
        if reqs.is_empty() {
            continue;
        }
        let before_stats = store.stats().await?;
        let before = sizes.measure().await?;
        let mut ts = Vec::with_capacity(reqs.len());
        for req in reqs {
            let t = Instant::now();
            store.commit(with_epoch(req, epoch)).await?;
            ts.push(t.elapsed());
        }
        let after_stats = store.stats().await?;
        let after = sizes.measure().await?;
        ts.sort();
        let n = reqs.len() as f64;
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n;
        println!(
            "{kind}: {} revisions, growth {:.1} KiB/revision; commit p50 {:.2} ms, p99 {:.2} ms; per revision {:.2} chunks ({:.0} B of bodies), {:.2} manifests ({:.0} B), {:.2} fragments, {:.2} shared part rows, {:.2} node rows",
            reqs.len(),
            kib(per(after_stats.bytes, before_stats.bytes)),
            ms(percentile(&ts, 0.5)),
            ms(percentile(&ts, 0.99)),
            per(after_stats.chunks, before_stats.chunks),
            per(after.chunk_bodies, before.chunk_bodies),
            per(after_stats.manifests, before_stats.manifests),
            per(after.manifest_bodies, before.manifest_bodies),
            per(after_stats.fragments, before_stats.fragments),
            per(after_stats.shared_parts, before_stats.shared_parts),
            per(after_stats.nodes, before_stats.nodes),
        );
        let grown: Vec<String> = after
            .relations
            .iter()
            .filter_map(|(name, &b)| {
                let a = before.relations.get(name).copied().unwrap_or(0);
                (b > a).then(|| format!("{name} {:.0} B", per(b, a)))
            })
            .collect();
        println!("  per revision by relation: {}", grown.join(", "));
    }
    sizes.close().await;
    store.close().await;
    Ok(())
}

/// Bytes per relation and of content bodies, read beside the store on a
/// connection of its own.
enum Sizes {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

struct Measured {
    /// Relation → bytes: PostgreSQL `table` (heap, TOAST, free space and
    /// visibility maps) and `table indexes`; SQLite every b-tree's pages
    /// (dbstat) and `free pages`.
    relations: BTreeMap<String, u64>,
    chunk_bodies: u64,
    manifest_bodies: u64,
}

impl Sizes {
    async fn connect(url: &str) -> Result<Sizes, Box<dyn std::error::Error>> {
        Ok(if url.starts_with("sqlite:") {
            Sizes::Sqlite(sqlx::SqliteConnection::connect(url).await?)
        } else {
            Sizes::Postgres(sqlx::PgConnection::connect(url).await?)
        })
    }

    async fn measure(&mut self) -> Result<Measured, Box<dyn std::error::Error>> {
        let bodies = "SELECT CAST((SELECT COALESCE(SUM(length(body)), 0) FROM chunks) AS BIGINT),
                             CAST((SELECT COALESCE(SUM(length(body)), 0) FROM manifests) AS BIGINT)";
        let mut relations = BTreeMap::new();
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let (c, m): (i64, i64) = match self {
            Sizes::Postgres(c) => {
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT c.relname::text, pg_table_size(c.oid)::bigint, pg_indexes_size(c.oid)::bigint
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind = 'r' AND n.nspname = current_schema()",
                )
                .fetch_all(&mut *c)
                .await?;
                for (name, table, indexes) in rows {
                    relations.insert(name.clone(), n(table));
                    relations.insert(format!("{name} indexes"), n(indexes));
                }
                sqlx::query_as(bodies).fetch_one(&mut *c).await?
            }
            Sizes::Sqlite(c) => {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
                        .fetch_all(&mut *c)
                        .await?;
                let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
                    .fetch_one(&mut *c)
                    .await?;
                let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                    .fetch_one(&mut *c)
                    .await?;
                for (name, bytes) in rows {
                    relations.insert(name, n(bytes));
                }
                relations.insert("free pages".into(), n(free.saturating_mul(page)));
                sqlx::query_as(bodies).fetch_one(&mut *c).await?
            }
        };
        Ok(Measured {
            relations,
            chunk_bodies: n(c),
            manifest_bodies: n(m),
        })
    }

    async fn close(self) {
        let _ = match self {
            Sizes::Postgres(c) => c.close().await,
            Sizes::Sqlite(c) => c.close().await,
        };
    }
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
    let per_kind = env_or("SETPOINT_BENCH_PER_KIND", 200);
    let workload = build_workload(&shape, changes, per_kind);

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
