//! Which of a Service's addresses it may be served on, and whether it fits
//! its budget. A Service's spec is a tenant's word: its ClusterIPs were
//! allocated to it, its `externalIPs` are claims the operator must allow,
//! and its load-balancer ingress IPs (written by a controller) are trusted
//! more, but never to take a ClusterIP, a node's address or a CIDR of the
//! cluster.
//!
//! ```text
//!  Service ──admit(context)──▶ served addresses + Refusals   (the rest of the Service works)
//!          ──budget──────────▶ LeftOut                       (nothing of it is served)
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::layout::ComputeConfig;
use crate::model::{Service, ServiceId};

/// Which field of a Service an address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressRole {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
}

impl std::fmt::Display for AddressRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressRole::ClusterIp => "cluster IP",
            AddressRole::ExternalIp => "external IP",
            AddressRole::LoadBalancerIp => "load balancer IP",
        })
    }
}

/// Why an address is not served. Bounded: the variant names are metric
/// labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// `0.0.0.0`, `::` or `0.0.0.0/8`: the NodePort template's address.
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    Broadcast,
    /// `::ffff:a.b.c.d`, an IPv4 address dressed as IPv6.
    Ipv4Mapped,
    /// Another (or the same) Service's ClusterIP: it belongs to that Service.
    ClusterIp,
    /// Inside the service CIDRs (`--service-cidr`, `ServiceCIDR` objects).
    ServiceCidr,
    /// Inside the pod CIDRs (`--cluster-cidr`, else the Nodes' podCIDRs).
    PodCidr,
    /// A Node's InternalIP or ExternalIP, without `--allow-node-external-ips`.
    NodeAddress,
    /// An `externalIPs` entry outside `--external-ip-cidrs`.
    OutsideExternalIpCidrs,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 11] = [
        RefusalReason::Unspecified,
        RefusalReason::Loopback,
        RefusalReason::LinkLocal,
        RefusalReason::Multicast,
        RefusalReason::Broadcast,
        RefusalReason::Ipv4Mapped,
        RefusalReason::ClusterIp,
        RefusalReason::ServiceCidr,
        RefusalReason::PodCidr,
        RefusalReason::NodeAddress,
        RefusalReason::OutsideExternalIpCidrs,
    ];

    /// The variant's name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unspecified => "Unspecified",
            RefusalReason::Loopback => "Loopback",
            RefusalReason::LinkLocal => "LinkLocal",
            RefusalReason::Multicast => "Multicast",
            RefusalReason::Broadcast => "Broadcast",
            RefusalReason::Ipv4Mapped => "Ipv4Mapped",
            RefusalReason::ClusterIp => "ClusterIp",
            RefusalReason::ServiceCidr => "ServiceCidr",
            RefusalReason::PodCidr => "PodCidr",
            RefusalReason::NodeAddress => "NodeAddress",
            RefusalReason::OutsideExternalIpCidrs => "OutsideExternalIpCidrs",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            RefusalReason::Unspecified => {
                "it is the unspecified address (only NodePorts serve there)"
            }
            RefusalReason::Loopback => "it is a loopback address",
            RefusalReason::LinkLocal => "it is a link-local address",
            RefusalReason::Multicast => "it is a multicast address",
            RefusalReason::Broadcast => "it is the broadcast address",
            RefusalReason::Ipv4Mapped => "it is an IPv4-mapped IPv6 address",
            RefusalReason::ClusterIp => {
                "it is a Service's cluster IP, which belongs to that Service"
            }
            RefusalReason::ServiceCidr => {
                "it is inside the service CIDRs (--service-cidr, ServiceCIDR objects)"
            }
            RefusalReason::PodCidr => "it is inside the pod CIDRs",
            RefusalReason::NodeAddress => {
                "it is a node's address (allowed only with --allow-node-external-ips)"
            }
            RefusalReason::OutsideExternalIpCidrs => {
                "it is outside the approved ranges (--external-ip-cidrs)"
            }
        }
    }
}

/// One address of a Service that is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub address: IpAddr,
    pub role: AddressRole,
    pub reason: RefusalReason,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} is not served: {} (reason {})",
            self.role,
            self.address,
            self.reason.explain(),
            self.reason.as_str()
        )
    }
}

/// Why a whole Service is left out. Bounded: variant names are metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeftOutReason {
    /// Ports × addresses (plus NodePorts) over `--max-service-frontends`.
    TooManyFrontends,
    /// Endpoints over all its EndpointSlices over `--max-service-endpoints`.
    TooManyEndpoints,
    /// Its atoms made a node's state fail validation.
    InvalidState,
}

impl LeftOutReason {
    pub const ALL: [LeftOutReason; 3] = [
        LeftOutReason::TooManyFrontends,
        LeftOutReason::TooManyEndpoints,
        LeftOutReason::InvalidState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeftOutReason::TooManyFrontends => "TooManyFrontends",
            LeftOutReason::TooManyEndpoints => "TooManyEndpoints",
            LeftOutReason::InvalidState => "InvalidState",
        }
    }
}

/// A special-purpose address that is never a Service's, whatever the role.
pub fn special(ip: IpAddr) -> Option<RefusalReason> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.octets()[0] == 0 {
                Some(RefusalReason::Unspecified)
            } else if v4.is_loopback() {
                Some(RefusalReason::Loopback)
            } else if v4.is_link_local() {
                Some(RefusalReason::LinkLocal)
            } else if v4.is_multicast() {
                Some(RefusalReason::Multicast)
            } else if v4.is_broadcast() {
                Some(RefusalReason::Broadcast)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some(RefusalReason::Unspecified)
            } else if v6.is_loopback() {
                Some(RefusalReason::Loopback)
            } else if v6.is_unicast_link_local() {
                Some(RefusalReason::LinkLocal)
            } else if v6.is_multicast() {
                Some(RefusalReason::Multicast)
            } else if v6.to_ipv4_mapped().is_some() {
                Some(RefusalReason::Ipv4Mapped)
            } else {
                None
            }
        }
    }
}

/// Why a CIDR is not taken as a service CIDR. Its addresses are rejected
/// on every node unless a Service holds them, so a range that takes in
/// addresses a node needs (loopback, link-local, multicast, the
/// unspecified network) would cut nodes off; those are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceCidrError {
    #[error("{text} is not a CIDR")]
    NotACidr { text: String },
    #[error("{net} has host bits set: the network is {network}")]
    HostBits { net: IpNet, network: IpNet },
    #[error("{net} overlaps {special} ({what}), which no node may reject")]
    Special {
        net: IpNet,
        special: IpNet,
        what: &'static str,
    },
}

/// Ranges a service CIDR must not overlap.
const SPECIAL_NETS: [(&str, &str); 10] = [
    ("0.0.0.0/8", "the unspecified network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped addresses"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// `net` as a service CIDR: host bits cut off, refused when it overlaps a
/// special-purpose range.
pub fn service_cidr(net: IpNet) -> Result<IpNet, ServiceCidrError> {
    let net = net.trunc();
    for (special, what) in SPECIAL_NETS {
        let Ok(special) = special.parse::<IpNet>() else {
            continue;
        };
        if net.contains(&special.network()) || special.contains(&net.network()) {
            return Err(ServiceCidrError::Special { net, special, what });
        }
    }
    Ok(net)
}

/// One of a `ServiceCIDR` object's `spec.cidrs`, held to what the API
/// server accepts (a CIDR in canonical form, no host bits) and to
/// [`service_cidr`].
pub fn parse_service_cidr(text: &str) -> Result<IpNet, ServiceCidrError> {
    let net: IpNet = text.parse().map_err(|_| ServiceCidrError::NotACidr {
        text: setpoint_dataplane::text::quoted(text),
    })?;
    if net.trunc() != net {
        return Err(ServiceCidrError::HostBits {
            net,
            network: net.trunc(),
        });
    }
    service_cidr(net)
}

/// What the cluster has allocated, against which external and
/// load-balancer addresses are checked.
pub struct AddressContext<'a> {
    pub config: &'a ComputeConfig,
    /// Every address some Service lists as a ClusterIP.
    pub cluster_ips: &'a HashMap<IpAddr, std::collections::BTreeSet<ServiceId>>,
    /// `--cluster-cidr`, else the Nodes' podCIDRs.
    pub pod_cidrs: &'a [IpNet],
    /// Every Node's InternalIP and ExternalIP.
    pub node_addresses: &'a HashSet<IpAddr>,
}

impl AddressContext<'_> {
    /// Why `ip` in `role` is not served, if it is not.
    pub fn refuse(&self, ip: IpAddr, role: AddressRole) -> Option<RefusalReason> {
        if let Some(reason) = special(ip) {
            return Some(reason);
        }
        if role == AddressRole::ClusterIp {
            return None;
        }
        let inside = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        if self.cluster_ips.contains_key(&ip) {
            Some(RefusalReason::ClusterIp)
        } else if inside(&self.config.service_cidrs) {
            Some(RefusalReason::ServiceCidr)
        } else if inside(self.pod_cidrs) {
            Some(RefusalReason::PodCidr)
        } else if self.node_addresses.contains(&ip) && !self.config.allow_node_external_ips {
            Some(RefusalReason::NodeAddress)
        } else if role == AddressRole::ExternalIp
            && !self.config.external_ip_cidrs.is_empty()
            && !inside(&self.config.external_ip_cidrs)
        {
            Some(RefusalReason::OutsideExternalIpCidrs)
        } else {
            None
        }
    }

    /// The Service as served: refused addresses removed (the rest of the
    /// Service stays), accepted node addresses listed in `unbound_ips`.
    /// Borrowed when nothing is refused, which is nearly always.
    pub fn admit<'s>(&self, svc: &'s Service) -> (Cow<'s, Service>, Vec<Refusal>) {
        let mut refusals = Vec::new();
        let mut check = |ips: &[IpAddr], role: AddressRole| {
            for ip in ips {
                if let Some(reason) = self.refuse(*ip, role) {
                    refusals.push(Refusal {
                        address: *ip,
                        role,
                        reason,
                    });
                }
            }
        };
        check(&svc.cluster_ips, AddressRole::ClusterIp);
        check(&svc.external_ips, AddressRole::ExternalIp);
        check(&svc.load_balancer_ips, AddressRole::LoadBalancerIp);
        let unbound: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .chain(&svc.load_balancer_ips)
            .filter(|ip| self.node_addresses.contains(ip))
            .filter(|ip| !refusals.iter().any(|r| r.address == **ip))
            .copied()
            .collect();
        if refusals.is_empty() && unbound.is_empty() {
            return (Cow::Borrowed(svc), refusals);
        }
        let keep = |ips: &[IpAddr], role: AddressRole| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| !refusals.iter().any(|r| r.address == *ip && r.role == role))
                .collect()
        };
        let mut served = svc.clone();
        served.cluster_ips = keep(&svc.cluster_ips, AddressRole::ClusterIp);
        served.external_ips = keep(&svc.external_ips, AddressRole::ExternalIp);
        served.load_balancer_ips = keep(&svc.load_balancer_ips, AddressRole::LoadBalancerIp);
        served.unbound_ips = unbound;
        (Cow::Owned(served), refusals)
    }
}

/// Frontends a Service asks for: each port on each address, plus its
/// NodePorts (per family).
pub fn frontend_count(svc: &Service) -> usize {
    let addresses = svc.cluster_ips.len() + svc.external_ips.len() + svc.load_balancer_ips.len();
    let node_ports = svc.ports.iter().filter(|p| p.node_port.is_some()).count();
    svc.ports
        .len()
        .saturating_mul(addresses)
        .saturating_add(node_ports.saturating_mul(svc.cluster_ips.len().max(1)))
}
