//! The incremental index against a fresh one: after any change, every
//! node's state is exactly what an index built from scratch computes, and
//! `commit` names the nodes whose state changed.

use std::collections::BTreeMap;

use crate::objs;
use crate::support::*;

fn names(outcome: &setpoint_compute::CommitOutcome) -> Vec<String> {
    outcome
        .changed_nodes
        .iter()
        .map(|n| n.to_string())
        .collect()
}

fn web(eps: &[(&str, &str)]) -> Vec<ClusterObject> {
    objs![
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", "TCP", 80),
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .eps(eps),
    ]
}

/// Applies `changes` to an index built from `before` and checks the result
/// against a fresh index over the same objects; returns the commit outcome.
fn apply(
    before: Vec<ClusterObject>,
    upserts: Vec<ClusterObject>,
    deletes: &[ObjectKey],
) -> (Index, Vec<String>) {
    let mut objects: BTreeMap<ObjectKey, ClusterObject> =
        before.into_iter().map(|o| (o.key(), o)).collect();
    let mut index = index_of(objects.values().cloned());
    for o in upserts {
        objects.insert(o.key(), o.clone());
        index.upsert(o);
    }
    for k in deletes {
        objects.remove(k);
        index.delete(k);
    }
    let outcome = index.commit();
    assert_same_as_fresh(&index, objects.into_values());
    (index, names(&outcome))
}

#[test]
fn changing_an_endpoint_of_a_cluster_ip_service_changes_every_node() {
    let before = cluster(web(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]));
    let after = web(&[("10.244.1.5", "node-a"), ("10.244.2.6", "node-b")]);
    let (index, changed) = apply(before, after, &[]);
    assert_eq!(changed, ["node-a", "node-b", "node-c"]);
    expect_lines(
        &index,
        "node-c",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.1.5:8080 10.244.2.6:8080"],
    );
}

#[test]
fn changing_an_itp_local_endpoint_on_one_node_changes_only_that_node() {
    let objects = |ip: &str| {
        objs![
            mk_service("monitoring", "node-exporter")
                .cluster_ip("10.96.20.30")
                .port("metrics", "TCP", 9100)
                .itp_local(),
            mk_slice("monitoring", "node-exporter", "IPv4")
                .port("metrics", "TCP", 9100)
                .eps(&[(ip, "node-a"), ("10.244.2.5", "node-b")]),
        ]
    };
    let (index, changed) = apply(cluster(objects("10.244.1.5")), objects("10.244.1.6"), &[]);
    assert_eq!(changed, ["node-a"]);
    expect_lines(
        &index,
        "node-a",
        "vs",
        &["vs tcp 10.96.20.30:9100 rr -> 10.244.1.6:9100"],
    );
}

#[test]
fn hairpin_only_change_touches_only_the_hosts() {
    // A not-ready endpoint on node-a comes and goes: the virtual server is
    // the same, only node-a's hairpin entry changes.
    let base = cluster(web(&[("10.244.2.5", "node-b")]));
    let upsert = objs![
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .ep(mk_ep("10.244.2.5").node("node-b"))
            .ep(mk_ep("10.244.1.9").node("node-a").not_ready())
    ];
    let (_, changed) = apply(base, upsert, &[]);
    assert_eq!(changed, ["node-a"]);
}

#[test]
fn deleting_a_service_withdraws_it_everywhere() {
    let (index, changed) = apply(
        cluster(web(&[("10.244.1.5", "node-a")])),
        vec![],
        &[svc_key("default", "web")],
    );
    assert_eq!(changed, ["node-a", "node-b", "node-c"]);
    expect_lines(&index, "node-a", "", &[]);
}

#[test]
fn deleting_the_slice_leaves_a_service_without_endpoints() {
    let (index, changed) = apply(
        cluster(web(&[("10.244.1.5", "node-a")])),
        vec![],
        &[slice_key("default", "web-ipv4")],
    );
    assert_eq!(changed, ["node-a", "node-b", "node-c"]);
    expect_lines(
        &index,
        "node-b",
        "vs|set SP-NO",
        &[
            "vs tcp 10.96.0.10:80 rr -> none",
            "set SP-NO-ENDPOINTS 10.96.0.10,tcp:80",
        ],
    );
}

#[test]
fn deleting_a_node_changes_no_other_node() {
    let (index, changed) = apply(
        cluster(web(&[("10.244.1.5", "node-a")])),
        vec![],
        &[node_key("node-a")],
    );
    assert_eq!(changed, Vec::<String>::new());
    assert!(index.node_state("node-a").is_none());
}

#[test]
fn deleting_a_node_with_pod_cidrs_changes_the_cluster_cidr_set_everywhere() {
    let (_, changed) = apply(
        objs![
            mk_node("node-a", "", &["192.168.10.11"]).pod_cidrs(&["10.244.1.0/24"]),
            mk_node("node-b", "", &["192.168.10.12"]).pod_cidrs(&["10.244.2.0/24"]),
        ],
        vec![],
        &[node_key("node-a")],
    );
    assert_eq!(changed, ["node-b"]);
}

#[test]
fn a_new_node_gets_the_node_ports() {
    let before = cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ip("10.96.1.20")
            .port("http", "TCP", 80)
            .node_port(30080),
        mk_slice("default", "echo", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a")]),
    ]);
    let (index, changed) = apply(
        before,
        objs![mk_node("node-d", "zone-2", &["192.168.10.14"])],
        &[],
    );
    assert_eq!(changed, ["node-d"]);
    expect_lines(
        &index,
        "node-d",
        "vs tcp 192",
        &["vs tcp 192.168.10.14:30080 rr -> 10.244.1.5:8080"],
    );
}

#[test]
fn a_node_changing_address_moves_its_node_ports() {
    let before = cluster(objs![
        mk_service("default", "echo")
            .type_("NodePort")
            .cluster_ip("10.96.1.20")
            .port("http", "TCP", 80)
            .node_port(30080),
    ]);
    let (index, changed) = apply(
        before,
        objs![mk_node("node-c", "zone-2", &["192.168.10.23"])],
        &[],
    );
    assert_eq!(changed, ["node-c"]);
    expect_lines(
        &index,
        "node-c",
        "vs tcp 192",
        &["vs tcp 192.168.10.23:30080 rr -> none"],
    );
}

#[test]
fn re_upserting_unchanged_objects_changes_nothing() {
    let objects = cluster(web(&[("10.244.1.5", "node-a")]));
    let mut index = index_of(objects.clone());
    for o in objects {
        index.upsert(o);
    }
    let outcome = index.commit();
    assert_eq!(names(&outcome), Vec::<String>::new());
    assert_eq!(index.commit(), Default::default());
}

fn zone_hinted_catalog() -> Vec<ClusterObject> {
    objs![
        mk_service("shop", "catalog")
            .cluster_ip("10.96.10.50")
            .port("http", "TCP", 80),
        mk_slice("shop", "catalog", "IPv4")
            .port("http", "TCP", 8080)
            .ep(mk_ep("10.244.1.5").node("node-a").zone_hints(&["zone-1"]))
            .ep(mk_ep("10.244.3.5").node("node-c").zone_hints(&["zone-2"])),
    ]
}

#[test]
fn a_node_in_a_new_zone_gets_the_zone_aware_virtual_servers() {
    let (index, changed) = apply(
        cluster(zone_hinted_catalog()),
        objs![mk_node("node-d", "zone-3", &["192.168.10.14"])],
        &[],
    );
    assert!(changed.contains(&"node-d".to_string()), "{changed:?}");
    expect_lines(
        &index,
        "node-d",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.1.5:8080 10.244.3.5:8080"],
    );
}

#[test]
fn a_node_moving_to_another_known_zone_follows_its_hints() {
    let (index, changed) = apply(
        cluster(zone_hinted_catalog()),
        objs![mk_node(
            "node-b",
            "zone-2",
            &["192.168.10.12", "fd00:10::12"]
        )],
        &[],
    );
    assert_eq!(changed, ["node-b"]);
    expect_lines(
        &index,
        "node-b",
        "vs",
        &["vs tcp 10.96.10.50:80 rr -> 10.244.3.5:8080"],
    );
}

#[test]
fn an_address_listed_twice_by_one_service_is_unbound_when_the_service_goes() {
    // The load balancer IP is also listed as an external IP: the plan
    // contributes its address (and SP-IPVS-IPS entry) twice.
    let svc = |external: &[&str]| {
        mk_service("default", "gw")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .external_ips(external)
            .lb_ingress("203.0.113.10")
    };
    let mut index = index_of(cluster(objs![svc(&["203.0.113.10"])]));
    index.upsert(svc(&[]).into());
    index.commit();
    assert_same_as_fresh(&index, cluster(objs![svc(&[])]));
    index.delete(&svc_key("default", "gw"));
    index.commit();
    assert_same_as_fresh(&index, nodes());
}

#[test]
fn a_hairpin_entry_shared_by_two_ports_goes_with_the_service() {
    // Two service ports target the same endpoint port: one hairpin entry,
    // contributed twice by the plan.
    let svc = |second: bool| {
        let s = mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", "TCP", 80);
        if second {
            s.port("alt", "TCP", 8000)
        } else {
            s
        }
    };
    let slice = |second: bool| {
        let s = mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a")]);
        if second {
            s.port("alt", "TCP", 8080)
        } else {
            s
        }
    };
    let mut index = index_of(cluster(objs![svc(true), slice(true)]));
    index.upsert(svc(false).into());
    index.upsert(slice(false).into());
    index.commit();
    index.delete(&svc_key("default", "web"));
    index.commit();
    assert_same_as_fresh(&index, cluster(objs![slice(false)]));
}

#[test]
fn problems_follow_their_objects() {
    let bad = mk_service("default", "bad")
        .cluster_ip("10.96.0.300")
        .port("http", "TCP", 80);
    let (mut index, _) = apply(nodes(), objs![bad], &[]);
    assert_eq!(problems(&index).len(), 1);
    index.delete(&svc_key("default", "bad"));
    index.commit();
    assert_eq!(problems(&index), Vec::<String>::new());
}
