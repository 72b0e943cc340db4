//! A fragment under construction from atoms, with reference counts for
//! atoms several Services contribute.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use setpoint_dataplane::{Family, Fragment, HealthCheck, NodeCondition, SetEntry};

use crate::layout::SetId;
use crate::plan::Atom;

/// A fragment under construction, with reference counts for atoms that
/// several Services may contribute (a shared load balancer IP, the hairpin
/// entry of a pod behind two Services).
#[derive(Clone, Debug, Default)]
pub(super) struct Builder {
    pub(super) fragment: Arc<Fragment>,
    shared: HashMap<(SetId, Family, SetEntry), u32>,
    addresses: HashMap<IpAddr, u32>,
    /// Every health check asked for on a port. Two Services asking for one
    /// port (manifests the API server did not allocate) leave the least in
    /// the fragment, whatever the order they came in.
    health_checks: HashMap<u16, BTreeSet<HealthCheck>>,
    conditions: HashMap<NodeCondition, u32>,
}

impl Builder {
    pub(super) fn add(&mut self, atom: &Atom) {
        match atom {
            Atom::Entry(set, family, entry) => {
                let count = self
                    .shared
                    .entry((*set, *family, entry.clone()))
                    .or_insert(0);
                *count += 1;
                if *count == 1 {
                    Arc::make_mut(&mut self.fragment).add_entry(&set.name(*family), entry.clone());
                }
            }
            Atom::Address(ip) => {
                let count = self.addresses.entry(*ip).or_insert(0);
                *count += 1;
                if *count == 1 {
                    Arc::make_mut(&mut self.fragment).add_address(*ip);
                }
            }
            Atom::VirtualServer(key, vs) => {
                Arc::make_mut(&mut self.fragment).put_virtual_server(*key, vs.clone());
            }
            Atom::HealthCheck(port, check) => {
                let checks = self.health_checks.entry(*port).or_default();
                checks.insert(check.clone());
                self.settle_health_check(*port);
            }
            Atom::NodeCondition(condition) => {
                let count = self.conditions.entry(*condition).or_insert(0);
                *count += 1;
                if *count == 1 {
                    Arc::make_mut(&mut self.fragment).add_node_condition(*condition);
                }
            }
        }
    }

    /// Puts the least health check asked for on `port` into the fragment,
    /// or none when none is.
    fn settle_health_check(&mut self, port: u16) {
        if self
            .health_checks
            .get(&port)
            .is_some_and(BTreeSet::is_empty)
        {
            self.health_checks.remove(&port);
        }
        let least = self
            .health_checks
            .get(&port)
            .and_then(|c| c.first())
            .cloned();
        if self.fragment.health_check(port) == least.as_ref() {
            return;
        }
        let fragment = Arc::make_mut(&mut self.fragment);
        match least {
            Some(check) => {
                fragment.put_health_check(port, check);
            }
            None => {
                fragment.remove_health_check(port);
            }
        }
    }

    fn remove(&mut self, atom: &Atom) {
        match atom {
            Atom::Entry(set, family, entry) => {
                let key = (*set, *family, entry.clone());
                if let Some(count) = self.shared.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.shared.remove(&key);
                        Arc::make_mut(&mut self.fragment).remove_entry(&set.name(*family), entry);
                    }
                }
            }
            Atom::Address(ip) => {
                if let Some(count) = self.addresses.get_mut(ip) {
                    *count -= 1;
                    if *count == 0 {
                        self.addresses.remove(ip);
                        Arc::make_mut(&mut self.fragment).remove_address(ip);
                    }
                }
            }
            Atom::VirtualServer(key, _) => {
                Arc::make_mut(&mut self.fragment).remove_virtual_server(key);
            }
            Atom::HealthCheck(port, check) => {
                if let Some(checks) = self.health_checks.get_mut(port) {
                    checks.remove(check);
                }
                self.settle_health_check(*port);
            }
            Atom::NodeCondition(condition) => {
                if let Some(count) = self.conditions.get_mut(condition) {
                    *count -= 1;
                    if *count == 0 {
                        self.conditions.remove(condition);
                        Arc::make_mut(&mut self.fragment).remove_node_condition(*condition);
                    }
                }
            }
        }
    }

    /// Replaces `old` atoms by `new` ones, touching only those that differ.
    /// Returns whether anything changed.
    pub(super) fn replace(&mut self, old: &[Atom], new: &[Atom]) -> bool {
        self.apply(old, new, Pass::Both)
    }

    /// The part of a replacement `pass` asks for. Atoms of one plan are
    /// distinct (plans deduplicate them), so presence is all that counts.
    pub(super) fn apply(&mut self, old: &[Atom], new: &[Atom], pass: Pass) -> bool {
        if old == new {
            return false;
        }
        let mut changed = false;
        if pass != Pass::Extend {
            for atom in old.iter().filter(|a| !new.contains(a)) {
                changed = true;
                // A virtual server whose key stays is overwritten in place by
                // the addition: one map update instead of two.
                if let Atom::VirtualServer(key, _) = atom
                    && new
                        .iter()
                        .any(|n| matches!(n, Atom::VirtualServer(k, _) if k == key))
                {
                    continue;
                }
                self.remove(atom);
            }
        }
        if pass != Pass::Retract {
            for atom in new.iter().filter(|a| !old.contains(a)) {
                self.add(atom);
                changed = true;
            }
        }
        changed
    }
}

/// Which half of a replacement to do. When a frontend changes owner within
/// one commit, every Service's removals run before any Service's additions,
/// so the old owner's removal cannot delete the new owner's virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    Retract,
    Extend,
    Both,
}
