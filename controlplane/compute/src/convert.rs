//! Kubernetes objects → validated models. A problem with an object is
//! returned as a [`Rejection`] naming the object and the reason; the index
//! counts it and carries on with every other object.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use setpoint_dataplane::text::quoted;
use setpoint_dataplane::{Family, Protocol};

use crate::model::{Endpoint, EndpointSlice, Node, Service, ServiceId, ServicePort, SlicePort};

pub const SCHEDULER_ANNOTATION: &str = "setpoint.io/ipvs-scheduler";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a node it is about to delete:
/// with it, or a deletion timestamp, the node is draining (KEP-3836).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

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

// Kubernetes' own syntax for the names and labels compute reads, as the
// API server enforces it (apimachinery's `util/validation`). Manifest files
// are not checked by an API server; an object from either source is held
// to it here, so no tenant text outside it reaches a node's state.

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;
const LABEL_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const PORT_NAME_MAX: usize = 15;

/// Text outside Kubernetes' syntax for what it names: the reason a check
/// failed. Holds the text quoted (escaped and cut), as reports show it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("{text} is {len} bytes, at most {max} are allowed")]
    TooLong {
        text: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{0} is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
    )]
    NotDnsLabel(String),
    #[error("{0} is not a DNS subdomain (dot-separated lower-case letters, digits and '-')")]
    NotDnsSubdomain(String),
    #[error("{0} does not start with a letter")]
    NoLeadingLetter(String),
    #[error("label key {key}: prefix {prefix}")]
    LabelKeyPrefix {
        key: String,
        prefix: Box<SyntaxError>,
    },
    #[error(
        "label key {0} is not a qualified name ([prefix/]name, the name at most {max} letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        max = LABEL_NAME_MAX
    )]
    NotLabelKey(String),
    #[error(
        "label value {0} is not valid (at most {max} letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
        max = LABEL_VALUE_MAX
    )]
    NotLabelValue(String),
    #[error("label {key}: {value}")]
    Label {
        key: String,
        value: Box<SyntaxError>,
    },
    #[error(
        "port name {0} is not an IANA service name (at most {max} lower-case letters, digits and single '-' inside, at least one letter)",
        max = PORT_NAME_MAX
    )]
    NotPortName(String),
    #[error("protocol {0} is not TCP, UDP or SCTP")]
    Protocol(String),
}

fn too_long(text: &str, max: usize) -> Option<SyntaxError> {
    (text.len() > max).then(|| SyntaxError::TooLong {
        text: quoted(text),
        len: text.len(),
        max,
    })
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes
/// (namespace names).
pub fn check_dns_label(text: &str) -> Result<(), SyntaxError> {
    if let Some(e) = too_long(text, DNS_LABEL_MAX) {
        return Err(e);
    }
    if is_dns_label_text(text) {
        Ok(())
    } else {
        Err(SyntaxError::NotDnsLabel(quoted(text)))
    }
}

fn is_dns_label_text(text: &str) -> bool {
    let b = text.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 bytes (names of
/// pods and NetworkPolicies, label key prefixes).
pub fn check_dns_subdomain(text: &str) -> Result<(), SyntaxError> {
    if let Some(e) = too_long(text, DNS_SUBDOMAIN_MAX) {
        return Err(e);
    }
    if text.split('.').all(is_dns_label_text) {
        Ok(())
    } else {
        Err(SyntaxError::NotDnsSubdomain(quoted(text)))
    }
}

/// RFC 1035 label: a DNS label that starts with a letter (Service names).
pub fn check_dns_1035_label(text: &str) -> Result<(), SyntaxError> {
    check_dns_label(text)?;
    if text.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(SyntaxError::NoLeadingLetter(quoted(text)))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`: a label value or the name
/// part of a label key.
fn is_label_text(text: &str) -> bool {
    let b = text.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key (a qualified name): `[prefix/]name`, the prefix a DNS
/// subdomain, the name at most 63 bytes of letters, digits, `-`, `_`, `.`
/// starting and ending with a letter or digit.
pub fn check_label_key(key: &str) -> Result<(), SyntaxError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|e| SyntaxError::LabelKeyPrefix {
            key: quoted(key),
            prefix: Box::new(e),
        })?;
    }
    if name.len() > LABEL_NAME_MAX || !is_label_text(name) {
        return Err(SyntaxError::NotLabelKey(quoted(key)));
    }
    Ok(())
}

/// A label value: empty, or at most 63 bytes of letters, digits, `-`, `_`,
/// `.` starting and ending with a letter or digit.
pub fn check_label_value(value: &str) -> Result<(), SyntaxError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > LABEL_VALUE_MAX || !is_label_text(value) {
        return Err(SyntaxError::NotLabelValue(quoted(value)));
    }
    Ok(())
}

/// Every key and value of a label map.
pub fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), SyntaxError> {
    for (key, value) in labels {
        check_label_key(key)?;
        check_label_value(value).map_err(|e| SyntaxError::Label {
            key: quoted(key),
            value: Box::new(e),
        })?;
    }
    Ok(())
}

/// A named port (IANA_SVC_NAME): at most 15 bytes of lower-case letters,
/// digits and `-`, at least one letter, no `--`, no `-` at either end.
pub fn check_port_name(name: &str) -> Result<(), SyntaxError> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= PORT_NAME_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.contains("--")
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(SyntaxError::NotPortName(quoted(name)))
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
        .map_err(|_| format!("{what} {} is not an IP address", quoted(text)))
}

fn parse_port(value: i32, what: &str) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {value} is out of range 1-65535"))
}

pub(crate) fn parse_protocol(value: Option<&str>) -> Result<Protocol, SyntaxError> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(SyntaxError::Protocol(quoted(other))),
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
    let label = format!("{kind} {}/{}", printable(namespace), printable(name));
    (namespace, name, label)
}

/// A name as a report shows it: as it is when it is a name Kubernetes
/// could have given, escaped and cut otherwise (a newline in a name
/// would forge a line of the report).
pub(crate) fn printable(name: &str) -> String {
    if name.len() <= DNS_SUBDOMAIN_MAX && !name.chars().any(char::is_control) {
        name.to_string()
    } else {
        quoted(name)
    }
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
    // Names the API server would refuse are refused here too: nothing
    // about such a Service can be trusted to mean what it says.
    if let Err(e) = check_dns_1035_label(name) {
        return reject(format!("metadata.name: {e}"));
    }
    if let Err(e) = check_dns_label(namespace) {
        return reject(format!("metadata.namespace: {e}"));
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
            let label = quoted(p.name.as_deref().unwrap_or_default());
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(parse_port(n, &format!("port {label} nodePort"))?),
            };
            ports.push(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: parse_protocol(p.protocol.as_deref())
                    .map_err(|e| format!("port {label}: {e}"))?,
                port: parse_port(p.port, &format!("port {label}"))?,
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
                .map_err(|_| format!("loadBalancerSourceRange {} is not a CIDR", quoted(range)))?;
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
        let external_local =
            externally_reachable && spec.external_traffic_policy.as_deref() == Some("Local");
        // Cloud load balancers probe it only for LoadBalancer Services with
        // `Local` (kube-proxy's NeedsHealthCheck); otherwise the field is
        // ignored, as kube-proxy ignores it.
        let health_check_node_port = match spec.health_check_node_port {
            Some(n) if n != 0 && type_ == "LoadBalancer" && external_local => {
                Some(parse_port(n, "healthCheckNodePort")?)
            }
            _ => None,
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
            Some(text) => match text.trim().parse::<setpoint_dataplane::Scheduler>() {
                Ok(s) => Some(s),
                Err(e) => {
                    warnings.push(Rejection {
                        object: object.clone(),
                        reason: format!(
                            "annotation {SCHEDULER_ANNOTATION}: {}; using the default",
                            // The error quotes the annotation, which is unbounded.
                            setpoint_dataplane::text::clean_text(&e, 256)
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
            external_local,
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
        other => {
            return reject(format!(
                "addressType {} is not IPv4, IPv6 or FQDN",
                quoted(other)
            ));
        }
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
            Err(e) => return reject(e.to_string()),
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
    let object = format!("Node {}", printable(name));
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
            .map_err(|_| reject(format!("podCIDR {} is not a CIDR", quoted(&text))))?;
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
        draining: node.metadata.deletion_timestamp.is_some()
            || spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_name_and_label_syntax() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let sub253 = ["a".repeat(63).as_str(); 4].join(".")[..253].to_string();
        let sub254 = format!("{sub253}a");
        let prefixed = format!("{sub253}/{long63}");
        type Check = fn(&str) -> Result<(), SyntaxError>;
        let table: &[(&str, Check, &str, bool)] = &[
            ("dns label", check_dns_label, "kube-system", true),
            ("dns label", check_dns_label, "0abc", true),
            ("dns label", check_dns_label, &long63, true),
            ("dns label", check_dns_label, &long64, false),
            ("dns label", check_dns_label, "", false),
            ("dns label", check_dns_label, "Abc", false),
            ("dns label", check_dns_label, "a-", false),
            ("dns label", check_dns_label, "a.b", false),
            ("dns label", check_dns_label, "a\nb", false),
            ("1035 label", check_dns_1035_label, "web", true),
            ("1035 label", check_dns_1035_label, "0web", false),
            ("subdomain", check_dns_subdomain, "pod-1.example.com", true),
            ("subdomain", check_dns_subdomain, &sub253, true),
            ("subdomain", check_dns_subdomain, &sub254, false),
            ("subdomain", check_dns_subdomain, "a..b", false),
            ("subdomain", check_dns_subdomain, ".a", false),
            ("subdomain", check_dns_subdomain, "a_b", false),
            ("label key", check_label_key, "app", true),
            ("label key", check_label_key, "App.Name_x-1", true),
            (
                "label key",
                check_label_key,
                "kubernetes.io/service-name",
                true,
            ),
            ("label key", check_label_key, &prefixed, true),
            ("label key", check_label_key, "", false),
            ("label key", check_label_key, "/app", false),
            ("label key", check_label_key, "example.com/", false),
            ("label key", check_label_key, "a/b/c", false),
            ("label key", check_label_key, "Example.com/app", false),
            ("label key", check_label_key, &long64, false),
            ("label key", check_label_key, "app\n", false),
            ("label key", check_label_key, "_app", false),
            ("label value", check_label_value, "", true),
            ("label value", check_label_value, "v1.2_3-x", true),
            ("label value", check_label_value, &long63, true),
            ("label value", check_label_value, &long64, false),
            ("label value", check_label_value, "a\nb", false),
            ("label value", check_label_value, "a b", false),
            ("label value", check_label_value, "-a", false),
            ("label value", check_label_value, "ä", false),
            ("port name", check_port_name, "http", true),
            ("port name", check_port_name, "h2-c", true),
            ("port name", check_port_name, "web-8080abcdefg", true),
            ("port name", check_port_name, "web-8080abcdefgh", false),
            ("port name", check_port_name, "8080", false),
            ("port name", check_port_name, "", false),
            ("port name", check_port_name, "Web", false),
            ("port name", check_port_name, "we--b", false),
            ("port name", check_port_name, "-web", false),
            ("port name", check_port_name, "we\tb", false),
        ];
        for (what, check, text, valid) in table {
            let result = check(text);
            assert_eq!(result.is_ok(), *valid, "{what} {text:?}: {result:?}");
            if let Err(reason) = result.map_err(|e| e.to_string()) {
                assert!(!reason.chars().any(char::is_control), "{reason:?}");
                assert!(reason.len() < 400, "{reason}");
            }
        }
    }

    /// Each syntax error reads as the reason did when it was a string.
    #[test]
    fn syntax_errors_read_as_reasons() {
        let long = "a".repeat(64);
        let labels = [("app".to_string(), "a b".to_string())];
        let table: Vec<(Result<(), SyntaxError>, String)> = vec![
            (
                check_dns_label(&long),
                format!("\"{long}\" is 64 bytes, at most 63 are allowed"),
            ),
            (
                check_dns_label("Abc"),
                "\"Abc\" is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)".into(),
            ),
            (
                check_dns_subdomain("a..b"),
                "\"a..b\" is not a DNS subdomain (dot-separated lower-case letters, digits and '-')".into(),
            ),
            (
                check_dns_1035_label("0web"),
                "\"0web\" does not start with a letter".into(),
            ),
            (
                check_label_key("Example.com/app"),
                "label key \"Example.com/app\": prefix \"Example.com\" is not a DNS subdomain (dot-separated lower-case letters, digits and '-')".into(),
            ),
            (
                check_label_key("_app"),
                "label key \"_app\" is not a qualified name ([prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)".into(),
            ),
            (
                check_labels(labels.iter().map(|(k, v)| (k, v))),
                "label \"app\": label value \"a b\" is not valid (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)".into(),
            ),
            (
                check_port_name("Web"),
                "port name \"Web\" is not an IANA service name (at most 15 lower-case letters, digits and single '-' inside, at least one letter)".into(),
            ),
            (
                parse_protocol(Some("ICMP")).map(|_| ()),
                "protocol \"ICMP\" is not TCP, UDP or SCTP".into(),
            ),
        ];
        for (result, expected) in table {
            assert_eq!(result.map_err(|e| e.to_string()), Err(expected));
        }
    }

    #[test]
    fn a_report_shows_an_odd_name_escaped_and_cut() {
        assert_eq!(printable("web"), "web");
        assert_eq!(printable("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(300);
        let shown = printable(&long);
        assert!(shown.len() < 80 && shown.ends_with('…'), "{shown}");
        let service = mk_service("a\nb");
        let ServiceOutcome::Rejected(r) = service else {
            panic!("{service:?}");
        };
        assert_eq!(r.object, "Service default/\"a\\nb\"");
        assert!(r.reason.contains("metadata.name"), "{}", r.reason);
    }

    #[test]
    fn a_reason_quotes_at_most_a_short_cut_of_what_an_object_holds() {
        let mut svc = core::Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(core::ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![core::ServicePort {
                    name: Some("p\n".repeat(50_000)),
                    protocol: Some("X".repeat(100_000)),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ServiceOutcome::Rejected(r) = service(&svc, "default") else {
            panic!("a protocol of 100,000 bytes is accepted");
        };
        assert!(r.reason.len() < 300, "{} bytes", r.reason.len());
        assert!(!r.reason.chars().any(char::is_control), "{}", r.reason);
        if let Some(spec) = svc.spec.as_mut() {
            spec.ports = None;
            spec.cluster_ip = Some("x".repeat(100_000));
        }
        let ServiceOutcome::Rejected(r) = service(&svc, "default") else {
            panic!("a cluster IP of 100,000 bytes is accepted");
        };
        assert!(r.reason.len() < 300, "{} bytes", r.reason.len());
    }

    fn mk_service(name: &str) -> ServiceOutcome {
        let svc = core::Service {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(core::ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        service(&svc, "default")
    }
}
