//! One Service never stops the fleet: a Service over its budget, or whose
//! atoms would make a node's state invalid, is left out alone with a
//! problem; every other Service is computed, and every state the index
//! leaves passes `validate`.

use setpoint_compute::admit::LeftOutReason;
use setpoint_compute::index::ProblemKind;

use crate::objs;
use crate::support::*;

fn neighbour() -> Vec<ClusterObject> {
    objs![
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", "TCP", 80)
            .port("metrics", "TCP", 9090),
        mk_slice("default", "web", "IPv4")
            .port("http", "TCP", 8080)
            .port("metrics", "TCP", 9090)
            .eps(&[("10.244.1.5", "node-a")]),
    ]
}

/// `aaa/big` (sorting first) with `ports` ports on one cluster IP.
fn big(ports: i32) -> SvcB {
    (0..ports).fold(
        mk_service("aaa", "big").cluster_ip("10.96.0.20"),
        |svc, i| svc.port(&format!("p{i}"), "TCP", 1000 + i),
    )
}

fn left_out(index: &Index) -> Vec<(String, LeftOutReason)> {
    index
        .problems()
        .filter_map(|p| match p.kind {
            ProblemKind::LeftOut(reason) => Some((p.object.to_string(), reason)),
            _ => None,
        })
        .collect()
}

/// The index over `objects`, asserting that on `node` only the
/// neighbour's virtual servers are served and `aaa/big` is left out for
/// `reason`.
#[track_caller]
fn big_left_out(
    config: ComputeConfig,
    objects: Vec<ClusterObject>,
    node: &str,
    reason: LeftOutReason,
) -> Index {
    let index = check_with(
        config,
        objects,
        node,
        "vs",
        &[
            "vs tcp 10.96.0.10:80 rr -> 10.244.1.5:8080",
            "vs tcp 10.96.0.10:9090 rr -> 10.244.1.5:9090",
        ],
    );
    assert_eq!(left_out(&index), [("Service/aaa/big".to_string(), reason)]);
    index
}

#[track_caller]
fn all_valid(index: &Index) {
    assert!(
        index.invalid_nodes().is_empty(),
        "{:?}",
        index.invalid_nodes()
    );
    for name in index.node_names() {
        let state = index.node_state(name).expect("state");
        assert_eq!(state.validate(), Vec::new(), "node {name}");
    }
}

#[test]
fn a_service_over_its_frontend_budget_is_left_out_alone() {
    let config = ComputeConfig {
        max_service_frontends: 4,
        ..ComputeConfig::default()
    };
    let mut objects = cluster(neighbour());
    objects.push(big(5).external_ips(&["203.0.113.5"]).into());
    let index = big_left_out(config, objects, "node-b", LeftOutReason::TooManyFrontends);
    assert_eq!(
        problems(&index),
        [
            "skipped Service aaa/big: left out: 10 frontends (ports × addresses, plus NodePorts) \
          are more than the budget of 4 (--max-service-frontends)"
        ]
    );
}

#[test]
fn a_service_over_its_endpoint_budget_is_left_out_alone() {
    let config = ComputeConfig {
        max_service_endpoints: 2,
        ..ComputeConfig::default()
    };
    let mut objects = cluster(neighbour());
    objects.extend(objs![
        big(1),
        mk_slice("aaa", "big", "IPv4")
            .name("big-1")
            .port("p0", "TCP", 80)
            .eps(&[("10.244.1.7", "node-a"), ("10.244.2.7", "node-b")]),
        mk_slice("aaa", "big", "IPv4")
            .name("big-2")
            .port("p0", "TCP", 80)
            .eps(&[("10.244.3.7", "node-c")]),
    ]);
    let mut index = big_left_out(config, objects, "node-a", LeftOutReason::TooManyEndpoints);
    // One slice fewer: within budget again.
    index.delete(&slice_key("aaa", "big-2"));
    index.commit();
    assert_eq!(left_out(&index), []);
    expect_lines(
        &index,
        "node-a",
        "vs tcp 10.96.0.20",
        &["vs tcp 10.96.0.20:1000 rr -> 10.244.1.7:80 10.244.2.7:80"],
    );
}

/// Sets hold 6 entries here: `web` has 2 cluster IP frontends, `aaa/big`
/// 5; together they overfill SP-CLUSTER-IP (and SP-NO-ENDPOINTS).
fn tiny_sets() -> ComputeConfig {
    ComputeConfig {
        set_max_elements: 6,
        ..ComputeConfig::default()
    }
}

#[test]
fn a_service_that_overfills_a_set_is_left_out_and_its_neighbour_committed() {
    let mut objects = cluster(neighbour());
    objects.push(big(5).into());
    let index = check_with(
        tiny_sets(),
        objects,
        "node-c",
        "set SP-CLUSTER-IP",
        &[
            "set SP-CLUSTER-IP 10.96.0.10,tcp:80",
            "set SP-CLUSTER-IP 10.96.0.10,tcp:9090",
        ],
    );
    assert_eq!(
        left_out(&index),
        [("Service/aaa/big".to_string(), LeftOutReason::InvalidState)]
    );
    let p = problems(&index);
    assert!(
        p[0].starts_with("skipped Service aaa/big: left out: its 5 entries in set SP-"),
        "{p:#?}"
    );
    all_valid(&index);
}

#[test]
fn a_left_out_service_comes_back_when_it_fits_and_incremental_equals_fresh() {
    let objects = |with_web: bool| {
        let mut o = nodes();
        if with_web {
            o.extend(neighbour());
        }
        o.push(big(5).into());
        o
    };
    // Big first, then the neighbour arrives: the larger contributor goes,
    // whichever came first, as a fresh index decides.
    let mut index = index_with(tiny_sets(), objects(false));
    assert_eq!(left_out(&index), []);
    for o in neighbour() {
        index.upsert(o);
    }
    index.commit();
    let fresh = index_with(tiny_sets(), objects(true));
    assert_eq!(problems(&index), problems(&fresh));
    for name in fresh.node_names() {
        assert_eq!(
            index.node_state(name).expect("state").digest(),
            fresh.node_state(name).expect("state").digest(),
            "{name}"
        );
    }
    all_valid(&index);
    index.delete(&svc_key("default", "web"));
    index.commit();
    assert_eq!(left_out(&index), []);
    expect_lines(
        &index,
        "node-a",
        "set SP-CLUSTER-IP 10.96.0.20,tcp:1000",
        &["set SP-CLUSTER-IP 10.96.0.20,tcp:1000"],
    );
    all_valid(&index);
}

fn allow_node_ips() -> ComputeConfig {
    ComputeConfig {
        allow_node_external_ips: true,
        ..ComputeConfig::default()
    }
}

/// `aaa/ext` serves node-a's address on port 30080 (allowed); `np` has
/// NodePort 30080, which node-a serves on that address too.
fn ext() -> Vec<ClusterObject> {
    objs![
        mk_service("aaa", "ext")
            .cluster_ip("10.96.0.30")
            .port("http", "TCP", 30080)
            .external_ips(&["192.168.10.11"]),
    ]
}

fn np() -> Vec<ClusterObject> {
    objs![
        mk_service("default", "np")
            .type_("NodePort")
            .cluster_ip("10.96.0.31")
            .port("http", "TCP", 80)
            .node_port(30080),
        mk_slice("default", "np", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.2.9", "node-b")]),
    ]
}

#[test]
fn a_node_address_external_ip_on_a_node_port_is_left_out_whichever_came_first() {
    for (first, second) in [(ext(), np()), (np(), ext())] {
        let mut index = index_with(allow_node_ips(), cluster(first.clone()));
        for o in second.clone() {
            index.upsert(o);
        }
        index.commit();
        assert_eq!(
            left_out(&index),
            [("Service/aaa/ext".to_string(), LeftOutReason::InvalidState)]
        );
        all_valid(&index);
        assert_same_as_fresh(&index, cluster([first, second].concat()));
    }
}

#[test]
fn a_node_address_external_ip_on_a_node_port_is_left_out() {
    let index = check_with(
        allow_node_ips(),
        cluster([ext(), np()].concat()),
        "node-a",
        "vs tcp 192.168.10.11",
        &["vs tcp 192.168.10.11:30080 rr -> 10.244.2.9:8080"],
    );
    assert_eq!(
        left_out(&index),
        [("Service/aaa/ext".to_string(), LeftOutReason::InvalidState)]
    );
    all_valid(&index);
}

#[test]
fn a_service_left_out_again_changes_no_node() {
    let mut objects = cluster(neighbour());
    objects.push(big(5).into());
    let mut index = index_with(tiny_sets(), objects);
    assert_eq!(left_out(&index).len(), 1);
    // Any change gives it another chance; left out again, it leaves every
    // node as it was.
    index.upsert(
        mk_service("default", "headless")
            .cluster_ip("None")
            .port("http", "TCP", 80)
            .into(),
    );
    let outcome = index.commit();
    assert_eq!(left_out(&index).len(), 1);
    assert!(
        outcome.changed_nodes.is_empty(),
        "{:?}",
        outcome.changed_nodes
    );
    assert!(outcome.replanned_services >= 2, "it was planned again");
}
