//! One node's policy fragment: the `SP-POLICY` dispatch chain, a chain
//! per policed local pod and direction (the tiers around the NetworkPolicy
//! rules are `tiers`'), and the peer sets they match.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::text::clean_text;
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, Jump, Protocol, Rule, SetEntry, SetSpec, SetType, Table,
};
use sha2::{Digest as _, Sha256};

use super::cluster::{self, ClusterPolicy, ClusterRule, NodePeer, Tier};
use super::sets::{NamedSets, SetSource};
use super::{
    MemberCache, Namespaces, Peer, Pod, PodPeer, Policy, PolicyRule, PolicyView, PortRef, PortSpec,
};
use crate::layout::VerdictLog;

pub const CHAIN_POLICY: &str = "SP-POLICY";
/// Longest set comment: what iptables allows a rule comment.
const MAX_SET_COMMENT_BYTES: usize = setpoint_dataplane::validate::MAX_RULE_WORD_BYTES;

/// What a logged rule decides, as its NFLOG prefix says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoggedVerdict {
    Drop,
    Accept,
    Pass,
}

impl LoggedVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            LoggedVerdict::Drop => "drop",
            LoggedVerdict::Accept => "accept",
            LoggedVerdict::Pass => "pass",
        }
    }
}

/// `sp:<verdict>:<hash of the rule's comment>`: at most 28 bytes, within
/// NFLOG's 63.
pub fn verdict_log_prefix(verdict: LoggedVerdict, comment: &str) -> String {
    format!("sp:{}:{}", verdict.as_str(), short_hash(comment))
}

pub(super) fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8]).to_uppercase()
}

pub(super) fn family_tag(family: Family) -> &'static str {
    match family {
        Family::Inet => "",
        Family::Inet6 => "6",
    }
}

impl PolicyView {
    /// The policy part of one node's state — chains for `local` (the
    /// node's pods) and the sets they use — and the peers those sets draw
    /// from. `members` caches set contents across the nodes of one pass.
    pub fn node_fragment(
        &self,
        local: &[&Pod],
        nodes: &[NodePeer],
        police_node_traffic: bool,
        verdict_log: Option<VerdictLog>,
        members: &MemberCache,
    ) -> (Fragment, NamedSets) {
        let mut builder = NodePolicy {
            view: self,
            nodes,
            verdict_log,
            fragment: Fragment::new(),
            dispatch: BTreeMap::new(),
            members,
            sources: Vec::new(),
        };
        let ordered = self.cluster_policies_ordered();
        for pod in local.iter().copied() {
            if pod.host_network {
                continue;
            }
            let policies: Vec<&Policy> = self.selecting(pod).collect();
            let network_policy = |direction: Direction| -> Option<Vec<&PolicyRule>> {
                let mut isolated = false;
                let mut rules = Vec::new();
                for p in &policies {
                    let own = match direction {
                        Direction::Ingress => p.ingress.as_ref(),
                        Direction::Egress => p.egress.as_ref(),
                    };
                    if let Some(own) = own {
                        isolated = true;
                        rules.extend(own);
                    }
                }
                isolated.then_some(rules)
            };
            let subject_of: Vec<&ClusterPolicy> = ordered
                .iter()
                .copied()
                .filter(|p| self.pod_in(&p.subject, pod))
                .collect();
            let tiers = [Direction::Egress, Direction::Ingress].map(|direction| {
                let tier = |tier: Tier| -> Vec<(&ClusterPolicy, &ClusterRule)> {
                    subject_of
                        .iter()
                        .filter(|p| p.tier == tier)
                        .flat_map(|p| p.rules(direction.cluster()).iter().map(move |r| (*p, r)))
                        .collect()
                };
                Tiers {
                    direction,
                    admin: tier(Tier::Admin),
                    network_policy: network_policy(direction),
                    baseline: tier(Tier::Baseline),
                }
            });
            for family in Family::ALL {
                let ips: Vec<IpAddr> = pod
                    .ips
                    .iter()
                    .copied()
                    .filter(|ip| Family::of(ip) == family)
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                for tiers in &tiers {
                    if !tiers.is_empty() {
                        builder.police(pod, family, &ips, tiers);
                    }
                }
            }
        }
        let sources = std::mem::take(&mut builder.sources);
        (builder.finish(police_node_traffic), sources)
    }

    /// ClusterNetworkPolicies in evaluation order: by priority, then name
    /// (as the evaluator orders them).
    fn cluster_policies_ordered(&self) -> Vec<&ClusterPolicy> {
        let mut out: Vec<&ClusterPolicy> = self.cluster_policies.values().collect();
        out.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        out
    }
}

/// What decides one direction of one local pod, tier by tier.
pub(super) struct Tiers<'a> {
    pub(super) direction: Direction,
    /// Admin rules of the policies selecting the pod, in evaluation order.
    pub(super) admin: Vec<(&'a ClusterPolicy, &'a ClusterRule)>,
    /// `Some` when a NetworkPolicy isolates the pod in this direction.
    pub(super) network_policy: Option<Vec<&'a PolicyRule>>,
    pub(super) baseline: Vec<(&'a ClusterPolicy, &'a ClusterRule)>,
}

impl Tiers<'_> {
    /// Nothing to police: every tier lets the direction through.
    fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.network_policy.is_none() && self.baseline.is_empty()
    }
}

pub(super) fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub(super) fn cluster(self) -> cluster::Direction {
        match self {
            Direction::Ingress => cluster::Direction::Ingress,
            Direction::Egress => cluster::Direction::Egress,
        }
    }
}

pub(super) struct NodePolicy<'a> {
    pub(super) view: &'a PolicyView,
    pub(super) nodes: &'a [NodePeer],
    pub(super) verdict_log: Option<VerdictLog>,
    pub(super) fragment: Fragment,
    /// SP-POLICY rules per family: (stage, rule); egress checks first.
    dispatch: BTreeMap<Family, Vec<(u8, Rule)>>,
    pub(super) members: &'a MemberCache,
    /// The sets drawn from pods, by name: what a pod change can alter.
    pub(super) sources: NamedSets,
}

impl NodePolicy<'_> {
    /// The chain(s) of `pod` in one direction for `family`, and the
    /// SP-POLICY rules sending its addresses there (egress first).
    fn police(&mut self, pod: &Pod, family: Family, ips: &[IpAddr], tiers: &Tiers) {
        let (prefix, stage, address) = match tiers.direction {
            Direction::Egress => ("SP-E", 0, "-s"),
            Direction::Ingress => ("SP-I", 1, "-d"),
        };
        let chain = format!(
            "{prefix}-{}",
            short_hash(&format!("{}/{}", pod.namespace, pod.name))
        );
        let rules = self.tiered_rules(pod, family, &chain, tiers);
        self.put_chain(family, &chain, rules);
        for ip in ips {
            self.dispatch(family, stage, Rule::new([address, &host(ip), "-j", &chain]));
        }
    }

    /// The NetworkPolicy tier: RETURN for what the rules allow, then DROP.
    pub(super) fn network_policy_rules(
        &mut self,
        pod: &Pod,
        family: Family,
        rules: &[&PolicyRule],
        direction: Direction,
    ) -> Vec<Rule> {
        let mut out = self.rules(pod, family, rules, direction);
        let comment = format!(
            "np:{}/{}: no NetworkPolicy rule allows",
            pod.namespace,
            direction.cluster().as_str()
        );
        let comment = clean_text(&comment, MAX_SET_COMMENT_BYTES);
        let matched = ["-m", "comment", "--comment", &comment].map(String::from);
        out.extend(self.log_rule(&matched, LoggedVerdict::Drop, &comment));
        let mut drop = matched.to_vec();
        drop.extend(["-j", "DROP"].map(String::from));
        out.push(Rule(drop));
        out
    }

    /// The NFLOG rule logging what `matched` matches, put before the rule
    /// deciding it; none when verdicts are not logged. Its prefix names
    /// the rule by a hash of `comment`, which the agent maps back through
    /// the rule's own comment (a prefix holds 63 bytes, a comment 255).
    pub(super) fn log_rule(
        &self,
        matched: &[String],
        verdict: LoggedVerdict,
        comment: &str,
    ) -> Option<Rule> {
        let log = self.verdict_log?;
        let mut args = matched.to_vec();
        let prefix = verdict_log_prefix(verdict, comment);
        args.extend(
            [
                "-m",
                "limit",
                "--limit",
                &format!("{}/second", log.per_second.max(1)),
                "--limit-burst",
                &log.burst.max(1).to_string(),
                "-j",
                "NFLOG",
                "--nflog-group",
                &log.group.to_string(),
                "--nflog-prefix",
                &prefix,
            ]
            .map(String::from),
        );
        Some(Rule(args))
    }

    fn dispatch(&mut self, family: Family, stage: u8, rule: Rule) {
        self.dispatch.entry(family).or_default().push((stage, rule));
    }

    pub(super) fn put_chain(&mut self, family: Family, name: &str, rules: Vec<Rule>) {
        self.fragment.put_chain(
            ChainKey {
                family,
                table: Table::Filter,
                name: name.to_string(),
            },
            Arc::new(Chain { rules }),
        );
    }

    /// Set contents from the pass's cache, computed by `compute` on a miss.
    pub(super) fn cached(
        &self,
        name: &str,
        compute: impl FnOnce() -> Vec<SetEntry>,
    ) -> Arc<Vec<SetEntry>> {
        self.members.get_or_compute(name, compute)
    }

    /// Set `name` drawn from pods, created on first use from what
    /// `describe` gives (its source and comment, made only then) and
    /// remembered so a pod change can patch it.
    pub(super) fn pod_drawn_set(
        &mut self,
        name: String,
        kind: SetType,
        describe: impl FnOnce() -> (SetSource, String),
    ) -> String {
        if self.fragment.set(&name).is_some() {
            return name;
        }
        let (source, comment) = describe();
        let family = source.family();
        let entries = self.cached(&name, || source.entries(self.view));
        self.sources.push((name.clone(), source));
        self.ensure_set(&name, kind, family, comment, &entries);
        name
    }

    pub(super) fn ensure_set(
        &mut self,
        name: &str,
        kind: SetType,
        family: Family,
        comment: String,
        entries: &[SetEntry],
    ) {
        if self.fragment.set(name).is_some() {
            return;
        }
        self.fragment.put_set(
            name,
            SetSpec {
                kind,
                family,
                maxelem: 262_144,
                // Comments carry selector text: conversion lets only valid
                // Kubernetes syntax through, and this keeps any text that
                // still arrives one bounded line, never a failed state.
                comment: clean_text(&comment, MAX_SET_COMMENT_BYTES),
            },
        );
        for e in entries {
            self.fragment.add_entry(name, e.clone());
        }
    }

    /// The set of IPs of a pod peer, created on first use.
    pub(super) fn pod_set(&mut self, peer: &PodPeer, family: Family) -> String {
        let key = match &peer.namespaces {
            Namespaces::Own(ns) => format!("ns={ns}|pods={}", peer.pods.canonical()),
            Namespaces::Selected(sel) => {
                format!("nssel={}|pods={}", sel.canonical(), peer.pods.canonical())
            }
        };
        let name = format!("SP-P{}-{}", family_tag(family), short_hash(&key));
        self.pod_drawn_set(name, SetType::HashIp, || {
            let source = SetSource::PodIps {
                peer: peer.clone(),
                family,
            };
            (source, format!("pods: {key}"))
        })
    }

    /// (IP, port) of the pods a peer selects that name `port` for `protocol`.
    fn named_port_set(
        &mut self,
        peer: Option<&PodPeer>,
        port: &str,
        protocol: Protocol,
        family: Family,
    ) -> String {
        let scope = match peer {
            None => "all".to_string(),
            Some(peer) => match &peer.namespaces {
                Namespaces::Own(ns) => format!("ns={ns}|pods={}", peer.pods.canonical()),
                Namespaces::Selected(sel) => {
                    format!("nssel={}|pods={}", sel.canonical(), peer.pods.canonical())
                }
            },
        };
        let key = format!("{scope}|port={port}/{}", protocol.as_str());
        let name = format!("SP-N{}-{}", family_tag(family), short_hash(&key));
        self.pod_drawn_set(name, SetType::HashIpPort, || {
            let source = SetSource::NamedPort {
                peer: peer.cloned(),
                port: port.to_string(),
                protocol,
                family,
            };
            (source, format!("named port: {key}"))
        })
    }

    /// The set of an ipBlock; `None` when the block is of the other family.
    pub(super) fn block_set(
        &mut self,
        cidr: &IpNet,
        except: &[IpNet],
        family: Family,
    ) -> Option<String> {
        if Family::of_net(cidr) != family {
            return None;
        }
        let key = format!("{cidr} except {except:?}");
        let name = format!("SP-B{}-{}", family_tag(family), short_hash(&key));
        // hash:net holds prefixes of length 1 and up: /0 is two halves.
        let mut entries: Vec<SetEntry> = if cidr.prefix_len() == 0 {
            match cidr.subnets(1) {
                Ok(halves) => halves
                    .map(|net| SetEntry::Net {
                        net,
                        nomatch: false,
                    })
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![SetEntry::Net {
                net: *cidr,
                nomatch: false,
            }]
        };
        // An except that is one of the halves replaces it (one entry per net).
        entries.retain(|e| !matches!(e, SetEntry::Net { net, .. } if except.contains(net)));
        entries.extend(except.iter().map(|net| SetEntry::Net {
            net: *net,
            nomatch: true,
        }));
        self.ensure_set(
            &name,
            SetType::HashNet,
            family,
            format!("ipBlock {key}"),
            &entries,
        );
        Some(name)
    }

    /// RETURN rules allowing what `rules` allow for `pod` in `direction`.
    fn rules(
        &mut self,
        pod: &Pod,
        family: Family,
        rules: &[&PolicyRule],
        direction: Direction,
    ) -> Vec<Rule> {
        let dir = match direction {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        };
        let mut out = Vec::new();
        for rule in rules {
            // Peer matches: `None` is "any peer".
            let mut peers: Vec<(Option<String>, Option<&PodPeer>)> = Vec::new();
            if rule.peers.is_empty() {
                peers.push((None, None));
            }
            for peer in &rule.peers {
                match peer {
                    Peer::Pods(p) => {
                        let set = self.pod_set(p, family);
                        peers.push((Some(set), Some(p)));
                    }
                    Peer::Block { cidr, except } => {
                        if let Some(set) = self.block_set(cidr, except, family) {
                            peers.push((Some(set), None));
                        }
                    }
                }
            }
            let any_port = [PortSpec {
                protocol: Protocol::Tcp,
                port: None,
                end_port: None,
            }];
            let ports: &[PortSpec] = if rule.ports.is_empty() {
                &any_port
            } else {
                &rule.ports
            };
            for (set, pod_peer) in &peers {
                for port in ports {
                    let mut args: Vec<String> = Vec::new();
                    let peer_match = |args: &mut Vec<String>| {
                        if let Some(set) = set {
                            args.extend(["-m", "set", "--match-set", set, dir].map(String::from));
                        }
                    };
                    if rule.ports.is_empty() {
                        peer_match(&mut args);
                    } else {
                        match &port.port {
                            None => {
                                peer_match(&mut args);
                                args.extend(["-p", port.protocol.as_str()].map(String::from));
                            }
                            Some(PortRef::Number(n)) => {
                                peer_match(&mut args);
                                let range = match port.end_port {
                                    Some(end) if end != *n => format!("{n}:{end}"),
                                    _ => n.to_string(),
                                };
                                args.extend(
                                    ["-p", port.protocol.as_str(), "--dport", &range]
                                        .map(String::from),
                                );
                            }
                            Some(PortRef::Name(name)) => match direction {
                                Direction::Ingress => {
                                    // The name is the local pod's own port.
                                    let Some(n) = pod.named_port(name, port.protocol) else {
                                        continue;
                                    };
                                    peer_match(&mut args);
                                    args.extend(
                                        ["-p", port.protocol.as_str(), "--dport", &n.to_string()]
                                            .map(String::from),
                                    );
                                }
                                Direction::Egress => {
                                    // The name is each destination pod's port: a
                                    // set of (IP, port) replaces both matches.
                                    if set.is_some() && pod_peer.is_none() {
                                        continue; // an ipBlock has no named ports
                                    }
                                    let named =
                                        self.named_port_set(*pod_peer, name, port.protocol, family);
                                    args.extend(
                                        ["-m", "set", "--match-set", &named, "dst,dst"]
                                            .map(String::from),
                                    );
                                }
                            },
                        }
                    }
                    args.extend(["-j", "RETURN"].map(String::from));
                    out.push(Rule(args));
                }
            }
        }
        out
    }

    fn finish(mut self, police_node_traffic: bool) -> Fragment {
        for (family, mut rules) in std::mem::take(&mut self.dispatch) {
            rules.sort_by_key(|(stage, _)| *stage);
            let mut chain = vec![Rule::new([
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "RETURN",
            ])];
            if !police_node_traffic {
                // Kubernetes: traffic from a pod's own node is always allowed
                // (kubelet probes).
                chain.push(Rule::new([
                    "-m",
                    "addrtype",
                    "--src-type",
                    "LOCAL",
                    "-j",
                    "RETURN",
                ]));
            }
            chain.extend(rules.into_iter().map(|(_, r)| r));
            self.fragment.put_chain(
                ChainKey {
                    family,
                    table: Table::Filter,
                    name: CHAIN_POLICY.to_string(),
                },
                Arc::new(Chain { rules: chain }),
            );
            for from in ["FORWARD", "OUTPUT"] {
                self.fragment.add_jump(Jump {
                    family,
                    table: Table::Filter,
                    from: from.to_string(),
                    position: 0,
                    rule: Rule::new([
                        "-m",
                        "comment",
                        "--comment",
                        "setpoint network policy",
                        "-j",
                        CHAIN_POLICY,
                    ]),
                });
            }
        }
        self.fragment
    }
}
