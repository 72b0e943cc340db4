//! [`Store`]: open, fence, commit, read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chunk::{self, FragmentHeader};
use setpoint_dataplane::{Diff, Digest, Fragment, NodeDataplane};
use tokio::sync::Mutex;

use crate::db::{self, Db, RevisionRow};
use crate::decoded::Decoded;
use crate::error::{Result, StoreError};
use crate::types::{
    Backend, Cause, CommitRequest, Epoch, FailPoint, RevisionAction, RevisionId, RevisionInfo,
    StoreStats,
};
use crate::write::{Composition, WriterCache, prepare};

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// Atoms of recently read fragments kept decoded (verified against
    /// their keys) after their readers drop them; 0 keeps only what
    /// someone still holds. About 100 bytes of memory per atom.
    pub decoded_atoms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            decoded_atoms: 500_000,
        }
    }
}

/// A handle on the revision store. Cloning shares the pool and the
/// writer's cache; opening the same URL twice gives two independent
/// writers (as two control-plane replicas are).
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) writer: Arc<Mutex<WriterCache>>,
    fail: Arc<AtomicU8>,
    /// Fragments decoded (and verified against their key): those someone
    /// still holds, and the most recently read ones.
    decoded: Arc<Decoded>,
}

/// What a node's state at a revision is made of.
pub(crate) struct NodePlan {
    /// Part name → fragment key.
    pub parts: Vec<(String, Digest)>,
    /// The state digest recorded at `row_revision`, valid at the revision
    /// read when no shared part changed after the row.
    pub recorded: Option<Digest>,
}

enum Written {
    Revision(i64),
    /// Another writer committed since this one's cache was loaded.
    Moved(i64),
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn lines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// Opens (and migrates) the store at `url`: `sqlite://path?mode=rwc`
    /// creates the file on first use; `postgres://…` needs the database to
    /// exist.
    pub async fn open(url: &str) -> Result<Store> {
        Self::open_with(url, StoreOptions::default()).await
    }

    pub async fn open_with(url: &str, options: StoreOptions) -> Result<Store> {
        let db = Db::open(url, options.max_connections.max(1)).await?;
        Ok(Store {
            db,
            writer: Arc::new(Mutex::new(WriterCache::default())),
            fail: Arc::new(AtomicU8::new(0)),
            decoded: Arc::new(Decoded::new(options.decoded_atoms)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub async fn close(&self) {
        self.db.close().await
    }

    /// A new fencing epoch, higher than any handed out before. From now
    /// on commits carrying an older epoch are refused.
    pub async fn acquire_epoch(&self) -> Result<Epoch> {
        let e = self.db.acquire_epoch().await?;
        Ok(Epoch(db::to_u64(e, "leader", "epoch")?))
    }

    /// Leadership, if no other control plane holds it (PostgreSQL advisory
    /// lock, released when this process or its connection dies); with
    /// SQLite always granted. Leading also needs an epoch for fencing.
    pub async fn try_lead(&self) -> Result<Option<db::Leadership>> {
        self.db.try_lead().await
    }

    /// The head as it moves, whoever commits: PostgreSQL notifications,
    /// and a poll every `poll` besides (missed notifications, SQLite).
    pub fn watch_head(&self, poll: std::time::Duration) -> tokio::sync::watch::Receiver<u64> {
        let (tx, rx) = tokio::sync::watch::channel(0);
        let store = self.clone();
        tokio::spawn(async move {
            let mut listener = store.db.head_listener().await.ok().flatten();
            loop {
                if let Ok(Some(head)) = store.head().await {
                    tx.send_if_modified(|h| {
                        let newer = head.0 > *h;
                        if newer {
                            *h = head.0;
                        }
                        newer
                    });
                }
                if tx.is_closed() {
                    return;
                }
                match listener.as_mut() {
                    Some(l) => {
                        // A broken listener leaves the poll to do the work.
                        if let Ok(Err(_)) = tokio::time::timeout(poll, l.recv()).await {
                            listener = None;
                        }
                    }
                    None => tokio::time::sleep(poll).await,
                }
            }
        });
        rx
    }

    /// The newest revision, if any was committed.
    pub async fn head(&self) -> Result<Option<RevisionId>> {
        let (_, head) = self.db.leader().await?;
        let head = db::to_u64(head, "leader", "head")?;
        Ok((head > 0).then_some(RevisionId(head)))
    }

    /// Makes the next commits fail at `at` (tests: a commit dying midway).
    #[doc(hidden)]
    pub fn fail_commits_at(&self, at: Option<FailPoint>) {
        let v = match at {
            None => 0,
            Some(FailPoint::AfterContent) => 1,
            Some(FailPoint::BeforeCommit) => 2,
        };
        self.fail.store(v, Ordering::SeqCst);
    }

    fn failing_at(&self, at: FailPoint) -> Result<()> {
        let v = self.fail.load(Ordering::SeqCst);
        let hit = matches!(
            (v, at),
            (1, FailPoint::AfterContent) | (2, FailPoint::BeforeCommit)
        );
        if hit {
            return Err(StoreError::Injected(at));
        }
        Ok(())
    }

    /// Runs one statement as given (tests corrupt rows with it).
    #[doc(hidden)]
    pub async fn execute_unchecked(&self, sql: &str) -> Result<u64> {
        self.db.execute_raw(sql.to_string()).await
    }

    /// Records a revision in one transaction and returns its number.
    ///
    /// Writes grow with the change: chunks, manifests and fragments the
    /// store lacks, a row per shared part whose fragment changed, a row per
    /// node whose composition changed, the revision and its cause. Refused
    /// with [`StoreError::StaleEpoch`] when `req.epoch` is older than the
    /// newest epoch acquired.
    pub async fn commit(&self, req: CommitRequest) -> Result<RevisionId> {
        let epoch = db::to_i64(req.epoch.0, "epoch")?;
        let req = Arc::new(req);
        let mut cache = self.writer.clone().lock_owned().await;
        let mut last_found = 0;
        for _attempt in 0..2 {
            if cache.head.is_none() {
                *cache = self.load_cache().await?;
            }
            let expected = cache.head.unwrap_or(0) + 1;
            let request = req.clone();
            let (returned, prepared) = tokio::task::spawn_blocking(move || {
                let prepared = prepare(&cache, &request);
                (cache, prepared)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
            cache = returned;
            let prepared = prepared?;
            match self.write(&req.cause, epoch, &prepared, expected).await {
                Ok(Written::Revision(revision)) => {
                    prepared.apply(&mut cache, revision);
                    return Ok(RevisionId(db::to_u64(revision, "leader", "head")?));
                }
                Ok(Written::Moved(found)) => {
                    tracing::info!(expected, found, "store moved on; reloading writer cache");
                    last_found = found;
                    cache.head = None;
                }
                Err(e) => {
                    // The transaction rolled back, but a lost connection
                    // may hide a commit: reload before the next one.
                    if !matches!(e, StoreError::StaleEpoch { .. } | StoreError::Injected(_)) {
                        cache.head = None;
                    }
                    return Err(e);
                }
            }
        }
        Err(StoreError::Raced {
            expected: cache.head.unwrap_or(0) + 1,
            found: last_found,
        })
    }

    async fn load_cache(&self) -> Result<WriterCache> {
        let (_, head) = self.db.leader().await?;
        let mut cache = WriterCache {
            head: Some(head),
            ..Default::default()
        };
        for (name, key) in self.db.live_shared(head).await? {
            if let Some(key) = key {
                cache
                    .shared
                    .insert(name, db::digest_of(&key, "shared_parts", "fragment")?);
            }
        }
        for (node, row) in self.db.node_rows_at(head).await? {
            if let Some(c) = composition(&row)? {
                cache.nodes.insert(node, c);
            }
        }
        for pin in self.db.pins_at(head).await? {
            if pin.parts.is_some() {
                cache.pinned.insert(pin.node);
            }
        }
        Ok(cache)
    }

    async fn write(
        &self,
        cause: &Cause,
        epoch: i64,
        p: &crate::write::Prepared,
        expected: i64,
    ) -> Result<Written> {
        let mut tx = self.db.begin().await?;
        let Some(revision) = tx.fence(epoch).await? else {
            tx.rollback().await?;
            let (current, _) = self.db.leader().await?;
            return Err(StoreError::StaleEpoch {
                ours: Epoch(db::to_u64(epoch, "leader", "epoch")?),
                current: Epoch(db::to_u64(current, "leader", "epoch")?),
            });
        };
        if revision != expected {
            tx.rollback().await?;
            return Ok(Written::Moved(revision));
        }
        tx.insert_revision(&RevisionRow {
            revision,
            committed_ms: now_ms(),
            epoch,
            summary: cause.summary.clone(),
            nodes_changed: db::to_i64(p.nodes_changed, "node count")?,
            shared_changed: p.shared_changed(),
            action: "commit".into(),
            target: None,
        })
        .await?;
        tx.insert_objects(revision, &p.objects).await?;
        tx.insert_chunks(&p.chunks.iter().collect::<Vec<_>>())
            .await?;
        tx.insert_manifests(&p.manifests.iter().collect::<Vec<_>>())
            .await?;
        tx.insert_fragments(&p.fragments).await?;
        self.failing_at(FailPoint::AfterContent)?;
        tx.insert_shared(revision, &p.shared_rows).await?;
        tx.insert_nodes(revision, &p.node_rows).await?;
        self.failing_at(FailPoint::BeforeCommit)?;
        tx.commit().await?;
        Ok(Written::Revision(revision))
    }

    // --- reads ---

    pub(crate) async fn revision_row(&self, revision: RevisionId) -> Result<RevisionRow> {
        let r = i64::try_from(revision.0).map_err(|_| StoreError::UnknownRevision(revision))?;
        self.db
            .revision(r)
            .await?
            .ok_or(StoreError::UnknownRevision(revision))
    }

    /// The plan of a node's current state at `revision`: its pin when it
    /// is pinned then, its computed state otherwise.
    pub(crate) async fn node_plan(
        &self,
        node: &str,
        revision: RevisionId,
    ) -> Result<Option<NodePlan>> {
        let row = self.revision_row(revision).await?;
        if let Some(pin) = self.db.pin_row(node, row.revision).await?
            && let Some(parts) = pin.parts
        {
            return pin_plan(&parts, pin.state_digest.as_deref()).map(Some);
        }
        self.computed_plan_at(node, revision, &row).await
    }

    /// The plan of a node's computed state at `revision`, pinned or not.
    async fn computed_plan(&self, node: &str, revision: RevisionId) -> Result<Option<NodePlan>> {
        let row = self.revision_row(revision).await?;
        self.computed_plan_at(node, revision, &row).await
    }

    /// [`Store::computed_plan`] with the revision's row already read.
    async fn computed_plan_at(
        &self,
        node: &str,
        revision: RevisionId,
        row: &RevisionRow,
    ) -> Result<Option<NodePlan>> {
        let Some(node_row) = self.db.node_row(node, row.revision).await? else {
            return Ok(None);
        };
        let Some(c) = composition(&node_row)? else {
            return Ok(None);
        };
        let names: Vec<String> = c.shared.iter().cloned().collect();
        let found = self.db.shared_many(&names, row.revision).await?;
        Self::computed_plan_of(node, revision, &node_row, c, |name| {
            found.get(name).cloned()
        })
        .map(Some)
    }

    /// A node's computed plan from its row and that row's composition,
    /// with `shared_at` giving each shared part's newest row (its revision
    /// and key) as of `revision`.
    fn computed_plan_of(
        node: &str,
        revision: RevisionId,
        node_row: &db::NodeRow,
        c: Composition,
        shared_at: impl Fn(&str) -> Option<(i64, Option<Vec<u8>>)>,
    ) -> Result<NodePlan> {
        let mut parts = Vec::new();
        let mut newest_shared = 0;
        for name in &c.shared {
            let missing = || StoreError::Missing {
                node: node.to_string(),
                revision,
                what: "shared part",
                key: name.clone(),
            };
            let (at, key) = shared_at(name).ok_or_else(missing)?;
            let key = key.ok_or_else(missing)?;
            newest_shared = newest_shared.max(at);
            parts.push((
                name.clone(),
                db::digest_of(&key, "shared_parts", "fragment")?,
            ));
        }
        parts.extend(c.own);
        let recorded = match &node_row.state_digest {
            Some(d) if newest_shared <= node_row.revision => {
                Some(db::digest_of(d, "nodes", "state_digest")?)
            }
            _ => None,
        };
        Ok(NodePlan { parts, recorded })
    }

    /// Fragments by key, every byte checked against its key.
    pub(crate) async fn load_fragments(
        &self,
        node: &str,
        revision: RevisionId,
        keys: &BTreeSet<Digest>,
    ) -> Result<HashMap<Digest, Arc<Fragment>>> {
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(f) = self.decoded.get(key) {
                out.insert(*key, f);
            }
        }
        let wanted: Vec<Digest> = keys
            .iter()
            .filter(|k| !out.contains_key(*k))
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(out);
        }
        let (claim, others) = self.decoded.claim(&wanted);
        if !claim.keys.is_empty() {
            out.extend(self.decode_from_tables(node, revision, &claim.keys).await?);
        }
        drop(claim);
        let mut left = Vec::new();
        for (key, wait) in others {
            wait.done().await;
            match self.decoded.get(&key) {
                Some(f) => {
                    out.insert(key, f);
                }
                // The other reader failed, or dropped it uncached.
                None => left.push(key),
            }
        }
        if !left.is_empty() {
            out.extend(self.decode_from_tables(node, revision, &left).await?);
        }
        Ok(out)
    }

    /// Reads and decodes `wanted` from the tables, checking every byte,
    /// and records them in the decoded cache.
    async fn decode_from_tables(
        &self,
        node: &str,
        revision: RevisionId,
        wanted: &[Digest],
    ) -> Result<HashMap<Digest, Arc<Fragment>>> {
        let corrupt = |source| StoreError::Corrupt {
            node: node.to_string(),
            revision,
            source: Box::new(source),
        };
        let missing = |what: &'static str, key: &Digest| StoreError::Missing {
            node: node.to_string(),
            revision,
            what,
            key: key.to_string(),
        };
        let mut out = HashMap::with_capacity(wanted.len());
        let rows = self.db.fragments(wanted).await?;
        let headers: HashMap<Digest, FragmentHeader> =
            rows.into_iter().map(|r| (r.key, r.header)).collect();
        // Per fragment: its keys at the current level, and that level.
        let mut walk: Vec<(Digest, FragmentHeader, Vec<Digest>, u8)> = Vec::new();
        for key in wanted {
            let header = headers.get(key).ok_or_else(|| missing("fragment", key))?;
            header.verify(key).map_err(corrupt)?;
            walk.push((*key, *header, vec![header.root], header.height));
        }
        while walk.iter().any(|(_, _, _, level)| *level > 0) {
            let needed: BTreeSet<Digest> = walk
                .iter()
                .filter(|w| w.3 > 0)
                .flat_map(|w| w.2.iter().copied())
                .collect();
            let needed: Vec<Digest> = needed.into_iter().collect();
            let found: HashMap<Digest, (i64, Vec<u8>)> = self
                .db
                .manifests(&needed)
                .await?
                .into_iter()
                .map(|(k, level, body)| (k, (level, body)))
                .collect();
            for (_, _, current, level) in walk.iter_mut().filter(|w| w.3 > 0) {
                let mut children = Vec::new();
                for key in current.iter() {
                    let (_, body) = found.get(key).ok_or_else(|| missing("manifest", key))?;
                    children.extend(chunk::decode_manifest(key, *level, body).map_err(corrupt)?);
                }
                *current = children;
                *level -= 1;
            }
        }
        let chunk_keys: BTreeSet<Digest> = walk.iter().flat_map(|w| w.2.iter().copied()).collect();
        let chunk_keys: Vec<Digest> = chunk_keys.into_iter().collect();
        let bodies: HashMap<Digest, Vec<u8>> =
            self.db.chunks(&chunk_keys).await?.into_iter().collect();
        if let Some(c) = chunk_keys.iter().find(|c| !bodies.contains_key(*c)) {
            return Err(missing("chunk", c));
        }
        let bytes: usize = bodies.values().map(Vec::len).sum();
        let assembled = if bytes < PARALLEL_DECODE_BYTES {
            decode_all(walk, &bodies)
        } else {
            // Hashing and parsing a big fragment's chunks is most of a
            // read: on the blocking pool, chunks on every core.
            tokio::task::spawn_blocking(move || decode_all(walk, &bodies))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        };
        for (key, fragment) in assembled {
            out.insert(key, Arc::new(fragment.map_err(corrupt)?));
        }
        for key in wanted {
            if let Some(f) = out.get(key) {
                self.decoded.insert(*key, f);
            }
        }
        Ok(out)
    }

    pub(crate) fn build(
        node: &str,
        revision: RevisionId,
        plan: &NodePlan,
        fragments: &HashMap<Digest, Arc<Fragment>>,
    ) -> Result<NodeDataplane> {
        let mut parts = Vec::with_capacity(plan.parts.len());
        for (name, key) in &plan.parts {
            let f = fragments.get(key).ok_or_else(|| StoreError::Missing {
                node: node.to_string(),
                revision,
                what: "fragment",
                key: key.to_string(),
            })?;
            parts.push((name.clone(), f.clone()));
        }
        let state = NodeDataplane::from_parts(parts);
        if let Some(expected) = plan.recorded {
            let actual = state.digest();
            if actual != expected {
                return Err(StoreError::StateDigest {
                    node: node.to_string(),
                    revision,
                    expected,
                    actual,
                });
            }
        }
        Ok(state)
    }

    /// A node's desired (current) state at `revision`: when a rollback
    /// pinned the node, the state it is held at; otherwise its newest
    /// composition at or before `revision`, each shared part as of
    /// `revision`. `None` when the node did not exist then; an error when
    /// the revision does not exist or a stored byte does not match its key.
    pub async fn node_state(
        &self,
        node: &str,
        revision: RevisionId,
    ) -> Result<Option<NodeDataplane>> {
        let plan = self.node_plan(node, revision).await;
        let state = self.assemble(node, revision, plan).await;
        self.still_there(revision, state).await
    }

    /// A node's computed state at `revision`, as the last commit at or
    /// before it recorded it, whether or not the node is pinned. Equals
    /// [`Store::node_state`] for nodes that are not pinned.
    pub async fn computed_state(
        &self,
        node: &str,
        revision: RevisionId,
    ) -> Result<Option<NodeDataplane>> {
        let plan = self.computed_plan(node, revision).await;
        let state = self.assemble(node, revision, plan).await;
        self.still_there(revision, state).await
    }

    /// The current states of `nodes` at `revision` (every node then when
    /// `None`), read in a handful of queries whatever their number: what a
    /// fleet-wide rollback or a control plane serving thousands of nodes
    /// needs. Nodes that did not exist then are absent from the result.
    pub async fn node_states(
        &self,
        revision: RevisionId,
        nodes: Option<&BTreeSet<String>>,
    ) -> Result<BTreeMap<String, NodeDataplane>> {
        let plans = self.node_plans(revision, nodes).await;
        let states = match plans {
            Ok(plans) => self.assemble_all(revision, &plans).await,
            Err(e) => Err(e),
        };
        self.still_there(revision, states).await
    }

    pub(crate) async fn assemble_all(
        &self,
        revision: RevisionId,
        plans: &BTreeMap<String, NodePlan>,
    ) -> Result<BTreeMap<String, NodeDataplane>> {
        let keys: BTreeSet<Digest> = plans
            .values()
            .flat_map(|p| p.parts.iter().map(|(_, k)| *k))
            .collect();
        let label = match plans.keys().next() {
            Some(first) if plans.len() == 1 => first.clone(),
            _ => format!("{} nodes", plans.len()),
        };
        let fragments = self.load_fragments(&label, revision, &keys).await?;
        plans
            .iter()
            .map(|(node, plan)| Ok((node.clone(), Self::build(node, revision, plan, &fragments)?)))
            .collect()
    }

    /// [`Store::node_plan`] for many nodes at once.
    pub(crate) async fn node_plans(
        &self,
        revision: RevisionId,
        nodes: Option<&BTreeSet<String>>,
    ) -> Result<BTreeMap<String, NodePlan>> {
        let row = self.revision_row(revision).await?;
        let wanted = |node: &String| nodes.is_none_or(|n| n.contains(node));
        let mut plans = BTreeMap::new();
        for pin in self.db.pins_at(row.revision).await? {
            if let Some(parts) = &pin.parts
                && wanted(&pin.node)
            {
                let plan = pin_plan(parts, pin.state_digest.as_deref())?;
                plans.insert(pin.node, plan);
            }
        }
        let shared: HashMap<String, (i64, Option<Vec<u8>>)> = self
            .db
            .shared_rows_at(row.revision)
            .await?
            .into_iter()
            .map(|(name, at, key)| (name, (at, key)))
            .collect();
        for (node, node_row) in self.db.node_rows_at(row.revision).await? {
            if plans.contains_key(&node) || !wanted(&node) {
                continue;
            }
            if let Some(c) = composition(&node_row)? {
                let plan = Self::computed_plan_of(&node, revision, &node_row, c, |name| {
                    shared.get(name).cloned()
                })?;
                plans.insert(node, plan);
            }
        }
        Ok(plans)
    }

    async fn assemble(
        &self,
        node: &str,
        revision: RevisionId,
        plan: Result<Option<NodePlan>>,
    ) -> Result<Option<NodeDataplane>> {
        let Some(plan) = plan? else {
            return Ok(None);
        };
        let keys = plan.parts.iter().map(|(_, k)| *k).collect();
        let fragments = self.load_fragments(node, revision, &keys).await?;
        Self::build(node, revision, &plan, &fragments).map(Some)
    }

    /// A GC may delete a revision while it is read, and the rows it
    /// resolved through with it: whatever was read is only trusted if the
    /// revision still exists afterwards (GC deletes the revision row first).
    async fn still_there<T>(&self, revision: RevisionId, read: Result<T>) -> Result<T> {
        match self.revision_row(revision).await {
            Err(e @ StoreError::UnknownRevision(_)) => Err(e),
            _ => read,
        }
    }

    /// What changes `node` from `from` to `to` (a node absent at one end
    /// is an empty state there). Fragments both revisions share are read
    /// once and skipped by the diff.
    pub async fn diff(&self, node: &str, from: RevisionId, to: RevisionId) -> Result<Diff> {
        let diff = self.diff_unchecked(node, from, to).await;
        let diff = self.still_there(from, diff).await;
        self.still_there(to, diff).await
    }

    async fn diff_unchecked(&self, node: &str, from: RevisionId, to: RevisionId) -> Result<Diff> {
        let a = self.node_plan(node, from).await?;
        let b = self.node_plan(node, to).await?;
        let keys: BTreeSet<Digest> = a
            .iter()
            .chain(b.iter())
            .flat_map(|p| p.parts.iter().map(|(_, k)| *k))
            .collect();
        let fragments = self.load_fragments(node, to, &keys).await?;
        let state = |plan: &Option<NodePlan>, revision| match plan {
            Some(plan) => Self::build(node, revision, plan, &fragments),
            None => Ok(NodeDataplane::new()),
        };
        let sa = state(&a, from)?;
        let sb = state(&b, to)?;
        Ok(setpoint_dataplane::diff(&sa, &sb))
    }

    /// Up to `page_size` revisions older than `before` (all when `None`),
    /// newest first. The next page is `before = Some(last.revision)`.
    pub async fn list_revisions(
        &self,
        page_size: u32,
        before: Option<RevisionId>,
    ) -> Result<Vec<RevisionInfo>> {
        let before = match before {
            Some(r) => i64::try_from(r.0).unwrap_or(i64::MAX),
            None => i64::MAX,
        };
        let rows = self
            .db
            .revisions_before(before, i64::from(page_size))
            .await?;
        let (Some(high), Some(low)) = (rows.first(), rows.last()) else {
            return Ok(Vec::new());
        };
        let mut objects: HashMap<i64, Vec<String>> = HashMap::new();
        for (r, o) in self.db.objects_between(low.revision, high.revision).await? {
            objects.entry(r).or_default().push(o);
        }
        rows.into_iter()
            .map(|row| {
                let action = action_of(&row)?;
                Ok(RevisionInfo {
                    revision: RevisionId(db::to_u64(row.revision, "revisions", "revision")?),
                    committed_ms: row.committed_ms,
                    epoch: Epoch(db::to_u64(row.epoch, "revisions", "epoch")?),
                    cause: Cause {
                        objects: objects.remove(&row.revision).unwrap_or_default(),
                        summary: row.summary,
                    },
                    nodes_changed: db::to_u64(row.nodes_changed, "revisions", "nodes_changed")?,
                    shared_changed: lines(&row.shared_changed),
                    action,
                })
            })
            .collect()
    }

    /// Nodes whose current state changed at `revision`: those whose
    /// composition was written then and those using a shared part written
    /// then, unless a rollback pinned them earlier; and those rolled back
    /// or resumed at `revision`.
    pub async fn changed_nodes(&self, revision: RevisionId) -> Result<Vec<String>> {
        let row = self.revision_row(revision).await?;
        let mut out: BTreeSet<String> = self
            .db
            .nodes_written_at(row.revision)
            .await?
            .into_iter()
            .collect();
        let changed: HashSet<String> = lines(&row.shared_changed).into_iter().collect();
        if !changed.is_empty() {
            for (node, db::NodeRow { shared, .. }) in self.db.node_rows_at(row.revision).await? {
                if shared.is_some_and(|s| s.split('\n').any(|name| changed.contains(name))) {
                    out.insert(node);
                }
            }
        }
        for pin in self.db.pins_at(row.revision).await? {
            if pin.revision == row.revision {
                out.insert(pin.node);
            } else if pin.parts.is_some() {
                out.remove(&pin.node);
            }
        }
        let out = self.still_there(revision, Ok(out)).await?;
        Ok(out.into_iter().collect())
    }

    /// Row counts and size on disk, from the database.
    pub async fn stats(&self) -> Result<StoreStats> {
        self.db.stats().await
    }
}

/// Chunk bytes from which a read decodes on several threads.
const PARALLEL_DECODE_BYTES: usize = 64 * 1024;

/// Each fragment of `walk` (key, header, chunk keys in order) from its
/// chunks, every byte checked; the chunks of one fragment are decoded in
/// parallel, then put together in order. Every chunk key is in `bodies`.
fn decode_all(
    walk: Vec<(Digest, FragmentHeader, Vec<Digest>, u8)>,
    bodies: &HashMap<Digest, Vec<u8>>,
) -> Vec<(Digest, std::result::Result<Fragment, chunk::ChunkError>)> {
    use rayon::prelude::*;
    walk.into_iter()
        .map(|(key, header, chunks, _)| {
            let decoded: Vec<_> = chunks
                .par_iter()
                .with_min_len(8)
                .map(|c| {
                    // Absent bodies were refused before; an empty one would
                    // fail its hash check anyway.
                    let body = bodies.get(c).map(Vec::as_slice).unwrap_or_default();
                    chunk::decode_chunk(c, body)
                })
                .collect();
            (key, chunk::assemble_decoded(&key, &header, decoded))
        })
        .collect()
}

/// The plan of a pinned node: its parts as the pin row names them.
/// The parts a `nodes` row lists; `None` for a row that records the node's
/// removal.
fn composition(row: &db::NodeRow) -> Result<Option<Composition>> {
    row.shared
        .as_deref()
        .map(|shared| Composition::decode(shared, row.own.as_deref().unwrap_or_default()))
        .transpose()
}

pub(crate) fn pin_plan(parts: &[u8], digest: Option<&[u8]>) -> Result<NodePlan> {
    let c = Composition::decode("", parts)?;
    let recorded = digest
        .map(|d| db::digest_of(d, "node_pins", "state_digest"))
        .transpose()?;
    Ok(NodePlan {
        parts: c.own.into_iter().collect(),
        recorded,
    })
}

fn action_of(row: &RevisionRow) -> Result<RevisionAction> {
    match (row.action.as_str(), row.target) {
        ("commit", _) => Ok(RevisionAction::Commit),
        ("resume", _) => Ok(RevisionAction::Resume),
        ("rollback", Some(to)) => Ok(RevisionAction::Rollback {
            to: RevisionId(db::to_u64(to, "revisions", "target")?),
        }),
        (other, target) => Err(StoreError::BadRow {
            table: "revisions",
            reason: format!("action {other:?} with target {target:?}"),
        }),
    }
}
