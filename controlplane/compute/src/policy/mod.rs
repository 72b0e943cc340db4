//! NetworkPolicy and ClusterNetworkPolicy → per-node ipsets and filter
//! chains, for the pods on that node.
//!
//! ```text
//!  FORWARD, OUTPUT ─▶ SP-POLICY ─┬─ established/related: RETURN
//!                                ├─ -s <pod ip> ─▶ SP-E-<pod>   egress of a policed local pod
//!                                └─ -d <pod ip> ─▶ SP-I-<pod>   ingress of a policed local pod
//!  SP-E/SP-I-<pod>: Admin rules (RETURN / DROP / -g tail for Pass), then
//!    NetworkPolicy: one rule per (policy rule, peer, port) → RETURN when allowed; DROP
//!    or, not isolated: Baseline rules (RETURN / DROP); the end returns (allowed)
//! ```
//!
//! A pod is policed in a direction when a NetworkPolicy isolates it there
//! or a ClusterNetworkPolicy selecting it has rules for it (`tiers`).
//!
//! Peers are sets, never rules per address: one `hash:ip` set per distinct
//! pod selector (named after the selector, so its name stays when members
//! change), one `hash:net` set per ipBlock (except-ranges as `nomatch`), and
//! for named ports in egress one `hash:ip,port` set of (peer IP, its port);
//! ClusterNetworkPolicy `nodes` peers a `hash:ip` set of node addresses
//! per selector, `networks` a `hash:net` set per CIDR list.
//! Chains are bounded by the node's pods, never by the cluster.
//!
//! `convert` reads NetworkPolicies, pods and namespaces into the model
//! below (failing closed); `chains` builds one node's fragment from it.

mod chains;
pub mod cluster;
mod convert;
mod sets;
mod tiers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::{Protocol, SetEntry};

pub use chains::{CHAIN_POLICY, LoggedVerdict, verdict_log_prefix};
pub use convert::{convert_namespace, convert_pod, convert_pod_reporting, convert_policy};
pub use sets::{NamedSets, SetSource};

/// A label selector, validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Expression>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expression {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// The empty selector, as a missing one reads.
    pub fn everything() -> Self {
        Selector {
            match_labels: BTreeMap::new(),
            expressions: Vec::new(),
        }
    }

    /// The empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    pub(super) fn canonical(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.match_labels {
            out.push_str(&format!("{k}={v};"));
        }
        let mut exprs: Vec<String> = self
            .expressions
            .iter()
            .map(|e| match e {
                Expression::In(k, v) => format!("{k} in {v:?}"),
                Expression::NotIn(k, v) => format!("{k} notin {v:?}"),
                Expression::Exists(k) => format!("{k} exists"),
                Expression::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        exprs.sort();
        out.push_str(&exprs.join(";"));
        out
    }
}

/// Which namespaces a pod peer is drawn from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    /// The policy's own namespace (a bare `podSelector`).
    Own(String),
    Selected(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodPeer {
    pub namespaces: Namespaces,
    pub pods: Selector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods(PodPeer),
    Block { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

/// One ingress or egress rule; empty lists mean "everyone" / "every port".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `None` when the policy does not isolate for ingress.
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: Option<Arc<str>>,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// (name, protocol, port) of every named container port.
    pub named_ports: Vec<(String, Protocol, u16)>,
}

impl Pod {
    pub(super) fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// Everything policy compute reads.
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    pub pods: BTreeMap<(String, String), Pod>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub policies: BTreeMap<(String, String), Policy>,
    /// ClusterNetworkPolicies by name (cluster-scoped).
    pub cluster_policies: BTreeMap<String, cluster::ClusterPolicy>,
    /// Node labels by node name, for `nodes` peers (addresses come from
    /// the nodes compute knows).
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl PolicyView {
    fn namespace_matches(&self, scope: &Namespaces, namespace: &str) -> bool {
        match scope {
            Namespaces::Own(ns) => ns == namespace,
            Namespaces::Selected(sel) => {
                let empty = BTreeMap::new();
                sel.matches(self.namespaces.get(namespace).unwrap_or(&empty))
            }
        }
    }

    /// Pods (not host-network) a pod peer selects.
    pub(super) fn peer_pods<'a>(&'a self, peer: &'a PodPeer) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.values().filter(move |p| {
            !p.host_network
                && self.namespace_matches(&peer.namespaces, &p.namespace)
                && peer.pods.matches(&p.labels)
        })
    }

    /// Policies selecting a pod, split by direction.
    pub(super) fn selecting<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .range((pod.namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _)| *ns == pod.namespace)
            .map(|(_, pol)| pol)
            .filter(move |pol| pol.pod_selector.matches(&pod.labels))
    }

    /// Whether a pod is (or, for `old`, was) a member of a peer's sets.
    pub fn peer_has(&self, peer: &PeerUse, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        match peer {
            PeerUse::AllPods => true,
            PeerUse::Pods(p) => {
                self.namespace_matches(&p.namespaces, &pod.namespace) && p.pods.matches(&pod.labels)
            }
        }
    }

    /// Pods by node, for [`PolicyView::node_fragment`].
    pub fn pods_by_node(&self) -> BTreeMap<&str, Vec<&Pod>> {
        let mut out: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for pod in self.pods.values() {
            if let Some(node) = pod.node.as_deref()
                && !pod.host_network
            {
                out.entry(node).or_default().push(pod);
            }
        }
        out
    }
}

/// The pods a set draws its members from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerUse {
    Pods(PodPeer),
    /// Every pod (a named port with no peer restriction).
    AllPods,
}

/// Set contents by set name, computed once per pass and shared by every
/// node that has the set.
#[derive(Default)]
pub struct MemberCache(std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<SetEntry>>>>);

impl MemberCache {
    /// The contents of set `name`, computed by `compute` on a miss.
    pub fn get_or_compute(
        &self,
        name: &str,
        compute: impl FnOnce() -> Vec<SetEntry>,
    ) -> Arc<Vec<SetEntry>> {
        if let Ok(cache) = self.0.lock()
            && let Some(hit) = cache.get(name)
        {
            return hit.clone();
        }
        let entries = Arc::new(compute());
        if let Ok(mut cache) = self.0.lock() {
            cache.insert(name.to_string(), entries.clone());
        }
        entries
    }
}
