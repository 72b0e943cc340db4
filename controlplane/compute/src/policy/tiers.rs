//! ClusterNetworkPolicy tiers in a local pod's chain, around the
//! NetworkPolicy rules.
//!
//! ```text
//!  SP-E/SP-I-<pod>:    Admin rules, by (priority, name), then rule order
//!                        Accept ─▶ RETURN (this direction allowed)
//!                        Deny   ─▶ DROP
//!                        Pass   ─▶ -g SP-…-<pod>-T (the rest of Admin skipped)
//!                      then the tail (inline, or -g to it when a Pass needs it)
//!  tail:  a NetworkPolicy isolates the pod here ─▶ its RETURN rules, DROP
//!         otherwise Baseline rules: Accept/Pass ─▶ RETURN, Deny ─▶ DROP;
//!         the chain's end returns: allowed by default
//! ```
//!
//! A goto's RETURN returns from the calling chain too, so the tail's
//! verdict is the pod chain's and no packet mark is needed. Every rule
//! carries `-m comment --comment <RuleRef::comment>`, naming the tier,
//! policy and rule for `explain` (and later NFLOG prefixes).

use std::collections::BTreeSet;

use ipnet::IpNet;
use setpoint_dataplane::{Family, Protocol, Rule, SetEntry, SetType};

use super::chains::{Direction, LoggedVerdict, NodePolicy, Tiers, family_tag, short_hash};
use super::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, RuleRef};
use super::sets::SetSource;
use super::{Pod, Selector};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

impl NodePolicy<'_> {
    /// The rules of `chain` (and its tail chain, put here when an Admin
    /// Pass rule needs one).
    pub(super) fn tiered_rules(
        &mut self,
        pod: &Pod,
        family: Family,
        chain: &str,
        tiers: &Tiers,
    ) -> Vec<Rule> {
        let direction = tiers.direction;
        let tail = match &tiers.network_policy {
            Some(rules) => self.network_policy_rules(pod, family, rules, direction),
            None => {
                let mut out = Vec::new();
                for (policy, rule) in &tiers.baseline {
                    let target = match rule.action {
                        Action::Accept | Action::Pass => ["-j", "RETURN"],
                        Action::Deny => ["-j", "DROP"],
                    };
                    out.extend(self.cluster_rule(pod, family, policy, rule, direction, target));
                }
                out
            }
        };
        if tiers.admin.is_empty() {
            return tail;
        }
        let needs_tail_chain =
            !tail.is_empty() && tiers.admin.iter().any(|(_, r)| r.action == Action::Pass);
        let tail_chain = format!("{chain}-T");
        let pass = if needs_tail_chain {
            ["-g", tail_chain.as_str()]
        } else {
            // Nothing after Admin but the default: passing is allowing.
            ["-j", "RETURN"]
        };
        let mut out = Vec::new();
        for (policy, rule) in &tiers.admin {
            let target = match rule.action {
                Action::Accept => ["-j", "RETURN"],
                Action::Deny => ["-j", "DROP"],
                Action::Pass => pass,
            };
            out.extend(self.cluster_rule(pod, family, policy, rule, direction, target));
        }
        if needs_tail_chain {
            self.put_chain(family, &tail_chain, tail);
            out.push(Rule::new(["-g", tail_chain.as_str()]));
        } else {
            out.extend(tail);
        }
        out
    }

    /// One ClusterNetworkPolicy rule: a rule per (peer, port) it matches
    /// in `family`, each ending in `target`.
    fn cluster_rule(
        &mut self,
        pod: &Pod,
        family: Family,
        policy: &ClusterPolicy,
        rule: &ClusterRule,
        direction: Direction,
        target: [&str; 2],
    ) -> Vec<Rule> {
        let dir = match direction {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        };
        let set_match = |set: &str, dir: &str| -> Vec<String> {
            ["-m", "set", "--match-set", set, dir]
                .map(String::from)
                .to_vec()
        };
        let mut peers: Vec<Vec<String>> = Vec::new();
        for peer in &rule.peers {
            match peer {
                ClusterPeer::Everyone => peers.push(Vec::new()),
                ClusterPeer::Pods(p) => {
                    let set = self.pod_set(p, family);
                    peers.push(set_match(&set, dir));
                }
                ClusterPeer::Nodes(selector) => {
                    let set = self.node_set(selector, family);
                    peers.push(set_match(&set, dir));
                }
                ClusterPeer::Networks(nets) => {
                    if let Some(set) = self.network_set(nets, family) {
                        peers.push(set_match(&set, dir));
                    }
                }
            }
        }
        let mut ports: Vec<Vec<String>> = Vec::new();
        if rule.ports.is_empty() {
            ports.push(Vec::new());
        }
        for port in &rule.ports {
            match port {
                ClusterPort::Protocol(protocol) => {
                    ports.push(vec!["-p".into(), protocol.as_str().into()]);
                }
                ClusterPort::Range {
                    protocol,
                    start,
                    end,
                } => {
                    let range = if start == end {
                        start.to_string()
                    } else {
                        format!("{start}:{end}")
                    };
                    ports.push(
                        ["-p", protocol.as_str(), "--dport", &range]
                            .map(String::from)
                            .to_vec(),
                    );
                }
                ClusterPort::Named(name) => match direction {
                    // The destination is the local pod: its own port(s).
                    Direction::Ingress => {
                        for protocol in PROTOCOLS {
                            if let Some(n) = pod.named_port(name, protocol) {
                                ports.push(
                                    ["-p", protocol.as_str(), "--dport", &n.to_string()]
                                        .map(String::from)
                                        .to_vec(),
                                );
                            }
                        }
                    }
                    // Each destination pod's own port: (IP, port) of every
                    // pod naming it, matched beside the peer.
                    Direction::Egress => {
                        let set = self.named_port_any_protocol_set(name, family);
                        ports.push(set_match(&set, "dst,dst"));
                    }
                },
            }
        }
        let comment = RuleRef::of(policy, rule, direction.cluster()).comment();
        let logged = match rule.action {
            Action::Deny => Some(LoggedVerdict::Drop),
            Action::Accept if policy.log_accepted => Some(LoggedVerdict::Accept),
            Action::Pass if policy.log_accepted => Some(LoggedVerdict::Pass),
            _ => None,
        };
        let mut out = Vec::new();
        for peer in &peers {
            for port in &ports {
                let mut args = peer.clone();
                args.extend(port.iter().cloned());
                args.extend(["-m", "comment", "--comment", &comment].map(String::from));
                if let Some(verdict) = logged {
                    out.extend(self.log_rule(&args, verdict, &comment));
                }
                args.extend(target.map(String::from));
                out.push(Rule(args));
            }
        }
        out
    }

    /// The addresses of the nodes whose labels `selector` matches.
    fn node_set(&mut self, selector: &Selector, family: Family) -> String {
        let key = format!("nodes={}", selector.canonical());
        let name = format!("SP-H{}-{}", family_tag(family), short_hash(&key));
        if self.fragment.set(&name).is_some() {
            return name;
        }
        let nodes = self.nodes;
        let entries = self.cached(&name, || {
            let ips: BTreeSet<_> = nodes
                .iter()
                .filter(|n| selector.matches(&n.labels))
                .flat_map(|n| n.addresses.iter().copied())
                .filter(|ip| Family::of(ip) == family)
                .collect();
            ips.into_iter().map(SetEntry::Ip).collect()
        });
        self.ensure_set(&name, SetType::HashIp, family, key, &entries);
        name
    }

    /// The CIDRs of a `networks` peer; `None` when none is of `family`.
    fn network_set(&mut self, nets: &[IpNet], family: Family) -> Option<String> {
        let mine: BTreeSet<IpNet> = nets
            .iter()
            .filter(|n| Family::of_net(n) == family)
            .map(IpNet::trunc)
            .collect();
        if mine.is_empty() {
            return None;
        }
        let key = format!("networks={mine:?}");
        let name = format!("SP-C{}-{}", family_tag(family), short_hash(&key));
        // hash:net holds prefixes of length 1 and up: /0 is two halves.
        let entries: BTreeSet<IpNet> = mine
            .iter()
            .flat_map(|net| match net.prefix_len() {
                0 => net.subnets(1).map(Iterator::collect).unwrap_or_default(),
                _ => vec![*net],
            })
            .collect();
        let entries: Vec<SetEntry> = entries
            .into_iter()
            .map(|net| SetEntry::Net {
                net,
                nomatch: false,
            })
            .collect();
        self.ensure_set(&name, SetType::HashNet, family, key, &entries);
        Some(name)
    }

    /// (IP, protocol, port) of every pod with a container port `port`
    /// names, on any protocol: a `destinationNamedPort`.
    fn named_port_any_protocol_set(&mut self, port: &str, family: Family) -> String {
        let key = format!("all|port={port}/any");
        let name = format!("SP-N{}-{}", family_tag(family), short_hash(&key));
        self.pod_drawn_set(name, SetType::HashIpPort, || {
            let source = SetSource::NamedPortAnyProtocol {
                port: port.to_string(),
                family,
            };
            (source, format!("named port: {key}"))
        })
    }
}
