//! The incremental index: cluster objects in, per-node states out.
//!
//! ```text
//!  upsert/delete ──▶ objects ──commit()──▶ plans (one per Service)
//!                                              │ diff old/new atoms
//!                     base ─┐                  ▼
//!                  services ┼─▶ fragments: services (all nodes), zone/<z>, node/<n>
//!                  zone/<z> ┤
//!                  node/<n> ┘─▶ NodeDataplane per node (4 shared Arcs)
//! ```
//!
//! A change to one Service or EndpointSlice replans that Service only and
//! edits only the fragments its atoms live in; every node shares the
//! `services` fragment and its zone's fragment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use setpoint_dataplane::{Digest, Family, Fragment, NodeDataplane, SetEntry};

use rayon::prelude::*;

use crate::convert::{self, Rejection, ServiceOutcome, SliceOutcome};
use crate::layout::{ComputeConfig, SetId, base_fragment};
use crate::model::{EndpointSlice, Node, Service, ServiceId};
use crate::object::{ClusterObject, ObjectKey};
use crate::plan::{self, Atom, Frontend, NodeScope, ServicePlan, frontends, plan_service};
use crate::policy::{self, PeerUse, PolicyView};

/// `(namespace, name)` of an EndpointSlice.
type SliceKey = (Arc<str>, Arc<str>);

pub const PART_BASE: &str = "base";
pub const PART_SERVICES: &str = "services";

/// A fragment under construction, with reference counts for atoms that
/// several Services may contribute (a shared load balancer IP, the hairpin
/// entry of a pod behind two Services).
#[derive(Clone, Debug, Default)]
struct Builder {
    fragment: Arc<Fragment>,
    shared: HashMap<(SetId, Family, SetEntry), u32>,
    addresses: HashMap<IpAddr, u32>,
}

impl Builder {
    fn add(&mut self, atom: &Atom) {
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
        }
    }

    /// Replaces `old` atoms by `new` ones, touching only those that differ.
    /// Returns whether anything changed.
    fn replace(&mut self, old: &[Atom], new: &[Atom]) -> bool {
        self.apply(old, new, Pass::Both)
    }

    /// The part of a replacement `pass` asks for. Atoms of one plan are
    /// distinct (plans deduplicate them), so presence is all that counts.
    fn apply(&mut self, old: &[Atom], new: &[Atom], pass: Pass) -> bool {
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
enum Pass {
    Retract,
    Extend,
    Both,
}

/// A Service's plan before and after this commit.
struct PlanChange {
    id: ServiceId,
    old: Option<ServicePlan>,
    new: Option<ServicePlan>,
    old_scope: Option<NodeScope>,
    new_scope: Option<NodeScope>,
}

/// What a commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Nodes whose state differs from the previous commit.
    pub changed_nodes: BTreeSet<Arc<str>>,
    pub replanned_services: usize,
}

/// A problem with an object, kept until the object changes or goes away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    pub rejection: Rejection,
    /// True when the whole object was set aside; false for a warning about
    /// a part of it (one endpoint, one annotation, a port conflict).
    pub skipped: bool,
}

#[derive(Default)]
pub struct Index {
    config: ComputeConfig,
    base: Arc<Fragment>,
    services: HashMap<ServiceId, Service>,
    slices: HashMap<SliceKey, EndpointSlice>,
    slices_by_service: HashMap<ServiceId, BTreeSet<SliceKey>>,
    nodes: BTreeMap<Arc<str>, Node>,
    /// Pods, namespace labels and policies, validated, for policy compute.
    policy_view: PolicyView,
    /// Every node's policy fragment must be rebuilt (a namespace, policy or
    /// node changed).
    policy_full: bool,
    /// Pods changed since the last commit: (before, after).
    policy_pod_changes: Vec<(Option<policy::Pod>, Option<policy::Pod>)>,
    policy_fragments: BTreeMap<Arc<str>, Arc<Fragment>>,
    /// Which nodes have sets drawn from each peer, so that a pod change
    /// rebuilds only the nodes whose sets it enters or leaves.
    peer_nodes: HashMap<PeerUse, BTreeSet<Arc<str>>>,
    node_peers: HashMap<Arc<str>, Vec<PeerUse>>,
    problems: BTreeMap<ObjectKey, Vec<Problem>>,
    ignored: BTreeMap<ObjectKey, &'static str>,

    claims: HashMap<Frontend, BTreeSet<ServiceId>>,
    claimed_by: HashMap<ServiceId, Vec<Frontend>>,
    plans: HashMap<ServiceId, ServicePlan>,
    /// Nodes each plan has node atoms for, as of that plan.
    scopes: HashMap<ServiceId, NodeScope>,
    services_all_nodes: BTreeSet<ServiceId>,
    services_by_host: HashMap<Arc<str>, BTreeSet<ServiceId>>,
    zone_services: BTreeSet<ServiceId>,

    global: Builder,
    cluster_atoms: Vec<Atom>,
    zones: BTreeMap<Option<Arc<str>>, Builder>,
    /// Same keys as `nodes` after every commit.
    node_fragments: BTreeMap<Arc<str>, Builder>,

    dirty_services: BTreeSet<ServiceId>,
    dirty_nodes: BTreeSet<Arc<str>>,
    nodes_changed: bool,
}

impl Index {
    pub fn new(config: ComputeConfig) -> Self {
        Index {
            base: Arc::new(base_fragment(&config)),
            config,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &ComputeConfig {
        &self.config
    }

    /// Adds or replaces an object. Takes effect at the next [`Index::commit`].
    pub fn upsert(&mut self, object: ClusterObject) {
        let key = object.key();
        self.problems.remove(&key);
        self.ignored.remove(&key);
        match object {
            ClusterObject::Service(svc) => {
                let id = ServiceId::new(&key.namespace, &key.name);
                match convert::service(&svc, "default") {
                    ServiceOutcome::Proxied(model, warnings) => {
                        self.note(&key, warnings, false);
                        self.services.insert(id.clone(), model);
                    }
                    ServiceOutcome::Ignored(why) => {
                        self.ignored.insert(key, why);
                        self.services.remove(&id);
                    }
                    ServiceOutcome::Rejected(r) => {
                        self.note(&key, vec![r], true);
                        self.services.remove(&id);
                    }
                }
                self.dirty_services.insert(id);
            }
            ClusterObject::EndpointSlice(slice) => {
                let slot = (
                    Arc::from(key.namespace.as_str()),
                    Arc::from(key.name.as_str()),
                );
                self.remove_slice(&slot);
                match convert::endpoint_slice(&slice, "default") {
                    SliceOutcome::Used(model, warnings) => {
                        self.note(&key, warnings, false);
                        self.dirty_services.insert(model.service.clone());
                        self.slices_by_service
                            .entry(model.service.clone())
                            .or_default()
                            .insert(slot.clone());
                        self.slices.insert(slot, model);
                    }
                    SliceOutcome::Ignored(why) => {
                        self.ignored.insert(key, why);
                    }
                    SliceOutcome::Rejected(r) => self.note(&key, vec![r], true),
                }
            }
            ClusterObject::Node(node) => {
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
                        self.note(&key, vec![r], true);
                        if self.nodes.remove(&name).is_some() {
                            self.dirty_nodes.insert(name);
                            self.nodes_changed = true;
                        }
                    }
                }
            }
            ClusterObject::Pod(pod) => {
                let slot = (key.namespace.clone(), key.name.clone());
                let new = match policy::convert_pod(&pod) {
                    Ok(model) => model,
                    Err(r) => {
                        self.note(&key, vec![r], true);
                        None
                    }
                };
                let old = match &new {
                    Some(model) => self.policy_view.pods.insert(slot, model.clone()),
                    None => self.policy_view.pods.remove(&slot),
                };
                if old != new {
                    self.policy_pod_changes.push((old, new));
                }
            }
            ClusterObject::Namespace(ns) => {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                if self.policy_view.namespaces.get(&key.name) != Some(&labels) {
                    self.policy_view.namespaces.insert(key.name.clone(), labels);
                    self.policy_full = true;
                }
            }
            ClusterObject::NetworkPolicy(np) => {
                let slot = (key.namespace.clone(), key.name.clone());
                match policy::convert_policy(&np) {
                    Ok(model) => {
                        self.policy_view.policies.insert(slot, model);
                    }
                    Err(r) => {
                        self.note(&key, vec![r], true);
                        self.policy_view.policies.remove(&slot);
                    }
                }
                self.policy_full = true;
            }
        }
    }

    /// Removes an object. Takes effect at the next [`Index::commit`].
    pub fn delete(&mut self, key: &ObjectKey) {
        self.problems.remove(key);
        self.ignored.remove(key);
        match key.kind {
            "Service" => {
                let id = ServiceId::new(&key.namespace, &key.name);
                self.services.remove(&id);
                self.dirty_services.insert(id);
            }
            "EndpointSlice" => {
                let slot = (
                    Arc::from(key.namespace.as_str()),
                    Arc::from(key.name.as_str()),
                );
                self.remove_slice(&slot);
            }
            "Node" => {
                let name: Arc<str> = Arc::from(key.name.as_str());
                if self.nodes.remove(&name).is_some() {
                    self.dirty_nodes.insert(name);
                    self.nodes_changed = true;
                }
            }
            "Pod" => {
                let slot = (key.namespace.clone(), key.name.clone());
                if let Some(old) = self.policy_view.pods.remove(&slot) {
                    self.policy_pod_changes.push((Some(old), None));
                }
            }
            "Namespace" => {
                self.policy_full |= self.policy_view.namespaces.remove(&key.name).is_some();
            }
            "NetworkPolicy" => {
                let slot = (key.namespace.clone(), key.name.clone());
                self.policy_full |= self.policy_view.policies.remove(&slot).is_some();
            }
            _ => {}
        }
    }

    fn remove_slice(&mut self, slot: &SliceKey) {
        if let Some(old) = self.slices.remove(slot) {
            self.dirty_services.insert(old.service.clone());
            if let Some(set) = self.slices_by_service.get_mut(&old.service) {
                set.remove(slot);
                if set.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
        }
    }

    fn note(&mut self, key: &ObjectKey, rejections: Vec<Rejection>, skipped: bool) {
        if rejections.is_empty() {
            return;
        }
        let list = self.problems.entry(key.clone()).or_default();
        list.extend(rejections.into_iter().map(|rejection| Problem {
            object: key.clone(),
            rejection,
            skipped,
        }));
    }

    /// Current problems, by object.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }

    /// Objects Setpoint deliberately does not proxy, with the reason.
    pub fn ignored(&self) -> impl Iterator<Item = (&ObjectKey, &&'static str)> {
        self.ignored.iter()
    }

    pub fn node_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.nodes.keys()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    fn zone_keys(&self) -> Vec<Option<Arc<str>>> {
        let mut zones: Vec<Option<Arc<str>>> =
            self.nodes.values().map(|n| n.zone.clone()).collect();
        zones.push(None);
        zones.sort();
        zones.dedup();
        zones
    }

    /// Applies every pending change and reports which nodes changed.
    pub fn commit(&mut self) -> CommitOutcome {
        let mut outcome = CommitOutcome::default();
        let mut global_changed = false;
        let mut changed_zones: BTreeSet<Option<Arc<str>>> = BTreeSet::new();
        // Zones whose fragment was created in this commit: nothing of any
        // old plan is in them yet.
        let mut new_zones: BTreeSet<Option<Arc<str>>> = BTreeSet::new();

        if self.nodes_changed {
            let zones = self.zone_keys();
            let known: Vec<Option<Arc<str>>> = self.zones.keys().cloned().collect();
            if zones != known {
                // Per-zone views are built per known zone; a new or vanished
                // zone means every zone-aware Service is planned again.
                self.dirty_services
                    .extend(self.zone_services.iter().cloned());
                for zone in &zones {
                    if !self.zones.contains_key(zone) {
                        self.zones.insert(zone.clone(), Builder::default());
                        new_zones.insert(zone.clone());
                    }
                }
                self.zones.retain(|z, _| zones.contains(z));
                changed_zones.extend(zones);
            }
            let cluster_atoms = self.cluster_cidr_atoms();
            let old = std::mem::take(&mut self.cluster_atoms);
            global_changed |= self.global.replace(&old, &cluster_atoms);
            self.cluster_atoms = cluster_atoms;
        }

        // Claims first: a Service that loses or wins a frontend is replanned.
        let mut dirty: BTreeSet<ServiceId> = std::mem::take(&mut self.dirty_services);
        let mut owners_changed = false;
        for id in dirty.clone() {
            let new = self.services.get(&id).map(frontends).unwrap_or_default();
            let old = self.claimed_by.remove(&id).unwrap_or_default();
            for f in old.iter().filter(|f| !new.contains(f)) {
                if let Some(set) = self.claims.get_mut(f) {
                    let was = set.first().cloned();
                    set.remove(&id);
                    if let Some(winner) = set.first().filter(|w| Some(*w) != was.as_ref()) {
                        dirty.insert(winner.clone());
                        owners_changed = true;
                    }
                    if set.is_empty() {
                        self.claims.remove(f);
                    }
                }
            }
            for f in new.iter().filter(|f| !old.contains(f)) {
                let set = self.claims.entry(*f).or_default();
                let was = set.first().cloned();
                set.insert(id.clone());
                if let Some(loser) = was.filter(|w| set.first() != Some(w)) {
                    dirty.insert(loser);
                    owners_changed = true;
                }
            }
            if !new.is_empty() {
                self.claimed_by.insert(id, new);
            }
        }

        let zones = self.zone_keys();
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut changes: Vec<PlanChange> = Vec::with_capacity(dirty.len());
        for id in &dirty {
            outcome.replanned_services += 1;
            let old = self.plans.remove(id);
            let old_scope = self.scopes.remove(id);
            let new = self.plan(id, &zones);
            let new_scope = new.as_ref().map(ServicePlan::node_scope);
            changes.push(PlanChange {
                id: id.clone(),
                old,
                new,
                old_scope,
                new_scope,
            });
        }
        let passes: &[Pass] = if owners_changed {
            &[Pass::Retract, Pass::Extend]
        } else {
            &[Pass::Both]
        };
        for pass in passes {
            for change in &changes {
                global_changed |=
                    self.apply_change(change, *pass, &new_zones, &mut touched, &mut changed_zones);
            }
        }
        for change in changes {
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

        // Nodes added or changed are built whole, in parallel.
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
                }
            }
            touched.push(name);
        }
        if self.policy_full || self.nodes_changed {
            self.policy_pod_changes.clear();
            touched.extend(self.recompute_policy(None));
        } else if !self.policy_pod_changes.is_empty() {
            let affected = self.nodes_affected_by_pod_changes();
            touched.extend(self.recompute_policy(Some(affected)));
        }
        self.nodes_changed = false;

        if global_changed {
            // Sorted input: the set is bulk-built.
            outcome.changed_nodes = self.nodes.keys().cloned().collect();
            return outcome;
        }
        if !changed_zones.is_empty() {
            for (name, node) in &self.nodes {
                if changed_zones.contains(&node.zone) {
                    touched.push(name.clone());
                }
            }
        }
        touched.retain(|n| self.nodes.contains_key(n));
        touched.sort();
        touched.dedup();
        outcome.changed_nodes = touched.into_iter().collect();
        outcome
    }

    /// Nodes whose policy fragment a pod change can alter: the pod's node
    /// (before and after) and the nodes with sets whose members change — the
    /// pod enters or leaves them, or a member's addresses or ports change.
    fn nodes_affected_by_pod_changes(&mut self) -> BTreeSet<Arc<str>> {
        let mut affected = BTreeSet::new();
        for (old, new) in std::mem::take(&mut self.policy_pod_changes) {
            for pod in [&old, &new].into_iter().flatten() {
                if let Some(node) = &pod.node {
                    affected.insert(node.clone());
                }
            }
            let same_addresses = match (&old, &new) {
                (Some(a), Some(b)) => a.ips == b.ips && a.named_ports == b.named_ports,
                _ => false,
            };
            for (peer, nodes) in &self.peer_nodes {
                let was = old
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                let is = new
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                if was != is || (is && !same_addresses) {
                    affected.extend(nodes.iter().cloned());
                }
            }
        }
        affected
    }

    /// Rebuilds the policy fragment of `only` those nodes, or of every node;
    /// returns the nodes whose policy fragment changed.
    fn recompute_policy(&mut self, only: Option<BTreeSet<Arc<str>>>) -> Vec<Arc<str>> {
        self.policy_full = false;
        let targets: Vec<Arc<str>> = match &only {
            None => self.nodes.keys().cloned().collect(),
            Some(set) => set
                .iter()
                .filter(|n| self.nodes.contains_key(*n))
                .cloned()
                .collect(),
        };
        let view = &self.policy_view;
        let police = self.config.police_node_traffic;
        let by_node = view.pods_by_node();
        let members = policy::MemberCache::default();
        let fresh: Vec<(Arc<str>, Fragment, Vec<PeerUse>)> = targets
            .par_iter()
            .map(|name| {
                let local = by_node.get(&**name).map(Vec::as_slice).unwrap_or(&[]);
                let (fragment, used) = view.node_fragment(local, police, &members);
                (name.clone(), fragment, used)
            })
            .collect();
        if only.is_none() {
            // Nodes that are gone lose their fragment and their peer uses.
            let gone: Vec<Arc<str>> = self
                .node_peers
                .keys()
                .chain(self.policy_fragments.keys())
                .filter(|n| !self.nodes.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                self.policy_fragments.remove(&name);
                self.forget_peers(&name);
            }
        }
        let mut changed = Vec::new();
        for (name, fragment, used) in fresh {
            self.forget_peers(&name);
            for peer in &used {
                self.peer_nodes
                    .entry(peer.clone())
                    .or_default()
                    .insert(name.clone());
            }
            self.node_peers.insert(name.clone(), used);
            let same = self
                .policy_fragments
                .get(&name)
                .is_some_and(|old| old.digest() == fragment.digest());
            if !same {
                changed.push(name.clone());
                self.policy_fragments.insert(name, Arc::new(fragment));
            }
        }
        changed
    }

    fn forget_peers(&mut self, node: &Arc<str>) {
        for peer in self.node_peers.remove(node).unwrap_or_default() {
            if let Some(nodes) = self.peer_nodes.get_mut(&peer) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.peer_nodes.remove(&peer);
                }
            }
        }
    }

    /// Edits the fragments a plan change touches; returns whether the
    /// shared `services` fragment changed.
    fn apply_change(
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

    fn index_scope(&mut self, id: &ServiceId, scope: &NodeScope) {
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

    fn unindex_scope(&mut self, id: &ServiceId, scope: Option<&NodeScope>) {
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

    fn plan(&mut self, id: &ServiceId, zones: &[Option<Arc<str>>]) -> Option<ServicePlan> {
        let svc = self.services.get(id)?;
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|slot| self.slices.get(slot))
            .collect();
        let claims = &self.claims;
        let mut lost = Vec::new();
        let owns = |f: &Frontend| claims.get(f).and_then(|s| s.first()) == Some(id);
        for f in frontends(svc) {
            if !owns(&f)
                && let Some(winner) = claims.get(&f).and_then(|s| s.first())
            {
                lost.push(Rejection {
                    object: format!("Service {id}"),
                    reason: format!("{f} is also claimed by Service {winner}, which keeps it"),
                });
            }
        }
        let plan = plan_service(svc, &slices, zones, &self.config, &owns);
        let key = ObjectKey {
            kind: "Service",
            namespace: id.namespace.to_string(),
            name: id.name.to_string(),
        };
        if let Some(list) = self.problems.get_mut(&key) {
            list.retain(|p| !p.rejection.reason.contains("is also claimed by"));
        }
        self.note(&key, lost, false);
        Some(plan)
    }

    fn cluster_cidr_atoms(&self) -> Vec<Atom> {
        let mut nets: Vec<ipnet::IpNet> = if self.config.cluster_cidrs.is_empty() {
            self.nodes
                .values()
                .flat_map(|n| n.pod_cidrs.iter().copied())
                .collect()
        } else {
            self.config.cluster_cidrs.clone()
        };
        nets.sort();
        nets.dedup();
        nets.into_iter()
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

    /// The desired state of one node, or `None` for an unknown node.
    pub fn node_state(&self, name: &str) -> Option<NodeDataplane> {
        let node = self.nodes.get(name)?;
        let mut parts: Vec<(String, Arc<Fragment>)> = vec![
            (PART_BASE.to_string(), self.base.clone()),
            (PART_SERVICES.to_string(), self.global.fragment.clone()),
        ];
        if let Some(zone) = self.zones.get(&node.zone) {
            let label = node.zone.as_deref().unwrap_or("-");
            parts.push((format!("zone/{label}"), zone.fragment.clone()));
        }
        if let Some(own) = self.node_fragments.get(name) {
            parts.push((format!("node/{name}"), own.fragment.clone()));
        }
        if let Some(policy) = self.policy_fragments.get(name).filter(|f| !f.is_empty()) {
            parts.push((format!("policy/{name}"), policy.clone()));
        }
        Some(NodeDataplane::from_parts(parts))
    }

    /// The digest of one node's state, without building the state: the
    /// same as `node_state(name)?.digest()`.
    pub fn node_digest(&self, name: &str) -> Option<Digest> {
        let node = self.nodes.get(name)?;
        let mut acc = *self.base.accumulator();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{self, ClusterShape, Kind};

    /// Every incremental commit leaves each node exactly as a fresh index
    /// built from the same objects would, including NodePort virtual servers
    /// that live in per-node fragments.
    #[test]
    fn incremental_equals_from_scratch_on_synthetic_cluster() {
        let shape = ClusterShape {
            nodes: 12,
            services: 60,
            endpoints: 240,
            zones: 3,
        };
        let mut objects = synthetic::cluster(&shape);
        let mut index = Index::new(ComputeConfig::default());
        for o in objects.clone() {
            index.upsert(o);
        }
        index.commit();
        let mut generation = std::collections::HashMap::new();
        for (step, i) in [0usize, 5, 6, 7, 8, 12, 0, 5].into_iter().enumerate() {
            let kind = synthetic::kind_of(i);
            let g = generation.entry(i).or_insert(0);
            *g += 1;
            let slice = synthetic::slice(i, &shape, *g);
            let slot = shape.nodes + 2 * i + 1;
            objects[slot] = slice.clone();
            index.upsert(slice);
            let outcome = index.commit();
            let mut fresh = Index::new(ComputeConfig::default());
            for o in objects.clone() {
                fresh.upsert(o);
            }
            fresh.commit();
            for name in fresh.node_names() {
                let (a, b) = (
                    index.node_state(name).unwrap(),
                    fresh.node_state(name).unwrap(),
                );
                assert_eq!(a.digest(), b.digest(), "step {step} ({kind:?}) node {name}");
                assert!(a == b);
                assert_eq!(index.node_digest(name), Some(a.digest()));
            }
            if kind != Kind::InternalLocal {
                assert!(!outcome.changed_nodes.is_empty(), "step {step} ({kind:?})");
            }
        }
    }

    /// Pod label changes rebuild only some nodes' policy fragments; the
    /// result must still equal a fresh index's.
    #[test]
    fn incremental_policy_equals_from_scratch() {
        use crate::synthetic::PolicyShape;
        let shape = PolicyShape {
            nodes: 6,
            namespaces: 4,
            pods: 40,
            policies: 12,
        };
        let mut objects = synthetic::policy_cluster(&shape);
        let mut index = Index::new(ComputeConfig::default());
        for o in objects.clone() {
            index.upsert(o);
        }
        index.commit();
        let first_pod = shape.nodes + shape.namespaces;
        for step in 0..15 {
            let i = (step * 7) % shape.pods;
            let pod = synthetic::policy_pod(i, &shape, step + 1);
            objects[first_pod + i] = pod.clone();
            index.upsert(pod);
            let outcome = index.commit();
            let mut fresh = Index::new(ComputeConfig::default());
            for o in objects.clone() {
                fresh.upsert(o);
            }
            fresh.commit();
            for name in fresh.node_names() {
                let (a, b) = (
                    index.node_state(name).unwrap(),
                    fresh.node_state(name).unwrap(),
                );
                assert!(a == b, "step {step} node {name}");
                assert_eq!(index.node_digest(name), Some(b.digest()));
            }
            assert!(
                outcome.changed_nodes.len() < shape.nodes,
                "step {step}: not every node"
            );
        }
    }
}
