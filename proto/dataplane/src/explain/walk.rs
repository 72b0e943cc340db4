//! The walk itself: built-in chains, Setpoint's chains and rules, and the
//! matches Setpoint's rules use, interpreted for one packet.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Backend, Origin, Packet, SetHit, Step, Verdict, VirtualServerHit};
use crate::{ChainKey, Family, Fragment, Protocol, Rule, SetEntry, SetType, Table};
use crate::{VirtualServer, VirtualServerKey};

const MAX_DEPTH: usize = 32;

enum Flow {
    /// On to the next rule.
    Continue,
    /// RETURN: out of the current chain.
    Return,
    Final(Verdict, String),
}

enum Match {
    Yes,
    No,
    Unknown(NotUnderstood),
}

/// Why a rule's condition could not be evaluated; listed in
/// [`Explanation::not_evaluated`].
#[derive(Debug, thiserror::Error)]
enum NotUnderstood {
    #[error("match module {0} not understood")]
    Module(String),
    #[error("option {0} not understood")]
    Option(String),
    #[error("address {0:?} not understood")]
    Address(String),
    #[error("port {0:?} not understood")]
    Port(String),
    #[error("mark {0:?} not understood")]
    Mark(String),
    #[error(transparent)]
    Protocol(#[from] crate::model::UnknownProtocol),
    #[error("the source port is not given")]
    NoSourcePort,
    #[error("set {0} is not in the state")]
    NoSet(String),
    #[error("set {set}: direction {n} missing")]
    NoDirection { set: String, n: usize },
}

pub(super) struct Walk<'a> {
    pub(super) f: &'a Fragment,
    pub(super) family: Family,
    pub(super) packet: Packet,
    pub(super) mark: u32,
    pub(super) hook: String,
    pub(super) steps: Vec<Step>,
    pub(super) sets: BTreeSet<SetHit>,
    pub(super) not_evaluated: Vec<String>,
    /// Addresses known to be the node's own: bound service addresses and
    /// virtual servers' addresses (node ports).
    pub(super) local: BTreeSet<IpAddr>,
    /// Policy rules that let the packet on (an Accept's RETURN, a Pass's
    /// goto), by their comments, in the order they matched.
    pub(super) allowed_by: Vec<String>,
}

impl Walk<'_> {
    /// The verdict and its reason; a packet that policy let through says
    /// which rules did (a drop's reason already names its rule).
    pub(super) fn run(&mut self) -> (Verdict, String, Option<VirtualServerHit>) {
        let (verdict, reason, hit) = self.walk();
        if matches!(verdict, Verdict::Drop | Verdict::Reject) || self.allowed_by.is_empty() {
            return (verdict, reason, hit);
        }
        let by = self.allowed_by.join("; then ");
        (verdict, format!("{reason} (policy: {by})"), hit)
    }

    fn walk(&mut self) -> (Verdict, String, Option<VirtualServerHit>) {
        let from = self.packet.from;
        let nat_hook = if from == Origin::Node {
            "OUTPUT"
        } else {
            "PREROUTING"
        };
        if let Flow::Final(v @ (Verdict::Drop | Verdict::Reject), why) =
            self.builtin(Table::Nat, nat_hook)
        {
            return (v, why, None);
        }
        let key = VirtualServerKey {
            address: self.packet.dst,
            protocol: self.packet.protocol,
            port: self.packet.dst_port,
        };
        let vs = self.f.virtual_server(&key).cloned();
        let local = self.local.contains(&self.packet.dst);
        let filter_hook = match (local, from) {
            (true, _) => "INPUT",
            (false, Origin::Node) => "OUTPUT",
            (false, _) => "FORWARD",
        };
        if let Flow::Final(v, why) = self.builtin(Table::Filter, filter_hook)
            && (v != Verdict::Accept || !local)
        {
            return (v, why, vs.map(|vs| self.hit(&key, &vs, Vec::new())));
        }
        if !local {
            self.postrouting();
            return (
                Verdict::NotSetpoint,
                format!(
                    "{} is not a service address of this node; no Setpoint rule refuses it",
                    self.packet.dst
                ),
                None,
            );
        }
        let Some(vs) = vs else {
            return (
                Verdict::NotSetpoint,
                format!(
                    "{} is the node's own address but {}:{} is no virtual server: the node's sockets decide",
                    self.packet.dst, self.packet.protocol, self.packet.dst_port
                ),
                None,
            );
        };
        if vs.real_servers.is_empty() {
            // ip_vs_leave: no destination scheduled, so IPVS answers ICMP
            // port unreachable itself (a connect is refused, not left to
            // time out), as the matrix's packets show.
            return (
                Verdict::Reject,
                format!(
                    "virtual server {key} has no real server: IPVS answers ICMP port unreachable"
                ),
                Some(self.hit(&key, &vs, Vec::new())),
            );
        }
        // IPVS (NAT mode) sends the rewritten packet through LOCAL_OUT.
        let mut backends = Vec::new();
        let original = self.packet.clone();
        let mark = self.mark;
        for rs in &vs.real_servers {
            self.packet.dst = rs.address;
            self.packet.dst_port = rs.port;
            self.mark = mark;
            let to = socket(rs.address, rs.port);
            let verdict = match self.builtin_as(
                Table::Filter,
                "OUTPUT",
                format!("filter OUTPUT after IPVS to {to}"),
            ) {
                Flow::Final(v @ (Verdict::Drop | Verdict::Reject), _) => v,
                _ => Verdict::Dnat,
            };
            backends.push(Backend {
                address: to,
                weight: rs.weight,
                verdict,
            });
        }
        self.packet = original;
        self.postrouting();
        let hit = self.hit(&key, &vs, backends);
        let allowed = hit
            .real_servers
            .iter()
            .filter(|b| b.verdict == Verdict::Dnat)
            .count();
        if allowed == 0 {
            let v = hit
                .real_servers
                .first()
                .map(|b| b.verdict)
                .unwrap_or(Verdict::Drop);
            return (
                v,
                format!("virtual server {key}: every real server is refused by the filter"),
                Some(hit),
            );
        }
        (
            Verdict::Dnat,
            format!(
                "IPVS {key} ({}) forwards to one of {allowed} of {} real server(s)",
                vs.scheduler,
                hit.real_servers.len()
            ),
            Some(hit),
        )
    }

    fn postrouting(&mut self) {
        let _ = self.builtin(Table::Nat, "POSTROUTING");
    }

    fn hit(
        &self,
        key: &VirtualServerKey,
        vs: &VirtualServer,
        real_servers: Vec<Backend>,
    ) -> VirtualServerHit {
        let real_servers = if real_servers.is_empty() {
            vs.real_servers
                .iter()
                .map(|rs| Backend {
                    address: socket(rs.address, rs.port),
                    weight: rs.weight,
                    verdict: Verdict::NotSetpoint,
                })
                .collect()
        } else {
            real_servers
        };
        VirtualServerHit {
            service: format!("{key}/{}", key.protocol),
            scheduler: vs.scheduler.to_string(),
            persistence_timeout: vs.persistence_timeout,
            real_servers,
        }
    }

    fn builtin(&mut self, table: Table, chain: &str) -> Flow {
        self.builtin_as(table, chain, format!("{} {chain}", table.as_str()))
    }

    /// Setpoint's jumps from a built-in chain, in position order.
    fn builtin_as(&mut self, table: Table, chain: &str, hook: String) -> Flow {
        self.hook = hook;
        let mut jumps: Vec<(u16, Rule)> = self
            .f
            .jumps()
            .filter(|j| j.family == self.family && j.table == table && j.from == chain)
            .map(|j| (j.position, j.rule.clone()))
            .collect();
        jumps.sort();
        for (position, rule) in jumps {
            match self.rule(table, chain, usize::from(position), &rule, 0) {
                Flow::Continue => {}
                Flow::Return => return Flow::Continue,
                f @ Flow::Final(..) => return f,
            }
        }
        Flow::Continue
    }

    fn chain(&mut self, table: Table, name: &str, depth: usize) -> Flow {
        let key = ChainKey {
            family: self.family,
            table,
            name: name.to_string(),
        };
        let Some(chain) = self.f.chain(&key).cloned() else {
            self.not_evaluated.push(format!(
                "{} chain {name} is not in the state",
                table.as_str()
            ));
            return Flow::Continue;
        };
        if depth > MAX_DEPTH {
            self.not_evaluated
                .push(format!("{name}: jumps nested deeper than {MAX_DEPTH}"));
            return Flow::Continue;
        }
        for (i, rule) in chain.rules.iter().enumerate() {
            match self.rule(table, name, i + 1, rule, depth) {
                Flow::Continue => {}
                // Back to the caller.
                Flow::Return => return Flow::Continue,
                f @ Flow::Final(..) => return f,
            }
        }
        Flow::Continue
    }

    fn rule(&mut self, table: Table, chain: &str, index: usize, rule: &Rule, depth: usize) -> Flow {
        let text = rule.0.join(" ");
        let outcome = self.matches(rule);
        let record = |walk: &mut Self, outcome: String| {
            walk.steps.push(Step {
                hook: walk.hook.clone(),
                chain: chain.to_string(),
                rule: index,
                text: text.clone(),
                outcome,
            });
        };
        match outcome {
            Match::No => {
                record(self, "no match".into());
                return Flow::Continue;
            }
            Match::Unknown(why) => {
                self.not_evaluated
                    .push(format!("{chain} rule {index}: {why}"));
                record(self, format!("not evaluated: {why}"));
                return Flow::Continue;
            }
            Match::Yes => record(self, "match".into()),
        }
        let Some((goto, target, args)) = target(rule) else {
            return Flow::Continue;
        };
        // The rule's comment says whose rule it is (a ClusterNetworkPolicy
        // rule's names its tier, policy and rule): the reason quotes it.
        if let Some(c) = comment(rule).filter(|c| is_policy_rule(c))
            && (target == "RETURN" || goto)
            && !self.allowed_by.iter().any(|seen| seen == c)
        {
            self.allowed_by.push(c.to_string());
        }
        let at = match comment(rule) {
            Some(c) => format!("{} {chain} rule {index} ({c})", table.as_str()),
            None => format!("{} {chain} rule {index}", table.as_str()),
        };
        match target {
            "ACCEPT" => Flow::Final(Verdict::Accept, format!("ACCEPT at {at}")),
            "DROP" => Flow::Final(Verdict::Drop, format!("DROP at {at}")),
            "REJECT" => Flow::Final(Verdict::Reject, format!("REJECT at {at}: {text}")),
            "RETURN" => Flow::Return,
            // Non-terminating: a verdict log (rate-limited by its `-m limit`).
            "NFLOG" | "LOG" => Flow::Continue,
            "MASQUERADE" | "SNAT" => Flow::Final(Verdict::Accept, format!("{target} at {at}")),
            "MARK" => {
                self.apply_mark(args);
                Flow::Continue
            }
            user if self.f.chain(&chain_key(self.family, table, user)).is_some() => {
                let flow = self.chain(table, user, depth + 1);
                match (flow, goto) {
                    (f @ Flow::Final(..), _) => f,
                    // A goto's RETURN returns from the calling chain too.
                    (_, true) => Flow::Return,
                    (_, false) => Flow::Continue,
                }
            }
            other => {
                self.not_evaluated.push(format!(
                    "{chain} rule {index}: target {other} not evaluated"
                ));
                Flow::Continue
            }
        }
    }

    fn apply_mark(&mut self, args: &[String]) {
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().and_then(|v| parse_mark(v));
            match (flag.as_str(), value) {
                ("--or-mark", Some((v, _))) => self.mark |= v,
                ("--xor-mark", Some((v, _))) => self.mark ^= v,
                ("--and-mark", Some((v, _))) => self.mark &= v,
                ("--set-mark", Some((v, m))) | ("--set-xmark", Some((v, m))) => {
                    self.mark = (self.mark & !m) ^ v
                }
                _ => self
                    .not_evaluated
                    .push(format!("MARK {flag}: not understood")),
            }
        }
    }

    fn matches(&mut self, rule: &Rule) -> Match {
        let args = &rule.0;
        let mut i = 0;
        let mut negate = false;
        let mut unknown: Option<NotUnderstood> = None;
        let mut no = false;
        while i < args.len() {
            let arg = args[i].as_str();
            let value = args.get(i + 1).map(String::as_str);
            let mut step = 2;
            let cond: Option<Result<bool, NotUnderstood>> = match (arg, value) {
                ("!", _) => {
                    negate = true;
                    i += 1;
                    continue;
                }
                ("-j" | "--jump" | "-g" | "--goto", _) => break,
                ("-m" | "--match", Some(module)) => match module {
                    "comment" | "set" | "addrtype" | "mark" | "conntrack" | "tcp" | "udp"
                    | "sctp" => None,
                    // A rate: explain speaks of one packet, within it.
                    "limit" => None,
                    other => Some(Err(NotUnderstood::Module(other.to_string()))),
                },
                ("--comment" | "--limit" | "--limit-burst", Some(_)) => None,
                ("-s" | "--source", Some(v)) => Some(net(v).map(|n| n.contains(&self.packet.src))),
                ("-d" | "--destination", Some(v)) => {
                    Some(net(v).map(|n| n.contains(&self.packet.dst)))
                }
                ("-p" | "--protocol", Some(v)) => Some(
                    v.parse::<Protocol>()
                        .map(|p| p == self.packet.protocol)
                        .map_err(NotUnderstood::from),
                ),
                ("--dport" | "--destination-port", Some(v)) => {
                    Some(port_range(v).map(|(a, b)| (a..=b).contains(&self.packet.dst_port)))
                }
                ("--sport" | "--source-port", Some(v)) => Some(match self.packet.src_port {
                    None => Err(NotUnderstood::NoSourcePort),
                    Some(p) => port_range(v).map(|(a, b)| (a..=b).contains(&p)),
                }),
                ("--match-set", Some(set)) => {
                    step = 3;
                    let dirs = args.get(i + 2).map(String::as_str).unwrap_or("");
                    Some(self.set_match(set, dirs, negate))
                }
                ("--dst-type", Some("LOCAL")) => Some(Ok(self.local.contains(&self.packet.dst))),
                ("--src-type", Some("LOCAL")) => Some(Ok(self.packet.from == Origin::Node)),
                ("--mark", Some(v)) => Some(
                    parse_mark(v)
                        .map(|(v, m)| self.mark & m == v)
                        .ok_or_else(|| NotUnderstood::Mark(v.to_string())),
                ),
                ("--ctstate", Some(v)) => Some(Ok(v.split(',').any(|s| s == "NEW"))),
                (other, _) => Some(Err(NotUnderstood::Option(other.to_string()))),
            };
            match cond {
                None => {}
                Some(Ok(hit)) => no |= hit == negate,
                Some(Err(why)) => {
                    unknown.get_or_insert(why);
                }
            }
            negate = false;
            i += step;
        }
        match (no, unknown) {
            (true, _) => Match::No,
            (false, Some(why)) => Match::Unknown(why),
            (false, None) => Match::Yes,
        }
    }

    /// Looks the packet up in a set as `--match-set NAME dirs` would.
    fn set_match(&mut self, name: &str, dirs: &str, negated: bool) -> Result<bool, NotUnderstood> {
        let Some(spec) = self.f.set(name) else {
            return Err(NotUnderstood::NoSet(name.to_string()));
        };
        let dirs: Vec<&str> = dirs.split(',').collect();
        let p = &self.packet;
        let missing = |n: usize| NotUnderstood::NoDirection {
            set: name.to_string(),
            n,
        };
        let ip = |n: usize| match dirs.get(n) {
            Some(&"src") => Ok(p.src),
            Some(&"dst") => Ok(p.dst),
            _ => Err(missing(n)),
        };
        let port = |n: usize| match dirs.get(n) {
            Some(&"src") => p.src_port.ok_or(NotUnderstood::NoSourcePort),
            Some(&"dst") => Ok(p.dst_port),
            _ => Err(missing(n)),
        };
        if spec.kind != SetType::BitmapPort && spec.family != self.family {
            return Ok(false);
        }
        let entries = self.f.entries(name);
        let has = |e: &SetEntry| entries.is_some_and(|s| s.contains(e));
        let found: Option<SetEntry> = match spec.kind {
            SetType::HashIp => Some(SetEntry::Ip(ip(0)?)).filter(has),
            SetType::HashIpPort => Some(SetEntry::IpPort {
                ip: ip(0)?,
                protocol: p.protocol,
                port: port(1)?,
            })
            .filter(has),
            SetType::HashIpPortIp => Some(SetEntry::IpPortIp {
                ip: ip(0)?,
                protocol: p.protocol,
                port: port(1)?,
                ip2: ip(2)?,
            })
            .filter(has),
            SetType::HashIpPortNet => {
                let (a, b, c) = (ip(0)?, port(1)?, ip(2)?);
                entries.and_then(|s| {
                    s.iter()
                        .filter(|e| {
                            matches!(e, SetEntry::IpPortNet { ip, protocol, port, net }
                                if *ip == a && *protocol == p.protocol && *port == b && net.contains(&c))
                        })
                        .max_by_key(|e| match e {
                            SetEntry::IpPortNet { net, .. } => net.prefix_len(),
                            _ => 0,
                        })
                        .cloned()
                })
            }
            SetType::HashNet => {
                let a = ip(0)?;
                // The most specific net decides; a nomatch one excludes.
                entries
                    .and_then(|s| {
                        s.iter()
                            .filter(|e| matches!(e, SetEntry::Net { net, .. } if net.contains(&a)))
                            .max_by_key(|e| match e {
                                SetEntry::Net { net, .. } => net.prefix_len(),
                                _ => 0,
                            })
                            .cloned()
                    })
                    .filter(|e| !matches!(e, SetEntry::Net { nomatch: true, .. }))
            }
            SetType::BitmapPort => Some(SetEntry::Port(port(0)?)).filter(has),
        };
        if let Some(entry) = &found
            && !negated
        {
            self.sets.insert(SetHit {
                set: name.to_string(),
                entry: entry.to_string(),
            });
        }
        Ok(found.is_some())
    }
}

fn chain_key(family: Family, table: Table, name: &str) -> ChainKey {
    ChainKey {
        family,
        table,
        name: name.to_string(),
    }
}

/// The rule's target: (goto, name, its arguments).
fn target(rule: &Rule) -> Option<(bool, &str, &[String])> {
    let args = &rule.0;
    let i = args
        .iter()
        .position(|a| matches!(a.as_str(), "-j" | "--jump" | "-g" | "--goto"))?;
    let goto = matches!(args[i].as_str(), "-g" | "--goto");
    let name = args.get(i + 1)?;
    Some((goto, name.as_str(), &args[(i + 2).min(args.len())..]))
}

pub(super) fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}:{port}"),
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
    }
}

fn net(text: &str) -> Result<IpNet, NotUnderstood> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| NotUnderstood::Address(text.to_string()))
}

fn port_range(text: &str) -> Result<(u16, u16), NotUnderstood> {
    let bad = || NotUnderstood::Port(text.to_string());
    match text.split_once(':') {
        Some((a, b)) => Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
        None => {
            let p = text.parse().map_err(|_| bad())?;
            Ok((p, p))
        }
    }
}

/// `0x40000`, `0x40000/0x40000`, decimal too; no mask means all bits.
fn parse_mark(text: &str) -> Option<(u32, u32)> {
    let num = |s: &str| match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    match text.split_once('/') {
        Some((v, m)) => Some((num(v)?, num(m)?)),
        None => Some((num(text)?, u32::MAX)),
    }
}

/// A rule of a policy tier (ClusterNetworkPolicy `cnp:`, NetworkPolicy
/// `np:`), by its comment.
fn is_policy_rule(comment: &str) -> bool {
    comment.starts_with("cnp:") || comment.starts_with("np:")
}

/// The text of a rule's `-m comment --comment`, if it has one.
fn comment(rule: &Rule) -> Option<&str> {
    rule.0
        .iter()
        .position(|a| a == "--comment")
        .and_then(|i| rule.0.get(i + 1))
        .map(String::as_str)
}
