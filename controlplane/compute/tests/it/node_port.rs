//! NodePorts: a virtual server on each of the node's own addresses, the
//! bitmap sets (hash:ip,port for SCTP), and the `nodeport_addresses` filter.

use crate::objs;
use crate::support::*;

fn echo(proto: &str, node_port: i32) -> Vec<ClusterObject> {
    cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ip("10.96.1.20")
            .port("http", proto, 80)
            .node_port(node_port),
        mk_slice("default", "echo", "IPv4")
            .port("http", proto, 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.3.5", "node-c")]),
    ])
}

#[test]
fn node_port_virtual_server_on_each_node_own_address() {
    for (node, ip) in [
        ("node-a", "192.168.10.11"),
        ("node-b", "192.168.10.12"),
        ("node-c", "192.168.10.13"),
    ] {
        check(
            echo("TCP", 30080),
            node,
            "vs|set SP-NODE-PORT|set SP6-NODE-PORT",
            &[
                "vs tcp 10.96.1.20:80 rr -> 10.244.1.5:8080 10.244.3.5:8080",
                &format!("vs tcp {ip}:30080 rr -> 10.244.1.5:8080 10.244.3.5:8080"),
                "set SP-NODE-PORT-TCP 30080",
            ],
        );
    }
}

#[test]
fn udp_node_port_goes_to_the_udp_bitmap() {
    check(
        echo("UDP", 30514),
        "node-b",
        "vs udp 192|set SP-NODE-PORT",
        &[
            "vs udp 192.168.10.12:30514 rr -> 10.244.1.5:8080 10.244.3.5:8080",
            "set SP-NODE-PORT-UDP 30514",
        ],
    );
}

#[test]
fn sctp_node_port_uses_the_hash_set_with_the_node_address() {
    check(
        echo("SCTP", 30868),
        "node-a",
        "vs sctp 192|set SP-NODE-PORT",
        &[
            "vs sctp 192.168.10.11:30868 rr -> 10.244.1.5:8080 10.244.3.5:8080",
            "set SP-NODE-PORT-SCTP-HASH 192.168.10.11,sctp:30868",
        ],
    );
}

#[test]
fn dual_stack_node_port_serves_both_families() {
    let objects = cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ips(&["10.96.1.20", "fd00:96::114"])
            .port("http", "TCP", 80)
            .node_port(30080),
        mk_slice("default", "echo", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.3.5", "node-c")]),
        mk_slice("default", "echo", "IPv6")
            .port("http", "TCP", 8080)
            .eps(&[("fd00:244:3::5", "node-c")]),
    ]);
    check(
        objects,
        "node-a",
        "vs tcp 192|vs tcp [fd00:10|set SP-NODE-PORT|set SP6-NODE-PORT",
        &[
            "vs tcp 192.168.10.11:30080 rr -> 10.244.3.5:8080",
            "vs tcp [fd00:10::11]:30080 rr -> [fd00:244:3::5]:8080",
            "set SP-NODE-PORT-TCP 30080",
            "set SP6-NODE-PORT-TCP 30080",
        ],
    );
}

#[test]
fn nodeport_addresses_filter_selects_node_addresses() {
    let config = ComputeConfig {
        nodeport_addresses: vec!["192.168.10.0/24".parse().unwrap()],
        ..Default::default()
    };
    let mut objects = echo("TCP", 30080);
    objects.push(
        mk_node("node-x", "", &["192.168.10.99", "10.0.0.99", "fd00:10::99"])
            .address("ExternalIP", "198.51.100.99")
            .into(),
    );
    check_with(
        config,
        objects,
        "node-x",
        "vs tcp 1|vs tcp [",
        &[
            "vs tcp 10.96.1.20:80 rr -> 10.244.1.5:8080 10.244.3.5:8080",
            "vs tcp 192.168.10.99:30080 rr -> 10.244.1.5:8080 10.244.3.5:8080",
        ],
    );
}

#[test]
fn node_port_on_internal_and_external_addresses_but_never_loopback() {
    let mut objects = echo("TCP", 30080);
    objects.push(
        mk_node("node-x", "", &["192.168.10.99", "127.0.0.1"])
            .address("ExternalIP", "198.51.100.99")
            .into(),
    );
    check(
        objects,
        "node-x",
        "vs tcp 1",
        &[
            "vs tcp 10.96.1.20:80 rr -> 10.244.1.5:8080 10.244.3.5:8080",
            "vs tcp 192.168.10.99:30080 rr -> 10.244.1.5:8080 10.244.3.5:8080",
            "vs tcp 198.51.100.99:30080 rr -> 10.244.1.5:8080 10.244.3.5:8080",
        ],
    );
}

#[test]
fn node_port_of_a_service_without_endpoints_is_rejected_on_the_node_address() {
    let objects = cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ip("10.96.1.20")
            .port("http", "TCP", 80)
            .node_port(30080),
    ]);
    check(
        objects,
        "node-c",
        "vs|set SP-NO-",
        &[
            "vs tcp 10.96.1.20:80 rr -> none",
            "vs tcp 192.168.10.13:30080 rr -> none",
            "set SP-NO-ENDPOINTS 10.96.1.20,tcp:80",
            "set SP-NO-ENDPOINTS 192.168.10.13,tcp:30080",
        ],
    );
}
