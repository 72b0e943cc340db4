//! Service CIDRs: `--service-cidr` and the cluster's ServiceCIDR objects,
//! united, fill `SP-SERVICE-CIDR`/`SP6-SERVICE-CIDR`; a new connection to
//! an address inside them that no Service holds is rejected, a held one is
//! served; external IPs inside them are refused.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1 as networking;
use setpoint_dataplane::explain::{Origin, Packet, Verdict, explain};
use setpoint_dataplane::{ChainKey, Family, NodeDataplane, Protocol, Table};

use crate::objs;
use crate::support::*;

fn mk_service_cidr(name: &str, cidrs: &[&str]) -> ClusterObject {
    let mut o = networking::ServiceCIDR::default();
    o.metadata.name = Some(name.to_string());
    o.spec = Some(networking::ServiceCIDRSpec {
        cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
    });
    ClusterObject::ServiceCidr(o)
}

fn service_cidr_key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::ServiceCidr,
        namespace: String::new(),
        name: name.to_string(),
    }
}

fn flag(cidrs: &[&str]) -> ComputeConfig {
    ComputeConfig {
        service_cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
        ..ComputeConfig::default()
    }
}

const SETS: &str = "set SP-SERVICE-CIDR|set SP6-SERVICE-CIDR";

/// The rules of `SP-SERVICES` in the filter table for `family`.
fn filter_services(state: &NodeDataplane, family: Family) -> Vec<String> {
    let key = ChainKey {
        family,
        table: Table::Filter,
        name: "SP-SERVICES".into(),
    };
    state
        .flatten()
        .chain(&key)
        .map(|c| c.rules.iter().map(|r| r.0.join(" ")).collect())
        .unwrap_or_default()
}

fn web() -> SvcB {
    mk_service("default", "web")
        .cluster_ips(&["10.96.0.10", "fd00:96::10"])
        .port("http", "TCP", 80)
}

fn web_slices() -> Vec<ClusterObject> {
    objs![
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a")]),
        mk_slice("default", "web", "IPv6")
            .port("http", "TCP", 8080)
            .eps(&[("fd00:244:1::5", "node-a")]),
    ]
}

#[test]
fn the_flag_fills_the_set_of_its_family_only() {
    let index = check_with(
        flag(&["10.96.0.0/12"]),
        cluster(vec![]),
        "node-a",
        SETS,
        &["set SP-SERVICE-CIDR 10.96.0.0/12"],
    );
    let state = state_of(&index, "node-a");
    let rejects = |family| {
        filter_services(&state, family)
            .iter()
            .filter(|r| r.contains("SERVICE-CIDR"))
            .count()
    };
    assert_eq!(rejects(Family::Inet), 2, "TCP reset, ICMP for the rest");
    // No IPv6 service CIDR: no IPv6 set and no rule.
    assert_eq!(rejects(Family::Inet6), 0);
    assert!(state.flatten().set("SP6-SERVICE-CIDR").is_none());
}

#[test]
fn without_service_cidrs_nothing_is_emitted() {
    let index = check(cluster(vec![]), "node-a", SETS, &[]);
    let state = state_of(&index, "node-a");
    for family in Family::ALL {
        assert!(
            filter_services(&state, family)
                .iter()
                .all(|r| !r.contains("SERVICE-CIDR"))
        );
    }
    assert!(state.flatten().set("SP-SERVICE-CIDR").is_none());
}

#[test]
fn service_cidr_objects_fill_both_families_and_unite_with_the_flag() {
    check_with(
        flag(&["10.96.0.0/16", "10.100.0.0/16"]),
        cluster(objs![
            mk_service_cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]),
            mk_service_cidr("extra", &["10.97.0.0/16"]),
        ]),
        "node-b",
        SETS,
        &[
            "set SP-SERVICE-CIDR 10.96.0.0/16",
            "set SP-SERVICE-CIDR 10.97.0.0/16",
            "set SP-SERVICE-CIDR 10.100.0.0/16",
            "set SP6-SERVICE-CIDR fd00:96::/112",
        ],
    );
}

#[test]
fn a_malformed_cidr_is_skipped_with_a_reason_and_its_neighbours_kept() {
    let index = check(
        cluster(objs![
            mk_service_cidr(
                "mixed",
                &[
                    "not-a-cidr",
                    "10.96.0.1/16",
                    "0.0.0.0/0",
                    "fe80::/64",
                    "10.100.0.0/16"
                ]
            ),
            mk_service_cidr("empty", &[]),
            mk_service_cidr("good", &["fd00:96::/112"]),
        ]),
        "node-a",
        SETS,
        &[
            "set SP-SERVICE-CIDR 10.100.0.0/16",
            "set SP6-SERVICE-CIDR fd00:96::/112",
        ],
    );
    assert_eq!(
        problems(&index),
        [
            "ServiceCIDR mixed: spec.cidrs[0] is not taken: \"not-a-cidr\" is not a CIDR",
            "ServiceCIDR mixed: spec.cidrs[1] is not taken: 10.96.0.1/16 has host bits set: the network is 10.96.0.0/16",
            "ServiceCIDR mixed: spec.cidrs[2] is not taken: 0.0.0.0/0 overlaps 0.0.0.0/8 (the unspecified network), which no node may reject",
            "ServiceCIDR mixed: spec.cidrs[3] is not taken: fe80::/64 overlaps fe80::/10 (link-local), which no node may reject",
            "skipped ServiceCIDR empty: spec.cidrs is empty: it allocates no address",
        ]
    );
}

#[test]
fn removing_an_object_shrinks_the_set_on_every_node_incrementally() {
    let mut model = cluster(objs![
        web(),
        mk_service_cidr("a", &["10.96.0.0/16"]),
        mk_service_cidr("b", &["10.97.0.0/16", "fd00:97::/112"]),
    ]);
    model.extend(web_slices());
    let mut index = index_with(flag(&["10.96.0.0/16"]), model.clone());
    expect_lines(
        &index,
        "node-c",
        SETS,
        &[
            "set SP-SERVICE-CIDR 10.96.0.0/16",
            "set SP-SERVICE-CIDR 10.97.0.0/16",
            "set SP6-SERVICE-CIDR fd00:97::/112",
        ],
    );
    index.delete(&service_cidr_key("b"));
    let outcome = index.commit();
    let all: Vec<String> = index.node_names().map(|n| n.to_string()).collect();
    let changed: Vec<String> = outcome
        .changed_nodes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(changed, all);
    assert_eq!(
        outcome.replanned_services, 0,
        "no Service lists a foreign IP"
    );
    expect_lines(
        &index,
        "node-c",
        SETS,
        &["set SP-SERVICE-CIDR 10.96.0.0/16"],
    );
    model.retain(|o| o.key() != service_cidr_key("b"));
    assert_same_as_fresh(&index, model.clone());
    // Object "a" repeats the flag: deleting it changes nothing.
    index.delete(&service_cidr_key("a"));
    assert!(index.commit().changed_nodes.is_empty());
    model.retain(|o| o.key() != service_cidr_key("a"));
    assert_same_as_fresh(&index, model);
}

#[test]
fn an_external_ip_inside_a_service_cidr_object_is_refused_until_it_goes() {
    let ext = mk_service("default", "ext")
        .cluster_ip("10.96.0.20")
        .port("http", "TCP", 80)
        .external_ips(&["10.97.0.5"]);
    let mut index = check(
        cluster(objs![ext, mk_service_cidr("extra", &["10.97.0.0/16"])]),
        "node-a",
        "vs tcp 10.97",
        &[],
    );
    assert_eq!(
        problems(&index),
        [
            "Service default/ext: external IP 10.97.0.5 is not served: it is inside the service CIDRs (--service-cidr, ServiceCIDR objects) (reason ServiceCidr)"
        ]
    );
    index.delete(&service_cidr_key("extra"));
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.97",
        &["vs tcp 10.97.0.5:80 rr -> none"],
    );
    assert!(problems(&index).is_empty());
}

fn packet(src: &str, dst: &str, port: u16, from: Origin) -> Packet {
    Packet {
        protocol: Protocol::Tcp,
        src: src.parse::<IpAddr>().expect("ip"),
        src_port: Some(40000),
        dst: dst.parse::<IpAddr>().expect("ip"),
        dst_port: port,
        from,
    }
}

#[test]
fn explain_rejects_an_unallocated_address_and_serves_a_held_one() {
    let mut objects = cluster(objs![
        web(),
        mk_service_cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]),
    ]);
    objects.extend(web_slices());
    let index = index_with(ComputeConfig::default(), objects);
    let state = state_of(&index, "node-a");
    let table: &[(&str, &str, u16, Origin, Verdict)] = &[
        // Unallocated, from a pod (FORWARD) and from the node (OUTPUT).
        ("10.244.1.9", "10.96.0.99", 80, Origin::Pod, Verdict::Reject),
        (
            "192.168.10.11",
            "10.96.0.99",
            80,
            Origin::Node,
            Verdict::Reject,
        ),
        (
            "fd00:244:1::9",
            "fd00:96::99",
            443,
            Origin::Pod,
            Verdict::Reject,
        ),
        (
            "fd00:10::11",
            "fd00:96::99",
            80,
            Origin::Node,
            Verdict::Reject,
        ),
        // Held: served.
        ("10.244.1.9", "10.96.0.10", 80, Origin::Pod, Verdict::Dnat),
        (
            "192.168.10.11",
            "10.96.0.10",
            80,
            Origin::Node,
            Verdict::Dnat,
        ),
        (
            "fd00:244:1::9",
            "fd00:96::10",
            80,
            Origin::Pod,
            Verdict::Dnat,
        ),
        // Held, on a port no Service serves: the existing filter refuses.
        ("10.244.1.9", "10.96.0.10", 81, Origin::Pod, Verdict::Reject),
        // Outside the service CIDRs: not Setpoint's business.
        (
            "10.244.1.9",
            "10.98.0.1",
            80,
            Origin::Pod,
            Verdict::NotSetpoint,
        ),
        (
            "10.244.1.9",
            "10.244.2.7",
            80,
            Origin::Pod,
            Verdict::NotSetpoint,
        ),
    ];
    for (src, dst, port, from, want) in table {
        let e = explain(&state, &packet(src, dst, *port, *from)).expect("explains");
        assert_eq!(
            e.verdict, *want,
            "{src} -> {dst}:{port} from {from:?}: {}",
            e.reason
        );
        assert!(e.not_evaluated.is_empty(), "{dst}: {:?}", e.not_evaluated);
        assert_eq!(
            e.reason.contains("unallocated service address"),
            dst.ends_with("99"),
            "{dst}: {}",
            e.reason
        );
    }
    // TCP is reset; UDP gets the ICMP rule.
    let tcp = explain(&state, &packet("10.244.1.9", "10.96.0.99", 80, Origin::Pod)).expect("tcp");
    assert!(tcp.reason.contains("tcp-reset"), "{}", tcp.reason);
    let udp = Packet {
        protocol: Protocol::Udp,
        ..packet("10.244.1.9", "10.96.0.99", 53, Origin::Pod)
    };
    let udp = explain(&state, &udp).expect("udp");
    assert_eq!(udp.verdict, Verdict::Reject, "{}", udp.reason);
    assert!(!udp.reason.contains("tcp-reset"), "{}", udp.reason);
}
