//! Topology-aware routing: zone hints (`hints.forZones`) and node hints
//! (`hints.forNodes`, PreferSameNode) pick the endpoints a node sends to.

use crate::objs;
use crate::support::*;

/// The usual nodes plus node-d in zone-3 and node-e without a zone.
fn topo(slice: SliceB) -> Vec<ClusterObject> {
    cluster(objs![
        mk_service("shop", "catalog")
            .cluster_ip("10.96.10.50")
            .port("http", "TCP", 80),
        slice,
        mk_node("node-d", "zone-3", &["192.168.10.14"]),
        mk_node("node-e", "", &["192.168.10.15"]),
    ])
}

fn catalog() -> SliceB {
    mk_slice("shop", "catalog", "IPv4").port("http", "TCP", 8080)
}

fn ep(ip: &str, node: &str, zone: &str) -> EpB {
    mk_ep(ip).node(node).zone(zone)
}

const ALL: &str = "vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080 10.244.2.5:8080 10.244.3.5:8080";

fn zone_hinted() -> SliceB {
    catalog()
        .ep(ep("10.244.1.5", "node-a", "zone-1").zone_hints(&["zone-1"]))
        .ep(ep("10.244.2.5", "node-b", "zone-1").zone_hints(&["zone-1"]))
        .ep(ep("10.244.3.5", "node-c", "zone-2").zone_hints(&["zone-2"]))
}

#[test]
fn zone_hints_select_same_zone_endpoints() {
    for (node, expected) in [
        (
            "node-a",
            "vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080 10.244.2.5:8080",
        ),
        (
            "node-b",
            "vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080 10.244.2.5:8080",
        ),
        ("node-c", "vs tcp 10.96.10.50:80 rr -> 10.244.3.5:8080"),
        // No endpoint is hinted for zone-3, and node-e has no zone: all.
        ("node-d", ALL),
        ("node-e", ALL),
    ] {
        check(topo(zone_hinted()), node, "vs", &[expected]);
    }
}

#[test]
fn one_ready_endpoint_without_hints_disables_topology() {
    let slice = catalog()
        .ep(ep("10.244.1.5", "node-a", "zone-1").zone_hints(&["zone-1"]))
        .ep(ep("10.244.2.5", "node-b", "zone-1"))
        .ep(ep("10.244.3.5", "node-c", "zone-2").zone_hints(&["zone-2"]));
    for node in ["node-a", "node-c", "node-d"] {
        check(topo(slice.clone()), node, "vs", &[ALL]);
    }
}

#[test]
fn a_not_ready_endpoint_without_hints_does_not_disable_topology() {
    let slice = zone_hinted().ep(ep("10.244.2.9", "node-b", "zone-1").not_ready());
    check(
        topo(slice),
        "node-c",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.3.5:8080"],
    );
}

#[test]
fn an_endpoint_hinted_for_several_zones_serves_them_all() {
    let slice = catalog()
        .ep(ep("10.244.1.5", "node-a", "zone-1").zone_hints(&["zone-1", "zone-3"]))
        .ep(ep("10.244.3.5", "node-c", "zone-2").zone_hints(&["zone-2"]));
    check(
        topo(slice),
        "node-d",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080"],
    );
}

#[test]
fn node_hints_prefer_the_same_node() {
    let slice = || {
        catalog()
            .ep(ep("10.244.1.5", "node-a", "zone-1")
                .zone_hints(&["zone-1"])
                .node_hints(&["node-a"]))
            .ep(ep("10.244.2.5", "node-b", "zone-1")
                .zone_hints(&["zone-1"])
                .node_hints(&["node-b"]))
            .ep(ep("10.244.3.5", "node-c", "zone-2")
                .zone_hints(&["zone-2"])
                .node_hints(&["node-c"]))
    };
    for (node, expected) in [
        ("node-a", "vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080"),
        ("node-b", "vs tcp 10.96.10.50:80 rr -> 10.244.2.5:8080"),
        ("node-c", "vs tcp 10.96.10.50:80 rr -> 10.244.3.5:8080"),
        // No node hint for node-d: the zone rule, and zone-3 has none: all.
        ("node-d", ALL),
    ] {
        check(topo(slice()), node, "vs", &[expected]);
    }
}

#[test]
fn node_without_own_node_hint_falls_back_to_zone_hints() {
    // node-b hosts nothing; both zone-1 endpoints are hinted for zone-1.
    let slice = catalog()
        .ep(ep("10.244.1.5", "node-a", "zone-1")
            .zone_hints(&["zone-1"])
            .node_hints(&["node-a"]))
        .ep(ep("10.244.1.6", "node-a", "zone-1")
            .zone_hints(&["zone-1"])
            .node_hints(&["node-a"]))
        .ep(ep("10.244.3.5", "node-c", "zone-2")
            .zone_hints(&["zone-2"])
            .node_hints(&["node-c"]));
    check(
        topo(slice),
        "node-b",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080 10.244.1.6:8080"],
    );
}

#[test]
fn node_hints_without_zone_hints_fall_back_to_all_endpoints() {
    let slice = || {
        catalog()
            .ep(ep("10.244.1.5", "node-a", "zone-1").node_hints(&["node-a"]))
            .ep(ep("10.244.2.5", "node-b", "zone-1").node_hints(&["node-b"]))
            .ep(ep("10.244.3.5", "node-c", "zone-2").node_hints(&["node-c"]))
    };
    check(
        topo(slice()),
        "node-a",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080"],
    );
    check(topo(slice()), "node-d", "vs", &[ALL]);
}

#[test]
fn zone_hints_also_apply_to_external_frontends_with_cluster_policy() {
    let mut objects = topo(zone_hinted());
    objects.push(
        mk_service("shop", "catalog")
            .cluster_ip("10.96.10.50")
            .port("http", "TCP", 80)
            .external_ips(&["192.168.10.100"])
            .into(),
    );
    check(
        objects,
        "node-c",
        "vs",
        &[
            "vs tcp 10.96.10.50:80 rr -> 10.244.3.5:8080",
            "vs tcp 192.168.10.100:80 rr -> 10.244.3.5:8080",
        ],
    );
}
