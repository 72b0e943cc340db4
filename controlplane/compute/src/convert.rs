//! Kubernetes objects → validated models. A problem with an object is
//! returned as a [`Rejection`] naming the object and the reason; the index
//! counts it and carries on with every other object.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use setpoint_dataplane::{Family, Protocol};

use crate::model::{Endpoint, EndpointSlice, Node, Service, ServiceId, ServicePort, SlicePort};

pub const SCHEDULER_ANNOTATION: &str = "setpoint.io/ipvs-scheduler";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Why an object (or a part of one) was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// What became of a Service.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceOutcome {
    Proxied(Service, Vec<Rejection>),
    /// Not ours to proxy (headless, ExternalName, another proxy's): not an error.
    Ignored(&'static str),
    Rejected(Rejection),
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("{what} {text:?} is not an IP address"))
}

fn parse_port(value: i32, what: &str) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {value} is out of range 1-65535"))
}

pub(crate) fn parse_protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

/// Namespace, name and report label (`Kind namespace/name`) of a
/// namespaced object.
pub(crate) fn identify<'a>(
    meta: &'a ObjectMeta,
    kind: &str,
    default_namespace: &'a str,
) -> (&'a str, &'a str, String) {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(default_namespace);
    let name = meta.name.as_deref().unwrap_or_default();
    (namespace, name, format!("{kind} {namespace}/{name}"))
}

pub fn service(svc: &core::Service, default_namespace: &str) -> ServiceOutcome {
    let meta = &svc.metadata;
    let (namespace, name, object) = identify(meta, "Service", default_namespace);
    let reject = |reason: String| {
        ServiceOutcome::Rejected(Rejection {
            object: object.clone(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("metadata.name is missing".into());
    }
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return ServiceOutcome::Ignored("labelled for another service proxy");
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return ServiceOutcome::Ignored("headless");
    }
    let Some(spec) = &svc.spec else {
        return reject("spec is missing".into());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ServiceOutcome::Ignored("ExternalName");
    }
    let mut cluster_ip_texts: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if cluster_ip_texts.is_empty() {
        cluster_ip_texts.extend(spec.cluster_ip.as_deref());
    }
    if cluster_ip_texts.is_empty()
        || cluster_ip_texts
            .iter()
            .any(|ip| *ip == "None" || ip.is_empty())
    {
        return ServiceOutcome::Ignored("headless");
    }
    let mut warnings = Vec::new();
    let result = (|| -> Result<Service, String> {
        let cluster_ips = cluster_ip_texts
            .iter()
            .map(|t| parse_ip(t, "cluster IP"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let label = p.name.clone().unwrap_or_default();
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(parse_port(n, &format!("port {label:?} nodePort"))?),
            };
            ports.push(ServicePort {
                name: label.clone(),
                protocol: parse_protocol(p.protocol.as_deref())
                    .map_err(|e| format!("port {label:?}: {e}"))?,
                port: parse_port(p.port, &format!("port {label:?}"))?,
                node_port,
            });
        }
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .map(|t| parse_ip(t, "external IP"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut load_balancer_ips = Vec::new();
        let ingresses = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for ingress in ingresses.into_iter().flatten() {
            let vip_mode = matches!(ingress.ip_mode.as_deref(), None | Some("VIP"));
            if let (Some(ip), true) = (&ingress.ip, vip_mode) {
                load_balancer_ips.push(parse_ip(ip, "load balancer ingress IP")?);
            }
        }
        let mut load_balancer_source_ranges = Vec::new();
        for range in spec.load_balancer_source_ranges.iter().flatten() {
            let net = range
                .trim()
                .parse::<IpNet>()
                .map_err(|_| format!("loadBalancerSourceRange {range:?} is not a CIDR"))?;
            load_balancer_source_ranges.push(net.trunc());
        }
        // A zero CIDR admits everyone of its family: no firewall for that
        // family, as kube-proxy (which runs one proxier per family) does.
        let open: Vec<Family> = load_balancer_source_ranges
            .iter()
            .filter(|n| n.prefix_len() == 0)
            .map(Family::of_net)
            .collect();
        load_balancer_source_ranges.retain(|n| !open.contains(&Family::of_net(n)));
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        let externally_reachable =
            type_ == "NodePort" || type_ == "LoadBalancer" || !external_ips.is_empty();
        let health_check_node_port = match spec.health_check_node_port {
            None | Some(0) => None,
            Some(n) => Some(parse_port(n, "healthCheckNodePort")?),
        };
        let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Some(
                u32::try_from(timeout)
                    .ok()
                    .filter(|t| (1..=86400).contains(t))
                    .ok_or_else(|| {
                        format!("sessionAffinity timeout {timeout} is out of range 1-86400")
                    })?,
            )
        } else {
            None
        };
        let scheduler = match meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCHEDULER_ANNOTATION))
        {
            None => None,
            Some(text) => match text.trim().parse() {
                Ok(s) => Some(s),
                Err(e) => {
                    warnings.push(Rejection {
                        object: object.clone(),
                        reason: format!(
                            "annotation {SCHEDULER_ANNOTATION}: {e}; using the default"
                        ),
                    });
                    None
                }
            },
        };
        Ok(Service {
            id: ServiceId::new(namespace, name),
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            external_local: externally_reachable
                && spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port,
            affinity_timeout,
            scheduler,
            unbound_ips: Vec::new(),
        })
    })();
    match result {
        Ok(service) => ServiceOutcome::Proxied(service, warnings),
        Err(reason) => reject(reason),
    }
}

/// What became of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceOutcome {
    /// Used; endpoints that failed validation are left out and listed.
    Used(EndpointSlice, Vec<Rejection>),
    Ignored(&'static str),
    Rejected(Rejection),
}

pub fn endpoint_slice(slice: &discovery::EndpointSlice, default_namespace: &str) -> SliceOutcome {
    let meta = &slice.metadata;
    let (namespace, name, object) = identify(meta, "EndpointSlice", default_namespace);
    let reject = |reason: String| {
        SliceOutcome::Rejected(Rejection {
            object: object.clone(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("metadata.name is missing".into());
    }
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return SliceOutcome::Ignored("labelled for another service proxy");
    }
    let Some(service_name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return SliceOutcome::Ignored("no kubernetes.io/service-name label");
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::Inet,
        "IPv6" => Family::Inet6,
        "FQDN" => return SliceOutcome::Ignored("FQDN address type"),
        other => return reject(format!("addressType {other:?} is not IPv4, IPv6 or FQDN")),
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        // kube-proxy ignores ports without a number: they cannot be proxied.
        let Some(number) = p.port else { continue };
        let port = match parse_port(number, "port") {
            Ok(port) => port,
            Err(e) => return reject(e),
        };
        let protocol = match parse_protocol(p.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(e) => return reject(e),
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
        });
    }
    let mut warnings = Vec::new();
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses only the first address of an endpoint.
        let Some(text) = ep.addresses.first() else {
            continue;
        };
        let address = match parse_ip(text, "address") {
            Ok(ip) if Family::of(&ip) == family => ip,
            Ok(ip) => {
                warnings.push(Rejection {
                    object: object.clone(),
                    reason: format!(
                        "endpoint {i}: {ip} is not of addressType {}",
                        slice.address_type
                    ),
                });
                continue;
            }
            Err(e) => {
                warnings.push(Rejection {
                    object: object.clone(),
                    reason: format!("endpoint {i}: {e}"),
                });
                continue;
            }
        };
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            address,
            node: ep.node_name.as_deref().map(Arc::from),
            zone: ep.zone.as_deref().map(Arc::from),
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .filter(|z| !z.is_empty())
                .map(|z| z.iter().map(|z| Arc::from(z.name.as_str())).collect()),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .filter(|n| !n.is_empty())
                .map(|n| n.iter().map(|n| Arc::from(n.name.as_str())).collect()),
        });
    }
    SliceOutcome::Used(
        EndpointSlice {
            name: Arc::from(name),
            service: ServiceId::new(namespace, service_name),
            family,
            ports,
            endpoints,
        },
        warnings,
    )
}

pub fn node(node: &core::Node) -> Result<Node, Rejection> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let object = format!("Node {name}");
    let reject = |reason: String| Rejection {
        object: object.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(reject("metadata.name is missing".into()));
    }
    let mut addresses = Vec::new();
    let node_addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in node_addresses.into_iter().flatten() {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            let ip = parse_ip(&a.address, &format!("{} address", a.type_)).map_err(reject)?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    let mut pod_cidrs = Vec::new();
    let spec = node.spec.as_ref();
    let cidr_texts = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_else(|| spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect());
    for text in cidr_texts {
        let net = text
            .parse::<IpNet>()
            .map_err(|_| reject(format!("podCIDR {text:?} is not a CIDR")))?;
        pod_cidrs.push(net.trunc());
    }
    Ok(Node {
        name: Arc::from(name),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .map(|z| Arc::from(z.as_str())),
        addresses,
        pod_cidrs,
    })
}
