//! The atoms of a node's dataplane: set definitions and entries, IPVS
//! virtual servers with their real servers, service addresses, iptables
//! chains and the jumps into them from built-in chains.
//!
//! Every type here has a total order (the canonical order of the state) and
//! a textual form that matches the kernel tools (`ipset save`, `ipvsadm-save`,
//! `iptables-save`), so that what we print is what an operator would see.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Longest set name the kernel accepts (`IPSET_MAXNAMELEN` is 32 with the NUL).
pub const MAX_SET_NAME_LEN: usize = 31;
/// Longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` is 29 with the NUL).
pub const MAX_CHAIN_NAME_LEN: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Inet,
            IpNet::V6(_) => Family::Inet6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
        }
    }

    pub const ALL: [Family; 2] = [Family::Inet, Family::Inet6];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name other than tcp, udp or sctp (in lower case).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

/// The ipset types Setpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SetType {
    #[serde(rename = "hash:ip")]
    HashIp,
    #[serde(rename = "hash:ip,port")]
    HashIpPort,
    #[serde(rename = "hash:ip,port,ip")]
    HashIpPortIp,
    #[serde(rename = "hash:ip,port,net")]
    HashIpPortNet,
    #[serde(rename = "hash:net")]
    HashNet,
    #[serde(rename = "bitmap:port")]
    BitmapPort,
}

impl SetType {
    pub const ALL: [SetType; 6] = [
        SetType::HashIp,
        SetType::HashIpPort,
        SetType::HashIpPortIp,
        SetType::HashIpPortNet,
        SetType::HashNet,
        SetType::BitmapPort,
    ];

    /// The type named as `ipset` names it (`hash:ip,port`).
    pub fn parse(text: &str) -> Option<SetType> {
        SetType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::HashNet => "hash:net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// Whether an entry has the shape this set type stores.
    pub fn accepts(self, entry: &SetEntry) -> bool {
        matches!(
            (self, entry),
            (SetType::HashIp, SetEntry::Ip(_))
                | (SetType::HashIpPort, SetEntry::IpPort { .. })
                | (SetType::HashIpPortIp, SetEntry::IpPortIp { .. })
                | (SetType::HashIpPortNet, SetEntry::IpPortNet { .. })
                | (SetType::HashNet, SetEntry::Net { .. })
                | (SetType::BitmapPort, SetEntry::Port(_))
        )
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a set is created. `family` is meaningless for `bitmap:port` and kept
/// as `inet` there by convention.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SetSpec {
    #[serde(rename = "type")]
    pub kind: SetType,
    pub family: Family,
    /// The kernel refuses adds past this many entries.
    pub maxelem: u32,
    /// Operator-facing description, also written as the set's comment.
    pub comment: String,
}

/// One member of a set, in the shapes of the set types above.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetEntry {
    Ip(IpAddr),
    IpPort {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    IpPortIp {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        ip2: IpAddr,
    },
    IpPortNet {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        net: IpNet,
    },
    /// `nomatch` carves an exception out of a wider net in the same set.
    Net {
        net: IpNet,
        nomatch: bool,
    },
    Port(u16),
}

impl SetEntry {
    /// The address family of the entry, `None` for bare ports; a
    /// two-address entry of mixed families reports the first and fails
    /// validation through [`SetEntry::is_single_family`].
    pub fn family(&self) -> Option<Family> {
        match self {
            SetEntry::Ip(ip)
            | SetEntry::IpPort { ip, .. }
            | SetEntry::IpPortIp { ip, .. }
            | SetEntry::IpPortNet { ip, .. } => Some(Family::of(ip)),
            SetEntry::Net { net, .. } => Some(Family::of_net(net)),
            SetEntry::Port(_) => None,
        }
    }

    pub fn is_single_family(&self) -> bool {
        match self {
            SetEntry::IpPortIp { ip, ip2, .. } => Family::of(ip) == Family::of(ip2),
            SetEntry::IpPortNet { ip, net, .. } => Family::of(ip) == Family::of_net(net),
            _ => true,
        }
    }
}

/// Prints the entry as `ipset save` does (`10.96.0.10,tcp:80`), except that
/// host nets keep their prefix length so the text parses back to the same
/// entry.
impl fmt::Display for SetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetEntry::Ip(ip) => write!(f, "{ip}"),
            SetEntry::IpPort { ip, protocol, port } => write!(f, "{ip},{protocol}:{port}"),
            SetEntry::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => write!(f, "{ip},{protocol}:{port},{ip2}"),
            SetEntry::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => write!(f, "{ip},{protocol}:{port},{net}"),
            SetEntry::Net { net, nomatch } => {
                write!(f, "{net}")?;
                if *nomatch {
                    f.write_str(" nomatch")?;
                }
                Ok(())
            }
            SetEntry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// Text that is not a set entry as ipset prints one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("set entry {text:?}: {problem}")]
pub struct BadSetEntry {
    pub text: String,
    pub problem: EntryProblem,
}

/// What is wrong in a set entry's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("expected proto:port")]
    NoProtocolPort,
    #[error(transparent)]
    Protocol(#[from] UnknownProtocol),
    #[error(transparent)]
    Number(#[from] std::num::ParseIntError),
    #[error(transparent)]
    Address(#[from] std::net::AddrParseError),
    #[error(transparent)]
    Net(#[from] ipnet::AddrParseError),
    #[error("unrecognised shape")]
    Shape,
}

impl FromStr for SetEntry {
    type Err = BadSetEntry;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_entry(text).map_err(|problem| BadSetEntry {
            text: text.to_string(),
            problem,
        })
    }
}

fn parse_entry(text: &str) -> Result<SetEntry, EntryProblem> {
    if let Some(net) = text.strip_suffix(" nomatch") {
        return Ok(SetEntry::Net {
            net: net.parse()?,
            nomatch: true,
        });
    }
    let parts: Vec<&str> = text.split(',').collect();
    let proto_port = |s: &str| -> Result<(Protocol, u16), EntryProblem> {
        let (proto, port) = s.rsplit_once(':').ok_or(EntryProblem::NoProtocolPort)?;
        Ok((proto.parse()?, port.parse()?))
    };
    let ip = |s: &str| s.parse::<IpAddr>();
    match parts.as_slice() {
        [one] if one.contains('/') => Ok(SetEntry::Net {
            net: one.parse()?,
            nomatch: false,
        }),
        [one] if one.bytes().all(|b| b.is_ascii_digit()) => Ok(SetEntry::Port(one.parse()?)),
        [one] => Ok(SetEntry::Ip(ip(one)?)),
        [a, pp] => {
            let (protocol, port) = proto_port(pp)?;
            Ok(SetEntry::IpPort {
                ip: ip(a)?,
                protocol,
                port,
            })
        }
        [a, pp, c] => {
            let (protocol, port) = proto_port(pp)?;
            if c.contains('/') {
                Ok(SetEntry::IpPortNet {
                    ip: ip(a)?,
                    protocol,
                    port,
                    net: c.parse()?,
                })
            } else {
                Ok(SetEntry::IpPortIp {
                    ip: ip(a)?,
                    protocol,
                    port,
                    ip2: ip(c)?,
                })
            }
        }
        _ => Err(EntryProblem::Shape),
    }
}

impl Serialize for SetEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SetEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// IPVS scheduling algorithms (the kernel's `ip_vs_<name>` modules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Sh,
    Dh,
    Sed,
    Nq,
    Mh,
}

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
        }
    }

    pub const ALL: [Scheduler; 9] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sh,
        Scheduler::Dh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheduler::ALL
            .into_iter()
            .find(|sched| sched.as_str() == s)
            .ok_or_else(|| {
                format!("unknown IPVS scheduler {s:?} (expected one of rr, wrr, lc, wlc, sh, dh, sed, nq, mh)")
            })
    }
}

/// Identity of a virtual server. Ordered by address first so that a node's
/// own NodePort virtual servers sit together in the canonical order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VirtualServerKey {
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The order of `(address, protocol, port)` with `IpAddr`'s own order (IPv4
/// before IPv6, then numeric), compared as integers: these keys are
/// compared on every map operation, and `IpAddr`'s byte-array comparison
/// is several times slower.
impl Ord for VirtualServerKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn rank(ip: &IpAddr) -> (u8, u128) {
            match ip {
                IpAddr::V4(a) => (4, u128::from(u32::from(*a))),
                IpAddr::V6(a) => (6, u128::from(*a)),
            }
        }
        rank(&self.address)
            .cmp(&rank(&other.address))
            .then(self.protocol.cmp(&other.protocol))
            .then(self.port.cmp(&other.port))
    }
}

impl PartialOrd for VirtualServerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl VirtualServerKey {
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }
}

/// `10.96.0.10:80` / `[fd00::10]:80`, as ipvsadm prints service addresses.
impl fmt::Display for VirtualServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.address, self.port))
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    #[default]
    Masq,
    Route,
    Tunnel,
}

impl Forward {
    /// The ipvsadm flag for this forwarding method.
    pub fn ipvsadm_flag(self) -> &'static str {
        match self {
            Forward::Masq => "-m",
            Forward::Route => "-g",
            Forward::Tunnel => "-i",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RealServer {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    #[serde(default)]
    pub forward: Forward,
}

/// A virtual server's settings and its real servers, sorted by
/// (address, port) with no duplicates. Shared between every node and every
/// key (ClusterIP, NodePort, external IP) that sees the same backends, hence
/// kept behind an `Arc` and hashed once.
///
/// Build it with [`VirtualServer::new`] (deserialising goes through it too):
/// the body hash is cached on first use, so a field edited afterwards would
/// not be seen by the digest. A clone starts with no cached hash.
#[derive(Debug, Serialize, Deserialize)]
#[serde(from = "VirtualServerFields")]
pub struct VirtualServer {
    pub scheduler: Scheduler,
    /// ClientIP session affinity: IPVS persistence timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_timeout: Option<u32>,
    pub real_servers: Vec<RealServer>,
    #[serde(skip)]
    body_hash: OnceLock<[u8; 32]>,
}

impl VirtualServer {
    /// Builds a virtual server, putting real servers in canonical order; of
    /// two real servers with the same address and port the first is kept.
    pub fn new(
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
        mut real_servers: Vec<RealServer>,
    ) -> Self {
        // Stable sort on the identity only, so the first duplicate is kept.
        real_servers.sort_by_key(|rs| (rs.address, rs.port));
        real_servers.dedup_by(|b, a| (a.address, a.port) == (b.address, b.port));
        VirtualServer {
            scheduler,
            persistence_timeout,
            real_servers,
            body_hash: OnceLock::new(),
        }
    }

    /// A copy with the same settings and no real servers.
    pub fn settings_only(&self) -> VirtualServer {
        VirtualServer::new(self.scheduler, self.persistence_timeout, Vec::new())
    }

    pub fn real_server(&self, address: IpAddr, port: u16) -> Option<&RealServer> {
        self.real_servers
            .binary_search_by(|rs| (rs.address, rs.port).cmp(&(address, port)))
            .ok()
            .map(|i| &self.real_servers[i])
    }

    pub(crate) fn body_hash(&self) -> &[u8; 32] {
        self.body_hash
            .get_or_init(|| crate::digest::hash_virtual_server_body(self))
    }

    pub fn same_settings(&self, other: &VirtualServer) -> bool {
        self.scheduler == other.scheduler && self.persistence_timeout == other.persistence_timeout
    }
}

impl Clone for VirtualServer {
    fn clone(&self) -> Self {
        VirtualServer::new(
            self.scheduler,
            self.persistence_timeout,
            self.real_servers.clone(),
        )
    }
}

/// The serialised fields of a [`VirtualServer`], turned into one by `new`.
#[derive(Deserialize)]
struct VirtualServerFields {
    scheduler: Scheduler,
    #[serde(default)]
    persistence_timeout: Option<u32>,
    #[serde(default)]
    real_servers: Vec<RealServer>,
}

impl From<VirtualServerFields> for VirtualServer {
    fn from(f: VirtualServerFields) -> Self {
        VirtualServer::new(f.scheduler, f.persistence_timeout, f.real_servers)
    }
}

impl PartialEq for VirtualServer {
    fn eq(&self, other: &Self) -> bool {
        self.same_settings(other) && self.real_servers == other.real_servers
    }
}
impl Eq for VirtualServer {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Filter,
    Nat,
    Mangle,
    Raw,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Filter, Table::Nat, Table::Mangle, Table::Raw];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }

    /// The built-in chains of this table, which Setpoint never declares or
    /// flushes; it only inserts its jumps into them.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }
}

/// Identity of one of Setpoint's own chains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainKey {
    pub family: Family,
    pub table: Table,
    pub name: String,
}

/// iptables targets that are not chains.
pub const BUILTIN_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "MASQUERADE",
    "MARK",
    "CONNMARK",
    "SNAT",
    "DNAT",
    "LOG",
    "NFLOG",
    "NOTRACK",
    "CT",
];

/// One rule: the arguments that follow `-A CHAIN` in `iptables-restore`
/// input, one token per element (a comment with spaces is one token).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rule(pub Vec<String>);

impl Rule {
    pub fn new<I, S>(args: I) -> Rule
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Rule(args.into_iter().map(Into::into).collect())
    }

    /// The value following `flag`, for each occurrence.
    fn values_of<'a>(&'a self, flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .windows(2)
            .filter(move |w| w[0] == flag)
            .map(|w| w[1].as_str())
    }

    /// Names of the sets this rule matches on (`--match-set NAME dirs`).
    pub fn referenced_sets(&self) -> impl Iterator<Item = &str> {
        self.values_of("--match-set")
    }

    /// The rule's jump or goto target, if any.
    pub fn target(&self) -> Option<&str> {
        self.values_of("-j").chain(self.values_of("-g")).next()
    }
}

/// An ordered list of rules; a chain is always replaced whole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Chain {
    pub rules: Vec<Rule>,
}

/// A rule Setpoint inserts at the top of a built-in chain to reach its own
/// chains. The agent keeps exactly these and removes stale ones it owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Jump {
    pub family: Family,
    pub table: Table,
    /// The built-in chain the rule sits in (`PREROUTING`, `INPUT`, …).
    pub from: String,
    /// Place among Setpoint's jumps in the same built-in chain, lowest
    /// first; all of them go before rules Setpoint does not own.
    pub position: u16,
    pub rule: Rule,
}

/// A shared, immutable virtual server.
pub type SharedVirtualServer = Arc<VirtualServer>;

/// Longest namespace a [`HealthCheck`] may name (a Kubernetes namespace is
/// a DNS label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest Service name a [`HealthCheck`] may name (a DNS subdomain).
pub const MAX_OBJECT_NAME_LEN: usize = 253;

/// A health-check node port the agent serves (kube-proxy's
/// `healthCheckNodePort`), keyed in a fragment by that port: for a
/// `LoadBalancer` Service with `externalTrafficPolicy: Local`, cloud load
/// balancers send traffic only to nodes whose port answers 200. Not kernel
/// state: the agent serves it over HTTP and never plans it into the kernel
/// ([`crate::template::expand`] leaves it out of the kernel view). Sits in
/// the node's own part, with the count for that node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// The Service's endpoints on this node that are ready or, when none
    /// is, serving and terminating (kube-proxy's rule): 200 when above
    /// zero, 503 otherwise.
    pub local_endpoints: u32,
}

/// A fact about the node itself that the agent reports rather than applies.
/// Not kernel state, like [`HealthCheck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeCondition {
    /// Load balancers should drain this node: the Node is being deleted
    /// (`metadata.deletionTimestamp`) or tainted
    /// `ToBeDeletedByClusterAutoscaler` (KEP-3836). kube-proxy's `/healthz`
    /// answers 503 then.
    Draining,
}

impl NodeCondition {
    pub const ALL: [NodeCondition; 1] = [NodeCondition::Draining];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeCondition::Draining => "draining",
        }
    }
}

impl fmt::Display for NodeCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
