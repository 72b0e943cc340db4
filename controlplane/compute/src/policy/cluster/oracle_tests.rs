//! The evaluator against the node chains compute builds (read by
//! `setpoint_dataplane::explain`), connection by connection over a little
//! dual-stack cluster: with NetworkPolicies only, the evaluator's
//! NetworkPolicy tier must agree with the chains proven on packets; with
//! random ClusterNetworkPolicies of both tiers beside them, the compiled
//! tiers must give the evaluator's verdict, and the walk must match the
//! rules (by their comments) the evaluator says passed and decided.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use serde_json::{Value, json};
use setpoint_dataplane::Protocol;
use setpoint_dataplane::explain::{Origin, Packet, Verdict as Fate, explain};

use super::{
    ClusterPolicy, Connection, DecidedBy, Decision, NodePeer, TieredView, convert_cluster_policy,
};
use crate::index::Index;
use crate::layout::ComputeConfig;
use crate::object::ClusterObject;
use crate::policy::{PolicyView, convert_namespace, convert_pod, convert_policy};

const NAMESPACES: usize = 3;
const PODS: usize = 2;

/// Every pod's second address: the pods are dual-stack.
fn pod_ip6(ns: usize, pod: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        ns as u16,
        pod as u16 + 1,
    ))
}

/// node-2's IPv6 address.
const NODE_2_IP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 2));
const OUTSIDE6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd02, 0, 0, 0, 0, 0, 0, 5));

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, ns as u8, pod as u8 + 1))
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("decodes: {e}"))
}

/// The nodes: (name, role label, address). Every pod runs on the first.
const NODES: [(&str, &str, Ipv4Addr); 2] = [
    ("node-1", "worker", Ipv4Addr::new(192, 168, 0, 1)),
    ("node-2", "infra", Ipv4Addr::new(192, 168, 0, 2)),
];

/// An address of no pod and no node, for `networks` peers.
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 16, 0, 5));

fn node_peers() -> Vec<NodePeer> {
    NODES
        .iter()
        .map(|(name, role, ip)| NodePeer {
            name: name.to_string(),
            labels: BTreeMap::from([("role".to_string(), role.to_string())]),
            addresses: match *name {
                "node-2" => vec![IpAddr::V4(*ip), NODE_2_IP6],
                _ => vec![IpAddr::V4(*ip)],
            },
        })
        .collect()
}

/// Nodes, namespaces (team a/b) and pods (app x: named port `web` TCP 80;
/// app y: `web` TCP 8080 and `dns` UDP 53).
fn cluster(teams: &[usize], apps: &[usize]) -> Vec<ClusterObject> {
    let mut out: Vec<ClusterObject> = NODES
        .iter()
        .enumerate()
        .map(|(i, (name, role, _))| {
            ClusterObject::Node(decode(json!({
                "metadata": {"name": name, "labels": {"role": role}},
                "spec": {"podCIDR": format!("10.{}.0.0/16", i + 1)},
                "status": {"addresses": node_peers()[i].addresses.iter()
                    .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
                    .collect::<Vec<_>>()},
            })))
        })
        .collect();
    for (n, team) in teams.iter().enumerate() {
        let team = ["a", "b"][*team];
        out.push(ClusterObject::Namespace(decode(json!({
            "metadata": {"name": format!("ns{n}"), "labels": {"team": team}},
        }))));
        for p in 0..PODS {
            let app = ["x", "y"][apps[n * PODS + p]];
            let ports = match app {
                "x" => json!([{"name": "web", "containerPort": 80, "protocol": "TCP"}]),
                _ => json!([{"name": "web", "containerPort": 8080, "protocol": "TCP"},
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
            };
            out.push(ClusterObject::Pod(decode(json!({
                "metadata": {"name": format!("pod{p}"), "namespace": format!("ns{n}"),
                             "labels": {"app": app}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": pod_ip(n, p).to_string(),
                           "podIPs": [{"ip": pod_ip(n, p).to_string()}, {"ip": pod_ip6(n, p).to_string()}]},
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

fn cnp_pod_selector() -> impl Strategy<Value = Value> {
    prop::sample::select(vec!["x", "y"]).prop_map(|a| json!({"matchLabels": {"app": a}}))
}

fn cnp_namespace_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["a", "b"]).prop_map(|t| json!({"matchLabels": {"team": t}})),
    ]
}

/// `namespaces` or `pods` (with or without a namespace selector).
fn cnp_pod_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        cnp_namespace_selector().prop_map(|ns| json!({"namespaces": ns})),
        cnp_pod_selector().prop_map(|pods| json!({"pods": {"podSelector": pods}})),
        (cnp_namespace_selector(), cnp_pod_selector())
            .prop_map(|(ns, pods)| json!({"pods": {"namespaceSelector": ns, "podSelector": pods}})),
    ]
}

fn cnp_egress_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => cnp_pod_peer(),
        1 => prop::sample::select(vec![
            json!({}),
            json!({"matchLabels": {"role": "infra"}}),
            json!({"matchExpressions": [{"key": "role", "operator": "In", "values": ["worker", "infra"]}]}),
        ]).prop_map(|nodes| json!({"nodes": nodes})),
        1 => prop::sample::select(vec![
            vec!["10.1.0.0/24"],
            vec!["10.1.1.1/32", "172.16.0.0/12"],
            vec!["0.0.0.0/0"],
            vec!["192.168.0.0/30"],
            vec!["fd00::/8"],
            vec!["fd00::1:0/112", "172.16.0.0/12"],
            vec!["::/0"],
            vec!["not-a-cidr"],
        ]).prop_map(|networks| json!({"networks": networks})),
    ]
}

fn cnp_protocol() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"tcp": {"destinationPort": {"number": 80}}}),
        json!({"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8080}}}}),
        json!({"udp": {"destinationPort": {"number": 53}}}),
        json!({"udp": {}}),
        json!({"sctp": {}}),
        json!({"destinationNamedPort": "web"}),
        json!({"destinationNamedPort": "dns"}),
    ])
}

fn cnp_rule(ingress: bool) -> impl Strategy<Value = Value> {
    let peer = if ingress {
        cnp_pod_peer().boxed()
    } else {
        cnp_egress_peer().boxed()
    };
    (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        prop::collection::vec(peer, 1..3),
        prop::collection::vec(cnp_protocol(), 0..3),
    )
        .prop_map(move |(action, peers, protocols)| {
            let mut rule = serde_json::Map::new();
            rule.insert("action".into(), json!(action));
            rule.insert(
                (if ingress { "from" } else { "to" }).into(),
                Value::Array(peers),
            );
            if !protocols.is_empty() {
                rule.insert("protocols".into(), Value::Array(protocols));
            }
            Value::Object(rule)
        })
}

/// A ClusterNetworkPolicy's spec: both tiers, priorities that collide
/// (name breaks ties), `namespaces` or `pods` subjects.
fn cluster_network_policy() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        0i64..3,
        prop_oneof![
            cnp_namespace_selector().prop_map(|ns| json!({"namespaces": ns})),
            (cnp_namespace_selector(), cnp_pod_selector()).prop_map(
                |(ns, pods)| json!({"pods": {"namespaceSelector": ns, "podSelector": pods}})
            ),
        ],
        prop::collection::vec(cnp_rule(true), 0..3),
        prop::collection::vec(cnp_rule(false), 0..3),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| {
            json!({"tier": tier, "priority": priority, "subject": subject,
                   "ingress": ingress, "egress": egress})
        })
}

/// The rule comments a decision's walk through the chains matches, in
/// order: the egress direction's passes and deciding rule, then (when
/// egress allows) the ingress direction's.
fn expected_comments(decision: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    for verdict in [&decision.egress, &decision.ingress].into_iter().flatten() {
        out.extend(verdict.passed.iter().map(|r| r.comment()));
        if let DecidedBy::Rule(r) = &verdict.by {
            out.push(r.comment());
        }
        if !verdict.allowed {
            break;
        }
    }
    out
}

/// For every connection between the pods of node-1, and from them to the
/// other node and an outside address: the chains' verdict (read by
/// `explain`) is the evaluator's, and the ClusterNetworkPolicy rules the
/// walk matches are the ones the evaluator names.
fn chains_agree_with_the_evaluator(objects: &[ClusterObject]) -> Result<(), TestCaseError> {
    let mut index = Index::new(ComputeConfig::default());
    for o in objects.iter().cloned() {
        index.upsert(o);
    }
    index.commit();
    prop_assert!(
        index.invalid_nodes().is_empty(),
        "{:?}",
        index.invalid_nodes()
    );
    let Some(state) = index.node_state("node-1") else {
        return Err(TestCaseError::fail("no state for node-1"));
    };
    let invalid = state.validate();
    prop_assert!(invalid.is_empty(), "{:?}", invalid);
    let view = policy_view(objects);
    let nodes = node_peers();
    let policies: Vec<ClusterPolicy> = objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::ClusterNetworkPolicy(p) => {
                convert_cluster_policy(p).ok().map(|(p, _)| p)
            }
            _ => None,
        })
        .collect();
    let tiered = TieredView {
        view: &view,
        nodes: &nodes,
        policies: &policies,
    };
    let pods = |ip: fn(usize, usize) -> IpAddr| -> Vec<IpAddr> {
        (0..NAMESPACES)
            .flat_map(|n| (0..PODS).map(move |p| ip(n, p)))
            .collect()
    };
    let (pods4, pods6) = (pods(pod_ip), pods(pod_ip6));
    // node-1's own address is local: INPUT, which SP-POLICY does not hook.
    let others4: Vec<IpAddr> = pods4
        .iter()
        .copied()
        .chain([IpAddr::V4(NODES[1].2), OUTSIDE])
        .collect();
    let others6: Vec<IpAddr> = pods6
        .iter()
        .copied()
        .chain([NODE_2_IP6, OUTSIDE6])
        .collect();
    let pairs = pods4
        .iter()
        .flat_map(|s| others4.iter().map(move |d| (s, d)))
        .chain(
            pods6
                .iter()
                .flat_map(|s| others6.iter().map(move |d| (s, d))),
        );
    let mut differ = Vec::new();
    let mut rows = 0;
    for (source, destination) in pairs {
        if source == destination {
            continue;
        }
        for (protocol, port) in [
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 8080),
            (Protocol::Udp, 53),
            (Protocol::Sctp, 9000),
        ] {
            let connection = Connection {
                source: *source,
                destination: *destination,
                protocol,
                port,
            };
            let decision = tiered.decide(&connection, &view);
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
            let matched: Vec<&str> = e
                .steps
                .iter()
                .filter(|s| s.outcome == "match" && s.text.contains("cnp:"))
                .map(|s| s.text.as_str())
                .collect();
            let expected = expected_comments(&decision);
            let same_rules = matched.len() == expected.len()
                && matched
                    .iter()
                    .zip(&expected)
                    .all(|(text, c)| text.contains(c.as_str()));
            rows += 1;
            if decision.allowed != chains || !same_rules {
                differ.push(format!(
                        "{source} -> {destination} {protocol:?}/{port}: evaluator {} {expected:?}, chains {chains} {matched:?}",
                        decision.allowed
                    ));
            }
        }
    }
    prop_assert!(rows > 0);
    prop_assert!(
        differ.is_empty(),
        "evaluator vs chains differ: {:#?}",
        differ
    );
    Ok(())
}

fn network_policy_objects(policies: Vec<(usize, Value)>) -> Vec<ClusterObject> {
    policies
        .into_iter()
        .enumerate()
        .map(|(i, (ns, spec))| {
            ClusterObject::NetworkPolicy(decode(json!({
                "metadata": {"name": format!("np{i}"), "namespace": format!("ns{ns}")},
                "spec": spec,
            })))
        })
        .collect()
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
        objects.extend(network_policy_objects(policies));
        chains_agree_with_the_evaluator(&objects)?;
    }

    #[test]
    fn the_compiled_tiers_agree_with_the_evaluator(
        teams in prop::collection::vec(0usize..2, NAMESPACES),
        apps in prop::collection::vec(0usize..2, NAMESPACES * PODS),
        policies in prop::collection::vec(network_policy(), 0..3),
        cluster_policies in prop::collection::vec(cluster_network_policy(), 1..5),
    ) {
        let mut objects = cluster(&teams, &apps);
        objects.extend(network_policy_objects(policies));
        for (i, spec) in cluster_policies.into_iter().enumerate() {
            objects.push(ClusterObject::ClusterNetworkPolicy(decode(json!({
                "apiVersion": super::api::API_VERSION,
                "kind": super::api::KIND,
                "metadata": {"name": format!("cnp{i}")},
                "spec": spec,
            }))));
        }
        chains_agree_with_the_evaluator(&objects)?;
    }
}
