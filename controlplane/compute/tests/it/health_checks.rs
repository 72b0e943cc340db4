//! Node facts: the health check each node serves for a `LoadBalancer`
//! Service with `externalTrafficPolicy: Local`, with that node's count of
//! ready endpoints, and the draining condition from the Node.

use std::collections::BTreeMap;

use setpoint_dataplane::{HealthCheck, NodeDataplane};

use crate::objs;
use crate::support::*;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// A Local load balancer with a health-check node port, and `endpoints`.
fn gateway(endpoints: Vec<EpB>) -> Vec<ClusterObject> {
    let mut slice = mk_slice("default", "ingress", "IPv4").port("http", "TCP", 8080);
    for ep in endpoints {
        slice = slice.ep(ep);
    }
    cluster(objs![
        mk_service("default", "ingress")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .node_port(30880)
            .lb_ingress("203.0.113.10")
            .etp_local()
            .health_check_node_port(32000),
        slice,
    ])
}

fn ingress(local_endpoints: u32) -> BTreeMap<u16, HealthCheck> {
    BTreeMap::from([(
        32000,
        HealthCheck {
            namespace: "default".into(),
            name: "ingress".into(),
            local_endpoints,
        },
    )])
}

/// Each node's health checks, in node order.
fn health_checks(index: &Index) -> Vec<BTreeMap<u16, HealthCheck>> {
    NODES
        .iter()
        .map(|n| state_of(index, n).health_checks())
        .collect()
}

/// The part of `node`'s state that is its own.
fn own_part(state: &NodeDataplane, node: &str) -> setpoint_dataplane::Digest {
    state
        .part(&format!("node/{node}"))
        .unwrap_or_else(|| panic!("{node} has no part of its own"))
        .digest()
}

/// Each case: the endpoints, and the count each of node-a, node-b and
/// node-c reports.
#[test]
fn each_node_counts_its_ready_endpoints() {
    let a = |ip: &str| mk_ep(ip).node("node-a");
    let cases: Vec<(&str, Vec<EpB>, [u32; 3])> = vec![
        (
            "two ready and one not ready on node-a",
            vec![
                a("10.244.1.5"),
                a("10.244.1.6"),
                a("10.244.1.7").not_ready(),
            ],
            [2, 0, 0],
        ),
        ("no endpoints: every node answers 503", vec![], [0, 0, 0]),
        (
            "ready on node-a and node-c",
            vec![a("10.244.1.5"), mk_ep("10.244.3.5").node("node-c")],
            [1, 0, 1],
        ),
        // kube-proxy's LocalReadyEndpoints: terminating endpoints, even
        // serving ones, do not keep a node in the load balancer's pool.
        (
            "only serving-terminating on node-a",
            vec![a("10.244.1.5").draining()],
            [0, 0, 0],
        ),
        (
            "ready beside serving-terminating on node-a",
            vec![a("10.244.1.5"), a("10.244.1.6").draining()],
            [1, 0, 0],
        ),
        (
            "an endpoint without a node is no node's",
            vec![mk_ep("10.244.9.9")],
            [0, 0, 0],
        ),
    ];
    for (name, endpoints, counts) in cases {
        let index = index_of(gateway(endpoints));
        let want: Vec<_> = counts.into_iter().map(ingress).collect();
        assert_eq!(health_checks(&index), want, "{name}");
        // In each node's own part.
        for node in NODES {
            let state = state_of(&index, node);
            let own = state.part(&format!("node/{node}")).expect("own part");
            assert_eq!(own.health_checks().count(), 1, "{name}: {node}");
        }
    }
}

/// An address counts once, whatever its ports and slices.
#[test]
fn an_endpoint_counts_once_across_ports_and_slices() {
    let index = index_of(cluster(objs![
        mk_service("default", "ingress")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .port("https", "TCP", 443)
            .lb_ingress("203.0.113.10")
            .etp_local()
            .health_check_node_port(32000),
        mk_slice("default", "ingress", "IPv4")
            .name("ingress-1")
            .port("http", "TCP", 8080)
            .port("https", "TCP", 8443)
            .eps(&[("10.244.1.5", "node-a")]),
        mk_slice("default", "ingress", "IPv4")
            .name("ingress-2")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.1.6", "node-a")]),
    ]));
    assert_eq!(
        health_checks(&index),
        vec![ingress(2), ingress(0), ingress(0)]
    );
}

/// Only `LoadBalancer` + `Local` Services get a health check (conversion
/// keeps the port for those alone).
#[test]
fn other_services_get_none() {
    let with = |svc: SvcB| {
        index_of(cluster(objs![
            svc.cluster_ip("10.96.1.10")
                .port("http", "TCP", 80)
                .node_port(30880)
                .health_check_node_port(32000),
            mk_slice("default", "ingress", "IPv4")
                .port("http", "TCP", 8080)
                .eps(&[("10.244.1.5", "node-a")]),
        ]))
    };
    let cases = [
        (
            "LoadBalancer, Cluster",
            mk_service("default", "ingress")
                .type_("LoadBalancer")
                .lb_ingress("203.0.113.10"),
        ),
        (
            "NodePort, Local",
            mk_service("default", "ingress")
                .type_("NodePort")
                .etp_local(),
        ),
    ];
    for (name, svc) in cases {
        let index = with(svc);
        for node in NODES {
            assert!(
                state_of(&index, node).health_checks().is_empty(),
                "{name}: {node}"
            );
        }
    }
}

#[test]
fn a_node_drains_when_deleted_or_tainted_by_the_autoscaler() {
    let cases = [
        (
            "plain",
            mk_node("node-a", "zone-1", &["192.168.10.11"]),
            false,
        ),
        (
            "deletionTimestamp",
            mk_node("node-a", "zone-1", &["192.168.10.11"]).deleting(),
            true,
        ),
        (
            "ToBeDeletedByClusterAutoscaler",
            mk_node("node-a", "zone-1", &["192.168.10.11"]).taint("ToBeDeletedByClusterAutoscaler"),
            true,
        ),
        (
            "another taint",
            mk_node("node-a", "zone-1", &["192.168.10.11"])
                .taint("node.kubernetes.io/unschedulable"),
            false,
        ),
    ];
    for (name, node, draining) in cases {
        let index = index_of(objs![node, mk_node("node-b", "zone-1", &["192.168.10.12"])]);
        let a = state_of(&index, "node-a");
        assert_eq!(a.node_draining(), draining, "{name}");
        if draining {
            let own = a.part("node/node-a").expect("own part");
            assert_eq!(own.node_conditions().count(), 1, "{name}");
        }
        assert!(!state_of(&index, "node-b").node_draining(), "{name}");
    }
}

/// A readiness change on node-a edits node-a's count and leaves node-c's
/// own part as it was (node-c's count and its local virtual servers did
/// not change); node-b, without endpoints of its own, keeps its count
/// (its part changes anyway: its fallback virtual servers list every
/// endpoint). The incremental index equals a fresh one.
#[test]
fn an_endpoint_change_touches_only_the_counts_that_change() {
    let before = gateway(vec![
        mk_ep("10.244.1.5").node("node-a"),
        mk_ep("10.244.1.6").node("node-a").not_ready(),
        mk_ep("10.244.3.5").node("node-c"),
    ]);
    let after = gateway(vec![
        mk_ep("10.244.1.5").node("node-a"),
        mk_ep("10.244.1.6").node("node-a"),
        mk_ep("10.244.3.5").node("node-c"),
    ]);
    let mut index = index_of(before);
    let own_before: Vec<_> = NODES
        .iter()
        .map(|n| own_part(&state_of(&index, n), n))
        .collect();
    for object in after.clone() {
        index.upsert(object);
    }
    index.commit();
    let own_after: Vec<_> = NODES
        .iter()
        .map(|n| own_part(&state_of(&index, n), n))
        .collect();
    assert_ne!(own_before[0], own_after[0]);
    assert_eq!(own_before[2], own_after[2]);
    assert_eq!(
        health_checks(&index),
        vec![ingress(2), ingress(0), ingress(1)]
    );
    assert_same_as_fresh(&index, after);

    // Draining flips with the Node object alone.
    let mut index = index_of(gateway(vec![]));
    index.upsert(
        mk_node("node-b", "zone-1", &["192.168.10.12", "fd00:10::12"])
            .taint("ToBeDeletedByClusterAutoscaler")
            .into(),
    );
    let outcome = index.commit();
    assert_eq!(
        outcome
            .changed_nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["node-b"]
    );
    assert!(state_of(&index, "node-b").node_draining());
}
