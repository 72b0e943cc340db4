//! Scheduler and persistence of virtual servers: sessionAffinity, the
//! `setpoint.io/ipvs-scheduler` annotation and the configured default.

use setpoint_dataplane::Scheduler;

use crate::objs;
use crate::support::*;

fn objects(svc: SvcB) -> Vec<ClusterObject> {
    cluster(objs![
        svc.cluster_ip("10.96.10.30").port("http", "TCP", 80),
        mk_slice("shop", "checkout", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.1.5", "node-a")]),
    ])
}

fn checkout() -> SvcB {
    mk_service("shop", "checkout")
}

#[test]
fn virtual_server_settings_table() {
    let table: Vec<(&str, SvcB, &str)> = vec![
        ("no affinity, no annotation", checkout(), "rr ->"),
        (
            "ClientIP with timeout",
            checkout().affinity(Some(1800)),
            "rr persist 1800 ->",
        ),
        (
            "ClientIP default timeout",
            checkout().affinity(None),
            "rr persist 10800 ->",
        ),
        ("wrr annotation", checkout().scheduler("wrr"), "wrr ->"),
        ("lc annotation", checkout().scheduler("lc"), "lc ->"),
        (
            "annotation with spaces",
            checkout().scheduler(" sh "),
            "sh ->",
        ),
        (
            "annotation and affinity",
            checkout().scheduler("mh").affinity(Some(60)),
            "mh persist 60 ->",
        ),
    ];
    for (what, svc, settings) in table {
        let index = index_of(objects(svc));
        let lines = filtered(render(&state_of(&index, "node-b")), "vs");
        assert_eq!(
            lines,
            [format!("vs tcp 10.96.10.30:80 {settings} 10.244.1.5:8080")],
            "{what}"
        );
        assert_eq!(problems(&index), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn unknown_scheduler_uses_the_default_and_reports_a_problem() {
    let index = check(
        objects(checkout().scheduler("fastest")),
        "node-a",
        "vs",
        &["vs tcp 10.96.10.30:80 rr -> 10.244.1.5:8080"],
    );
    let problems: Vec<_> = index.problems().collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(!problems[0].skipped, "the Service must still be proxied");
    assert_eq!(problems[0].object, svc_key("shop", "checkout"));
    assert!(
        problems[0].rejection.reason.contains("fastest"),
        "{problems:#?}"
    );
}

#[test]
fn default_scheduler_comes_from_the_config() {
    let config = ComputeConfig {
        default_scheduler: Scheduler::Lc,
        ..Default::default()
    };
    check_with(
        config.clone(),
        objects(checkout()),
        "node-a",
        "vs",
        &["vs tcp 10.96.10.30:80 lc -> 10.244.1.5:8080"],
    );
    check_with(
        config.clone(),
        objects(checkout().scheduler("bogus")),
        "node-a",
        "vs",
        &["vs tcp 10.96.10.30:80 lc -> 10.244.1.5:8080"],
    );
    // The annotation wins over the default.
    check_with(
        config,
        objects(checkout().scheduler("sed")),
        "node-a",
        "vs",
        &["vs tcp 10.96.10.30:80 sed -> 10.244.1.5:8080"],
    );
}

#[test]
fn affinity_timeout_out_of_range_skips_the_service() {
    for timeout in [0, 86401, -5] {
        let index = check(
            objects(checkout().affinity(Some(timeout))),
            "node-a",
            "vs",
            &[],
        );
        let p = problems(&index);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("skipped Service shop/checkout: sessionAffinity timeout"),
            "{p:?}"
        );
    }
}
