use super::*;
use crate::synthetic::{self, ClusterShape, Kind};

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
    let first_pod = shape.nodes + shape.namespaces;
    for step in 0..15 {
        let i = (step * 7) % shape.pods;
        let pod = synthetic::policy_pod(i, &shape, step + 1);
        objects[first_pod + i] = pod.clone();
        index.upsert(pod);
        let outcome = index.commit();
        assert_equals_fresh(&index, &objects, &format!("step {step}"));
        assert!(
            outcome.changed_nodes.len() < shape.nodes,
            "step {step}: not every node"
        );
    }
}
