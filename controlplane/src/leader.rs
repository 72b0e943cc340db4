//! The computing side of the control plane: cluster objects in, one
//! revision out per batch of changes.
//!
//! ```text
//!  manifests (polled) ─▶ changed objects ─▶ Index ─▶ changed nodes' states ─▶ Store::commit ─▶ head (watch)
//! ```
//!
//! Only the leader runs this; the epoch it acquired fences its commits, so
//! a deposed leader's late commit is refused by the store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use setpoint_compute::{ClusterObject, ComputeConfig, Index, ObjectKey};
use setpoint_store::{Cause, CommitRequest, Epoch, RevisionId, Store};
use tokio::sync::watch;

use crate::fanout::{Fanout, Publisher};

/// What one computation committed.
#[derive(Clone, Debug)]
pub struct Committed {
    pub revision: RevisionId,
    pub nodes_changed: usize,
    pub objects_changed: usize,
    pub compute: Duration,
    pub commit: Duration,
    /// When the oldest change in this batch was seen (programming latency
    /// is measured from here to the agents' acks).
    pub seen_at: SystemTime,
}

pub struct Leader {
    store: Store,
    epoch: Epoch,
    index: Index,
    objects: BTreeMap<ObjectKey, ClusterObject>,
    nodes: BTreeSet<String>,
    /// A commit failed: the index is ahead of the store, so the next sync
    /// commits every node even if no object changed since.
    dirty: bool,
    head: watch::Sender<u64>,
    /// Publishes committed states to this process's sessions.
    publisher: Option<Publisher>,
}

impl Leader {
    /// Becomes the writer: a new epoch fences every earlier one.
    pub async fn start(
        store: Store,
        config: ComputeConfig,
        head: watch::Sender<u64>,
    ) -> anyhow::Result<Leader> {
        let epoch = store.acquire_epoch().await.context("acquiring an epoch")?;
        let now = store.head().await?.map(|r| r.0).unwrap_or(0);
        raise(&head, now);
        Ok(Leader {
            store,
            epoch,
            index: Index::new(config),
            objects: BTreeMap::new(),
            nodes: BTreeSet::new(),
            dirty: false,
            head,
            publisher: None,
        })
    }

    /// From now on, every revision this leader writes is published to
    /// `fanout` (sessions in this process then serve it from memory).
    pub async fn publish_to(&mut self, fanout: Arc<Fanout>) {
        fanout.lead();
        let mut publisher = Publisher::new(fanout);
        publisher.load_pins(&self.store).await;
        self.publisher = Some(publisher);
    }

    /// After an admin write committed `revision`: pins changed, so the
    /// published states are re-derived.
    pub async fn admin_wrote(&mut self, revision: RevisionId) {
        let Some(publisher) = self.publisher.as_mut() else {
            return;
        };
        publisher.load_pins(&self.store).await;
        let index = &self.index;
        publisher.publish(revision.0, &self.nodes, Some(&BTreeSet::new()), |n| {
            index.node_state(n)
        });
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest committed revision, as it changes.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Makes the cluster view equal `objects`; commits a revision when any
    /// node's state changed (none when nothing did).
    pub async fn sync(
        &mut self,
        objects: Vec<ClusterObject>,
        seen_at: SystemTime,
    ) -> anyhow::Result<Option<Committed>> {
        let started = Instant::now();
        // Objects are large structs and tens of thousands: compared in
        // place and moved only when they changed (sorting them into a map
        // first was most of a sync's time).
        let mut changed: Vec<String> = Vec::new();
        let mut present: HashSet<ObjectKey> = HashSet::with_capacity(objects.len());
        for object in objects {
            let key = object.key();
            if self.objects.get(&key) != Some(&object) {
                self.index.upsert(object.clone());
                changed.push(key.to_string());
                self.objects.insert(key.clone(), object);
            }
            present.insert(key);
        }
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.index.delete(&key);
            self.objects.remove(&key);
            changed.push(key.to_string());
        }
        if changed.is_empty() && !self.dirty {
            return Ok(None);
        }
        let outcome = self.index.commit();
        let live: BTreeSet<String> = self.index.node_names().map(|n| n.to_string()).collect();
        let removed: BTreeSet<String> = self.nodes.difference(&live).cloned().collect();
        // A restarted leader has no memory of what the store holds: its
        // first commit carries every node.
        let first = self.nodes.is_empty() || self.dirty;
        let summary = summarize(&changed);
        let mut request = CommitRequest::new(
            self.epoch,
            Cause {
                objects: changed.iter().take(100).cloned().collect(),
                summary,
            },
        );
        let mut nodes_changed = 0;
        for node in &live {
            if (first || outcome.changed_nodes.contains(node.as_str()))
                && let Some(state) = self.index.node_state(node)
            {
                request.add_node_state(node.clone(), &state);
                nodes_changed += 1;
            }
        }
        if nodes_changed == 0 && removed.is_empty() {
            self.nodes = live;
            return Ok(None);
        }
        request.removed_nodes = removed;
        let compute = started.elapsed();
        let committing = Instant::now();
        self.dirty = true;
        let revision = self.store.commit(request).await.context("committing")?;
        self.dirty = false;
        if let Some(publisher) = self.publisher.as_mut() {
            let changed: BTreeSet<String> = outcome
                .changed_nodes
                .iter()
                .map(|n| n.to_string())
                .collect();
            let index = &self.index;
            publisher.publish(revision.0, &live, (!first).then_some(&changed), |n| {
                index.node_state(n)
            });
        }
        self.nodes = live;
        self.head.send_replace(revision.0);
        Ok(Some(Committed {
            revision,
            nodes_changed,
            objects_changed: changed.len(),
            compute,
            commit: committing.elapsed(),
            seen_at,
        }))
    }
}

/// Moves the shared head forward to `revision`; never back (the leader,
/// the store's notifications and admin writes all report heads, in any
/// order).
pub(crate) fn raise(head: &watch::Sender<u64>, revision: u64) {
    head.send_if_modified(|h| {
        let newer = revision > *h;
        if newer {
            *h = revision;
        }
        newer
    });
}

fn summarize(changed: &[String]) -> String {
    match changed {
        [] => "nothing".to_string(),
        [one] => format!("{one} changed"),
        [first, rest @ ..] => format!("{first} and {} more changed", rest.len()),
    }
}
