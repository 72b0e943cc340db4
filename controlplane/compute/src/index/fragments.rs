//! The fragments a commit edits: the shared `services` fragment, one per
//! zone, one per node; and the states and digests read from them.

use std::collections::BTreeSet;
use std::sync::Arc;

use rayon::prelude::*;
use setpoint_dataplane::{Digest, Fragment, NodeDataplane};

use super::builder::{Builder, Pass};
use super::commit::PlanChange;
use super::{Index, PART_BASE, PART_SERVICES};
use crate::model::{Node, ServiceId};
use crate::plan::{self, NodeScope, ServicePlan};

impl Index {
    /// Builds the fragments of nodes added or changed whole, in parallel;
    /// drops those of nodes gone.
    pub(super) fn rebuild_dirty_nodes(&mut self, touched: &mut Vec<Arc<str>>) {
        let dirty_nodes: Vec<Arc<str>> =
            std::mem::take(&mut self.dirty_nodes).into_iter().collect();
        let rebuilt: Vec<(Arc<str>, Option<Builder>)> = dirty_nodes
            .par_iter()
            .map(|name| {
                let builder = self.nodes.get(name).map(|node| {
                    let mut builder = Builder::default();
                    for atom in plan::node_address_atoms(node, &self.config) {
                        builder.add(&atom);
                    }
                    let mut ids: BTreeSet<&ServiceId> = self.services_all_nodes.iter().collect();
                    ids.extend(self.services_by_host.get(name).into_iter().flatten());
                    for id in ids {
                        if let Some(plan) = self.plans.get(id) {
                            for atom in plan.atoms_for_node(node, &self.config) {
                                builder.add(&atom);
                            }
                        }
                    }
                    builder
                });
                (name.clone(), builder)
            })
            .collect();
        for (name, builder) in rebuilt {
            match builder {
                Some(builder) => {
                    self.node_fragments.insert(name.clone(), builder);
                }
                None => {
                    self.node_fragments.remove(&name);
                    self.invalid_nodes.remove(&name);
                }
            }
            touched.push(name);
        }
    }

    /// Edits the fragments a plan change touches; returns whether the
    /// shared `services` fragment changed.
    pub(super) fn apply_change(
        &mut self,
        change: &PlanChange,
        pass: Pass,
        new_zones: &BTreeSet<Option<Arc<str>>>,
        touched: &mut Vec<Arc<str>>,
        changed_zones: &mut BTreeSet<Option<Arc<str>>>,
    ) -> bool {
        let PlanChange {
            old,
            new,
            old_scope,
            new_scope,
            ..
        } = change;
        let global_changed = self.global.apply(
            old.as_ref().map_or(&[][..], |p| &p.global),
            new.as_ref().map_or(&[][..], |p| &p.global),
            pass,
        );
        let old_zoned = old.as_ref().is_some_and(ServicePlan::has_zone_atoms);
        let new_zoned = new.as_ref().is_some_and(ServicePlan::has_zone_atoms);
        if old_zoned || new_zoned {
            for (zone, builder) in self.zones.iter_mut() {
                let before = old
                    .as_ref()
                    .filter(|_| !new_zones.contains(zone))
                    .map(|p| p.atoms_for_zone(zone.as_ref()))
                    .unwrap_or_default();
                let after = new
                    .as_ref()
                    .map(|p| p.atoms_for_zone(zone.as_ref()))
                    .unwrap_or_default();
                if builder.apply(&before, &after, pass) {
                    changed_zones.insert(zone.clone());
                }
            }
        }
        let every_node =
            matches!(old_scope, Some(NodeScope::All)) || matches!(new_scope, Some(NodeScope::All));
        let config = &self.config;
        let node_atoms = |node: &Node| {
            let atoms = |plan: &Option<ServicePlan>, scope: &Option<NodeScope>| match (plan, scope)
            {
                (Some(p), Some(scope)) if scope.contains(&node.name) => {
                    p.atoms_for_node(node, config)
                }
                _ => Vec::new(),
            };
            (atoms(old, old_scope), atoms(new, new_scope))
        };
        if every_node {
            // Nodes added in this commit have no builder yet and are built
            // whole afterwards; the rest are edited in parallel.
            let mut work: Vec<(&Node, &mut Builder)> = Vec::with_capacity(self.nodes.len());
            let mut nodes = self.nodes.values().peekable();
            for (name, builder) in self.node_fragments.iter_mut() {
                while nodes.next_if(|n| n.name < *name).is_some() {}
                if let Some(node) = nodes.next_if(|n| n.name == *name) {
                    work.push((node, builder));
                }
            }
            let changed: Vec<Arc<str>> = work
                .par_iter_mut()
                .filter_map(|(node, builder)| {
                    let (before, after) = node_atoms(node);
                    builder
                        .apply(&before, &after, pass)
                        .then(|| node.name.clone())
                })
                .collect();
            touched.extend(changed);
        } else {
            let mut hosts: Vec<&Arc<str>> = Vec::new();
            for scope in [old_scope, new_scope].into_iter().flatten() {
                if let NodeScope::Only(list) = scope {
                    hosts.extend(list.iter());
                }
            }
            hosts.sort();
            hosts.dedup();
            for host in hosts {
                let (Some(node), Some(builder)) =
                    (self.nodes.get(host), self.node_fragments.get_mut(host))
                else {
                    continue;
                };
                let (before, after) = node_atoms(node);
                if builder.apply(&before, &after, pass) {
                    touched.push(node.name.clone());
                }
            }
        }
        global_changed
    }

    pub(super) fn index_scope(&mut self, id: &ServiceId, scope: &NodeScope) {
        match scope {
            NodeScope::All => {
                self.services_all_nodes.insert(id.clone());
            }
            NodeScope::Only(hosts) => {
                for host in hosts {
                    self.services_by_host
                        .entry(host.clone())
                        .or_default()
                        .insert(id.clone());
                }
            }
        }
    }

    pub(super) fn unindex_scope(&mut self, id: &ServiceId, scope: Option<&NodeScope>) {
        match scope {
            None => {}
            Some(NodeScope::All) => {
                self.services_all_nodes.remove(id);
            }
            Some(NodeScope::Only(hosts)) => {
                for host in hosts {
                    if let Some(set) = self.services_by_host.get_mut(host) {
                        set.remove(id);
                        if set.is_empty() {
                            self.services_by_host.remove(host);
                        }
                    }
                }
            }
        }
    }

    /// The desired state of one node, or `None` for an unknown node.
    pub fn node_state(&self, name: &str) -> Option<NodeDataplane> {
        let node = self.nodes.get(name)?;
        let mut parts: Vec<(String, Arc<Fragment>)> = vec![
            (PART_BASE.to_string(), self.base.clone()),
            (PART_SERVICES.to_string(), self.global.fragment.clone()),
        ];
        if let Some(zone) = self.zones.get(&node.zone) {
            parts.push((zone_part(&node.zone), zone.fragment.clone()));
        }
        if let Some(own) = self.node_fragments.get(name) {
            parts.push((format!("node/{name}"), own.fragment.clone()));
        }
        if let Some(policy) = self.policy_fragments.get(name).filter(|f| !f.is_empty()) {
            parts.push((format!("policy/{name}"), policy.clone()));
        }
        Some(NodeDataplane::from_parts(parts))
    }

    /// Every part that nodes share, by name: `base`, `services` and each
    /// zone's `zone/<z>`. A node's state is the shared parts it uses
    /// (`base`, `services`, its zone's) and its own (`node/<n>`,
    /// `policy/<n>`).
    pub fn shared_parts(&self) -> Vec<(String, Arc<Fragment>)> {
        let mut parts = vec![
            (PART_BASE.to_string(), self.base.clone()),
            (PART_SERVICES.to_string(), self.global.fragment.clone()),
        ];
        for (zone, builder) in &self.zones {
            parts.push((zone_part(zone), builder.fragment.clone()));
        }
        parts
    }

    /// The digest of one node's state, without building the state: the
    /// same as `node_state(name)?.digest()`.
    pub fn node_digest(&self, name: &str) -> Option<Digest> {
        let node = self.nodes.get(name)?;
        let mut acc = self.base.accumulator().clone();
        acc.merge(self.global.fragment.accumulator());
        if let Some(zone) = self.zones.get(&node.zone) {
            acc.merge(zone.fragment.accumulator());
        }
        if let Some(own) = self.node_fragments.get(name) {
            acc.merge(own.fragment.accumulator());
        }
        if let Some(policy) = self.policy_fragments.get(name) {
            acc.merge(policy.accumulator());
        }
        Some(acc.finish())
    }

    /// The keys of virtual servers in the shared fragment; for tests.
    pub fn shared_virtual_servers(&self) -> usize {
        self.global.fragment.virtual_server_count()
    }
}

/// The name of a zone's shared part (`-` stands for no zone).
fn zone_part(zone: &Option<Arc<str>>) -> String {
    format!("zone/{}", zone.as_deref().unwrap_or("-"))
}
