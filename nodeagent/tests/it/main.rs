//! The planner against the in-memory kernel: real states from the example
//! cluster, with objects removed at random, turned into one another.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use setpoint_agent::kernel_model::KernelModel;
use setpoint_agent::plan::{Op, Phase, phase, plan};
use setpoint_compute::{ClusterObject, ComputeConfig, Index};
use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, NodeDataplane, Rule, SetEntry, SetSpec, SetType, Table, diff,
};

mod health;
mod kernel_link;
mod node_addresses;
mod vm_ipvs;

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
    let ops = plan(&diff(a, b), &a.flatten(), &b.flatten()).map_err(|e| e.to_string())?;
    let phases: Vec<Phase> = ops.iter().map(phase).collect();
    if !phases.is_sorted() {
        return Err(format!("phases out of order: {phases:?}"));
    }
    let mut model = KernelModel::new(a.flatten().without_node_facts());
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
        // Node facts (health checks, draining) are for the agent's servers,
        // never the kernel's.
        let kernel = b.flatten().without_node_facts();
        prop_assert!(model.state == kernel, "the kernel ends at the target");
        prop_assert_eq!(
            NodeDataplane::from_fragment(model.state).digest(),
            NodeDataplane::from_fragment(kernel).digest()
        );
    }
}

#[test]
fn from_nothing_and_back_to_nothing() {
    let objects = example_objects();
    let all = vec![true; objects.len()];
    let full = state(&objects, &all, "node-a");
    let empty = NodeDataplane::from_fragment(Fragment::new());
    let model = run(&empty, &full).expect("build up");
    assert!(model.state == full.flatten().without_node_facts());
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

    let ops = plan(&diff(&a, &b), &a.flatten(), &b.flatten()).expect("plans");
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

fn one_set(kind: SetType, maxelem: u32, entries: &[SetEntry]) -> NodeDataplane {
    let mut f = Fragment::new();
    f.put_set(
        "SP-X",
        SetSpec {
            maxelem,
            ..spec(kind)
        },
    );
    for e in entries {
        f.add_entry("SP-X", e.clone());
    }
    NodeDataplane::from_fragment(f)
}

/// A set whose size changes is rebuilt whole and swapped in; its entry
/// changes are not replayed on top.
#[test]
fn a_resized_set_is_rebuilt_with_its_target_entries() {
    let ip = |s: &str| SetEntry::Ip(s.parse().expect("ip"));
    let a = one_set(SetType::HashIp, 1024, &[ip("10.0.0.1"), ip("10.0.0.2")]);
    let b = one_set(SetType::HashIp, 4096, &[ip("10.0.0.2"), ip("10.0.0.3")]);
    let ops = plan(&diff(&a, &b), &a.flatten(), &b.flatten()).expect("plans");
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], Op::RebuildSet { entries, .. } if entries.len() == 2));
    assert!(run(&a, &b).expect("rebuild").state == b.flatten());
}

/// A set cannot change type under its name: refused with the reason.
#[test]
fn a_set_changing_type_is_refused() {
    let a = one_set(SetType::HashNet, 1024, &[]);
    let b = one_set(SetType::HashIp, 1024, &[]);
    let err = plan(&diff(&a, &b), &a.flatten(), &b.flatten()).expect_err("refused");
    assert!(
        err.to_string().contains("hash:net inet to hash:ip inet"),
        "{err}"
    );
}

/// Every way into the executor refuses a state that breaks the contract
/// before it runs a single tool: the target names a namespace that does
/// not exist, so any tool run would fail otherwise.
#[test]
fn every_executor_path_refuses_before_running_a_tool() {
    use setpoint_agent::apply::{Applier, ApplyError, Base, Verified};
    use setpoint_agent::kernel_model::ModelServices;
    use setpoint_agent::target::Target;

    let good = one_set(SetType::HashIp, 1024, &[]);
    let mut f = good.flatten();
    f.put_chain(
        ChainKey {
            family: Family::Inet,
            table: Table::Filter,
            name: "SP-TEST".to_string(),
        },
        Arc::new(Chain {
            rules: vec![Rule::new([
                "-m",
                "comment",
                "--comment",
                "a\nCOMMIT",
                "-j",
                "ACCEPT",
            ])],
        }),
    );
    let bad = NodeDataplane::from_fragment(f);
    let refused = |what: &str, result: Result<(), ApplyError>| match result {
        Err(ApplyError::Refused { problems }) => assert!(
            problems
                .iter()
                .any(|p| p.to_string().contains("control character")),
            "{what}: {problems:?}"
        ),
        other => panic!("{what} must be refused before any tool runs: {other:?}"),
    };
    let mut applier = Applier::new(
        Target {
            netns: Some("setpoint-no-such-namespace".to_string()),
        },
        Box::new(ModelServices::default()),
    );
    let held = Verified::check(1, good).expect("a valid state");
    for (kernel, applier) in [("node", &mut applier), ("dry run", &mut Applier::dry_run())] {
        for (from, base) in [("the kernel", Base::Kernel), ("held", Base::Held(&held))] {
            let what = format!("{kernel} from {from}");
            refused(
                &format!("apply {what}"),
                applier.apply(base, &bad).map(drop),
            );
            refused(&format!("plan {what}"), applier.plan(base, &bad).map(drop));
        }
    }
    refused("check", Verified::check(2, bad).map(drop));
}

mod ipset_backend {
    use std::collections::BTreeMap;

    use setpoint_agent::apply::{Applier, ApplyError, ApplyReport, Base, Verified, kernel_view};
    use setpoint_agent::ipset::{parse_save, script};
    use setpoint_agent::iptables;
    use setpoint_agent::kernel_model::ModelServices;
    use setpoint_agent::plan::{Op, Phase, phase, plan};
    use setpoint_agent::target::Target;
    use setpoint_dataplane::{Digest, Family};
    use setpoint_dataplane::{NodeDataplane, SetType, diff};
    use setpoint_integration::{Netns, require_root_and_tools};

    use super::{example_objects, state};

    /// Runs the set operations of `from → to` in the namespace: the
    /// creating phase, then (after the rules would have moved) the
    /// shrinking one.
    fn apply_sets(target: &Target, from: &NodeDataplane, to: &NodeDataplane) {
        let goal = to.flatten();
        let ops = plan(&diff(from, to), &from.flatten(), &goal).expect("plans");
        let mut kinds: BTreeMap<String, SetType> = BTreeMap::new();
        for state in [from.flatten(), goal.clone()] {
            for (name, spec) in state.sets() {
                kinds.insert(name.clone(), spec.kind);
            }
        }
        for wanted in [Phase::SetsGrown, Phase::SetsShrunk] {
            let batch: Vec<Op> = ops
                .iter()
                .filter(|op| phase(op) == wanted)
                .cloned()
                .collect();
            if let Some(text) = script(&batch, &kinds) {
                target
                    .ipset(&["restore", "-exist"], Some(&text))
                    .unwrap_or_else(|e| panic!("phase {wanted}: {e}\n{text}"));
            }
        }
    }

    /// The kernel's sets equal the state's: type, family, size, entries.
    fn assert_kernel_holds(target: &Target, state: &NodeDataplane) {
        let save = target.ipset(&["save"], None).expect("ipset save");
        let kernel = parse_save(&save, |n| n.starts_with("SP")).expect("parses");
        let flat = state.flatten();
        let names: Vec<&String> = flat.sets().map(|(n, _)| n).collect();
        assert_eq!(kernel.keys().collect::<Vec<_>>(), names, "set names");
        for (name, spec) in flat.sets() {
            let k = &kernel[name];
            assert_eq!(k.kind, spec.kind, "{name}");
            if spec.kind != SetType::BitmapPort {
                assert_eq!(k.family, spec.family, "{name}");
                assert_eq!(k.maxelem, Some(spec.maxelem), "{name}");
            }
            let want: Vec<_> = flat.entries(name).into_iter().flatten().cloned().collect();
            assert_eq!(k.entries, want, "{name} entries");
        }
    }

    #[test]
    fn sets_reach_each_target_in_a_real_namespace() {
        require_root_and_tools();
        let ns = Netns::create("agent-ipset").expect("netns");
        let target = Target {
            netns: Some(ns.name().to_string()),
        };
        let objects = example_objects();
        let empty = NodeDataplane::default();
        let some: Vec<bool> = (0..objects.len()).map(|i| i % 3 != 0).collect();
        let all = vec![true; objects.len()];
        let none_of_the_policies: Vec<bool> = objects
            .iter()
            .map(|o| !matches!(o, setpoint_compute::ClusterObject::NetworkPolicy(_)))
            .collect();
        let partial = state(&objects, &some, "node-b");
        let full = state(&objects, &all, "node-b");
        let no_policy = state(&objects, &none_of_the_policies, "node-b");
        apply_sets(&target, &empty, &partial);
        assert_kernel_holds(&target, &partial);
        apply_sets(&target, &partial, &full);
        assert_kernel_holds(&target, &full);
        // Policy sets go away; service sets shrink.
        apply_sets(&target, &full, &no_policy);
        assert_kernel_holds(&target, &no_policy);
    }

    /// A set whose size changes is rebuilt under a temporary name and
    /// swapped in; nomatch entries and host nets read back as written.
    #[test]
    fn a_redefined_set_is_swapped_in_a_real_namespace() {
        use setpoint_dataplane::{Family, Fragment, SetEntry, SetSpec};
        require_root_and_tools();
        let ns = Netns::create("agent-swap").expect("netns");
        let target = Target {
            netns: Some(ns.name().to_string()),
        };
        let spec = |kind| SetSpec {
            kind,
            family: Family::Inet,
            maxelem: 1024,
            comment: String::new(),
        };
        let mut a = Fragment::new();
        a.put_set("SP-X", spec(SetType::HashNet));
        for (net, nomatch) in [
            ("10.0.0.0/8", false),
            ("10.1.0.0/16", true),
            ("192.168.0.7/32", false),
        ] {
            a.add_entry(
                "SP-X",
                SetEntry::Net {
                    net: net.parse().expect("net"),
                    nomatch,
                },
            );
        }
        let mut b = Fragment::new();
        b.put_set(
            "SP-X",
            SetSpec {
                maxelem: 4096,
                ..spec(SetType::HashNet)
            },
        );
        b.add_entry(
            "SP-X",
            SetEntry::Net {
                net: "10.2.0.0/16".parse().expect("net"),
                nomatch: false,
            },
        );
        let (a, b) = (
            NodeDataplane::from_fragment(a),
            NodeDataplane::from_fragment(b),
        );
        apply_sets(&target, &NodeDataplane::default(), &a);
        assert_kernel_holds(&target, &a);
        apply_sets(&target, &a, &b);
        assert_kernel_holds(&target, &b);
        let leftovers = target.ipset(&["list", "-n"], None).expect("list");
        assert_eq!(leftovers.trim(), "SP-X", "the temporary set is gone");
    }

    fn target_of(ns: &Netns) -> Target {
        Target {
            netns: Some(ns.name().to_string()),
        }
    }

    fn applier(ns: &Netns) -> Applier {
        Applier::new(target_of(ns), Box::new(ModelServices::default()))
    }

    /// An apply from whatever the kernel holds, read whole.
    fn apply(applier: &mut Applier, want: &NodeDataplane) -> Result<ApplyReport, ApplyError> {
        applier.apply(Base::Kernel, want).map(|(report, _)| report)
    }

    /// An apply from `held`, taken as what the kernel holds.
    fn apply_from(
        applier: &mut Applier,
        held: &NodeDataplane,
        want: &NodeDataplane,
    ) -> Result<ApplyReport, ApplyError> {
        let held = Verified {
            revision: 1,
            state: held.clone(),
            view: kernel_view(held)?,
        };
        applier
            .apply(Base::Held(&held), want)
            .map(|(report, _)| report)
    }

    fn verify(applier: &mut Applier, want: &NodeDataplane) -> Result<Digest, ApplyError> {
        applier.verify(&Verified::check(1, want.clone())?)
    }

    /// The executor through four successive states: sets and iptables
    /// real (IPVS in the model, this kernel has none), each apply verified
    /// by reading the kernel back to the target's digest.
    #[test]
    fn the_executor_reaches_each_target_and_verifies_it_in_a_real_namespace() {
        require_root_and_tools();
        let ns = Netns::create("agent-exec").expect("netns");
        let mut applier = applier(&ns);
        let objects = example_objects();
        let all = vec![true; objects.len()];
        let some: Vec<bool> = (0..objects.len()).map(|i| i % 4 != 1).collect();
        let none_of_the_policies: Vec<bool> = objects
            .iter()
            .map(|o| !matches!(o, setpoint_compute::ClusterObject::NetworkPolicy(_)))
            .collect();
        let steps = [
            state(&objects, &some, "node-a"),
            state(&objects, &all, "node-a"),
            state(&objects, &none_of_the_policies, "node-a"),
            NodeDataplane::default(),
        ];
        for (n, next) in steps.iter().enumerate() {
            let report = apply(&mut applier, next).unwrap_or_else(|e| panic!("step {n}: {e}"));
            assert_eq!(report.digest, next.digest(), "step {n}");
            assert!(report.operations > 0, "step {n} changes something");
            assert_kernel_holds(&target_of(&ns), next);
            let again = apply(&mut applier, next).expect("re-apply");
            assert_eq!(
                again.operations, 0,
                "step {n}: a second apply has nothing to do"
            );
        }
        let leftovers = target_of(&ns).ipset(&["list", "-n"], None).expect("list");
        assert_eq!(
            leftovers.trim(),
            "",
            "everything of ours is gone at the end"
        );
    }

    /// From a held, verified state the executor applies only the
    /// difference and reads back only what it touched; a full read-back
    /// afterwards agrees. Drift inside a touched set is caught.
    #[test]
    fn deltas_from_the_held_state_are_applied_and_checked_where_they_touch() {
        require_root_and_tools();
        let ns = Netns::create("agent-from").expect("netns");
        let mut applier = applier(&ns);
        let objects = example_objects();
        let all = vec![true; objects.len()];
        let some: Vec<bool> = (0..objects.len()).map(|i| i % 5 != 2).collect();
        let (full, partial) = (
            state(&objects, &all, "node-b"),
            state(&objects, &some, "node-b"),
        );
        apply(&mut applier, &full).expect("cold");
        let report = apply_from(&mut applier, &full, &partial).expect("delta down");
        assert!(report.operations > 0);
        assert_eq!(
            verify(&mut applier, &partial).expect("full read-back agrees"),
            partial.digest()
        );
        apply_from(&mut applier, &partial, &full).expect("delta up");
        assert_eq!(
            verify(&mut applier, &full).expect("full read-back agrees"),
            full.digest()
        );

        // A set the next delta adds to is flushed behind the agent's back.
        let (flat_p, flat_f) = (partial.flatten(), full.flatten());
        let grown = flat_f
            .all_entries()
            .find(|(name, entries)| {
                flat_p
                    .entries(name)
                    .is_some_and(|p| !p.is_empty() && p.len() < entries.len())
            })
            .map(|(name, _)| name.clone())
            .expect("a set that grows from partial to full");
        apply_from(&mut applier, &full, &partial).expect("delta down");
        target_of(&ns)
            .ipset(&["flush", &grown], None)
            .expect("flush");
        match apply_from(&mut applier, &partial, &full) {
            Err(ApplyError::Mismatch { differences, .. }) => {
                assert!(
                    differences.join(" ").contains(grown.as_str()),
                    "{differences:?}"
                )
            }
            other => panic!("drift in a touched set must be caught: {other:?}"),
        }
        apply(&mut applier, &full).expect("a full apply repairs it");
    }

    /// `setpoint-agent apply` refuses a state file with a newline in a rule
    /// word: it names the reason, fails, and the namespace holds nothing of
    /// it (on main its set was created before the rule failed).
    #[test]
    fn the_cli_refuses_a_crafted_state_file_and_touches_nothing() {
        use std::sync::Arc;

        use setpoint_dataplane::{Chain, ChainKey, Rule, SetEntry, SetSpec, Table};
        require_root_and_tools();
        let ns = Netns::create("agent-cli-refuse").expect("netns");
        let mut f = setpoint_dataplane::Fragment::new();
        f.put_set(
            "SP-CLI",
            SetSpec {
                kind: SetType::HashIp,
                family: Family::Inet,
                maxelem: 64,
                comment: String::new(),
            },
        );
        f.add_entry("SP-CLI", SetEntry::Ip("10.0.0.1".parse().expect("ip")));
        f.put_chain(
            ChainKey {
                family: Family::Inet,
                table: Table::Filter,
                name: "SP-CLI".to_string(),
            },
            Arc::new(Chain {
                rules: vec![Rule::new([
                    "-m",
                    "comment",
                    "--comment",
                    "x\n-F INPUT",
                    "-j",
                    "ACCEPT",
                ])],
            }),
        );
        let state = NodeDataplane::from_fragment(f);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state.json");
        std::fs::write(&file, serde_json::to_string(&state).expect("json")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint-agent"))
            .args(["apply", "--netns", ns.name(), "--state"])
            .arg(&file)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused: {stderr}");
        assert!(stderr.contains("control character"), "{stderr}");
        let target = Target {
            netns: Some(ns.name().to_string()),
        };
        assert_eq!(
            target.ipset(&["list", "-n"], None).expect("list").trim(),
            ""
        );
        let save = target.run("iptables-save", &[], None).expect("save");
        assert!(!save.contains("SP-"), "{save}");
    }

    /// `setpoint-agent cleanup` leaves nothing of Setpoint's in the
    /// namespace and nothing else touched.
    #[test]
    fn cleanup_removes_everything_of_ours_and_nothing_else() {
        require_root_and_tools();
        let ns = Netns::create("agent-clean").expect("netns");
        let mut applier = applier(&ns);
        let objects = example_objects();
        let full = state(&objects, &vec![true; objects.len()], "node-a");
        let mut policy_only = full.clone();
        for name in full.parts().map(|(n, _)| n.clone()).collect::<Vec<_>>() {
            if !name.starts_with("policy/") && name != "base" {
                policy_only.remove_part(&name);
            }
        }
        let mut without_services = setpoint_dataplane::Fragment::clone(&policy_only.flatten());
        let keys: Vec<_> = without_services
            .virtual_servers()
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            without_services.remove_virtual_server(&k);
        }
        let addresses: Vec<_> = without_services.addresses().copied().collect();
        for a in addresses {
            without_services.remove_address(&a);
        }
        let state = NodeDataplane::from_fragment(without_services);
        apply(&mut applier, &state).expect("apply");
        let target = target_of(&ns);
        let foreign = "-A INPUT -s 192.0.2.1/32 -j DROP";
        iptables::restore(
            &target,
            Family::Inet,
            &format!("*filter\n{foreign}\nCOMMIT\n"),
        )
        .expect("foreign rule");
        assert!(
            !target
                .ipset(&["list", "-n"], None)
                .expect("list")
                .trim()
                .is_empty()
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint-agent"))
            .args(["cleanup", "--netns", ns.name()])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            target.ipset(&["list", "-n"], None).expect("list").trim(),
            ""
        );
        for tool in ["iptables-save", "ip6tables-save"] {
            let save = target.run(tool, &[], None).expect("save");
            assert!(
                !save.contains("SP-") && !save.contains("setpoint:"),
                "{tool}:\n{save}"
            );
            if tool == "iptables-save" {
                assert!(save.contains(foreign), "the foreign rule stays");
            }
        }
    }

    /// Someone flushes a set, appends a rule to one of our chains and
    /// deletes a jump: verification names the drift and the next apply
    /// repairs exactly that, leaving everyone else's rules alone.
    #[test]
    fn drift_is_detected_and_repaired_without_touching_foreign_rules() {
        require_root_and_tools();
        let ns = Netns::create("agent-drift").expect("netns");
        let mut applier = applier(&ns);
        let objects = example_objects();
        let full = state(&objects, &vec![true; objects.len()], "node-a");
        apply(&mut applier, &full).expect("first apply");
        let target = target_of(&ns);
        let foreign = "-A INPUT -s 192.0.2.1/32 -j DROP";
        iptables::restore(
            &target,
            Family::Inet,
            &format!("*filter\n{foreign}\nCOMMIT\n"),
        )
        .expect("foreign rule");
        let flat = full.flatten();
        let (set, _) = flat
            .all_entries()
            .find(|(_, e)| !e.is_empty())
            .expect("a set with entries");
        target.ipset(&["flush", set], None).expect("flush");
        let (chain, _) = flat
            .chains()
            .find(|(k, c)| k.family == Family::Inet && !c.rules.is_empty())
            .expect("a chain with rules");
        let chain_name = chain.name.clone();
        target
            .run(
                "iptables",
                &[
                    "-w",
                    "-t",
                    chain.table.as_str(),
                    "-A",
                    &chain_name,
                    "-j",
                    "RETURN",
                ],
                None,
            )
            .expect("append");
        let jump = flat
            .jumps()
            .find(|j| j.family == Family::Inet)
            .expect("a jump");
        let save = target
            .run("iptables-save", &["-t", jump.table.as_str()], None)
            .expect("save");
        let line = save
            .lines()
            .find(|l| l.starts_with(&format!("-A {} ", jump.from)) && l.contains("setpoint:"))
            .expect("our jump is in the kernel");
        let delete = format!(
            "*{}\n{}\nCOMMIT\n",
            jump.table.as_str(),
            line.replacen("-A", "-D", 1)
        );
        iptables::restore(&target, Family::Inet, &delete).expect("delete jump");

        match verify(&mut applier, &full) {
            Err(ApplyError::Mismatch { differences, .. }) => {
                let all = differences.join("\n");
                assert!(all.contains(set.as_str()), "names the flushed set: {all}");
                assert!(all.contains(&chain_name), "names the edited chain: {all}");
                assert!(all.contains(&jump.from), "names the missing jump: {all}");
            }
            other => panic!("drift must be a mismatch, got {other:?}"),
        }
        let repair = apply(&mut applier, &full).expect("repair");
        assert_eq!(repair.digest, full.digest());
        assert!(repair.changes >= 3, "{repair:?}");
        let save = target.run("iptables-save", &[], None).expect("save");
        assert!(save.contains(foreign), "the foreign rule stays:\n{save}");
    }

    /// A rule edited in place under its tag (another source address, the
    /// tag's comment kept) is drift: read-back compares what the kernel
    /// prints with what it printed after the agent's own restore, not the
    /// tag alone; the next apply puts the rule back.
    #[test]
    fn a_rule_edited_under_its_tag_is_drift_and_repaired() {
        require_root_and_tools();
        let ns = Netns::create("agent-tag").expect("netns");
        let mut applier = applier(&ns);
        let objects = example_objects();
        let full = state(&objects, &vec![true; objects.len()], "node-a");
        apply(&mut applier, &full).expect("first apply");
        let target = target_of(&ns);
        let save = target
            .run("iptables-save", &["-t", "nat"], None)
            .expect("save");
        // A tagged rule of ours whose words need no quoting but the tag's
        // (iptables-nft quotes every comment).
        let (chain, number, words) = save
            .lines()
            .filter_map(|l| l.strip_prefix("-A "))
            .filter(|l| l.starts_with("SP-"))
            .scan(
                std::collections::BTreeMap::<String, usize>::new(),
                |seen, l| {
                    let (chain, rest) = l.split_once(' ')?;
                    let n = seen.entry(chain.to_string()).or_default();
                    *n += 1;
                    Some((chain.to_string(), *n, rest.to_string()))
                },
            )
            .find(|(_, _, rest)| rest.contains("setpoint:") && rest.matches('"').count() <= 2)
            .unwrap_or_else(|| panic!("a tagged rule in nat:\n{save}"));
        let number = number.to_string();
        let mut argv = vec![
            "-w",
            "-t",
            "nat",
            "-R",
            &chain,
            &number,
            "-s",
            "192.0.2.99/32",
        ];
        argv.extend(words.split(' ').map(|w| w.trim_matches('"')));
        target
            .run("iptables", &argv, None)
            .expect("edit the rule in place");
        let edited = target
            .run("iptables-save", &["-t", "nat"], None)
            .expect("save");
        assert!(edited.contains("192.0.2.99"), "{edited}");

        match verify(&mut applier, &full) {
            Err(ApplyError::Mismatch { differences, .. }) => {
                assert!(
                    differences.join("\n").contains(&chain),
                    "names the edited chain {chain}: {differences:?}"
                )
            }
            other => panic!("an edited rule under its tag must be drift, got {other:?}"),
        }
        apply(&mut applier, &full).expect("repair");
        assert_eq!(
            verify(&mut applier, &full).expect("repaired"),
            full.digest()
        );
        let repaired = target
            .run("iptables-save", &["-t", "nat"], None)
            .expect("save");
        assert!(!repaired.contains("192.0.2.99"), "{repaired}");
    }

    /// A state with virtual servers on a kernel without IPVS is refused
    /// before anything is touched, naming the missing feature.
    #[test]
    fn virtual_servers_without_ipvs_are_refused_and_nothing_is_applied() {
        use setpoint_agent::apply::NoIpvs;
        require_root_and_tools();
        let ns = Netns::create("agent-noipvs").expect("netns");
        let target = Target {
            netns: Some(ns.name().to_string()),
        };
        let mut applier = Applier::new(
            target.clone(),
            Box::new(NoIpvs {
                reason: "no IPVS in this kernel".to_string(),
            }),
        );
        let objects = example_objects();
        let full = state(&objects, &vec![true; objects.len()], "node-a");
        match apply(&mut applier, &full) {
            Err(e @ ApplyError::Unsupported { .. }) => {
                assert!(e.to_string().contains("IPVS"), "{e}")
            }
            other => panic!("must be refused, got {other:?}"),
        }
        let sets = target.ipset(&["list", "-n"], None).expect("list");
        assert_eq!(sets.trim(), "", "nothing applied");
        let mut policy_only = full.clone();
        for name in full.parts().map(|(n, _)| n.clone()).collect::<Vec<_>>() {
            if !name.starts_with("policy/") {
                policy_only.remove_part(&name);
            }
        }
        assert!(policy_only.flatten().virtual_server_count() == 0);
        let report = apply(&mut applier, &policy_only).expect("no IPVS needed");
        assert_eq!(report.digest, policy_only.digest());
    }
}
