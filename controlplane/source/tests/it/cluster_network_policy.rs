//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) in manifests:
//! dispatched on apiVersion and kind like the k8s-openapi kinds, cluster
//! scoped, and decoded loosely (values out of range are the index's to
//! report, not the source's).

use std::path::Path;

use setpoint_compute::ClusterObject;
use setpoint_compute::policy::cluster::api::ClusterNetworkPolicy;
use setpoint_source::parse_str;

use crate::{check, render};

const FULL: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: sensitive-ns
  labels: {team: platform}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels: {kubernetes.io/metadata.name: sensitive}
  ingress:
  - name: deny-from-others
    action: Deny
    from:
    - namespaces:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [sensitive]}
  egress:
  - name: dns
    action: Accept
    to:
    - pods:
        namespaceSelector:
          matchLabels: {kubernetes.io/metadata.name: kube-system}
        podSelector:
          matchLabels: {k8s-app: kube-dns}
    protocols:
    - udp: {destinationPort: {number: 53}}
    - tcp: {destinationPort: {range: {start: 53, end: 54}}}
  - name: nodes-and-networks
    action: Pass
    to:
    - nodes: {matchLabels: {node-role.kubernetes.io/control-plane: ''}}
    - networks: [192.0.2.0/24, '2001:db8::/64']
  - name: named
    action: Deny
    to:
    - pods: {podSelector: {}}
    protocols:
    - destinationNamedPort: http
";

fn only_policy(text: &str) -> ClusterNetworkPolicy {
    let report = parse_str(text, Path::new("m.yaml"));
    match report.objects.as_slice() {
        [ClusterObject::ClusterNetworkPolicy(policy)] => policy.clone(),
        _ => panic!("expected one ClusterNetworkPolicy: {}", render(&report)),
    }
}

#[test]
fn a_cluster_network_policy_is_read_into_the_typed_object() {
    let policy = only_policy(FULL);
    assert_eq!(policy.metadata.name.as_deref(), Some("sensitive-ns"));
    assert_eq!(policy.metadata.namespace, None);
    let spec = policy.spec.as_ref().expect("spec");
    assert_eq!(spec.tier, "Admin");
    assert_eq!(spec.priority, Some(10));
    let subject = spec
        .subject
        .namespaces
        .as_ref()
        .expect("namespaces subject");
    assert_eq!(
        subject
            .match_labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/metadata.name")),
        Some(&"sensitive".to_owned())
    );
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        (ingress[0].name.as_str(), ingress[0].action.as_str()),
        ("deny-from-others", "Deny")
    );

    let egress = spec.egress.as_deref().unwrap_or_default();
    let names: Vec<(&str, &str)> = egress
        .iter()
        .map(|r| (r.name.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("dns", "Accept"),
            ("nodes-and-networks", "Pass"),
            ("named", "Deny")
        ]
    );
    let protocols = egress[0].protocols.as_deref().unwrap_or_default();
    let udp = protocols[0]
        .udp
        .as_ref()
        .and_then(|p| p.destination_port.as_ref());
    assert_eq!(udp.and_then(|p| p.number), Some(53));
    let tcp = protocols[1]
        .tcp
        .as_ref()
        .and_then(|p| p.destination_port.as_ref());
    let range = tcp.and_then(|p| p.range.as_ref()).expect("a port range");
    assert_eq!((range.start, range.end), (53, 54));
    let peers = egress[1].to.as_deref().unwrap_or_default();
    assert!(peers[0].nodes.is_some());
    assert_eq!(
        peers[1].networks.as_deref().unwrap_or_default(),
        ["192.0.2.0/24", "2001:db8::/64"]
    );
    let named = egress[2].protocols.as_deref().unwrap_or_default();
    assert_eq!(named[0].destination_named_port.as_deref(), Some("http"));
}

/// What the type writes (apiVersion and kind included) is a manifest the
/// source reads back as the same object.
#[test]
fn a_written_policy_reads_back_the_same() {
    let policy = only_policy(FULL);
    let written = serde_yaml_ng::to_string(&policy).expect("serializable");
    assert_eq!(only_policy(&written), policy);
}

/// Good and bad documents side by side: every bad one is skipped with its
/// reason (or ignored, for another API's kind of the same name) and counted,
/// and its neighbours are kept.
#[test]
fn good_and_bad_cluster_network_policies_side_by_side() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: good}
spec: {tier: Baseline, priority: 5, subject: {namespaces: {}}}",
            "object ClusterNetworkPolicy/good",
        ),
        // Cluster-scoped: a namespace written on it is dropped, as for Nodes.
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: namespaced, namespace: shop}
spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}",
            "object ClusterNetworkPolicy/namespaced",
        ),
        // Decodes: the tier, the priority's range and the missing spec are
        // the index's to reject (a policy not enforced, with a problem).
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: odd-values}
spec: {tier: Sideline, priority: 5000, subject: {}}",
            "object ClusterNetworkPolicy/odd-values",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-spec}",
            "object ClusterNetworkPolicy/no-spec",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: old}",
            "skipped m.yaml doc 5 (ClusterNetworkPolicy old): unsupported apiVersion \
             policy.networking.k8s.io/v1alpha1 for ClusterNetworkPolicy, \
             expected policy.networking.k8s.io/v1alpha2",
        ),
        (
            "kind: ClusterNetworkPolicy
metadata: {name: unversioned}",
            "skipped m.yaml doc 6 (ClusterNetworkPolicy unversioned): missing apiVersion, \
             expected policy.networking.k8s.io/v1alpha2",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {namespace: shop}
spec: {tier: Admin}",
            "skipped m.yaml doc 7 (ClusterNetworkPolicy): missing metadata.name",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: wordy-priority}
spec: {tier: Admin, priority: high, subject: {namespaces: {}}}",
            "skipped m.yaml doc 8 (ClusterNetworkPolicy wordy-priority): spec.priority: \
             invalid type: string \"high\", expected i64",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ingress-map}
spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: {action: Deny}}",
            "skipped m.yaml doc 9 (ClusterNetworkPolicy ingress-map): spec.ingress: \
             invalid type: map, expected a sequence",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: one-network}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: 10.0.0.0/8}]}]",
            "skipped m.yaml doc 10 (ClusterNetworkPolicy one-network): spec.egress[0].to[0].networks: \
             invalid type: string \"10.0.0.0/8\", expected a sequence",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: port-word}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: http}}}]}]",
            "skipped m.yaml doc 11 (ClusterNetworkPolicy port-word): \
             spec.ingress[0].protocols[0].tcp.destinationPort.number: \
             invalid type: string \"http\", expected i64",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: spec-list}
spec: []",
            "skipped m.yaml doc 12 (ClusterNetworkPolicy spec-list): spec: \
             invalid type: sequence, expected struct ClusterNetworkPolicySpec",
        ),
        // Antrea's own ClusterNetworkPolicy is another API: not ours.
        (
            "apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: antrea}
spec: {priority: 1}",
            "ignored ClusterNetworkPolicy.crd.antrea.io 1",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicyList
items:
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: listed}
  spec: {tier: Admin, priority: 2, subject: {namespaces: {}}}
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: listed-bad}
  spec: {tier: [Admin]}",
            "object ClusterNetworkPolicy/listed\n\
             skipped m.yaml doc 14 (ClusterNetworkPolicy listed-bad): items[1]: spec.tier: \
             invalid type: sequence, expected a string",
        ),
        // A neighbour of another kind after all of them.
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}",
            "object Node/n1",
        ),
    ];
    let text: Vec<&str> = cases.iter().map(|(doc, _)| *doc).collect();
    let text = text.join("\n---\n");
    let report = parse_str(&text, Path::new("m.yaml"));
    // Objects come first in the rendering, then skips, then ignored kinds.
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let mut ignored = Vec::new();
    for (_, expected) in cases {
        for line in expected.lines() {
            let line = line.trim().to_owned();
            if line.starts_with("object ") {
                objects.push(line);
            } else if line.starts_with("skipped ") {
                skipped.push(line);
            } else {
                ignored.push(line);
            }
        }
    }
    let expected = [objects, skipped.clone(), ignored].concat().join("\n");
    assert_eq!(render(&report).trim(), expected);
    assert_eq!(report.skipped.len(), skipped.len());
    for object in &report.objects {
        if let ClusterObject::ClusterNetworkPolicy(p) = object {
            assert_eq!(p.metadata.namespace, None, "{}", object.key());
            assert_eq!(object.key().namespace, "");
        }
    }
}

/// The duplicate rule holds across the namespace a cluster-scoped object
/// should not have: both are the same policy.
#[test]
fn a_policy_written_twice_is_one_with_a_warning() {
    check(
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: p, namespace: a}
spec: {tier: Admin, priority: 1}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: p}
spec: {tier: Admin, priority: 2}
",
        "
        object ClusterNetworkPolicy/p
        warning duplicate ClusterNetworkPolicy/p: m.yaml doc 2 replaces m.yaml doc 1
        ",
    );
}

/// The example cluster's policies (`deploy/examples`, what the demo
/// serves) load whole.
#[test]
fn the_example_policies_load() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/clusternetworkpolicies.yaml");
    let report = setpoint_source::load_path(&file).expect("the example file reads");
    assert_eq!(
        render(&report),
        "object ClusterNetworkPolicy/deny-cloud-metadata\n\
         object ClusterNetworkPolicy/shop-ingress-guardrail\n"
    );
    let tiers: Vec<(String, Option<i64>)> = report
        .objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::ClusterNetworkPolicy(p) => {
                let spec = p.spec.as_ref()?;
                Some((spec.tier.clone(), spec.priority))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("Admin".to_owned(), Some(10)),
            ("Baseline".to_owned(), Some(100))
        ]
    );
}
