//! The planner against the in-memory kernel: real states from the example
//! cluster, with objects removed at random, turned into one another.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use setpoint_agent::kernel_model::KernelModel;
use setpoint_agent::plan::{Op, phase, plan};
use setpoint_compute::{ClusterObject, ComputeConfig, Index};
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, NodeDataplane, Rule, SetEntry, SetSpec, SetType, Table, diff,
};

fn example_objects() -> Vec<ClusterObject> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    setpoint_source::load_path(&path).expect("examples").objects
}

/// The state of `node` computed from the objects `keep` selects.
fn state(objects: &[ClusterObject], keep: &[bool], node: &str) -> NodeDataplane {
    let mut index = Index::new(ComputeConfig::default());
    for (i, o) in objects.iter().enumerate() {
        // Nodes always stay, so that the node exists in both states.
        if keep.get(i).copied().unwrap_or(true) || matches!(o, ClusterObject::Node(_)) {
            index.upsert(o.clone());
        }
    }
    index.commit();
    index.node_state(node).expect("node exists")
}

/// Runs the plan from `a` to `b` on the model; every step must be accepted.
fn run(a: &NodeDataplane, b: &NodeDataplane) -> Result<KernelModel, String> {
    let target = b.flatten();
    let ops = plan(&diff(a, b), |set| {
        target
            .entries(set)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    });
    let phases: Vec<u8> = ops.iter().map(phase).collect();
    if !phases.is_sorted() {
        return Err(format!("phases out of order: {phases:?}"));
    }
    let mut model = KernelModel::new(a.flatten());
    for (i, op) in ops.iter().enumerate() {
        model
            .apply(op)
            .map_err(|e| format!("op {i} of {} ({op:?}): {e}", ops.len()))?;
    }
    Ok(model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any example-derived state turns into any other through the plan,
    /// with the kernel accepting every step, and ends exactly at the target.
    #[test]
    fn plans_reach_the_target_make_before_break(
        keep_a in proptest::collection::vec(proptest::bool::weighted(0.7), 83),
        keep_b in proptest::collection::vec(proptest::bool::weighted(0.7), 83),
        node in prop_oneof![Just("node-a"), Just("node-b"), Just("node-c")],
    ) {
        let objects = example_objects();
        let (a, b) = (state(&objects, &keep_a, node), state(&objects, &keep_b, node));
        let model = run(&a, &b).map_err(TestCaseError::fail)?;
        prop_assert!(model.state == b.flatten(), "the kernel ends at the target");
        prop_assert_eq!(NodeDataplane::from_fragment(model.state).digest(), b.digest());
    }
}

#[test]
fn from_nothing_and_back_to_nothing() {
    let objects = example_objects();
    let all = vec![true; objects.len()];
    let full = state(&objects, &all, "node-a");
    let empty = NodeDataplane::from_fragment(Fragment::new());
    let model = run(&empty, &full).expect("build up");
    assert!(model.state == full.flatten());
    let model = run(&full, &empty).expect("tear down");
    assert!(model.state.is_empty(), "{:?}", model.state);
}

fn spec(kind: SetType) -> SetSpec {
    SetSpec {
        kind,
        family: Family::Inet,
        maxelem: 1024,
        comment: String::new(),
    }
}

fn chain_using(set: &str) -> Arc<Chain> {
    Arc::new(Chain {
        rules: vec![Rule::new([
            "-m",
            "set",
            "--match-set",
            set,
            "dst",
            "-j",
            "ACCEPT",
        ])],
    })
}

/// A chain moves from an old set to a new one: the new set exists before the
/// chain changes, the old one goes only after — the order the diff lists
/// changes in would destroy a set still in use.
#[test]
fn a_set_swap_under_a_rule_is_make_before_break() {
    let key = ChainKey {
        family: Family::Inet,
        table: Table::Filter,
        name: "SP-TEST".to_string(),
    };
    let mut a = Fragment::new();
    a.put_set("SP-OLD", spec(SetType::HashIp));
    a.add_entry("SP-OLD", SetEntry::Ip("10.0.0.1".parse().expect("ip")));
    a.put_chain(key.clone(), chain_using("SP-OLD"));
    let mut b = Fragment::new();
    b.put_set("SP-NEW", spec(SetType::HashIp));
    b.add_entry("SP-NEW", SetEntry::Ip("10.0.0.2".parse().expect("ip")));
    b.put_chain(key, chain_using("SP-NEW"));
    let (a, b) = (
        NodeDataplane::from_fragment(a),
        NodeDataplane::from_fragment(b),
    );

    let ops = plan(&diff(&a, &b), |_| Vec::new());
    let kinds: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::CreateSet { .. } => "create",
            Op::AddEntries { .. } => "add",
            Op::Iptables { .. } => "iptables",
            Op::DestroySet { .. } => "destroy",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["create", "add", "iptables", "destroy"]);
    assert!(run(&a, &b).is_ok());

    // The diff's own order, run as is, is refused by the kernel.
    let mut naive = KernelModel::new(a.flatten());
    let unordered = {
        let mut ops = ops.clone();
        ops.sort_by_key(|op| matches!(op, Op::Iptables { .. }));
        ops
    };
    let refused = unordered.iter().any(|op| naive.apply(op).is_err());
    assert!(
        refused,
        "destroying SP-OLD before the chain moves must fail"
    );
}

/// A redefined set (here: another type) is rebuilt whole and swapped in;
/// its entry changes are not replayed on top.
#[test]
fn a_redefined_set_is_rebuilt_with_its_target_entries() {
    let mut a = Fragment::new();
    a.put_set("SP-X", spec(SetType::HashNet));
    a.add_entry(
        "SP-X",
        SetEntry::Net {
            net: "10.0.0.0/8".parse().expect("net"),
            nomatch: false,
        },
    );
    let mut b = Fragment::new();
    b.put_set("SP-X", spec(SetType::HashIp));
    b.add_entry("SP-X", SetEntry::Ip("10.0.0.1".parse().expect("ip")));
    let (a, b) = (
        NodeDataplane::from_fragment(a),
        NodeDataplane::from_fragment(b),
    );
    let target = b.flatten();
    let ops = plan(&diff(&a, &b), |set| {
        target
            .entries(set)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    });
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], Op::RebuildSet { entries, .. } if entries.len() == 1));
    assert!(run(&a, &b).expect("rebuild").state == target);
}
