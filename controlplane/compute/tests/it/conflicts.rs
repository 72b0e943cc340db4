//! Two Services claiming one frontend: the lower `namespace/name` keeps
//! it, the other gets a Problem and keeps its other frontends.

use crate::objs;
use crate::support::*;

fn svc(ns: &str, name: &str, ip: &str, port: i32) -> SvcB {
    mk_service(ns, name)
        .cluster_ip(ip)
        .port("http", "TCP", port)
}

fn slice(ns: &str, name: &str, ep: &str) -> SliceB {
    mk_slice(ns, name, "IPv4")
        .port("http", "TCP", 8080)
        .eps(&[(ep, "node-c")])
}

/// `default/b` first, so the winner does not depend on the order of upserts.
fn pair() -> Vec<ClusterObject> {
    cluster(objs![
        svc("default", "b", "10.96.0.10", 80).port("other", "TCP", 81),
        slice("default", "b", "10.244.3.2").port("other", "TCP", 8081),
        svc("default", "a", "10.96.0.10", 80),
        slice("default", "a", "10.244.3.1"),
    ])
}

#[test]
fn lower_name_keeps_a_shared_cluster_ip_port() {
    let index = check(
        pair(),
        "node-a",
        "vs|set SP-CLUSTER-IP",
        &[
            "vs tcp 10.96.0.10:80 rr -> 10.244.3.1:8080",
            "vs tcp 10.96.0.10:81 rr -> 10.244.3.2:8081",
            "set SP-CLUSTER-IP 10.96.0.10,tcp:80",
            "set SP-CLUSTER-IP 10.96.0.10,tcp:81",
        ],
    );
    assert_eq!(
        problems(&index),
        [
            "Service default/b: 10.96.0.10:80/tcp is also claimed by Service default/a, which keeps it"
        ]
    );
}

#[test]
fn namespace_orders_before_name() {
    let objects = cluster(objs![
        svc("bbb", "a", "10.96.0.10", 80),
        slice("bbb", "a", "10.244.3.2"),
        svc("aaa", "z", "10.96.0.10", 80),
        slice("aaa", "z", "10.244.3.1"),
    ]);
    let index = check(
        objects,
        "node-b",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.3.1:8080"],
    );
    assert_eq!(problems(&index).len(), 1);
    assert!(problems(&index)[0].starts_with("Service bbb/a:"));
}

#[test]
fn deleting_the_winner_lets_the_other_take_over() {
    let mut index = index_of(pair());
    index.delete(&svc_key("default", "a"));
    let outcome = index.commit();
    assert_eq!(outcome.changed_nodes.len(), 3);
    expect_lines(
        &index,
        "node-a",
        "vs",
        &[
            "vs tcp 10.96.0.10:80 rr -> 10.244.3.2:8080",
            "vs tcp 10.96.0.10:81 rr -> 10.244.3.2:8081",
        ],
    );
    assert_eq!(problems(&index), Vec::<String>::new());
    let mut rest = pair();
    rest.retain(|o| o.key() != svc_key("default", "a"));
    assert_same_as_fresh(&index, rest);
}

#[test]
fn winner_moving_away_releases_the_frontend() {
    let mut index = index_of(pair());
    index.upsert(svc("default", "a", "10.96.0.11", 80).into());
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.96.0.10:80",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.3.2:8080"],
    );
    assert_eq!(problems(&index), Vec::<String>::new());
}

#[test]
fn a_new_winner_takes_the_frontend_from_an_existing_service() {
    let mut index = index_of(cluster(objs![
        svc("default", "b", "10.96.0.10", 80),
        slice("default", "b", "10.244.3.2"),
    ]));
    expect_lines(
        &index,
        "node-a",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.3.2:8080"],
    );
    index.upsert(svc("default", "a", "10.96.0.10", 80).into());
    index.upsert(slice("default", "a", "10.244.3.1").into());
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs",
        &["vs tcp 10.96.0.10:80 rr -> 10.244.3.1:8080"],
    );
    assert_eq!(problems(&index).len(), 1);
}

#[test]
fn same_cluster_ip_on_different_ports_is_no_conflict() {
    let objects = cluster(objs![
        svc("default", "a", "10.96.0.10", 80),
        svc("default", "b", "10.96.0.10", 81),
    ]);
    let index = check(
        objects,
        "node-a",
        "vs|addr",
        &[
            "vs tcp 10.96.0.10:80 rr -> none",
            "vs tcp 10.96.0.10:81 rr -> none",
            "addr 10.96.0.10",
        ],
    );
    assert_eq!(problems(&index), Vec::<String>::new());
}

#[test]
fn shared_address_stays_bound_until_its_last_service_goes() {
    let mut index = index_of(cluster(objs![
        svc("default", "a", "10.96.0.10", 80),
        svc("default", "b", "10.96.0.10", 81),
    ]));
    index.delete(&svc_key("default", "a"));
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "addr|set SP-IPVS",
        &["addr 10.96.0.10", "set SP-IPVS-IPS 10.96.0.10"],
    );
    index.delete(&svc_key("default", "b"));
    index.commit();
    expect_lines(&index, "node-a", "", &[]);
}

#[test]
fn same_node_port_in_two_services() {
    let objects = cluster(objs![
        svc("default", "b", "10.96.0.11", 80)
            .type_("NodePort")
            .node_port(30080),
        slice("default", "b", "10.244.3.2"),
        svc("default", "a", "10.96.0.10", 80)
            .type_("NodePort")
            .node_port(30080),
        slice("default", "a", "10.244.3.1"),
    ]);
    let index = check(
        objects,
        "node-a",
        "vs tcp 192",
        &["vs tcp 192.168.10.11:30080 rr -> 10.244.3.1:8080"],
    );
    assert_eq!(
        problems(&index),
        [
            "Service default/b: nodePort 30080/tcp (inet) is also claimed by Service default/a, which keeps it"
        ]
    );
}

#[test]
fn a_new_winner_takes_a_node_port_from_an_existing_service() {
    let b = || {
        objs![
            svc("default", "b", "10.96.0.11", 80)
                .type_("NodePort")
                .node_port(30080),
            slice("default", "b", "10.244.3.2"),
        ]
    };
    let a = || {
        objs![
            svc("default", "a", "10.96.0.10", 80)
                .type_("NodePort")
                .node_port(30080),
            slice("default", "a", "10.244.3.1"),
        ]
    };
    let mut index = index_of(cluster(b()));
    for o in a() {
        index.upsert(o);
    }
    index.commit();
    expect_lines(
        &index,
        "node-a",
        "vs tcp 192",
        &["vs tcp 192.168.10.11:30080 rr -> 10.244.3.1:8080"],
    );
    let mut all = cluster(b());
    all.extend(a());
    assert_same_as_fresh(&index, all);
}
