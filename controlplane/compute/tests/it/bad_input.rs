//! Bad objects become Problems naming the object; they never take other
//! objects down with them.

use crate::objs;
use crate::support::*;

fn good() -> Vec<ClusterObject> {
    cluster(objs![
        mk_service("default", "good")
            .cluster_ip("10.96.0.20")
            .port("http", "TCP", 80),
        mk_slice("default", "good", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a")]),
    ])
}

const GOOD_VS: &str = "vs tcp 10.96.0.20:80 rr -> 10.244.1.5:8080";

#[test]
fn bad_services_are_skipped_with_a_problem_naming_them() {
    let bad = || mk_service("default", "bad");
    let table: Vec<(SvcB, &str)> = vec![
        (
            bad().cluster_ip("10.96.0.300").port("http", "TCP", 80),
            "cluster IP \"10.96.0.300\" is not an IP address",
        ),
        (
            bad()
                .cluster_ips(&["10.96.0.30", "fd00::zz"])
                .port("http", "TCP", 80),
            "cluster IP \"fd00::zz\" is not an IP address",
        ),
        (
            bad().cluster_ip("10.96.0.30").port("http", "TCP", 0),
            "port \"http\" 0 is out of range 1-65535",
        ),
        (
            bad().cluster_ip("10.96.0.30").port("http", "TCP", 70000),
            "port \"http\" 70000 is out of range 1-65535",
        ),
        (
            bad().cluster_ip("10.96.0.30").port("ping", "ICMP", 1),
            "port \"ping\": protocol \"ICMP\" is not TCP, UDP or SCTP",
        ),
        (
            bad()
                .type_("NodePort")
                .cluster_ip("10.96.0.30")
                .port("http", "TCP", 80)
                .node_port(70000),
            "port \"http\" nodePort 70000 is out of range 1-65535",
        ),
        (
            bad()
                .cluster_ip("10.96.0.30")
                .port("http", "TCP", 80)
                .external_ips(&["example.com"]),
            "external IP \"example.com\" is not an IP address",
        ),
        (
            bad()
                .type_("LoadBalancer")
                .cluster_ip("10.96.0.30")
                .port("http", "TCP", 80)
                .source_ranges(&["10.0.0.0/33"]),
            "loadBalancerSourceRange \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            bad()
                .type_("LoadBalancer")
                .cluster_ip("10.96.0.30")
                .port("http", "TCP", 80)
                .lb_ingress("lb.example.com"),
            "load balancer ingress IP \"lb.example.com\" is not an IP address",
        ),
    ];
    for (svc, reason) in table {
        let mut objects = good();
        objects.push(svc.into());
        let index = check(objects, "node-a", "vs", &[GOOD_VS]);
        assert_eq!(
            problems(&index),
            [format!("skipped Service default/bad: {reason}")]
        );
        assert_eq!(index.service_count(), 1);
    }
}

#[test]
fn bad_endpoint_is_skipped_and_its_neighbours_kept() {
    let objects = cluster(objs![
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", "TCP", 80),
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .ep(mk_ep("10.244.1.5"))
            .ep(mk_ep("not-an-ip"))
            .ep(mk_ep("fd00:244:1::7"))
            .ep(mk_ep("10.244.1.7")),
    ]);
    let index = check(
        objects,
        "node-a",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.1.5:8080 10.244.1.7:8080"],
    );
    assert_eq!(
        problems(&index),
        [
            "EndpointSlice default/web-ipv4: endpoint 1: address \"not-an-ip\" is not an IP address",
            "EndpointSlice default/web-ipv4: endpoint 2: fd00:244:1::7 is not of addressType IPv4",
        ]
    );
}

#[test]
fn bad_slice_port_skips_the_whole_slice() {
    let mut objects = good();
    objects.push(
        mk_slice("default", "good", "IPv4")
            .name("good-bad")
            .port("http", "ICMP", 8080)
            .eps(&[("10.244.2.5", "node-b")])
            .into(),
    );
    let index = check(objects, "node-a", "vs", &[GOOD_VS]);
    assert_eq!(
        problems(&index),
        ["skipped EndpointSlice default/good-bad: protocol \"ICMP\" is not TCP, UDP or SCTP"]
    );
}

#[test]
fn node_with_a_bad_address_is_a_problem() {
    let mut objects = good();
    objects.push(mk_node("node-x", "", &["192.168.10.300"]).into());
    let index = check(objects, "node-a", "vs", &[GOOD_VS]);
    assert_eq!(
        problems(&index),
        ["skipped Node node-x: InternalIP address \"192.168.10.300\" is not an IP address"]
    );
    assert!(index.node_state("node-x").is_none());
    assert_eq!(index.node_names().count(), 3);
}

#[test]
fn fixing_an_object_clears_its_problem() {
    let mut index = index_of(good());
    index.upsert(
        mk_service("default", "bad")
            .cluster_ip("10.96.0.30")
            .port("http", "TCP", 0)
            .into(),
    );
    index.commit();
    assert_eq!(problems(&index).len(), 1);
    index.upsert(
        mk_service("default", "bad")
            .cluster_ip("10.96.0.30")
            .port("http", "TCP", 80)
            .into(),
    );
    index.commit();
    assert_eq!(problems(&index), Vec::<String>::new());
    expect_lines(
        &index,
        "node-b",
        "vs",
        &[GOOD_VS, "vs tcp 10.96.0.30:80 rr -> none"],
    );
}

#[test]
fn a_valid_service_turning_bad_is_withdrawn() {
    let mut index = index_of(good());
    index.upsert(
        mk_service("default", "good")
            .cluster_ip("10.96.0.20")
            .port("http", "SCTPX", 80)
            .into(),
    );
    let outcome = index.commit();
    assert_eq!(outcome.changed_nodes.len(), 3);
    expect_lines(&index, "node-a", "", &[]);
    assert_eq!(problems(&index).len(), 1);
}
