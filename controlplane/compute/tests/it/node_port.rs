//! NodePorts: a virtual server on each of the node's own addresses, the
//! bitmap sets (hash:ip,port for SCTP), and the `nodeport_addresses` filter.

use crate::objs;
use crate::support::*;
use setpoint_dataplane::template;

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

#[test]
fn node_port_addresses_are_listed_per_node_after_the_filter() {
    let config = ComputeConfig {
        nodeport_addresses: vec!["192.168.10.0/24".parse().unwrap()],
        ..Default::default()
    };
    let mut objects = echo("TCP", 30080);
    objects.push(mk_node("node-x", "", &["192.168.10.99", "10.0.0.99", "fd00:10::99"]).into());
    let index = index_with(config, objects);
    let state = state_of(&index, "node-x").flatten();
    let listed = setpoint_dataplane::Family::ALL.map(|family| {
        template::node_port_addresses(&state, family)
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(listed, [vec!["192.168.10.99".to_string()], vec![]]);
}

/// The template key a NodePort's virtual server is stored under.
fn template(port: u16) -> setpoint_dataplane::VirtualServerKey {
    setpoint_dataplane::VirtualServerKey {
        address: "0.0.0.0".parse().unwrap(),
        protocol: setpoint_dataplane::Protocol::Tcp,
        port,
    }
}

/// Which part of `node`'s state holds the virtual server `key`.
fn part_holding(
    index: &Index,
    node: &str,
    key: &setpoint_dataplane::VirtualServerKey,
) -> Vec<String> {
    state_of(index, node)
        .parts()
        .filter(|(_, f)| f.virtual_server(key).is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn a_cluster_wide_node_port_is_one_shared_template_not_one_virtual_server_per_node() {
    let index = index_of(echo("TCP", 30080));
    for node in ["node-a", "node-b", "node-c"] {
        assert_eq!(part_holding(&index, node, &template(30080)), ["services"]);
        let own = state_of(&index, node);
        let own = own.part(&format!("node/{node}")).expect("node part");
        assert_eq!(
            own.virtual_server_count(),
            0,
            "{node} has no NodePort VS of its own"
        );
    }
}

#[test]
fn an_external_traffic_policy_local_node_port_template_is_per_node() {
    let objects = cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ip("10.96.1.20")
            .port("http", "TCP", 80)
            .node_port(30080)
            .etp_local(),
        mk_slice("default", "echo", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.3.5", "node-c")]),
    ]);
    let index = check(
        objects,
        "node-a",
        "vs tcp 192",
        &["vs tcp 192.168.10.11:30080 rr -> 10.244.1.5:8080"],
    );
    assert_eq!(
        part_holding(&index, "node-a", &template(30080)),
        ["node/node-a"]
    );
}

#[test]
fn an_endpoint_change_of_a_node_port_service_leaves_every_node_part_untouched() {
    let mut index = index_of(echo("TCP", 30080));
    let before: Vec<_> = ["node-a", "node-b", "node-c"]
        .map(|n| state_of(&index, n).part(&format!("node/{n}")).cloned())
        .into();
    index.upsert(
        mk_slice("default", "echo", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.2.7", "node-b")])
            .into(),
    );
    index.commit();
    expect_lines(
        &index,
        "node-b",
        "vs tcp 192",
        &["vs tcp 192.168.10.12:30080 rr -> 10.244.1.5:8080 10.244.2.7:8080"],
    );
    for (node, old) in ["node-a", "node-b", "node-c"].into_iter().zip(before) {
        let new = state_of(&index, node)
            .part(&format!("node/{node}"))
            .cloned();
        let (Some(old), Some(new)) = (old, new) else {
            panic!("{node} lost its own part");
        };
        // node-b and node-c host endpoints (hairpin entries) and may change;
        // their NodePort virtual servers never sit in their own part.
        assert_eq!(new.virtual_server_count(), 0, "{node}");
        if node == "node-a" {
            assert!(
                std::sync::Arc::ptr_eq(&old, &new),
                "node-a's part was rebuilt"
            );
        }
    }
}
