//! Setpoint's own sets and chains — kube-proxy ipvs mode's layout under the
//! `SP-` prefix (`SP6-` for IPv6 sets), so it can run beside kube-proxy —
//! and the node-independent "base" fragment that defines them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, Jump, Protocol, Rule, Scheduler, SetEntry, SetSpec, SetType,
    Table,
};

/// Default of [`ComputeConfig::max_service_frontends`]: far above real
/// Services (a few ports on a few addresses), far below a set's `maxelem`.
pub const DEFAULT_MAX_SERVICE_FRONTENDS: usize = 4_096;
/// Default of [`ComputeConfig::max_service_endpoints`]: kube-proxy serves
/// Services of thousands of endpoints; tens of thousands per Service would
/// be a real server list IPVS walks for every frontend.
pub const DEFAULT_MAX_SERVICE_ENDPOINTS: usize = 20_000;

/// Knobs of the computation, the same for every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComputeConfig {
    /// Scheduler for Services without the `setpoint.io/ipvs-scheduler` annotation.
    pub default_scheduler: Scheduler,
    /// Only node addresses inside these CIDRs serve NodePorts; empty means all.
    pub nodeport_addresses: Vec<IpNet>,
    /// Pod CIDRs of the cluster; traffic from outside them to a cluster IP
    /// is masqueraded. Empty means "use the Nodes' podCIDRs".
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs, as kube-proxy's `--masquerade-all`.
    pub masquerade_all: bool,
    /// The fwmark bit that asks SP-POSTROUTING to masquerade. Distinct from
    /// kube-proxy's 14 so that both can run on one node.
    pub masquerade_bit: u8,
    /// maxelem of every set Setpoint creates.
    pub set_max_elements: u32,
    /// Apply NetworkPolicy to traffic from a node to its own pods too.
    /// Off by default: Kubernetes always allows it (kubelet probes).
    pub police_node_traffic: bool,
    /// The CIDRs ClusterIPs are allocated from: `--service-cidr`, and in
    /// an [`crate::Index`]'s own copy also every `ServiceCIDR` object's
    /// (sorted, deduplicated). No external or load-balancer IP is served
    /// inside them, and traffic to an address inside them that no Service
    /// holds is rejected (`SP-SERVICE-CIDR`); empty means unknown (any
    /// address equal to a ClusterIP is still refused, nothing is rejected).
    pub service_cidrs: Vec<IpNet>,
    /// When not empty, `externalIPs` are served only inside these ranges.
    pub external_ip_cidrs: Vec<IpNet>,
    /// Serve a node's own address as an external or load-balancer IP.
    /// Even then it is never bound on any node's service interface.
    pub allow_node_external_ips: bool,
    /// A Service asking for more frontends than this (ports × addresses,
    /// plus NodePorts) is left out whole.
    pub max_service_frontends: usize,
    /// A Service with more endpoints than this over all its
    /// EndpointSlices is left out whole.
    pub max_service_endpoints: usize,
    /// Log policy verdicts through NFLOG: every Deny of a
    /// ClusterNetworkPolicy and NetworkPolicy's drop, and the Accept and
    /// Pass rules of a ClusterNetworkPolicy annotated
    /// [`crate::policy::cluster::LOG_ACCEPTED_ANNOTATION`]. Off (`None`)
    /// by default: then no log rule exists.
    pub verdict_log: Option<VerdictLog>,
}

/// How policy verdicts reach the agent: an NFLOG group, and a rate limit
/// per rule (`-m limit`) so that a flood costs the kernel little and the
/// agent a bounded number of packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictLog {
    pub group: u16,
    /// Packets logged per second per rule, after the burst.
    pub per_second: u32,
    pub burst: u32,
}

/// The NFLOG group when none is given; not 0 or 1, which ulogd and
/// friends use by default.
pub const DEFAULT_VERDICT_LOG_GROUP: u16 = 1800;
/// Logged packets per second per rule, and the burst, when not given.
pub const DEFAULT_VERDICT_LOG_RATE: u32 = 10;
pub const DEFAULT_VERDICT_LOG_BURST: u32 = 20;

impl Default for VerdictLog {
    fn default() -> Self {
        VerdictLog {
            group: DEFAULT_VERDICT_LOG_GROUP,
            per_second: DEFAULT_VERDICT_LOG_RATE,
            burst: DEFAULT_VERDICT_LOG_BURST,
        }
    }
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            default_scheduler: Scheduler::Rr,
            nodeport_addresses: Vec::new(),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 18,
            set_max_elements: 262_144,
            police_node_traffic: false,
            service_cidrs: Vec::new(),
            external_ip_cidrs: Vec::new(),
            allow_node_external_ips: false,
            max_service_frontends: DEFAULT_MAX_SERVICE_FRONTENDS,
            max_service_endpoints: DEFAULT_MAX_SERVICE_ENDPOINTS,
            verdict_log: None,
        }
    }
}

/// Every set Setpoint uses, one of each per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerLocal,
    LoadBalancerFw,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
    ClusterCidr,
    NoEndpoints,
    NoLocalEndpoints,
    NodePortAddresses,
    /// Defined only when service CIDRs are known ([`SetId::ALL`] leaves it
    /// out): with none, the base fragment is what it was before it existed.
    ServiceCidr,
}

impl SetId {
    /// Every set the base fragment always defines.
    pub const ALL: [SetId; 21] = [
        SetId::LoopBack,
        SetId::ClusterIp,
        SetId::ExternalIp,
        SetId::ExternalIpLocal,
        SetId::LoadBalancer,
        SetId::LoadBalancerLocal,
        SetId::LoadBalancerFw,
        SetId::LoadBalancerSourceIp,
        SetId::LoadBalancerSourceCidr,
        SetId::NodePortTcp,
        SetId::NodePortLocalTcp,
        SetId::NodePortUdp,
        SetId::NodePortLocalUdp,
        SetId::NodePortSctp,
        SetId::NodePortLocalSctp,
        SetId::HealthCheckNodePort,
        SetId::IpvsIps,
        SetId::ClusterCidr,
        SetId::NoEndpoints,
        SetId::NoLocalEndpoints,
        SetId::NodePortAddresses,
    ];

    fn suffix(self) -> &'static str {
        match self {
            SetId::LoopBack => "LOOP-BACK",
            SetId::ClusterIp => "CLUSTER-IP",
            SetId::ExternalIp => "EXTERNAL-IP",
            SetId::ExternalIpLocal => "EXTERNAL-IP-LOCAL",
            SetId::LoadBalancer => "LOAD-BALANCER",
            SetId::LoadBalancerLocal => "LOAD-BALANCER-LOCAL",
            SetId::LoadBalancerFw => "LOAD-BALANCER-FW",
            SetId::LoadBalancerSourceIp => "LOAD-BALANCER-SOURCE-IP",
            SetId::LoadBalancerSourceCidr => "LOAD-BALANCER-SOURCE-CIDR",
            SetId::NodePortTcp => "NODE-PORT-TCP",
            SetId::NodePortLocalTcp => "NODE-PORT-LOCAL-TCP",
            SetId::NodePortUdp => "NODE-PORT-UDP",
            SetId::NodePortLocalUdp => "NODE-PORT-LOCAL-UDP",
            SetId::NodePortSctp => "NODE-PORT-SCTP-HASH",
            SetId::NodePortLocalSctp => "NODE-PORT-LOCAL-SCTP-HASH",
            SetId::HealthCheckNodePort => "HEALTH-CHECK-NODE-PORT",
            SetId::IpvsIps => "IPVS-IPS",
            SetId::ClusterCidr => "CLUSTER-CIDR",
            SetId::NoEndpoints => "NO-ENDPOINTS",
            SetId::NoLocalEndpoints => "NO-LOCAL-ENDPOINTS",
            // The contract's name: the agent expands NodePort templates over it.
            SetId::NodePortAddresses => "NODEPORT-IPS",
            SetId::ServiceCidr => "SERVICE-CIDR",
        }
    }

    pub fn kind(self) -> SetType {
        match self {
            SetId::LoopBack | SetId::LoadBalancerSourceIp => SetType::HashIpPortIp,
            SetId::LoadBalancerSourceCidr => SetType::HashIpPortNet,
            SetId::NodePortTcp
            | SetId::NodePortLocalTcp
            | SetId::NodePortUdp
            | SetId::NodePortLocalUdp
            | SetId::HealthCheckNodePort => SetType::BitmapPort,
            SetId::IpvsIps | SetId::NodePortAddresses => SetType::HashIp,
            SetId::ClusterCidr | SetId::ServiceCidr => SetType::HashNet,
            _ => SetType::HashIpPort,
        }
    }

    fn comment(self) -> &'static str {
        match self {
            SetId::LoopBack => "endpoint ip:port and source ip, to masquerade hairpin traffic",
            SetId::ClusterIp => "service cluster ip:port",
            SetId::ExternalIp => "service external ip:port",
            SetId::ExternalIpLocal => "service external ip:port with externalTrafficPolicy=Local",
            SetId::LoadBalancer => "load balancer ip:port",
            SetId::LoadBalancerLocal => "load balancer ip:port with externalTrafficPolicy=Local",
            SetId::LoadBalancerFw => "load balancer ip:port with loadBalancerSourceRanges",
            SetId::LoadBalancerSourceIp => "load balancer ip:port and this node's own source ip",
            SetId::LoadBalancerSourceCidr => "load balancer ip:port and an allowed source range",
            SetId::NodePortTcp => "TCP node ports",
            SetId::NodePortLocalTcp => "TCP node ports with externalTrafficPolicy=Local",
            SetId::NodePortUdp => "UDP node ports",
            SetId::NodePortLocalUdp => "UDP node ports with externalTrafficPolicy=Local",
            SetId::NodePortSctp => "node ip and SCTP node port",
            SetId::NodePortLocalSctp => {
                "node ip and SCTP node port with externalTrafficPolicy=Local"
            }
            SetId::HealthCheckNodePort => "health check node ports",
            SetId::IpvsIps => "addresses bound to the service interface",
            SetId::ClusterCidr => "pod CIDRs of the cluster",
            SetId::NoEndpoints => "frontends of services without any endpoint: rejected",
            SetId::NoLocalEndpoints => {
                "external frontends with externalTrafficPolicy=Local and no endpoint on this node: dropped"
            }
            SetId::NodePortAddresses => "this node's addresses that serve NodePorts",
            SetId::ServiceCidr => {
                "service CIDRs: an address inside them no service holds is rejected"
            }
        }
    }

    pub fn name(self, family: Family) -> String {
        match family {
            Family::Inet => format!("SP-{}", self.suffix()),
            Family::Inet6 => format!("SP6-{}", self.suffix()),
        }
    }

    pub fn node_port(protocol: Protocol, local: bool) -> SetId {
        match (protocol, local) {
            (Protocol::Tcp, false) => SetId::NodePortTcp,
            (Protocol::Tcp, true) => SetId::NodePortLocalTcp,
            (Protocol::Udp, false) => SetId::NodePortUdp,
            (Protocol::Udp, true) => SetId::NodePortLocalUdp,
            (Protocol::Sctp, false) => SetId::NodePortSctp,
            (Protocol::Sctp, true) => SetId::NodePortLocalSctp,
        }
    }
}

// The chains and jumps, one rule a line as `iptables-save` prints them:
// `-A <chain> <rule>`, a quoted comment one word. A line appending to a
// built-in chain (PREROUTING, INPUT, …) is a jump into Setpoint's chains,
// placed in the order written. Set names are written as IPv4's; IPv6's
// rules match the `SP6-` twin. `{mark}` is the masquerade mark and
// `{loopback}` the family's loopback network. `every_layout_line_parses`
// holds these lines to that shape.

/// Traffic to cluster IPs masqueraded: all of it (`masquerade_all`), or
/// what comes from outside the pod CIDRs. One of them stands where the
/// nat table says `{cluster-ip-masquerade}`.
const MASQUERADE_ALL: &str = r#"-A SP-SERVICES -m comment --comment "masquerade all traffic to cluster IPs" -m set --match-set SP-CLUSTER-IP dst,dst -j SP-MARK-MASQ"#;
const MASQUERADE_OFF_CLUSTER: &str = r#"-A SP-SERVICES -m comment --comment "masquerade off-cluster traffic to cluster IPs" -m set --match-set SP-CLUSTER-IP dst,dst -m set ! --match-set SP-CLUSTER-CIDR src -j SP-MARK-MASQ"#;
const CLUSTER_IP_MASQUERADE: &str = "{cluster-ip-masquerade}";

const NAT_LINES: &[&str] = &[
    r#"-A PREROUTING -m comment --comment "setpoint service portals" -j SP-SERVICES"#,
    r#"-A OUTPUT -m comment --comment "setpoint service portals" -j SP-SERVICES"#,
    r#"-A POSTROUTING -m comment --comment "setpoint postrouting rules" -j SP-POSTROUTING"#,
    "-A SP-SERVICES -s {loopback} -j RETURN",
    r#"-A SP-SERVICES -m comment --comment "load balancer portals" -m set --match-set SP-LOAD-BALANCER dst,dst -j SP-LOAD-BALANCER"#,
    CLUSTER_IP_MASQUERADE,
    r#"-A SP-SERVICES -m comment --comment "masquerade traffic to external IPs" -m set --match-set SP-EXTERNAL-IP dst,dst -j SP-MARK-MASQ"#,
    "-A SP-SERVICES -m set --match-set SP-EXTERNAL-IP dst,dst -j ACCEPT",
    "-A SP-SERVICES -m set --match-set SP-EXTERNAL-IP-LOCAL dst,dst -j ACCEPT",
    "-A SP-SERVICES -m addrtype --dst-type LOCAL -j SP-NODE-PORT",
    "-A SP-SERVICES -m set --match-set SP-CLUSTER-IP dst,dst -j ACCEPT",
    "-A SP-SERVICES -m set --match-set SP-LOAD-BALANCER dst,dst -j ACCEPT",
    r#"-A SP-LOAD-BALANCER -m comment --comment "externalTrafficPolicy=Local keeps the client address" -m set --match-set SP-LOAD-BALANCER-LOCAL dst,dst -j RETURN"#,
    "-A SP-LOAD-BALANCER -j SP-MARK-MASQ",
    "-A SP-NODE-PORT -p tcp -m set --match-set SP-NODE-PORT-LOCAL-TCP dst -j RETURN",
    "-A SP-NODE-PORT -p tcp -m set --match-set SP-NODE-PORT-TCP dst -j SP-MARK-MASQ",
    "-A SP-NODE-PORT -p udp -m set --match-set SP-NODE-PORT-LOCAL-UDP dst -j RETURN",
    "-A SP-NODE-PORT -p udp -m set --match-set SP-NODE-PORT-UDP dst -j SP-MARK-MASQ",
    "-A SP-NODE-PORT -p sctp -m set --match-set SP-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN",
    "-A SP-NODE-PORT -p sctp -m set --match-set SP-NODE-PORT-SCTP-HASH dst,dst -j SP-MARK-MASQ",
    r#"-A SP-POSTROUTING -m comment --comment "hairpin: a pod reaching itself through a service" -m set --match-set SP-LOOP-BACK dst,dst,src -j MASQUERADE"#,
    "-A SP-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
    "-A SP-POSTROUTING -j MARK --xor-mark {mark}",
    r#"-A SP-POSTROUTING -m comment --comment "service traffic requiring SNAT" -j MASQUERADE --random-fully"#,
    "-A SP-MARK-MASQ -j MARK --or-mark {mark}",
];

const FILTER_LINES: &[&str] = &[
    r#"-A INPUT -m comment --comment "setpoint ipvs access filter" -j SP-IPVS-FILTER"#,
    r#"-A INPUT -m comment --comment "setpoint load balancer firewall" -j SP-PROXY-FIREWALL"#,
    r#"-A INPUT -m comment --comment "setpoint service rejects" -j SP-SERVICES"#,
    r#"-A INPUT -m comment --comment "setpoint health check node ports" -j SP-NODE-PORT"#,
    r#"-A FORWARD -m comment --comment "setpoint load balancer firewall" -j SP-PROXY-FIREWALL"#,
    r#"-A FORWARD -m comment --comment "setpoint service rejects" -j SP-SERVICES"#,
    r#"-A FORWARD -m comment --comment "setpoint forwarding rules" -j SP-FORWARD"#,
    r#"-A OUTPUT -m comment --comment "setpoint service rejects" -j SP-SERVICES"#,
    "-A SP-FORWARD -m mark --mark {mark}/{mark} -j ACCEPT",
    "-A SP-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A SP-NODE-PORT -p tcp -m set --match-set SP-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
    // TCP gets a reset, the rest ICMP: see SERVICE_CIDR_LINES for why.
    r#"-A SP-SERVICES -p tcp -m comment --comment "service has no endpoints" -m conntrack --ctstate NEW -m set --match-set SP-NO-ENDPOINTS dst,dst -j REJECT --reject-with tcp-reset"#,
    r#"-A SP-SERVICES -m comment --comment "service has no endpoints" -m conntrack --ctstate NEW -m set --match-set SP-NO-ENDPOINTS dst,dst -j REJECT"#,
    r#"-A SP-SERVICES -m comment --comment "externalTrafficPolicy=Local and no endpoint on this node" -m set ! --match-set SP-CLUSTER-CIDR src -m set --match-set SP-NO-LOCAL-ENDPOINTS dst,dst -j DROP"#,
    "-A SP-PROXY-FIREWALL -m set --match-set SP-LOAD-BALANCER-FW dst,dst -j SP-SOURCE-RANGES-FIREWALL",
    "-A SP-SOURCE-RANGES-FIREWALL -m set --match-set SP-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN",
    "-A SP-SOURCE-RANGES-FIREWALL -m set --match-set SP-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN",
    "-A SP-SOURCE-RANGES-FIREWALL -j DROP",
    "-A SP-IPVS-FILTER -m set --match-set SP-LOAD-BALANCER dst,dst -j RETURN",
    "-A SP-IPVS-FILTER -m set --match-set SP-CLUSTER-IP dst,dst -j RETURN",
    "-A SP-IPVS-FILTER -m set --match-set SP-EXTERNAL-IP dst,dst -j RETURN",
    "-A SP-IPVS-FILTER -m set --match-set SP-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
    "-A SP-IPVS-FILTER -m set --match-set SP-HEALTH-CHECK-NODE-PORT dst -j RETURN",
    r#"-A SP-IPVS-FILTER -p tcp -m comment --comment "service addresses answer on service ports only" -m conntrack --ctstate NEW -m set --match-set SP-IPVS-IPS dst -j REJECT --reject-with tcp-reset"#,
    r#"-A SP-IPVS-FILTER -m comment --comment "service addresses answer on service ports only" -m conntrack --ctstate NEW -m set --match-set SP-IPVS-IPS dst -j REJECT"#,
];

/// Filter lines present only when the family has service CIDRs: a new
/// connection to an address inside them that is not bound on the service
/// interface (no Service holds it) is rejected at once, as kube-proxy's
/// nftables mode refuses unallocated ClusterIPs, instead of being routed
/// off the node. Held addresses are local, so from pods they reach INPUT,
/// never FORWARD; from the node itself OUTPUT sees them, hence the
/// `SP-IPVS-IPS` exception.
///
/// TCP gets a reset: an ICMP error that reaches a socket while its
/// `connect` still holds it (a pod's veth and the node's own stack deliver
/// it within the call) is only a soft error, and the refusal is learnt
/// from the retransmitted SYN a second later; a reset is queued and ends
/// the connect at once (measured in a netns: 1.04 s against 13 ms). Other
/// protocols get ICMP (ICMPv6) port unreachable, plain `REJECT`'s default.
const SERVICE_CIDR_LINES: &[&str] = &[
    r#"-A SP-SERVICES -p tcp -m comment --comment "unallocated service address" -m conntrack --ctstate NEW -m set --match-set SP-SERVICE-CIDR dst -m set ! --match-set SP-IPVS-IPS dst -j REJECT --reject-with tcp-reset"#,
    r#"-A SP-SERVICES -m comment --comment "unallocated service address" -m conntrack --ctstate NEW -m set --match-set SP-SERVICE-CIDR dst -m set ! --match-set SP-IPVS-IPS dst -j REJECT"#,
];

/// The chains iptables itself has, into which Setpoint only jumps.
const BUILT_IN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// The words of a rule line, a double-quoted text one word without its
/// quotes. An unclosed quote runs to the end of the line (the lines are
/// ours: `every_layout_line_parses` keeps them well-formed).
fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (word, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_once(char::is_whitespace).unwrap_or((rest, "")),
        };
        out.push(word);
        rest = after.trim_start();
    }
    out
}

/// One layout line for `family`: the chain it appends to, and its rule.
fn rule_line(line: &str, family: Family, config: &ComputeConfig) -> (String, Rule) {
    let mark_value = 1u32 << config.masquerade_bit.min(31);
    let mark = format!("{mark_value:#x}");
    let loopback = match family {
        Family::Inet => "127.0.0.0/8",
        Family::Inet6 => "::1/128",
    };
    let mut words = words(line).into_iter();
    // `-A`, then the chain.
    let chain = words.nth(1).unwrap_or_default().to_string();
    let mut args: Vec<String> = Vec::new();
    for word in words {
        let arg = if args.last().is_some_and(|a| a == "--match-set") {
            match (family, word.strip_prefix("SP-")) {
                (Family::Inet6, Some(suffix)) => format!("SP6-{suffix}"),
                _ => word.to_string(),
            }
        } else {
            word.replace("{mark}", &mark)
                .replace("{loopback}", loopback)
        };
        args.push(arg);
    }
    (chain, Rule(args))
}

/// The fragment every node shares: set definitions, chains and jumps. It
/// depends on the configuration only; `service_cidrs` adds, per family
/// that has any, the `SP-SERVICE-CIDR` set holding them and the rule that
/// rejects their unallocated addresses.
pub fn base_fragment(config: &ComputeConfig) -> Fragment {
    let mut f = Fragment::new();
    for family in Family::ALL {
        let spec = |set: SetId| SetSpec {
            kind: set.kind(),
            family,
            maxelem: config.set_max_elements,
            comment: set.comment().to_string(),
        };
        for set in SetId::ALL {
            f.put_set(set.name(family), spec(set));
        }
        let service_cidrs: Vec<IpNet> = config
            .service_cidrs
            .iter()
            .filter(|net| Family::of_net(net) == family)
            .map(IpNet::trunc)
            .collect();
        if !service_cidrs.is_empty() {
            let name = SetId::ServiceCidr.name(family);
            f.put_set(name.clone(), spec(SetId::ServiceCidr));
            for net in service_cidrs {
                let entry = SetEntry::Net {
                    net,
                    nomatch: false,
                };
                f.add_entry(&name, entry);
            }
        }
        add_chains(&mut f, family, config);
    }
    f
}

fn add_chains(f: &mut Fragment, family: Family, config: &ComputeConfig) {
    let cluster_ip_masquerade = if config.masquerade_all {
        MASQUERADE_ALL
    } else {
        MASQUERADE_OFF_CLUSTER
    };
    let rejects_unallocated = config
        .service_cidrs
        .iter()
        .any(|net| Family::of_net(net) == family);
    let filter: Vec<&str> = if rejects_unallocated {
        FILTER_LINES
            .iter()
            .chain(SERVICE_CIDR_LINES)
            .copied()
            .collect()
    } else {
        FILTER_LINES.to_vec()
    };
    for (table, lines) in [(Table::Nat, NAT_LINES), (Table::Filter, &filter[..])] {
        let mut chains: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        let mut positions: BTreeMap<String, u16> = BTreeMap::new();
        for line in lines {
            let line = if *line == CLUSTER_IP_MASQUERADE {
                cluster_ip_masquerade
            } else {
                line
            };
            let (chain, rule) = rule_line(line, family, config);
            if BUILT_IN_CHAINS.contains(&chain.as_str()) {
                let position = positions.entry(chain.clone()).or_insert(0);
                *position += 1;
                f.add_jump(Jump {
                    family,
                    table,
                    from: chain,
                    position: *position,
                    rule,
                });
            } else {
                chains.entry(chain).or_default().push(rule);
            }
        }
        for (name, rules) in chains {
            let key = ChainKey {
                family,
                table,
                name,
            };
            f.put_chain(key, Chain { rules }.into());
        }
    }
}

/// The address a node serves NodePorts on, after the configured filter.
pub fn nodeport_addresses<'a>(
    config: &'a ComputeConfig,
    node_addresses: &'a [IpAddr],
) -> impl Iterator<Item = IpAddr> + 'a {
    node_addresses.iter().copied().filter(move |ip| {
        !ip.is_loopback()
            && (config.nodeport_addresses.is_empty()
                || config.nodeport_addresses.iter().any(|net| net.contains(ip)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is `-A <chain> <rule>` with its quotes closed; a jump
    /// targets a chain of the same table; a set matched is one of ours.
    #[test]
    fn every_layout_line_parses() {
        let sets: Vec<String> = SetId::ALL
            .iter()
            .chain(&[SetId::ServiceCidr])
            .map(|s| s.name(Family::Inet))
            .collect();
        let nat = NAT_LINES
            .iter()
            .chain(&[MASQUERADE_ALL, MASQUERADE_OFF_CLUSTER]);
        let tables: [(Table, Vec<&str>); 2] = [
            (Table::Nat, nat.copied().collect()),
            (
                Table::Filter,
                FILTER_LINES
                    .iter()
                    .chain(SERVICE_CIDR_LINES)
                    .copied()
                    .collect(),
            ),
        ];
        for (table, lines) in tables {
            let lines: Vec<&str> = lines
                .into_iter()
                .filter(|l| *l != CLUSTER_IP_MASQUERADE)
                .collect();
            let own: Vec<&str> = lines
                .iter()
                .filter_map(|l| words(l).get(1).copied())
                .filter(|c| !BUILT_IN_CHAINS.contains(c))
                .collect();
            for line in &lines {
                assert_eq!(line.matches('"').count() % 2, 0, "unclosed quote: {line}");
                let w = words(line);
                assert!(
                    w.len() >= 4 && w[0] == "-A",
                    "not `-A <chain> <rule>`: {line}"
                );
                for pair in w.windows(2) {
                    if pair[0] == "--match-set" {
                        assert!(sets.iter().any(|s| s == pair[1]), "unknown set: {line}");
                    }
                    if pair[0] == "-j" && pair[1].starts_with("SP-") {
                        assert!(own.contains(&pair[1]), "no chain {} in {table:?}", pair[1]);
                    }
                }
                for family in Family::ALL {
                    let (_, rule) = rule_line(line, family, &ComputeConfig::default());
                    assert!(rule.0.iter().all(|w| !w.contains('{')), "{line}");
                }
            }
        }
    }

    #[test]
    fn rule_lines_split_into_words() {
        let table: &[(&str, &[&str])] = &[
            ("-A X -j RETURN", &["-A", "X", "-j", "RETURN"]),
            (
                r#"-A X -m comment --comment "a b  c" -j Y"#,
                &["-A", "X", "-m", "comment", "--comment", "a b  c", "-j", "Y"],
            ),
            ("  -A   X  -j  Y  ", &["-A", "X", "-j", "Y"]),
            (r#"-A X --comment "open"#, &["-A", "X", "--comment", "open"]),
            (r#"-A X --comment """#, &["-A", "X", "--comment", ""]),
        ];
        for (line, expected) in table {
            assert_eq!(words(line), *expected, "{line}");
        }
    }

    #[test]
    fn ipv6_rules_match_the_sp6_sets_and_loopback() {
        let config = ComputeConfig {
            masquerade_bit: 14,
            ..Default::default()
        };
        let line =
            "-A SP-SERVICES -s {loopback} -m set --match-set SP-CLUSTER-IP dst,dst -j SP-MARK-MASQ";
        let (chain, rule) = rule_line(line, Family::Inet6, &config);
        assert_eq!(chain, "SP-SERVICES");
        let expected = "-s ::1/128 -m set --match-set SP6-CLUSTER-IP dst,dst -j SP-MARK-MASQ";
        assert_eq!(rule.0.join(" "), expected);
        let (_, rule) = rule_line(
            "-A SP-FORWARD -m mark --mark {mark}/{mark}",
            Family::Inet,
            &config,
        );
        assert_eq!(rule.0, ["-m", "mark", "--mark", "0x4000/0x4000"]);
    }
}
