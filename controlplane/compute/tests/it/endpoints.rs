//! Which endpoints become real servers: ready ones, else serving and
//! terminating ones; ports come from the slice port of the same name and
//! protocol; hairpin entries live on the endpoint's node only.

use crate::objs;
use crate::support::*;

fn svc() -> SvcB {
    mk_service("shop", "payments")
        .cluster_ip("10.96.10.40")
        .port("http", "TCP", 80)
}

fn slice() -> SliceB {
    mk_slice("shop", "payments", "IPv4").port("http", "TCP", 8080)
}

fn vs_of(endpoints: Vec<EpB>) -> Vec<String> {
    let slice = endpoints.into_iter().fold(slice(), SliceB::ep);
    let index = index_of(cluster(objs![svc(), slice]));
    filtered(render(&state_of(&index, "node-c")), "vs|set SP-NO-")
}

#[test]
fn endpoint_selection_table() {
    let table: Vec<(&str, Vec<EpB>, &[&str])> = vec![
        (
            "only ready endpoints",
            vec![
                mk_ep("10.244.1.5"),
                mk_ep("10.244.1.6").not_ready(),
                mk_ep("10.244.1.7").draining(),
            ],
            &["vs tcp 10.96.10.40:80 rr -> 10.244.1.5:8080"],
        ),
        (
            "serving and terminating when none is ready",
            vec![
                mk_ep("10.244.1.6").not_ready(),
                mk_ep("10.244.1.7").draining(),
                mk_ep("10.244.1.8").draining(),
            ],
            &["vs tcp 10.96.10.40:80 rr -> 10.244.1.7:8080 10.244.1.8:8080"],
        ),
        (
            "terminating but not serving is never used",
            vec![
                mk_ep("10.244.1.7")
                    .ready(false)
                    .serving(false)
                    .terminating(true),
            ],
            &[
                "vs tcp 10.96.10.40:80 rr -> none",
                "set SP-NO-ENDPOINTS 10.96.10.40,tcp:80",
            ],
        ),
        (
            "serving but neither ready nor terminating is not used",
            vec![
                mk_ep("10.244.1.7")
                    .ready(false)
                    .serving(true)
                    .terminating(false),
            ],
            &[
                "vs tcp 10.96.10.40:80 rr -> none",
                "set SP-NO-ENDPOINTS 10.96.10.40,tcp:80",
            ],
        ),
        (
            "no condition at all means ready",
            vec![{
                let mut ep = mk_ep("10.244.1.9");
                ep.0.conditions = None;
                ep
            }],
            &["vs tcp 10.96.10.40:80 rr -> 10.244.1.9:8080"],
        ),
        (
            "all not ready: no endpoints",
            vec![mk_ep("10.244.1.6").not_ready()],
            &[
                "vs tcp 10.96.10.40:80 rr -> none",
                "set SP-NO-ENDPOINTS 10.96.10.40,tcp:80",
            ],
        ),
    ];
    for (what, endpoints, expected) in table {
        let actual = vs_of(endpoints);
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(actual, want, "{what}");
    }
}

#[test]
fn endpoint_port_is_matched_by_name_and_protocol() {
    let objects = cluster(objs![
        mk_service("kube-system", "dns")
            .cluster_ip("10.96.0.10")
            .port("dns", "UDP", 53)
            .port("dns-tcp", "TCP", 53)
            .port("metrics", "TCP", 9153),
        // `metrics` exists in the slice, but for UDP only.
        mk_slice("kube-system", "dns", "IPv4")
            .port("dns-tcp", "TCP", 5354)
            .port("metrics", "UDP", 9153)
            .port("dns", "UDP", 5353)
            .eps(&[("10.244.2.5", "node-b")]),
    ]);
    check(
        objects,
        "node-a",
        "vs|set SP-NO-",
        &[
            "vs udp 10.96.0.10:53 rr -> 10.244.2.5:5353",
            "vs tcp 10.96.0.10:53 rr -> 10.244.2.5:5354",
            "vs tcp 10.96.0.10:9153 rr -> none",
            "set SP-NO-ENDPOINTS 10.96.0.10,tcp:9153",
        ],
    );
}

#[test]
fn endpoints_of_several_slices_are_merged_and_a_duplicate_keeps_its_ready_copy() {
    let objects = cluster(objs![
        svc(),
        slice()
            .name("payments-1")
            .ep(mk_ep("10.244.1.5"))
            .ep(mk_ep("10.244.2.5")),
        slice()
            .name("payments-2")
            .ep(mk_ep("10.244.1.5").draining())
            .ep(mk_ep("10.244.3.5")),
        // A slice of another Service contributes nothing here.
        mk_slice("shop", "cart", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.3.9", "node-c")]),
    ]);
    check(
        objects,
        "node-a",
        "vs",
        &["vs tcp 10.96.10.40:80 rr -> 10.244.1.5:8080 10.244.2.5:8080 10.244.3.5:8080"],
    );
}

#[test]
fn slice_in_another_namespace_does_not_feed_the_service() {
    let objects = cluster(objs![
        svc(),
        mk_slice("default", "payments", "IPv4")
            .port("http", "TCP", 8080)
            .eps(&[("10.244.3.9", "node-c")]),
    ]);
    check(
        objects,
        "node-a",
        "vs",
        &["vs tcp 10.96.10.40:80 rr -> none"],
    );
}

#[test]
fn fqdn_slice_and_slice_without_service_label_are_ignored() {
    let mut unlabelled = slice().name("stray").eps(&[("10.244.3.9", "node-c")]);
    unlabelled.0.metadata.labels = None;
    let objects = cluster(objs![
        svc(),
        mk_slice("shop", "payments", "FQDN")
            .port("http", "TCP", 8080)
            .ep(mk_ep("payments.example.com")),
        unlabelled,
    ]);
    let index = check(
        objects,
        "node-a",
        "vs",
        &["vs tcp 10.96.10.40:80 rr -> none"],
    );
    let ignored: Vec<String> = index.ignored().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        ignored,
        [
            "EndpointSlice/shop/payments-fqdn",
            "EndpointSlice/shop/stray"
        ]
    );
    assert_eq!(problems(&index), Vec::<String>::new());
}

#[test]
fn hairpin_entries_only_on_the_endpoint_node() {
    let objects = || {
        cluster(objs![
            svc(),
            slice().eps(&[
                ("10.244.1.5", "node-a"),
                ("10.244.1.6", "node-a"),
                ("10.244.3.5", "node-c"),
            ]),
        ])
    };
    let filter = "set SP-LOOP-BACK";
    check(
        objects(),
        "node-a",
        filter,
        &[
            "set SP-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
            "set SP-LOOP-BACK 10.244.1.6,tcp:8080,10.244.1.6",
        ],
    );
    check(objects(), "node-b", filter, &[]);
    check(
        objects(),
        "node-c",
        filter,
        &["set SP-LOOP-BACK 10.244.3.5,tcp:8080,10.244.3.5"],
    );
}
