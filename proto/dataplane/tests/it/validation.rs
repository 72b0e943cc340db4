//! `NodeDataplane::validate`, as a table: each case is a state and the
//! problems it must report, in any order.

use setpoint_dataplane::{
    Family, Format, Invalid, MAX_CHAIN_NAME_LEN, MAX_SET_NAME_LEN, Protocol, Scheduler, SetType,
    Table, render,
};

use crate::fixtures::{StateBuilder, entry, state};

fn check(state: StateBuilder, expected: &[Invalid]) {
    let state = state.build();
    let key = |p: &Invalid| format!("{p:?}");
    let mut got = state.validate();
    got.sort_by_key(key);
    let mut want = expected.to_vec();
    want.sort_by_key(key);
    assert_eq!(got, want, "state:\n{}", render(&state, Format::Text));
}

const SVC: &str = "SETPOINT-SERVICES";
const SVC_WEB: &str = "SETPOINT-SVC-WEB";

/// A small valid state the cases below add to.
fn base() -> StateBuilder {
    state()
        .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries("KUBE-CLUSTER-IP", &["10.96.0.10,tcp:80"])
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
                "KUBE-CLUSTER-IP",
                "dst,dst",
                "-j",
                SVC_WEB,
            ]],
        )
        .chain(Family::Inet, Table::Nat, SVC_WEB, &[&["-j", "ACCEPT"]])
        .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC])
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
    let longest = "SETPOINT-LB-SOURCE-CIDR-ABCDEFG";
    assert_eq!(longest.len(), 31);
    assert_eq!(MAX_SET_NAME_LEN, 31);
    let too_long = format!("{longest}H");
    check(base().set(longest, SetType::HashIp, Family::Inet, 64), &[]);
    check(
        base().set(&too_long, SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameTooLong { name: too_long }],
    );
    check(
        base().set("HAS SPACE", SetType::HashIp, Family::Inet, 64),
        &[Invalid::SetNameMalformed {
            name: s("HAS SPACE"),
        }],
    );
}

#[test]
fn entries_fit_their_set() {
    check(
        base()
            .set("IPS", SetType::HashIp, Family::Inet, 64)
            .entries("IPS", &["10.96.0.10,tcp:80"]),
        &[Invalid::EntryWrongType {
            set: s("IPS"),
            entry: entry("10.96.0.10,tcp:80"),
            kind: SetType::HashIp,
        }],
    );
    check(
        base()
            .set("IPS", SetType::HashIp, Family::Inet, 64)
            .entries("IPS", &["fd00::10"]),
        &[Invalid::EntryWrongFamily {
            set: s("IPS"),
            entry: entry("fd00::10"),
            family: Family::Inet,
        }],
    );
    check(
        base()
            .set("IPS6", SetType::HashIp, Family::Inet6, 64)
            .entries("IPS6", &["fd00::10"]),
        &[],
    );
    // Both addresses of a two-address entry are of the set's family.
    check(
        base()
            .set("LOOP", SetType::HashIpPortIp, Family::Inet, 64)
            .entries("LOOP", &["10.244.1.5,tcp:80,fd00::5"]),
        &[Invalid::EntryWrongFamily {
            set: s("LOOP"),
            entry: entry("10.244.1.5,tcp:80,fd00::5"),
            family: Family::Inet,
        }],
    );
    check(
        base()
            .set("PORTS", SetType::BitmapPort, Family::Inet, 65536)
            .entries("PORTS", &["30080", "30443"]),
        &[],
    );
}

#[test]
fn sets_hold_at_most_maxelem_entries() {
    let three = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    check(
        base()
            .set("SMALL", SetType::HashIp, Family::Inet, 3)
            .entries("SMALL", &three),
        &[],
    );
    check(
        base()
            .set("SMALL", SetType::HashIp, Family::Inet, 2)
            .entries("SMALL", &three),
        &[Invalid::SetOverfull {
            set: s("SMALL"),
            entries: 3,
            maxelem: 2,
        }],
    );
    // Entries count across fragments.
    check(
        base()
            .set("SMALL", SetType::HashIp, Family::Inet, 2)
            .entries("SMALL", &three[..2])
            .part("zone")
            .entries("SMALL", &three[2..]),
        &[Invalid::SetOverfull {
            set: s("SMALL"),
            entries: 3,
            maxelem: 2,
        }],
    );
}

#[test]
fn entries_need_a_set_somewhere() {
    check(
        base().entries("NOWHERE", &["10.0.0.1", "10.0.0.2"]),
        &[Invalid::EntriesWithoutSet {
            set: s("NOWHERE"),
            count: 2,
        }],
    );
    // The definition may sit in another fragment.
    check(
        base()
            .part("zone")
            .set("ELSEWHERE", SetType::HashIp, Family::Inet, 64)
            .part("node")
            .entries("ELSEWHERE", &["10.0.0.1"]),
        &[],
    );
}

#[test]
fn rules_match_defined_sets_of_their_family() {
    let missing: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "KUBE-MISSING",
        "dst,dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base().chain(Family::Inet, Table::Filter, "SETPOINT-FW", &[missing]),
        &[Invalid::UnknownSetInRule {
            chain: s("SETPOINT-FW"),
            set: s("KUBE-MISSING"),
        }],
    );

    let inet: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "KUBE-CLUSTER-IP",
        "dst,dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base().chain(Family::Inet6, Table::Filter, "SETPOINT-FW", &[inet]),
        &[Invalid::SetFamilyMismatchInRule {
            chain: s("SETPOINT-FW"),
            set: s("KUBE-CLUSTER-IP"),
        }],
    );

    // A port bitmap has no family: both families may use it.
    let ports: &[&str] = &[
        "-m",
        "set",
        "--match-set",
        "KUBE-NODE-PORT-TCP",
        "dst",
        "-j",
        "ACCEPT",
    ];
    check(
        base()
            .set(
                "KUBE-NODE-PORT-TCP",
                SetType::BitmapPort,
                Family::Inet,
                65536,
            )
            .chain(Family::Inet6, Table::Filter, "SETPOINT-FW", &[ports])
            .chain(Family::Inet, Table::Filter, "SETPOINT-FW", &[ports]),
        &[],
    );
}

#[test]
fn rules_jump_to_defined_chains() {
    check(
        base().chain(
            Family::Inet,
            Table::Nat,
            "SETPOINT-NODEPORTS",
            &[&["-p", "tcp", "-j", "SETPOINT-SVC-GONE"]],
        ),
        &[Invalid::UnknownChainTarget {
            chain: s("SETPOINT-NODEPORTS"),
            target: s("SETPOINT-SVC-GONE"),
        }],
    );
    // Gotos too.
    check(
        base().chain(
            Family::Inet,
            Table::Nat,
            "SETPOINT-NODEPORTS",
            &[&["-g", "SETPOINT-SVC-GONE"]],
        ),
        &[Invalid::UnknownChainTarget {
            chain: s("SETPOINT-NODEPORTS"),
            target: s("SETPOINT-SVC-GONE"),
        }],
    );
    // A chain of the same name in another table or family does not count.
    check(
        base().chain(
            Family::Inet,
            Table::Filter,
            "SETPOINT-FW",
            &[&["-j", SVC_WEB]],
        ),
        &[Invalid::UnknownChainTarget {
            chain: s("SETPOINT-FW"),
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
            "SETPOINT-MARK-MASQ",
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
    let longest = "SETPOINT-FIREWALL-0123456789";
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
    // FORWARD is built into filter, not into nat.
    check(base().chain(Family::Inet, Table::Nat, "FORWARD", &[]), &[]);
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
fn fragments_are_disjoint() {
    check(
        base().part("zone").address("10.96.0.10"),
        &[Invalid::DuplicatedAcrossParts { atoms: 1 }],
    );
    check(
        base()
            .part("zone")
            .address("10.96.0.10")
            .entries("KUBE-CLUSTER-IP", &["10.96.0.10,tcp:80"])
            .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC]),
        &[Invalid::DuplicatedAcrossParts { atoms: 3 }],
    );
    // Two definitions of one set, even different ones, are one too many.
    check(
        base()
            .part("zone")
            .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 1024),
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
            .entries("KUBE-CLUSTER-IP", &["10.96.0.11,tcp:80"]),
        &[],
    );
}

#[test]
fn problems_read_well() {
    let problems = base()
        .set("IPS", SetType::HashIp, Family::Inet, 1)
        .entries("IPS", &["fd00::10", "10.0.0.1,udp:53"])
        .entries("NOWHERE", &["10.0.0.1"])
        .jump(
            Family::Inet,
            Table::Nat,
            SVC_WEB,
            0,
            &["-j", "SETPOINT-GONE"],
        )
        .part("zone")
        .address("10.96.0.10")
        .build()
        .validate();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let expect = [
        "1 atoms are defined in more than one fragment",
        "entry 10.0.0.1,udp:53 does not fit set IPS of type hash:ip",
        "entry fd00::10 does not fit set IPS of family inet",
        "set IPS holds 2 entries but maxelem is 1",
        "1 entries for set NOWHERE which is not defined",
        "jump from SETPOINT-SVC-WEB which is not a built-in chain of table nat",
        "a rule in SETPOINT-SVC-WEB jumps to SETPOINT-GONE which is not defined",
    ];
    for want in expect {
        assert!(
            text.iter().any(|t| t == want),
            "no problem reads {want:?} in {text:#?}"
        );
    }
    assert_eq!(text.len(), expect.len(), "{text:#?}");
}
