//! Conversion tables, the upstream conformance scenarios
//! (kubernetes-sigs/network-policy-api `conformance/base`, `conformance/tests`)
//! as decision tables, and properties of tier, priority and rule order.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::{Value, json};
use setpoint_dataplane::Protocol;

use super::*;
use crate::policy::{Namespaces, Pod, PodPeer, PolicyView, Selector, convert_policy};

const HOUSES: [(&str, &str); 5] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
    ("forbidden-forrest", "centaur"),
];
const NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));

fn namespace(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

fn house_index(house: &str) -> usize {
    HOUSES
        .iter()
        .position(|(h, _)| *h == house)
        .unwrap_or_else(|| panic!("no house {house}"))
}

/// `house-N` → that pod's IP.
fn ip(who: &str) -> IpAddr {
    match who {
        "node" => return NODE_IP,
        "outside" => return OUTSIDE,
        _ => {}
    }
    let (house, n) = who.rsplit_once('-').unwrap_or_else(|| panic!("{who}"));
    let n: u8 = n.parse().unwrap_or_else(|_| panic!("{who}"));
    IpAddr::V4(Ipv4Addr::new(10, 0, house_index(house) as u8, n + 1))
}

/// The conformance base: five namespaces, two pods each with named ports
/// `web` (TCP 80) and `dns` (UDP 53), one linux node.
fn world() -> PolicyView {
    let mut view = PolicyView::default();
    for (house, person) in HOUSES {
        let ns = namespace(house);
        view.namespaces.insert(
            ns.clone(),
            BTreeMap::from([
                ("conformance-house".to_string(), house.to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.clone()),
            ]),
        );
        for n in 0..2 {
            let name = format!("{person}-{n}");
            view.pods.insert(
                (ns.clone(), name.clone()),
                Pod {
                    namespace: ns.clone(),
                    name,
                    node: Some(Arc::from("node-1")),
                    ips: vec![ip(&format!("{house}-{n}"))],
                    labels: BTreeMap::from([("conformance-house".to_string(), house.to_string())]),
                    host_network: false,
                    named_ports: vec![
                        ("web".to_string(), Protocol::Tcp, 80),
                        ("dns".to_string(), Protocol::Udp, 53),
                    ],
                },
            );
        }
    }
    view
}

fn nodes() -> Vec<NodePeer> {
    vec![NodePeer {
        name: "node-1".into(),
        labels: BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]),
        addresses: vec![NODE_IP],
    }]
}

fn cnp(value: Value) -> ClusterPolicy {
    let written: api::ClusterNetworkPolicy =
        serde_json::from_value(value).unwrap_or_else(|e| panic!("decodes: {e}"));
    let (policy, warnings) =
        convert_cluster_policy(&written).unwrap_or_else(|r| panic!("rejected: {r}"));
    assert_eq!(warnings, Vec::new(), "{}", policy.name);
    policy
}

fn add_network_policy(view: &mut PolicyView, value: Value) {
    let written: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(value).unwrap_or_else(|e| panic!("decodes: {e}"));
    let (policy, warnings) = convert_policy(&written).unwrap_or_else(|r| panic!("rejected: {r}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    view.policies
        .insert((policy.namespace.clone(), policy.name.clone()), policy);
}

fn house_selector(house: &str) -> Value {
    json!({"matchLabels": {"conformance-house": house}})
}

fn ns_name_selector(house: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": namespace(house)}})
}

fn house_pods(house: &str) -> Value {
    json!({"namespaceSelector": house_selector(house), "podSelector": house_selector(house)})
}

fn policy(
    name: &str,
    tier: &str,
    priority: i64,
    subject: Value,
    ingress: Value,
    egress: Value,
) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": priority, "subject": subject,
                 "ingress": ingress, "egress": egress},
    })
}

/// What decided a connection, as one line: `deny` / `allow`, then what
/// decided each direction that was evaluated.
fn outcome(decision: &Decision) -> String {
    let side = |v: &Option<Verdict>, dir: &str| -> Option<String> {
        let v = v.as_ref()?;
        let by = match &v.by {
            DecidedBy::Rule(r) => format!("{}:{}#{}", r.tier.as_str(), r.policy, r.index),
            DecidedBy::NetworkPolicy => "NetworkPolicy".to_string(),
            DecidedBy::Default => return None,
        };
        Some(format!("{dir}={by}"))
    };
    let mut parts = vec![if decision.allowed { "allow" } else { "deny" }.to_string()];
    if decision.same_pod {
        parts.push("same-pod".into());
    }
    parts.extend(side(&decision.egress, "egress"));
    parts.extend(side(&decision.ingress, "ingress"));
    parts.join(" ")
}

fn protocol(name: &str) -> Protocol {
    match name {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => panic!("protocol {other}"),
    }
}

/// Each row: (source, destination, protocol, port, expected [`outcome`]).
fn check(view: &PolicyView, policies: &[ClusterPolicy], rows: &[(&str, &str, &str, u16, &str)]) {
    let nodes = nodes();
    let tiered = TieredView {
        view,
        nodes: &nodes,
        policies,
    };
    for (from, to, proto, port, expected) in rows {
        let connection = Connection {
            source: ip(from),
            destination: ip(to),
            protocol: protocol(proto),
            port: *port,
        };
        let decision = tiered.decide(&connection, view);
        assert_eq!(
            outcome(&decision),
            *expected,
            "{from} -> {to} {proto}/{port}: {decision:#?}"
        );
    }
}

/// `base/admin_tier/standard-priority-field.yaml` and
/// `tests/admin-network-policy-standard-priority.go`.
fn priority_field(pass_priority: i64) -> Vec<ClusterPolicy> {
    let deny = |dir: &str| {
        json!([{"name": format!("deny-all-{dir}-slytherin"), "action": "Deny",
                                    (if dir == "ingress" {"from"} else {"to"}): [{"pods": house_pods("slytherin")}]}])
    };
    let pass = |dir: &str| {
        json!([{"name": format!("pass-all-{dir}-slytherin"), "action": "Pass",
                                    (if dir == "ingress" {"from"} else {"to"}): [{"pods": house_pods("slytherin")}]}])
    };
    let accept = |dir: &str| {
        json!([{"name": format!("allow-all-{dir}-slytherin"), "action": "Accept",
                                      (if dir == "ingress" {"from"} else {"to"}): [{"pods": house_pods("slytherin")}]}])
    };
    let subject = json!({"pods": house_pods("gryffindor")});
    vec![
        cnp(policy(
            "priority-50-example",
            "Admin",
            50,
            subject.clone(),
            deny("ingress"),
            deny("egress"),
        )),
        cnp(policy(
            "old-priority-60-new-priority-40-example",
            "Admin",
            pass_priority,
            subject.clone(),
            pass("ingress"),
            pass("egress"),
        )),
        cnp(policy(
            "default",
            "Baseline",
            10,
            subject,
            accept("ingress"),
            accept("egress"),
        )),
    ]
}

#[test]
fn conformance_priority_field() {
    let view = world();
    check(
        &view,
        &priority_field(60),
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "deny ingress=Admin:priority-50-example#0",
            ),
            (
                "slytherin-1",
                "gryffindor-0",
                "tcp",
                8080,
                "deny ingress=Admin:priority-50-example#0",
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                "deny egress=Admin:priority-50-example#0",
            ),
            (
                "gryffindor-1",
                "slytherin-0",
                "tcp",
                8080,
                "deny egress=Admin:priority-50-example#0",
            ),
            // Nobody else is a subject.
            ("hufflepuff-0", "gryffindor-0", "tcp", 80, "allow"),
        ],
    );
    // Priority 60 → 40: the Pass now comes first, and Baseline accepts.
    check(
        &view,
        &priority_field(40),
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "allow ingress=Baseline:default#0",
            ),
            (
                "slytherin-1",
                "gryffindor-0",
                "tcp",
                8080,
                "allow ingress=Baseline:default#0",
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                "allow egress=Baseline:default#0",
            ),
            (
                "gryffindor-1",
                "slytherin-0",
                "tcp",
                8080,
                "allow egress=Baseline:default#0",
            ),
        ],
    );
}

/// `base/{admin,baseline}_tier/standard-gress-rules-combined.yaml`.
fn gress_rules(tier: &str, first_action: &str) -> ClusterPolicy {
    let ports = |tcp: u16, udp: u16, sctp: u16| {
        json!([{"tcp": {"destinationPort": {"number": tcp}}},
               {"udp": {"destinationPort": {"number": udp}}},
               {"sctp": {"destinationPort": {"number": sctp}}}])
    };
    let rules = |field: &str, hufflepuff_tcp: u16| {
        json!([
            {"name": "ravenclaw-everything-0", "action": first_action, field: [{"namespaces": ns_name_selector("ravenclaw")}]},
            {"name": "deny-ravenclaw-everything", "action": "Deny", field: [{"namespaces": ns_name_selector("ravenclaw")}]},
            {"name": "pass-ravenclaw-everything", "action": "Pass", field: [{"namespaces": ns_name_selector("ravenclaw")}]},
            {"name": "deny-slytherin-80-53-9003", "action": "Deny", field: [{"namespaces": ns_name_selector("slytherin")}],
             "protocols": ports(80, 53, 9003)},
            {"name": "pass-slytherin-80-53-9003", "action": "Pass", field: [{"namespaces": ns_name_selector("slytherin")}],
             "protocols": ports(80, 53, 9003)},
            {"name": "allow-hufflepuff-some", "action": "Accept", field: [{"namespaces": ns_name_selector("hufflepuff")}],
             "protocols": ports(hufflepuff_tcp, 5353, 9003)},
            {"name": "deny-hufflepuff-everything-else", "action": "Deny", field: [{"namespaces": ns_name_selector("hufflepuff")}]},
        ])
    };
    cnp(policy(
        "gress-rules",
        tier,
        15,
        json!({"namespaces": ns_name_selector("gryffindor")}),
        rules("from", 80),
        rules("to", 8080),
    ))
}

#[test]
fn conformance_gress_rules_admin() {
    let view = world();
    let a = "Admin:gress-rules";
    check(
        &view,
        &[gress_rules("Admin", "Accept")],
        &[
            (
                "gryffindor-0",
                "ravenclaw-0",
                "tcp",
                80,
                &format!("allow egress={a}#0"),
            ),
            (
                "gryffindor-1",
                "ravenclaw-1",
                "udp",
                53,
                &format!("allow egress={a}#0"),
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                &format!("deny egress={a}#3"),
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "udp",
                53,
                &format!("deny egress={a}#3"),
            ),
            (
                "gryffindor-0",
                "slytherin-1",
                "sctp",
                9003,
                &format!("deny egress={a}#3"),
            ),
            ("gryffindor-0", "slytherin-0", "tcp", 8080, "allow"),
            ("gryffindor-0", "slytherin-0", "sctp", 9005, "allow"),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "tcp",
                8080,
                &format!("allow egress={a}#5"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "udp",
                5353,
                &format!("allow egress={a}#5"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-1",
                "sctp",
                9003,
                &format!("allow egress={a}#5"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "tcp",
                80,
                &format!("deny egress={a}#6"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "udp",
                53,
                &format!("deny egress={a}#6"),
            ),
            (
                "ravenclaw-0",
                "gryffindor-0",
                "tcp",
                80,
                &format!("allow ingress={a}#0"),
            ),
            (
                "slytherin-0",
                "gryffindor-1",
                "tcp",
                80,
                &format!("deny ingress={a}#3"),
            ),
            ("slytherin-0", "gryffindor-1", "tcp", 8080, "allow"),
            (
                "hufflepuff-0",
                "gryffindor-0",
                "tcp",
                80,
                &format!("allow ingress={a}#5"),
            ),
            (
                "hufflepuff-0",
                "gryffindor-0",
                "tcp",
                8080,
                &format!("deny ingress={a}#6"),
            ),
            (
                "hufflepuff-1",
                "gryffindor-0",
                "sctp",
                9005,
                &format!("deny ingress={a}#6"),
            ),
        ],
    );
    // The tests then rewrite rule 0: Deny decides there, Pass skips every
    // later Admin rule (the Deny at 1 included) and nothing else decides.
    check(
        &view,
        &[gress_rules("Admin", "Deny")],
        &[(
            "gryffindor-0",
            "ravenclaw-0",
            "tcp",
            80,
            &format!("deny egress={a}#0"),
        )],
    );
    check(
        &view,
        &[gress_rules("Admin", "Pass")],
        &[
            ("gryffindor-0", "ravenclaw-0", "tcp", 80, "allow"),
            ("ravenclaw-1", "gryffindor-1", "udp", 5353, "allow"),
        ],
    );
}

#[test]
fn conformance_gress_rules_baseline() {
    let view = world();
    let b = "Baseline:gress-rules";
    check(
        &view,
        &[gress_rules("Baseline", "Accept")],
        &[
            (
                "gryffindor-0",
                "ravenclaw-0",
                "tcp",
                80,
                &format!("allow egress={b}#0"),
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "udp",
                53,
                &format!("deny egress={b}#3"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "tcp",
                80,
                &format!("deny egress={b}#6"),
            ),
            (
                "hufflepuff-0",
                "gryffindor-0",
                "tcp",
                80,
                &format!("allow ingress={b}#5"),
            ),
        ],
    );
    // Pass in the Baseline tier (v1alpha2 allows it) skips the rest of it.
    check(
        &view,
        &[gress_rules("Baseline", "Pass")],
        &[("gryffindor-0", "ravenclaw-0", "tcp", 80, "allow")],
    );
}

fn gryffindor_network_policy(view: &mut PolicyView) {
    add_network_policy(
        view,
        json!({
            "metadata": {"name": "allow-gress-from-to-slytherin-to-gryffindor",
                         "namespace": namespace("gryffindor")},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"namespaceSelector": house_selector("slytherin")}]}],
                     "egress": [{"to": [{"namespaceSelector": house_selector("slytherin")}]}]},
        }),
    );
}

/// `base/api_integration/standard-anp-np-banp.yaml` and
/// `tests/admin-network-policy-standard-integration.go`.
#[test]
fn conformance_admin_network_policy_baseline_integration() {
    let admin = |action: &str| {
        cnp(policy(
            "pass-example",
            "Admin",
            10,
            json!({"namespaces": house_selector("gryffindor")}),
            json!([{"name": "ingress-slytherin", "action": action,
                    "from": [{"namespaces": house_selector("slytherin")}]}]),
            json!([{"name": "egress-slytherin", "action": action,
                    "to": [{"namespaces": house_selector("slytherin")}]}]),
        ))
    };
    let baseline = cnp(policy(
        "default",
        "Baseline",
        10,
        json!({"namespaces": house_selector("gryffindor")}),
        json!([{"name": "deny-all-ingress-from-slytherin", "action": "Deny",
                "from": [{"namespaces": house_selector("slytherin")}]}]),
        json!([{"name": "deny-all-egress-to-slytherin", "action": "Deny",
                "to": [{"namespaces": house_selector("slytherin")}]}]),
    ));
    let mut view = world();
    gryffindor_network_policy(&mut view);
    check(
        &view,
        &[admin("Deny"), baseline.clone()],
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "deny ingress=Admin:pass-example#0",
            ),
            (
                "gryffindor-0",
                "slytherin-1",
                "tcp",
                8080,
                "deny egress=Admin:pass-example#0",
            ),
        ],
    );
    // Pass: the NetworkPolicy decides, and it allows.
    check(
        &view,
        &[admin("Pass"), baseline.clone()],
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "allow ingress=NetworkPolicy",
            ),
            (
                "gryffindor-0",
                "slytherin-1",
                "tcp",
                8080,
                "allow egress=NetworkPolicy",
            ),
            // The NetworkPolicy isolates gryffindor: others are denied by it.
            (
                "hufflepuff-0",
                "gryffindor-0",
                "tcp",
                80,
                "deny ingress=NetworkPolicy",
            ),
        ],
    );
    // Without the NetworkPolicy, the Baseline decides.
    let view = world();
    check(
        &view,
        &[admin("Pass"), baseline],
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "deny ingress=Baseline:default#0",
            ),
            (
                "gryffindor-0",
                "slytherin-1",
                "tcp",
                8080,
                "deny egress=Baseline:default#0",
            ),
        ],
    );
}

/// Baseline applies per direction only where no NetworkPolicy isolates
/// the pod.
#[test]
fn a_network_policy_isolating_one_direction_leaves_the_other_to_baseline() {
    let mut view = world();
    add_network_policy(
        &mut view,
        json!({
            "metadata": {"name": "ingress-only", "namespace": namespace("gryffindor")},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
        }),
    );
    let baseline = cnp(policy(
        "deny-slytherin",
        "Baseline",
        0,
        json!({"namespaces": house_selector("gryffindor")}),
        json!([{"action": "Deny", "from": [{"namespaces": house_selector("slytherin")}]}]),
        json!([{"action": "Deny", "to": [{"namespaces": house_selector("slytherin")}]}]),
    ));
    check(
        &view,
        &[baseline],
        &[
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                80,
                "allow ingress=NetworkPolicy",
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                "deny egress=Baseline:deny-slytherin#0",
            ),
        ],
    );
}

/// `base/admin_tier/standard-egress-inline-cidr-rules.yaml`.
#[test]
fn conformance_egress_inline_cidr() {
    let view = world();
    let rules = |extra: Option<Value>| {
        let mut rules = vec![
            json!({"name": "allow-egress-to-slytherin", "action": "Accept",
                   "to": [{"pods": house_pods("slytherin")}]}),
            json!({"name": "deny-egress-to-internet", "action": "Deny",
                   "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}),
        ];
        if let Some(extra) = extra {
            rules.insert(0, extra);
        }
        cnp(policy(
            "inline-cidr-as-peers-example",
            "Admin",
            85,
            json!({"pods": house_pods("gryffindor")}),
            json!([]),
            Value::Array(rules),
        ))
    };
    let p = "Admin:inline-cidr-as-peers-example";
    check(
        &view,
        &[rules(None)],
        &[
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                &format!("allow egress={p}#0"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-0",
                "tcp",
                80,
                &format!("deny egress={p}#1"),
            ),
            (
                "gryffindor-0",
                "outside",
                "tcp",
                443,
                &format!("deny egress={p}#1"),
            ),
            (
                "gryffindor-0",
                "node",
                "tcp",
                10250,
                &format!("deny egress={p}#1"),
            ),
        ],
    );
    // The test then allows two pods by their IPs.
    let specific = json!({"name": "allow-egress-to-specific-podIPs", "action": "Accept",
                          "to": [{"networks": [format!("{}/32", ip("hufflepuff-0")),
                                               format!("{}/32", ip("ravenclaw-0"))]}]});
    check(
        &view,
        &[rules(Some(specific))],
        &[
            (
                "gryffindor-0",
                "hufflepuff-0",
                "tcp",
                80,
                &format!("allow egress={p}#0"),
            ),
            (
                "gryffindor-0",
                "ravenclaw-0",
                "udp",
                53,
                &format!("allow egress={p}#0"),
            ),
            (
                "gryffindor-0",
                "hufflepuff-1",
                "tcp",
                80,
                &format!("deny egress={p}#2"),
            ),
        ],
    );
}

/// `base/admin_tier/experimental-egress-selector-rules.yaml` (with the
/// host-network ports 34345, 34347, and named ports as that test uses).
#[test]
fn conformance_experimental_egress_nodes_and_named_ports() {
    let view = world();
    let linux = json!({"matchLabels": {"kubernetes.io/os": "linux"}});
    let p = cnp(policy(
        "node-and-cidr-as-peers-example",
        "Admin",
        75,
        json!({"pods": house_pods("gryffindor")}),
        json!([]),
        json!([
            {"name": "allow-egress-to-34345-on-nodes", "action": "Accept", "to": [{"nodes": linux}],
             "protocols": [{"tcp": {"destinationPort": {"number": 34345}}}]},
            {"name": "pass-egress-to-34347-on-nodes", "action": "Pass", "to": [{"nodes": linux}],
             "protocols": [{"udp": {"destinationPort": {"number": 34347}}}]},
            {"name": "deny-egress-to-slytherin-and-nodes-and-internet", "action": "Deny",
             "to": [{"pods": house_pods("slytherin")}, {"nodes": linux},
                    {"networks": ["0.0.0.0/0", "::/0"]}]},
        ]),
    ));
    let named = cnp(policy(
        "named-ports",
        "Admin",
        70,
        json!({"pods": house_pods("gryffindor")}),
        json!([]),
        json!([
            {"name": "allow-web-and-dns-to-slytherin", "action": "Accept",
             "to": [{"pods": house_pods("slytherin")}],
             "protocols": [{"destinationNamedPort": "web"}, {"destinationNamedPort": "dns"}]},
        ]),
    ));
    let n = "Admin:node-and-cidr-as-peers-example";
    check(
        &view,
        &[p, named],
        &[
            (
                "gryffindor-1",
                "node",
                "tcp",
                34345,
                &format!("allow egress={n}#0"),
            ),
            ("gryffindor-1", "node", "udp", 34347, "allow"),
            (
                "gryffindor-1",
                "node",
                "tcp",
                34346,
                &format!("deny egress={n}#2"),
            ),
            (
                "gryffindor-1",
                "node",
                "sctp",
                34351,
                &format!("deny egress={n}#2"),
            ),
            (
                "gryffindor-0",
                "outside",
                "udp",
                53,
                &format!("deny egress={n}#2"),
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                80,
                "allow egress=Admin:named-ports#0",
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "udp",
                53,
                "allow egress=Admin:named-ports#0",
            ),
            // `web` is TCP: UDP 80 and TCP 8080 are not it.
            (
                "gryffindor-0",
                "slytherin-0",
                "udp",
                80,
                &format!("deny egress={n}#2"),
            ),
            (
                "gryffindor-0",
                "slytherin-0",
                "tcp",
                8080,
                &format!("deny egress={n}#2"),
            ),
        ],
    );
}

#[test]
fn port_ranges_and_every_port_of_a_protocol() {
    let view = world();
    let p = cnp(policy(
        "ranges",
        "Admin",
        1,
        json!({"namespaces": house_selector("gryffindor")}),
        json!([
            {"action": "Deny", "from": [{"namespaces": {}}],
             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8080}}}},
                           {"udp": {}}]},
        ]),
        json!([]),
    ));
    check(
        &view,
        &[p],
        &[
            ("slytherin-0", "gryffindor-0", "tcp", 7999, "allow"),
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                8000,
                "deny ingress=Admin:ranges#0",
            ),
            (
                "slytherin-0",
                "gryffindor-0",
                "tcp",
                8080,
                "deny ingress=Admin:ranges#0",
            ),
            ("slytherin-0", "gryffindor-0", "tcp", 8081, "allow"),
            (
                "slytherin-0",
                "gryffindor-0",
                "udp",
                1,
                "deny ingress=Admin:ranges#0",
            ),
            ("slytherin-0", "gryffindor-0", "sctp", 8000, "allow"),
            // An empty namespace selector is every namespace, own included.
            (
                "gryffindor-1",
                "gryffindor-0",
                "udp",
                53,
                "deny ingress=Admin:ranges#0",
            ),
            // Addresses that are no pod are not in a namespaces peer.
            ("outside", "gryffindor-0", "udp", 53, "allow"),
        ],
    );
}

#[test]
fn a_pod_to_its_own_ip_is_not_policed_and_host_network_pods_are_not_subjects() {
    let mut view = world();
    view.pods.insert(
        (namespace("gryffindor"), "host".into()),
        Pod {
            namespace: namespace("gryffindor"),
            name: "host".into(),
            node: Some(Arc::from("node-1")),
            ips: vec![NODE_IP],
            labels: BTreeMap::from([("conformance-house".to_string(), "gryffindor".to_string())]),
            host_network: true,
            named_ports: Vec::new(),
        },
    );
    let deny_all = cnp(policy(
        "deny-all",
        "Admin",
        0,
        json!({"namespaces": {}}),
        json!([{"action": "Deny", "from": [{"namespaces": {}}]}]),
        json!([{"action": "Deny", "to": [{"namespaces": {}}]}]),
    ));
    check(
        &view,
        &[deny_all],
        &[
            ("gryffindor-0", "gryffindor-0", "tcp", 80, "allow same-pod"),
            (
                "gryffindor-0",
                "gryffindor-1",
                "tcp",
                80,
                "deny egress=Admin:deny-all#0 ingress=Admin:deny-all#0",
            ),
            // The host-network pod is the node: no subject, no pod peer.
            ("node", "gryffindor-0", "tcp", 80, "allow"),
            ("gryffindor-0", "node", "tcp", 80, "allow"),
        ],
    );
}

#[test]
fn a_rule_reference_reads_as_explain_shows_it() {
    let rule = RuleRef {
        tier: Tier::Admin,
        policy: "gress-rules".into(),
        priority: 15,
        direction: Direction::Egress,
        index: 3,
        name: "deny-to-slytherin".into(),
        action: Action::Deny,
    };
    assert_eq!(
        rule.to_string(),
        "Admin ClusterNetworkPolicy gress-rules (priority 15) egress rule 3 \"deny-to-slytherin\": Deny"
    );
}

// ---- conversion ------------------------------------------------------

fn convert_json(value: Value) -> Result<(ClusterPolicy, Vec<String>), String> {
    let written: api::ClusterNetworkPolicy =
        serde_json::from_value(value).unwrap_or_else(|e| panic!("decodes: {e}"));
    convert_cluster_policy(&written)
        .map(|(p, w)| (p, w.into_iter().map(|r| r.to_string()).collect()))
        .map_err(|r| r.to_string())
}

fn with_spec(spec: Value) -> Value {
    json!({"metadata": {"name": "p"}, "spec": spec})
}

fn good_spec() -> Value {
    json!({"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
           "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})
}

fn spec_with(field: &str, value: Value) -> Value {
    let mut spec = good_spec();
    spec[field] = value;
    with_spec(spec)
}

#[test]
fn what_decides_the_whole_policy_rejects_it() {
    let many: Vec<Value> = (0..26)
        .map(|_| json!({"action": "Deny", "to": [{"namespaces": {}}]}))
        .collect();
    let table: Vec<(&str, Value, &str)> = vec![
        (
            "no name",
            json!({"spec": good_spec()}),
            "metadata.name is missing",
        ),
        (
            "no spec",
            json!({"metadata": {"name": "p"}}),
            "spec is missing",
        ),
        (
            "tier",
            spec_with("tier", json!("Developer")),
            "tier \"Developer\" is not Admin or Baseline",
        ),
        (
            "tier missing",
            spec_with("tier", json!("")),
            "tier \"\" is not Admin or Baseline",
        ),
        (
            "priority high",
            spec_with("priority", json!(1001)),
            "priority 1001 is out of range 0-1000",
        ),
        (
            "priority negative",
            spec_with("priority", json!(-1)),
            "priority -1 is out of range 0-1000",
        ),
        (
            "priority huge",
            spec_with("priority", json!(1_i64 << 40)),
            "is out of range 0-1000",
        ),
        (
            "priority missing",
            spec_with("priority", Value::Null),
            "priority is missing",
        ),
        (
            "subject empty",
            spec_with("subject", json!({})),
            "subject: neither namespaces nor pods",
        ),
        (
            "subject unknown",
            spec_with("subject", json!({"serviceAccounts": {}})),
            "subject: neither namespaces nor pods",
        ),
        (
            "subject both",
            spec_with(
                "subject",
                json!({"namespaces": {}, "pods": {"podSelector": {}}}),
            ),
            "exactly one is allowed",
        ),
        (
            "subject pods",
            spec_with("subject", json!({"pods": {"namespaceSelector": {}}})),
            "subject: pods: podSelector is missing",
        ),
        (
            "subject selector",
            spec_with(
                "subject",
                json!({"namespaces": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            ),
            "subject: namespaces: matchExpressions operator \"Near\"",
        ),
        (
            "too many rules",
            spec_with("egress", Value::Array(many)),
            "egress has 26 rules, at most 25 are allowed",
        ),
    ];
    for (what, value, expected) in table {
        let result = convert_json(value);
        let Err(reason) = &result else {
            panic!("{what}: accepted: {result:?}");
        };
        assert!(reason.contains(expected), "{what}: {reason}");
        assert!(
            reason.ends_with("the policy is not enforced"),
            "{what}: {reason}"
        );
        assert!(
            reason.starts_with("ClusterNetworkPolicy "),
            "{what}: {reason}"
        );
    }
}

/// What a broken rule becomes: `None` (matches nothing), or the rule.
#[test]
fn a_rule_that_cannot_be_read_fails_closed() {
    let deny_all = |index| ClusterRule {
        index,
        name: String::new(),
        action: Action::Deny,
        peers: vec![ClusterPeer::Everyone],
        ports: Vec::new(),
    };
    let everyone_ns = ClusterPeer::Pods(PodPeer {
        namespaces: Namespaces::Selected(Selector::everything()),
        pods: Selector::everything(),
    });
    let tcp80 = json!([{"tcp": {"destinationPort": {"number": 80}}}]);
    type Row = (&'static str, Value, Option<ClusterRule>, &'static str);
    let table: Vec<Row> = vec![
        (
            "unknown action",
            json!({"action": "Allow", "to": [{"namespaces": {}}], "protocols": tcp80}),
            Some(ClusterRule {
                index: 0,
                name: String::new(),
                action: Action::Deny,
                peers: vec![everyone_ns.clone()],
                ports: vec![ClusterPort::Range {
                    protocol: Protocol::Tcp,
                    start: 80,
                    end: 80,
                }],
            }),
            "action \"Allow\" is not Accept, Deny or Pass; the rule denies the traffic it matches",
        ),
        (
            "unknown action, bad peer",
            json!({"action": "", "to": [{}]}),
            Some(deny_all(0)),
            "the rule denies all traffic",
        ),
        (
            "accept, bare IP",
            json!({"action": "Accept", "to": [{"networks": ["10.0.0.1"]}]}),
            None,
            "networks: \"10.0.0.1\" is not a CIDR; the rule matches no traffic",
        ),
        (
            "deny, bad CIDR",
            json!({"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}),
            Some(deny_all(0)),
            "is not a CIDR; the rule denies all traffic",
        ),
        (
            "pass, unknown peer field",
            json!({"action": "Pass", "to": [{"serviceAccounts": {}}]}),
            Some(deny_all(0)),
            "to peer 0: no known field is set (a field of a newer API version?); the rule denies all traffic",
        ),
        (
            "accept, domainNames",
            json!({"action": "Accept", "to": [{"domainNames": ["*.example.com"]}, {"namespaces": {}}]}),
            None,
            "domainNames peers are not supported (Setpoint does not resolve names); the rule matches no traffic",
        ),
        (
            "deny, domainNames",
            json!({"action": "Deny", "to": [{"domainNames": ["example.com"]}]}),
            Some(deny_all(0)),
            "domainNames are allowed in Accept rules only, not in Deny; the rule denies all traffic",
        ),
        (
            "two fields in a peer",
            json!({"action": "Accept", "to": [{"namespaces": {}, "networks": ["0.0.0.0/0"]}]}),
            None,
            "more than one field is set",
        ),
        (
            "no peers",
            json!({"action": "Deny", "to": []}),
            Some(deny_all(0)),
            "to is empty",
        ),
        (
            "peers missing",
            json!({"action": "Accept"}),
            None,
            "to is missing",
        ),
        (
            "empty protocols",
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": []}),
            Some(deny_all(0)),
            "protocols is empty",
        ),
        (
            "port 0",
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}),
            Some(deny_all(0)),
            "tcp destinationPort number 0 is out of range 1-65535",
        ),
        (
            "port 70000",
            json!({"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"udp": {"destinationPort": {"number": 70000}}}]}),
            None,
            "udp destinationPort number 70000 is out of range",
        ),
        (
            "backwards range",
            json!({"action": "Deny", "to": [{"namespaces": {}}],
                                   "protocols": [{"sctp": {"destinationPort": {"range": {"start": 90, "end": 90}}}}]}),
            Some(deny_all(0)),
            "sctp range start 90 is not below end 90",
        ),
        (
            "number and range",
            json!({"action": "Deny", "to": [{"namespaces": {}}],
                                    "protocols": [{"tcp": {"destinationPort": {"number": 1, "range": {"start": 1, "end": 2}}}}]}),
            Some(deny_all(0)),
            "both number and range",
        ),
        (
            "two protocols in one",
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {}, "udp": {}}]}),
            Some(deny_all(0)),
            "more than one of tcp, udp, sctp, destinationNamedPort is set",
        ),
        (
            "bad named port",
            json!({"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "Web"}]}),
            None,
            "destinationNamedPort: port name \"Web\"",
        ),
        (
            "named port to networks",
            json!({"action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}],
                                          "protocols": [{"destinationNamedPort": "web"}]}),
            None,
            "destinationNamedPort cannot be used with networks, nodes or domainNames peers",
        ),
        (
            "bad selector",
            json!({"action": "Deny", "to": [{"nodes": {"matchLabels": {"a b": "c"}}}]}),
            Some(deny_all(0)),
            "to peer 0: nodes: matchLabels",
        ),
    ];
    for (what, rule, expected, reason) in table {
        let mut spec = good_spec();
        spec["egress"] = json!([rule]);
        let (policy, warnings) =
            convert_json(with_spec(spec)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(policy.egress.first(), expected.as_ref(), "{what}");
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(warnings[0].contains(reason), "{what}: {}", warnings[0]);
        assert!(
            warnings[0].starts_with("ClusterNetworkPolicy p: egress rule 0"),
            "{what}: {}",
            warnings[0]
        );
    }
}

#[test]
fn a_valid_policy_reads_whole() {
    let (policy, warnings) = convert_json(with_spec(json!({
        "tier": "Baseline", "priority": 1000,
        "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        "ingress": [{"name": "pass-all", "action": "Pass", "from": [{"pods": {"podSelector": {}}}]}],
        "egress": [
            {"name": "nets", "action": "Accept", "to": [{"networks": ["10.1.2.3/8", "10.0.0.0/8", "fd00::/8"]}],
             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 65535}}}}, {"sctp": {}}]},
            {"action": "Deny", "to": [{"nodes": {}}]},
        ],
    })))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings, Vec::<String>::new());
    assert_eq!(policy.tier, Tier::Baseline);
    assert_eq!(policy.priority, 1000);
    // A missing namespaceSelector selects every namespace.
    assert_eq!(
        policy.subject.namespaces,
        Namespaces::Selected(Selector::everything())
    );
    assert_eq!(policy.ingress[0].action, Action::Pass);
    assert_eq!(
        policy.egress[0].peers,
        vec![ClusterPeer::Networks(vec![
            "10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()),
            "fd00::/8".parse().unwrap_or_else(|_| unreachable!()),
        ])]
    );
    assert_eq!(
        policy.egress[0].ports,
        vec![
            ClusterPort::Range {
                protocol: Protocol::Tcp,
                start: 1,
                end: 65535
            },
            ClusterPort::Protocol(Protocol::Sctp),
        ]
    );
    assert_eq!(policy.egress[1].index, 1);
    assert_eq!(
        policy.egress[1].peers,
        vec![ClusterPeer::Nodes(Selector::everything())]
    );
}

#[test]
fn a_left_out_rule_keeps_the_index_of_the_others() {
    let (policy, warnings) = convert_json(with_spec(json!({
        "tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
        "egress": [
            {"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
            {"name": "second", "action": "Deny", "to": [{"namespaces": {}}]},
        ],
    })))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings.len(), 1);
    assert_eq!(policy.egress.len(), 1);
    assert_eq!(
        (policy.egress[0].index, policy.egress[0].name.as_str()),
        (1, "second")
    );
}

#[test]
fn a_long_or_odd_rule_name_is_cut_and_cleaned() {
    let (policy, warnings) = convert_json(with_spec(json!({
        "tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
        "egress": [{"name": format!("a\n{}", "b".repeat(300)), "action": "Deny", "to": [{"namespaces": {}}]}],
    })))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let name = &policy.egress[0].name;
    assert!(
        name.len() <= MAX_RULE_NAME_BYTES && !name.contains('\n'),
        "{name:?}"
    );
    assert!(warnings[0].len() < 400, "{}", warnings[0]);
}

#[test]
fn the_api_round_trips_through_json() {
    let value = policy(
        "p",
        "Admin",
        3,
        json!({"pods": house_pods("gryffindor")}),
        json!([{"name": "r", "action": "Accept", "from": [{"namespaces": {}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 2}}}},
                              {"destinationNamedPort": "web"}]}]),
        json!([{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}, {"nodes": {}}, {"domainNames": ["a.b"]}]}]),
    );
    let written: api::ClusterNetworkPolicy =
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"));
    let out = serde_json::to_value(&written).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (&out["apiVersion"], &out["kind"]),
        (&json!(api::API_VERSION), &json!(api::KIND))
    );
    let again: api::ClusterNetworkPolicy = serde_json::to_value(&written)
        .and_then(serde_json::from_value)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, written);
    // What the Kubernetes client builds its URLs and list kinds from.
    use k8s_openapi::Resource as _;
    assert_eq!(
        format!(
            "{}/{} {}",
            api::ClusterNetworkPolicy::GROUP,
            api::ClusterNetworkPolicy::VERSION,
            api::ClusterNetworkPolicy::URL_PATH_SEGMENT
        ),
        "policy.networking.k8s.io/v1alpha2 clusternetworkpolicies"
    );
    assert_eq!(api::ClusterNetworkPolicy::API_VERSION, api::API_VERSION);
}

// ---- properties ------------------------------------------------------

mod properties {
    use proptest::prelude::*;

    use super::*;

    const LABELS: [&str; 2] = ["x", "y"];

    /// Three namespaces (team a/b), two pods each (app x/y).
    fn small_world(pod_apps: &[usize], ns_teams: &[usize]) -> PolicyView {
        let mut view = PolicyView::default();
        for (n, team) in ns_teams.iter().enumerate() {
            let ns = format!("ns{n}");
            view.namespaces.insert(
                ns.clone(),
                BTreeMap::from([("team".to_string(), ["a", "b"][*team].to_string())]),
            );
            for p in 0..2 {
                let app = pod_apps[n * 2 + p];
                let name = format!("pod{p}");
                view.pods.insert(
                    (ns.clone(), name.clone()),
                    Pod {
                        namespace: ns.clone(),
                        name,
                        node: Some(Arc::from("n")),
                        ips: vec![small_ip(n, p)],
                        labels: BTreeMap::from([("app".to_string(), LABELS[app].to_string())]),
                        host_network: false,
                        named_ports: vec![("web".to_string(), Protocol::Tcp, 80)],
                    },
                );
            }
        }
        view
    }

    fn small_ip(ns: usize, pod: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 1, ns as u8, pod as u8 + 1))
    }

    fn selector_of(key: &str, value: Option<&str>) -> Selector {
        let mut s = Selector::everything();
        if let Some(v) = value {
            s.match_labels.insert(key.to_string(), v.to_string());
        }
        s
    }

    fn peer_pods() -> impl Strategy<Value = PodPeer> {
        (
            prop::option::of(prop::sample::select(vec!["a", "b"])),
            prop::option::of(prop::sample::select(LABELS.to_vec())),
        )
            .prop_map(|(team, app)| PodPeer {
                namespaces: Namespaces::Selected(selector_of("team", team)),
                pods: selector_of("app", app),
            })
    }

    fn cluster_peer() -> impl Strategy<Value = ClusterPeer> {
        prop_oneof![
            3 => peer_pods().prop_map(ClusterPeer::Pods),
            1 => (0usize..3, 0usize..2).prop_map(|(n, p)| {
                let ip = small_ip(n, p);
                ClusterPeer::Networks(vec![ipnet::IpNet::from(ip)])
            }),
            1 => Just(ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!())])),
        ]
    }

    fn cluster_port() -> impl Strategy<Value = ClusterPort> {
        prop_oneof![
            Just(ClusterPort::Protocol(Protocol::Udp)),
            Just(ClusterPort::Range {
                protocol: Protocol::Tcp,
                start: 80,
                end: 80
            }),
            Just(ClusterPort::Range {
                protocol: Protocol::Tcp,
                start: 79,
                end: 443
            }),
            Just(ClusterPort::Named("web".into())),
        ]
    }

    fn action() -> impl Strategy<Value = Action> {
        prop::sample::select(vec![Action::Accept, Action::Deny, Action::Pass])
    }

    fn rule() -> impl Strategy<Value = (Action, Vec<ClusterPeer>, Vec<ClusterPort>)> {
        (
            action(),
            prop::collection::vec(cluster_peer(), 1..3),
            prop::collection::vec(cluster_port(), 0..2),
        )
    }

    fn rules(limit: usize) -> impl Strategy<Value = Vec<ClusterRule>> {
        prop::collection::vec(rule(), 0..limit).prop_map(|rules| {
            rules
                .into_iter()
                .enumerate()
                .map(|(index, (action, peers, ports))| ClusterRule {
                    index,
                    name: format!("r{index}"),
                    action,
                    peers,
                    ports,
                })
                .collect()
        })
    }

    fn policies() -> impl Strategy<Value = Vec<ClusterPolicy>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![Tier::Admin, Tier::Baseline]),
                1u16..6,
                peer_pods(),
                rules(4),
                rules(4),
            ),
            0..6,
        )
        .prop_map(|list| {
            list.into_iter()
                .enumerate()
                .map(
                    |(i, (tier, priority, subject, ingress, egress))| ClusterPolicy {
                        name: format!("p{i}"),
                        tier,
                        priority,
                        subject,
                        ingress,
                        egress,
                        log_accepted: false,
                    },
                )
                .collect()
        })
    }

    fn connections() -> Vec<Connection> {
        let mut out = Vec::new();
        for (sn, sp, dn, dp) in itertools_product() {
            for (protocol, port) in [
                (Protocol::Tcp, 80),
                (Protocol::Tcp, 8080),
                (Protocol::Udp, 53),
            ] {
                out.push(Connection {
                    source: small_ip(sn, sp),
                    destination: small_ip(dn, dp),
                    protocol,
                    port,
                });
            }
        }
        out
    }

    fn itertools_product() -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::new();
        for sn in 0..3 {
            for sp in 0..2 {
                for dn in 0..3 {
                    for dp in 0..2 {
                        out.push((sn, sp, dn, dp));
                    }
                }
            }
        }
        out
    }

    fn world_strategy() -> impl Strategy<Value = PolicyView> {
        (
            prop::collection::vec(0usize..2, 6),
            prop::collection::vec(0usize..2, 3),
        )
            .prop_map(|(apps, teams)| small_world(&apps, &teams))
    }

    /// A NetworkPolicy tier that isolates the pods of `ns0` for ingress and
    /// allows only TCP 80 there.
    fn np_tier(
        direction: Direction,
        pod: &Pod,
        _peer: IpAddr,
        _peer_pod: Option<&Pod>,
        protocol: Protocol,
        port: u16,
    ) -> NetworkPolicyVerdict {
        if direction == Direction::Ingress && pod.namespace == "ns0" {
            if protocol == Protocol::Tcp && port == 80 {
                NetworkPolicyVerdict::Allowed
            } else {
                NetworkPolicyVerdict::Denied
            }
        } else {
            NetworkPolicyVerdict::NotIsolated
        }
    }

    fn decide_all(view: &PolicyView, policies: &[ClusterPolicy]) -> Vec<Decision> {
        let nodes = Vec::new();
        let tiered = TieredView {
            view,
            nodes: &nodes,
            policies,
        };
        connections()
            .iter()
            .map(|c| tiered.decide(c, &np_tier))
            .collect()
    }

    fn verdicts(decision: &Decision) -> impl Iterator<Item = &Verdict> {
        decision.egress.iter().chain(decision.ingress.iter())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Decisions depend on priorities and names, never on the order
        /// the policies arrive in.
        #[test]
        fn the_order_policies_arrive_in_does_not_matter(view in world_strategy(), policies in policies()) {
            let mut reversed = policies.clone();
            reversed.reverse();
            prop_assert_eq!(decide_all(&view, &policies), decide_all(&view, &reversed));
        }

        /// A connection is allowed exactly when each evaluated direction
        /// is, and a direction decided by a rule follows its action.
        #[test]
        fn a_decision_is_its_directions(view in world_strategy(), policies in policies()) {
            for d in decide_all(&view, &policies) {
                prop_assert_eq!(d.allowed, verdicts(&d).all(|v| v.allowed));
                for v in verdicts(&d) {
                    if let DecidedBy::Rule(r) = &v.by {
                        prop_assert_ne!(r.action, Action::Pass);
                        prop_assert_eq!(v.allowed, r.action == Action::Accept);
                        // After a Pass in a tier, nothing later in it decides.
                        prop_assert!(v.passed.iter().all(|p| p.tier != r.tier));
                    }
                    prop_assert!(v.passed.len() <= 2);
                }
            }
        }

        /// An Admin policy ahead of all others that denies everyone decides
        /// every connection between pods, whatever else exists.
        #[test]
        fn the_first_admin_rule_that_matches_wins(view in world_strategy(), mut policies in policies()) {
            let everyone = PodPeer {
                namespaces: Namespaces::Selected(Selector::everything()),
                pods: Selector::everything(),
            };
            let deny = ClusterRule {
                index: 0,
                name: "deny".into(),
                action: Action::Deny,
                peers: vec![ClusterPeer::Pods(everyone.clone())],
                ports: Vec::new(),
            };
            policies.push(ClusterPolicy {
                name: "zz-first".into(),
                tier: Tier::Admin,
                priority: 0,
                subject: everyone,
                ingress: vec![deny.clone()],
                egress: vec![deny],
                log_accepted: false,
            });
            for d in decide_all(&view, &policies) {
                if d.same_pod {
                    prop_assert!(d.allowed);
                    continue;
                }
                prop_assert!(!d.allowed);
                for v in verdicts(&d) {
                    let DecidedBy::Rule(r) = &v.by else {
                        return Err(TestCaseError::fail(format!("not a rule: {v:?}")));
                    };
                    prop_assert_eq!((r.policy.as_str(), r.index), ("zz-first", 0));
                }
            }
        }

        /// Baseline policies never change what Admin or NetworkPolicy
        /// decided, and never decide in a direction NetworkPolicy isolates.
        #[test]
        fn baseline_never_overrides_admin_or_network_policy(view in world_strategy(), policies in policies()) {
            let admin_only: Vec<ClusterPolicy> =
                policies.iter().filter(|p| p.tier == Tier::Admin).cloned().collect();
            let without = decide_all(&view, &admin_only);
            let with = decide_all(&view, &policies);
            for (a, b) in without.iter().zip(&with) {
                for (va, vb) in verdicts(a).zip(verdicts(b)) {
                    if va.by != DecidedBy::Default {
                        prop_assert_eq!(va, vb);
                    }
                }
            }
        }

        /// Turning the rule that decided into a Pass hands the direction to
        /// the next tier, and flipping Accept and Deny flips the outcome.
        #[test]
        fn pass_skips_the_tier_and_actions_are_final(view in world_strategy(), policies in policies()) {
            let before = decide_all(&view, &policies);
            let conns = connections();
            for (c, d) in conns.iter().zip(&before) {
                for v in verdicts(d) {
                    let DecidedBy::Rule(r) = &v.by else { continue };
                    for (replacement, expect) in [(Action::Pass, None), (flip(r.action), Some(r))] {
                        let mut changed = policies.clone();
                        for p in changed.iter_mut().filter(|p| p.name == r.policy) {
                            let rules = match r.direction {
                                Direction::Ingress => &mut p.ingress,
                                Direction::Egress => &mut p.egress,
                            };
                            for rule in rules.iter_mut().filter(|x| x.index == r.index) {
                                rule.action = replacement;
                            }
                        }
                        let nodes = Vec::new();
                        let tiered = TieredView { view: &view, nodes: &nodes, policies: &changed };
                        let after = tiered.decide(c, &np_tier);
                        let v2 = match r.direction {
                            Direction::Egress => after.egress.clone(),
                            Direction::Ingress => after.ingress.clone(),
                        };
                        let Some(v2) = v2 else {
                            return Err(TestCaseError::fail("direction vanished"));
                        };
                        match expect {
                            None => {
                                prop_assert!(v2.passed.iter().any(|p| p.policy == r.policy && p.index == r.index));
                                if let DecidedBy::Rule(r2) = &v2.by {
                                    prop_assert!(r2.tier > r.tier, "{:?} after passing {:?}", r2, r);
                                }
                            }
                            Some(r) => {
                                prop_assert_eq!(v2.allowed, !v.allowed);
                                let DecidedBy::Rule(r2) = &v2.by else {
                                    return Err(TestCaseError::fail("no longer decided by the rule"));
                                };
                                prop_assert_eq!((&r2.policy, r2.index), (&r.policy, r.index));
                            }
                        }
                    }
                }
            }
        }
    }

    fn flip(action: Action) -> Action {
        match action {
            Action::Accept => Action::Deny,
            Action::Deny | Action::Pass => Action::Accept,
        }
    }

    proptest! {
        /// No policy text makes conversion panic, and every problem is one
        /// short, printable line.
        #[test]
        fn conversion_never_panics(
            tier in "[A-Za-z]{0,9}",
            priority in prop::num::i64::ANY,
            action in "[A-Za-z]{0,7}",
            cidr in "[0-9a-f:./]{0,20}",
            number in prop::num::i64::ANY,
            start in -2i64..70000,
            end in -2i64..70000,
            named in "\\PC{0,20}",
            rule_name in "\\PC{0,120}",
        ) {
            let value = with_spec(json!({
                "tier": tier, "priority": priority, "subject": {"namespaces": {}},
                "egress": [
                    {"name": rule_name, "action": action, "to": [{"networks": [cidr]}],
                     "protocols": [{"tcp": {"destinationPort": {"number": number}}},
                                   {"udp": {"destinationPort": {"range": {"start": start, "end": end}}}}]},
                    {"action": action, "to": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": named}]},
                ],
            }));
            let written: api::ClusterNetworkPolicy = serde_json::from_value(value)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            match convert_cluster_policy(&written) {
                Ok((policy, warnings)) => {
                    prop_assert!(policy.priority <= 1000);
                    for w in warnings {
                        let line = w.to_string();
                        prop_assert!(line.len() < 600, "{}", line);
                        prop_assert!(!line.chars().any(char::is_control), "{}", line);
                    }
                }
                Err(r) => prop_assert!(!r.to_string().chars().any(char::is_control)),
            }
        }
    }
}

/// `base/baseline_tier/standard-egress-udp-rules.yaml` and
/// `tests/baseline-admin-network-policy-standard-egress-udp-rules.go`,
/// which then swaps rules 0 and 1 to show rule order decides.
#[test]
fn conformance_baseline_egress_udp_rule_order() {
    let view = world();
    let baseline = |swap: bool| {
        let mut rules = vec![
            json!({"name": "allow-to-ravenclaw-everything", "action": "Accept",
                   "to": [{"namespaces": ns_name_selector("ravenclaw")}]}),
            json!({"name": "deny-to-ravenclaw-everything", "action": "Deny",
                   "to": [{"namespaces": ns_name_selector("ravenclaw")}]}),
            json!({"name": "deny-to-slytherin-at-port-5353", "action": "Deny",
                   "to": [{"namespaces": ns_name_selector("slytherin")}],
                   "protocols": [{"udp": {"destinationPort": {"number": 5353}}}]}),
            json!({"name": "allow-to-gryffindor-at-port-53", "action": "Accept",
                   "to": [{"namespaces": ns_name_selector("gryffindor")}],
                   "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}),
            json!({"name": "deny-to-gryffindor-everything-else", "action": "Deny",
                   "to": [{"namespaces": ns_name_selector("gryffindor")}]}),
        ];
        if swap {
            rules.swap(0, 1);
        }
        cnp(policy(
            "default",
            "Baseline",
            10,
            json!({"namespaces": ns_name_selector("hufflepuff")}),
            json!([]),
            Value::Array(rules),
        ))
    };
    let b = "Baseline:default";
    check(
        &view,
        &[baseline(false)],
        &[
            (
                "hufflepuff-0",
                "ravenclaw-0",
                "udp",
                53,
                &format!("allow egress={b}#0"),
            ),
            (
                "hufflepuff-1",
                "ravenclaw-0",
                "udp",
                5353,
                &format!("allow egress={b}#0"),
            ),
            (
                "hufflepuff-0",
                "slytherin-0",
                "udp",
                5353,
                &format!("deny egress={b}#2"),
            ),
            ("hufflepuff-1", "slytherin-0", "udp", 53, "allow"),
            (
                "hufflepuff-0",
                "gryffindor-0",
                "udp",
                53,
                &format!("allow egress={b}#3"),
            ),
            (
                "hufflepuff-1",
                "gryffindor-0",
                "udp",
                5353,
                &format!("deny egress={b}#4"),
            ),
            (
                "hufflepuff-1",
                "gryffindor-0",
                "tcp",
                53,
                &format!("deny egress={b}#4"),
            ),
        ],
    );
    // Swapped: the Deny (now first, still written as rule 0) decides.
    check(
        &view,
        &[baseline(true)],
        &[
            (
                "hufflepuff-0",
                "ravenclaw-0",
                "udp",
                53,
                &format!("deny egress={b}#0"),
            ),
            (
                "hufflepuff-1",
                "ravenclaw-0",
                "udp",
                5353,
                &format!("deny egress={b}#0"),
            ),
        ],
    );
    // A NetworkPolicy selecting the pods takes the decision from Baseline.
    let mut view = world();
    add_network_policy(
        &mut view,
        json!({
            "metadata": {"name": "allow-egress", "namespace": namespace("hufflepuff")},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
        }),
    );
    check(
        &view,
        &[baseline(true)],
        &[(
            "hufflepuff-0",
            "ravenclaw-0",
            "udp",
            53,
            "allow egress=NetworkPolicy",
        )],
    );
}
