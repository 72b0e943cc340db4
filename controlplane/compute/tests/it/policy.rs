//! NetworkPolicy and ClusterNetworkPolicy compute, the pure part: which node gets which sets and
//! chains, set naming and sharing, bad policies. Packets are proven in
//! `integration/tests/it/policy_matrix.rs`.

use std::path::Path;

use setpoint_compute::{ClusterObject, ComputeConfig, Index};
use setpoint_dataplane::{Family, Fragment, MAX_SET_NAME_LEN, SetEntry, Table};

use crate::support::{problems, state_of};

fn objects(yaml: &str) -> Vec<ClusterObject> {
    let report = setpoint_source::parse_str(yaml, Path::new("policy.yaml"));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report.objects
}

/// Two nodes; pods x/a (node-1, dual-stack), x/b (node-2), y/a (node-2),
/// and a host-network pod on node-1.
const CLUSTER: &str = "
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.0.1.1}, {ip: 'fd00::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{name: web, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {app: a}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 192.168.0.1}
";

fn index(policies: &str) -> Index {
    let mut index = Index::new(ComputeConfig::default());
    for o in objects(CLUSTER).into_iter().chain(objects(policies)) {
        index.upsert(o);
    }
    index.commit();
    index
}

fn flat(index: &Index, node: &str) -> Fragment {
    let state = state_of(index, node);
    assert!(state.validate().is_empty(), "{:?}", state.validate());
    state.flatten()
}

fn policy_sets(f: &Fragment) -> Vec<(String, Vec<String>)> {
    f.sets()
        .filter(|(n, _)| {
            ["SP-P-", "SP-P6-", "SP-B-", "SP-B6-", "SP-N-", "SP-N6-"]
                .iter()
                .any(|prefix| n.starts_with(prefix))
        })
        .map(|(n, _)| {
            let entries = f
                .entries(n)
                .into_iter()
                .flatten()
                .map(SetEntry::to_string)
                .collect();
            (n.clone(), entries)
        })
        .collect()
}

fn pod_chains(f: &Fragment, family: Family) -> Vec<String> {
    f.chains()
        .filter(|(k, _)| k.family == family && k.table == Table::Filter)
        .filter(|(k, _)| k.name.starts_with("SP-I-") || k.name.starts_with("SP-E-"))
        .map(|(k, _)| k.name.clone())
        .collect()
}

const ALLOW_FROM_APP_A: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}]}]
";

#[test]
fn a_node_gets_chains_and_sets_only_for_its_own_selected_pods() {
    let index = index(ALLOW_FROM_APP_A);
    let node1 = flat(&index, "node-1");
    assert!(pod_chains(&node1, Family::Inet).is_empty());
    assert!(policy_sets(&node1).is_empty());
    assert!(node1.chains().all(|(k, _)| k.name != "SP-POLICY"));
    let node2 = flat(&index, "node-2");
    assert_eq!(pod_chains(&node2, Family::Inet).len(), 1, "x/b only");
    let sets = policy_sets(&node2);
    assert_eq!(sets.len(), 1);
    // Members: pods labelled app=a in any namespace, never the host-network one.
    assert_eq!(sets[0].1, ["10.0.1.1", "10.0.2.2"]);
    assert!(sets[0].0.len() <= MAX_SET_NAME_LEN);
}

#[test]
fn set_names_follow_the_selector_not_the_members_and_are_shared() {
    let one = index(ALLOW_FROM_APP_A);
    let same_selector_twice = format!(
        "{ALLOW_FROM_APP_A}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: egress-to-a, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: a}}}}}}]}}]
"
    );
    let two = index(&same_selector_twice);
    let names = |i: &Index| -> Vec<String> {
        policy_sets(&flat(i, "node-2"))
            .into_iter()
            .map(|s| s.0)
            .collect()
    };
    assert_eq!(names(&one), names(&two), "one set serves both rules");
    assert_eq!(
        pod_chains(&flat(&two, "node-2"), Family::Inet).len(),
        2,
        "ingress and egress chains"
    );
    // A new member keeps the set's name and adds an entry.
    let mut grown = index(ALLOW_FROM_APP_A);
    grown.upsert(
        objects(
            "apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.9}
",
        )
        .remove(0),
    );
    let outcome = grown.commit();
    assert!(outcome.changed_nodes.iter().any(|n| &**n == "node-2"));
    let after = policy_sets(&flat(&grown, "node-2"));
    assert_eq!(after[0].0, names(&one)[0]);
    assert_eq!(after[0].1, ["10.0.1.1", "10.0.1.9", "10.0.2.2"]);
}

#[test]
fn dual_stack_pods_get_chains_in_both_families() {
    let index = index(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress]}
",
    );
    let node1 = flat(&index, "node-1");
    assert_eq!(pod_chains(&node1, Family::Inet).len(), 1);
    assert_eq!(pod_chains(&node1, Family::Inet6).len(), 1);
    let dispatch = |family| {
        node1
            .chains()
            .find(|(k, _)| k.family == family && k.name == "SP-POLICY")
            .map(|(_, c)| c.rules.iter().map(|r| r.0.join(" ")).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(
        dispatch(Family::Inet)
            .iter()
            .any(|r| r.starts_with("-d 10.0.1.1/32 -j SP-I-"))
    );
    assert!(
        dispatch(Family::Inet6)
            .iter()
            .any(|r| r.starts_with("-d fd00::1/128 -j SP-I-"))
    );
    // The host-network pod matches the selector but is not policed.
    assert!(
        !dispatch(Family::Inet)
            .iter()
            .any(|r| r.contains("192.168.0.1"))
    );
}

#[test]
fn ip_block_everything_is_two_halves_with_nomatch_exceptions() {
    let index = index(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: world, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
",
    );
    let sets = policy_sets(&flat(&index, "node-2"));
    assert_eq!(sets.len(), 1);
    assert_eq!(
        sets[0].1,
        ["0.0.0.0/1", "10.0.0.0/8 nomatch", "128.0.0.0/1"]
    );
}

#[test]
fn named_ports_resolve_per_pod() {
    let index = index(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: web}]}]
  egress: [{to: [{podSelector: {}}], ports: [{port: web}]}]
",
    );
    let rules = |node: &str| -> Vec<String> {
        flat(&index, node)
            .chains()
            .filter(|(k, _)| k.name.starts_with("SP-I-"))
            .flat_map(|(_, c)| c.rules.iter().map(|r| r.0.join(" ")).collect::<Vec<_>>())
            .collect()
    };
    assert!(
        rules("node-1").iter().any(|r| r.contains("--dport 8080")),
        "{:?}",
        rules("node-1")
    );
    assert!(
        rules("node-2").iter().any(|r| r.contains("--dport 9090")),
        "{:?}",
        rules("node-2")
    );
    // Egress: the destination's own number, as (IP, port) pairs.
    let named: Vec<(String, Vec<String>)> = policy_sets(&flat(&index, "node-1"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("SP-N-"))
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].1, ["10.0.1.1,tcp:8080", "10.0.2.1,tcp:9090"]);
}

/// The rules of the chain `node`'s dispatch sends `ip`'s traffic to, for
/// `direction` `"I"` (ingress, `-d`) or `"E"` (egress, `-s`); `None` when
/// the pod is not isolated that way.
fn pod_chain_rules(index: &Index, node: &str, ip: &str, direction: &str) -> Option<Vec<String>> {
    let f = flat(index, node);
    let matcher = if direction == "I" { "-d" } else { "-s" };
    let prefix = format!("{matcher} {ip}/32 -j SP-{direction}-");
    let dispatch = f
        .chains()
        .find(|(k, _)| k.family == Family::Inet && k.name == "SP-POLICY")?;
    let rule = dispatch
        .1
        .rules
        .iter()
        .find(|r| r.0.join(" ").starts_with(&prefix))?;
    let target = rule.0.last()?;
    let chain = f
        .chains()
        .find(|(k, _)| k.family == Family::Inet && &k.name == target)?;
    // NetworkPolicy's closing DROP names the namespace and direction (what
    // `explain` and the verdict log quote); checked here, shown short.
    let np_drop = |text: String| match text.strip_prefix("-m comment --comment np:") {
        Some(rest) => {
            let (head, tail) = rest.split_once(": ").unwrap_or_default();
            let dir = if direction == "I" {
                "ingress"
            } else {
                "egress"
            };
            assert!(head.ends_with(&format!("/{dir}")), "{text}");
            assert_eq!(tail, "no NetworkPolicy rule allows -j DROP", "{text}");
            "-j DROP".to_string()
        }
        None => text,
    };
    Some(
        chain
            .1
            .rules
            .iter()
            .map(|r| np_drop(r.0.join(" ")))
            .collect(),
    )
}

#[test]
fn bad_policies_fail_closed_with_a_reason() {
    let index = index(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-cidr, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-except, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-op, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: a, operator: Near}]}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
",
    );
    let found = problems(&index).join("\n");
    assert!(
        found.contains("bad-cidr") && found.contains("10.0.0.0/33"),
        "{found}"
    );
    assert!(
        found.contains("bad-except") && found.contains("not a strict subset"),
        "{found}"
    );
    assert!(
        found.contains("bad-op") && found.contains("Near") && found.contains("allows nothing"),
        "{found}"
    );
    // None of them opens anything: bad-op's `ingress: [{}]` would allow
    // everyone, so the unreadable policy isolates all of x both ways.
    for direction in ["I", "E"] {
        for (node, ip) in [("node-1", "10.0.1.1"), ("node-2", "10.0.2.1")] {
            assert_eq!(
                pod_chain_rules(&index, node, ip, direction),
                Some(vec!["-j DROP".to_string()]),
                "{node} {ip} {direction}"
            );
        }
    }
    // The good policy still isolates y/a on node-2.
    assert_eq!(
        pod_chain_rules(&index, "node-2", "10.0.2.2", "I"),
        Some(vec!["-j DROP".to_string()])
    );
}

/// y's policy, a neighbour of every bad object below: y/a (node-2) admits
/// pods labelled app=a from any namespace.
const NEIGHBOUR: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}]}]
";

/// y's policy as computed on node-2: one set of app=a pods, allowed in.
fn assert_neighbour_computed(index: &Index) {
    assert!(
        index.invalid_nodes().is_empty(),
        "{:?}",
        index.invalid_nodes()
    );
    let rules = pod_chain_rules(index, "node-2", "10.0.2.2", "I").expect("y/a is isolated");
    assert_eq!(rules.len(), 2, "{rules:?}");
    let set = rules[0]
        .strip_prefix("-m set --match-set ")
        .and_then(|r| r.strip_suffix(" src -j RETURN"))
        .unwrap_or_else(|| panic!("{rules:?}"));
    let node2 = flat(index, "node-2");
    let members: Vec<String> = node2
        .entries(set)
        .into_iter()
        .flatten()
        .map(SetEntry::to_string)
        .collect();
    assert_eq!(members, ["10.0.1.1", "10.0.2.2"]);
}

struct TenantTextCase {
    name: &'static str,
    yaml: String,
    /// Substrings of the one problem the bad object gets.
    problem: &'static [&'static str],
    /// (node, pod IP, "I" or "E", the rules of the pod's chain): how the
    /// bad object's own pods are left.
    isolated: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    )],
}

const DROP_ONLY: &[&str] = &["-j DROP"];

/// Text a tenant writes (labels, selectors, named ports, names) that the
/// API server would refuse: reported against its object, never in a
/// state, never holding a node, never opening access.
fn tenant_text_cases() -> Vec<TenantTextCase> {
    vec![
    TenantTextCase {
        name: "pod label value with a newline",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: v1
kind: Pod
metadata: {name: evil, namespace: x, labels: {app: "a\nb"}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.9}
"#.to_string(),
        problem: &["Pod x/evil", "label value \"a\\nb\""],
        // Still policed by x's policy, and no member of y's app=a set.
        isolated: &[("node-2", "10.0.2.9", "I", DROP_ONLY)],
    },
    TenantTextCase {
        name: "peer selector value with a newline",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: "a\nb"}}}]}]
"#),
        problem: &[
            "NetworkPolicy x/evil",
            "ingress rule 0, peer 0: podSelector: matchLabels",
            "\"a\\nb\"",
        ],
        isolated: &[("node-2", "10.0.2.1", "I", DROP_ONLY)],
    },
    TenantTextCase {
        name: "namespace selector value over 63 bytes",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]}]}}]}]
"#),
        problem: &[
            "NetworkPolicy x/evil",
            "egress rule 0, peer 0: namespaceSelector",
        ],
        isolated: &[("node-2", "10.0.2.1", "E", DROP_ONLY)],
    },
    TenantTextCase {
        name: "policy named port with a control character",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}], ports: [{port: "we\tb"}]}]
"#),
        problem: &["NetworkPolicy x/evil", "port name \"we\\tb\""],
        isolated: &[("node-2", "10.0.2.1", "E", DROP_ONLY)],
    },
    TenantTextCase {
        name: "pod named port with a control character",
        yaml: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: evil}}
  ingress: [{ports: [{port: web}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: evil, namespace: x, labels: {app: evil}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{name: "w\aeb", containerPort: 81}, {name: web, containerPort: 80}]}]
status: {phase: Running, podIP: 10.0.2.9}
"#.to_string(),
        problem: &["Pod x/evil", "named port left out", "\"w\\u{7}eb\""],
        isolated: &[(
            "node-2",
            "10.0.2.9",
            "I",
            &["-p tcp --dport 80 -j RETURN", "-j DROP"],
        )],
    },
    TenantTextCase {
        name: "pod selector of the policy itself with a newline",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: "b\n"}}
  ingress: [{}]
"#),
        problem: &["NetworkPolicy x/evil", "podSelector", "allows nothing"],
        isolated: &[
            ("node-1", "10.0.1.1", "I", DROP_ONLY),
            ("node-2", "10.0.2.1", "I", DROP_ONLY),
            ("node-2", "10.0.2.1", "E", DROP_ONLY),
        ],
    },
    TenantTextCase {
        name: "ipBlock except of the whole cidr",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [0.0.0.0/0]}}]}]
"#),
        problem: &["NetworkPolicy x/evil", "not a strict subset"],
        isolated: &[("node-2", "10.0.2.1", "I", DROP_ONLY)],
    },
    TenantTextCase {
        name: "a peer with no selector and no ipBlock",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{}]}]
"#),
        problem: &["NetworkPolicy x/evil", "a peer needs podSelector"],
        isolated: &[("node-2", "10.0.2.1", "I", DROP_ONLY)],
    },
    TenantTextCase {
        name: "an ipBlock beside a selector, and a port 0",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]
  - ports: [{port: 0}]
"#),
        problem: &["NetworkPolicy x/evil", "ingress rule 1, port 0: port 0"],
        isolated: &[("node-2", "10.0.2.1", "I", DROP_ONLY)],
    },
    TenantTextCase {
        name: "an unknown policyType isolates both directions",
        yaml: evil_in_x(r#"
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingres]
  ingress: [{ports: [{port: 80}]}]
"#),
        problem: &["NetworkPolicy x/evil", "policyTypes \"Ingres\""],
        isolated: &[
            ("node-2", "10.0.2.1", "I", &["-p tcp --dport 80 -j RETURN", "-j DROP"]),
            ("node-2", "10.0.2.1", "E", DROP_ONLY),
        ],
    },
    TenantTextCase {
        name: "namespace name with a newline in a policy's own-namespace peer",
        yaml: r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: "bad\nns", labels: {app: p}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: evil, namespace: "bad\nns"}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: p}}}]}]
"#.to_string(),
        problem: &[
            "NetworkPolicy \"bad\\nns\"/evil",
            "metadata.namespace",
            "is not a DNS label",
        ],
        isolated: &[(
            "node-2",
            "10.0.2.9",
            "I",
            &["-m set --match-set SP-P-", "-j DROP"],
        )],
    },
]
}

/// NetworkPolicy x/evil with `spec` (its fields indented two spaces).
fn evil_in_x(spec: &str) -> String {
    const HEADER: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: evil, namespace: x}
spec:
";
    format!("{HEADER}{}", spec.trim_start_matches('\n'))
}

#[test]
fn tenant_text_outside_kubernetes_syntax_stops_no_node_and_opens_nothing() {
    for case in tenant_text_cases() {
        let name = case.name;
        // From scratch, and as an update to a node already computed.
        let fresh = index(&format!("{NEIGHBOUR}---{}", case.yaml));
        let mut updated = index(NEIGHBOUR);
        for o in objects(&case.yaml) {
            updated.upsert(o);
        }
        updated.commit();
        for index in [&fresh, &updated] {
            for node in ["node-1", "node-2"] {
                let state = index.node_state(node).expect("node");
                assert!(
                    state.validate().is_empty(),
                    "{name}: {:?}",
                    state.validate()
                );
            }
            assert_neighbour_computed(index);
            let found = problems(index);
            assert!(
                found
                    .iter()
                    .any(|p| case.problem.iter().all(|part| p.contains(part))),
                "{name}: no problem with {:?} in {found:#?}",
                case.problem
            );
            assert!(
                found.iter().all(|p| !p.starts_with("skipped ")),
                "{name}: {found:#?}"
            );
            for (node, ip, direction, rules) in case.isolated.iter() {
                let actual = pod_chain_rules(index, node, ip, direction).unwrap_or_else(|| {
                    panic!("{name}: {ip} on {node} is not isolated ({direction})")
                });
                assert_eq!(actual.len(), rules.len(), "{name}: {actual:?}");
                for (rule, want) in actual.iter().zip(rules.iter()) {
                    assert!(rule.starts_with(want), "{name}: {actual:?}");
                }
            }
        }
        assert_eq!(
            updated.node_digest("node-2"),
            fresh.node_digest("node-2"),
            "{name}: incremental differs from fresh"
        );
    }
}

mod arbitrary_text {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as networking;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use setpoint_compute::ClusterObject;

    use super::*;

    fn selector(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.to_string(),
                operator: "In".into(),
                values: Some(vec![value.to_string()]),
            }]),
        }
    }

    /// A pod on node-2 and a policy in `namespace` that write `text`
    /// wherever a tenant may write: names, labels, selectors, named ports.
    fn tenant_objects(namespace: &str, key: &str, value: &str, port: &str) -> Vec<ClusterObject> {
        let meta = |name: &str| ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            ..Default::default()
        };
        let pod = core::Pod {
            metadata: meta("p"),
            spec: Some(core::PodSpec {
                node_name: Some("node-2".into()),
                containers: vec![core::Container {
                    name: "c".into(),
                    ports: Some(vec![core::ContainerPort {
                        name: Some(port.to_string()),
                        container_port: 80,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.2.9".into()),
                ..Default::default()
            }),
        };
        let peer = networking::NetworkPolicyPeer {
            pod_selector: Some(selector(key, value)),
            namespace_selector: Some(selector(key, value)),
            ip_block: None,
        };
        let own_namespace_peer = networking::NetworkPolicyPeer {
            pod_selector: Some(selector(key, value)),
            ..Default::default()
        };
        let ports = Some(vec![networking::NetworkPolicyPort {
            port: Some(IntOrString::String(port.to_string())),
            ..Default::default()
        }]);
        let policy = networking::NetworkPolicy {
            metadata: meta(value),
            spec: Some(networking::NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![networking::NetworkPolicyIngressRule {
                    from: Some(vec![peer.clone(), own_namespace_peer.clone()]),
                    ports: ports.clone(),
                }]),
                egress: Some(vec![networking::NetworkPolicyEgressRule {
                    to: Some(vec![peer, own_namespace_peer]),
                    ports,
                }]),
            }),
        };
        let namespace = core::Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        vec![
            ClusterObject::Pod(pod),
            ClusterObject::NetworkPolicy(policy),
            ClusterObject::Namespace(namespace),
        ]
    }

    /// Mostly near-valid text, with control characters, slashes, capitals
    /// and lengths around the limits.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9][a-z0-9.-]{0,20}",
            "[a-zA-Z0-9./_\\-\n\t\u{7}\u{0} ]{0,80}",
            ".{0,300}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever a tenant writes, every node's state stays publishable
        /// and the neighbour's policy is computed.
        #[test]
        fn no_tenant_text_makes_a_state_invalid(
            namespace in text(),
            key in text(),
            value in text(),
            port in text(),
        ) {
            let mut index = index(NEIGHBOUR);
            for o in tenant_objects(&namespace, &key, &value, &port) {
                index.upsert(o);
            }
            index.commit();
            for node in ["node-1", "node-2"] {
                let state = index.node_state(node).expect("node");
                prop_assert!(state.validate().is_empty(), "{:?}", state.validate());
            }
            assert_neighbour_computed(&index);
            for problem in index.problems() {
                let text = problem.rejection.to_string();
                prop_assert!(!text.chars().any(char::is_control), "{text:?}");
            }
        }
    }
}

const TIERS: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: no-nodes, action: Deny, to: [{nodes: {}}]}
  - {name: to-y, action: Pass, to: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: web, action: Accept, to: [{pods: {podSelector: {}}}], protocols: [{destinationNamedPort: web}]}
  ingress:
  - {name: web, action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: web}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: floor}
spec:
  tier: Baseline
  priority: 0
  subject: {namespaces: {}}
  egress:
  - {name: outside, action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {range: {start: 1, end: 1023}}}}]}
";

/// A TCP connection from x/a (10.0.1.1 on node-1) to `dst`:`port`.
fn packet(dst: &str, port: u16) -> setpoint_dataplane::explain::Packet {
    use setpoint_dataplane::explain::{Origin, Packet};
    Packet {
        protocol: setpoint_dataplane::model::Protocol::Tcp,
        src: "10.0.1.1".parse().expect("address"),
        src_port: Some(40000),
        dst: dst.parse().expect("address"),
        dst_port: port,
        from: Origin::Pod,
    }
}

/// A pod chain's rules with set names shown as their kind and members.
fn chain_text(f: &Fragment, family: Family, name: &str) -> Vec<String> {
    let Some((_, chain)) = f
        .chains()
        .find(|(k, _)| k.family == family && k.name == name)
    else {
        return Vec::new();
    };
    chain
        .rules
        .iter()
        .map(|r| {
            r.0.iter()
                .map(|w| match f.entries(w) {
                    Some(entries) => {
                        let kind: String = w.split('-').take(2).collect::<Vec<_>>().join("-");
                        let members: Vec<String> =
                            entries.iter().map(SetEntry::to_string).collect();
                        format!("{kind}[{}]", members.join(","))
                    }
                    None => w.clone(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The layout in one place: Admin rules in order (Deny DROP, Pass a goto
/// to the tail, Accept RETURN), the tail with Baseline (no NetworkPolicy
/// isolates x/a), each rule's comment naming its tier, policy and rule;
/// the IPv6 chain has only what has IPv6 members.
#[test]
fn cluster_network_policy_tiers_become_one_chain_per_pod_and_direction() {
    let index = index(TIERS);
    let node1 = flat(&index, "node-1");
    let Some(egress) = pod_chain_rules(&index, "node-1", "10.0.1.1", "E") else {
        panic!("x/a has an egress chain");
    };
    let chain = egress
        .iter()
        .find_map(|r| r.strip_prefix("-g "))
        .unwrap_or_default();
    assert!(chain.ends_with("-T"), "{egress:?}");
    let main = chain.trim_end_matches("-T");
    assert_eq!(
        chain_text(&node1, Family::Inet, main),
        [
            "-m set --match-set SP-H[192.168.0.1,192.168.0.2] dst -m comment --comment cnp:Admin/guard/egress rule 0: Deny -j DROP",
            "-m set --match-set SP-P[10.0.2.2] dst -m comment --comment cnp:Admin/guard/egress rule 1: Pass -g SP-E-TAIL",
            "-m set --match-set SP-P[10.0.1.1,10.0.2.1,10.0.2.2] dst -m set --match-set SP-N[10.0.1.1,tcp:8080,10.0.2.1,tcp:9090] dst,dst -m comment --comment cnp:Admin/guard/egress rule 2: Accept -j RETURN",
            "-g SP-E-TAIL",
        ]
        .map(|r| r.replace("SP-E-TAIL", chain))
    );
    assert_eq!(
        chain_text(&node1, Family::Inet, chain),
        [
            "-m set --match-set SP-C[0.0.0.0/1,128.0.0.0/1] dst -p tcp --dport 1:1023 -m comment --comment cnp:Baseline/floor/egress rule 0: Deny -j DROP"
        ]
    );
    // IPv6: no node or pod of x has an IPv6 peer address but x/a itself;
    // the IPv4 networks leave the Baseline tail empty, so Pass returns.
    let v6: Vec<String> = chain_text(&node1, Family::Inet6, main);
    assert_eq!(v6.len(), 3, "{v6:?}");
    assert!(v6[1].ends_with("rule 1: Pass -j RETURN"), "{v6:?}");
    assert!(chain_text(&node1, Family::Inet6, chain).is_empty());
    // Ingress: the named port is x/a's own.
    let Some(ingress) = pod_chain_rules(&index, "node-1", "10.0.1.1", "I") else {
        panic!("x/a has an ingress chain");
    };
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert!(
        ingress[0].ends_with("-p tcp --dport 8080 -m comment --comment cnp:Admin/guard/ingress rule 0: Accept -j RETURN"),
        "{ingress:?}"
    );
}

/// `explain`'s one-line reason names the ClusterNetworkPolicy rule that
/// dropped the packet: the tier, the policy and the rule, as the chain's
/// comment writes them.
#[test]
fn explain_names_the_tier_policy_and_rule_that_dropped_a_packet() {
    use setpoint_dataplane::explain::{Verdict, explain};

    let index = index(TIERS);
    let state = state_of(&index, "node-1");
    // x/a to node-2's address: Admin guard's rule 0 denies nodes.
    let e = explain(&state, &packet("192.168.0.2", 22)).expect("explains");
    assert_eq!(e.verdict, Verdict::Drop, "{e:?}");
    assert!(
        e.reason.contains("(cnp:Admin/guard/egress rule 0: Deny)"),
        "{}",
        e.reason
    );
    // x/a to an outside address on port 443: passes Admin, then the
    // Baseline floor denies TCP 1-1023 to 0.0.0.0/0.
    let e = explain(&state, &packet("203.0.113.9", 443)).expect("explains");
    assert_eq!(e.verdict, Verdict::Drop, "{e:?}");
    assert!(
        e.reason
            .contains("(cnp:Baseline/floor/egress rule 0: Deny)"),
        "{}",
        e.reason
    );
}

/// x/a's egress to y/a: Admin guard's rule 1 passes it to the (empty)
/// NetworkPolicy tier and Baseline; to x/b's web port Admin accepts. The
/// reason of an allowed packet names the rules that let it on.
#[test]
fn explain_names_the_rules_that_accepted_or_passed_a_packet() {
    use setpoint_dataplane::explain::{Verdict, explain};

    let index = index(TIERS);
    let state = state_of(&index, "node-1");
    let e = explain(&state, &packet("10.0.2.2", 8080)).expect("explains");
    assert_ne!(e.verdict, Verdict::Drop, "{e:?}");
    assert!(
        e.reason
            .ends_with("(policy: cnp:Admin/guard/egress rule 1: Pass)"),
        "{}",
        e.reason
    );
    let e = explain(&state, &packet("10.0.2.1", 9090)).expect("explains");
    assert_ne!(e.verdict, Verdict::Drop, "{e:?}");
    assert!(
        e.reason
            .ends_with("(policy: cnp:Admin/guard/egress rule 2: Accept)"),
        "{}",
        e.reason
    );
    // Nothing of policy decided: nothing named.
    let e = explain(&state, &packet("203.0.113.9", 8443)).expect("explains");
    assert!(!e.reason.contains("policy:"), "{}", e.reason);
}

fn index_logging(policies: &str) -> Index {
    let mut index = Index::new(ComputeConfig {
        verdict_log: Some(setpoint_compute::layout::VerdictLog {
            group: 77,
            per_second: 5,
            burst: 9,
        }),
        ..ComputeConfig::default()
    });
    for o in objects(CLUSTER).into_iter().chain(objects(policies)) {
        index.upsert(o);
    }
    index.commit();
    index
}

/// With verdict logging on: before each Deny (and NetworkPolicy's DROP) an
/// NFLOG rule with the same matches and comment, rate-limited, whose
/// prefix hashes that comment; Accept and Pass only for an annotated
/// policy. Off, no NFLOG rule exists and the state is unchanged. Either
/// way explain gives the same verdicts.
#[test]
fn verdict_logging_puts_a_limited_nflog_rule_before_each_logged_verdict() {
    use setpoint_compute::policy::{LoggedVerdict, verdict_log_prefix};
    use setpoint_dataplane::explain::explain;

    let annotated = TIERS.replacen(
        "metadata: {name: floor}",
        "metadata: {name: floor, annotations: {setpoint.io/log-accepted: 'true'}}",
        1,
    ) + "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-web, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 8080}]}]
";
    let off = index(&annotated);
    let on = index_logging(&annotated);
    for node in ["node-1", "node-2"] {
        let off = flat(&off, node);
        assert!(
            off.chains()
                .all(|(_, c)| c.rules.iter().all(|r| r.target() != Some("NFLOG"))),
            "{node}: NFLOG without logging"
        );
    }
    let rules_of = |index: &Index, node: &str| -> Vec<Vec<String>> {
        flat(index, node)
            .chains()
            .filter(|(k, _)| k.family == Family::Inet)
            .flat_map(|(_, c)| c.rules.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .collect()
    };
    let node1 = rules_of(&on, "node-1");
    let logs: Vec<&Vec<String>> = node1
        .iter()
        .filter(|r| r.iter().any(|w| w == "NFLOG"))
        .collect();
    // guard: rule 0 (Deny) only, not its Pass or Accepts; floor (annotated
    // but it has only a Deny rule, so one).
    let comments: Vec<&str> = logs
        .iter()
        .filter_map(|r| {
            let i = r.iter().position(|w| w == "--comment")?;
            r.get(i + 1).map(String::as_str)
        })
        .collect();
    assert!(
        comments.contains(&"cnp:Admin/guard/egress rule 0: Deny")
            && comments.contains(&"cnp:Baseline/floor/egress rule 0: Deny")
            && !comments
                .iter()
                .any(|c| c.contains("Accept") || c.contains("Pass")),
        "{comments:?}"
    );
    for log in &logs {
        let text = log.join(" ");
        assert!(
            text.contains("-m limit --limit 5/second --limit-burst 9 -j NFLOG --nflog-group 77"),
            "{text}"
        );
        let at = |flag: &str| {
            let i = log.iter().position(|w| w == flag).expect("flag");
            log[i + 1].clone()
        };
        let comment = at("--comment");
        let prefix = at("--nflog-prefix");
        assert_eq!(prefix, verdict_log_prefix(LoggedVerdict::Drop, &comment));
        assert!(prefix.len() <= 63, "{prefix}");
        // The verdict rule right after it: the same matches.
        let next = node1
            .iter()
            .skip_while(|r| *r != *log)
            .nth(1)
            .expect("a rule after the log rule");
        // The matches: every word up to and with the comment.
        let matches = |r: &[String]| -> Vec<String> {
            let end = r.iter().position(|w| w == "--comment").map_or(0, |i| i + 2);
            r[..end.min(r.len())].to_vec()
        };
        assert_eq!(matches(log), matches(next), "{text}");
        assert_eq!(next.last().map(String::as_str), Some("DROP"), "{next:?}");
    }
    // node-2: y/a is isolated by NetworkPolicy: its DROP is logged, and
    // the annotated floor has no Accept, so nothing else is; x/b (guard's
    // subject) gets guard's Deny logged.
    let node2 = rules_of(&on, "node-2");
    let np_logs = node2
        .iter()
        .filter(|r| r.iter().any(|w| w == "NFLOG"))
        .filter(|r| {
            r.iter()
                .any(|w| w == "np:y/ingress: no NetworkPolicy rule allows")
        })
        .count();
    assert_eq!(np_logs, 1, "{node2:?}");
    // An annotated Accept is logged as accept.
    let accepting = annotated.replace(
        "  - {name: outside, action: Deny,",
        "  - {name: dns, action: Accept, to: [{networks: [10.96.0.10/32]}]}
  - {name: outside, action: Deny,",
    );
    let node1 = rules_of(&index_logging(&accepting), "node-1");
    let accept_prefix = verdict_log_prefix(
        LoggedVerdict::Accept,
        "cnp:Baseline/floor/egress rule 0: Accept",
    );
    assert!(
        node1.iter().any(|r| r.contains(&accept_prefix)),
        "{node1:?}"
    );
    // The same verdicts with and without the log rules.
    let (with, without) = (state_of(&on, "node-1"), state_of(&off, "node-1"));
    for (dst, port) in [
        ("192.168.0.2", 22),
        ("203.0.113.9", 443),
        ("10.0.2.2", 8080),
        ("10.0.2.1", 9090),
    ] {
        let packet = packet(dst, port);
        let a = explain(&with, &packet).expect("explains");
        let b = explain(&without, &packet).expect("explains");
        assert_eq!(a.verdict, b.verdict, "{dst}:{port}");
        // The same rule decides (its place in the chain moved by the log
        // rules before it).
        let named = |reason: &str| reason.split_once(" (").map(|(_, r)| r.to_string());
        assert_eq!(named(&a.reason), named(&b.reason), "{dst}:{port}");
        assert!(named(&a.reason).is_some(), "{}", a.reason);
        assert!(a.not_evaluated.is_empty(), "{:?}", a.not_evaluated);
    }
}
