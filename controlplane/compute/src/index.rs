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

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use setpoint_dataplane::diff::{Change, Diff, apply_to_fragment, diff_fragments};
use setpoint_dataplane::validate::Invalid;
use setpoint_dataplane::{
    Digest, Family, Fragment, NodeDataplane, SetEntry, VirtualServerKey, template,
};

use rayon::prelude::*;

use crate::admit::{AddressContext, LeftOutReason, Refusal, RefusalReason, frontend_count};
use crate::convert::{self, Rejection, ServiceOutcome, SliceOutcome};
use crate::layout::{ComputeConfig, SetId, base_fragment};
use crate::model::{EndpointSlice, Node, Service, ServiceId};
use crate::object::{ClusterObject, Kind, ObjectKey};
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

/// A problem with an object, kept until the object changes or goes away
/// (or, for what compute decided about a Service, until it is planned again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    pub rejection: Rejection,
    /// True when the whole object was set aside; false for a warning about
    /// a part of it (one endpoint, one annotation, a port conflict).
    pub skipped: bool,
    pub kind: ProblemKind,
    /// The addresses it concerns (so `explain` can say why one is not
    /// served): a refused address, a taken frontend's, or every address of
    /// a Service left out; empty for a problem with an object as written.
    pub addresses: Vec<IpAddr>,
}

/// What a problem is about; bounded, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// The object as written (conversion, validation of its fields).
    Object,
    /// A frontend another Service keeps.
    FrontendTaken,
    /// One address of a Service that is not served.
    AddressRefused(RefusalReason),
    /// A whole Service that is not served.
    LeftOut(LeftOutReason),
}

/// Every address a Service asks to be served on.
fn addresses_of(svc: &Service) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = svc
        .cluster_ips
        .iter()
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
        .copied()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A Service as compute serves it.
enum Served<'a> {
    Absent,
    LeftOut(LeftOutReason, String),
    Serve(Cow<'a, Service>, Vec<Refusal>),
}

/// The shared part of a zone's nodes' states (base, services, zone) as
/// last validated: checked whole the first time and after any problem,
/// otherwise by what changed since.
struct SharedCheck {
    services: Arc<Fragment>,
    zone: Arc<Fragment>,
    flat: Fragment,
    invalid: Vec<Invalid>,
}

/// What a zone's shared part gained at its last check: what a node whose
/// own parts did not change must be checked against.
#[derive(Default)]
struct SharedGain {
    /// Checked whole: so is every node of the zone.
    whole: bool,
    entries: Vec<(String, SetEntry)>,
    virtual_servers: Vec<VirtualServerKey>,
}

/// A node's own parts as last validated (the same `Arc`s while they are
/// not edited), with the state's problems.
struct NodeCheck {
    own: Option<Arc<Fragment>>,
    policy: Option<Arc<Fragment>>,
    invalid: Vec<Invalid>,
}

fn same_part(a: &Option<Arc<Fragment>>, b: Option<&Arc<Fragment>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Most Services excluded in one commit for invalid states before the
/// rest is committed as it is (each round excludes at least one).
const MAX_GUARD_ROUNDS: usize = 64;

/// What one round of a commit changed.
#[derive(Default)]
struct PassChanges {
    /// The shared `services` fragment: every node changed.
    global: bool,
    zones: BTreeSet<Option<Arc<str>>>,
    touched: Vec<Arc<str>>,
}

impl PassChanges {
    fn merge(&mut self, other: PassChanges) {
        self.global |= other.global;
        self.zones.extend(other.zones);
        self.touched.extend(other.touched);
    }

    /// The live nodes whose state these changes touch, sorted.
    fn nodes(&self, index: &Index) -> Vec<Arc<str>> {
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

/// Whether `part` holds `atom`.
fn atom_in(part: &Fragment, atom: &Atom) -> bool {
    match atom {
        Atom::Entry(set, family, entry) => part
            .entries(&set.name(*family))
            .is_some_and(|e| e.contains(entry)),
        Atom::VirtualServer(key, _) => part.virtual_server(key).is_some(),
        Atom::Address(ip) => part.has_address(ip),
    }
}

/// The shared part of a zone's states, checked against the last check
/// when there was one without problems (`validate`'s checks on what the
/// fragments' diff adds: entries against their set, set fill, virtual
/// servers' families; anything else is checked whole), else whole.
fn check_shared(
    base: &Arc<Fragment>,
    services: &Arc<Fragment>,
    zone: &Arc<Fragment>,
    previous: Option<&SharedCheck>,
) -> (SharedCheck, SharedGain) {
    let mut gain = SharedGain::default();
    let mut invalid: Vec<Invalid>;
    // The last checked union with the diff applied; an atom added where
    // another part has it fails to apply, and is checked whole.
    let delta = previous.filter(|p| p.invalid.is_empty()).and_then(|p| {
        let mut changes = diff_fragments(&p.services, services).changes;
        changes.extend(diff_fragments(&p.zone, zone).changes);
        let checkable = changes.iter().all(|c| {
            matches!(
                c,
                Change::EntriesAdded { .. }
                    | Change::EntriesRemoved { .. }
                    | Change::AddressAdded { .. }
                    | Change::AddressRemoved { .. }
                    | Change::VirtualServerAdded { .. }
                    | Change::VirtualServerEdited { .. }
                    | Change::VirtualServerRemoved { .. }
                    | Change::RealServerAdded { .. }
                    | Change::RealServerEdited { .. }
                    | Change::RealServerRemoved { .. }
            )
        });
        if !checkable {
            return None;
        }
        let mut flat = p.flat.clone();
        let diff = Diff { changes };
        apply_to_fragment(&mut flat, &diff).ok()?;
        Some((flat, diff.changes))
    });
    let flat: Fragment;
    match delta {
        Some((applied, changes)) => {
            flat = applied;
            // What the diff adds, with the definitions of the sets it
            // fills, validated as a state of its own: `validate`'s own
            // checks of entries and virtual servers. Set fill is the
            // whole set's, counted here.
            let mut added = Fragment::new();
            let mut filled: BTreeSet<&String> = BTreeSet::new();
            for change in &changes {
                match change {
                    Change::EntriesAdded { set, entries } => {
                        filled.insert(set);
                        if let Some(spec) = flat.set(set) {
                            added.put_set(set.clone(), spec.clone());
                        }
                        for entry in entries {
                            added.add_entry(set, entry.clone());
                            gain.entries.push((set.clone(), entry.clone()));
                        }
                    }
                    Change::VirtualServerAdded { key, .. }
                    | Change::VirtualServerEdited { key, .. }
                    | Change::RealServerAdded { key, .. }
                    | Change::RealServerEdited { key, .. } => {
                        if matches!(change, Change::VirtualServerAdded { .. }) {
                            gain.virtual_servers.push(*key);
                        }
                        if let Some(vs) = flat.virtual_server(key) {
                            added.put_virtual_server(*key, vs.clone());
                        }
                    }
                    _ => {}
                }
            }
            invalid = NodeDataplane::from_fragment(added)
                .validate()
                .into_iter()
                .filter(|p| !matches!(p, Invalid::SetOverfull { .. }))
                .collect();
            for set in filled {
                invalid.extend(overfull(&flat, set, flat.entry_count(set)));
            }
        }
        None => {
            gain.whole = true;
            let mut whole = Fragment::clone(services);
            let overlap = whole.absorb(base) + whole.absorb(zone);
            invalid = NodeDataplane::from_fragment(whole.clone()).validate();
            if overlap > 0 {
                invalid.push(Invalid::DuplicatedAcrossParts { atoms: overlap });
            }
            flat = whole;
        }
    }
    invalid.dedup();
    let check = SharedCheck {
        services: services.clone(),
        zone: zone.clone(),
        flat,
        invalid,
    };
    (check, gain)
}

/// The set overfull with `entries`, if it is.
fn overfull(flat: &Fragment, set: &str, entries: usize) -> Option<Invalid> {
    let spec = flat.set(set)?;
    (entries > spec.maxelem as usize).then(|| Invalid::SetOverfull {
        set: set.to_string(),
        entries,
        maxelem: spec.maxelem,
    })
}

/// The template twin of a concrete virtual server key.
fn twin(key: &VirtualServerKey) -> VirtualServerKey {
    VirtualServerKey {
        address: template::template_address(key.family()),
        ..*key
    }
}

/// The problems of one node's state, checked whole: those of its zone's
/// shared part, of its own parts over the base (`NodeDataplane::validate`),
/// and what only the union shows — an atom in two parts, a set the parts
/// overfill together, a NodePort template on a node address where a
/// virtual server of its own sits. Equals `validate` of the whole state
/// without merging the shared part per node.
fn check_node(base: &Arc<Fragment>, shared: &SharedCheck, mine: &[&Arc<Fragment>]) -> Vec<Invalid> {
    let mut invalid = shared.invalid.clone();
    let mut parts: Vec<(String, Arc<Fragment>)> = vec![(PART_BASE.to_string(), base.clone())];
    for (i, part) in mine.iter().enumerate() {
        parts.push((format!("own/{i}"), Arc::clone(part)));
    }
    for problem in NodeDataplane::from_parts(parts).validate() {
        if !invalid.contains(&problem) {
            invalid.push(problem);
        }
    }
    let mut flat = shared.flat.clone();
    let overlap: u64 = mine.iter().map(|part| flat.absorb(part)).sum();
    if overlap > 0 {
        invalid.push(Invalid::DuplicatedAcrossParts { atoms: overlap });
    }
    let sets: BTreeSet<&String> = mine
        .iter()
        .flat_map(|part| part.all_entries().map(|(set, _)| set))
        .collect();
    for set in sets {
        if let Some(problem) = overfull(&flat, set, flat.entry_count(set))
            && !invalid.contains(&problem)
        {
            invalid.push(problem);
        }
    }
    for family in Family::ALL {
        for address in template::node_port_addresses(&flat, family) {
            for (key, _) in flat.virtual_servers_at(address) {
                if flat.virtual_server(&twin(key)).is_some() {
                    invalid.push(Invalid::NodePortCollision {
                        collision: template::Collision { key: *key },
                    });
                }
            }
        }
    }
    invalid
}

/// The problems of a node whose own parts did not change since a check
/// without problems, after its zone's shared part gained `gain`: only
/// what the gained atoms can break with the node's own parts.
fn check_gain(shared: &SharedCheck, gain: &SharedGain, mine: &[&Arc<Fragment>]) -> Vec<Invalid> {
    let mut invalid = shared.invalid.clone();
    let has = |set: &str, entry: &SetEntry| {
        mine.iter()
            .any(|p| p.entries(set).is_some_and(|e| e.contains(entry)))
    };
    let mut duplicated = 0u64;
    let mut filled: BTreeSet<&String> = BTreeSet::new();
    for (set, entry) in &gain.entries {
        if has(set, entry) {
            duplicated += 1;
        }
        if mine.iter().any(|p| p.entry_count(set) > 0) {
            filled.insert(set);
        }
    }
    for set in filled {
        let entries =
            shared.flat.entry_count(set) + mine.iter().map(|p| p.entry_count(set)).sum::<usize>();
        invalid.extend(overfull(&shared.flat, set, entries));
    }
    let vs_anywhere = |key: &VirtualServerKey| {
        shared.flat.virtual_server(key).is_some()
            || mine.iter().any(|p| p.virtual_server(key).is_some())
    };
    for key in &gain.virtual_servers {
        if mine.iter().any(|p| p.virtual_server(key).is_some()) {
            duplicated += 1;
        }
        let addresses = |family| {
            mine.iter()
                .flat_map(move |p| template::node_port_addresses(p, family))
                .collect::<Vec<IpAddr>>()
        };
        if template::is_template(key) {
            for address in addresses(key.family()) {
                let concrete = VirtualServerKey { address, ..*key };
                if vs_anywhere(&concrete) {
                    invalid.push(Invalid::NodePortCollision {
                        collision: template::Collision { key: concrete },
                    });
                }
            }
        } else if addresses(key.family()).contains(&key.address) && vs_anywhere(&twin(key)) {
            invalid.push(Invalid::NodePortCollision {
                collision: template::Collision { key: *key },
            });
        }
    }
    if duplicated > 0 {
        invalid.push(Invalid::DuplicatedAcrossParts { atoms: duplicated });
    }
    invalid
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

    /// Every address a Service lists as a ClusterIP, with those Services.
    cluster_ip_users: HashMap<IpAddr, BTreeSet<ServiceId>>,
    /// Every external or load-balancer IP, with the Services listing it.
    foreign_users: HashMap<IpAddr, BTreeSet<ServiceId>>,
    /// Each Service's listed (ClusterIPs, external and LB IPs), as claimed.
    listed: HashMap<ServiceId, (Vec<IpAddr>, Vec<IpAddr>)>,
    /// Every Node's address, and the pod CIDRs: what admission checks
    /// external and load-balancer IPs against.
    node_addresses: HashSet<IpAddr>,
    pod_cidrs: Vec<IpNet>,
    /// Services left out because their atoms made a state invalid; they
    /// are tried again at the next commit that changes anything.
    left_out_invalid: BTreeMap<ServiceId, String>,
    /// Nodes whose computed state is invalid for reasons no Service
    /// explains; the leader must not publish them.
    invalid_nodes: BTreeMap<Arc<str>, Vec<Invalid>>,
    shared_checks: HashMap<Option<Arc<str>>, SharedCheck>,
    node_checks: HashMap<Arc<str>, NodeCheck>,

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
                let new = match policy::convert_pod_reporting(&pod) {
                    Ok((model, warnings)) => {
                        self.note(&key, warnings, false);
                        model
                    }
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
                let (labels, warnings) = policy::convert_namespace(&ns);
                self.note(&key, warnings, false);
                if self.policy_view.namespaces.get(&key.name) != Some(&labels) {
                    self.policy_view.namespaces.insert(key.name.clone(), labels);
                    self.policy_full = true;
                }
            }
            ClusterObject::NetworkPolicy(np) => {
                let slot = (key.namespace.clone(), key.name.clone());
                match policy::convert_policy(&np) {
                    Ok((model, warnings)) => {
                        self.note(&key, warnings, false);
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
            Kind::Service => {
                let id = ServiceId::new(&key.namespace, &key.name);
                self.services.remove(&id);
                self.dirty_services.insert(id);
            }
            Kind::EndpointSlice => {
                let slot = (
                    Arc::from(key.namespace.as_str()),
                    Arc::from(key.name.as_str()),
                );
                self.remove_slice(&slot);
            }
            Kind::Node => {
                let name: Arc<str> = Arc::from(key.name.as_str());
                if self.nodes.remove(&name).is_some() {
                    self.dirty_nodes.insert(name);
                    self.nodes_changed = true;
                }
            }
            Kind::Pod => {
                let slot = (key.namespace.clone(), key.name.clone());
                if let Some(old) = self.policy_view.pods.remove(&slot) {
                    self.policy_pod_changes.push((Some(old), None));
                }
            }
            Kind::Namespace => {
                self.policy_full |= self.policy_view.namespaces.remove(&key.name).is_some();
            }
            Kind::NetworkPolicy => {
                let slot = (key.namespace.clone(), key.name.clone());
                self.policy_full |= self.policy_view.policies.remove(&slot).is_some();
            }
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
        let kinded = rejections
            .into_iter()
            .map(|r| (r, ProblemKind::Object, Vec::new()))
            .collect();
        self.note_kinds(key, kinded, skipped);
    }

    fn note_kinds(
        &mut self,
        key: &ObjectKey,
        rejections: Vec<(Rejection, ProblemKind, Vec<IpAddr>)>,
        skipped: bool,
    ) {
        if rejections.is_empty() {
            return;
        }
        let list = self.problems.entry(key.clone()).or_default();
        list.extend(
            rejections
                .into_iter()
                .map(|(rejection, kind, addresses)| Problem {
                    object: key.clone(),
                    rejection,
                    skipped,
                    kind,
                    addresses,
                }),
        );
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
    ///
    /// Every node state it leaves is validated (see [`Index::invalid_nodes`]):
    /// a Service whose atoms make a state invalid is left out, with a
    /// problem, and the rest is computed again without it.
    pub fn commit(&mut self) -> CommitOutcome {
        let pending = !self.dirty_services.is_empty()
            || !self.dirty_nodes.is_empty()
            || self.nodes_changed
            || self.policy_full
            || !self.policy_pod_changes.is_empty();
        // What was left out for an invalid state gets another chance: the
        // decision is taken again on the new objects, as a fresh index
        // would take it.
        let readmit: Vec<ServiceId> = if pending {
            std::mem::take(&mut self.left_out_invalid)
                .into_keys()
                .collect()
        } else {
            Vec::new()
        };
        // A readmitted Service that is left out again touches nodes and
        // changes nothing: those are not reported.
        let before: Option<HashMap<Arc<str>, Digest>> = (!readmit.is_empty()).then(|| {
            self.nodes
                .keys()
                .filter_map(|n| Some((n.clone(), self.node_digest(n)?)))
                .collect()
        });
        self.dirty_services.extend(readmit);
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
        outcome
    }

    /// Nodes whose computed state fails validation for a reason no Service
    /// explains (a NetworkPolicy, the configuration), with the problems.
    /// Their states must not be published: the node is held at its last
    /// state as a whole. NetworkPolicies are not blamed here — conversion
    /// keeps tenant text out of a state and leaves out what it cannot
    /// read, so what is left is scale (a peer set over its `maxelem`,
    /// more sets or chains than a state may hold), where leaving a policy
    /// out would un-isolate its pods.
    pub fn invalid_nodes(&self) -> &BTreeMap<Arc<str>, Vec<Invalid>> {
        &self.invalid_nodes
    }

    /// Updates which addresses Services list as ClusterIPs and as external
    /// or load-balancer IPs; Services whose admission this changes (an
    /// external IP that became or stopped being a ClusterIP) become dirty.
    fn update_listed(&mut self, dirty: &mut BTreeSet<ServiceId>) {
        let mut flipped: Vec<IpAddr> = Vec::new();
        for id in dirty.iter() {
            let new: (Vec<IpAddr>, Vec<IpAddr>) = match self.services.get(id) {
                Some(svc) => (
                    svc.cluster_ips.clone(),
                    svc.external_ips
                        .iter()
                        .chain(&svc.load_balancer_ips)
                        .copied()
                        .collect(),
                ),
                None => Default::default(),
            };
            let old = self.listed.remove(id).unwrap_or_default();
            for ip in old.0.iter().filter(|ip| !new.0.contains(ip)) {
                if let Some(users) = self.cluster_ip_users.get_mut(ip) {
                    users.remove(id);
                    if users.is_empty() {
                        self.cluster_ip_users.remove(ip);
                        flipped.push(*ip);
                    }
                }
            }
            for ip in new.0.iter().filter(|ip| !old.0.contains(ip)) {
                let users = self.cluster_ip_users.entry(*ip).or_default();
                if users.is_empty() {
                    flipped.push(*ip);
                }
                users.insert(id.clone());
            }
            for ip in old.1.iter().filter(|ip| !new.1.contains(ip)) {
                if let Some(users) = self.foreign_users.get_mut(ip) {
                    users.remove(id);
                    if users.is_empty() {
                        self.foreign_users.remove(ip);
                    }
                }
            }
            for ip in new.1.iter().filter(|ip| !old.1.contains(ip)) {
                self.foreign_users
                    .entry(*ip)
                    .or_default()
                    .insert(id.clone());
            }
            if !new.0.is_empty() || !new.1.is_empty() {
                self.listed.insert(id.clone(), new);
            }
        }
        for ip in flipped {
            dirty.extend(self.foreign_users.get(&ip).into_iter().flatten().cloned());
        }
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

    fn pod_cidrs_now(&self) -> Vec<IpNet> {
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

    /// A Service as compute serves it now: its admitted addresses, or left
    /// out over a budget or an earlier invalid state.
    fn served(&self, id: &ServiceId) -> Served<'_> {
        let Some(svc) = self.services.get(id) else {
            return Served::Absent;
        };
        if let Some(why) = self.left_out_invalid.get(id) {
            return Served::LeftOut(LeftOutReason::InvalidState, why.clone());
        }
        let context = AddressContext {
            config: &self.config,
            cluster_ips: &self.cluster_ip_users,
            pod_cidrs: &self.pod_cidrs,
            node_addresses: &self.node_addresses,
        };
        let (service, refusals) = context.admit(svc);
        let frontends = frontend_count(&service);
        let limit = self.config.max_service_frontends;
        if frontends > limit {
            return Served::LeftOut(
                LeftOutReason::TooManyFrontends,
                format!(
                    "left out: {frontends} frontends (ports × addresses, plus NodePorts) \
                     are more than the budget of {limit} (--max-service-frontends)"
                ),
            );
        }
        let endpoints: usize = self
            .slices_by_service
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|slot| self.slices.get(slot))
            .map(|s| s.endpoints.len())
            .sum();
        let limit = self.config.max_service_endpoints;
        if endpoints > limit {
            return Served::LeftOut(
                LeftOutReason::TooManyEndpoints,
                format!(
                    "left out: {endpoints} endpoints are more than the budget of {limit} \
                     (--max-service-endpoints)"
                ),
            );
        }
        Served::Serve(service, refusals)
    }

    /// One round of applying pending changes to the fragments.
    fn pass(&mut self, outcome: &mut CommitOutcome) -> PassChanges {
        let mut changes = PassChanges::default();
        // Zones whose fragment was created in this commit: nothing of any
        // old plan is in them yet.
        let mut new_zones: BTreeSet<Option<Arc<str>>> = BTreeSet::new();
        let mut dirty: BTreeSet<ServiceId> = std::mem::take(&mut self.dirty_services);

        if self.nodes_changed {
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
            self.update_node_context(&mut dirty);
        }
        self.update_listed(&mut dirty);

        // Claims first: a Service that loses or wins a frontend is replanned.
        let mut owners_changed = false;
        for id in dirty.clone() {
            let new = match self.served(&id) {
                Served::Serve(svc, _) => frontends(&svc),
                Served::Absent | Served::LeftOut(..) => Vec::new(),
            };
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
        let mut plan_changes: Vec<PlanChange> = Vec::with_capacity(dirty.len());
        for id in &dirty {
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
                    self.invalid_nodes.remove(&name);
                }
            }
            changes.touched.push(name);
        }
        if self.policy_full || self.nodes_changed {
            self.policy_pod_changes.clear();
            changes.touched.extend(self.recompute_policy(None));
        } else if !self.policy_pod_changes.is_empty() {
            let affected = self.nodes_affected_by_pod_changes();
            changes
                .touched
                .extend(self.recompute_policy(Some(affected)));
        }
        self.nodes_changed = false;
        changes
    }

    /// Validates the states of `nodes` (the shared part once per zone);
    /// returns the Services that explain an invalid state, each with the
    /// reason, to be left out. What no Service explains is kept in
    /// [`Index::invalid_nodes`].
    fn guard(&mut self, pass: &PassChanges) -> Vec<(ServiceId, String)> {
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
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: id.namespace.to_string(),
            name: id.name.to_string(),
        };
        // What compute decided at the last plan goes; what the object
        // itself carries stays.
        if let Some(list) = self.problems.get_mut(&key) {
            list.retain(|p| p.kind == ProblemKind::Object);
            if list.is_empty() {
                self.problems.remove(&key);
            }
        }
        let object = format!("Service {id}");
        let (plan, notes, skipped) = match self.served(id) {
            Served::Absent => return None,
            Served::LeftOut(reason, why) => (
                None,
                vec![(
                    Rejection {
                        object,
                        reason: why,
                    },
                    ProblemKind::LeftOut(reason),
                    self.services.get(id).map(addresses_of).unwrap_or_default(),
                )],
                true,
            ),
            Served::Serve(svc, refusals) => {
                let claims = &self.claims;
                let owns = |f: &Frontend| claims.get(f).and_then(|s| s.first()) == Some(id);
                let mut notes: Vec<(Rejection, ProblemKind, Vec<IpAddr>)> = refusals
                    .iter()
                    .map(|r| {
                        (
                            Rejection {
                                object: object.clone(),
                                reason: r.to_string(),
                            },
                            ProblemKind::AddressRefused(r.reason),
                            vec![r.address],
                        )
                    })
                    .collect();
                for f in frontends(&svc) {
                    if !owns(&f)
                        && let Some(winner) = claims.get(&f).and_then(|s| s.first())
                    {
                        notes.push((
                            Rejection {
                                object: object.clone(),
                                reason: format!(
                                    "{f} is also claimed by Service {winner}, which keeps it"
                                ),
                            },
                            ProblemKind::FrontendTaken,
                            match f {
                                Frontend::Vip(ip, ..) => vec![ip],
                                Frontend::NodePort(..) => Vec::new(),
                            },
                        ));
                    }
                }
                let slices: Vec<&EndpointSlice> = self
                    .slices_by_service
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|slot| self.slices.get(slot))
                    .collect();
                let plan = plan_service(&svc, &slices, zones, &self.config, &owns);
                (Some(plan), notes, false)
            }
        };
        self.note_kinds(&key, notes, skipped);
        plan
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
