//! `render`'s ipset and iptables formats are what the real tools accept,
//! and what they read back is what the state says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::render::ipset_entry;
use setpoint_dataplane::{Family, Format, NodeDataplane, Table, render};
use setpoint_integration::{Netns, require_root_and_tools};

pub(crate) fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn example_states() -> Vec<(String, NodeDataplane)> {
    let report = setpoint_source::load_path(&examples()).expect("examples load");
    assert!(
        report.skipped.is_empty(),
        "examples have bad objects: {:?}",
        report.skipped
    );
    let mut index = Index::new(ComputeConfig::default());
    for object in report.objects {
        index.upsert(object);
    }
    index.commit();
    let names: Vec<String> = index.node_names().map(|n| n.to_string()).collect();
    assert_eq!(names.len(), 3, "the examples define three nodes");
    names
        .into_iter()
        .map(|n| {
            let state = index.node_state(&n).expect("known node");
            assert!(state.validate().is_empty(), "{n}: {:?}", state.validate());
            (n, state)
        })
        .collect()
}

/// `add NAME ENTRY` lines of `ipset save`, by set, for Setpoint's sets.
fn saved_entries(save: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in save.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), _) => {
                out.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name), Some(entry)) => {
                out.entry(name.to_string())
                    .or_default()
                    .insert(entry.to_string());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn ipset_render_restores_and_reads_back_identically() {
    require_root_and_tools();
    for (node, state) in example_states() {
        let ns = Netns::create("ipset").expect("netns");
        ns.exec(&["ipset", "restore"], Some(&render(&state, Format::Ipset)))
            .unwrap_or_else(|e| panic!("{node}: ipset restore refused the render: {e}"));
        let save = ns.exec(&["ipset", "save"], None).expect("ipset save");
        let kernel = saved_entries(&save);
        let flat = state.flatten();
        let expected: BTreeMap<String, BTreeSet<String>> = flat
            .sets()
            .map(|(name, spec)| {
                let entries = flat
                    .entries(name)
                    .into_iter()
                    .flatten()
                    .map(|e| ipset_entry(spec.kind, e))
                    .collect();
                (name.clone(), entries)
            })
            .collect();
        assert_eq!(
            kernel, expected,
            "{node}: kernel sets differ from the state"
        );
        assert!(
            expected.values().map(BTreeSet::len).sum::<usize>() > 20,
            "{node}: the examples should fill the sets"
        );
    }
}

/// Rules per (table, chain).
type RuleCounts = BTreeMap<(String, String), usize>;

/// Rules per Setpoint chain, and jumps per built-in chain, in `iptables-save`.
fn saved_rules(save: &str) -> (RuleCounts, RuleCounts) {
    let mut table = String::new();
    let mut own = BTreeMap::new();
    let mut jumps = BTreeMap::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(name) = line.strip_prefix(':').and_then(|l| l.split(' ').next()) {
            if name.starts_with("SP-") {
                own.entry((table.clone(), name.to_string())).or_insert(0);
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default().to_string();
            if chain.starts_with("SP-") {
                *own.entry((table.clone(), chain)).or_insert(0) += 1;
            } else if rest.contains(" -j SP-") {
                *jumps.entry((table.clone(), chain)).or_insert(0) += 1;
            }
        }
    }
    (own, jumps)
}

#[test]
fn iptables_render_restores_for_both_families() {
    require_root_and_tools();
    for (node, state) in example_states() {
        let ns = Netns::create("ipt").expect("netns");
        // Sets first: the rules match on them.
        ns.exec(&["ipset", "restore"], Some(&render(&state, Format::Ipset)))
            .expect("ipset restore");
        let flat = state.flatten();
        for (family, format, restore, save) in [
            (
                Family::Inet,
                Format::Iptables,
                "iptables-restore",
                "iptables-save",
            ),
            (
                Family::Inet6,
                Format::Ip6tables,
                "ip6tables-restore",
                "ip6tables-save",
            ),
        ] {
            let text = render(&state, format);
            ns.exec(&[restore, "-w", "--noflush"], Some(&text))
                .unwrap_or_else(|e| panic!("{node}: {restore} refused the render: {e}\n{text}"));
            let (own, jumps) = saved_rules(&ns.exec(&[save], None).expect("save"));
            let expected_own: RuleCounts = flat
                .chains()
                .filter(|(k, _)| k.family == family)
                .map(|(k, c)| {
                    (
                        (k.table.as_str().to_string(), k.name.clone()),
                        c.rules.len(),
                    )
                })
                .collect();
            assert_eq!(own, expected_own, "{node} {restore}: chains differ");
            let mut expected_jumps: RuleCounts = BTreeMap::new();
            for j in flat.jumps().filter(|j| j.family == family) {
                *expected_jumps
                    .entry((j.table.as_str().to_string(), j.from.clone()))
                    .or_insert(0) += 1;
            }
            assert_eq!(jumps, expected_jumps, "{node} {restore}: jumps differ");
            assert!(
                expected_own
                    .contains_key(&(Table::Nat.as_str().to_string(), "SP-SERVICES".to_string()))
            );
        }
    }
}

#[test]
fn a_bad_ruleset_leaves_the_applied_one_intact() {
    require_root_and_tools();
    let (_, state) = example_states().remove(0);
    let ns = Netns::create("atomic").expect("netns");
    ns.exec(&["ipset", "restore"], Some(&render(&state, Format::Ipset)))
        .expect("ipset restore");
    let good = render(&state, Format::Iptables);
    ns.exec(&["iptables-restore", "-w", "--noflush"], Some(&good))
        .expect("restore");
    let before = ns
        .exec(&["iptables-save", "-t", "nat"], None)
        .expect("save");
    // The same ruleset naming a set that does not exist must be refused whole.
    let broken = good.replace(
        "SP-CLUSTER-IP dst,dst -j ACCEPT",
        "SP-NO-SUCH-SET dst,dst -j ACCEPT",
    );
    assert_ne!(broken, good);
    assert!(
        ns.exec(&["iptables-restore", "-w", "--noflush"], Some(&broken))
            .is_err()
    );
    let after = ns
        .exec(&["iptables-save", "-t", "nat"], None)
        .expect("save");
    let rules = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("-A"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(&before), rules(&after));
}
