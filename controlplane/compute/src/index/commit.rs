//! `commit`: every pending change applied in named steps, then the guard,
//! in rounds until no Service is left out for an invalid state.
//!
//! ```text
//!  readmit left-out ─▶ round: node changes ─▶ service CIDRs ─▶ listed addresses ─▶ claims
//!                            ─▶ replan dirty Services ─▶ edit fragments
//!                            ─▶ record plans ─▶ rebuild dirty nodes ─▶ policy
//!                       guard: validate; leave out culprits ─▶ next round
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use setpoint_dataplane::Digest;

use super::Index;
use super::builder::Pass;
use crate::model::ServiceId;
use crate::plan::{NodeScope, ServicePlan};

/// A Service's plan before and after this commit.
pub(super) struct PlanChange {
    pub(super) id: ServiceId,
    pub(super) old: Option<ServicePlan>,
    pub(super) new: Option<ServicePlan>,
    pub(super) old_scope: Option<NodeScope>,
    pub(super) new_scope: Option<NodeScope>,
}

/// What a commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Nodes whose state differs from the previous commit.
    pub changed_nodes: BTreeSet<Arc<str>>,
    /// The nodes whose own parts, or which parts they have, may differ
    /// from the previous commit; every other node changed at most through
    /// the shared parts ([`Index::shared_parts`]), which a store records
    /// once for all of them. Not always among `changed_nodes`: an atom can
    /// move between a node's own part and a shared one (a Service left out
    /// and readmitted) and leave the node's state as it was.
    pub recomposed_nodes: BTreeSet<Arc<str>>,
    pub replanned_services: usize,
}

/// Most Services excluded in one commit for invalid states before the
/// rest is committed as it is (each round excludes at least one).
const MAX_GUARD_ROUNDS: usize = 64;

/// What one round of a commit changed.
#[derive(Default)]
pub(super) struct PassChanges {
    /// The shared `services` fragment: every node changed.
    pub(super) global: bool,
    pub(super) zones: BTreeSet<Option<Arc<str>>>,
    pub(super) touched: Vec<Arc<str>>,
}

impl PassChanges {
    fn merge(&mut self, other: PassChanges) {
        self.global |= other.global;
        self.zones.extend(other.zones);
        self.touched.extend(other.touched);
    }

    /// The live nodes whose own parts or composition these changes touch.
    fn recomposed(&self, index: &Index) -> BTreeSet<Arc<str>> {
        self.touched
            .iter()
            .filter(|n| index.nodes.contains_key(*n))
            .cloned()
            .collect()
    }

    /// The live nodes whose state these changes touch, sorted.
    pub(super) fn nodes(&self, index: &Index) -> Vec<Arc<str>> {
        if self.global {
            return index.nodes.keys().cloned().collect();
        }
        let mut touched = self.touched.clone();
        if !self.zones.is_empty() {
            for (name, node) in &index.nodes {
                if self.zones.contains(&node.zone) {
                    touched.push(name.clone());
                }
            }
        }
        touched.retain(|n| index.nodes.contains_key(n));
        touched.sort();
        touched.dedup();
        touched
    }
}

impl Index {
    /// Applies every pending change and reports which nodes changed.
    ///
    /// Every node state it leaves is validated (see [`Index::invalid_nodes`]):
    /// a Service whose atoms make a state invalid is left out, with a
    /// problem, and the rest is computed again without it.
    pub fn commit(&mut self) -> CommitOutcome {
        let before = self.readmit_left_out();
        let mut outcome = CommitOutcome::default();
        let mut changes = PassChanges::default();
        for round in 0.. {
            let pass = self.pass(&mut outcome);
            let excluded = self.guard(&pass);
            changes.merge(pass);
            if excluded.is_empty() || round >= MAX_GUARD_ROUNDS {
                break;
            }
            for (id, why) in excluded {
                self.left_out_invalid.insert(id.clone(), why);
                self.dirty_services.insert(id);
            }
        }
        let mut changed = changes.nodes(self);
        if let Some(before) = before {
            changed.retain(|n| before.get(n) != self.node_digest(n).as_ref());
        }
        outcome.changed_nodes = changed.into_iter().collect();
        outcome.recomposed_nodes = changes.recomposed(self);
        outcome
    }

    /// When anything is pending, what was left out for an invalid state
    /// gets another chance: the decision is taken again on the new
    /// objects, as a fresh index would take it. Returns the digests of
    /// every node when a Service is readmitted: one left out again touches
    /// nodes and changes nothing, and those are not reported.
    fn readmit_left_out(&mut self) -> Option<HashMap<Arc<str>, Digest>> {
        let pending = !self.dirty_services.is_empty()
            || !self.dirty_nodes.is_empty()
            || self.nodes_changed
            || self.service_cidrs_changed
            || self.policy_full
            || !self.policy_pod_changes.is_empty()
            || !self.policy_subject_nodes.is_empty();
        if !pending || self.left_out_invalid.is_empty() {
            return None;
        }
        let before = self
            .nodes
            .keys()
            .filter_map(|n| Some((n.clone(), self.node_digest(n)?)))
            .collect();
        let readmit = std::mem::take(&mut self.left_out_invalid).into_keys();
        self.dirty_services.extend(readmit);
        Some(before)
    }

    /// One round of applying pending changes to the fragments.
    fn pass(&mut self, outcome: &mut CommitOutcome) -> PassChanges {
        let mut changes = PassChanges::default();
        // Zones whose fragment was created in this commit: nothing of any
        // old plan is in them yet.
        let mut new_zones: BTreeSet<Option<Arc<str>>> = BTreeSet::new();
        let mut dirty: BTreeSet<ServiceId> = std::mem::take(&mut self.dirty_services);
        if self.nodes_changed {
            self.apply_node_changes(&mut dirty, &mut changes, &mut new_zones);
        }
        if self.service_cidrs_changed {
            self.apply_service_cidr_changes(&mut dirty, &mut changes);
        }
        self.update_listed(&mut dirty);
        // Claims first: a Service that loses or wins a frontend is replanned.
        let owners_changed = self.settle_claims(&mut dirty);
        let plan_changes = self.replan(&dirty, outcome);
        // When a frontend changes owner within one commit, every Service's
        // removals run before any Service's additions.
        let passes: &[Pass] = if owners_changed {
            &[Pass::Retract, Pass::Extend]
        } else {
            &[Pass::Both]
        };
        for pass in passes {
            for change in &plan_changes {
                changes.global |= self.apply_change(
                    change,
                    *pass,
                    &new_zones,
                    &mut changes.touched,
                    &mut changes.zones,
                );
            }
        }
        self.record_plans(plan_changes);
        self.rebuild_dirty_nodes(&mut changes.touched);
        self.refresh_policy(&mut changes.touched);
        self.nodes_changed = false;
        changes
    }

    /// Plans every dirty Service again, keeping the old plan beside it.
    fn replan(
        &mut self,
        dirty: &BTreeSet<ServiceId>,
        outcome: &mut CommitOutcome,
    ) -> Vec<PlanChange> {
        let zones = self.zone_keys();
        let mut plan_changes: Vec<PlanChange> = Vec::with_capacity(dirty.len());
        for id in dirty {
            outcome.replanned_services += 1;
            let old = self.plans.remove(id);
            let old_scope = self.scopes.remove(id);
            let new = self.plan(id, &zones);
            let new_scope = new.as_ref().map(ServicePlan::node_scope);
            plan_changes.push(PlanChange {
                id: id.clone(),
                old,
                new,
                old_scope,
                new_scope,
            });
        }
        plan_changes
    }

    /// Keeps the new plans, their node scopes and whether they have zone
    /// atoms, for the next commit and for nodes built whole.
    fn record_plans(&mut self, plan_changes: Vec<PlanChange>) {
        for change in plan_changes {
            let PlanChange {
                id,
                new,
                old_scope,
                new_scope,
                ..
            } = change;
            if new.as_ref().is_some_and(ServicePlan::has_zone_atoms) {
                self.zone_services.insert(id.clone());
            } else {
                self.zone_services.remove(&id);
            }
            self.unindex_scope(&id, old_scope.as_ref());
            if let Some(scope) = new_scope {
                self.index_scope(&id, &scope);
                self.scopes.insert(id.clone(), scope);
            }
            if let Some(plan) = new {
                self.plans.insert(id, plan);
            }
        }
    }
}
