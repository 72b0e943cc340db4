//! What a node's state does to one packet: [`explain`].
//!
//! ```text
//!  packet ─▶ nat PREROUTING/OUTPUT ─▶ local? ─yes─▶ filter INPUT ─▶ IPVS virtual server ─▶ per real server: filter OUTPUT
//!                                          └─no──▶ filter FORWARD/OUTPUT
//! ```
//!
//! The walk follows Setpoint's own jumps from the built-in chains (in
//! `position` order) into its chains, as the kernel would, and interprets
//! the matches Setpoint's rules use: `-s`/`-d`, `-p`, `--dport`,
//! `--sport`, `-m set --match-set` (looked up in the state's sets),
//! `-m addrtype`, `-m mark` (the walk tracks the mark its `MARK` rules
//! set), `-m conntrack --ctstate` (the packet is taken as the first of a
//! new connection) and `-m comment`. A rule with anything else is reported
//! "not evaluated" and taken as not matching; the explanation says so.
//! Only Setpoint's state is known: a built-in chain's own rules and
//! policy, routing and the node's other addresses are not.

mod walk;

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::{Family, NodeDataplane, Protocol};
use walk::{Walk, socket};

/// Where a packet comes from, which decides the hooks it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod on this node (routed: PREROUTING, then INPUT or FORWARD).
    Pod,
    /// Another host, arriving on an interface (like a pod, but never local).
    Outside,
    /// A process of the node itself (OUTPUT).
    Node,
}

/// An origin other than pod, outside or node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown origin {0:?} (expected pod, outside or node)")]
pub struct UnknownOrigin(pub String);

impl std::str::FromStr for Origin {
    type Err = UnknownOrigin;
    fn from_str(s: &str) -> Result<Origin, UnknownOrigin> {
        match s {
            "" | "pod" => Ok(Origin::Pod),
            "outside" => Ok(Origin::Outside),
            "node" => Ok(Origin::Node),
            other => Err(UnknownOrigin(other.to_string())),
        }
    }
}

/// The packet: the first of a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub protocol: Protocol,
    pub src: IpAddr,
    /// `None`: unknown (a rule matching the source port is not evaluated).
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub from: Origin,
}

/// The packet's fate as far as Setpoint's state decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// IPVS forwards it to one of the virtual server's real servers.
    Dnat,
    Accept,
    Drop,
    Reject,
    /// No Setpoint rule decides; the kernel's own chains and routing do.
    NotSetpoint,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Dnat => "dnat",
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
            Verdict::NotSetpoint => "not-setpoint",
        }
    }
}

/// One rule looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `nat PREROUTING`, `filter INPUT`, `filter OUTPUT after IPVS to …`.
    pub hook: String,
    pub chain: String,
    /// 1-based in Setpoint's chains; in a built-in chain, the jump's
    /// `position` (its order among Setpoint's jumps there).
    pub rule: usize,
    pub text: String,
    /// `match`, `no match` or `not evaluated: why`.
    pub outcome: String,
}

/// A set entry a rule's `--match-set` found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SetHit {
    pub set: String,
    pub entry: String,
}

/// The virtual server the packet's destination matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VirtualServerHit {
    pub service: String,
    pub scheduler: String,
    pub persistence_timeout: Option<u32>,
    pub real_servers: Vec<Backend>,
}

/// One real server and what the filter does on the way to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
    pub verdict: Verdict,
}

/// Everything [`explain`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub packet: Packet,
    pub verdict: Verdict,
    /// One line: why.
    pub reason: String,
    pub sets: Vec<SetHit>,
    pub steps: Vec<Step>,
    pub virtual_server: Option<VirtualServerHit>,
    /// Rules whose matches were not understood, and assumptions made.
    pub not_evaluated: Vec<String>,
}

/// Why a packet cannot be explained on a state.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("source {src} and destination {dst} are of different address families")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    /// Two NodePort templates claim one address and port.
    #[error(transparent)]
    Collision(#[from] crate::template::Collision),
}

/// How `state` treats `packet`: the set entries its rules find, the rules
/// it passes from the built-in chains down, the IPVS virtual server, and
/// the verdict. Pure; an error only for a packet mixing address families.
pub fn explain(state: &NodeDataplane, packet: &Packet) -> Result<Explanation, ExplainError> {
    let family = Family::of(&packet.dst);
    if Family::of(&packet.src) != family {
        return Err(ExplainError::MixedFamilies {
            src: packet.src,
            dst: packet.dst,
        });
    }
    // The kernel's view: NodePort templates on each node address.
    let f = crate::template::expand(&state.flatten())?;
    let mut local: BTreeSet<IpAddr> = f.addresses().copied().collect();
    local.extend(f.virtual_servers().map(|(k, _)| k.address));
    local.extend(crate::template::node_port_addresses(&f, family));
    let mut walk = Walk {
        f: &f,
        family,
        packet: packet.clone(),
        mark: 0,
        hook: String::new(),
        steps: Vec::new(),
        sets: BTreeSet::new(),
        not_evaluated: Vec::new(),
        local,
        allowed_by: Vec::new(),
    };
    let (verdict, reason, vs) = walk.run();
    Ok(Explanation {
        packet: packet.clone(),
        verdict,
        reason,
        sets: walk.sets.into_iter().collect(),
        steps: walk.steps,
        virtual_server: vs,
        not_evaluated: walk.not_evaluated,
    })
}

/// The explanation for people: the rules that matched or could not be
/// evaluated, the sets, the virtual server, the verdict.
pub fn render_text(e: &Explanation) -> String {
    use std::fmt::Write;
    let p = &e.packet;
    let mut out = String::new();
    let src = match p.src_port {
        Some(port) => socket(p.src, port),
        None => p.src.to_string(),
    };
    let from = match p.from {
        Origin::Pod => "a pod",
        Origin::Outside => "outside",
        Origin::Node => "the node",
    };
    let _ = writeln!(
        out,
        "packet: {} {src} -> {} from {from}",
        p.protocol,
        socket(p.dst, p.dst_port)
    );
    let mut hook = "";
    for s in &e.steps {
        if s.outcome == "no match" {
            continue;
        }
        if s.hook != hook {
            hook = &s.hook;
            let _ = writeln!(out, "{hook}:");
        }
        let _ = writeln!(out, "  {}#{}  {}  [{}]", s.chain, s.rule, s.text, s.outcome);
    }
    if !e.sets.is_empty() {
        let _ = writeln!(out, "set entries:");
        for s in &e.sets {
            let _ = writeln!(out, "  {} {}", s.set, s.entry);
        }
    }
    if let Some(vs) = &e.virtual_server {
        let persistence = vs
            .persistence_timeout
            .map(|t| format!(", persistent {t}s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "virtual server: {} scheduler {}{persistence}",
            vs.service, vs.scheduler
        );
        for b in &vs.real_servers {
            let _ = writeln!(
                out,
                "  -> {} weight {} [{}]",
                b.address,
                b.weight,
                b.verdict.as_str()
            );
        }
    }
    for n in &e.not_evaluated {
        let _ = writeln!(out, "not evaluated: {n}");
    }
    let _ = writeln!(out, "verdict: {} ({})", e.verdict.as_str(), e.reason);
    out
}
