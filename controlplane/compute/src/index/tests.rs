use super::*;
use crate::synthetic::{self, ClusterShape, Kind};
use setpoint_dataplane::Digest;

/// An index with `objects` committed.
fn committed(objects: &[ClusterObject]) -> Index {
    let mut index = Index::new(ComputeConfig::default());
    for o in objects {
        index.upsert(o.clone());
    }
    index.commit();
    index
}

/// Every node of `index` is as a fresh index from `objects` computes it,
/// and its digest is its state's.
fn assert_equals_fresh(index: &Index, objects: &[ClusterObject], what: &str) {
    let fresh = committed(objects);
    for name in fresh.node_names() {
        let (a, b) = (
            index.node_state(name).unwrap(),
            fresh.node_state(name).unwrap(),
        );
        assert_eq!(a.digest(), b.digest(), "{what} node {name}");
        assert!(a == b, "{what} node {name}");
        assert_eq!(index.node_digest(name), Some(b.digest()));
    }
}

/// What a node holds beyond the shared parts' contents: every part's
/// name, and its own parts' digests.
type PrivateView = std::collections::BTreeMap<Arc<str>, Vec<(String, Option<Digest>)>>;

fn private_view(index: &Index) -> PrivateView {
    let shared: BTreeMap<String, Arc<Fragment>> = index.shared_parts().into_iter().collect();
    index
        .node_names()
        .map(|name| {
            let state = index.node_state(name).unwrap();
            let parts = state
                .parts()
                .map(|(part, fragment)| match shared.get(part) {
                    Some(s) => {
                        assert!(Arc::ptr_eq(s, fragment), "node {name} part {part}");
                        (part.clone(), None)
                    }
                    None => (part.clone(), Some(fragment.digest())),
                })
                .collect();
            (name.clone(), parts)
        })
        .collect()
}

/// A node outside `recomposed_nodes` changed at most through shared parts.
fn assert_recomposed_covers(
    before: &PrivateView,
    index: &Index,
    outcome: &CommitOutcome,
) -> PrivateView {
    let after = private_view(index);
    for (name, view) in &after {
        if before.get(name) != Some(view) {
            assert!(
                outcome.recomposed_nodes.contains(name),
                "node {name} changed beyond the shared parts but is not reported recomposed"
            );
        }
    }
    assert!(
        outcome
            .recomposed_nodes
            .iter()
            .all(|n| after.contains_key(n)),
        "only live nodes are recomposed"
    );
    after
}

/// Every incremental commit leaves each node exactly as a fresh index
/// built from the same objects would, including NodePort virtual servers
/// that live in per-node fragments.
#[test]
fn incremental_equals_from_scratch_on_synthetic_cluster() {
    let shape = ClusterShape {
        nodes: 12,
        services: 60,
        endpoints: 240,
        zones: 3,
    };
    let mut objects = synthetic::cluster(&shape);
    let mut index = committed(&objects);
    let mut view = private_view(&index);
    let mut generation = std::collections::HashMap::new();
    for (step, i) in [0usize, 5, 6, 7, 8, 12, 0, 5].into_iter().enumerate() {
        let kind = synthetic::kind_of(i);
        let g = generation.entry(i).or_insert(0);
        *g += 1;
        let slice = synthetic::slice(i, &shape, *g);
        let slot = shape.nodes + 2 * i + 1;
        objects[slot] = slice.clone();
        index.upsert(slice);
        let outcome = index.commit();
        assert_equals_fresh(&index, &objects, &format!("step {step} ({kind:?})"));
        view = assert_recomposed_covers(&view, &index, &outcome);
        if kind != Kind::InternalLocal {
            assert!(!outcome.changed_nodes.is_empty(), "step {step} ({kind:?})");
        }
    }
}

/// Pod label changes rebuild only some nodes' policy fragments; the
/// result must still equal a fresh index's.
#[test]
fn incremental_policy_equals_from_scratch() {
    use crate::synthetic::PolicyShape;
    let shape = PolicyShape {
        nodes: 6,
        namespaces: 4,
        pods: 40,
        policies: 12,
    };
    let mut objects = synthetic::policy_cluster(&shape);
    let mut index = committed(&objects);
    let mut view = private_view(&index);
    let first_pod = shape.nodes + shape.namespaces;
    for step in 0..15 {
        let i = (step * 7) % shape.pods;
        let pod = synthetic::policy_pod(i, &shape, step + 1);
        objects[first_pod + i] = pod.clone();
        index.upsert(pod);
        let outcome = index.commit();
        assert_equals_fresh(&index, &objects, &format!("step {step}"));
        view = assert_recomposed_covers(&view, &index, &outcome);
        assert!(
            outcome.changed_nodes.len() < shape.nodes,
            "step {step}: not every node"
        );
    }
}

/// A ClusterNetworkPolicy of the synthetic policy cluster: `variant`
/// moves its priority, actions and peers, so each is a change.
fn cluster_policy(i: usize, variant: usize) -> ClusterObject {
    use crate::policy::cluster::api;
    let actions = ["Accept", "Deny", "Pass"];
    let action = |k: usize| actions[(i + variant + k) % 3];
    let subject = match i % 2 {
        0 => {
            serde_json::json!({"namespaces": {"matchLabels": {"team": format!("team-{}", i % 10)}}})
        }
        _ => serde_json::json!({"pods": {"namespaceSelector": {},
                "podSelector": {"matchLabels": {"app": format!("app-{}", (i + variant) % 5)}}}}),
    };
    let written = serde_json::json!({
        "apiVersion": api::API_VERSION,
        "kind": api::KIND,
        "metadata": {"name": format!("cnp-{i}")},
        "spec": {
            "tier": if i.is_multiple_of(3) { "Baseline" } else { "Admin" },
            "priority": (i + variant) % 4,
            "subject": subject,
            "ingress": [
                {"action": action(0), "from": [{"pods": {"namespaceSelector": {},
                    "podSelector": {"matchLabels": {"app": format!("app-{}", (i + 1) % 5)}}}}],
                 "protocols": [{"destinationNamedPort": "http"}]},
                {"action": action(1), "from": [{"namespaces": {"matchLabels": {"team": "team-3"}}}]},
            ],
            "egress": [
                {"action": action(2), "to": [{"nodes": {"matchLabels": {"role": "infra"}}}],
                 "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 9000}}}}]},
                {"action": action(0), "to": [{"networks": ["10.0.0.0/8"]}]},
                {"action": action(1), "to": [{"pods": {"podSelector": {"matchLabels": {"tier": "db"}}}}],
                 "protocols": [{"destinationNamedPort": "http"}]},
            ],
        },
    });
    match serde_json::from_value(written) {
        Ok(p) => ClusterObject::ClusterNetworkPolicy(p),
        Err(e) => panic!("the test's policy decodes: {e}"),
    }
}

/// Pod label, ClusterNetworkPolicy and Node label changes beside
/// NetworkPolicies: every commit equals a fresh index's, and a pod label
/// change still rebuilds only the nodes it reaches.
#[test]
fn incremental_cluster_policy_equals_from_scratch() {
    use crate::synthetic::PolicyShape;
    let shape = PolicyShape {
        nodes: 6,
        namespaces: 4,
        pods: 40,
        policies: 6,
    };
    let mut objects = synthetic::policy_cluster(&shape);
    let first_cnp = objects.len();
    objects.extend((0..5).map(|i| cluster_policy(i, 0)));
    let mut index = committed(&objects);
    let mut view = private_view(&index);
    let first_pod = shape.nodes + shape.namespaces;
    let mut fewer_than_all = 0;
    let mut patched = 0;
    for step in 0..18 {
        let what = match step % 3 {
            0 => {
                let i = (step * 7) % shape.pods;
                let pod = synthetic::policy_pod(i, &shape, step + 1);
                objects[first_pod + i] = pod.clone();
                index.upsert(pod);
                "pod labels"
            }
            1 => {
                let i = step % 5;
                if step % 4 == 1 {
                    index.delete(&objects[first_cnp + i].key());
                    objects[first_cnp + i] = cluster_policy(i + 10, 0);
                    index.upsert(objects[first_cnp + i].clone());
                    "cluster policy replaced"
                } else {
                    let changed = cluster_policy(i, step);
                    if objects[first_cnp + i].key() != changed.key() {
                        index.delete(&objects[first_cnp + i].key());
                    }
                    objects[first_cnp + i] = changed;
                    index.upsert(objects[first_cnp + i].clone());
                    "cluster policy changed"
                }
            }
            _ => {
                let n = step % shape.nodes;
                let ClusterObject::Node(mut node) = objects[n].clone() else {
                    panic!("object {n} is a node");
                };
                let role = if step % 2 == 0 { "infra" } else { "worker" };
                node.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("role".into(), role.into());
                objects[n] = ClusterObject::Node(node.clone());
                index.upsert(ClusterObject::Node(node));
                "node labels"
            }
        };
        let outcome = index.commit();
        assert_equals_fresh(&index, &objects, &format!("step {step} ({what})"));
        view = assert_recomposed_covers(&view, &index, &outcome);
        if what == "pod labels" && outcome.changed_nodes.len() < shape.nodes {
            fewer_than_all += 1;
        }
        if what == "pod labels" {
            patched += index.policy_patched;
        }
    }
    assert!(
        fewer_than_all > 0,
        "some pod label change rebuilt fewer than every node"
    );
    assert!(
        patched > 0,
        "some pod label change patched another node's sets instead of rebuilding it"
    );
}
