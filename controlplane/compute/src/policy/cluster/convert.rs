//! ClusterNetworkPolicy as written → the validated model.
//!
//! Two kinds of problem, two answers:
//!
//! - What says which pods, tier or priority the policy has, or breaks its
//!   size limits, rejects the policy: it is not enforced and the problem
//!   says so. Guessing a subject or a tier could cut off the whole
//!   cluster or put Accept rules above every NetworkPolicy.
//! - What is wrong inside one rule fails that rule closed, as the API
//!   defines it for a peer it cannot read: an Accept rule matches no
//!   traffic, a Deny or Pass rule denies all traffic. A rule whose action
//!   is unknown denies what it matches (everything, if that cannot be read
//!   either). `domainNames` are refused this way: Setpoint does not
//!   resolve names, so an Accept rule naming them matches nothing.

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use setpoint_dataplane::Protocol;
use setpoint_dataplane::text::{clean_text, quoted};

use super::api;
use super::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Direction, Tier};
use crate::convert::{Rejection, check_dns_subdomain, check_port_name, printable};
use crate::policy::convert::selector;
use crate::policy::{Namespaces, PodPeer, Selector};

/// Rules per direction, peers per rule, protocols per rule, CIDRs per
/// `networks` peer: the CRD's `MaxItems`.
pub const MAX_RULES: usize = 25;
pub const MAX_PEERS: usize = 25;
pub const MAX_PROTOCOLS: usize = 25;
pub const MAX_NETWORKS: usize = 25;
pub const MAX_PRIORITY: i64 = 1000;
pub const MAX_RULE_NAME_BYTES: usize = 100;

/// A ClusterNetworkPolicy as compute uses it, with what was changed in it
/// to fail closed; `Err` when it is not enforced at all.
pub fn convert_cluster_policy(
    p: &api::ClusterNetworkPolicy,
) -> Result<(ClusterPolicy, Vec<Rejection>), Rejection> {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let object = format!("{} {}", api::KIND, printable(name));
    let reject = |reason: String| Rejection {
        object: object.clone(),
        reason: format!("{reason}; the policy is not enforced"),
    };
    if name.is_empty() {
        return Err(reject("metadata.name is missing".into()));
    }
    let mut warnings = Vec::new();
    if let Err(e) = check_dns_subdomain(name) {
        warnings.push(Rejection {
            object: object.clone(),
            reason: format!("metadata.name: {e}"),
        });
    }
    let Some(spec) = &p.spec else {
        return Err(reject("spec is missing".into()));
    };
    let tier = match spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => {
            return Err(reject(format!(
                "tier {} is not Admin or Baseline",
                quoted(other)
            )));
        }
    };
    let priority = match spec.priority {
        None => return Err(reject("priority is missing".into())),
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|n| i64::from(*n) <= MAX_PRIORITY)
            .ok_or_else(|| reject(format!("priority {n} is out of range 0-{MAX_PRIORITY}")))?,
    };
    let subject = subject(&spec.subject).map_err(|e| reject(format!("subject: {e}")))?;
    let ingress_count = spec.ingress.as_ref().map_or(0, Vec::len);
    let egress_count = spec.egress.as_ref().map_or(0, Vec::len);
    for (direction, count) in [("ingress", ingress_count), ("egress", egress_count)] {
        if count > MAX_RULES {
            return Err(reject(format!(
                "{direction} has {count} rules, at most {MAX_RULES} are allowed"
            )));
        }
    }
    let mut reader = RuleReader {
        object: &object,
        warnings,
    };
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| {
            let peers = r.from.as_ref().map(|list| {
                list.iter()
                    .map(|p| PeerFields {
                        namespaces: p.namespaces.as_ref(),
                        pods: p.pods.as_ref(),
                        ..PeerFields::default()
                    })
                    .collect::<Vec<_>>()
            });
            let written = WrittenRule {
                name: &r.name,
                action: &r.action,
                peers,
                protocols: r.protocols.as_deref(),
            };
            reader.rule(Direction::Ingress, i, written)
        })
        .collect();
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| {
            let peers = r.to.as_ref().map(|list| {
                list.iter()
                    .map(|p| PeerFields {
                        namespaces: p.namespaces.as_ref(),
                        pods: p.pods.as_ref(),
                        nodes: p.nodes.as_ref(),
                        networks: p.networks.as_deref(),
                        domain_names: p.domain_names.as_deref(),
                    })
                    .collect::<Vec<_>>()
            });
            let written = WrittenRule {
                name: &r.name,
                action: &r.action,
                peers,
                protocols: r.protocols.as_deref(),
            };
            reader.rule(Direction::Egress, i, written)
        })
        .collect();
    let log_accepted = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::LOG_ACCEPTED_ANNOTATION))
        .is_some_and(|v| v == "true");
    let policy = ClusterPolicy {
        name: name.to_string(),
        tier,
        priority,
        subject,
        ingress,
        egress,
        log_accepted,
    };
    Ok((policy, reader.warnings))
}

fn subject(s: &api::Subject) -> Result<PodPeer, String> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(PodPeer {
            namespaces: Namespaces::Selected(
                selector(Some(ns)).map_err(|e| format!("namespaces: {e}"))?,
            ),
            pods: Selector::everything(),
        }),
        (None, Some(pods)) => namespaced_pod(pods).map_err(|e| format!("pods: {e}")),
        (None, None) => Err("neither namespaces nor pods is set (an unknown field?)".into()),
        (Some(_), Some(_)) => {
            Err("both namespaces and pods are set; exactly one is allowed".into())
        }
    }
}

fn namespaced_pod(p: &api::NamespacedPod) -> Result<PodPeer, String> {
    let Some(pods) = &p.pod_selector else {
        return Err("podSelector is missing".into());
    };
    Ok(PodPeer {
        namespaces: Namespaces::Selected(
            selector(p.namespace_selector.as_ref())
                .map_err(|e| format!("namespaceSelector: {e}"))?,
        ),
        pods: selector(Some(pods)).map_err(|e| format!("podSelector: {e}"))?,
    })
}

/// The fields of a peer of either direction (ingress has the first two).
#[derive(Default)]
struct PeerFields<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a api::NamespacedPod>,
    nodes: Option<&'a LabelSelector>,
    networks: Option<&'a [String]>,
    domain_names: Option<&'a [String]>,
}

struct WrittenRule<'a> {
    name: &'a str,
    action: &'a str,
    peers: Option<Vec<PeerFields<'a>>>,
    protocols: Option<&'a [api::ProtocolMatch]>,
}

/// Why a rule cannot be used as written.
enum Unreadable {
    /// Not valid per the API: the rule fails closed.
    Invalid(String),
    /// Valid, but names `domainNames`, which Setpoint does not resolve.
    DomainNames,
}

struct RuleReader<'a> {
    object: &'a str,
    warnings: Vec<Rejection>,
}

impl RuleReader<'_> {
    fn warn(&mut self, reason: String) {
        self.warnings.push(Rejection {
            object: self.object.to_string(),
            reason,
        });
    }

    fn rule(
        &mut self,
        direction: Direction,
        index: usize,
        written: WrittenRule<'_>,
    ) -> Option<ClusterRule> {
        let place = format!("{} rule {index}", direction.as_str());
        let name = if written.name.len() > MAX_RULE_NAME_BYTES
            || written.name.chars().any(char::is_control)
        {
            self.warn(format!(
                "{place}: name {} is longer than {MAX_RULE_NAME_BYTES} bytes or holds control characters; shown cut and cleaned",
                quoted(written.name)
            ));
            clean_text(written.name, MAX_RULE_NAME_BYTES)
        } else {
            written.name.to_string()
        };
        let place = if name.is_empty() {
            place
        } else {
            format!("{place} ({})", quoted(&name))
        };
        let action = match written.action {
            "Accept" => Some(Action::Accept),
            "Deny" => Some(Action::Deny),
            "Pass" => Some(Action::Pass),
            _ => None,
        };
        let read = read_match(direction, &written);
        let deny_all = |name: String| ClusterRule {
            index,
            name,
            action: Action::Deny,
            peers: vec![ClusterPeer::Everyone],
            ports: Vec::new(),
        };
        match (action, read) {
            (Some(action), Ok((peers, ports))) => Some(ClusterRule {
                index,
                name,
                action,
                peers,
                ports,
            }),
            (None, Ok((peers, ports))) => {
                self.warn(format!(
                    "{place}: action {} is not Accept, Deny or Pass; the rule denies the traffic it matches",
                    quoted(written.action)
                ));
                Some(ClusterRule {
                    index,
                    name,
                    action: Action::Deny,
                    peers,
                    ports,
                })
            }
            (Some(Action::Accept), Err(Unreadable::DomainNames)) => {
                self.warn(format!(
                    "{place}: domainNames peers are not supported (Setpoint does not resolve names); the rule matches no traffic"
                ));
                None
            }
            (Some(Action::Accept), Err(Unreadable::Invalid(e))) => {
                self.warn(format!("{place}: {e}; the rule matches no traffic"));
                None
            }
            (Some(action @ (Action::Deny | Action::Pass)), Err(Unreadable::DomainNames)) => {
                self.warn(format!(
                    "{place}: domainNames are allowed in Accept rules only, not in {}; the rule denies all traffic",
                    action.as_str()
                ));
                Some(deny_all(name))
            }
            (Some(_), Err(Unreadable::Invalid(e))) => {
                self.warn(format!("{place}: {e}; the rule denies all traffic"));
                Some(deny_all(name))
            }
            (None, Err(e)) => {
                let e = match e {
                    Unreadable::Invalid(e) => e,
                    Unreadable::DomainNames => "domainNames are not supported".into(),
                };
                self.warn(format!(
                    "{place}: action {} is not Accept, Deny or Pass, and {e}; the rule denies all traffic",
                    quoted(written.action)
                ));
                Some(deny_all(name))
            }
        }
    }
}

fn read_match(
    direction: Direction,
    written: &WrittenRule<'_>,
) -> Result<(Vec<ClusterPeer>, Vec<ClusterPort>), Unreadable> {
    let field = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let listed = match &written.peers {
        None => return Err(Unreadable::Invalid(format!("{field} is missing"))),
        Some(list) if list.is_empty() => {
            return Err(Unreadable::Invalid(format!("{field} is empty")));
        }
        Some(list) if list.len() > MAX_PEERS => {
            return Err(Unreadable::Invalid(format!(
                "{field} has {} peers, at most {MAX_PEERS} are allowed",
                list.len()
            )));
        }
        Some(list) => list,
    };
    let mut peers = Vec::new();
    let mut domain_names = false;
    for (i, p) in listed.iter().enumerate() {
        match peer(p) {
            Ok(Some(peer)) => peers.push(peer),
            Ok(None) => domain_names = true,
            Err(e) => return Err(Unreadable::Invalid(format!("{field} peer {i}: {e}"))),
        }
    }
    let ports = match written.protocols {
        None => Vec::new(),
        Some([]) => return Err(Unreadable::Invalid("protocols is empty".into())),
        Some(list) if list.len() > MAX_PROTOCOLS => {
            return Err(Unreadable::Invalid(format!(
                "protocols has {} entries, at most {MAX_PROTOCOLS} are allowed",
                list.len()
            )));
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| protocol(p).map_err(|e| format!("protocols entry {i}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Unreadable::Invalid)?,
    };
    let named = ports.iter().any(|p| matches!(p, ClusterPort::Named(_)));
    let addresses = peers
        .iter()
        .any(|p| matches!(p, ClusterPeer::Nodes(_) | ClusterPeer::Networks(_)));
    if named && (addresses || domain_names) {
        return Err(Unreadable::Invalid(
            "destinationNamedPort cannot be used with networks, nodes or domainNames peers (they have no named ports)"
                .into(),
        ));
    }
    if domain_names {
        return Err(Unreadable::DomainNames);
    }
    Ok((peers, ports))
}

/// One peer; `Ok(None)` for a valid `domainNames` peer.
fn peer(p: &PeerFields<'_>) -> Result<Option<ClusterPeer>, String> {
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    match set {
        0 => return Err("no known field is set (a field of a newer API version?)".into()),
        1 => {}
        _ => return Err("more than one field is set; exactly one is allowed".into()),
    }
    if let Some(ns) = p.namespaces {
        return Ok(Some(ClusterPeer::Pods(PodPeer {
            namespaces: Namespaces::Selected(
                selector(Some(ns)).map_err(|e| format!("namespaces: {e}"))?,
            ),
            pods: Selector::everything(),
        })));
    }
    if let Some(pods) = p.pods {
        return Ok(Some(ClusterPeer::Pods(
            namespaced_pod(pods).map_err(|e| format!("pods: {e}"))?,
        )));
    }
    if let Some(nodes) = p.nodes {
        return Ok(Some(ClusterPeer::Nodes(
            selector(Some(nodes)).map_err(|e| format!("nodes: {e}"))?,
        )));
    }
    if let Some(networks) = p.networks {
        if networks.is_empty() || networks.len() > MAX_NETWORKS {
            return Err(format!(
                "networks has {} CIDRs, 1 to {MAX_NETWORKS} are allowed",
                networks.len()
            ));
        }
        let mut nets = Vec::new();
        for text in networks {
            let net = text
                .parse::<IpNet>()
                .map_err(|_| format!("networks: {} is not a CIDR", quoted(text)))?
                .trunc();
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        return Ok(Some(ClusterPeer::Networks(nets)));
    }
    if let Some(names) = p.domain_names {
        if names.is_empty() || names.len() > MAX_PEERS {
            return Err(format!(
                "domainNames has {} names, 1 to {MAX_PEERS} are allowed",
                names.len()
            ));
        }
        return Ok(None);
    }
    Err("no known field is set".into())
}

fn protocol(p: &api::ProtocolMatch) -> Result<ClusterPort, String> {
    let mut found = Vec::new();
    if let Some(port) = &p.tcp {
        found.push(numbered(Protocol::Tcp, port));
    }
    if let Some(port) = &p.udp {
        found.push(numbered(Protocol::Udp, port));
    }
    if let Some(port) = &p.sctp {
        found.push(numbered(Protocol::Sctp, port));
    }
    if let Some(name) = &p.destination_named_port {
        found.push(
            check_port_name(name)
                .map(|()| ClusterPort::Named(name.clone()))
                .map_err(|e| format!("destinationNamedPort: {e}")),
        );
    }
    match found.len() {
        0 => Err("none of tcp, udp, sctp, destinationNamedPort is set".into()),
        1 => found.remove(0),
        _ => Err("more than one of tcp, udp, sctp, destinationNamedPort is set".into()),
    }
}

fn numbered(protocol: Protocol, p: &api::ProtocolPort) -> Result<ClusterPort, String> {
    let what = protocol.as_str();
    let port = |n: i64, field: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("{what} {field} {n} is out of range 1-65535"))
    };
    // The API's text: no destinationPort matches every port of the protocol.
    let Some(dest) = &p.destination_port else {
        return Ok(ClusterPort::Protocol(protocol));
    };
    match (dest.number, &dest.range) {
        (Some(n), None) => {
            let n = port(n, "destinationPort number")?;
            Ok(ClusterPort::Range {
                protocol,
                start: n,
                end: n,
            })
        }
        (None, Some(range)) => {
            let start = port(range.start, "range start")?;
            let end = port(range.end, "range end")?;
            if start >= end {
                return Err(format!("{what} range start {start} is not below end {end}"));
            }
            Ok(ClusterPort::Range {
                protocol,
                start,
                end,
            })
        }
        (None, None) => Err(format!(
            "{what} destinationPort has neither number nor range"
        )),
        (Some(_), Some(_)) => Err(format!(
            "{what} destinationPort has both number and range; exactly one is allowed"
        )),
    }
}
