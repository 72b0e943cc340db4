//! Validated, compact forms of the Kubernetes objects compute reads. Every
//! field here has been checked (addresses parse, ports are in range,
//! protocols are known); conversion lives in [`crate::convert`].

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::{Family, Protocol, Scheduler};

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceId {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for the single unnamed port of a Service.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A Service that Setpoint proxies (headless, ExternalName and foreign
/// proxy-name Services never become one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// Ingress IPs in VIP mode (`ipMode` unset or `VIP`).
    pub load_balancer_ips: Vec<IpAddr>,
    /// Empty means every source may reach the load balancer IPs.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `externalTrafficPolicy: Local` on a Service reachable from outside.
    pub external_local: bool,
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// From the `setpoint.io/ipvs-scheduler` annotation.
    pub scheduler: Option<Scheduler>,
    /// External or load-balancer IPs that are a node's own address, served
    /// by the operator's leave (`allow_node_external_ips`): already local
    /// on that node, so never bound to any node's service interface nor
    /// listed in `SP-IPVS-IPS` (whose filter would close that node's other
    /// ports). Filled by admission, empty as converted.
    pub unbound_ips: Vec<IpAddr>,
}

impl Service {
    pub fn has_external_frontends(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones`; `None` when the endpoint carries no zone hints.
    pub zone_hints: Option<Vec<Arc<str>>>,
    /// `hints.forNodes`; `None` when the endpoint carries no node hints.
    pub node_hints: Option<Vec<Arc<str>>>,
}

/// One EndpointSlice, keyed by its own name, pointing at its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub name: Arc<str>,
    pub service: ServiceId,
    pub family: Family,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Arc<str>,
    pub zone: Option<Arc<str>>,
    /// InternalIP and ExternalIP addresses from the Node's status.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Load balancers should drain the node: it is being deleted
    /// (`metadata.deletionTimestamp`) or tainted
    /// `ToBeDeletedByClusterAutoscaler` (KEP-3836).
    pub draining: bool,
}
