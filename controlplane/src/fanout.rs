//! Serving thousands of agents from memory.
//!
//! The leader publishes each revision's node states here as it commits
//! them (persistent maps: a revision shares all unchanged states with the
//! previous one, and every state shares its fragments with the other
//! nodes'); sessions read them instead of the store, and fall back to the
//! store for anything not published (a follower, an old revision; a
//! pinned node's held state is loaded with the pins, in bulk). Encodings are memoized: a part's
//! snapshot encoding by (name, digest, encoding: JSON or deflated), a
//! part's delta by (name, digest before, digest after), so the `services`
//! part of one revision is encoded (and compressed) once for all nodes, not
//! once per node. Each memo lives while its fragment does.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use setpoint_dataplane::{Digest, Fragment, NodeDataplane};
use setpoint_proto::parts::{
    PartsEncoding, delta_of_parts, encode_part_as, encode_part_diff, snapshot_of_parts_as,
};
use setpoint_proto::{PayloadError, v1};
use setpoint_store::Store;
use tokio::sync::{Semaphore, watch};

/// Revisions kept in memory (older ones are read from the store).
const RECENT: usize = 64;
/// How long a session waits for the leader to publish a revision the
/// store already announced (commit notifications can overtake it). Longer
/// than a 5,000-node publication under load: a session that gives up reads
/// and decodes the state from the store, and thousands doing so at once
/// each hold their own copy.
const PUBLICATION_WAIT: Duration = Duration::from_secs(5);
/// Revisions read whole from the store for sessions, besides the
/// published ones (agents reconnecting after a failover holding a revision
/// this replica never published).
const LOADED: usize = 4;
/// Snapshots being sent at once (a snapshot holds its whole encoding
/// until the agent acks it; this bounds that memory).
pub const SNAPSHOTS_IN_FLIGHT: usize = 32;

/// Node name → state, for one revision: persistent (a revision shares
/// the unchanged nodes' entries with the one before), hashed (every send
/// looks its node up here; an ordered map costs a dozen string
/// comparisons per lookup at 5,000 nodes).
pub type States = imbl::HashMap<String, NodeDataplane>;

pub struct Fanout {
    recent: Mutex<VecDeque<(u64, States)>>,
    /// Revisions not published here, each read once for every session
    /// that asks (thousands of hellos at once after a failover: one read
    /// per distinct revision, shared, instead of one per node).
    loaded: Mutex<VecDeque<(u64, Loaded)>>,
    /// While this process leads, the newest revision it published (0
    /// before its first); `None` when it does not lead (then sessions read
    /// the store at once).
    published_up_to: watch::Sender<Option<u64>>,
    parts: Memo<(String, Digest, PartsEncoding)>,
    diffs: Memo<(String, Option<Digest>, Option<Digest>)>,
    /// Permits to send a snapshot; see [`SNAPSHOTS_IN_FLIGHT`].
    pub snapshots: Arc<Semaphore>,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            recent: Mutex::default(),
            loaded: Mutex::default(),
            published_up_to: watch::Sender::new(None),
            parts: Memo::default(),
            diffs: Memo::default(),
            snapshots: Arc::new(Semaphore::new(SNAPSHOTS_IN_FLIGHT)),
        }
    }
}

type Encoded = Arc<OnceLock<Result<Arc<[u8]>, EncodeError>>>;
/// A revision's node states read from the store once for every session
/// waiting on it; `None`: the read failed (each session then reads its
/// own node).
type Loaded = Arc<tokio::sync::OnceCell<Option<States>>>;

/// A part that could not be encoded for the wire. Shared by every session
/// that wanted the same encoding (the memo keeps the first outcome).
#[derive(Clone, Debug, thiserror::Error)]
#[error(transparent)]
pub struct EncodeError(Arc<PayloadError>);

struct MemoEntry {
    alive: Weak<Fragment>,
    encoded: Encoded,
}

/// Encodings by key, each kept while a fragment it belongs to is alive.
struct Memo<K> {
    map: Mutex<(HashMap<K, MemoEntry>, usize)>,
}

impl<K> Default for Memo<K> {
    fn default() -> Self {
        Memo {
            map: Mutex::new((HashMap::new(), 64)),
        }
    }
}

impl<K: Eq + Hash> Memo<K> {
    fn get(
        &self,
        key: K,
        alive: &Arc<Fragment>,
        make: impl FnOnce() -> Result<Vec<u8>, PayloadError>,
    ) -> Result<Arc<[u8]>, EncodeError> {
        let cell = match self.map.lock() {
            Ok(mut guard) => {
                let (map, sweep_at) = &mut *guard;
                if map.len() >= *sweep_at {
                    map.retain(|_, e| e.alive.strong_count() > 0);
                    *sweep_at = (2 * map.len()).max(64);
                }
                let entry = map.entry(key).or_insert_with(|| MemoEntry {
                    alive: Arc::downgrade(alive),
                    encoded: Encoded::default(),
                });
                if entry.alive.strong_count() == 0 {
                    entry.alive = Arc::downgrade(alive);
                }
                entry.encoded.clone()
            }
            Err(_) => Encoded::default(),
        };
        // Concurrent sessions wanting the same encoding wait for one.
        cell.get_or_init(|| make().map(Arc::from).map_err(|e| EncodeError(Arc::new(e))))
            .clone()
    }
}

impl Fanout {
    /// Makes `states` the node states of `revision`.
    pub fn publish(&self, revision: u64, states: States) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|(r, _)| *r != revision);
            recent.push_back((revision, states));
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
        self.published_up_to.send_if_modified(|newest| {
            let raised = newest.is_none_or(|n| revision > n);
            *newest = Some(newest.unwrap_or(0).max(revision));
            raised
        });
    }

    /// This process leads from now on: sessions wait for its publications
    /// (from its very first commit on, which is when thousands of agents
    /// want the same new revision at once).
    pub fn lead(&self) {
        self.published_up_to
            .send_if_modified(|newest| newest.replace(newest.unwrap_or(0)).is_none());
    }

    /// This process no longer leads: nothing new will be published, so
    /// sessions stop waiting for it.
    pub fn retire(&self) {
        self.published_up_to.send_replace(None);
    }

    /// Waits (bounded) until the leader in this process published
    /// `revision`, when it leads and has not yet: the store's commit
    /// notification can wake sessions before the leader's `publish`, and
    /// reading the store then decodes what memory is about to hold.
    async fn until_published(&self, revision: u64) {
        let mut newest = self.published_up_to.subscribe();
        let waiting = newest.wait_for(|n| n.is_none_or(|n| n >= revision));
        let _ = tokio::time::timeout(PUBLICATION_WAIT, waiting).await;
    }

    /// The published state of `node` at `revision`, if any.
    pub fn published(&self, revision: u64, node: &str) -> Option<NodeDataplane> {
        let recent = self.recent.lock().ok()?;
        let (_, states) = recent.iter().rev().find(|(r, _)| *r == revision)?;
        states.get(node).cloned()
    }

    /// `node`'s state at `revision`: published, else from the store.
    pub async fn state(
        &self,
        store: &Store,
        node: &str,
        revision: u64,
    ) -> Result<Option<NodeDataplane>, setpoint_store::StoreError> {
        if let Some(state) = self.published(revision, node) {
            return Ok(Some(state));
        }
        self.until_published(revision).await;
        if let Some(state) = self.published(revision, node) {
            return Ok(Some(state));
        }
        if let Some(states) = self.load(store, revision).await {
            return Ok(states.get(node).cloned());
        }
        store
            .node_state(node, setpoint_store::RevisionId(revision))
            .await
    }

    /// Every node's state at `revision`, read from the store in a few
    /// queries by the first session that asks and shared with every other
    /// (they wait for that read); the [`LOADED`] revisions asked last are
    /// kept. `None` when the read failed.
    async fn load(&self, store: &Store, revision: u64) -> Option<States> {
        let cell = {
            let mut loaded = self.loaded.lock().ok()?;
            match loaded.iter().find(|(r, _)| *r == revision) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Loaded::default();
                    loaded.push_back((revision, cell.clone()));
                    while loaded.len() > LOADED {
                        loaded.pop_front();
                    }
                    cell
                }
            }
        };
        let states = cell
            .get_or_init(|| async {
                match store
                    .node_states(setpoint_store::RevisionId(revision), None)
                    .await
                {
                    Ok(states) => Some(states.into_iter().collect::<States>()),
                    Err(e) => {
                        tracing::warn!(
                            "cannot read revision {revision} for reconnecting agents: {e}"
                        );
                        None
                    }
                }
            })
            .await
            .clone();
        if states.is_none()
            && let Ok(mut loaded) = self.loaded.lock()
        {
            // Tried again by the next session that asks.
            loaded.retain(|(r, c)| *r != revision || !Arc::ptr_eq(c, &cell));
        }
        states
    }

    /// `state` as a JSON snapshot of `revision`, from memoized part
    /// encodings: what every agent decodes.
    pub fn snapshot(
        &self,
        revision: u64,
        state: &NodeDataplane,
    ) -> Result<v1::Snapshot, EncodeError> {
        self.snapshot_as(revision, state, PartsEncoding::Json)
    }

    /// `state` as a snapshot of `revision` in `encoding` (what the agent's
    /// hello accepts: [`PartsEncoding::accepted_by`]), from memoized part
    /// encodings.
    pub fn snapshot_as(
        &self,
        revision: u64,
        state: &NodeDataplane,
        encoding: PartsEncoding,
    ) -> Result<v1::Snapshot, EncodeError> {
        let parts = state
            .parts()
            .map(|(name, f)| {
                self.parts.get((name.clone(), f.digest(), encoding), f, || {
                    encode_part_as(name, f, encoding)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(snapshot_of_parts_as(
            revision,
            &state.digest(),
            &parts,
            encoding,
        ))
    }

    /// The delta from `old` at `from` to `new` at `to`, from memoized
    /// per-part diffs.
    pub fn delta(
        &self,
        from: u64,
        old: &NodeDataplane,
        to: u64,
        new: &NodeDataplane,
    ) -> Result<v1::Delta, EncodeError> {
        let mut parts = Vec::new();
        // Both states' parts in name order, walked side by side (no set
        // of names built per session).
        let (mut olds, mut news) = (old.parts().peekable(), new.parts().peekable());
        loop {
            let (name, a, b) = match (olds.peek(), news.peek()) {
                (None, None) => break,
                (Some((n, _)), Some((m, _))) if n == m => {
                    let (Some((name, a)), Some((_, b))) = (olds.next(), news.next()) else {
                        break;
                    };
                    // Shared by both states (or equal): unchanged.
                    if Arc::ptr_eq(a, b) {
                        continue;
                    }
                    (name, Some(a), Some(b))
                }
                (Some((n, _)), Some((m, _))) if n > m => match news.next() {
                    Some((name, b)) => (name, None, Some(b)),
                    None => break,
                },
                (Some(_), _) => match olds.next() {
                    Some((name, a)) => (name, Some(a), None),
                    None => break,
                },
                (None, Some(_)) => match news.next() {
                    Some((name, b)) => (name, None, Some(b)),
                    None => break,
                },
            };
            let (da, db) = (a.map(|f| f.digest()), b.map(|f| f.digest()));
            if da == db {
                continue;
            }
            let Some(alive) = b.or(a) else { continue };
            let encoded = self.diffs.get((name.clone(), da, db), alive, || {
                let empty = Fragment::new();
                let diff = setpoint_dataplane::diff::diff_fragments(
                    a.map(|f| &**f).unwrap_or(&empty),
                    b.map(|f| &**f).unwrap_or(&empty),
                );
                encode_part_diff(name, da, db, &diff)
            })?;
            parts.push(encoded);
        }
        Ok(delta_of_parts(from, to, &new.digest(), &parts))
    }
}

/// What the leader published last, kept to build the next revision's
/// states from it (only changed nodes are replaced).
pub struct Publisher {
    fanout: Arc<Fanout>,
    states: States,
    /// Nodes pinned by a rollback or pause: the state each is held at.
    pinned: BTreeMap<String, NodeDataplane>,
    /// Nodes unpinned since the last publication: they take their
    /// computed states again.
    unpinned: BTreeSet<String>,
    ready: bool,
}

impl Publisher {
    pub fn new(fanout: Arc<Fanout>) -> Publisher {
        Publisher {
            fanout,
            states: States::new(),
            pinned: BTreeMap::new(),
            unpinned: BTreeSet::new(),
            ready: false,
        }
    }

    /// Re-reads which nodes are pinned and the states they are held at
    /// (at start and after admin writes), in a few queries however many
    /// nodes a rollback pinned.
    pub async fn load_pins(&mut self, store: &Store) {
        match store.pinned_states().await {
            Ok(pins) => {
                let now: BTreeMap<String, NodeDataplane> = pins
                    .into_iter()
                    .map(|(node, (_, state))| (node, state))
                    .collect();
                self.unpinned.extend(
                    self.pinned
                        .keys()
                        .filter(|n| !now.contains_key(*n))
                        .cloned(),
                );
                self.pinned = now;
            }
            Err(e) => {
                // Publish nothing until the pins are known: sessions read
                // the store, which knows them.
                tracing::warn!("cannot read pins; serving from the store: {e}");
                self.ready = false;
                self.pinned.clear();
                self.states = States::new();
            }
        }
    }

    /// Publishes `revision`: `changed` nodes (every live node when this
    /// publisher has not published yet) take `computed` states, `live`
    /// bounds the node set; pinned nodes keep the state they are held at.
    pub fn publish(
        &mut self,
        revision: u64,
        live: &BTreeSet<String>,
        changed: Option<&BTreeSet<&str>>,
        computed: impl Fn(&str) -> Option<NodeDataplane>,
    ) {
        let everything = !self.ready || changed.is_none();
        if everything {
            self.states = States::new();
        }
        let gone: Vec<String> = self
            .states
            .keys()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect();
        for node in gone {
            self.states.remove(&node);
        }
        let touched: Box<dyn Iterator<Item = &str>> = match changed {
            Some(c) if !everything => Box::new(
                c.iter()
                    .copied()
                    .chain(self.pinned.keys().map(String::as_str))
                    .chain(self.unpinned.iter().map(String::as_str)),
            ),
            _ => Box::new(live.iter().map(String::as_str)),
        };
        let touched: BTreeSet<&str> = touched.filter(|n| live.contains(*n)).collect();
        for node in touched {
            let state = match self.pinned.get(node) {
                Some(held) => Some(held.clone()),
                None => computed(node),
            };
            match state {
                Some(s) => {
                    self.states.insert(node.to_string(), s);
                }
                None => {
                    self.states.remove(node);
                }
            }
        }
        self.unpinned.clear();
        self.ready = true;
        self.fanout.publish(revision, self.states.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_proto::parts::{FragmentCache, apply_delta, snapshot_state_cached};

    fn fragment(ips: &[&str]) -> Arc<Fragment> {
        Arc::new(setpoint_proto::example_fragment("SP-SVC", ips))
    }

    #[test]
    fn shared_parts_are_encoded_once_and_decode_to_each_nodes_state() {
        let fanout = Fanout::default();
        let (s1, s2) = (fragment(&["10.0.0.1"]), fragment(&["10.0.0.1", "10.0.0.2"]));
        let node = |services: &Arc<Fragment>, own: &str| {
            NodeDataplane::from_parts([
                ("services".to_string(), services.clone()),
                (format!("node/{own}"), {
                    let mut f = Fragment::new();
                    f.add_address(own.parse().expect("ip"));
                    Arc::new(f)
                }),
            ])
        };
        let (a1, b1) = (node(&s1, "10.1.0.1"), node(&s1, "10.1.0.2"));
        let (a2, b2) = (node(&s2, "10.1.0.1"), node(&s2, "10.1.0.2"));
        let cache = FragmentCache::default();
        let sa = fanout.snapshot(1, &a1).expect("snapshot");
        let sb = fanout.snapshot(1, &b1).expect("snapshot");
        let got_a = snapshot_state_cached(&sa, &cache).expect("decodes");
        assert_eq!(got_a, a1);
        assert_eq!(snapshot_state_cached(&sb, &cache).expect("decodes"), b1);
        let da = fanout.delta(1, &a1, 2, &a2).expect("delta");
        let db = fanout.delta(1, &b1, 2, &b2).expect("delta");
        assert_eq!(da.changes, db.changes, "only the shared part changed");
        let memo = fanout.diffs.map.lock().expect("lock").0.len();
        assert_eq!(memo, 1, "one diff encoded for both nodes");
        assert_eq!(apply_delta(&got_a, &da, &cache).expect("applies"), a2);

        // Deflated for agents that accept it: the shared part compressed
        // once, beside its JSON encoding, and decoding to the same states.
        let ca = fanout
            .snapshot_as(1, &a1, PartsEncoding::Deflate)
            .expect("snapshot");
        let cb = fanout
            .snapshot_as(1, &b1, PartsEncoding::Deflate)
            .expect("snapshot");
        assert_eq!(ca.encoding, PartsEncoding::Deflate.name());
        let fresh = FragmentCache::default();
        assert_eq!(snapshot_state_cached(&ca, &fresh).expect("decodes"), a1);
        assert_eq!(snapshot_state_cached(&cb, &fresh).expect("decodes"), b1);
        let memo = fanout.parts.map.lock().expect("lock").0.len();
        assert_eq!(memo, 6, "services and two node parts, in each encoding");
    }

    #[test]
    fn pinned_nodes_keep_the_state_they_are_held_at() {
        let fanout = Arc::new(Fanout::default());
        let mut publisher = Publisher::new(fanout.clone());
        let live: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let state = |ips: &[&str]| NodeDataplane::from_parts([("services", fragment(ips))]);
        let v1 = state(&["10.0.0.1"]);
        let v2 = state(&["10.0.0.2"]);
        publisher.publish(1, &live, None, |_| Some(v1.clone()));
        publisher.pinned.insert("a".into(), v1.clone());
        let changed: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        publisher.publish(2, &live, Some(&changed), |_| Some(v2.clone()));
        assert_eq!(fanout.published(2, "a"), Some(v1.clone()));
        assert_eq!(fanout.published(2, "b"), Some(v2.clone()));
        // Unpinned: back to its computed state at the next publication.
        publisher.pinned.clear();
        publisher.unpinned.insert("a".into());
        publisher.publish(3, &live, Some(&BTreeSet::new()), |_| Some(v2.clone()));
        assert_eq!(fanout.published(3, "a"), Some(v2.clone()));
        assert_eq!(fanout.published(3, "b"), Some(v2));
    }

    /// Sessions asking for a revision this replica never published (agents
    /// reconnecting after a failover) share one read of all its nodes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unpublished_revision_is_read_once_for_every_session() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = Store::open(&url).await.expect("store");
        let epoch = store.acquire_epoch().await.expect("epoch");
        let nodes: Vec<String> = (0..20).map(|i| format!("node-{i}")).collect();
        let state = |ip: &str| NodeDataplane::from_parts([("services", fragment(&[ip]))]);
        let mut request = setpoint_store::CommitRequest::new(
            epoch,
            setpoint_store::Cause {
                objects: Vec::new(),
                summary: "test".into(),
            },
        );
        for node in &nodes {
            request.add_node_state(node.clone(), &state("10.0.0.1"));
        }
        let revision = store.commit(request).await.expect("commit").0;
        let fanout = Arc::new(Fanout::default());
        let mut asked = nodes.clone();
        asked.push("node-gone".to_string());
        let asks: Vec<_> = asked
            .into_iter()
            .map(|node| {
                let (fanout, store) = (fanout.clone(), store.clone());
                tokio::spawn(async move { fanout.state(&store, &node, revision).await })
            })
            .collect();
        for (i, ask) in asks.into_iter().enumerate() {
            let got = ask.await.expect("task").expect("read");
            if i < nodes.len() {
                assert_eq!(got, Some(state("10.0.0.1")), "{}", nodes[i]);
            } else {
                assert_eq!(got, None, "not a node at that revision");
            }
        }
        let loaded = fanout.loaded.lock().expect("lock");
        assert_eq!(loaded.len(), 1, "one read of the revision, shared");
        assert_eq!(
            loaded[0].1.get().and_then(|s| s.as_ref()).map(|s| s.len()),
            Some(nodes.len())
        );
    }

    #[tokio::test]
    async fn a_session_waits_for_the_leader_to_publish_what_the_store_announced() {
        let fanout = Arc::new(Fanout::default());
        let state = NodeDataplane::from_parts([("services", fragment(&["10.0.0.1"]))]);
        // Not leading: no wait.
        let started = std::time::Instant::now();
        fanout.until_published(5).await;
        assert!(started.elapsed() < PUBLICATION_WAIT / 2);
        // Leading but nothing published yet: the first revision is waited
        // for, and so is each later one.
        fanout.lead();
        for revision in [1, 2] {
            let publisher = {
                let (fanout, state) = (fanout.clone(), state.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    fanout.publish(revision, States::unit("a".to_string(), state));
                })
            };
            fanout.until_published(revision).await;
            assert_eq!(fanout.published(revision, "a"), Some(state.clone()));
            publisher.await.expect("publisher");
        }
        // Retired: nothing more will come, so no wait.
        fanout.retire();
        let started = std::time::Instant::now();
        fanout.until_published(3).await;
        assert!(started.elapsed() < PUBLICATION_WAIT / 2);
    }
}
