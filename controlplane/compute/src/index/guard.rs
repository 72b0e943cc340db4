//! The guard of a commit: every changed node's state is validated, and
//! the Services that explain an invalid state are left out (the commit
//! runs again without them); what no Service explains holds the node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use setpoint_dataplane::Fragment;
use setpoint_dataplane::validate::Invalid;

use super::Index;
use super::check::{NodeCheck, SharedGain, check_gain, check_node, check_shared, same_part};
use super::commit::PassChanges;
use crate::model::ServiceId;
use crate::plan::{Atom, Frontend, ServicePlan};

/// Whether `part` holds `atom`.
fn atom_in(part: &Fragment, atom: &Atom) -> bool {
    match atom {
        Atom::Entry(set, family, entry) => part
            .entries(&set.name(*family))
            .is_some_and(|e| e.contains(entry)),
        Atom::VirtualServer(key, _) => part.virtual_server(key).is_some(),
        Atom::Address(ip) => part.has_address(ip),
        Atom::HealthCheck(port, check) => part.health_check(*port) == Some(check),
        Atom::NodeCondition(condition) => part.has_node_condition(*condition),
    }
}

impl Index {
    /// Validates the states of `nodes` (the shared part once per zone);
    /// returns the Services that explain an invalid state, each with the
    /// reason, to be left out. What no Service explains is kept in
    /// [`Index::invalid_nodes`].
    pub(super) fn guard(&mut self, pass: &PassChanges) -> Vec<(ServiceId, String)> {
        let zones: BTreeSet<Option<Arc<str>>> = if pass.global {
            self.zones.keys().cloned().collect()
        } else {
            let mut zones = pass.zones.clone();
            for name in &pass.touched {
                if let Some(node) = self.nodes.get(name) {
                    zones.insert(node.zone.clone());
                }
            }
            zones
        };
        let mut gains: HashMap<Option<Arc<str>>, SharedGain> = HashMap::new();
        for zone in zones.iter().cloned() {
            let zone_fragment = self
                .zones
                .get(&zone)
                .map(|b| b.fragment.clone())
                .unwrap_or_default();
            let previous = self.shared_checks.get(&zone);
            if previous.is_some_and(|p| {
                Arc::ptr_eq(&p.services, &self.global.fragment)
                    && p.zone.digest() == zone_fragment.digest()
            }) {
                continue;
            }
            let (check, gain) =
                check_shared(&self.base, &self.global.fragment, &zone_fragment, previous);
            self.shared_checks.insert(zone.clone(), check);
            gains.insert(zone, gain);
        }
        let unchanged = SharedGain::default();
        // A node whose own parts were not edited, in a zone whose shared
        // part gained nothing a node can collide with and has no problem,
        // keeps a verdict without problems: only the others are looked at.
        let quiet = |zone: &Option<Arc<str>>| {
            let gain = gains.get(zone).unwrap_or(&unchanged);
            !gain.whole
                && gain.entries.is_empty()
                && gain.virtual_servers.is_empty()
                && self
                    .shared_checks
                    .get(zone)
                    .is_some_and(|c| c.invalid.is_empty())
        };
        let quiet_zones: BTreeSet<&Option<Arc<str>>> = zones.iter().filter(|z| quiet(z)).collect();
        let mut look: BTreeSet<Arc<str>> = pass.touched.iter().cloned().collect();
        look.extend(self.invalid_nodes.keys().cloned());
        let nodes: Vec<Arc<str>> = if quiet_zones.len() == zones.len() {
            look.into_iter()
                .filter(|n| self.nodes.contains_key(n))
                .collect()
        } else {
            pass.nodes(self)
                .into_iter()
                .filter(|n| {
                    look.contains(n)
                        || self
                            .nodes
                            .get(n)
                            .is_some_and(|node| !quiet_zones.contains(&node.zone))
                })
                .collect()
        };
        // Only nodes whose verdict may differ from their last one.
        let verdicts: Vec<(Arc<str>, Option<NodeCheck>, Vec<Invalid>)> = nodes
            .par_iter()
            .filter_map(|name| {
                let node = self.nodes.get(name)?;
                let shared = self.shared_checks.get(&node.zone)?;
                let gain = gains.get(&node.zone).unwrap_or(&unchanged);
                let own = self.node_fragments.get(name).map(|b| &b.fragment);
                let policy = self.policy_fragments.get(name);
                let mine: Vec<&Arc<Fragment>> = own.into_iter().chain(policy).collect();
                let same = self.node_checks.get(name).is_some_and(|c| {
                    c.invalid.is_empty() && same_part(&c.own, own) && same_part(&c.policy, policy)
                });
                if same && !gain.whole {
                    if gain.entries.is_empty() && gain.virtual_servers.is_empty() {
                        return Some((name.clone(), None, shared.invalid.clone()));
                    }
                    return Some((name.clone(), None, check_gain(shared, gain, &mine)));
                }
                let invalid = check_node(&self.base, shared, &mine);
                let check = NodeCheck {
                    own: own.cloned(),
                    policy: policy.cloned(),
                    invalid: invalid.clone(),
                };
                Some((name.clone(), Some(check), invalid))
            })
            .collect();
        let mut excluded: BTreeMap<ServiceId, String> = BTreeMap::new();
        if self.node_checks.len() > self.nodes.len() {
            self.node_checks
                .retain(|name, _| self.nodes.contains_key(name));
        }
        for (name, check, invalid) in verdicts {
            match check {
                Some(check) => {
                    self.node_checks.insert(name.clone(), check);
                }
                None if !invalid.is_empty() => {
                    // Checked whole next time.
                    if let Some(c) = self.node_checks.get_mut(&name) {
                        c.invalid = invalid.clone();
                    }
                }
                None => {}
            }
            if invalid.is_empty() {
                self.invalid_nodes.remove(&name);
                continue;
            }
            let culprits = self.attribute(&name, &invalid);
            if culprits.is_empty() {
                self.invalid_nodes.insert(name, invalid);
            } else {
                for (id, why) in culprits {
                    excluded.entry(id).or_insert(why);
                }
            }
        }
        excluded.into_iter().collect()
    }

    /// The Services whose atoms explain `invalid` on node `name`: the
    /// largest contributors to an overfull set (until it fits), the owner
    /// of a virtual server a NodePort template collides with, the
    /// contributors of an atom found in two fragments (all but the lowest
    /// `namespace/name`, or the only one).
    fn attribute(&self, name: &Arc<str>, invalid: &[Invalid]) -> BTreeMap<ServiceId, String> {
        let mut out = BTreeMap::new();
        let Some(node) = self.nodes.get(name) else {
            return out;
        };
        let node_atoms = |id: &ServiceId, plan: &ServicePlan| -> Vec<Atom> {
            let mut atoms = plan.global.clone();
            if plan.has_zone_atoms() {
                atoms.extend(plan.atoms_for_zone(node.zone.as_ref()));
            }
            if self.scopes.get(id).is_some_and(|s| s.contains(name)) {
                atoms.extend(plan.atoms_for_node(node, &self.config));
            }
            atoms
        };
        let plans: BTreeMap<&ServiceId, &ServicePlan> = self.plans.iter().collect();
        for problem in invalid {
            match problem {
                Invalid::SetOverfull {
                    set,
                    entries,
                    maxelem,
                } => {
                    let mut counts: Vec<(usize, &ServiceId)> = plans
                        .iter()
                        .map(|(id, plan)| {
                            let n = node_atoms(id, plan)
                                .iter()
                                .filter(|a| matches!(a, Atom::Entry(s, f, _) if s.name(*f) == *set))
                                .count();
                            (n, *id)
                        })
                        .filter(|(n, _)| *n > 0)
                        .collect();
                    counts.sort_by(|a, b| b.cmp(a));
                    let mut excess = entries.saturating_sub(*maxelem as usize);
                    for (n, id) in counts {
                        if excess == 0 {
                            break;
                        }
                        excess = excess.saturating_sub(n);
                        out.entry(id.clone()).or_insert_with(|| {
                            format!(
                                "left out: its {n} entries in set {set} overfill it \
                                 ({entries} entries, maxelem {maxelem}) on node {name}"
                            )
                        });
                    }
                }
                Invalid::NodePortCollision { collision } => {
                    let key = collision.key;
                    let frontend = Frontend::Vip(key.address, key.protocol, key.port);
                    if let Some(owner) = self.claims.get(&frontend).and_then(|s| s.first()) {
                        out.entry(owner.clone()).or_insert_with(|| {
                            format!(
                                "left out: its virtual server {key}/{} is on node {name}'s \
                                 address, where a NodePort serves the same port",
                                key.protocol
                            )
                        });
                    }
                }
                Invalid::DuplicatedAcrossParts { .. } => {
                    let Some(state) = self.node_state(name) else {
                        continue;
                    };
                    let in_parts = |atom: &Atom| {
                        state
                            .parts()
                            .filter(|(_, part)| atom_in(part, atom))
                            .count()
                    };
                    let mut by_atom: BTreeMap<String, Vec<&ServiceId>> = BTreeMap::new();
                    for (id, plan) in &plans {
                        for atom in node_atoms(id, plan) {
                            if in_parts(&atom) > 1 {
                                by_atom.entry(format!("{atom:?}")).or_default().push(id);
                            }
                        }
                    }
                    for (atom, ids) in by_atom {
                        let culprits = if ids.len() > 1 { &ids[1..] } else { &ids[..] };
                        for id in culprits {
                            out.entry((*id).clone()).or_insert_with(|| {
                                format!(
                                    "left out: it puts an atom into two fragments of node \
                                     {name}'s state ({atom})"
                                )
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}
