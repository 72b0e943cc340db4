//! ClusterIP virtual servers: on every node, for every cluster IP and
//! protocol, with the addresses bound and the sets filled.

use crate::objs;
use crate::support::*;

fn web() -> Vec<ClusterObject> {
    cluster(objs![
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", "TCP", 80),
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]),
    ])
}

#[test]
fn cluster_ip_virtual_server_on_every_node() {
    let common = [
        "vs tcp 10.96.0.10:80 rr -> 10.244.1.5:8080 10.244.2.5:8080",
        "set SP-CLUSTER-IP 10.96.0.10,tcp:80",
        "set SP-IPVS-IPS 10.96.0.10",
        "addr 10.96.0.10",
    ];
    // node-c hosts no endpoint: same state, without a hairpin entry.
    for (node, hairpin) in [
        (
            "node-a",
            Some("set SP-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5"),
        ),
        (
            "node-b",
            Some("set SP-LOOP-BACK 10.244.2.5,tcp:8080,10.244.2.5"),
        ),
        ("node-c", None),
    ] {
        let mut expected = common.to_vec();
        expected.extend(hairpin);
        check(web(), node, "", &expected);
    }
}

#[test]
fn dual_stack_service_gets_a_virtual_server_per_family() {
    let objects = cluster(objs![
        mk_service("shop", "frontend")
            .cluster_ips(&["10.96.10.10", "fd00:96::a0a"])
            .port("http", "TCP", 80),
        mk_slice("shop", "frontend", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.3.5", "node-c")]),
        mk_slice("shop", "frontend", "IPv6")
            .port("http", "TCP", 8080)
            .eps(&[("fd00:244:3::5", "node-c")]),
    ]);
    check(
        objects,
        "node-a",
        "",
        &[
            "vs tcp 10.96.10.10:80 rr -> 10.244.3.5:8080",
            "vs tcp [fd00:96::a0a]:80 rr -> [fd00:244:3::5]:8080",
            "set SP-CLUSTER-IP 10.96.10.10,tcp:80",
            "set SP6-CLUSTER-IP fd00:96::a0a,tcp:80",
            "set SP-IPVS-IPS 10.96.10.10",
            "set SP6-IPVS-IPS fd00:96::a0a",
            "addr 10.96.10.10",
            "addr fd00:96::a0a",
        ],
    );
}

#[test]
fn ipv6_only_service_uses_only_sp6_sets() {
    let objects = cluster(objs![
        mk_service("default", "v6")
            .cluster_ip("fd00:96::10")
            .port("", "UDP", 53),
        mk_slice("default", "v6", "IPv6")
            .port("", "UDP", 5353)
            .eps(&[("fd00:244:1::5", "node-a")]),
    ]);
    check(
        objects,
        "node-a",
        "",
        &[
            "vs udp [fd00:96::10]:53 rr -> [fd00:244:1::5]:5353",
            "set SP6-CLUSTER-IP fd00:96::10,udp:53",
            "set SP6-IPVS-IPS fd00:96::10",
            "set SP6-LOOP-BACK fd00:244:1::5,udp:5353,fd00:244:1::5",
            "addr fd00:96::10",
        ],
    );
}

#[test]
fn tcp_udp_and_sctp_ports_each_get_a_virtual_server() {
    let objects = cluster(objs![
        mk_service("kube-system", "dns")
            .cluster_ip("10.96.0.10")
            .port("dns", "UDP", 53)
            .port("dns-tcp", "TCP", 53)
            .port("diameter", "SCTP", 3868),
        mk_slice("kube-system", "dns", "IPv4")
            .port("dns", "UDP", 5353)
            .port("dns-tcp", "TCP", 5354)
            .port("diameter", "SCTP", 3869)
            .eps(&[("10.244.3.5", "node-c")]),
    ]);
    check(
        objects,
        "node-a",
        "vs|set SP-CLUSTER-IP",
        &[
            "vs udp 10.96.0.10:53 rr -> 10.244.3.5:5353",
            "vs tcp 10.96.0.10:53 rr -> 10.244.3.5:5354",
            "vs sctp 10.96.0.10:3868 rr -> 10.244.3.5:3869",
            "set SP-CLUSTER-IP 10.96.0.10,sctp:3868",
            "set SP-CLUSTER-IP 10.96.0.10,tcp:53",
            "set SP-CLUSTER-IP 10.96.0.10,udp:53",
        ],
    );
}

#[test]
fn unnamed_port_without_protocol_defaults_to_tcp() {
    let objects = cluster(objs![
        mk_service("default", "plain")
            .cluster_ip("10.96.0.11")
            .port("", "", 80),
        mk_slice("default", "plain", "IPv4")
            .port("", "", 8080)
            .eps(&[("10.244.1.6", "node-a")]),
    ]);
    check(
        objects,
        "node-b",
        "vs|set SP-CLUSTER-IP",
        &[
            "vs tcp 10.96.0.11:80 rr -> 10.244.1.6:8080",
            "set SP-CLUSTER-IP 10.96.0.11,tcp:80",
        ],
    );
}

#[test]
fn pod_cidrs_of_nodes_fill_the_cluster_cidr_set() {
    let objects = objs![
        mk_node("node-a", "", &["192.168.10.11"]).pod_cidrs(&["10.244.1.0/24", "fd00:244:1::/64"]),
        mk_node("node-b", "", &["192.168.10.12"]).pod_cidrs(&["10.244.2.0/24"]),
    ];
    check(
        objects,
        "node-b",
        "",
        &[
            "set SP-CLUSTER-CIDR 10.244.1.0/24",
            "set SP-CLUSTER-CIDR 10.244.2.0/24",
            "set SP6-CLUSTER-CIDR fd00:244:1::/64",
        ],
    );
}

#[test]
fn configured_cluster_cidrs_replace_node_pod_cidrs() {
    let config = ComputeConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let objects = objs![mk_node("node-a", "", &["192.168.10.11"]).pod_cidrs(&["10.244.1.0/24"])];
    check_with(
        config,
        objects,
        "node-a",
        "set SP-CLUSTER-CIDR",
        &["set SP-CLUSTER-CIDR 10.244.0.0/16"],
    );
}

#[test]
fn objects_without_namespace_are_in_default() {
    let mut svc = mk_service("x", "web")
        .cluster_ip("10.96.0.10")
        .port("http", "TCP", 80);
    svc.0.metadata.namespace = None;
    let mut slice = mk_slice("x", "web", "IPv4")
        .port("http", "TCP", 8080)
        .eps(&[("10.244.1.5", "node-a")]);
    slice.0.metadata.namespace = None;
    check(
        cluster(objs![svc, slice]),
        "node-b",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.1.5:8080"],
    );
}
