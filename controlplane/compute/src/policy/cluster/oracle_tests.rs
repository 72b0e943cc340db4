//! The evaluator's NetworkPolicy tier against the node chains compute
//! already builds (read by `setpoint_dataplane::explain`): with no
//! ClusterNetworkPolicy the oracle must agree with the chains proven on
//! packets, connection by connection. The same harness is where compiled
//! tiers will be held to the oracle.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use serde_json::{Value, json};
use setpoint_dataplane::Protocol;
use setpoint_dataplane::explain::{Origin, Packet, Verdict as Fate, explain};

use super::{Connection, TieredView};
use crate::index::Index;
use crate::layout::ComputeConfig;
use crate::object::ClusterObject;
use crate::policy::{PolicyView, convert_namespace, convert_pod, convert_policy};

const NAMESPACES: usize = 3;
const PODS: usize = 2;

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, ns as u8, pod as u8 + 1))
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("decodes: {e}"))
}

/// Node, namespaces (team a/b) and pods (app x/y, named port `web` TCP 80).
fn cluster(teams: &[usize], apps: &[usize]) -> Vec<ClusterObject> {
    let mut out = vec![ClusterObject::Node(decode(json!({
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.1.0.0/16"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    })))];
    for (n, team) in teams.iter().enumerate() {
        let team = ["a", "b"][*team];
        out.push(ClusterObject::Namespace(decode(json!({
            "metadata": {"name": format!("ns{n}"), "labels": {"team": team}},
        }))));
        for p in 0..PODS {
            let app = ["x", "y"][apps[n * PODS + p]];
            out.push(ClusterObject::Pod(decode(json!({
                "metadata": {"name": format!("pod{p}"), "namespace": format!("ns{n}"),
                             "labels": {"app": app}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                         "ports": [{"name": "web", "containerPort": 80, "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(n, p).to_string()},
            }))));
        }
    }
    out
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["a", "b"])
            .prop_map(|t| json!({"namespaceSelector": {"matchLabels": {"team": t}}})),
        prop::sample::select(vec!["x", "y"])
            .prop_map(|a| json!({"podSelector": {"matchLabels": {"app": a}}})),
        (
            prop::sample::select(vec!["a", "b"]),
            prop::sample::select(vec!["x", "y"])
        )
            .prop_map(
                |(t, a)| json!({"namespaceSelector": {"matchLabels": {"team": t}},
                            "podSelector": {"matchLabels": {"app": a}}})
            ),
        (0..NAMESPACES, 0..PODS)
            .prop_map(|(n, p)| json!({"ipBlock": {"cidr": format!("{}/32", pod_ip(n, p))}})),
        (0..NAMESPACES, 0..PODS).prop_map(|(n, p)| json!({"ipBlock": {
            "cidr": "10.1.0.0/16", "except": [format!("{}/32", pod_ip(n, p))]}})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"protocol": "TCP", "port": 80}),
        json!({"protocol": "TCP", "port": "web"}),
        json!({"protocol": "UDP", "port": 53}),
        json!({"protocol": "TCP", "port": 8000, "endPort": 8080}),
        json!({"protocol": "UDP"}),
    ])
}

fn rule(peer_field: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec(port(), 0..2),
    )
        .prop_map(move |(peers, ports)| {
            let mut rule = serde_json::Map::new();
            if !peers.is_empty() {
                rule.insert(peer_field.into(), Value::Array(peers));
            }
            if !ports.is_empty() {
                rule.insert("ports".into(), Value::Array(ports));
            }
            Value::Object(rule)
        })
}

fn network_policy() -> impl Strategy<Value = (usize, Value)> {
    (
        0..NAMESPACES,
        prop::option::of(prop::sample::select(vec!["x", "y"])),
        prop::sample::select(vec![
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ]),
        prop::collection::vec(rule("from"), 0..3),
        prop::collection::vec(rule("to"), 0..3),
    )
        .prop_map(|(ns, app, types, ingress, egress)| {
            let selector = match app {
                Some(a) => json!({"matchLabels": {"app": a}}),
                None => json!({}),
            };
            (
                ns,
                json!({"podSelector": selector, "policyTypes": types,
                       "ingress": ingress, "egress": egress}),
            )
        })
}

fn policy_view(objects: &[ClusterObject]) -> PolicyView {
    let mut view = PolicyView::default();
    for o in objects {
        match o {
            ClusterObject::Namespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                view.namespaces.insert(name, convert_namespace(ns).0);
            }
            ClusterObject::Pod(p) => {
                if let Ok(Some(pod)) = convert_pod(p) {
                    view.pods
                        .insert((pod.namespace.clone(), pod.name.clone()), pod);
                }
            }
            ClusterObject::NetworkPolicy(p) => {
                if let Ok((policy, _)) = convert_policy(p) {
                    view.policies
                        .insert((policy.namespace.clone(), policy.name.clone()), policy);
                }
            }
            _ => {}
        }
    }
    view
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_network_policy_tier_agrees_with_the_node_chains(
        teams in prop::collection::vec(0usize..2, NAMESPACES),
        apps in prop::collection::vec(0usize..2, NAMESPACES * PODS),
        policies in prop::collection::vec(network_policy(), 0..4),
    ) {
        let mut objects = cluster(&teams, &apps);
        for (i, (ns, spec)) in policies.into_iter().enumerate() {
            objects.push(ClusterObject::NetworkPolicy(decode(json!({
                "metadata": {"name": format!("np{i}"), "namespace": format!("ns{ns}")},
                "spec": spec,
            }))));
        }
        let mut index = Index::new(ComputeConfig::default());
        for o in objects.iter().cloned() {
            index.upsert(o);
        }
        index.commit();
        let Some(state) = index.node_state("node-1") else {
            return Err(TestCaseError::fail("no state for node-1"));
        };
        let view = policy_view(&objects);
        let nodes = Vec::new();
        let tiered = TieredView { view: &view, nodes: &nodes, policies: &[] };
        let mut rows = BTreeMap::new();
        for (sn, sp, dn, dp) in (0..NAMESPACES).flat_map(|sn| (0..PODS).flat_map(move |sp| {
            (0..NAMESPACES).flat_map(move |dn| (0..PODS).map(move |dp| (sn, sp, dn, dp)))
        })) {
            if (sn, sp) == (dn, dp) {
                continue;
            }
            for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Tcp, 8080), (Protocol::Udp, 53)] {
                let connection = Connection {
                    source: pod_ip(sn, sp),
                    destination: pod_ip(dn, dp),
                    protocol,
                    port,
                };
                let oracle = tiered.decide(&connection, &view).allowed;
                let packet = Packet {
                    protocol,
                    src: connection.source,
                    src_port: None,
                    dst: connection.destination,
                    dst_port: port,
                    from: Origin::Pod,
                };
                let e = explain(&state, &packet).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(e.not_evaluated.is_empty(), "{:?}", e.not_evaluated);
                let chains = !matches!(e.verdict, Fate::Drop | Fate::Reject);
                rows.insert(format!("ns{sn}/pod{sp} -> ns{dn}/pod{dp} {protocol:?}/{port}"), (oracle, chains));
            }
        }
        let differ: Vec<_> = rows.iter().filter(|(_, (o, c))| o != c).collect();
        prop_assert!(differ.is_empty(), "oracle vs chains differ: {:?}", differ);
    }
}
