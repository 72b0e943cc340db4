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
//!
//! Each kind of object has its own module behind [`IndexResource`]
//! (`service`, `endpoints`, `node`, `pod`, `namespace`, `network_policy`,
//! `service_cidr`);
//! `commit` runs the pending changes through named steps, `guard` and
//! `check` validate what they leave.

mod builder;
mod check;
mod claims;
mod cluster_network_policy;
mod commit;
mod endpoints;
mod fragments;
mod guard;
mod namespace;
mod network_policy;
mod node;
mod pod;
mod policy_fragments;
mod problems;
mod service;
mod service_cidr;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::Fragment;
use setpoint_dataplane::validate::Invalid;

use crate::layout::{ComputeConfig, base_fragment};
use crate::model::{EndpointSlice, Node, Service, ServiceId};
use crate::object::{ClusterObject, Kind, ObjectKey};
use crate::plan::{Atom, Frontend, NodeScope, ServicePlan};
use crate::policy::cluster::api::ClusterNetworkPolicy;
use crate::policy::{PeerUse, Pod as PolicyPod, PolicyView};

use builder::Builder;
use check::{NodeCheck, SharedCheck};
use endpoints::SliceKey;

pub use commit::CommitOutcome;
pub use problems::{Problem, ProblemKind};

pub const PART_BASE: &str = "base";
pub const PART_SERVICES: &str = "services";

/// One kind of object, read into the index by its own module (the shape
/// of linkerd2's `IndexNamespacedResource`): a kind is a type, and adding
/// one is adding a module. Both take effect at the next [`Index::commit`].
trait IndexResource<T> {
    /// Adds or replaces the object `key` names.
    fn apply(&mut self, key: &ObjectKey, object: T);
    /// Removes the object `key` names, if it is known.
    fn delete(&mut self, key: &ObjectKey);
}

/// The cluster as compute holds it, and every node's state as of the last
/// [`Index::commit`]. Written through `upsert`, `delete` and `commit`
/// only; between a change and the next commit, states are those of the
/// last commit.
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
    policy_pod_changes: Vec<(Option<PolicyPod>, Option<PolicyPod>)>,
    /// Nodes a ClusterNetworkPolicy change reaches: those with a local pod
    /// it was or is about.
    policy_subject_nodes: BTreeSet<Arc<str>>,
    /// Policy fragments the last commit rebuilt (changed or not), and
    /// those whose sets alone it recomputed.
    policy_rebuilt: usize,
    policy_patched: usize,
    policy_fragments: BTreeMap<Arc<str>, Arc<Fragment>>,
    /// Which nodes have sets drawn from each peer, so that a pod change
    /// rebuilds only the nodes whose sets it enters or leaves.
    peer_nodes: HashMap<PeerUse, BTreeSet<Arc<str>>>,
    /// Each node's sets drawn from pods, by name.
    node_sets: HashMap<Arc<str>, crate::policy::NamedSets>,
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
    /// `--service-cidr` as configured; `config.service_cidrs` holds these
    /// and `service_cidr_objects`' CIDRs.
    service_cidr_flag: Vec<IpNet>,
    /// Each ServiceCIDR object's CIDRs that were taken, by name.
    service_cidr_objects: BTreeMap<String, Vec<IpNet>>,
    /// A ServiceCIDR object changed since the last commit.
    service_cidrs_changed: bool,
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
    pub fn new(mut config: ComputeConfig) -> Self {
        let flag = config.service_cidrs.clone();
        config.service_cidrs = service_cidr::effective(&flag, &BTreeMap::new());
        Index {
            base: Arc::new(base_fragment(&config)),
            config,
            service_cidr_flag: flag,
            ..Default::default()
        }
    }

    /// The configuration as compute uses it now: `service_cidrs` holds the
    /// ServiceCIDR objects' CIDRs beside `--service-cidr`'s (as of the
    /// last commit), so a fresh index built with it computes the same.
    pub fn config(&self) -> &ComputeConfig {
        &self.config
    }

    /// Adds or replaces an object. Takes effect at the next [`Index::commit`].
    pub fn upsert(&mut self, object: ClusterObject) {
        let key = object.key();
        self.problems.remove(&key);
        self.ignored.remove(&key);
        match object {
            ClusterObject::Service(o) => self.apply(&key, o),
            ClusterObject::EndpointSlice(o) => self.apply(&key, o),
            ClusterObject::Node(o) => {
                self.note_node_labels(&key.name, o.metadata.labels.clone());
                self.apply(&key, o)
            }
            ClusterObject::Pod(o) => self.apply(&key, o),
            ClusterObject::Namespace(o) => self.apply(&key, o),
            ClusterObject::NetworkPolicy(o) => self.apply(&key, o),
            ClusterObject::ServiceCidr(o) => self.apply(&key, o),
            ClusterObject::ClusterNetworkPolicy(o) => self.apply(&key, o),
        }
    }

    /// Removes an object. Takes effect at the next [`Index::commit`].
    pub fn delete(&mut self, key: &ObjectKey) {
        use k8s_openapi::api::networking::v1 as networking;
        use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
        self.problems.remove(key);
        self.ignored.remove(key);
        match key.kind {
            Kind::Service => IndexResource::<core::Service>::delete(self, key),
            Kind::EndpointSlice => IndexResource::<discovery::EndpointSlice>::delete(self, key),
            Kind::Node => {
                self.note_node_labels(&key.name, None);
                IndexResource::<core::Node>::delete(self, key)
            }
            Kind::Pod => IndexResource::<core::Pod>::delete(self, key),
            Kind::Namespace => IndexResource::<core::Namespace>::delete(self, key),
            Kind::NetworkPolicy => IndexResource::<networking::NetworkPolicy>::delete(self, key),
            Kind::ServiceCidr => IndexResource::<networking::ServiceCIDR>::delete(self, key),
            Kind::ClusterNetworkPolicy => IndexResource::<ClusterNetworkPolicy>::delete(self, key),
        }
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
}
