//! NetworkPolicy → per-node ipsets and filter chains, for the pods on that
//! node.
//!
//! ```text
//!  FORWARD, OUTPUT ─▶ SP-POLICY ─┬─ established/related: RETURN
//!                                ├─ -s <pod ip> ─▶ SP-E-<pod>   egress of an isolated local pod
//!                                └─ -d <pod ip> ─▶ SP-I-<pod>   ingress of an isolated local pod
//!  SP-E/SP-I-<pod>: one rule per (policy rule, peer, port) → RETURN when allowed; last rule DROP
//! ```
//!
//! Peers are sets, never rules per address: one `hash:ip` set per distinct
//! pod selector (named after the selector, so its name stays when members
//! change), one `hash:net` set per ipBlock (except-ranges as `nomatch`), and
//! for named ports in egress one `hash:ip,port` set of (peer IP, its port).
//! Chains are bounded by the node's pods, never by the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use setpoint_dataplane::text::clean_text;
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, Jump, Protocol, Rule, SetEntry, SetSpec, SetType, Table,
};
use sha2::{Digest as _, Sha256};

use crate::convert::{
    Rejection, check_dns_label, check_dns_subdomain, check_label_key, check_label_value,
    check_labels, check_port_name, identify, parse_protocol, printable,
};
use setpoint_dataplane::text::quoted;

pub const CHAIN_POLICY: &str = "SP-POLICY";
/// Longest set comment: what iptables allows a rule comment.
const MAX_SET_COMMENT_BYTES: usize = setpoint_dataplane::validate::MAX_RULE_WORD_BYTES;

/// A label selector, validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<Expression>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expression {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// The empty selector, as a missing one reads.
    pub fn everything() -> Self {
        Selector {
            match_labels: BTreeMap::new(),
            expressions: Vec::new(),
        }
    }

    /// The empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    fn canonical(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.match_labels {
            out.push_str(&format!("{k}={v};"));
        }
        let mut exprs: Vec<String> = self
            .expressions
            .iter()
            .map(|e| match e {
                Expression::In(k, v) => format!("{k} in {v:?}"),
                Expression::NotIn(k, v) => format!("{k} notin {v:?}"),
                Expression::Exists(k) => format!("{k} exists"),
                Expression::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        exprs.sort();
        out.push_str(&exprs.join(";"));
        out
    }
}

fn selector(sel: Option<&LabelSelector>) -> Result<Selector, String> {
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

/// Which namespaces a pod peer is drawn from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    /// The policy's own namespace (a bare `podSelector`).
    Own(String),
    Selected(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodPeer {
    pub namespaces: Namespaces,
    pub pods: Selector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods(PodPeer),
    Block { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

/// One ingress or egress rule; empty lists mean "everyone" / "every port".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `None` when the policy does not isolate for ingress.
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: Option<Arc<str>>,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// (name, protocol, port) of every named container port.
    pub named_ports: Vec<(String, Protocol, u16)>,
}

impl Pod {
    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
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
    let protocol = parse_protocol(p.protocol.as_deref())?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            u16::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| format!("port {n} is out of range 1-65535"))?,
        )),
        Some(IntOrString::String(s)) => {
            check_port_name(s)?;
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
                check_port_name(port_name)?;
                let number = u16::try_from(port.container_port)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        format!("containerPort {} is out of range", port.container_port)
                    })?;
                let protocol = parse_protocol(port.protocol.as_deref())?;
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

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8]).to_uppercase()
}

fn family_tag(family: Family) -> &'static str {
    match family {
        Family::Inet => "",
        Family::Inet6 => "6",
    }
}

/// Everything policy compute reads.
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    pub pods: BTreeMap<(String, String), Pod>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub policies: BTreeMap<(String, String), Policy>,
}

impl PolicyView {
    fn namespace_matches(&self, scope: &Namespaces, namespace: &str) -> bool {
        match scope {
            Namespaces::Own(ns) => ns == namespace,
            Namespaces::Selected(sel) => {
                let empty = BTreeMap::new();
                sel.matches(self.namespaces.get(namespace).unwrap_or(&empty))
            }
        }
    }

    /// Pods (not host-network) a pod peer selects.
    fn peer_pods<'a>(&'a self, peer: &'a PodPeer) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.values().filter(move |p| {
            !p.host_network
                && self.namespace_matches(&peer.namespaces, &p.namespace)
                && peer.pods.matches(&p.labels)
        })
    }

    /// Policies selecting a pod, split by direction.
    fn selecting<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .range((pod.namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _)| *ns == pod.namespace)
            .map(|(_, pol)| pol)
            .filter(move |pol| pol.pod_selector.matches(&pod.labels))
    }

    /// Whether a pod is (or, for `old`, was) a member of a peer's sets.
    pub fn peer_has(&self, peer: &PeerUse, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        match peer {
            PeerUse::AllPods => true,
            PeerUse::Pods(p) => {
                self.namespace_matches(&p.namespaces, &pod.namespace) && p.pods.matches(&pod.labels)
            }
        }
    }

    /// Pods by node, for [`PolicyView::node_fragment`].
    pub fn pods_by_node(&self) -> BTreeMap<&str, Vec<&Pod>> {
        let mut out: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for pod in self.pods.values() {
            if let Some(node) = pod.node.as_deref()
                && !pod.host_network
            {
                out.entry(node).or_default().push(pod);
            }
        }
        out
    }

    /// The policy part of one node's state — chains for `local` (the
    /// node's pods) and the sets they use — and the peers those sets draw
    /// from. `members` caches set contents across the nodes of one pass.
    pub fn node_fragment(
        &self,
        local: &[&Pod],
        police_node_traffic: bool,
        members: &MemberCache,
    ) -> (Fragment, Vec<PeerUse>) {
        let mut builder = NodePolicy {
            view: self,
            fragment: Fragment::new(),
            dispatch: BTreeMap::new(),
            members,
            used: Vec::new(),
        };
        for pod in local.iter().copied() {
            if pod.host_network {
                continue;
            }
            let policies: Vec<&Policy> = self.selecting(pod).collect();
            let ingress: Vec<&PolicyRule> = policies
                .iter()
                .filter_map(|p| p.ingress.as_ref())
                .flatten()
                .collect();
            let egress: Vec<&PolicyRule> = policies
                .iter()
                .filter_map(|p| p.egress.as_ref())
                .flatten()
                .collect();
            let isolated_in = policies.iter().any(|p| p.ingress.is_some());
            let isolated_out = policies.iter().any(|p| p.egress.is_some());
            for family in Family::ALL {
                let ips: Vec<IpAddr> = pod
                    .ips
                    .iter()
                    .copied()
                    .filter(|ip| Family::of(ip) == family)
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                if isolated_out {
                    let chain = format!(
                        "SP-E-{}",
                        short_hash(&format!("{}/{}", pod.namespace, pod.name))
                    );
                    let rules = builder.rules(pod, family, &egress, Direction::Egress);
                    builder.pod_chain(family, &chain, rules);
                    for ip in &ips {
                        builder.dispatch(family, 0, Rule::new(["-s", &host(ip), "-j", &chain]));
                    }
                }
                if isolated_in {
                    let chain = format!(
                        "SP-I-{}",
                        short_hash(&format!("{}/{}", pod.namespace, pod.name))
                    );
                    let rules = builder.rules(pod, family, &ingress, Direction::Ingress);
                    builder.pod_chain(family, &chain, rules);
                    for ip in &ips {
                        builder.dispatch(family, 1, Rule::new(["-d", &host(ip), "-j", &chain]));
                    }
                }
            }
        }
        let used = std::mem::take(&mut builder.used);
        (builder.finish(police_node_traffic), used)
    }
}

/// The pods a set draws its members from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerUse {
    Pods(PodPeer),
    /// Every pod (a named port with no peer restriction).
    AllPods,
}

/// Set contents by set name, computed once per pass and shared by every
/// node that has the set.
pub type MemberCache = std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<SetEntry>>>>;

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

struct NodePolicy<'a> {
    view: &'a PolicyView,
    fragment: Fragment,
    /// SP-POLICY rules per family: (stage, rule); egress checks first.
    dispatch: BTreeMap<Family, Vec<(u8, Rule)>>,
    members: &'a MemberCache,
    used: Vec<PeerUse>,
}

impl NodePolicy<'_> {
    fn dispatch(&mut self, family: Family, stage: u8, rule: Rule) {
        self.dispatch.entry(family).or_default().push((stage, rule));
    }

    fn pod_chain(&mut self, family: Family, name: &str, mut rules: Vec<Rule>) {
        rules.push(Rule::new(["-j", "DROP"]));
        self.fragment.put_chain(
            ChainKey {
                family,
                table: Table::Filter,
                name: name.to_string(),
            },
            Arc::new(Chain { rules }),
        );
    }

    /// Set contents from the cache, computed by `compute` on a miss.
    fn cached(&self, name: &str, compute: impl FnOnce() -> Vec<SetEntry>) -> Arc<Vec<SetEntry>> {
        if let Ok(cache) = self.members.lock()
            && let Some(hit) = cache.get(name)
        {
            return hit.clone();
        }
        let entries = Arc::new(compute());
        if let Ok(mut cache) = self.members.lock() {
            cache.insert(name.to_string(), entries.clone());
        }
        entries
    }

    fn ensure_set(
        &mut self,
        name: &str,
        kind: SetType,
        family: Family,
        comment: String,
        entries: &[SetEntry],
    ) {
        if self.fragment.set(name).is_some() {
            return;
        }
        self.fragment.put_set(
            name,
            SetSpec {
                kind,
                family,
                maxelem: 262_144,
                // Comments carry selector text: conversion lets only valid
                // Kubernetes syntax through, and this keeps any text that
                // still arrives one bounded line, never a failed state.
                comment: clean_text(&comment, MAX_SET_COMMENT_BYTES),
            },
        );
        for e in entries {
            self.fragment.add_entry(name, e.clone());
        }
    }

    /// The set of IPs of a pod peer, created on first use.
    fn pod_set(&mut self, peer: &PodPeer, family: Family) -> String {
        let key = match &peer.namespaces {
            Namespaces::Own(ns) => format!("ns={ns}|pods={}", peer.pods.canonical()),
            Namespaces::Selected(sel) => {
                format!("nssel={}|pods={}", sel.canonical(), peer.pods.canonical())
            }
        };
        let name = format!("SP-P{}-{}", family_tag(family), short_hash(&key));
        if self.fragment.set(&name).is_some() {
            return name;
        }
        self.used.push(PeerUse::Pods(peer.clone()));
        let view = self.view;
        let entries = self.cached(&name, || {
            view.peer_pods(peer)
                .flat_map(|p| p.ips.iter().copied())
                .filter(|ip| Family::of(ip) == family)
                .map(SetEntry::Ip)
                .collect()
        });
        self.ensure_set(
            &name,
            SetType::HashIp,
            family,
            format!("pods: {key}"),
            &entries,
        );
        name
    }

    /// (IP, port) of the pods a peer selects that name `port` for `protocol`.
    fn named_port_set(
        &mut self,
        peer: Option<&PodPeer>,
        port: &str,
        protocol: Protocol,
        family: Family,
    ) -> String {
        let scope = match peer {
            None => "all".to_string(),
            Some(peer) => match &peer.namespaces {
                Namespaces::Own(ns) => format!("ns={ns}|pods={}", peer.pods.canonical()),
                Namespaces::Selected(sel) => {
                    format!("nssel={}|pods={}", sel.canonical(), peer.pods.canonical())
                }
            },
        };
        let key = format!("{scope}|port={port}/{}", protocol.as_str());
        let name = format!("SP-N{}-{}", family_tag(family), short_hash(&key));
        if self.fragment.set(&name).is_some() {
            return name;
        }
        self.used.push(match peer {
            None => PeerUse::AllPods,
            Some(peer) => PeerUse::Pods(peer.clone()),
        });
        let view = self.view;
        let entries = self.cached(&name, || {
            let pods: Vec<&Pod> = match peer {
                None => view.pods.values().filter(|p| !p.host_network).collect(),
                Some(peer) => view.peer_pods(peer).collect(),
            };
            pods.into_iter()
                .filter_map(|p| p.named_port(port, protocol).map(|n| (p, n)))
                .flat_map(|(p, n)| {
                    p.ips
                        .iter()
                        .filter(move |ip| Family::of(ip) == family)
                        .map(move |ip| SetEntry::IpPort {
                            ip: *ip,
                            protocol,
                            port: n,
                        })
                })
                .collect()
        });
        self.ensure_set(
            &name,
            SetType::HashIpPort,
            family,
            format!("named port: {key}"),
            &entries,
        );
        name
    }

    /// The set of an ipBlock; `None` when the block is of the other family.
    fn block_set(&mut self, cidr: &IpNet, except: &[IpNet], family: Family) -> Option<String> {
        if Family::of_net(cidr) != family {
            return None;
        }
        let key = format!("{cidr} except {except:?}");
        let name = format!("SP-B{}-{}", family_tag(family), short_hash(&key));
        // hash:net holds prefixes of length 1 and up: /0 is two halves.
        let mut entries: Vec<SetEntry> = if cidr.prefix_len() == 0 {
            match cidr.subnets(1) {
                Ok(halves) => halves
                    .map(|net| SetEntry::Net {
                        net,
                        nomatch: false,
                    })
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![SetEntry::Net {
                net: *cidr,
                nomatch: false,
            }]
        };
        // An except that is one of the halves replaces it (one entry per net).
        entries.retain(|e| !matches!(e, SetEntry::Net { net, .. } if except.contains(net)));
        entries.extend(except.iter().map(|net| SetEntry::Net {
            net: *net,
            nomatch: true,
        }));
        self.ensure_set(
            &name,
            SetType::HashNet,
            family,
            format!("ipBlock {key}"),
            &entries,
        );
        Some(name)
    }

    /// RETURN rules allowing what `rules` allow for `pod` in `direction`.
    fn rules(
        &mut self,
        pod: &Pod,
        family: Family,
        rules: &[&PolicyRule],
        direction: Direction,
    ) -> Vec<Rule> {
        let dir = match direction {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        };
        let mut out = Vec::new();
        for rule in rules {
            // Peer matches: `None` is "any peer".
            let mut peers: Vec<(Option<String>, Option<&PodPeer>)> = Vec::new();
            if rule.peers.is_empty() {
                peers.push((None, None));
            }
            for peer in &rule.peers {
                match peer {
                    Peer::Pods(p) => {
                        let set = self.pod_set(p, family);
                        peers.push((Some(set), Some(p)));
                    }
                    Peer::Block { cidr, except } => {
                        if let Some(set) = self.block_set(cidr, except, family) {
                            peers.push((Some(set), None));
                        }
                    }
                }
            }
            let any_port = [PortSpec {
                protocol: Protocol::Tcp,
                port: None,
                end_port: None,
            }];
            let ports: &[PortSpec] = if rule.ports.is_empty() {
                &any_port
            } else {
                &rule.ports
            };
            for (set, pod_peer) in &peers {
                for port in ports {
                    let mut args: Vec<String> = Vec::new();
                    let peer_match = |args: &mut Vec<String>| {
                        if let Some(set) = set {
                            args.extend(["-m", "set", "--match-set", set, dir].map(String::from));
                        }
                    };
                    if rule.ports.is_empty() {
                        peer_match(&mut args);
                    } else {
                        match &port.port {
                            None => {
                                peer_match(&mut args);
                                args.extend(["-p", port.protocol.as_str()].map(String::from));
                            }
                            Some(PortRef::Number(n)) => {
                                peer_match(&mut args);
                                let range = match port.end_port {
                                    Some(end) if end != *n => format!("{n}:{end}"),
                                    _ => n.to_string(),
                                };
                                args.extend(
                                    ["-p", port.protocol.as_str(), "--dport", &range]
                                        .map(String::from),
                                );
                            }
                            Some(PortRef::Name(name)) => match direction {
                                Direction::Ingress => {
                                    // The name is the local pod's own port.
                                    let Some(n) = pod.named_port(name, port.protocol) else {
                                        continue;
                                    };
                                    peer_match(&mut args);
                                    args.extend(
                                        ["-p", port.protocol.as_str(), "--dport", &n.to_string()]
                                            .map(String::from),
                                    );
                                }
                                Direction::Egress => {
                                    // The name is each destination pod's port: a
                                    // set of (IP, port) replaces both matches.
                                    if set.is_some() && pod_peer.is_none() {
                                        continue; // an ipBlock has no named ports
                                    }
                                    let named =
                                        self.named_port_set(*pod_peer, name, port.protocol, family);
                                    args.extend(
                                        ["-m", "set", "--match-set", &named, "dst,dst"]
                                            .map(String::from),
                                    );
                                }
                            },
                        }
                    }
                    args.extend(["-j", "RETURN"].map(String::from));
                    out.push(Rule(args));
                }
            }
        }
        out
    }

    fn finish(mut self, police_node_traffic: bool) -> Fragment {
        for (family, mut rules) in std::mem::take(&mut self.dispatch) {
            rules.sort_by_key(|(stage, _)| *stage);
            let mut chain = vec![Rule::new([
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "RETURN",
            ])];
            if !police_node_traffic {
                // Kubernetes: traffic from a pod's own node is always allowed
                // (kubelet probes).
                chain.push(Rule::new([
                    "-m",
                    "addrtype",
                    "--src-type",
                    "LOCAL",
                    "-j",
                    "RETURN",
                ]));
            }
            chain.extend(rules.into_iter().map(|(_, r)| r));
            self.fragment.put_chain(
                ChainKey {
                    family,
                    table: Table::Filter,
                    name: CHAIN_POLICY.to_string(),
                },
                Arc::new(Chain { rules: chain }),
            );
            for from in ["FORWARD", "OUTPUT"] {
                self.fragment.add_jump(Jump {
                    family,
                    table: Table::Filter,
                    from: from.to_string(),
                    position: 0,
                    rule: Rule::new([
                        "-m",
                        "comment",
                        "--comment",
                        "setpoint network policy",
                        "-j",
                        CHAIN_POLICY,
                    ]),
                });
            }
        }
        self.fragment
    }
}
