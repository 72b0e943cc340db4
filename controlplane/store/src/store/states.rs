//! A node's state at a revision: its plan (pin, or composition with each
//! shared part as of the revision), its fragments, the state built and
//! checked against the digest recorded at commit; and diffs between two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use setpoint_dataplane::{Diff, Digest, Fragment, NodeDataplane};

use crate::db::{self, RevisionRow};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::RevisionId;
use crate::write::Composition;

/// What a node's state at a revision is made of.
pub(crate) struct NodePlan {
    /// Part name → fragment key.
    pub parts: Vec<(String, Digest)>,
    /// The state digest recorded at `row_revision`, valid at the revision
    /// read when no shared part changed after the row.
    pub recorded: Option<Digest>,
}

impl Store {
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
}

/// The parts a `nodes` row lists; `None` for a row that records the node's
/// removal.
pub(super) fn composition(row: &db::NodeRow) -> Result<Option<Composition>> {
    row.shared
        .as_deref()
        .map(|shared| Composition::decode(shared, row.own.as_deref().unwrap_or_default()))
        .transpose()
}

/// The plan of a pinned node: its parts as the pin row names them.
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
