//! Nodes: their zones, addresses and pod CIDRs are what every Service's
//! admission and the shared fragments depend on.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as k8s;
use setpoint_dataplane::{Family, SetEntry};

use super::builder::Builder;
use super::commit::PassChanges;
use super::{Index, IndexResource};
use crate::convert;
use crate::layout::SetId;
use crate::model::ServiceId;
use crate::object::ObjectKey;
use crate::plan::Atom;

impl IndexResource<k8s::Node> for Index {
    fn apply(&mut self, key: &ObjectKey, node: k8s::Node) {
        let name: Arc<str> = Arc::from(key.name.as_str());
        match convert::node(&node) {
            Ok(model) => {
                if self.nodes.get(&name) != Some(&model) {
                    self.nodes.insert(name.clone(), model);
                    self.dirty_nodes.insert(name);
                    self.nodes_changed = true;
                }
            }
            Err(r) => {
                self.note(key, vec![r], true);
                self.forget_node(name);
            }
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.forget_node(Arc::from(key.name.as_str()));
    }
}

impl Index {
    fn forget_node(&mut self, name: Arc<str>) {
        if self.nodes.remove(&name).is_some() {
            self.dirty_nodes.insert(name);
            self.nodes_changed = true;
        }
    }

    /// After Nodes changed: zone fragments for new zones (dropped for
    /// vanished ones), the cluster CIDR entries, and the context Services
    /// are admitted in. `new_zones` gets the zones created here.
    pub(super) fn apply_node_changes(
        &mut self,
        dirty: &mut BTreeSet<ServiceId>,
        changes: &mut PassChanges,
        new_zones: &mut BTreeSet<Option<Arc<str>>>,
    ) {
        let zones = self.zone_keys();
        let known: Vec<Option<Arc<str>>> = self.zones.keys().cloned().collect();
        if zones != known {
            // Per-zone views are built per known zone; a new or vanished
            // zone means every zone-aware Service is planned again.
            dirty.extend(self.zone_services.iter().cloned());
            for zone in &zones {
                if !self.zones.contains_key(zone) {
                    self.zones.insert(zone.clone(), Builder::default());
                    new_zones.insert(zone.clone());
                }
            }
            self.zones.retain(|z, _| zones.contains(z));
            self.shared_checks.retain(|z, _| zones.contains(z));
            changes.zones.extend(zones);
        }
        let cluster_atoms = self.cluster_cidr_atoms();
        let old = std::mem::take(&mut self.cluster_atoms);
        changes.global |= self.global.replace(&old, &cluster_atoms);
        self.cluster_atoms = cluster_atoms;
        self.update_node_context(dirty);
    }

    pub(super) fn zone_keys(&self) -> Vec<Option<Arc<str>>> {
        let mut zones: Vec<Option<Arc<str>>> =
            self.nodes.values().map(|n| n.zone.clone()).collect();
        zones.push(None);
        zones.sort();
        zones.dedup();
        zones
    }

    /// Node addresses and pod CIDRs after a node change; every Service
    /// with an external or load-balancer IP is admitted again when they
    /// differ.
    fn update_node_context(&mut self, dirty: &mut BTreeSet<ServiceId>) {
        let addresses: HashSet<IpAddr> = self
            .nodes
            .values()
            .flat_map(|n| n.addresses.iter().copied())
            .collect();
        let pod_cidrs = self.pod_cidrs_now();
        if addresses != self.node_addresses || pod_cidrs != self.pod_cidrs {
            self.node_addresses = addresses;
            self.pod_cidrs = pod_cidrs;
            dirty.extend(self.foreign_users.values().flatten().cloned());
        }
    }

    pub(super) fn pod_cidrs_now(&self) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = if self.config.cluster_cidrs.is_empty() {
            self.nodes
                .values()
                .flat_map(|n| n.pod_cidrs.iter().copied())
                .collect()
        } else {
            self.config.cluster_cidrs.clone()
        };
        nets.sort();
        nets.dedup();
        nets
    }

    fn cluster_cidr_atoms(&self) -> Vec<Atom> {
        self.pod_cidrs_now()
            .into_iter()
            .map(|net| {
                Atom::Entry(
                    SetId::ClusterCidr,
                    Family::of_net(&net),
                    SetEntry::Net {
                        net,
                        nomatch: false,
                    },
                )
            })
            .collect()
    }
}
