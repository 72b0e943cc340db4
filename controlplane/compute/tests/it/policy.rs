//! NetworkPolicy compute, the pure part: which node gets which sets and
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

#[test]
fn bad_policies_are_skipped_with_a_reason() {
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
        found.contains("bad-except") && found.contains("not inside"),
        "{found}"
    );
    assert!(
        found.contains("bad-op") && found.contains("Near"),
        "{found}"
    );
    // The good policy still isolates y/a on node-2.
    assert_eq!(pod_chains(&flat(&index, "node-2"), Family::Inet).len(), 1);
}
