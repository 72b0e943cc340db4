//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): cluster-wide
//! rules in two tiers around NetworkPolicy.
//!
//! ```text
//!  one direction of a connection, for the pod it belongs to (egress: the
//!  source, ingress: the destination):
//!
//!  Admin tier     policies by (priority, name), rules in order:
//!                 Accept / Deny ─▶ decided      Pass ─▶ skip the rest of Admin
//!  NetworkPolicy  the pod isolated in this direction ─▶ allowed or denied
//!  Baseline tier  as Admin; Pass skips the rest of Baseline
//!  default        allowed
//! ```
//!
//! A connection is allowed when both of its directions are (a pod's own
//! traffic to its own IP is not subject to any of it). `api` is the CRD as
//! written, `convert` validates it into the model below (failing closed as
//! the API defines it), and `evaluate` is the reference decision that the
//! node chains and `explain` are held to.

pub mod api;
mod convert;
mod evaluate;

#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod tests;

use ipnet::IpNet;
use setpoint_dataplane::Protocol;

use super::{PodPeer, Selector};

pub use convert::{
    MAX_PEERS, MAX_PRIORITY, MAX_PROTOCOLS, MAX_RULE_NAME_BYTES, MAX_RULES, convert_cluster_policy,
};
pub use evaluate::{
    Connection, DecidedBy, Decision, Direction, NetworkPolicyTier, NetworkPolicyVerdict, NodePeer,
    RuleRef, TieredView, Verdict,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skips the rest of the policy's tier.
    Pass,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// Who a rule is about: the other end of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Pods (never host-network ones) by namespace and pod labels; a
    /// `namespaces` peer is this with every pod.
    Pods(PodPeer),
    /// The addresses of the nodes whose labels match (egress only).
    Nodes(Selector),
    /// CIDRs, pod addresses included (egress only).
    Networks(Vec<IpNet>),
    /// Every address: what a Deny or Pass rule that cannot be read becomes.
    Everyone,
}

/// What a rule matches of the destination port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPort {
    /// Every port of the protocol.
    Protocol(Protocol),
    /// `start..=end` (a single number has `start == end`).
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// The destination pod's container port of that name, on that port's
    /// protocol.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// Position in the policy's list as written, so reports name the rule
    /// the author wrote even when one before it was left out.
    pub index: usize,
    pub name: String,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    /// Empty: every protocol and port.
    pub ports: Vec<ClusterPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    /// The pods the policy is about; host-network pods never are.
    pub subject: PodPeer,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// Its Accept and Pass verdicts are logged too, when verdict logging
    /// is on ([`LOG_ACCEPTED_ANNOTATION`] is `"true"`).
    pub log_accepted: bool,
}

/// The annotation asking for a ClusterNetworkPolicy's accepted
/// connections to be logged beside every denied one.
pub const LOG_ACCEPTED_ANNOTATION: &str = "setpoint.io/log-accepted";

impl RuleRef {
    /// The reference to `rule` of `policy`, as the evaluator reports it.
    pub fn of(policy: &ClusterPolicy, rule: &ClusterRule, direction: Direction) -> RuleRef {
        RuleRef {
            tier: policy.tier,
            policy: policy.name.clone(),
            priority: policy.priority,
            direction,
            index: rule.index,
            name: rule.name.clone(),
            action: rule.action,
        }
    }

    /// The comment the node chains give the rule's iptables rules, so
    /// `explain` (and a log prefix) names it: `cnp:<tier>/<policy>/<direction>
    /// rule <index>: <action>`, one bounded line.
    pub fn comment(&self) -> String {
        let text = format!(
            "cnp:{}/{}/{} rule {}: {}",
            self.tier.as_str(),
            self.policy,
            self.direction.as_str(),
            self.index,
            self.action.as_str()
        );
        setpoint_dataplane::text::clean_text(
            &text,
            setpoint_dataplane::validate::MAX_RULE_WORD_BYTES,
        )
    }
}

impl ClusterPolicy {
    pub fn rules(&self, direction: Direction) -> &[ClusterRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}
