//! `NodeDataplane::validate`, as a table: each case is a state and the
//! problems it must report, in any order; every case also checks that the
//! agent's incremental `validate_step` finds the same.

use setpoint_dataplane::diff::diff_fragments;
use setpoint_dataplane::validate::{
    MAX_CHAINS, MAX_RULE_WORD_BYTES, MAX_RULE_WORDS, MAX_SET_ELEMENTS, is_own_name, summary,
    validate_step,
};
use setpoint_dataplane::{
    Family, Format, Invalid, MAX_CHAIN_NAME_LEN, MAX_SET_NAME_LEN, NodeDataplane, Protocol,
    Scheduler, SetType, Table, render,
};

use crate::fixtures::{StateBuilder, entry, ip, state};

/// `state` reports exactly `expected` (in any order); and the agent's
/// incremental check of the step from the valid `base()` to it finds the
/// same problems as the whole-state check (all but disjointness and
/// NodePort collisions, which only whole states have).
fn check(state: StateBuilder, expected: &[Invalid]) {
    let state = state.build();
    let key = |p: &Invalid| format!("{p:?}");
    let mut got = state.validate();
    got.sort_by_key(key);
    let mut want = expected.to_vec();
    want.sort_by_key(key);
    assert_eq!(got, want, "state:\n{}", render(&state, Format::Text));

    // The agent's view: NodePort templates expanded where they can be.
    let view = |s: &NodeDataplane| {
        let flat = s.flatten();
        setpoint_dataplane::template::expand(&flat).unwrap_or(flat)
    };
    let (from, goal) = (view(&base().build()), view(&state));
    let mut stepped = validate_step(&goal, &diff_fragments(&from, &goal));
    stepped.sort_by_key(key);
    stepped.dedup();
    want.retain(|p| {
        !matches!(
            p,
            Invalid::DuplicatedAcrossParts { .. } | Invalid::NodePortCollision { .. }
        )
    });
    assert_eq!(
        stepped,
        want,
        "the step to:\n{}",
        render(&state, Format::Text)
    );
}

const SVC: &str = "SP-SERVICES";
const SVC_WEB: &str = "SP-SVC-WEB";

/// A small valid state the cases below add to.
fn base() -> StateBuilder {
    state()
        .set("SP-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries("SP-CLUSTER-IP", &["10.96.0.10,tcp:80"])
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:8080", 1)],
        )
        .address("10.96.0.10")
        .chain(
            Family::Inet,
            Table::Nat,
            SVC,
            &[&[
                "-m",
                "set",
                "--match-set",
                "SP-CLUSTER-IP",
                "dst,dst",
                "-j",
                SVC_WEB,
            ]],
        )
        .chain(Family::Inet, Table::Nat, SVC_WEB, &[&["-j", "ACCEPT"]])
        .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC])
}

/// `base()` with a chain `SP-FW` of one rule.
fn fw_rule(rule: &[&str]) -> StateBuilder {
    base().chain(Family::Inet, Table::Filter, "SP-FW", &[rule])
}

fn s(text: &str) -> String {
    text.to_string()
}

#[test]
fn base_and_empty_states_are_valid() {
    check(base(), &[]);
    check(state(), &[]);
}

#[test]
fn set_names_fit_the_kernel() {
    let longest = "SP-LB-SOURCE-CIDR-ABCDEFGHIJKLM";
    assert_eq!(longest.len(), 31);
    assert_eq!(MAX_SET_NAME_LEN, 31);
    let too_long = format!("{longest}H");
    check(base().set(longest, SetType::HashIp, Family::Inet, 64), &[]);
    check(
        base().set(&too_long, SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameTooLong { name: too_long }],
    );
    check(
        base().set("SP-HAS SPACE", SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameMalformed {
            name: s("SP-HAS SPACE"),
        }],
    );
}

#[test]
fn names_are_setpoints_own() {
    for good in ["SP-X", "SP6-X", "SP-CLUSTER-IP", "SP-P6-0A1B_c"] {
        assert!(is_own_name(good), "{good}");
    }
    for bad in [
        "",
        "SP-",
        "SP6-",
        "KUBE-SERVICES",
        "sp-x",
        "SPX",
        "SP-A.B",
        "SP-A/B",
        "SP-\nX",
        "SP-É",
        "INPUT",
    ] {
        assert!(!is_own_name(bad), "{bad:?}");
    }
    // Sets outside the namespace, and the agent's temporary names.
    check(
        base().set("KUBE-CLUSTER-IP", SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameMalformed {
            name: s("KUBE-CLUSTER-IP"),
        }],
    );
    check(
        base().set("SP-X\nCOMMIT", SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameMalformed {
            name: s("SP-X\nCOMMIT"),
        }],
    );
    check(
        base().set("SP-TMP-0011223344556677", SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameReserved {
            name: s("SP-TMP-0011223344556677"),
        }],
    );
    // Chains likewise; a rule that jumps to a foreign chain names it
    // undefined, since no state defines one.
    check(
        base().chain(Family::Inet, Table::Filter, "KUBE-FIREWALL", &[]),
        &[Invalid::ChainNameMalformed {
            name: s("KUBE-FIREWALL"),
        }],
    );
    check(
        fw_rule(&["-j", "KUBE-FIREWALL"]),
        &[Invalid::UnknownChainTarget {
            chain: s("SP-FW"),
            target: s("KUBE-FIREWALL"),
        }],
    );
}

#[test]
fn set_sizes_and_comments_are_bounded() {
    check(
        base().set("SP-BIG", SetType::HashIp, Family::Inet, MAX_SET_ELEMENTS),
        &[],
    );
    for maxelem in [0, MAX_SET_ELEMENTS + 1, u32::MAX] {
        check(
            base().set("SP-BIG", SetType::HashIp, Family::Inet, maxelem),
            &[Invalid::SetTooLarge {
                set: s("SP-BIG"),
                maxelem,
            }],
        );
    }
    let mut spec = crate::fixtures::mk_spec(SetType::HashIp, Family::Inet, 64);
    spec.comment = "pods\u{7}: ns=a".to_string();
    check(
        base().set_spec("SP-C", spec),
        &[Invalid::SetCommentMalformed { set: s("SP-C") }],
    );
    // /0 is not a net the kernel stores.
    check(
        base()
            .set("SP-NETS", SetType::HashNet, Family::Inet, 64)
            .entries("SP-NETS", &["0.0.0.0/0", "10.0.0.0/8"]),
        &[Invalid::EntryZeroPrefix {
            set: s("SP-NETS"),
            entry: entry("0.0.0.0/0"),
        }],
    );
}

#[test]
fn chain_count_is_bounded() {
    let mut many = base();
    for i in 0..MAX_CHAINS {
        many = many.chain(Family::Inet6, Table::Filter, &format!("SP-C{i}"), &[]);
    }
    // `base()` has two chains already.
    check(
        many,
        &[Invalid::TooManyChains {
            count: MAX_CHAINS + 2,
        }],
    );
}

/// A rule's words become `iptables-restore` input: a newline or any other
/// control character would start a line of the attacker's choosing.
#[test]
fn rule_words_are_single_printable_words_of_bounded_size() {
    for word in [
        "a\nb",
        "x\n-F INPUT",
        "\0",
        "a\rb",
        "tab\there",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        check(
            fw_rule(&["-m", "comment", "--comment", word, "-j", "ACCEPT"]),
            &[Invalid::RuleWordControl {
                chain: s("SP-FW"),
                word: s(word),
            }],
        );
    }
    // Spaces, quotes and backslashes are quoted, not refused.
    check(
        fw_rule(&["-m", "comment", "--comment", "a \"b\" \\ c", "-j", "ACCEPT"]),
        &[],
    );
    let long = "x".repeat(MAX_RULE_WORD_BYTES + 1);
    check(
        fw_rule(&["-m", "comment", "--comment", &long, "-j", "ACCEPT"]),
        &[Invalid::RuleWordTooLong {
            chain: s("SP-FW"),
            bytes: MAX_RULE_WORD_BYTES + 1,
        }],
    );
    let words: Vec<&str> = std::iter::repeat_n("-p", MAX_RULE_WORDS + 1).collect();
    check(
        fw_rule(&words),
        &[Invalid::RuleTooLong {
            chain: s("SP-FW"),
            words: MAX_RULE_WORDS + 1,
        }],
    );
    // In a jump's rule too.
    check(
        base().jump(
            Family::Inet,
            Table::Nat,
            "OUTPUT",
            0,
            &["-m", "comment", "--comment", "x\nCOMMIT", "-j", SVC],
        ),
        &[Invalid::RuleWordControl {
            chain: s("OUTPUT"),
            word: s("x\nCOMMIT"),
        }],
    );
}

/// The checks read `-j`, `-g` and `--match-set`; any other spelling
/// iptables would take for them is refused.
#[test]
fn jumps_and_set_matches_have_one_spelling() {
    for word in [
        "--jump",
        "--jum",
        "--j",
        "--goto",
        "--go",
        "--match-s",
        "--match-",
        "--set",
    ] {
        check(
            fw_rule(&["-p", "tcp", word, "KUBE-X"]),
            &[Invalid::RuleWordSpelling {
                chain: s("SP-FW"),
                word: s(word),
            }],
        );
    }
    // `--match` is `-m`, read as such.
    check(
        fw_rule(&[
            "--match",
            "set",
            "--match-set",
            "SP-CLUSTER-IP",
            "dst,dst",
            "-j",
            "ACCEPT",
        ]),
        &[],
    );
}

#[test]
fn jumps_go_to_own_chains() {
    check(
        base().jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-j", "ACCEPT"]),
        &[Invalid::JumpTargetNotOwn {
            table: Table::Nat,
            from: s("OUTPUT"),
            target: Some(s("ACCEPT")),
        }],
    );
    check(
        base().jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-p", "tcp"]),
        &[Invalid::JumpTargetNotOwn {
            table: Table::Nat,
            from: s("OUTPUT"),
            target: None,
        }],
    );
}

#[test]
fn addresses_are_never_reserved_ones() {
    for (addr, reason) in [
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
    ] {
        check(
            base().address(addr),
            &[Invalid::ReservedAddress {
                what: "service address",
                address: ip(addr),
                reason,
            }],
        );
    }
    check(
        base().vs(
            Protocol::Tcp,
            "127.0.0.1:10250",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:80", 1)],
        ),
        &[Invalid::ReservedAddress {
            what: "virtual server",
            address: ip("127.0.0.1"),
            reason: "loopback",
        }],
    );
    check(
        base().vs(
            Protocol::Tcp,
            "10.96.0.11:80",
            Scheduler::Rr,
            None,
            &[("127.0.0.1:10250", 1)],
        ),
        &[Invalid::ReservedAddress {
            what: "real server",
            address: ip("127.0.0.1"),
            reason: "loopback",
        }],
    );
    // The unspecified address is a NodePort template's key; it is checked
    // where the kernel will hold it, on each node-port address.
    let node_port = || {
        base()
            .vs(
                Protocol::Tcp,
                "0.0.0.0:30080",
                Scheduler::Rr,
                None,
                &[("10.244.1.5:80", 1)],
            )
            .set("SP-NODEPORT-IPS", SetType::HashIp, Family::Inet, 64)
    };
    check(
        node_port().entries("SP-NODEPORT-IPS", &["192.168.1.10"]),
        &[],
    );
    check(
        node_port().entries("SP-NODEPORT-IPS", &["192.168.1.10", "127.0.0.1"]),
        &[Invalid::ReservedAddress {
            what: "virtual server",
            address: ip("127.0.0.1"),
            reason: "loopback",
        }],
    );
}

/// Removing what a rule refers to is caught by the step check too.
#[test]
fn a_step_that_removes_a_referenced_set_or_chain_is_refused() {
    let without_set = {
        let mut f = base().build().flatten();
        f.remove_set("SP-CLUSTER-IP");
        f.clear_entries("SP-CLUSTER-IP");
        f
    };
    let from = base().build().flatten();
    assert_eq!(
        validate_step(&without_set, &diff_fragments(&from, &without_set)),
        vec![Invalid::UnknownSetInRule {
            chain: s(SVC),
            set: s("SP-CLUSTER-IP"),
        }]
    );
    let without_chain = {
        let mut f = base().build().flatten();
        f.remove_chain(&crate::fixtures::mk_chain_key(
            Family::Inet,
            Table::Nat,
            SVC,
        ));
        f
    };
    let got = validate_step(&without_chain, &diff_fragments(&from, &without_chain));
    assert!(
        got.contains(&Invalid::UnknownChainTarget {
            chain: s("PREROUTING"),
            target: s(SVC),
        }),
        "{got:?}"
    );
    // And an unchanged state needs nothing checked.
    assert_eq!(validate_step(&from, &diff_fragments(&from, &from)), vec![]);
}

#[test]
fn summaries_are_one_bounded_line() {
    let problems: Vec<Invalid> = (0..8)
        .map(|i| Invalid::SetNameMalformed {
            name: format!("BAD-{i}\n{}", "x".repeat(500)),
        })
        .collect();
    let text = summary(&problems);
    assert!(!text.contains('\n'), "{text}");
    assert!(text.ends_with("; and 3 more"), "{text}");
    assert!(text.len() < 1_000, "{} bytes", text.len());
}

#[test]
fn entries_fit_their_set() {
    check(
        base()
            .set("SP-IPS", SetType::HashIp, Family::Inet, 64)
            .entries("SP-IPS", &["10.96.0.10,tcp:80"]),
        &[Invalid::EntryWrongType {
            set: s("SP-IPS"),
            entry: entry("10.96.0.10,tcp:80"),
            kind: SetType::HashIp,
        }],
    );
    check(
        base()
            .set("SP-IPS", SetType::HashIp, Family::Inet, 64)
            .entries("SP-IPS", &["fd00::10"]),
        &[Invalid::EntryWrongFamily {
            set: s("SP-IPS"),
            entry: entry("fd00::10"),
            family: Family::Inet,
        }],
    );
    check(
        base()
            .set("SP-IPS6", SetType::HashIp, Family::Inet6, 64)
            .entries("SP-IPS6", &["fd00::10"]),
        &[],
    );
    // Both addresses of a two-address entry are of the set's family.
    check(
        base()
            .set("SP-LOOP", SetType::HashIpPortIp, Family::Inet, 64)
            .entries("SP-LOOP", &["10.244.1.5,tcp:80,fd00::5"]),
        &[Invalid::EntryWrongFamily {
            set: s("SP-LOOP"),
            entry: entry("10.244.1.5,tcp:80,fd00::5"),
            family: Family::Inet,
        }],
    );
    check(
        base()
            .set("SP-PORTS", SetType::BitmapPort, Family::Inet, 65536)
            .entries("SP-PORTS", &["30080", "30443"]),
        &[],
    );
}

#[test]
fn sets_hold_at_most_maxelem_entries() {
    let three = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    check(
        base()
            .set("SP-SMALL", SetType::HashIp, Family::Inet, 3)
            .entries("SP-SMALL", &three),
        &[],
    );
    check(
        base()
            .set("SP-SMALL", SetType::HashIp, Family::Inet, 2)
            .entries("SP-SMALL", &three),
        &[Invalid::SetOverfull {
            set: s("SP-SMALL"),
            entries: 3,
            maxelem: 2,
        }],
    );
    // Entries count across fragments.
    check(
        base()
            .set("SP-SMALL", SetType::HashIp, Family::Inet, 2)
            .entries("SP-SMALL", &three[..2])
            .part("zone")
            .entries("SP-SMALL", &three[2..]),
        &[Invalid::SetOverfull {
            set: s("SP-SMALL"),
            entries: 3,
            maxelem: 2,
        }],
    );
}

#[test]
fn entries_need_a_set_somewhere() {
    check(
        base().entries("SP-NOWHERE", &["10.0.0.1", "10.0.0.2"]),
        &[Invalid::EntriesWithoutSet {
            set: s("SP-NOWHERE"),
            count: 2,
        }],
    );
    // The definition may sit in another fragment.
    check(
        base()
            .part("zone")
            .set("SP-ELSEWHERE", SetType::HashIp, Family::Inet, 64)
            .part("node")
            .entries("SP-ELSEWHERE", &["10.0.0.1"]),
        &[],
    );
}

#[test]
fn rules_match_defined_sets_of_their_family() {
    let missing: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "SP-MISSING",
        "dst,dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base().chain(Family::Inet, Table::Filter, "SP-FW", &[missing]),
        &[Invalid::UnknownSetInRule {
            chain: s("SP-FW"),
            set: s("SP-MISSING"),
        }],
    );

    let inet: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "SP-CLUSTER-IP",
        "dst,dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base().chain(Family::Inet6, Table::Filter, "SP-FW", &[inet]),
        &[Invalid::SetFamilyMismatchInRule {
            chain: s("SP-FW"),
            set: s("SP-CLUSTER-IP"),
        }],
    );

    // A port bitmap has no family: both families may use it.
    let ports: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "SP-NODE-PORT-TCP",
        "dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base()
            .set("SP-NODE-PORT-TCP", SetType::BitmapPort, Family::Inet, 65536)
            .chain(Family::Inet6, Table::Filter, "SP-FW", &[ports])
            .chain(Family::Inet, Table::Filter, "SP-FW", &[ports]),
        &[],
    );
}

#[test]
fn rules_jump_to_defined_chains() {
    check(
        base().chain(
            Family::Inet,
            Table::Nat,
            "SP-NODEPORTS",
            &[&["-p", "tcp", "-j", "SP-SVC-GONE"]],
        ),
        &[Invalid::UnknownChainTarget {
            chain: s("SP-NODEPORTS"),
            target: s("SP-SVC-GONE"),
        }],
    );
    // Gotos too.
    check(
        base().chain(
            Family::Inet,
            Table::Nat,
            "SP-NODEPORTS",
            &[&["-g", "SP-SVC-GONE"]],
        ),
        &[Invalid::UnknownChainTarget {
            chain: s("SP-NODEPORTS"),
            target: s("SP-SVC-GONE"),
        }],
    );
    // A chain of the same name in another table or family does not count.
    check(
        fw_rule(&["-j", SVC_WEB]),
        &[Invalid::UnknownChainTarget {
            chain: s("SP-FW"),
            target: s(SVC_WEB),
        }],
    );
    check(
        base().jump(Family::Inet6, Table::Nat, "PREROUTING", 0, &["-j", SVC]),
        &[Invalid::UnknownChainTarget {
            chain: s("PREROUTING"),
            target: s(SVC),
        }],
    );
    // Built-in targets are always there.
    check(
        base().chain(
            Family::Inet,
            Table::Nat,
            "SP-MARK-MASQ",
            &[
                &["-j", "MARK", "--or-mark", "0x4000"],
                &["-j", "RETURN"],
                &["-j", "MASQUERADE"],
            ],
        ),
        &[],
    );
}

#[test]
fn chain_names_fit_and_are_not_built_in() {
    let longest = "SP-FIREWALL-0123456789ABCDEF";
    assert_eq!(longest.len(), MAX_CHAIN_NAME_LEN);
    let too_long = format!("{longest}X");
    check(base().chain(Family::Inet, Table::Filter, longest, &[]), &[]);
    check(
        base().chain(Family::Inet, Table::Filter, &too_long, &[]),
        &[Invalid::ChainNameTooLong { name: too_long }],
    );
    check(
        base().chain(Family::Inet, Table::Nat, "POSTROUTING", &[]),
        &[Invalid::BuiltinChainDeclared {
            name: s("POSTROUTING"),
        }],
    );
    // FORWARD is built into filter, not into nat; and not Setpoint's name.
    check(
        base().chain(Family::Inet, Table::Nat, "FORWARD", &[]),
        &[Invalid::ChainNameMalformed { name: s("FORWARD") }],
    );
}

#[test]
fn jumps_leave_built_in_chains_only() {
    check(
        base().jump(Family::Inet, Table::Nat, SVC_WEB, 0, &["-j", SVC]),
        &[Invalid::JumpFromUnknownChain {
            table: Table::Nat,
            from: s(SVC_WEB),
        }],
    );
    check(
        base().jump(Family::Inet, Table::Nat, "FORWARD", 0, &["-j", SVC]),
        &[Invalid::JumpFromUnknownChain {
            table: Table::Nat,
            from: s("FORWARD"),
        }],
    );
    check(
        base().jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-j", SVC]),
        &[],
    );
}

#[test]
fn virtual_servers_are_single_family() {
    check(
        base().vs(
            Protocol::Tcp,
            "10.96.0.11:80",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:8080", 1), ("[fd00:10::5]:8080", 1)],
        ),
        &[Invalid::MixedFamilyVirtualServer {
            key: s("tcp/10.96.0.11:80"),
        }],
    );
    check(
        base().vs(
            Protocol::Udp,
            "[fd00::10]:53",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:53", 1)],
        ),
        &[Invalid::MixedFamilyVirtualServer {
            key: s("udp/[fd00::10]:53"),
        }],
    );
    check(
        base().vs(
            Protocol::Udp,
            "[fd00::10]:53",
            Scheduler::Rr,
            None,
            &[("[fd00:10::5]:53", 1)],
        ),
        &[],
    );
}

#[test]
fn weights_fit_ipvs() {
    let weight = |w: u32| {
        base().vs(
            Protocol::Tcp,
            "10.96.0.11:80",
            Scheduler::Wrr,
            None,
            &[("10.244.1.5:8080", w)],
        )
    };
    check(weight(i32::MAX as u32), &[]);
    check(
        weight(i32::MAX as u32 + 1),
        &[Invalid::WeightTooLarge {
            address: ip("10.244.1.5"),
            weight: i32::MAX as u32 + 1,
        }],
    );
}

#[test]
fn fragments_are_disjoint() {
    check(
        base().part("zone").address("10.96.0.10"),
        &[Invalid::DuplicatedAcrossParts { atoms: 1 }],
    );
    check(
        base()
            .part("zone")
            .address("10.96.0.10")
            .entries("SP-CLUSTER-IP", &["10.96.0.10,tcp:80"])
            .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC]),
        &[Invalid::DuplicatedAcrossParts { atoms: 3 }],
    );
    // Two definitions of one set, even different ones, are one too many.
    check(
        base()
            .part("zone")
            .set("SP-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 1024),
        &[Invalid::DuplicatedAcrossParts { atoms: 1 }],
    );
    check(
        base()
            .part("zone")
            .vs(Protocol::Tcp, "10.96.0.10:80", Scheduler::Lc, None, &[]),
        &[Invalid::DuplicatedAcrossParts { atoms: 1 }],
    );
    // Distinct atoms in any number of fragments are fine.
    check(
        base()
            .part("zone")
            .address("10.96.0.11")
            .part("node")
            .entries("SP-CLUSTER-IP", &["10.96.0.11,tcp:80"]),
        &[],
    );
}

#[test]
fn problems_read_well() {
    let problems = base()
        .set("SP-IPS", SetType::HashIp, Family::Inet, 1)
        .entries("SP-IPS", &["fd00::10", "10.0.0.1,udp:53"])
        .entries("SP-NOWHERE", &["10.0.0.1"])
        .jump(Family::Inet, Table::Nat, SVC_WEB, 0, &["-j", "SP-GONE"])
        .part("zone")
        .address("10.96.0.10")
        .build()
        .validate();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let expect = [
        "1 atoms are defined in more than one fragment",
        "entry 10.0.0.1,udp:53 does not fit set SP-IPS of type hash:ip",
        "entry fd00::10 does not fit set SP-IPS of family inet",
        "set SP-IPS holds 2 entries but maxelem is 1",
        "1 entries for set SP-NOWHERE which is not defined",
        "jump from SP-SVC-WEB which is not a built-in chain of table nat",
        "a rule in SP-SVC-WEB jumps to SP-GONE which is not defined",
    ];
    for want in expect {
        assert!(
            text.iter().any(|t| t == want),
            "no problem reads {want:?} in {text:#?}"
        );
    }
    assert_eq!(text.len(), expect.len(), "{text:#?}");
}
