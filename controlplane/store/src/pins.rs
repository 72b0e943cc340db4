//! Rollback primitives: [`Store::rollback`], [`Store::resume`],
//! [`Store::pins`].
//!
//! A rollback never rewrites history. It writes a new revision and, per
//! node, a `node_pins` row naming the fragment key of every part the node
//! had at the target revision — shared parts resolved as of the target, so
//! a pinned node never picks up a later version of `services` — and the
//! digest of that state. Reads of a node's current state look at its pin
//! first; commits keep writing the computed track (`nodes`,
//! `shared_parts`) untouched, readable with [`Store::computed_state`]. A
//! resume writes a pin row without parts: from then on the node follows
//! its computed track again, whose newest version is current at once.

use std::collections::{BTreeMap, BTreeSet};

use setpoint_dataplane::NodeDataplane;

use crate::db::{self, PinRow, RevisionRow};
use crate::error::{Result, StoreError};
use crate::store::{Store, now_ms, pin_plan};
use crate::types::{Epoch, Pin, RevisionId, RollbackRequest};
use crate::write::Composition;

impl Store {
    /// Commits a revision in which the chosen nodes' states equal their
    /// states at `req.to`, and pins them there: later commits record their
    /// computed states ([`Store::computed_state`]) but
    /// [`Store::node_state`] keeps returning the pinned one until
    /// [`Store::resume`]. Every chosen node's target state is read back and
    /// verified first, so a rollback never pins an unreadable state.
    ///
    /// Refused with [`StoreError::StaleEpoch`] like a commit,
    /// [`StoreError::UnknownRevision`] when `to` does not exist (or was
    /// collected), and [`StoreError::InvalidRequest`] when a named node did
    /// not exist at `to` or no node is chosen.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<RevisionId> {
        let epoch = db::to_i64(req.epoch.0, "epoch")?;
        let mut cache = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        // From here to COMMIT no other commit, rollback or GC batch runs:
        // the reads below see the store as this revision will follow it.
        let revision = self.fence(&mut tx, epoch).await?;
        let to = self.revision_row(req.to).await?;
        let head = revision - 1;
        let chosen: BTreeSet<String> = match &req.nodes {
            Some(nodes) => nodes.clone(),
            None => {
                let then = self.node_names_at(to.revision).await?;
                let now = self.node_names_at(head).await?;
                then.intersection(&now).cloned().collect()
            }
        };
        if chosen.is_empty() {
            return Err(StoreError::InvalidRequest(format!(
                "rollback to {}: no node to roll back",
                req.to
            )));
        }
        // Every chosen node's plan and fragments in a few queries, not a
        // few per node: a fleet-wide rollback is thousands of nodes.
        let plans = self.node_plans(req.to, Some(&chosen)).await?;
        if let Some(node) = chosen.iter().find(|n| !plans.contains_key(*n)) {
            return Err(StoreError::InvalidRequest(format!(
                "node {node} did not exist at revision {}",
                req.to
            )));
        }
        let states = self.assemble_all(req.to, &plans).await?;
        let mut rows = Vec::with_capacity(chosen.len());
        for (node, plan) in plans {
            let Some(state) = states.get(&node) else {
                continue;
            };
            let parts = Composition {
                shared: BTreeSet::new(),
                own: plan.parts.iter().cloned().collect::<BTreeMap<_, _>>(),
            };
            rows.push(PinRow {
                node,
                revision,
                held_at: Some(to.revision),
                parts: Some(parts.encode_own()),
                state_digest: Some(state.digest().0.to_vec()),
                reason: req.reason.clone(),
            });
        }
        let summary = req.reason.clone();
        let target = Some(to.revision);
        self.write_pins(&mut tx, revision, epoch, summary, "rollback", target, &rows)
            .await?;
        tx.commit().await?;
        // Commits only need to know which nodes are pinned; the computed
        // track is untouched. A cache behind the store is reloaded anyway.
        if cache.head == Some(head) {
            cache.head = Some(revision);
            cache.pinned.extend(rows.into_iter().map(|r| r.node));
        } else {
            cache.head = None;
        }
        Ok(RevisionId(db::to_u64(revision, "leader", "head")?))
    }

    /// Unpins `nodes` (all pinned nodes when `None`) in a new revision:
    /// their newest computed states become current. Refused when a named
    /// node is not pinned or nothing is pinned, and, like a commit, from a
    /// stale epoch.
    pub async fn resume(
        &self,
        epoch: Epoch,
        nodes: Option<BTreeSet<String>>,
    ) -> Result<RevisionId> {
        let epoch = db::to_i64(epoch.0, "epoch")?;
        let mut cache = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        let revision = self.fence(&mut tx, epoch).await?;
        let head = revision - 1;
        let pinned: BTreeSet<String> = self
            .db
            .pins_at(head)
            .await?
            .into_iter()
            .filter(|p| p.parts.is_some())
            .map(|p| p.node)
            .collect();
        let chosen = match nodes {
            Some(nodes) => {
                if let Some(n) = nodes.iter().find(|n| !pinned.contains(*n)) {
                    return Err(StoreError::InvalidRequest(format!(
                        "node {n} is not pinned"
                    )));
                }
                nodes
            }
            None => pinned,
        };
        if chosen.is_empty() {
            return Err(StoreError::InvalidRequest(
                "no pinned node to resume".into(),
            ));
        }
        let rows: Vec<PinRow> = chosen
            .iter()
            .map(|node| PinRow {
                node: node.clone(),
                revision,
                held_at: None,
                parts: None,
                state_digest: None,
                reason: String::new(),
            })
            .collect();
        let mut summary = format!("resume {} node(s):", rows.len());
        for node in chosen.iter().take(10) {
            summary.push(' ');
            summary.push_str(node);
        }
        if chosen.len() > 10 {
            summary.push_str(" …");
        }
        self.write_pins(&mut tx, revision, epoch, summary, "resume", None, &rows)
            .await?;
        tx.commit().await?;
        if cache.head == Some(head) {
            cache.head = Some(revision);
            for node in &chosen {
                cache.pinned.remove(node);
            }
        } else {
            cache.head = None;
        }
        Ok(RevisionId(db::to_u64(revision, "leader", "head")?))
    }

    /// The nodes pinned at the head: where each is held and why.
    pub async fn pins(&self) -> Result<Vec<Pin>> {
        let (_, head) = self.db.leader().await?;
        let mut out = Vec::new();
        for row in self.db.pins_at(head).await? {
            let (Some(_), Some(held_at)) = (&row.parts, row.held_at) else {
                continue;
            };
            out.push(Pin {
                node: row.node,
                held_at: RevisionId(db::to_u64(held_at, "node_pins", "held_at")?),
                since: RevisionId(db::to_u64(row.revision, "node_pins", "revision")?),
                reason: row.reason,
            });
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// The nodes pinned at the head and the states they are held at, read
    /// in a few queries however many there are.
    pub async fn pinned_states(&self) -> Result<BTreeMap<String, (RevisionId, NodeDataplane)>> {
        let (_, head) = self.db.leader().await?;
        let mut plans = BTreeMap::new();
        let mut held = BTreeMap::new();
        for row in self.db.pins_at(head).await? {
            let (Some(parts), Some(held_at)) = (&row.parts, row.held_at) else {
                continue;
            };
            plans.insert(
                row.node.clone(),
                pin_plan(parts, row.state_digest.as_deref())?,
            );
            held.insert(
                row.node,
                RevisionId(db::to_u64(held_at, "node_pins", "held_at")?),
            );
        }
        if plans.is_empty() {
            return Ok(BTreeMap::new());
        }
        let at = RevisionId(db::to_u64(head, "leader", "head")?);
        let mut states = self.assemble_all(at, &plans).await?;
        Ok(held
            .into_iter()
            .filter_map(|(node, held_at)| states.remove(&node).map(|s| (node, (held_at, s))))
            .collect())
    }

    /// Nodes that have a state at `revision` (computed or pinned).
    pub async fn node_names(&self, revision: RevisionId) -> Result<BTreeSet<String>> {
        self.node_names_at(db::to_i64(revision.0, "revision")?)
            .await
    }

    /// Nodes whose current state exists at `revision` (computed or pinned).
    async fn node_names_at(&self, revision: i64) -> Result<BTreeSet<String>> {
        let mut names: BTreeSet<String> = self
            .db
            .node_rows_at(revision)
            .await?
            .into_iter()
            .filter(|(_, row)| row.shared.is_some())
            .map(|(node, _)| node)
            .collect();
        for pin in self.db.pins_at(revision).await? {
            if pin.parts.is_some() {
                names.insert(pin.node);
            }
        }
        Ok(names)
    }

    /// The fencing step of a rollback or resume: the new revision number.
    async fn fence(&self, tx: &mut db::Tx, epoch: i64) -> Result<i64> {
        match tx.fence(epoch).await? {
            Some(revision) => Ok(revision),
            None => {
                let (current, _) = self.db.leader().await?;
                Err(StoreError::StaleEpoch {
                    ours: Epoch(db::to_u64(epoch, "leader", "epoch")?),
                    current: Epoch(db::to_u64(current, "leader", "epoch")?),
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_pins(
        &self,
        tx: &mut db::Tx,
        revision: i64,
        epoch: i64,
        summary: String,
        action: &str,
        target: Option<i64>,
        rows: &[PinRow],
    ) -> Result<()> {
        tx.insert_revision(&RevisionRow {
            revision,
            committed_ms: now_ms(),
            epoch,
            summary,
            nodes_changed: db::to_i64(rows.len() as u64, "node count")?,
            shared_changed: String::new(),
            action: action.to_string(),
            target,
        })
        .await?;
        tx.insert_pins(revision, rows).await
    }
}
