//! The example cluster of `deploy/examples` (see its README), loaded with
//! setpoint-source: every Service type it exercises ends up as described.

use std::path::Path;

use crate::support::*;

fn example_objects() -> Vec<ClusterObject> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let report = setpoint_source::load_path(&dir).expect("deploy/examples loads");
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
    report.objects
}

#[test]
fn examples_compute_without_problems() {
    let index = index_of(example_objects());
    assert_eq!(problems(&index), Vec::<String>::new());
    let ignored: Vec<String> = index
        .ignored()
        .map(|(k, why)| format!("{k}: {why}"))
        .collect();
    assert_eq!(
        ignored,
        [
            "EndpointSlice/kube-system/mesh-gateway-2cvzr: labelled for another service proxy",
            "Service/kube-system/mesh-gateway: labelled for another service proxy",
            "Service/shop/payment-provider: ExternalName",
            "Service/shop/redis: headless",
        ]
    );
    let nodes: Vec<String> = index.node_names().map(|n| n.to_string()).collect();
    assert_eq!(nodes, ["node-a", "node-b", "node-c"]);
    for node in &nodes {
        state_of(&index, node);
    }
}

#[test]
fn examples_services_table() {
    let index = index_of(example_objects());
    let table: &[(&str, &str, &[&str])] = &[
        // API server behind a selector-less Service, numeric targetPort.
        (
            "node-b",
            "vs tcp 10.96.0.1:",
            &["vs tcp 10.96.0.1:443 rr -> 192.168.10.11:6443"],
        ),
        // Same port on UDP and TCP, plus metrics.
        (
            "node-b",
            "vs tcp 10.96.0.10:|vs udp 10.96.0.10:",
            &[
                "vs tcp 10.96.0.10:53 rr -> 10.244.1.2:53 10.244.2.2:53",
                "vs tcp 10.96.0.10:9153 rr -> 10.244.1.2:9153 10.244.2.2:9153",
                "vs udp 10.96.0.10:53 rr -> 10.244.1.2:53 10.244.2.2:53",
            ],
        ),
        // Ignored Service: nothing at its cluster IP.
        ("node-a", "vs tcp 10.96.0.50|addr 10.96.0.50", &[]),
        // LoadBalancer, externalTrafficPolicy Local, no endpoint on node-c.
        (
            "node-a",
            "vs tcp 203.0.113.10:|vs tcp 192.168.10.11:30",
            &[
                "vs tcp 192.168.10.11:30080 rr -> 10.244.1.21:8080 10.244.3.21:8080",
                "vs tcp 192.168.10.11:30300 rr -> 10.244.2.30:3000",
                "vs tcp 192.168.10.11:30443 rr -> 10.244.1.20:8443",
                "vs tcp 192.168.10.11:30880 rr -> 10.244.1.20:8080",
                "vs tcp 203.0.113.10:443 rr -> 10.244.1.20:8443",
                "vs tcp 203.0.113.10:80 rr -> 10.244.1.20:8080",
            ],
        ),
        (
            "node-c",
            "set SP-NO-LOCAL|set SP-HEALTH",
            &[
                "set SP-HEALTH-CHECK-NODE-PORT 32000",
                "set SP-NO-LOCAL-ENDPOINTS 192.168.10.13,tcp:30443",
                "set SP-NO-LOCAL-ENDPOINTS 192.168.10.13,tcp:30880",
                "set SP-NO-LOCAL-ENDPOINTS 203.0.113.10,tcp:443",
                "set SP-NO-LOCAL-ENDPOINTS 203.0.113.10,tcp:80",
                "set SP-NO-LOCAL-ENDPOINTS 203.0.113.11,tcp:443",
                "set SP-NO-LOCAL-ENDPOINTS 203.0.113.11,tcp:80",
            ],
        ),
        // UDP NodePort with a named targetPort; SCTP ClusterIP.
        (
            "node-b",
            "vs udp 192|set SP-NODE-PORT-UDP|vs sctp",
            &[
                "vs sctp 10.96.1.40:3868 rr -> 10.244.2.21:3868",
                "vs udp 192.168.10.12:30514 rr -> 10.244.3.22:5514",
                "set SP-NODE-PORT-UDP 30514",
            ],
        ),
        // External IP.
        (
            "node-b",
            "vs tcp 192.168.10.100|set SP-EXTERNAL",
            &[
                "vs tcp 192.168.10.100:8080 rr -> 10.244.2.22:8080",
                "set SP-EXTERNAL-IP 192.168.10.100,tcp:8080",
            ],
        ),
        // Dual-stack, multi-port.
        (
            "node-b",
            "vs tcp [fd00:96::a0a]|set SP6-CLUSTER-IP",
            &[
                "vs tcp [fd00:96::a0a]:80 rr -> [fd00:244:1::10]:8080 [fd00:244:2::10]:8080 [fd00:244:3::10]:8080",
                "vs tcp [fd00:96::a0a]:9090 rr -> [fd00:244:1::10]:9090 [fd00:244:2::10]:9090 [fd00:244:3::10]:9090",
                "set SP6-CLUSTER-IP fd00:96::a0a,tcp:80",
                "set SP6-CLUSTER-IP fd00:96::a0a,tcp:9090",
            ],
        ),
        // Scheduler annotations, session affinity, a not-ready endpoint.
        (
            "node-b",
            "vs tcp 10.96.10.20:80|vs tcp 10.96.10.30|vs tcp 10.96.10.40",
            &[
                "vs tcp 10.96.10.20:80 wrr -> 10.244.1.11:8080 10.244.3.11:8080",
                "vs tcp 10.96.10.30:80 rr persist 1800 -> 10.244.2.11:8080 10.244.3.12:8080",
                "vs tcp 10.96.10.40:443 lc -> 10.244.1.12:8443 10.244.3.13:8443",
            ],
        ),
        // Zone hints: zone-1 nodes use the zone-1 endpoints.
        (
            "node-b",
            "vs tcp 10.96.10.50",
            &["vs tcp 10.96.10.50:80 rr -> 10.244.1.13:8080 10.244.2.13:8080"],
        ),
        (
            "node-c",
            "vs tcp 10.96.10.50",
            &["vs tcp 10.96.10.50:80 rr -> 10.244.3.14:8080"],
        ),
        // Only terminating endpoints: they still serve.
        (
            "node-c",
            "vs tcp 10.96.10.60",
            &["vs tcp 10.96.10.60:80 rr -> 10.244.1.14:8080 10.244.2.15:8080"],
        ),
        // No EndpointSlice at all.
        (
            "node-c",
            "vs tcp 10.96.10.70|set SP-NO-ENDPOINTS",
            &[
                "vs tcp 10.96.10.70:80 rr -> none",
                "set SP-NO-ENDPOINTS 10.96.10.70,tcp:80",
            ],
        ),
        // Source ranges; node-b's address is inside 192.168.0.0/16.
        (
            "node-b",
            "set SP-LOAD-BALANCER-",
            &[
                "set SP-LOAD-BALANCER-FW 192.168.10.200,tcp:80",
                "set SP-LOAD-BALANCER-LOCAL 203.0.113.10,tcp:443",
                "set SP-LOAD-BALANCER-LOCAL 203.0.113.10,tcp:80",
                "set SP-LOAD-BALANCER-LOCAL 203.0.113.11,tcp:443",
                "set SP-LOAD-BALANCER-LOCAL 203.0.113.11,tcp:80",
                "set SP-LOAD-BALANCER-SOURCE-CIDR 192.168.10.200,tcp:80,10.0.0.0/8",
                "set SP-LOAD-BALANCER-SOURCE-CIDR 192.168.10.200,tcp:80,192.168.0.0/16",
                "set SP-LOAD-BALANCER-SOURCE-IP 192.168.10.200,tcp:80,192.168.10.200",
            ],
        ),
        // internalTrafficPolicy Local: each node its own exporter.
        (
            "node-a",
            "vs tcp 10.96.20.30",
            &["vs tcp 10.96.20.30:9100 rr -> 10.244.1.31:9100"],
        ),
        (
            "node-c",
            "vs tcp 10.96.20.30",
            &["vs tcp 10.96.20.30:9100 rr -> 10.244.3.31:9100"],
        ),
        // Pod CIDRs of the nodes.
        (
            "node-c",
            "set SP-CLUSTER-CIDR|set SP6-CLUSTER-CIDR",
            &[
                "set SP-CLUSTER-CIDR 10.244.1.0/24",
                "set SP-CLUSTER-CIDR 10.244.2.0/24",
                "set SP-CLUSTER-CIDR 10.244.3.0/24",
                "set SP6-CLUSTER-CIDR fd00:244:1::/64",
                "set SP6-CLUSTER-CIDR fd00:244:2::/64",
                "set SP6-CLUSTER-CIDR fd00:244:3::/64",
            ],
        ),
    ];
    for (node, filter, expected) in table {
        expect_lines(&index, node, filter, expected);
    }
}

/// Upserts one object per commit, in `objects` order, and compares the
/// result with one bulk commit.
fn one_by_one(objects: Vec<ClusterObject>) {
    let mut index = Index::new(ComputeConfig::default());
    for o in objects.iter().cloned() {
        index.upsert(o);
        index.commit();
    }
    assert_same_as_fresh(&index, objects);
}

#[test]
fn examples_one_object_per_commit_in_file_order() {
    // Slices, then nodes, then Services (the files' sorted order).
    one_by_one(example_objects());
}

#[test]
fn examples_one_object_per_commit_nodes_last() {
    // As after a control plane restart whose Node watch syncs last.
    let mut objects = example_objects();
    objects.sort_by_key(|o| o.kind() == Kind::Node);
    one_by_one(objects);
}
