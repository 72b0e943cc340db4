//! A state as the kernel tools write and read it: `ipset restore` input,
//! `iptables-restore --noflush` input per family, `ipvsadm-save -n` lines,
//! and a plain-text overview for people.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::fragment::Fragment;
use crate::model::{Family, Protocol, SetEntry, SetType, Table, VirtualServerKey};
use crate::state::NodeDataplane;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ipset,
    Iptables,
    Ip6tables,
    Ipvs,
    Text,
}

/// A format name [`Format`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?} (expected json, ipset, iptables, ip6tables, ipvs or text)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "ipset" => Ok(Format::Ipset),
            "iptables" => Ok(Format::Iptables),
            "ip6tables" => Ok(Format::Ip6tables),
            "ipvs" => Ok(Format::Ipvs),
            "text" => Ok(Format::Text),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

impl Format {
    pub const NAMES: &'static str = "json, ipset, iptables, ip6tables, ipvs, text";
}

pub fn render(state: &NodeDataplane, format: Format) -> String {
    let flat = state.flatten();
    match format {
        Format::Json => match serde_json::to_string_pretty(state) {
            Ok(mut text) => {
                text.push('\n');
                text
            }
            // Serialising plain data to a String cannot fail; keep the
            // error visible rather than panicking if that ever changes.
            Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
        },
        Format::Ipset => ipset_restore(&flat),
        Format::Iptables => iptables_restore(&flat, Family::Inet),
        Format::Ip6tables => iptables_restore(&flat, Family::Inet6),
        // The kernel's view: NodePort templates on each node address.
        Format::Ipvs => match crate::template::expand(&flat) {
            Ok(kernel) => ipvsadm_save(&kernel),
            Err(collision) => format!("# not applicable: {collision}\n"),
        },
        Format::Text => text(state, &flat),
    }
}

/// `ipset restore` input: `create` then `add` lines per set, in name order.
pub fn ipset_restore(f: &Fragment) -> String {
    let mut out = String::new();
    for (name, spec) in f.sets() {
        match spec.kind {
            SetType::BitmapPort => {
                let _ = writeln!(out, "create {name} bitmap:port range 0-65535");
            }
            kind => {
                let _ = writeln!(
                    out,
                    "create {name} {kind} family {} hashsize 1024 maxelem {}",
                    spec.family.as_str(),
                    spec.maxelem
                );
            }
        }
        for entry in f.entries(name).into_iter().flatten() {
            let _ = writeln!(out, "add {name} {}", ipset_entry(spec.kind, entry));
        }
    }
    out
}

/// An entry as `ipset save` prints it: host nets lose their `/32` / `/128`.
pub fn ipset_entry(kind: SetType, entry: &SetEntry) -> String {
    match (kind, entry) {
        (SetType::HashNet, SetEntry::Net { net, nomatch })
            if net.prefix_len() == net.max_prefix_len() =>
        {
            if *nomatch {
                format!("{} nomatch", net.addr())
            } else {
                net.addr().to_string()
            }
        }
        _ => entry.to_string(),
    }
}

fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        return arg.to_string();
    }
    let mut q = String::with_capacity(arg.len() + 2);
    q.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// A rule's arguments as `iptables-restore` reads them (quoted where needed).
pub fn rule_text(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `iptables-restore --noflush` input for one family: each table declares
/// (and thereby flushes) only Setpoint's own chains, fills them, and
/// inserts the jumps at the top of the built-in chains.
pub fn iptables_restore(f: &Fragment, family: Family) -> String {
    let mut out = String::new();
    for table in [Table::Raw, Table::Mangle, Table::Nat, Table::Filter] {
        let chains: Vec<_> = f
            .chains()
            .filter(|(k, _)| k.family == family && k.table == table)
            .collect();
        let jumps: Vec<_> = f
            .jumps()
            .filter(|j| j.family == family && j.table == table)
            .collect();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{}", table.as_str());
        for (key, _) in &chains {
            let _ = writeln!(out, ":{} - [0:0]", key.name);
        }
        for (key, chain) in &chains {
            for rule in &chain.rules {
                let _ = writeln!(out, "-A {} {}", key.name, rule_text(&rule.0));
            }
        }
        let mut position: std::collections::BTreeMap<&str, usize> = Default::default();
        for jump in jumps {
            let n = position.entry(jump.from.as_str()).or_insert(0);
            *n += 1;
            let _ = writeln!(out, "-I {} {} {}", jump.from, n, rule_text(&jump.rule.0));
        }
        out.push_str("COMMIT\n");
    }
    out
}

fn ipvs_service_flag(key: &VirtualServerKey) -> String {
    let flag = match key.protocol {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    };
    format!("{flag} {key}")
}

/// Lines as `ipvsadm-save -n` writes them.
pub fn ipvsadm_save(f: &Fragment) -> String {
    let mut out = String::new();
    for (key, vs) in f.virtual_servers() {
        let service = ipvs_service_flag(key);
        let _ = write!(out, "-A {service} -s {}", vs.scheduler);
        if let Some(timeout) = vs.persistence_timeout {
            let _ = write!(out, " -p {timeout}");
        }
        out.push('\n');
        for rs in &vs.real_servers {
            let _ = writeln!(
                out,
                "-a {service} -r {} {} -w {}",
                std::net::SocketAddr::new(rs.address, rs.port),
                rs.forward.ipvsadm_flag(),
                rs.weight
            );
        }
    }
    out
}

fn text(state: &NodeDataplane, f: &Fragment) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digest {}", state.digest());
    let _ = writeln!(
        out,
        "{} sets, {} virtual servers, {} addresses, {} chains, {} jumps",
        f.sets().count(),
        f.virtual_server_count(),
        f.addresses().count(),
        f.chains().count(),
        f.jumps().count()
    );
    out.push_str("\n# service addresses\n");
    for addr in f.addresses() {
        let _ = writeln!(out, "  {addr}");
    }
    out.push_str("\n# ipsets\n");
    for (name, spec) in f.sets() {
        let _ = writeln!(
            out,
            "  {name} ({} {}, {} entries) {}",
            spec.kind,
            spec.family.as_str(),
            f.entry_count(name),
            spec.comment
        );
        for entry in f.entries(name).into_iter().flatten() {
            let _ = writeln!(out, "    {entry}");
        }
    }
    out.push_str("\n# IPVS\n");
    for (key, vs) in f.virtual_servers() {
        let _ = write!(out, "  {} {key} {}", key.protocol, vs.scheduler);
        if let Some(t) = vs.persistence_timeout {
            let _ = write!(out, " persistent {t}s");
        }
        if vs.real_servers.is_empty() {
            out.push_str(" (no real servers)");
        }
        out.push('\n');
        for rs in &vs.real_servers {
            let _ = writeln!(
                out,
                "    -> {} weight {}",
                std::net::SocketAddr::new(rs.address, rs.port),
                rs.weight
            );
        }
    }
    for family in Family::ALL {
        let rules = iptables_restore(f, family);
        if !rules.is_empty() {
            let tool = match family {
                Family::Inet => "iptables",
                Family::Inet6 => "ip6tables",
            };
            let _ = write!(out, "\n# {tool}\n{rules}");
        }
    }
    // Node facts, shown only when there are any: served, not applied.
    if f.health_checks().next().is_some() {
        out.push_str("\n# health checks\n");
        for (port, check) in f.health_checks() {
            let _ = writeln!(
                out,
                "  {port} {}/{} {} local endpoints",
                check.namespace, check.name, check.local_endpoints
            );
        }
    }
    if f.node_conditions().next().is_some() {
        out.push_str("\n# node\n");
        for condition in f.node_conditions() {
            let _ = writeln!(out, "  {condition}");
        }
    }
    out
}
