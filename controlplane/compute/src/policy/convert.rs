//! NetworkPolicies, pods and namespaces → the policy model. What cannot
//! be read never opens access: it is left out, and a rule left with
//! nothing is left out whole, so the policy allows less.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use setpoint_dataplane::text::quoted;
use setpoint_dataplane::{Family, Protocol};

use super::{
    Expression, Namespaces, Peer, Pod, PodPeer, Policy, PolicyRule, PortRef, PortSpec, Selector,
};
use crate::convert::{
    Rejection, check_dns_label, check_dns_subdomain, check_label_key, check_label_value,
    check_labels, check_port_name, identify, parse_protocol, printable,
};

pub(super) fn selector(sel: Option<&LabelSelector>) -> Result<Selector, String> {
    let Some(sel) = sel else {
        return Ok(Selector::everything());
    };
    let match_labels = sel.match_labels.clone().unwrap_or_default();
    check_labels(&match_labels).map_err(|e| format!("matchLabels: {e}"))?;
    let mut expressions = Vec::new();
    for e in sel.match_expressions.iter().flatten() {
        check_label_key(&e.key).map_err(|err| format!("matchExpressions: {err}"))?;
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        for value in &values {
            check_label_value(value)
                .map_err(|err| format!("matchExpressions on {:?}: {err}", e.key))?;
        }
        expressions.push(match e.operator.as_str() {
            "In" if !values.is_empty() => Expression::In(e.key.clone(), values),
            "NotIn" if !values.is_empty() => Expression::NotIn(e.key.clone(), values),
            "Exists" if values.is_empty() => Expression::Exists(e.key.clone()),
            "DoesNotExist" if values.is_empty() => Expression::DoesNotExist(e.key.clone()),
            op @ ("In" | "NotIn") => {
                return Err(format!("matchExpressions {op} on {:?} needs values", e.key));
            }
            op @ ("Exists" | "DoesNotExist") => {
                return Err(format!(
                    "matchExpressions {op} on {:?} takes no values",
                    e.key
                ));
            }
            other => {
                return Err(format!(
                    "matchExpressions operator {} is not In, NotIn, Exists or DoesNotExist",
                    quoted(other)
                ));
            }
        });
    }
    Ok(Selector {
        match_labels,
        expressions,
    })
}

/// A NetworkPolicy as compute uses it, with what was left out of it.
///
/// A policy that cannot be understood never opens access (fails closed):
/// a peer or port that is not valid is left out of its rule, and a rule
/// left with no peer or no port (which would read as "everyone" or "every
/// port") is left out whole, so the policy still isolates its pods and
/// allows less. A policy whose `podSelector` or `spec` cannot be read
/// isolates every pod of its namespace in both directions and allows
/// nothing; unknown `policyTypes` isolate both directions. Dropping such a
/// policy instead would un-isolate its pods. Only a policy without a name
/// is rejected outright.
pub fn convert_policy(
    p: &networking::NetworkPolicy,
) -> Result<(Policy, Vec<Rejection>), Rejection> {
    let (namespace, name, object) = identify(&p.metadata, "NetworkPolicy", "default");
    if name.is_empty() {
        return Err(Rejection {
            object,
            reason: "metadata.name is missing".into(),
        });
    }
    let mut reader = PolicyReader {
        namespace,
        object: &object,
        warnings: Vec::new(),
    };
    if let Err(e) = check_dns_subdomain(name) {
        reader.warn(format!("metadata.name: {e}"));
    }
    if let Err(e) = check_dns_label(namespace) {
        reader.warn(format!("metadata.namespace: {e}"));
    }
    let deny_all = |mut reader: PolicyReader, why: String| {
        reader.warn(format!(
            "{why}; the policy isolates every pod of namespace {} for ingress and egress and allows nothing",
            quoted(namespace)
        ));
        let policy = Policy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod_selector: Selector::everything(),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        };
        Ok((policy, reader.warnings))
    };
    let Some(spec) = &p.spec else {
        return deny_all(reader, "spec is missing".into());
    };
    let pod_selector = match selector(spec.pod_selector.as_ref()) {
        Ok(s) => s,
        Err(e) => return deny_all(reader, format!("podSelector: {e}")),
    };
    let (mut ingress_on, mut egress_on) = match spec.policy_types.as_deref() {
        // The API server defaults an empty list as it does a missing one.
        None | Some([]) => (true, spec.egress.is_some()),
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
    };
    if let Some(other) = spec
        .policy_types
        .iter()
        .flatten()
        .find(|t| !matches!(t.as_str(), "Ingress" | "Egress"))
    {
        reader.warn(format!(
            "policyTypes {} is not Ingress or Egress; the policy isolates both directions",
            quoted(other)
        ));
        (ingress_on, egress_on) = (true, true);
    }
    let ingress = ingress_on.then(|| {
        let rules = spec.ingress.iter().flatten().enumerate();
        rules
            .filter_map(|(i, r)| reader.rule(r.from.as_ref(), r.ports.as_ref(), "ingress", i))
            .collect()
    });
    let egress = egress_on.then(|| {
        let rules = spec.egress.iter().flatten().enumerate();
        rules
            .filter_map(|(i, r)| reader.rule(r.to.as_ref(), r.ports.as_ref(), "egress", i))
            .collect()
    });
    let policy = Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector,
        ingress,
        egress,
    };
    Ok((policy, reader.warnings))
}

/// Reads the rules of one NetworkPolicy, noting what it leaves out.
struct PolicyReader<'a> {
    namespace: &'a str,
    object: &'a str,
    warnings: Vec<Rejection>,
}

impl PolicyReader<'_> {
    fn warn(&mut self, reason: String) {
        self.warnings.push(Rejection {
            object: self.object.to_string(),
            reason,
        });
    }

    /// One rule of either direction, without its invalid peers and ports;
    /// `None` when nothing of a non-empty list is left (the rule would
    /// allow everyone or every port).
    fn rule(
        &mut self,
        peers: Option<&Vec<networking::NetworkPolicyPeer>>,
        ports: Option<&Vec<networking::NetworkPolicyPort>>,
        direction: &str,
        index: usize,
    ) -> Option<PolicyRule> {
        let place = format!("{direction} rule {index}");
        let listed_peers = peers.map_or(0, Vec::len);
        let mut kept_peers = Vec::new();
        for (i, p) in peers.into_iter().flatten().enumerate() {
            match peer(p, self.namespace) {
                Ok(peer) => kept_peers.push(peer),
                Err(e) => self.warn(format!("{place}, peer {i}: {e}; the peer is left out")),
            }
        }
        let listed_ports = ports.map_or(0, Vec::len);
        let mut kept_ports = Vec::new();
        for (i, p) in ports.into_iter().flatten().enumerate() {
            match port(p) {
                Ok(port) => kept_ports.push(port),
                Err(e) => self.warn(format!("{place}, port {i}: {e}; the port is left out")),
            }
        }
        if (listed_peers > 0 && kept_peers.is_empty())
            || (listed_ports > 0 && kept_ports.is_empty())
        {
            self.warn(format!(
                "{place} allows nothing: none of its peers or none of its ports is valid"
            ));
            return None;
        }
        Some(PolicyRule {
            peers: kept_peers,
            ports: kept_ports,
        })
    }
}

fn peer(p: &networking::NetworkPolicyPeer, own_namespace: &str) -> Result<Peer, String> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with podSelector or namespaceSelector".into());
        }
        let cidr = block
            .cidr
            .parse::<IpNet>()
            .map_err(|_| format!("ipBlock cidr {} is not a CIDR", quoted(&block.cidr)))?
            .trunc();
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            let net = e
                .parse::<IpNet>()
                .map_err(|_| format!("ipBlock except {} is not a CIDR", quoted(e)))?
                .trunc();
            // As the API server requires: a strict subset (an except of
            // the whole cidr would leave a /0 `nomatch` entry).
            if Family::of_net(&net) != Family::of_net(&cidr)
                || !cidr.contains(&net)
                || net.prefix_len() <= cidr.prefix_len()
            {
                return Err(format!(
                    "ipBlock except {e} is not a strict subset of {cidr}"
                ));
            }
            except.push(net);
        }
        except.sort();
        except.dedup();
        return Ok(Peer::Block { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err("a peer needs podSelector, namespaceSelector or ipBlock".into());
    }
    let pods = selector(p.pod_selector.as_ref()).map_err(|e| format!("podSelector: {e}"))?;
    let namespaces = match &p.namespace_selector {
        None => Namespaces::Own(own_namespace.to_string()),
        Some(ns) => {
            Namespaces::Selected(selector(Some(ns)).map_err(|e| format!("namespaceSelector: {e}"))?)
        }
    };
    Ok(Peer::Pods(PodPeer { namespaces, pods }))
}

fn port(p: &networking::NetworkPolicyPort) -> Result<PortSpec, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let protocol = parse_protocol(p.protocol.as_deref()).map_err(|e| e.to_string())?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            u16::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| format!("port {n} is out of range 1-65535"))?,
        )),
        Some(IntOrString::String(s)) => {
            check_port_name(s).map_err(|e| e.to_string())?;
            Some(PortRef::Name(s.clone()))
        }
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(end), Some(PortRef::Number(start))) => Some(
            u16::try_from(end)
                .ok()
                .filter(|e| e >= start)
                .ok_or_else(|| format!("endPort {end} is below port {start} or out of range"))?,
        ),
        (Some(_), _) => return Err("endPort needs a numeric port".to_string()),
    };
    Ok(PortSpec {
        protocol,
        port,
        end_port,
    })
}

/// A pod as policy needs it, or `None` for a pod that neither is policed
/// nor can be a peer (no IP yet, finished). What was left out of it is
/// dropped; [`convert_pod_reporting`] lists it.
pub fn convert_pod(p: &core::Pod) -> Result<Option<Pod>, Rejection> {
    convert_pod_reporting(p).map(|(pod, _)| pod)
}

/// [`convert_pod`] with what was left out of the pod, or does not follow
/// Kubernetes' syntax.
///
/// A pod is policed whenever it has a valid IP, so nothing wrong with it
/// un-isolates it: an IP that does not parse and a named port that is
/// not valid are left out (no valid policy can name such a port, so no
/// rule allows by it), and labels that do not follow Kubernetes' syntax
/// are kept as written. Labels are only compared with selectors, which
/// hold valid text only, and never written into a state; dropping one
/// instead would let a `DoesNotExist` selector match the pod as a peer.
pub fn convert_pod_reporting(p: &core::Pod) -> Result<(Option<Pod>, Vec<Rejection>), Rejection> {
    let (namespace, name, object) = identify(&p.metadata, "Pod", "default");
    let mut warnings = Vec::new();
    let mut warn = |reason: String| {
        warnings.push(Rejection {
            object: object.clone(),
            reason,
        })
    };
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok((None, Vec::new()));
    }
    if let Err(e) = check_dns_subdomain(name) {
        warn(format!("metadata.name: {e}"));
    }
    if let Err(e) = check_dns_label(namespace) {
        warn(format!("metadata.namespace: {e}"));
    }
    let labels = p.metadata.labels.clone().unwrap_or_default();
    if let Err(e) = check_labels(&labels) {
        warn(format!(
            "metadata.labels: {e}; no valid selector matches that value"
        ));
    }
    let mut ips = Vec::new();
    let listed: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list.iter().map(|i| i.ip.as_str()).collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    for text in listed {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => warn(format!(
                "pod IP {} is not an IP address; left out",
                quoted(text)
            )),
        }
    }
    if ips.is_empty() {
        return Ok((None, warnings));
    }
    let spec = p.spec.as_ref();
    let mut named_ports = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for port in c.ports.iter().flatten() {
            let Some(port_name) = &port.name else {
                continue;
            };
            let named = (|| -> Result<(String, Protocol, u16), String> {
                check_port_name(port_name).map_err(|e| e.to_string())?;
                let number = u16::try_from(port.container_port)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        format!("containerPort {} is out of range", port.container_port)
                    })?;
                let protocol =
                    parse_protocol(port.protocol.as_deref()).map_err(|e| e.to_string())?;
                Ok((port_name.clone(), protocol, number))
            })();
            match named {
                Ok(named) => named_ports.push(named),
                Err(e) => warn(format!(
                    "container {}: named port left out: {e}",
                    quoted(&c.name)
                )),
            }
        }
    }
    let pod = Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: spec.and_then(|s| s.node_name.as_deref()).map(Arc::from),
        ips,
        labels,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        named_ports,
    };
    Ok((Some(pod), warnings))
}

/// A namespace's labels, as policy matches them, with what does not follow
/// Kubernetes' syntax (kept as written, as a pod's labels are).
pub fn convert_namespace(ns: &core::Namespace) -> (BTreeMap<String, String>, Vec<Rejection>) {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let object = format!("Namespace {}", printable(name));
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let checks = [
        check_dns_label(name).map_err(|e| format!("metadata.name: {e}")),
        check_labels(&labels)
            .map_err(|e| format!("metadata.labels: {e}; no valid selector matches that value")),
    ];
    for reason in checks.into_iter().filter_map(Result::err) {
        warnings.push(Rejection {
            object: object.clone(),
            reason,
        });
    }
    (labels, warnings)
}
