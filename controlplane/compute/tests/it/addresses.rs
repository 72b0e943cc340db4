//! Addresses belong to whoever allocated them: a ClusterIP is its
//! Service's, and no external or load-balancer IP takes it, a node's
//! address, a CIDR of the cluster or a special-purpose address. A refused
//! address is a problem naming Service, address and reason; the rest of
//! the Service is served.

use crate::objs;
use crate::support::*;

/// The API server's Service, as every cluster has it.
fn kubernetes() -> Vec<ClusterObject> {
    objs![
        mk_service("default", "kubernetes")
            .cluster_ip("10.96.0.1")
            .port("https", "TCP", 443),
        mk_slice("default", "kubernetes", "IPv4")
            .port("https", "TCP", 6443)
            .eps(&[("192.168.10.11", "node-a")]),
    ]
}

/// A tenant's Service `aaa/hijack` (it sorts before `default/…`) with
/// `externalIPs` and port 443 going to its own pod.
fn hijack(external: &[&str]) -> Vec<ClusterObject> {
    objs![
        mk_service("aaa", "hijack")
            .cluster_ip("10.96.5.5")
            .port("https", "TCP", 443)
            .external_ips(external),
        mk_slice("aaa", "hijack", "IPv4")
            .port("https", "TCP", 8443)
            .eps(&[("10.244.3.66", "node-c")]),
    ]
}

fn with(parts: &[Vec<ClusterObject>]) -> Vec<ClusterObject> {
    cluster(parts.concat())
}

#[test]
fn an_external_ip_cannot_take_a_cluster_ip_whatever_the_names() {
    let index = check(
        with(&[kubernetes(), hijack(&["10.96.0.1"])]),
        "node-b",
        "vs|set SP-EXTERNAL|set SP-CLUSTER-IP",
        &[
            "vs tcp 10.96.0.1:443 rr -> 192.168.10.11:6443",
            "vs tcp 10.96.5.5:443 rr -> 10.244.3.66:8443",
            "set SP-CLUSTER-IP 10.96.0.1,tcp:443",
            "set SP-CLUSTER-IP 10.96.5.5,tcp:443",
        ],
    );
    assert_eq!(
        problems(&index),
        [
            "Service aaa/hijack: external IP 10.96.0.1 is not served: it is a Service's cluster IP, \
             which belongs to that Service (reason ClusterIp)"
        ]
    );
}

#[test]
fn nor_another_port_of_a_cluster_ip_nor_as_a_load_balancer_ip() {
    let objects = with(&[
        kubernetes(),
        objs![
            mk_service("aaa", "side")
                .type_("LoadBalancer")
                .cluster_ip("10.96.5.6")
                .port("alt", "TCP", 8443)
                .external_ips(&["10.96.0.1"])
                .lb_ingress("10.96.0.1"),
        ],
    ]);
    let index = check(
        objects,
        "node-a",
        "vs tcp 10.96.0.1|set SP-EXTERNAL|set SP-LOAD",
        &["vs tcp 10.96.0.1:443 rr -> 192.168.10.11:6443"],
    );
    let p = problems(&index);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].contains("external IP 10.96.0.1 is not served") && p[0].contains("ClusterIp"));
    assert!(
        p[1].contains("load balancer IP 10.96.0.1 is not served") && p[1].contains("ClusterIp")
    );
}

#[test]
fn a_cluster_ip_created_later_still_wins_and_a_deleted_one_frees_the_address() {
    let mut index = index_of(with(&[hijack(&["10.96.0.1"])]));
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.96.0.1",
        &["vs tcp 10.96.0.1:443 rr -> 10.244.3.66:8443"],
    );
    for o in kubernetes() {
        index.upsert(o);
    }
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.96.0.1",
        &["vs tcp 10.96.0.1:443 rr -> 192.168.10.11:6443"],
    );
    assert_same_as_fresh(&index, with(&[kubernetes(), hijack(&["10.96.0.1"])]));
    index.delete(&svc_key("default", "kubernetes"));
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.96.0.1",
        &["vs tcp 10.96.0.1:443 rr -> 10.244.3.66:8443"],
    );
    assert_eq!(problems(&index), Vec::<String>::new());
}

#[test]
fn the_unspecified_address_never_becomes_a_node_port_template() {
    for unspecified in ["0.0.0.0", "0.1.2.3"] {
        let index = check(
            with(&[kubernetes(), hijack(&[unspecified])]),
            "node-a",
            "vs tcp 192.168|vs tcp 0",
            &[],
        );
        assert!(
            index
                .node_state("node-a")
                .expect("node-a")
                .flatten()
                .virtual_servers()
                .all(|(k, _)| !k.address.is_unspecified()),
            "{unspecified}: a template without a NodePort"
        );
        let p = problems(&index);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("reason Unspecified"), "{p:#?}");
    }
}

#[test]
fn a_cluster_ip_that_is_the_unspecified_address_is_not_served_either() {
    let index = check(
        cluster(objs![
            mk_service("aaa", "zero")
                .cluster_ips(&["0.0.0.0", "fd00:96::5"])
                .port("https", "TCP", 443),
        ]),
        "node-a",
        "vs",
        &["vs tcp [fd00:96::5]:443 rr -> none"],
    );
    assert_eq!(
        problems(&index),
        [
            "Service aaa/zero: cluster IP 0.0.0.0 is not served: it is the unspecified address \
             (only NodePorts serve there) (reason Unspecified)"
        ]
    );
}

#[test]
fn another_nodes_address_is_refused_unless_allowed_and_then_never_bound() {
    let objects = || with(&[kubernetes(), hijack(&["192.168.10.12"])]);
    let index = check(
        objects(),
        "node-a",
        "vs tcp 192.168.10.12|addr|set SP-IPVS|set SP-EXTERNAL",
        &[
            "addr 10.96.0.1",
            "addr 10.96.5.5",
            "set SP-IPVS-IPS 10.96.0.1",
            "set SP-IPVS-IPS 10.96.5.5",
        ],
    );
    assert!(
        problems(&index)
            .iter()
            .any(|p| p.contains("external IP 192.168.10.12") && p.contains("reason NodeAddress")),
        "{:#?}",
        problems(&index)
    );
    let allowed = ComputeConfig {
        allow_node_external_ips: true,
        ..ComputeConfig::default()
    };
    // Served (its owner node answers: the address is local there already),
    // but bound nowhere and never in SP-IPVS-IPS, whose filter would
    // reject every other port of node-b.
    for node in ["node-a", "node-b", "node-c"] {
        let index = check_with(
            allowed.clone(),
            objects(),
            node,
            "vs tcp 192.168.10.12|addr|set SP-IPVS|set SP-EXTERNAL",
            &[
                "vs tcp 192.168.10.12:443 rr -> 10.244.3.66:8443",
                "set SP-EXTERNAL-IP 192.168.10.12,tcp:443",
                "addr 10.96.0.1",
                "addr 10.96.5.5",
                "set SP-IPVS-IPS 10.96.0.1",
                "set SP-IPVS-IPS 10.96.5.5",
            ],
        );
        assert_eq!(problems(&index), Vec::<String>::new());
    }
}

#[test]
fn each_reason_is_named() {
    let config = ComputeConfig {
        service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        external_ip_cidrs: vec!["203.0.113.0/24".parse().expect("cidr")],
        ..ComputeConfig::default()
    };
    let cases = [
        ("127.0.0.1", "Loopback"),
        ("169.254.169.254", "LinkLocal"),
        ("224.0.0.1", "Multicast"),
        ("255.255.255.255", "Broadcast"),
        ("10.100.0.5", "ServiceCidr"),
        ("10.244.1.50", "PodCidr"),
        ("198.51.100.1", "OutsideExternalIpCidrs"),
        ("::", "Unspecified"),
        ("::1", "Loopback"),
        ("fe80::1", "LinkLocal"),
        ("ff02::1", "Multicast"),
        ("::ffff:10.96.0.1", "Ipv4Mapped"),
    ];
    for (address, reason) in cases {
        let objects = cluster(objs![
            mk_service("aaa", "t")
                .cluster_ips(&["10.96.5.5", "fd00:96::5"])
                .port("https", "TCP", 443)
                .external_ips(&[address, "203.0.113.5"]),
        ]);
        let mut objects = objects;
        objects.push(
            mk_node("node-d", "", &["192.168.10.14"])
                .pod_cidrs(&["10.244.1.0/24"])
                .into(),
        );
        let index = check_with(
            config.clone(),
            objects,
            "node-a",
            "set SP-EXTERNAL|set SP6-EXTERNAL",
            &["set SP-EXTERNAL-IP 203.0.113.5,tcp:443"],
        );
        let p = problems(&index);
        assert_eq!(p.len(), 1, "{address}: {p:#?}");
        assert!(
            p[0].starts_with(&format!(
                "Service aaa/t: external IP {address} is not served: "
            )) && p[0].ends_with(&format!("(reason {reason})")),
            "{address}: {p:#?}"
        );
    }
}

#[test]
fn external_ip_cidrs_leave_load_balancer_ips_alone() {
    let config = ComputeConfig {
        external_ip_cidrs: vec!["203.0.113.0/24".parse().expect("cidr")],
        ..ComputeConfig::default()
    };
    let index = check_with(
        config,
        cluster(objs![
            mk_service("default", "lb")
                .type_("LoadBalancer")
                .cluster_ip("10.96.7.7")
                .port("http", "TCP", 80)
                .lb_ingress("198.51.100.9"),
        ]),
        "node-a",
        "set SP-LOAD-BALANCER ",
        &["set SP-LOAD-BALANCER 198.51.100.9,tcp:80"],
    );
    assert_eq!(problems(&index), Vec::<String>::new());
}

#[test]
fn problems_carry_their_reason_as_a_kind() {
    use setpoint_compute::admit::RefusalReason;
    use setpoint_compute::index::ProblemKind;
    let index = index_of(with(&[kubernetes(), hijack(&["10.96.0.1", "127.0.0.1"])]));
    let kinds: Vec<ProblemKind> = index.problems().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProblemKind::AddressRefused(RefusalReason::ClusterIp),
            ProblemKind::AddressRefused(RefusalReason::Loopback),
        ]
    );
}
