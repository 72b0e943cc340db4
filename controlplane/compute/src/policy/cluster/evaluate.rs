//! The reference decision for one connection: which tier, policy and rule
//! decided each direction. Pure and direct (it scans, it does not index),
//! so it can be read against the API text; packet tests and `explain`
//! compare the node chains with it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use setpoint_dataplane::Protocol;

use super::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Tier};
use crate::policy::{Peer, Pod, PodPeer, PolicyRule, PolicyView, PortRef, PortSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A node as a `nodes` peer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePeer {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

/// What the NetworkPolicy tier says about one direction of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkPolicyVerdict {
    /// No NetworkPolicy isolates the pod in this direction: the Baseline
    /// tier decides.
    NotIsolated,
    Allowed,
    Denied,
}

/// The NetworkPolicy tier, as the caller has it. [`PolicyView`] is the
/// reference; a test can put any verdict here.
pub trait NetworkPolicyTier {
    /// `pod` is the policed pod (the source for egress, the destination
    /// for ingress); `peer` the other end, with its pod when it is one.
    fn verdict(
        &self,
        direction: Direction,
        pod: &Pod,
        peer: IpAddr,
        peer_pod: Option<&Pod>,
        protocol: Protocol,
        port: u16,
    ) -> NetworkPolicyVerdict;
}

impl<F> NetworkPolicyTier for F
where
    F: Fn(Direction, &Pod, IpAddr, Option<&Pod>, Protocol, u16) -> NetworkPolicyVerdict,
{
    fn verdict(
        &self,
        direction: Direction,
        pod: &Pod,
        peer: IpAddr,
        peer_pod: Option<&Pod>,
        protocol: Protocol,
        port: u16,
    ) -> NetworkPolicyVerdict {
        self(direction, pod, peer, peer_pod, protocol, port)
    }
}

/// NetworkPolicy as Kubernetes defines it: the pod is isolated in a
/// direction when a policy selecting it covers that direction, and then
/// allowed when any of those policies' rules matches.
impl NetworkPolicyTier for PolicyView {
    fn verdict(
        &self,
        direction: Direction,
        pod: &Pod,
        peer: IpAddr,
        peer_pod: Option<&Pod>,
        protocol: Protocol,
        port: u16,
    ) -> NetworkPolicyVerdict {
        let mut isolated = false;
        for policy in self.selecting(pod) {
            let rules = match direction {
                Direction::Ingress => policy.ingress.as_ref(),
                Direction::Egress => policy.egress.as_ref(),
            };
            let Some(rules) = rules else { continue };
            isolated = true;
            let destination = match direction {
                Direction::Ingress => Some(pod),
                Direction::Egress => peer_pod,
            };
            let peer_matches = |p: &Peer| match p {
                Peer::Pods(pp) => peer_pod.is_some_and(|q| self.pod_in(pp, q)),
                Peer::Block { cidr, except } => {
                    cidr.contains(&peer) && !except.iter().any(|e| e.contains(&peer))
                }
            };
            let port_matches = |spec: &PortSpec| np_port_matches(spec, destination, protocol, port);
            // As the node chains match: an egress named port is the
            // destination pod's, known only for pod peers (and for a rule
            // without peers, any pod); an ipBlock with a named port
            // matches nothing.
            let pair_matches = |p: &Peer, spec: &PortSpec| {
                let block_named = direction == Direction::Egress
                    && matches!(p, Peer::Block { .. })
                    && matches!(spec.port, Some(PortRef::Name(_)));
                !block_named && peer_matches(p) && port_matches(spec)
            };
            let allows = |rule: &PolicyRule| match (rule.peers.is_empty(), rule.ports.is_empty()) {
                (true, true) => true,
                (true, false) => rule.ports.iter().any(port_matches),
                (false, true) => rule.peers.iter().any(peer_matches),
                (false, false) => rule
                    .peers
                    .iter()
                    .any(|p| rule.ports.iter().any(|spec| pair_matches(p, spec))),
            };
            if rules.iter().any(allows) {
                return NetworkPolicyVerdict::Allowed;
            }
        }
        if isolated {
            NetworkPolicyVerdict::Denied
        } else {
            NetworkPolicyVerdict::NotIsolated
        }
    }
}

fn np_port_matches(
    spec: &PortSpec,
    destination: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> bool {
    if spec.protocol != protocol {
        return false;
    }
    match &spec.port {
        None => true,
        Some(PortRef::Number(start)) => {
            let end = spec.end_port.unwrap_or(*start);
            (*start..=end).contains(&port)
        }
        Some(PortRef::Name(name)) => {
            destination.and_then(|d| d.named_port(name, protocol)) == Some(port)
        }
    }
}

impl PolicyView {
    /// Whether `pod` is one a pod peer (or a subject) selects; host-network
    /// pods never are.
    pub fn pod_in(&self, peer: &PodPeer, pod: &Pod) -> bool {
        !pod.host_network
            && self.namespace_matches(&peer.namespaces, &pod.namespace)
            && peer.pods.matches(&pod.labels)
    }

    /// The pod (not host-network) that has `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }
}

/// The rule that decided, or passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub tier: Tier,
    pub policy: String,
    pub priority: u16,
    pub direction: Direction,
    /// Position in the policy's rules as written.
    pub index: usize,
    pub name: String,
    pub action: Action,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ClusterNetworkPolicy {} (priority {}) {} rule {}",
            self.tier.as_str(),
            self.policy,
            self.priority,
            self.direction.as_str(),
            self.index
        )?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        write!(f, ": {}", self.action.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// An Accept or Deny rule of a ClusterNetworkPolicy.
    Rule(RuleRef),
    NetworkPolicy,
    /// No tier decided: allowed.
    Default,
}

/// One direction's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub by: DecidedBy,
    /// Pass rules on the way (at most one per tier).
    pub passed: Vec<RuleRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// A pod to its own IP: no policy applies.
    pub same_pod: bool,
    /// `None` when the source is not a pod the policies police.
    pub egress: Option<Verdict>,
    /// `None` when the destination is not a pod the policies police.
    pub ingress: Option<Verdict>,
}

/// The cluster as the evaluator reads it.
#[derive(Clone, Copy, Debug)]
pub struct TieredView<'a> {
    /// Pods, namespaces (and the NetworkPolicies, when it is also the
    /// NetworkPolicy tier).
    pub view: &'a PolicyView,
    pub nodes: &'a [NodePeer],
    pub policies: &'a [ClusterPolicy],
}

impl TieredView<'_> {
    pub fn decide(
        &self,
        connection: &Connection,
        network_policy: &dyn NetworkPolicyTier,
    ) -> Decision {
        let source = self.view.pod_at(connection.source);
        let destination = self.view.pod_at(connection.destination);
        if let (Some(s), Some(d)) = (source, destination)
            && s.namespace == d.namespace
            && s.name == d.name
        {
            return Decision {
                allowed: true,
                same_pod: true,
                egress: None,
                ingress: None,
            };
        }
        let egress = source.map(|pod| {
            self.direction(
                Direction::Egress,
                pod,
                connection.destination,
                destination,
                connection,
                network_policy,
            )
        });
        let ingress = destination.map(|pod| {
            self.direction(
                Direction::Ingress,
                pod,
                connection.source,
                source,
                connection,
                network_policy,
            )
        });
        Decision {
            allowed: egress.as_ref().is_none_or(|v| v.allowed)
                && ingress.as_ref().is_none_or(|v| v.allowed),
            same_pod: false,
            egress,
            ingress,
        }
    }

    /// One direction of `pod`'s traffic with `peer`, through the tiers.
    pub fn direction(
        &self,
        direction: Direction,
        pod: &Pod,
        peer: IpAddr,
        peer_pod: Option<&Pod>,
        connection: &Connection,
        network_policy: &dyn NetworkPolicyTier,
    ) -> Verdict {
        let mut passed = Vec::new();
        let destination = match direction {
            Direction::Ingress => Some(pod),
            Direction::Egress => peer_pod,
        };
        let tier = |tier: Tier, passed: &mut Vec<RuleRef>| -> Option<RuleRef> {
            for policy in self.ordered(tier) {
                if !self.view.pod_in(&policy.subject, pod) {
                    continue;
                }
                for rule in policy.rules(direction) {
                    if !self.rule_matches(rule, peer, peer_pod, destination, connection) {
                        continue;
                    }
                    let found = RuleRef {
                        tier,
                        policy: policy.name.clone(),
                        priority: policy.priority,
                        direction,
                        index: rule.index,
                        name: rule.name.clone(),
                        action: rule.action,
                    };
                    if rule.action == Action::Pass {
                        passed.push(found);
                        return None;
                    }
                    return Some(found);
                }
            }
            None
        };
        if let Some(rule) = tier(Tier::Admin, &mut passed) {
            return decided(rule, passed);
        }
        let np = network_policy.verdict(
            direction,
            pod,
            peer,
            peer_pod,
            connection.protocol,
            connection.port,
        );
        match np {
            NetworkPolicyVerdict::Allowed | NetworkPolicyVerdict::Denied => {
                return Verdict {
                    allowed: np == NetworkPolicyVerdict::Allowed,
                    by: DecidedBy::NetworkPolicy,
                    passed,
                };
            }
            NetworkPolicyVerdict::NotIsolated => {}
        }
        if let Some(rule) = tier(Tier::Baseline, &mut passed) {
            return decided(rule, passed);
        }
        Verdict {
            allowed: true,
            by: DecidedBy::Default,
            passed,
        }
    }

    /// A tier's policies in evaluation order: by priority, then by name.
    /// The API leaves equal priorities to the implementation; the name
    /// makes the choice the same on every node and every run.
    pub fn ordered(&self, tier: Tier) -> Vec<&ClusterPolicy> {
        let mut out: Vec<&ClusterPolicy> =
            self.policies.iter().filter(|p| p.tier == tier).collect();
        out.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        out
    }

    fn rule_matches(
        &self,
        rule: &ClusterRule,
        peer: IpAddr,
        peer_pod: Option<&Pod>,
        destination: Option<&Pod>,
        connection: &Connection,
    ) -> bool {
        let peer_ok = rule.peers.iter().any(|p| match p {
            ClusterPeer::Everyone => true,
            ClusterPeer::Pods(pp) => peer_pod.is_some_and(|q| self.view.pod_in(pp, q)),
            ClusterPeer::Nodes(sel) => self
                .nodes
                .iter()
                .any(|n| sel.matches(&n.labels) && n.addresses.contains(&peer)),
            ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&peer)),
        });
        let port_ok = rule.ports.is_empty()
            || rule.ports.iter().any(|p| match p {
                ClusterPort::Protocol(protocol) => *protocol == connection.protocol,
                ClusterPort::Range {
                    protocol,
                    start,
                    end,
                } => *protocol == connection.protocol && (*start..=*end).contains(&connection.port),
                ClusterPort::Named(name) => destination.is_some_and(|d| {
                    d.named_port(name, connection.protocol) == Some(connection.port)
                }),
            });
        peer_ok && port_ok
    }
}

fn decided(rule: RuleRef, passed: Vec<RuleRef>) -> Verdict {
    Verdict {
        allowed: rule.action == Action::Accept,
        by: DecidedBy::Rule(rule),
        passed,
    }
}
