//! One Service with its EndpointSlices → the atoms it contributes to the
//! dataplane, split by how widely they are shared:
//!
//! ```text
//!  ServicePlan ─┬─ global atoms        (every node: cluster IP sets, addresses, most VSes)
//!               ├─ atoms_for_zone(z)   (topology-aware Services: one VS per zone)
//!               └─ atoms_for_node(n)   (n's NodePort addresses, local-only VSes,
//!                                       hairpin entries for n's endpoints,
//!                                       the health check with n's count)
//! ```
//!
//! Virtual servers with the same backends are one `Arc`. A NodePort's
//! virtual server is one template atom (`0.0.0.0:<nodePort>`, see
//! `setpoint_dataplane::template`) at the level its backends are chosen:
//! shared by every node when they are cluster-wide, per zone when
//! topology-aware, per node only with `externalTrafficPolicy: Local`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::template::template_address;
use setpoint_dataplane::{
    Family, Forward, HealthCheck, NodeCondition, Protocol, RealServer, SetEntry, VirtualServer,
    VirtualServerKey,
};

use crate::layout::{ComputeConfig, SetId, nodeport_addresses};
use crate::model::{EndpointSlice, Node, Service, ServiceId};

/// One contribution to a fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Atom {
    Entry(SetId, Family, SetEntry),
    VirtualServer(VirtualServerKey, Arc<VirtualServer>),
    Address(IpAddr),
    /// The health check the node's agent serves on a port, with the
    /// node's own count: in node parts only.
    HealthCheck(u16, HealthCheck),
    /// A condition of the node itself: in its own part only.
    NodeCondition(NodeCondition),
}

/// The nodes a plan has node-specific atoms for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeScope {
    All,
    /// Only the nodes hosting endpoints (for their hairpin entries).
    Only(Vec<Arc<str>>),
}

impl NodeScope {
    pub fn contains(&self, node: &str) -> bool {
        match self {
            NodeScope::All => true,
            NodeScope::Only(nodes) => nodes.iter().any(|n| &**n == node),
        }
    }
}

/// A port a Service wants to own: a virtual IP and port, or a NodePort.
/// Two Services cannot both own one; the lower `namespace/name` wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    Vip(IpAddr, Protocol, u16),
    NodePort(Family, Protocol, u16),
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frontend::Vip(ip, proto, port) => {
                write!(f, "{}/{proto}", std::net::SocketAddr::new(*ip, *port))
            }
            Frontend::NodePort(family, proto, port) => {
                write!(f, "nodePort {port}/{proto} ({})", family.as_str())
            }
        }
    }
}

/// Every frontend a Service asks for.
pub fn frontends(svc: &Service) -> Vec<Frontend> {
    let mut out = Vec::new();
    for sp in &svc.ports {
        for ip in svc
            .cluster_ips
            .iter()
            .chain(&svc.external_ips)
            .chain(&svc.load_balancer_ips)
        {
            out.push(Frontend::Vip(*ip, sp.protocol, sp.port));
        }
        if let Some(np) = sp.node_port {
            let mut families: Vec<Family> = svc.cluster_ips.iter().map(Family::of).collect();
            families.dedup();
            for family in families {
                out.push(Frontend::NodePort(family, sp.protocol, np));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The node's own atoms, whatever the Services: the addresses it serves
/// NodePorts on, over which the agent expands NodePort templates, and
/// whether load balancers should drain it.
pub fn node_address_atoms(node: &Node, config: &ComputeConfig) -> Vec<Atom> {
    let mut atoms: Vec<Atom> = nodeport_addresses(config, &node.addresses)
        .map(|ip| Atom::Entry(SetId::NodePortAddresses, Family::of(&ip), SetEntry::Ip(ip)))
        .collect();
    if node.draining {
        atoms.push(Atom::NodeCondition(NodeCondition::Draining));
    }
    atoms
}

/// Drops repeated atoms, keeping the first: a plan lists each atom once,
/// which the index's reference counts rely on (an LB IP also listed as an
/// external IP, two ports with the same target port).
fn dedup(mut atoms: Vec<Atom>) -> Vec<Atom> {
    let mut i = 0;
    while i < atoms.len() {
        if atoms[..i].contains(&atoms[i]) {
            atoms.remove(i);
        } else {
            i += 1;
        }
    }
    atoms
}

/// How widely one endpoint selection is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Global,
    Zone,
    Node,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Backend {
    address: IpAddr,
    port: u16,
    node: Option<Arc<str>>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: Option<Vec<Arc<str>>>,
    node_hints: Option<Vec<Arc<str>>>,
}

/// One service port in one address family.
#[derive(Clone, Debug)]
struct PortPlan {
    family: Family,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    internal_local: bool,
    external_local: bool,
    backends: Vec<Backend>,
    /// Some endpoint can serve (ready, or serving while terminating).
    has_endpoints: bool,
    cluster_level: Level,
    /// The cluster-wide selection when it does not depend on the node.
    global_vs: Option<Arc<VirtualServer>>,
    /// The selection per zone for zone-hinted backends.
    zone_vs: BTreeMap<Option<Arc<str>>, Arc<VirtualServer>>,
    empty_vs: Arc<VirtualServer>,
    scheduler: setpoint_dataplane::Scheduler,
    persistence: Option<u32>,
}

/// A Service's contribution, ready to be expanded per zone and per node.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub id: ServiceId,
    pub global: Vec<Atom>,
    ports: Vec<PortPlan>,
    health_check_node_port: Option<u16>,
}

impl ServicePlan {
    /// Whether any atom depends on the zone of the node.
    pub fn has_zone_atoms(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.cluster_level == Level::Zone && (!p.internal_local || !p.external_local))
    }

    /// Which nodes get atoms from [`ServicePlan::atoms_for_node`]. A
    /// health-check port is served on every node, with a count of 0 where
    /// the Service has no endpoint.
    pub fn node_scope(&self) -> NodeScope {
        let every_node = self.health_check_node_port.is_some()
            || self.ports.iter().any(|p| {
                (p.node_port.is_some() && p.node_port_needs_node_atoms())
                    || p.internal_local
                    || (p.external_local
                        && !(p.external_ips.is_empty() && p.load_balancer_ips.is_empty()))
                    || p.cluster_level == Level::Node
                    || !p.source_ranges.is_empty()
            });
        if every_node {
            return NodeScope::All;
        }
        let mut hosts: Vec<Arc<str>> = self
            .ports
            .iter()
            .flat_map(|p| p.backends.iter().filter_map(|b| b.node.clone()))
            .collect();
        hosts.sort();
        hosts.dedup();
        NodeScope::Only(hosts)
    }

    /// Atoms for nodes in `zone` (`None`: nodes without a zone label).
    pub fn atoms_for_zone(&self, zone: Option<&Arc<str>>) -> Vec<Atom> {
        let mut out = Vec::new();
        for p in &self.ports {
            if p.cluster_level != Level::Zone {
                continue;
            }
            p.push_shared_virtual_servers(&p.zone_view(zone), &mut out);
        }
        dedup(out)
    }

    /// Atoms for one node.
    pub fn atoms_for_node(&self, node: &Node, config: &ComputeConfig) -> Vec<Atom> {
        let mut out = Vec::new();
        for p in &self.ports {
            let key = |address| VirtualServerKey {
                address,
                protocol: p.protocol,
                port: p.port,
            };
            let cluster_vs = || match p.cluster_level {
                Level::Global => p.global_vs.clone().unwrap_or_else(|| p.empty_vs.clone()),
                Level::Zone => p.zone_view(node.zone.as_ref()),
                Level::Node => p.node_view(node),
            };
            let local = if p.internal_local || p.external_local {
                p.local_backends(node)
            } else {
                Vec::new()
            };
            let local_vs = || p.virtual_server(&local);
            let internal_on_node = p.internal_local || p.cluster_level == Level::Node;
            if internal_on_node {
                let vs = if p.internal_local {
                    local_vs()
                } else {
                    cluster_vs()
                };
                for ip in &p.cluster_ips {
                    out.push(Atom::VirtualServer(key(*ip), vs.clone()));
                }
            }
            // External frontends with externalTrafficPolicy=Local send only
            // to this node's endpoints. With none here, traffic from outside
            // the cluster is dropped by a rule; pods on this node still reach
            // the service's other endpoints through the virtual server.
            let no_local = p.external_local && p.has_endpoints && local.is_empty();
            let external_vs = if p.external_local {
                Some(if no_local { cluster_vs() } else { local_vs() })
            } else if p.cluster_level == Level::Node {
                Some(cluster_vs())
            } else {
                None
            };
            if let Some(vs) = &external_vs {
                for ip in p.external_ips.iter().chain(&p.load_balancer_ips) {
                    out.push(Atom::VirtualServer(key(*ip), vs.clone()));
                }
            }
            if no_local {
                for ip in p.external_ips.iter().chain(&p.load_balancer_ips) {
                    out.push(p.entry(SetId::NoLocalEndpoints, *ip, p.port));
                }
            }
            if let Some(node_port) = p.node_port {
                // Cluster-wide and per-zone selections have their template
                // in the shared atoms; a node-specific one is this node's.
                if let (Some(vs), Some(template)) = (&external_vs, p.node_port_template()) {
                    out.push(Atom::VirtualServer(template, vs.clone()));
                }
                let node_ips = nodeport_addresses(config, &node.addresses)
                    .filter(|ip| Family::of(ip) == p.family);
                for ip in node_ips {
                    let ip = &ip;
                    if p.protocol == Protocol::Sctp {
                        out.push(p.entry(SetId::NodePortSctp, *ip, node_port));
                        if p.external_local {
                            out.push(p.entry(SetId::NodePortLocalSctp, *ip, node_port));
                        }
                    }
                    if !p.has_endpoints {
                        out.push(p.entry(SetId::NoEndpoints, *ip, node_port));
                    } else if no_local {
                        out.push(p.entry(SetId::NoLocalEndpoints, *ip, node_port));
                    }
                }
            }
            if !p.source_ranges.is_empty()
                && node
                    .addresses
                    .iter()
                    .any(|ip| p.source_ranges.iter().any(|net| net.contains(ip)))
            {
                for ip in &p.load_balancer_ips {
                    out.push(Atom::Entry(
                        SetId::LoadBalancerSourceIp,
                        p.family,
                        SetEntry::IpPortIp {
                            ip: *ip,
                            protocol: p.protocol,
                            port: p.port,
                            ip2: *ip,
                        },
                    ));
                }
            }
            for b in p
                .backends
                .iter()
                .filter(|b| b.node.as_deref() == Some(&*node.name))
            {
                out.push(Atom::Entry(
                    SetId::LoopBack,
                    p.family,
                    SetEntry::IpPortIp {
                        ip: b.address,
                        protocol: p.protocol,
                        port: b.port,
                        ip2: b.address,
                    },
                ));
            }
        }
        if let Some(port) = self.health_check_node_port {
            out.push(Atom::HealthCheck(
                port,
                HealthCheck {
                    namespace: self.id.namespace.to_string(),
                    name: self.id.name.to_string(),
                    local_endpoints: self.local_ready_endpoints(node),
                },
            ));
        }
        dedup(out)
    }

    /// How many of the Service's endpoints on `node` are ready, each
    /// address once whatever its ports and slices: what the node's
    /// health-check port reports. kube-proxy's rule
    /// (`EndpointsMap.LocalReadyEndpoints`): terminating endpoints, even
    /// serving ones, do not count, so that load balancers move new
    /// connections off a node whose endpoints are all going away, while
    /// the node's virtual servers still send what arrives to them.
    pub fn local_ready_endpoints(&self, node: &Node) -> u32 {
        let addresses: BTreeSet<IpAddr> = self
            .ports
            .iter()
            .flat_map(|p| p.backends.iter())
            .filter(|b| b.ready && b.node.as_deref() == Some(&*node.name))
            .map(|b| b.address)
            .collect();
        u32::try_from(addresses.len()).unwrap_or(u32::MAX)
    }
}

impl PortPlan {
    /// The virtual servers of a selection shared beyond one node (the
    /// cluster-wide one, or a zone's): every frontend whose traffic policy
    /// does not restrict it to the node's own endpoints, the NodePort's
    /// template among them.
    fn push_shared_virtual_servers(&self, vs: &Arc<VirtualServer>, out: &mut Vec<Atom>) {
        let key = |address| VirtualServerKey {
            address,
            protocol: self.protocol,
            port: self.port,
        };
        if !self.internal_local {
            for ip in &self.cluster_ips {
                out.push(Atom::VirtualServer(key(*ip), vs.clone()));
            }
        }
        if !self.external_local {
            for ip in self.external_ips.iter().chain(&self.load_balancer_ips) {
                out.push(Atom::VirtualServer(key(*ip), vs.clone()));
            }
            if let Some(template) = self.node_port_template() {
                out.push(Atom::VirtualServer(template, vs.clone()));
            }
        }
    }

    /// The NodePort's template key, when the port has a NodePort.
    fn node_port_template(&self) -> Option<VirtualServerKey> {
        self.node_port.map(|port| VirtualServerKey {
            address: template_address(self.family),
            protocol: self.protocol,
            port,
        })
    }

    /// Whether the NodePort puts anything into each node's own atoms: its
    /// template when the selection depends on the node, SCTP's per-address
    /// set entries, the per-address reject/drop entries.
    fn node_port_needs_node_atoms(&self) -> bool {
        self.external_local
            || self.cluster_level == Level::Node
            || self.protocol == Protocol::Sctp
            || !self.has_endpoints
    }

    fn entry(&self, set: SetId, ip: IpAddr, port: u16) -> Atom {
        Atom::Entry(
            set,
            self.family,
            SetEntry::IpPort {
                ip,
                protocol: self.protocol,
                port,
            },
        )
    }

    fn virtual_server(&self, backends: &[&Backend]) -> Arc<VirtualServer> {
        if backends.is_empty() {
            return self.empty_vs.clone();
        }
        Arc::new(VirtualServer::new(
            self.scheduler,
            self.persistence,
            backends
                .iter()
                .map(|b| RealServer {
                    address: b.address,
                    port: b.port,
                    weight: 1,
                    forward: Forward::Masq,
                })
                .collect(),
        ))
    }

    fn ready(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.ready)
    }

    /// Ready backends, or else the serving-but-terminating ones.
    fn usable(&self, keep: impl Fn(&Backend) -> bool) -> Vec<&Backend> {
        let ready: Vec<&Backend> = self.ready().filter(|b| keep(b)).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.backends
            .iter()
            .filter(|b| b.serving && b.terminating && keep(b))
            .collect()
    }

    fn local_backends(&self, node: &Node) -> Vec<&Backend> {
        self.usable(|b| b.node.as_deref() == Some(&*node.name))
    }

    fn zone_view(&self, zone: Option<&Arc<str>>) -> Arc<VirtualServer> {
        match self.zone_vs.get(&zone.cloned()) {
            Some(vs) => vs.clone(),
            None => self.virtual_server(&self.zone_selection(zone)),
        }
    }

    /// Ready backends hinted for `zone`, or all usable ones when no ready
    /// backend is hinted for it (kube-proxy's topology rule).
    fn zone_selection(&self, zone: Option<&Arc<str>>) -> Vec<&Backend> {
        if let Some(zone) = zone {
            let hinted: Vec<&Backend> = self
                .ready()
                .filter(|b| b.zone_hints.as_ref().is_some_and(|h| h.contains(zone)))
                .collect();
            if !hinted.is_empty() {
                return hinted;
            }
        }
        self.usable(|_| true)
    }

    /// PreferSameNode: ready backends hinted for this node, else the zone rule.
    fn node_view(&self, node: &Node) -> Arc<VirtualServer> {
        let hinted: Vec<&Backend> = self
            .ready()
            .filter(|b| {
                b.node_hints
                    .as_ref()
                    .is_some_and(|h| h.contains(&node.name))
            })
            .collect();
        if !hinted.is_empty() {
            return self.virtual_server(&hinted);
        }
        if self.ready().all(|b| b.zone_hints.is_some()) {
            return self.zone_view(node.zone.as_ref());
        }
        self.virtual_server(&self.usable(|_| true))
    }
}

fn cluster_level(backends: &[Backend]) -> Level {
    let mut ready = backends.iter().filter(|b| b.ready).peekable();
    if ready.peek().is_none() {
        return Level::Global;
    }
    let ready: Vec<&Backend> = ready.collect();
    if ready.iter().all(|b| b.node_hints.is_some()) {
        Level::Node
    } else if ready.iter().all(|b| b.zone_hints.is_some()) {
        Level::Zone
    } else {
        Level::Global
    }
}

/// Backends of one service port in one family, one per address and port;
/// a backend listed twice keeps its non-terminating copy.
fn backends_for(
    port_name: &str,
    protocol: Protocol,
    family: Family,
    slices: &[&EndpointSlice],
) -> Vec<Backend> {
    let mut by_key: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let backend = Backend {
                address: ep.address,
                port: target.port,
                node: ep.node.clone(),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                zone_hints: ep.zone_hints.clone(),
                node_hints: ep.node_hints.clone(),
            };
            match by_key.get(&(ep.address, target.port)) {
                Some(existing) if !existing.terminating || backend.terminating => {}
                _ => {
                    by_key.insert((ep.address, target.port), backend);
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// Plans a Service. `zones` lists the zones of the known nodes (with `None`
/// for nodes without one), so per-zone virtual servers are built once.
pub fn plan_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    zones: &[Option<Arc<str>>],
    config: &ComputeConfig,
    owns: &dyn Fn(&Frontend) -> bool,
) -> ServicePlan {
    let mut global = Vec::new();
    let mut ports = Vec::new();
    let scheduler = svc.scheduler.unwrap_or(config.default_scheduler);
    let mut families: Vec<Family> = svc.cluster_ips.iter().map(Family::of).collect();
    families.dedup();
    for family in families {
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| Family::of(ip) == family)
                .collect()
        };
        let cluster_ips = of_family(&svc.cluster_ips);
        let external_ips = of_family(&svc.external_ips);
        let load_balancer_ips = of_family(&svc.load_balancer_ips);
        let source_ranges: Vec<IpNet> = svc
            .load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|n| Family::of_net(n) == family)
            .collect();
        for ip in cluster_ips
            .iter()
            .chain(&external_ips)
            .chain(&load_balancer_ips)
            .filter(|ip| !svc.unbound_ips.contains(ip))
        {
            global.push(Atom::Address(*ip));
            global.push(Atom::Entry(SetId::IpvsIps, family, SetEntry::Ip(*ip)));
        }
        if let Some(port) = svc.health_check_node_port {
            global.push(Atom::Entry(
                SetId::HealthCheckNodePort,
                family,
                SetEntry::Port(port),
            ));
        }
        for sp in &svc.ports {
            let backends = backends_for(&sp.name, sp.protocol, family, slices);
            let has_endpoints = backends
                .iter()
                .any(|b| b.ready || (b.serving && b.terminating));
            let empty_vs = Arc::new(VirtualServer::new(
                scheduler,
                svc.affinity_timeout,
                Vec::new(),
            ));
            let owned = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter()
                    .copied()
                    .filter(|ip| owns(&Frontend::Vip(*ip, sp.protocol, sp.port)))
                    .collect()
            };
            let node_port = sp
                .node_port
                .filter(|np| owns(&Frontend::NodePort(family, sp.protocol, *np)));
            let mut p = PortPlan {
                family,
                protocol: sp.protocol,
                port: sp.port,
                node_port,
                cluster_ips: owned(&cluster_ips),
                external_ips: owned(&external_ips),
                load_balancer_ips: owned(&load_balancer_ips),
                source_ranges: source_ranges.clone(),
                internal_local: svc.internal_local,
                external_local: svc.external_local,
                cluster_level: cluster_level(&backends),
                has_endpoints,
                backends,
                global_vs: None,
                zone_vs: BTreeMap::new(),
                empty_vs,
                scheduler,
                persistence: svc.affinity_timeout,
            };
            match p.cluster_level {
                Level::Global => {
                    p.global_vs = Some(p.virtual_server(&p.usable(|_| true)));
                }
                Level::Zone | Level::Node => {
                    let views: BTreeMap<_, _> = zones
                        .iter()
                        .map(|z| (z.clone(), p.virtual_server(&p.zone_selection(z.as_ref()))))
                        .collect();
                    p.zone_vs = views;
                }
            }
            let entry = |set: SetId, ip: IpAddr| p.entry(set, ip, p.port);
            for ip in &p.cluster_ips {
                global.push(entry(SetId::ClusterIp, *ip));
            }
            for ip in &p.external_ips {
                let set = if p.external_local {
                    SetId::ExternalIpLocal
                } else {
                    SetId::ExternalIp
                };
                global.push(entry(set, *ip));
            }
            for ip in &p.load_balancer_ips {
                global.push(entry(SetId::LoadBalancer, *ip));
                if p.external_local {
                    global.push(entry(SetId::LoadBalancerLocal, *ip));
                }
                if !p.source_ranges.is_empty() {
                    global.push(entry(SetId::LoadBalancerFw, *ip));
                    for net in &p.source_ranges {
                        global.push(Atom::Entry(
                            SetId::LoadBalancerSourceCidr,
                            family,
                            SetEntry::IpPortNet {
                                ip: *ip,
                                protocol: p.protocol,
                                port: p.port,
                                net: *net,
                            },
                        ));
                    }
                }
            }
            if let Some(node_port) = p.node_port
                && p.protocol != Protocol::Sctp
            {
                global.push(Atom::Entry(
                    SetId::node_port(p.protocol, false),
                    family,
                    SetEntry::Port(node_port),
                ));
                if p.external_local {
                    global.push(Atom::Entry(
                        SetId::node_port(p.protocol, true),
                        family,
                        SetEntry::Port(node_port),
                    ));
                }
            }
            if !p.has_endpoints {
                for ip in p
                    .cluster_ips
                    .iter()
                    .chain(&p.external_ips)
                    .chain(&p.load_balancer_ips)
                {
                    global.push(entry(SetId::NoEndpoints, *ip));
                }
            }
            if p.cluster_level == Level::Global {
                let vs = p.global_vs.as_ref().unwrap_or(&p.empty_vs);
                p.push_shared_virtual_servers(vs, &mut global);
            }
            ports.push(p);
        }
    }
    ServicePlan {
        id: svc.id.clone(),
        global: dedup(global),
        ports,
        health_check_node_port: svc.health_check_node_port,
    }
}

impl ServicePlan {
    pub fn health_check_node_port(&self) -> Option<u16> {
        self.health_check_node_port
    }
}
