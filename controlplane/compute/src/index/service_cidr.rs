//! ServiceCIDRs (networking.k8s.io/v1): the ranges ClusterIPs are
//! allocated from, beside `--service-cidr`. Their union is what admission
//! keeps external and load-balancer IPs out of, and what the base
//! fragment's `SP-SERVICE-CIDR` sets hold: a change to it rebuilds the
//! base (every node changes) and admits again every Service with an
//! external or load-balancer IP.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as k8s;

use super::commit::PassChanges;
use super::{Index, IndexResource};
use crate::admit;
use crate::convert::Rejection;
use crate::layout::base_fragment;
use crate::model::ServiceId;
use crate::object::ObjectKey;

impl IndexResource<k8s::ServiceCIDR> for Index {
    fn apply(&mut self, key: &ObjectKey, object: k8s::ServiceCIDR) {
        let (nets, rejections) = convert(key, &object);
        self.note(key, rejections, nets.is_empty());
        if self.service_cidr_objects.get(&key.name) != Some(&nets) {
            self.service_cidr_objects.insert(key.name.clone(), nets);
            self.service_cidrs_changed = true;
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.service_cidrs_changed |= self.service_cidr_objects.remove(&key.name).is_some();
    }
}

/// The CIDRs of `object` that are taken, and a rejection for each one
/// that is not (the others are still taken). An object without any is a
/// problem too: it allocates nothing.
fn convert(key: &ObjectKey, object: &k8s::ServiceCIDR) -> (Vec<IpNet>, Vec<Rejection>) {
    let texts: &[String] = object
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_deref())
        .unwrap_or_default();
    let object_label = format!("ServiceCIDR {}", crate::convert::printable(&key.name));
    let mut nets = Vec::new();
    let mut rejections = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match admit::parse_service_cidr(text) {
            Ok(net) => nets.push(net),
            Err(e) => rejections.push(Rejection {
                object: object_label.clone(),
                reason: format!("spec.cidrs[{i}] is not taken: {e}"),
            }),
        }
    }
    if texts.is_empty() {
        rejections.push(Rejection {
            object: object_label.clone(),
            reason: "spec.cidrs is empty: it allocates no address".to_string(),
        });
    }
    nets.sort();
    nets.dedup();
    (nets, rejections)
}

/// The service CIDRs in effect: the flag's (host bits cut off, special
/// ranges dropped — the command line refuses them before this) and every
/// object's, sorted and deduplicated.
pub(super) fn effective(flag: &[IpNet], objects: &BTreeMap<String, Vec<IpNet>>) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = flag
        .iter()
        .filter_map(|net| admit::service_cidr(*net).ok())
        .chain(objects.values().flatten().copied())
        .collect();
    set.into_iter().collect()
}

impl Index {
    /// After ServiceCIDR objects changed: when the union differs, the new
    /// base fragment (every node changes, every node is validated whole)
    /// and every Service with an external or load-balancer IP admitted
    /// again.
    pub(super) fn apply_service_cidr_changes(
        &mut self,
        dirty: &mut BTreeSet<ServiceId>,
        changes: &mut PassChanges,
    ) {
        self.service_cidrs_changed = false;
        let now = effective(&self.service_cidr_flag, &self.service_cidr_objects);
        if now == self.config.service_cidrs {
            return;
        }
        self.config.service_cidrs = now;
        self.base = Arc::new(base_fragment(&self.config));
        // The checks' flattened shared parts hold the old base.
        self.shared_checks.clear();
        self.node_checks.clear();
        changes.global = true;
        dirty.extend(self.foreign_users.values().flatten().cloned());
    }
}
