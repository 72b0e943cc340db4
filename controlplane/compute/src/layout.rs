//! Setpoint's own sets and chains — kube-proxy ipvs mode's layout under the
//! `SP-` prefix (`SP6-` for IPv6 sets), so it can run beside kube-proxy —
//! and the node-independent "base" fragment that defines them.

use std::net::IpAddr;

use ipnet::IpNet;
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, Jump, Protocol, Rule, Scheduler, SetSpec, SetType, Table,
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
    /// The CIDRs ClusterIPs are allocated from. No external or
    /// load-balancer IP is served inside them; empty means unknown (any
    /// address equal to a ClusterIP is still refused).
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
}

impl SetId {
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
            SetId::ClusterCidr => SetType::HashNet,
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

pub const CHAIN_SERVICES: &str = "SP-SERVICES";
pub const CHAIN_POSTROUTING: &str = "SP-POSTROUTING";
pub const CHAIN_NODE_PORT: &str = "SP-NODE-PORT";
pub const CHAIN_LOAD_BALANCER: &str = "SP-LOAD-BALANCER";
pub const CHAIN_MARK_MASQ: &str = "SP-MARK-MASQ";
pub const CHAIN_FORWARD: &str = "SP-FORWARD";
pub const CHAIN_PROXY_FIREWALL: &str = "SP-PROXY-FIREWALL";
pub const CHAIN_SOURCE_RANGES: &str = "SP-SOURCE-RANGES-FIREWALL";
pub const CHAIN_IPVS_FILTER: &str = "SP-IPVS-FILTER";

fn rule(args: &[&str]) -> Rule {
    Rule::new(args.iter().copied())
}

fn comment(text: &str) -> [&str; 4] {
    ["-m", "comment", "--comment", text]
}

fn with_comment(text: &str, rest: &[&str]) -> Rule {
    let mut args: Vec<&str> = comment(text).to_vec();
    args.extend_from_slice(rest);
    rule(&args)
}

/// The fragment every node shares: set definitions, chains and jumps. It
/// depends on the configuration only.
pub fn base_fragment(config: &ComputeConfig) -> Fragment {
    let mut f = Fragment::new();
    for family in Family::ALL {
        for set in SetId::ALL {
            f.put_set(
                set.name(family),
                SetSpec {
                    kind: set.kind(),
                    family,
                    maxelem: config.set_max_elements,
                    comment: set.comment().to_string(),
                },
            );
        }
        add_chains(&mut f, family, config);
    }
    f
}

fn add_chains(f: &mut Fragment, family: Family, config: &ComputeConfig) {
    let set = |id: SetId| id.name(family);
    let mark_value = 1u32 << config.masquerade_bit.min(31);
    let mark = format!("{mark_value:#x}");
    let mark_mask = format!("{mark_value:#x}/{mark_value:#x}");
    let loopback_net = match family {
        Family::Inet => "127.0.0.0/8",
        Family::Inet6 => "::1/128",
    };
    let chain = |table: Table, name: &str, rules: Vec<Rule>| {
        (
            ChainKey {
                family,
                table,
                name: name.to_string(),
            },
            Chain { rules },
        )
    };
    let cluster_ip_masq = if config.masquerade_all {
        with_comment(
            "masquerade all traffic to cluster IPs",
            &[
                "-m",
                "set",
                "--match-set",
                &set(SetId::ClusterIp),
                "dst,dst",
                "-j",
                CHAIN_MARK_MASQ,
            ],
        )
    } else {
        with_comment(
            "masquerade off-cluster traffic to cluster IPs",
            &[
                "-m",
                "set",
                "--match-set",
                &set(SetId::ClusterIp),
                "dst,dst",
                "-m",
                "set",
                "!",
                "--match-set",
                &set(SetId::ClusterCidr),
                "src",
                "-j",
                CHAIN_MARK_MASQ,
            ],
        )
    };
    let nat = vec![
        chain(
            Table::Nat,
            CHAIN_SERVICES,
            vec![
                rule(&["-s", loopback_net, "-j", "RETURN"]),
                with_comment(
                    "load balancer portals",
                    &[
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::LoadBalancer),
                        "dst,dst",
                        "-j",
                        CHAIN_LOAD_BALANCER,
                    ],
                ),
                cluster_ip_masq,
                with_comment(
                    "masquerade traffic to external IPs",
                    &[
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::ExternalIp),
                        "dst,dst",
                        "-j",
                        CHAIN_MARK_MASQ,
                    ],
                ),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ExternalIp),
                    "dst,dst",
                    "-j",
                    "ACCEPT",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ExternalIpLocal),
                    "dst,dst",
                    "-j",
                    "ACCEPT",
                ]),
                rule(&[
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    CHAIN_NODE_PORT,
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ClusterIp),
                    "dst,dst",
                    "-j",
                    "ACCEPT",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::LoadBalancer),
                    "dst,dst",
                    "-j",
                    "ACCEPT",
                ]),
            ],
        ),
        chain(
            Table::Nat,
            CHAIN_LOAD_BALANCER,
            vec![
                with_comment(
                    "externalTrafficPolicy=Local keeps the client address",
                    &[
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::LoadBalancerLocal),
                        "dst,dst",
                        "-j",
                        "RETURN",
                    ],
                ),
                rule(&["-j", CHAIN_MARK_MASQ]),
            ],
        ),
        chain(Table::Nat, CHAIN_NODE_PORT, {
            let mut rules = Vec::new();
            for protocol in Protocol::ALL {
                let dirs = if protocol == Protocol::Sctp {
                    "dst,dst"
                } else {
                    "dst"
                };
                let p = protocol.as_str();
                rules.push(rule(&[
                    "-p",
                    p,
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::node_port(protocol, true)),
                    dirs,
                    "-j",
                    "RETURN",
                ]));
                rules.push(rule(&[
                    "-p",
                    p,
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::node_port(protocol, false)),
                    dirs,
                    "-j",
                    CHAIN_MARK_MASQ,
                ]));
            }
            rules
        }),
        chain(
            Table::Nat,
            CHAIN_POSTROUTING,
            vec![
                with_comment(
                    "hairpin: a pod reaching itself through a service",
                    &[
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::LoopBack),
                        "dst,dst,src",
                        "-j",
                        "MASQUERADE",
                    ],
                ),
                rule(&["-m", "mark", "!", "--mark", &mark_mask, "-j", "RETURN"]),
                rule(&["-j", "MARK", "--xor-mark", &mark]),
                with_comment(
                    "service traffic requiring SNAT",
                    &["-j", "MASQUERADE", "--random-fully"],
                ),
            ],
        ),
        chain(
            Table::Nat,
            CHAIN_MARK_MASQ,
            vec![rule(&["-j", "MARK", "--or-mark", &mark])],
        ),
    ];
    let filter = vec![
        chain(
            Table::Filter,
            CHAIN_FORWARD,
            vec![
                rule(&["-m", "mark", "--mark", &mark_mask, "-j", "ACCEPT"]),
                rule(&[
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ]),
            ],
        ),
        chain(
            Table::Filter,
            CHAIN_NODE_PORT,
            vec![rule(&[
                "-p",
                "tcp",
                "-m",
                "set",
                "--match-set",
                &set(SetId::HealthCheckNodePort),
                "dst",
                "-j",
                "ACCEPT",
            ])],
        ),
        chain(
            Table::Filter,
            CHAIN_SERVICES,
            vec![
                with_comment(
                    "service has no endpoints",
                    &[
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::NoEndpoints),
                        "dst,dst",
                        "-j",
                        "REJECT",
                    ],
                ),
                with_comment(
                    "externalTrafficPolicy=Local and no endpoint on this node",
                    &[
                        "-m",
                        "set",
                        "!",
                        "--match-set",
                        &set(SetId::ClusterCidr),
                        "src",
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::NoLocalEndpoints),
                        "dst,dst",
                        "-j",
                        "DROP",
                    ],
                ),
            ],
        ),
        chain(
            Table::Filter,
            CHAIN_PROXY_FIREWALL,
            vec![rule(&[
                "-m",
                "set",
                "--match-set",
                &set(SetId::LoadBalancerFw),
                "dst,dst",
                "-j",
                CHAIN_SOURCE_RANGES,
            ])],
        ),
        chain(
            Table::Filter,
            CHAIN_SOURCE_RANGES,
            vec![
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::LoadBalancerSourceCidr),
                    "dst,dst,src",
                    "-j",
                    "RETURN",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::LoadBalancerSourceIp),
                    "dst,dst,src",
                    "-j",
                    "RETURN",
                ]),
                rule(&["-j", "DROP"]),
            ],
        ),
        chain(
            Table::Filter,
            CHAIN_IPVS_FILTER,
            vec![
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::LoadBalancer),
                    "dst,dst",
                    "-j",
                    "RETURN",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ClusterIp),
                    "dst,dst",
                    "-j",
                    "RETURN",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ExternalIp),
                    "dst,dst",
                    "-j",
                    "RETURN",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::ExternalIpLocal),
                    "dst,dst",
                    "-j",
                    "RETURN",
                ]),
                rule(&[
                    "-m",
                    "set",
                    "--match-set",
                    &set(SetId::HealthCheckNodePort),
                    "dst",
                    "-j",
                    "RETURN",
                ]),
                with_comment(
                    "service addresses answer on service ports only",
                    &[
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-m",
                        "set",
                        "--match-set",
                        &set(SetId::IpvsIps),
                        "dst",
                        "-j",
                        "REJECT",
                    ],
                ),
            ],
        ),
    ];
    for (key, chain) in nat.into_iter().chain(filter) {
        f.put_chain(key, chain.into());
    }
    let jumps: [(Table, &str, &str, &str); 11] = [
        (
            Table::Nat,
            "PREROUTING",
            CHAIN_SERVICES,
            "setpoint service portals",
        ),
        (
            Table::Nat,
            "OUTPUT",
            CHAIN_SERVICES,
            "setpoint service portals",
        ),
        (
            Table::Nat,
            "POSTROUTING",
            CHAIN_POSTROUTING,
            "setpoint postrouting rules",
        ),
        (
            Table::Filter,
            "INPUT",
            CHAIN_IPVS_FILTER,
            "setpoint ipvs access filter",
        ),
        (
            Table::Filter,
            "INPUT",
            CHAIN_PROXY_FIREWALL,
            "setpoint load balancer firewall",
        ),
        (
            Table::Filter,
            "INPUT",
            CHAIN_SERVICES,
            "setpoint service rejects",
        ),
        (
            Table::Filter,
            "INPUT",
            CHAIN_NODE_PORT,
            "setpoint health check node ports",
        ),
        (
            Table::Filter,
            "FORWARD",
            CHAIN_PROXY_FIREWALL,
            "setpoint load balancer firewall",
        ),
        (
            Table::Filter,
            "FORWARD",
            CHAIN_SERVICES,
            "setpoint service rejects",
        ),
        (
            Table::Filter,
            "FORWARD",
            CHAIN_FORWARD,
            "setpoint forwarding rules",
        ),
        (
            Table::Filter,
            "OUTPUT",
            CHAIN_SERVICES,
            "setpoint service rejects",
        ),
    ];
    let mut position = std::collections::BTreeMap::new();
    for (table, from, to, text) in jumps {
        let n = position.entry((table, from)).or_insert(0u16);
        *n += 1;
        f.add_jump(Jump {
            family,
            table,
            from: from.to_string(),
            position: *n,
            rule: with_comment(text, &["-j", to]),
        });
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
