//! The CPU half of a commit: chunk what changed, decide which rows to
//! write. Pure over the writer's cache; the cache changes only after the
//! transaction commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::chunk::{Chunk, ChunkedFragment, FragmentHeader, Manifest};
use setpoint_dataplane::{Digest, Fragment, NodeDataplane};

use crate::db::{self, NewNodeRow};
use crate::error::{Result, StoreError};
use crate::types::CommitRequest;

/// A node's composition as its row records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Composition {
    pub shared: BTreeSet<String>,
    pub own: BTreeMap<String, Digest>,
}

impl Composition {
    pub(crate) fn encode_shared(&self) -> String {
        self.shared
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `own` column: repeated (u16 big-endian name length, name, 32-byte key).
    pub(crate) fn encode_own(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, key) in &self.own {
            // Names are checked to fit in a u16 before they get here.
            let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&key.0);
        }
        out
    }

    pub(crate) fn decode(shared: &str, own: &[u8]) -> Result<Composition> {
        let bad = |reason: String| StoreError::BadRow {
            table: "nodes",
            reason,
        };
        let shared = shared
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut parts = BTreeMap::new();
        let mut rest = own;
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| bad("own parts: truncated name length".into()))?;
            let len = usize::from(u16::from_be_bytes(*len));
            if tail.len() < len + 32 {
                return Err(bad("own parts: truncated entry".into()));
            }
            let (name, tail) = tail.split_at(len);
            let (key, tail) = tail.split_at(32);
            let name = std::str::from_utf8(name)
                .map_err(|e| bad(format!("own part name: {e}")))?
                .to_string();
            parts.insert(name, db::digest_of(key, "nodes", "own")?);
            rest = tail;
        }
        Ok(Composition { shared, own: parts })
    }
}

/// Where a chunked fragment came from, for the next incremental chunking.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Shared(String),
    Own(String, String),
}

/// What one writer knows of the store's newest revision. Valid only while
/// `head` is the store's head: a commit that finds another number reloads.
#[derive(Default)]
pub(crate) struct WriterCache {
    /// The revision this cache reflects; `None` until loaded.
    pub head: Option<i64>,
    /// Live shared parts and their fragment keys.
    pub shared: HashMap<String, Digest>,
    /// Live nodes.
    pub nodes: HashMap<String, Composition>,
    /// Last chunking of each part this writer committed (not filled by a
    /// load: the first commit after it chunks from scratch).
    pub chunked: HashMap<Slot, Arc<ChunkedFragment>>,
    /// Nodes a rollback holds at an old state: their computed changes are
    /// recorded but not counted as changes.
    pub pinned: HashSet<String>,
}

/// Rows one commit writes, and the cache after it.
#[derive(Default)]
pub(crate) struct Prepared {
    pub chunks: Vec<Chunk>,
    pub manifests: Vec<Manifest>,
    pub fragments: Vec<(Digest, FragmentHeader)>,
    pub shared_rows: Vec<(String, Option<Digest>)>,
    pub node_rows: Vec<NewNodeRow>,
    pub nodes_changed: u64,
    pub objects: Vec<String>,
    chunked: Vec<(Slot, Arc<ChunkedFragment>)>,
    compositions: Vec<(String, Option<Composition>)>,
}

#[derive(Default)]
struct Content {
    chunks: HashSet<Digest>,
    manifests: HashSet<Digest>,
    fragments: HashSet<Digest>,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 1024 || name.contains('\n') {
        return Err(StoreError::InvalidRequest(format!(
            "{what} name {name:?} must be 1 to 1024 bytes without a newline"
        )));
    }
    Ok(())
}

/// Chunks `fragment` against the last chunking of `slot`; adds what the
/// store lacks to `p` when the fragment differs from `current`.
fn chunk_part(
    cache: &WriterCache,
    p: &mut Prepared,
    seen: &mut Content,
    slot: Slot,
    fragment: &Arc<Fragment>,
    current: Option<&Digest>,
) -> Digest {
    let prev = cache.chunked.get(&slot);
    let (cf, chunks) = match prev {
        Some(prev) if Arc::ptr_eq(prev.fragment(), fragment) => {
            let key = prev.key();
            p.chunked.push((slot, prev.clone()));
            return key;
        }
        Some(prev) => prev.update(fragment.clone()),
        None => ChunkedFragment::new(fragment.clone()),
    };
    let key = cf.key();
    if current != Some(&key) && seen.fragments.insert(key) {
        p.fragments.push((key, *cf.header()));
        for m in cf.new_manifests(prev.map(Arc::as_ref)) {
            if seen.manifests.insert(m.key) {
                p.manifests.push(m.clone());
            }
        }
        for c in chunks {
            if seen.chunks.insert(c.key) {
                p.chunks.push(c);
            }
        }
    }
    p.chunked.push((slot, Arc::new(cf)));
    key
}

pub(crate) fn prepare(cache: &WriterCache, req: &CommitRequest) -> Result<Prepared> {
    for name in req.shared.keys().chain(&req.removed_shared) {
        check_name("shared part", name)?;
    }
    if let Some(name) = req.shared.keys().find(|n| req.removed_shared.contains(*n)) {
        return Err(StoreError::InvalidRequest(format!(
            "shared part {name} is both given and removed"
        )));
    }
    for (node, parts) in &req.nodes {
        check_name("node", node)?;
        if req.removed_nodes.contains(node) {
            return Err(StoreError::InvalidRequest(format!(
                "node {node} is both given and removed"
            )));
        }
        for name in parts.own.keys() {
            check_name("own part", name)?;
            if parts.shared.contains(name) {
                return Err(StoreError::InvalidRequest(format!(
                    "node {node} has a part {name} that is both shared and its own"
                )));
            }
        }
    }
    for o in &req.cause.objects {
        check_name("cause object", o)?;
    }

    let mut p = Prepared::default();
    let mut seen = Content::default();

    // Shared parts: a row only when the fragment changed.
    let mut shared_changed: BTreeSet<String> = BTreeSet::new();
    let mut live_shared: HashMap<&str, Option<&Arc<Fragment>>> = cache
        .shared
        .keys()
        .map(|n| {
            let slot = Slot::Shared(n.clone());
            (n.as_str(), cache.chunked.get(&slot).map(|c| c.fragment()))
        })
        .collect();
    for (name, fragment) in &req.shared {
        let current = cache.shared.get(name);
        let key = chunk_part(
            cache,
            &mut p,
            &mut seen,
            Slot::Shared(name.clone()),
            fragment,
            current,
        );
        if current != Some(&key) {
            p.shared_rows.push((name.clone(), Some(key)));
            shared_changed.insert(name.clone());
        }
        live_shared.insert(name.as_str(), Some(fragment));
    }
    for name in &req.removed_shared {
        if cache.shared.contains_key(name) {
            p.shared_rows.push((name.clone(), None));
            shared_changed.insert(name.clone());
        }
        live_shared.remove(name.as_str());
    }

    // Nodes: a row only when the composition changed.
    let mut written: BTreeSet<&str> = BTreeSet::new();
    for (node, parts) in &req.nodes {
        let current = cache.nodes.get(node);
        let mut own = BTreeMap::new();
        for (name, fragment) in &parts.own {
            let key = chunk_part(
                cache,
                &mut p,
                &mut seen,
                Slot::Own(node.clone(), name.clone()),
                fragment,
                current.and_then(|c| c.own.get(name)),
            );
            own.insert(name.clone(), key);
        }
        for name in &parts.shared {
            if !live_shared.contains_key(name.as_str()) {
                return Err(StoreError::InvalidRequest(format!(
                    "node {node} uses shared part {name}, which does not exist"
                )));
            }
        }
        let composition = Composition {
            shared: parts.shared.clone(),
            own,
        };
        if current == Some(&composition) {
            continue;
        }
        // The whole state's digest, when every fragment is at hand.
        let mut whole: Vec<(String, Arc<Fragment>)> = parts
            .own
            .iter()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        let mut complete = true;
        for name in &parts.shared {
            match live_shared.get(name.as_str()) {
                Some(Some(f)) => whole.push((name.clone(), Arc::clone(f))),
                _ => complete = false,
            }
        }
        let state_digest = complete.then(|| NodeDataplane::from_parts(whole).digest().0.to_vec());
        p.node_rows.push(NewNodeRow {
            node: node.clone(),
            shared: Some(composition.encode_shared()),
            own: Some(composition.encode_own()),
            state_digest,
        });
        written.insert(node);
        p.compositions.push((node.clone(), Some(composition)));
    }
    for node in &req.removed_nodes {
        if cache.nodes.contains_key(node) {
            p.node_rows.push(NewNodeRow {
                node: node.clone(),
                shared: None,
                own: None,
                state_digest: None,
            });
            written.insert(node);
            p.compositions.push((node.clone(), None));
        }
    }

    // Every live node must still find its shared parts.
    if !req.removed_shared.is_empty() {
        let updated: HashMap<&str, Option<&Composition>> = p
            .compositions
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_ref()))
            .collect();
        let live = cache
            .nodes
            .iter()
            .filter(|(n, _)| !updated.contains_key(n.as_str()))
            .map(|(n, c)| (n.as_str(), c))
            .chain(updated.iter().filter_map(|(n, c)| c.map(|c| (*n, c))));
        for (node, c) in live {
            if let Some(name) = c.shared.iter().find(|s| req.removed_shared.contains(*s)) {
                return Err(StoreError::InvalidRequest(format!(
                    "shared part {name} is removed but node {node} still uses it"
                )));
            }
        }
    }

    let mut changed: HashSet<&str> = written.iter().copied().collect();
    if !shared_changed.is_empty() {
        let updated: HashSet<&str> = p.compositions.iter().map(|(n, _)| n.as_str()).collect();
        for (node, c) in &cache.nodes {
            if !updated.contains(node.as_str())
                && c.shared.iter().any(|s| shared_changed.contains(s))
            {
                changed.insert(node);
            }
        }
        for (node, c) in &p.compositions {
            if c.as_ref()
                .is_some_and(|c| c.shared.iter().any(|s| shared_changed.contains(s)))
            {
                changed.insert(node);
            }
        }
    }
    p.nodes_changed = changed
        .iter()
        .filter(|n| !cache.pinned.contains(**n))
        .count() as u64;
    let mut objects = req.cause.objects.clone();
    objects.sort();
    objects.dedup();
    p.objects = objects;
    Ok(p)
}

impl Prepared {
    pub(crate) fn shared_changed(&self) -> String {
        self.shared_rows
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The cache once this commit is durable at `revision`.
    pub(crate) fn apply(self, cache: &mut WriterCache, revision: i64) {
        cache.head = Some(revision);
        for (name, key) in self.shared_rows {
            match key {
                Some(key) => {
                    cache.shared.insert(name, key);
                }
                None => {
                    cache.shared.remove(&name);
                    cache.chunked.remove(&Slot::Shared(name));
                }
            }
        }
        for (node, composition) in self.compositions {
            match composition {
                Some(c) => {
                    cache.nodes.insert(node, c);
                }
                None => {
                    cache.nodes.remove(&node);
                    cache
                        .chunked
                        .retain(|slot, _| !matches!(slot, Slot::Own(n, _) if *n == node));
                }
            }
        }
        for (slot, cf) in self.chunked {
            cache.chunked.insert(slot, cf);
        }
    }
}
