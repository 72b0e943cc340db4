//! externalTrafficPolicy and internalTrafficPolicy `Local`.

use crate::objs;
use crate::support::*;

/// A Local load balancer with endpoints on node-a and node-b, none on node-c.
fn ingress_gateway() -> Vec<ClusterObject> {
    cluster(objs![
        mk_service("default", "ingress")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .node_port(30880)
            .lb_ingress("203.0.113.10")
            .etp_local()
            .health_check_node_port(32000),
        mk_slice("default", "ingress", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]),
    ])
}

const SHARED: [&str; 10] = [
    "vs tcp 10.96.1.10:80 rr -> 10.244.1.5:8080 10.244.2.5:8080",
    "set SP-CLUSTER-IP 10.96.1.10,tcp:80",
    "set SP-HEALTH-CHECK-NODE-PORT 32000",
    "set SP-IPVS-IPS 10.96.1.10",
    "set SP-IPVS-IPS 203.0.113.10",
    "set SP-LOAD-BALANCER 203.0.113.10,tcp:80",
    "set SP-LOAD-BALANCER-LOCAL 203.0.113.10,tcp:80",
    "set SP-NODE-PORT-LOCAL-TCP 30880",
    "set SP-NODE-PORT-TCP 30880",
    "addr 10.96.1.10",
];

#[test]
fn etp_local_node_with_local_endpoints_sends_external_traffic_to_them_only() {
    let mut expected = SHARED.to_vec();
    expected.extend([
        "addr 203.0.113.10",
        "vs tcp 203.0.113.10:80 rr -> 10.244.1.5:8080",
        "vs tcp 192.168.10.11:30880 rr -> 10.244.1.5:8080",
        "set SP-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
    ]);
    check(ingress_gateway(), "node-a", "", &expected);
}

#[test]
fn etp_local_node_without_local_endpoints_drops_off_cluster_traffic() {
    // Pods on node-c still reach the Service through the external
    // frontends; traffic from outside the cluster is dropped by the
    // SP-NO-LOCAL-ENDPOINTS rule.
    let mut expected = SHARED.to_vec();
    expected.extend([
        "addr 203.0.113.10",
        "vs tcp 203.0.113.10:80 rr -> 10.244.1.5:8080 10.244.2.5:8080",
        "vs tcp 192.168.10.13:30880 rr -> 10.244.1.5:8080 10.244.2.5:8080",
        "set SP-NO-LOCAL-ENDPOINTS 192.168.10.13,tcp:30880",
        "set SP-NO-LOCAL-ENDPOINTS 203.0.113.10,tcp:80",
    ]);
    check(ingress_gateway(), "node-c", "", &expected);
}

#[test]
fn etp_local_external_ip_uses_the_local_set() {
    let objects = cluster(objs![
        mk_service("default", "legacy")
            .type_("ClusterIP")
            .cluster_ip("10.96.1.50")
            .port("http", "TCP", 80)
            .external_ips(&["192.168.10.100"])
            .etp_local(),
        mk_slice("default", "legacy", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.2.5", "node-b")]),
    ]);
    let filter = "set SP-EXTERNAL|vs tcp 192|set SP-NO-";
    check(
        objects.clone(),
        "node-b",
        filter,
        &[
            "vs tcp 192.168.10.100:80 rr -> 10.244.2.5:8080",
            "set SP-EXTERNAL-IP-LOCAL 192.168.10.100,tcp:80",
        ],
    );
    check(
        objects,
        "node-a",
        filter,
        &[
            "vs tcp 192.168.10.100:80 rr -> 10.244.2.5:8080",
            "set SP-EXTERNAL-IP-LOCAL 192.168.10.100,tcp:80",
            "set SP-NO-LOCAL-ENDPOINTS 192.168.10.100,tcp:80",
        ],
    );
}

#[test]
fn etp_local_on_a_cluster_ip_only_service_has_no_effect() {
    let objects = cluster(objs![
        mk_service("default", "internal")
            .cluster_ip("10.96.1.60")
            .port("http", "TCP", 80)
            .etp_local(),
        mk_slice("default", "internal", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.2.5", "node-b")]),
    ]);
    check(
        objects,
        "node-a",
        "",
        &[
            "vs tcp 10.96.1.60:80 rr -> 10.244.2.5:8080",
            "set SP-CLUSTER-IP 10.96.1.60,tcp:80",
            "set SP-IPVS-IPS 10.96.1.60",
            "addr 10.96.1.60",
        ],
    );
}

#[test]
fn etp_local_without_any_endpoint_is_no_endpoints_not_no_local_endpoints() {
    let objects = cluster(objs![
        mk_service("default", "ingress")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .node_port(30880)
            .lb_ingress("203.0.113.10")
            .etp_local(),
    ]);
    check(
        objects,
        "node-a",
        "set SP-NO-|vs",
        &[
            "vs tcp 10.96.1.10:80 rr -> none",
            "vs tcp 192.168.10.11:30880 rr -> none",
            "vs tcp 203.0.113.10:80 rr -> none",
            "set SP-NO-ENDPOINTS 10.96.1.10,tcp:80",
            "set SP-NO-ENDPOINTS 192.168.10.11,tcp:30880",
            "set SP-NO-ENDPOINTS 203.0.113.10,tcp:80",
        ],
    );
}

#[test]
fn etp_local_udp_node_port_uses_the_local_udp_bitmap() {
    let objects = cluster(objs![
        mk_service("default", "syslog")
            .type_("NodePort")
            .cluster_ip("10.96.1.30")
            .port("syslog", "UDP", 514)
            .node_port(30514)
            .etp_local(),
        mk_slice("default", "syslog", "IPv4")
            .port("syslog", "UDP", 5514)
            .eps(&[("10.244.1.5", "node-a")]),
    ]);
    check(
        objects,
        "node-a",
        "set SP-NODE-PORT|vs udp 192",
        &[
            "vs udp 192.168.10.11:30514 rr -> 10.244.1.5:5514",
            "set SP-NODE-PORT-LOCAL-UDP 30514",
            "set SP-NODE-PORT-UDP 30514",
        ],
    );
}

#[test]
fn etp_local_sctp_node_port_uses_both_hash_sets() {
    let objects = cluster(objs![
        mk_service("default", "diameter")
            .type_("NodePort")
            .cluster_ip("10.96.1.40")
            .port("diameter", "SCTP", 3868)
            .node_port(30868)
            .etp_local(),
        mk_slice("default", "diameter", "IPv4")
            .port("diameter", "SCTP", 3868)
            .eps(&[("10.244.1.5", "node-a")]),
    ]);
    check(
        objects,
        "node-a",
        "set SP-NODE-PORT",
        &[
            "set SP-NODE-PORT-LOCAL-SCTP-HASH 192.168.10.11,sctp:30868",
            "set SP-NODE-PORT-SCTP-HASH 192.168.10.11,sctp:30868",
        ],
    );
}

fn node_exporter(node_port: bool) -> Vec<ClusterObject> {
    let mut svc = mk_service("monitoring", "node-exporter")
        .cluster_ip("10.96.20.30")
        .port("metrics", "TCP", 9100)
        .itp_local();
    if node_port {
        svc = svc.type_("NodePort").node_port(30910);
    }
    cluster(objs![
        svc,
        mk_slice("monitoring", "node-exporter", "IPv4")
            .port("metrics", "TCP", 9100)
            .eps(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]),
    ])
}

#[test]
fn itp_local_cluster_ip_sends_to_local_endpoints_only() {
    let objects = node_exporter(false);
    check(
        objects.clone(),
        "node-a",
        "vs|set SP-NO-",
        &["vs tcp 10.96.20.30:9100 rr -> 10.244.1.5:9100"],
    );
    // No local endpoint: an empty virtual server, and no reject either.
    check(
        objects,
        "node-c",
        "vs|set SP-NO-",
        &["vs tcp 10.96.20.30:9100 rr -> none"],
    );
}

#[test]
fn itp_local_does_not_restrict_node_ports() {
    check(
        node_exporter(true),
        "node-c",
        "vs",
        &[
            "vs tcp 10.96.20.30:9100 rr -> none",
            "vs tcp 192.168.10.13:30910 rr -> 10.244.1.5:9100 10.244.2.5:9100",
        ],
    );
}

/// Only a LoadBalancer Service with `externalTrafficPolicy: Local` gets a
/// health-check node port (kube-proxy's NeedsHealthCheck): the field on any
/// other Service is ignored — not served, and not a reason to refuse it.
#[test]
fn only_local_load_balancers_get_a_health_check_node_port() {
    let health = "set SP-HEALTH-CHECK-NODE-PORT 32000";
    let cases = [
        ("LoadBalancer", true, 32000, true),
        ("LoadBalancer", false, 32000, false),
        ("NodePort", true, 32000, false),
        ("NodePort", false, 32000, false),
        // Out of range, but ignored where kube-proxy ignores it.
        ("LoadBalancer", false, 70000, false),
        ("NodePort", true, -1, false),
    ];
    for (type_, local, port, served) in cases {
        let mut service = mk_service("default", "web")
            .type_(type_)
            .cluster_ip("10.96.1.20")
            .port("http", "TCP", 80)
            .node_port(30890)
            .health_check_node_port(port);
        if type_ == "LoadBalancer" {
            service = service.lb_ingress("203.0.113.20");
        }
        if local {
            service = service.etp_local();
        }
        let objects = cluster(objs![
            service,
            mk_slice("default", "web", "IPv4")
                .port("http", "TCP", 8080)
                .eps(&[("10.244.1.6", "node-a")]),
        ]);
        let lines = render(&state_of(&index_of(objects), "node-a"));
        let case = format!("{type_}, local {local}, port {port}");
        assert_eq!(lines.iter().any(|l| l == health), served, "{case}");
        assert!(
            lines.iter().any(|l| l == "set SP-NODE-PORT-TCP 30890"),
            "{case}: the Service is served"
        );
    }
}
