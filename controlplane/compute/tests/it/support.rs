//! Fixture builders and the one `check` helper every table test goes through.
//!
//! A node's state is rendered as sorted lines, one per atom a test can
//! care about (set definitions, chains and jumps come from the
//! configuration alone, the node's NodePort addresses from the Node alone,
//! and are left out):
//!
//! ```text
//! vs tcp 10.96.0.10:53 rr -> 10.244.1.5:53 10.244.2.5:53
//! vs tcp 10.96.0.20:80 wrr persist 1800 -> none
//! set SP-CLUSTER-IP 10.96.0.10,tcp:53
//! addr 10.96.0.10
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
pub use setpoint_compute::{ClusterObject, ComputeConfig, Index, Kind, ObjectKey};
use setpoint_dataplane::{Forward, NodeDataplane, template};

/// `vec![ClusterObject::from(a), …]` for builders and objects alike.
#[macro_export]
macro_rules! objs {
    ($($x:expr),* $(,)?) => {
        vec![$(setpoint_compute::ClusterObject::from($x)),*]
    };
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_string),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

// --- Node ---

#[derive(Clone)]
pub struct NodeB(pub core::Node);

/// A Node with InternalIP addresses `ips`; `zone` "" means no zone label.
pub fn mk_node(name: &str, zone: &str, ips: &[&str]) -> NodeB {
    let mut node = core::Node {
        metadata: meta(None, name),
        spec: Some(core::NodeSpec::default()),
        status: Some(core::NodeStatus {
            addresses: Some(
                ips.iter()
                    .map(|ip| core::NodeAddress {
                        address: ip.to_string(),
                        type_: "InternalIP".into(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    };
    if !zone.is_empty() {
        node.metadata.labels = Some(BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            zone.to_string(),
        )]));
    }
    NodeB(node)
}

impl NodeB {
    pub fn pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        if let Some(spec) = self.0.spec.as_mut() {
            spec.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
        }
        self
    }

    /// A taint with `key` (effect NoSchedule).
    pub fn taint(mut self, key: &str) -> Self {
        if let Some(spec) = self.0.spec.as_mut() {
            spec.taints.get_or_insert_with(Vec::new).push(core::Taint {
                key: key.to_string(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        self
    }

    /// `metadata.deletionTimestamp` set: the Node is being deleted.
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        self
    }

    pub fn address(mut self, type_: &str, ip: &str) -> Self {
        if let Some(status) = self.0.status.as_mut() {
            status
                .addresses
                .get_or_insert_with(Vec::new)
                .push(core::NodeAddress {
                    address: ip.to_string(),
                    type_: type_.to_string(),
                });
        }
        self
    }
}

impl From<NodeB> for ClusterObject {
    fn from(b: NodeB) -> Self {
        ClusterObject::Node(b.0)
    }
}

// --- Service ---

#[derive(Clone)]
pub struct SvcB(pub core::Service);

/// A ClusterIP Service without cluster IP or ports yet.
pub fn mk_service(ns: &str, name: &str) -> SvcB {
    SvcB(core::Service {
        metadata: meta(Some(ns), name),
        spec: Some(core::ServiceSpec::default()),
        status: None,
    })
}

impl SvcB {
    fn spec(&mut self) -> &mut core::ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.to_string());
        self
    }

    /// Sets `clusterIP` to the first and `clusterIPs` to all of `ips`.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|s| s.to_string());
        spec.cluster_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn cluster_ip(self, ip: &str) -> Self {
        self.cluster_ips(&[ip])
    }

    /// Adds a port; `proto` "" leaves the protocol unset (TCP).
    pub fn port(mut self, name: &str, proto: &str, port: i32) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(core::ServicePort {
                name: (!name.is_empty()).then(|| name.to_string()),
                protocol: (!proto.is_empty()).then(|| proto.to_string()),
                port,
                ..Default::default()
            });
        self
    }

    /// Sets the nodePort of the last port added.
    pub fn node_port(mut self, node_port: i32) -> Self {
        if let Some(p) = self.spec().ports.as_mut().and_then(|p| p.last_mut()) {
            p.node_port = Some(node_port);
        }
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        self
    }

    fn ingress(mut self, ip: &str, mode: Option<&str>) -> Self {
        self.0
            .status
            .get_or_insert_with(Default::default)
            .load_balancer
            .get_or_insert_with(Default::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(core::LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: mode.map(str::to_string),
                ..Default::default()
            });
        self
    }

    /// A load balancer ingress IP with `ipMode` unset (VIP).
    pub fn lb_ingress(self, ip: &str) -> Self {
        self.ingress(ip, None)
    }

    pub fn lb_ingress_mode(self, ip: &str, mode: &str) -> Self {
        self.ingress(ip, Some(mode))
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn etp_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self
    }

    pub fn itp_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` when given.
    pub fn affinity(mut self, timeout: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout.map(|t| core::SessionAffinityConfig {
            client_ip: Some(core::ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    pub fn scheduler(self, name: &str) -> Self {
        self.annotation("setpoint.io/ipvs-scheduler", name)
    }
}

impl From<SvcB> for ClusterObject {
    fn from(b: SvcB) -> Self {
        ClusterObject::Service(b.0)
    }
}

// --- EndpointSlice ---

#[derive(Clone)]
pub struct SliceB(pub discovery::EndpointSlice);

/// An EndpointSlice of Service `ns/svc` named `<svc>-<family>`; `family`
/// is the addressType (`IPv4`, `IPv6`, `FQDN`).
pub fn mk_slice(ns: &str, svc: &str, family: &str) -> SliceB {
    let mut metadata = meta(Some(ns), &format!("{svc}-{}", family.to_lowercase()));
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        svc.to_string(),
    )]));
    SliceB(discovery::EndpointSlice {
        metadata,
        address_type: family.to_string(),
        endpoints: Vec::new(),
        ports: None,
    })
}

impl SliceB {
    pub fn name(mut self, name: &str) -> Self {
        self.0.metadata.name = Some(name.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a port; `proto` "" leaves the protocol unset (TCP).
    pub fn port(mut self, name: &str, proto: &str, port: i32) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(discovery::EndpointPort {
                name: (!name.is_empty()).then(|| name.to_string()),
                protocol: (!proto.is_empty()).then(|| proto.to_string()),
                port: Some(port),
                ..Default::default()
            });
        self
    }

    pub fn ep(mut self, ep: EpB) -> Self {
        self.0.endpoints.push(ep.0);
        self
    }

    /// One ready endpoint per `(address, node)`.
    pub fn eps(self, eps: &[(&str, &str)]) -> Self {
        eps.iter()
            .fold(self, |s, (ip, node)| s.ep(mk_ep(ip).node(node)))
    }
}

impl From<SliceB> for ClusterObject {
    fn from(b: SliceB) -> Self {
        ClusterObject::EndpointSlice(b.0)
    }
}

#[derive(Clone)]
pub struct EpB(pub discovery::Endpoint);

/// A ready, serving, not terminating endpoint.
pub fn mk_ep(address: &str) -> EpB {
    EpB(discovery::Endpoint {
        addresses: vec![address.to_string()],
        conditions: Some(discovery::EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    })
}

impl EpB {
    fn conditions(&mut self) -> &mut discovery::EndpointConditions {
        self.0.conditions.get_or_insert_with(Default::default)
    }

    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.to_string());
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.0.zone = Some(zone.to_string());
        self
    }

    pub fn ready(mut self, v: bool) -> Self {
        self.conditions().ready = Some(v);
        self
    }

    pub fn serving(mut self, v: bool) -> Self {
        self.conditions().serving = Some(v);
        self
    }

    pub fn terminating(mut self, v: bool) -> Self {
        self.conditions().terminating = Some(v);
        self
    }

    /// Not ready and not serving: a pod that fails its readiness probe.
    pub fn not_ready(self) -> Self {
        self.ready(false).serving(false)
    }

    /// Terminating but still serving, as during graceful shutdown.
    pub fn draining(self) -> Self {
        self.ready(false).serving(true).terminating(true)
    }

    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        self.0.hints.get_or_insert_with(Default::default).for_zones = Some(
            zones
                .iter()
                .map(|z| discovery::ForZone {
                    name: z.to_string(),
                })
                .collect(),
        );
        self
    }

    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        self.0.hints.get_or_insert_with(Default::default).for_nodes = Some(
            nodes
                .iter()
                .map(|n| discovery::ForNode {
                    name: n.to_string(),
                })
                .collect(),
        );
        self
    }
}

// --- keys ---

pub fn svc_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::Service,
        namespace: ns.into(),
        name: name.into(),
    }
}

pub fn slice_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::EndpointSlice,
        namespace: ns.into(),
        name: name.into(),
    }
}

pub fn node_key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::Node,
        namespace: String::new(),
        name: name.into(),
    }
}

// --- rendering and checking ---

/// The state's entries, virtual servers and addresses as sorted lines, as
/// the node's kernel would hold them: NodePort templates expanded over the
/// node's addresses (`vs tcp 0.0.0.0:…` lines never appear).
pub fn render(state: &NodeDataplane) -> Vec<String> {
    let flat = template::expand(&state.flatten())
        .unwrap_or_else(|collision| panic!("state does not expand: {collision}"));
    let mut lines = Vec::new();
    for (key, vs) in flat.virtual_servers() {
        let mut line = format!("vs {} {key} {}", key.protocol, vs.scheduler);
        if let Some(t) = vs.persistence_timeout {
            line.push_str(&format!(" persist {t}"));
        }
        line.push_str(" ->");
        if vs.real_servers.is_empty() {
            line.push_str(" none");
        }
        for rs in &vs.real_servers {
            line.push_str(&format!(
                " {}",
                std::net::SocketAddr::new(rs.address, rs.port)
            ));
            if rs.weight != 1 || rs.forward != Forward::Masq {
                line.push_str(&format!("(w{},{:?})", rs.weight, rs.forward));
            }
        }
        lines.push(line);
    }
    let node_port_sets = setpoint_dataplane::Family::ALL.map(template::node_port_address_set);
    for (set, entries) in flat.all_entries() {
        // The node's own addresses, from the Node alone, like the sets and
        // chains that come from the configuration alone.
        if node_port_sets.contains(&set.as_str()) {
            continue;
        }
        for entry in entries {
            lines.push(format!("set {set} {entry}"));
        }
    }
    for addr in flat.addresses() {
        lines.push(format!("addr {addr}"));
    }
    lines.sort();
    lines
}

/// Lines starting with one of the `|`-separated prefixes of `filter`
/// (all lines for an empty filter).
pub fn filtered(lines: Vec<String>, filter: &str) -> Vec<String> {
    if filter.is_empty() {
        return lines;
    }
    let prefixes: Vec<&str> = filter.split('|').collect();
    lines
        .into_iter()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect()
}

/// The node's state, asserted valid.
pub fn state_of(index: &Index, node: &str) -> NodeDataplane {
    let state = index
        .node_state(node)
        .unwrap_or_else(|| panic!("no state for node {node}"));
    let problems = state.validate();
    assert!(
        problems.is_empty(),
        "state of {node} is invalid: {problems:#?}"
    );
    state
}

/// A fresh index holding `objects`, committed.
pub fn index_of(objects: impl IntoIterator<Item = ClusterObject>) -> Index {
    index_with(ComputeConfig::default(), objects)
}

pub fn index_with(
    config: ComputeConfig,
    objects: impl IntoIterator<Item = ClusterObject>,
) -> Index {
    let mut index = Index::new(config);
    for o in objects {
        index.upsert(o);
    }
    index.commit();
    index
}

/// Asserts the lines of `node`'s state that match `filter` are `expected`
/// (in any order) and returns the index for further checks.
pub fn check(objects: Vec<ClusterObject>, node: &str, filter: &str, expected: &[&str]) -> Index {
    check_with(ComputeConfig::default(), objects, node, filter, expected)
}

pub fn check_with(
    config: ComputeConfig,
    objects: Vec<ClusterObject>,
    node: &str,
    filter: &str,
    expected: &[&str],
) -> Index {
    let index = index_with(config, objects);
    expect_lines(&index, node, filter, expected);
    index
}

/// The comparison behind [`check`], for an index a test built itself.
#[track_caller]
pub fn expect_lines(index: &Index, node: &str, filter: &str, expected: &[&str]) {
    let actual = filtered(render(&state_of(index, node)), filter);
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    if actual != want {
        let missing: Vec<&String> = want.iter().filter(|l| !actual.contains(l)).collect();
        let extra: Vec<&String> = actual.iter().filter(|l| !want.contains(l)).collect();
        panic!(
            "node {node}, filter {filter:?}\n--- expected\n{}\n--- actual\n{}\n--- missing\n{}\n--- unexpected\n{}\n",
            want.join("\n"),
            actual.join("\n"),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
}

/// Problems as `object: reason` strings, sorted.
pub fn problems(index: &Index) -> Vec<String> {
    let mut out: Vec<String> = index
        .problems()
        .map(|p| format!("{}{}", if p.skipped { "skipped " } else { "" }, p.rejection))
        .collect();
    out.sort();
    out
}

/// Asserts every node of `incremental` has exactly the state (digest and
/// equality) a from-scratch index over `objects` (and the same
/// configuration) computes, and the same set of nodes.
#[track_caller]
pub fn assert_same_as_fresh(incremental: &Index, objects: impl IntoIterator<Item = ClusterObject>) {
    let fresh = index_with(incremental.config().clone(), objects);
    let names = |i: &Index| i.node_names().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(incremental), names(&fresh), "node sets differ");
    for name in names(&fresh) {
        let a = state_of(incremental, &name);
        let b = state_of(&fresh, &name);
        if a.digest() != b.digest() || a != b {
            let (ra, rb) = (render(&a), render(&b));
            let missing: Vec<&String> = rb.iter().filter(|l| !ra.contains(l)).collect();
            let extra: Vec<&String> = ra.iter().filter(|l| !rb.contains(l)).collect();
            panic!(
                "node {name}: incremental state differs from a fresh index\n--- missing from incremental\n{missing:#?}\n--- only in incremental\n{extra:#?}"
            );
        }
    }
}

// --- the usual cluster ---

/// node-a, node-b (zone-1) and node-c (zone-2), dual-stack.
pub fn nodes() -> Vec<ClusterObject> {
    crate::objs![
        mk_node("node-a", "zone-1", &["192.168.10.11", "fd00:10::11"]),
        mk_node("node-b", "zone-1", &["192.168.10.12", "fd00:10::12"]),
        mk_node("node-c", "zone-2", &["192.168.10.13", "fd00:10::13"]),
    ]
}

/// The usual nodes followed by `objects`.
pub fn cluster(objects: Vec<ClusterObject>) -> Vec<ClusterObject> {
    let mut all = nodes();
    all.extend(objects);
    all
}

/// What each node holds beyond the shared parts' contents: every part's
/// name, and the digests of its own parts. A node whose view changes in
/// a commit must be among the commit's `recomposed_nodes`.
pub fn private_view(
    index: &Index,
) -> BTreeMap<String, Vec<(String, Option<setpoint_dataplane::Digest>)>> {
    let shared: BTreeMap<String, std::sync::Arc<setpoint_dataplane::Fragment>> =
        index.shared_parts().into_iter().collect();
    index
        .node_names()
        .map(|name| {
            let parts = state_of(index, name)
                .parts()
                .map(|(part, fragment)| match shared.get(part) {
                    Some(s) => {
                        assert!(
                            std::sync::Arc::ptr_eq(s, fragment),
                            "node {name}'s part {part} is not the shared one"
                        );
                        (part.clone(), None)
                    }
                    None => (part.clone(), Some(fragment.digest())),
                })
                .collect();
            (name.to_string(), parts)
        })
        .collect()
}
