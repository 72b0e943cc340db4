//! Services Setpoint deliberately leaves alone: they produce nothing, are
//! no problem, and are listed by `Index::ignored`.

use crate::objs;
use crate::support::*;

fn with_slice(svc: SvcB) -> Vec<ClusterObject> {
    cluster(objs![
        svc.port("http", "TCP", 80),
        mk_slice("shop", "redis", "IPv4")
            .port("http", "TCP", 6379)
            .eps(&[("10.244.1.5", "node-a")]),
    ])
}

#[test]
fn ignored_services_table() {
    let redis = || mk_service("shop", "redis");
    let table: Vec<(&str, SvcB, &str)> = vec![
        ("headless", redis().cluster_ip("None"), "headless"),
        ("no cluster IP", redis(), "headless"),
        (
            "headless label",
            redis()
                .cluster_ip("10.96.10.80")
                .label("service.kubernetes.io/headless", ""),
            "headless",
        ),
        (
            "ExternalName",
            redis().type_("ExternalName").cluster_ip("10.96.10.80"),
            "ExternalName",
        ),
        (
            "another service proxy",
            redis()
                .cluster_ip("10.96.10.80")
                .label("service.kubernetes.io/service-proxy-name", "other"),
            "labelled for another service proxy",
        ),
    ];
    for (what, svc, why) in table {
        // Nothing at all but the hairpin-free base: no lines.
        let index = check(with_slice(svc), "node-a", "", &[]);
        let ignored: Vec<(String, &str)> = index
            .ignored()
            .map(|(k, why)| (k.to_string(), *why))
            .collect();
        assert_eq!(ignored, [("Service/shop/redis".to_string(), why)], "{what}");
        assert_eq!(problems(&index), Vec::<String>::new(), "{what}");
        assert_eq!(index.service_count(), 0, "{what}");
    }
}

#[test]
fn slice_of_another_service_proxy_is_ignored() {
    let objects = cluster(objs![
        mk_service("shop", "redis")
            .cluster_ip("10.96.10.80")
            .port("http", "TCP", 80),
        mk_slice("shop", "redis", "IPv4")
            .label("service.kubernetes.io/service-proxy-name", "other")
            .port("http", "TCP", 6379)
            .eps(&[("10.244.1.5", "node-a")]),
    ]);
    let index = check(
        objects,
        "node-a",
        "vs",
        &["vs tcp 10.96.10.80:80 rr -> none"],
    );
    let ignored: Vec<String> = index.ignored().map(|(k, _)| k.to_string()).collect();
    assert_eq!(ignored, ["EndpointSlice/shop/redis-ipv4"]);
}

#[test]
fn a_service_that_becomes_ignored_is_withdrawn() {
    let mut index = index_of(with_slice(
        mk_service("shop", "redis").cluster_ip("10.96.10.80"),
    ));
    expect_lines(
        &index,
        "node-a",
        "vs",
        &["vs tcp 10.96.10.80:80 rr -> 10.244.1.5:6379"],
    );
    index.upsert(
        mk_service("shop", "redis")
            .cluster_ip("None")
            .port("http", "TCP", 80)
            .into(),
    );
    index.commit();
    expect_lines(&index, "node-a", "", &[]);
    assert_eq!(index.ignored().count(), 1);
}
