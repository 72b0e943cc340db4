//! Decoders under fire: the JSON of states and diffs gets arbitrary bytes
//! and valid encodings with a few bytes changed. Each must answer with a
//! value or an error — never a panic — and allocate in proportion to its
//! input, whatever a length or count in it claims. (The store's chunk
//! decoders get the same in the store's tests.)

use proptest::prelude::*;
use setpoint_dataplane::{
    Diff, Family, NodeDataplane, Protocol, Scheduler, SetType, Table, apply, diff,
};

use crate::fixtures::state;
use crate::hostile::{arbitrary_bytes, assert_bounded, edited, edits, measure};

/// Every kind of atom, in both families.
fn example() -> NodeDataplane {
    state()
        .set("SP-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries("SP-CLUSTER-IP", &["10.96.0.10,tcp:80", "10.96.0.1,tcp:443"])
        .set("SP-NODE-PORT-TCP", SetType::BitmapPort, Family::Inet, 65536)
        .entries("SP-NODE-PORT-TCP", &["30080"])
        .set("SP6-LOOP-BACK", SetType::HashIpPortIp, Family::Inet6, 1024)
        .entries("SP6-LOOP-BACK", &["fd00:10::5,udp:53,fd00:10::5"])
        .set("SP-LB-SOURCE", SetType::HashIpPortNet, Family::Inet, 1024)
        .entries("SP-LB-SOURCE", &["10.0.0.1,tcp:80,192.168.0.0/16"])
        .set("SP-NETS", SetType::HashNet, Family::Inet, 16)
        .entries("SP-NETS", &["10.1.0.0/16"])
        .set("SP-IPS", SetType::HashIp, Family::Inet, 16)
        .entries("SP-IPS", &["10.2.0.1"])
        .part("services")
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            Some(10800),
            &[("10.244.1.5:8080", 1), ("10.244.2.5:8080", 0)],
        )
        .vs(
            Protocol::Udp,
            "[fd00::10]:53",
            Scheduler::Rr,
            None,
            &[("[fd00:10::5]:53", 1)],
        )
        .address("10.96.0.10")
        .address("fd00::10")
        .chain(
            Family::Inet,
            Table::Nat,
            "SP-SERVICES",
            &[&["-j", "SP-MARK"]],
        )
        .jump(
            Family::Inet6,
            Table::Filter,
            "FORWARD",
            3,
            &["-j", "SP6-FW"],
        )
        .build()
}

/// JSON of a state and of a diff: decoded with bounded allocation, and a
/// decoded diff applies to the example or fails with an error.
fn check_json(bytes: &[u8]) {
    let (state, allocated) = measure(|| serde_json::from_slice::<NodeDataplane>(bytes));
    assert_bounded("state JSON", bytes, allocated, 64, 64 << 10);
    if let Ok(state) = state {
        // What decodes re-encodes to the same state.
        let again = serde_json::to_vec(&state).expect("a decoded state encodes");
        let back: NodeDataplane = serde_json::from_slice(&again).expect("and decodes");
        assert_eq!(back.digest(), state.digest());
    }
    let (changes, allocated) = measure(|| serde_json::from_slice::<Diff>(bytes));
    assert_bounded("diff JSON", bytes, allocated, 64, 64 << 10);
    if let Ok(changes) = changes {
        let _ = apply(&example(), &changes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn state_and_diff_json_of_arbitrary_bytes(bytes in arbitrary_bytes()) {
        check_json(&bytes);
    }

    #[test]
    fn state_and_diff_json_edited(use_diff in any::<bool>(), edits in edits()) {
        let valid = if use_diff {
            let mut next = example().flatten();
            next.add_address("10.96.0.11".parse().expect("address"));
            let changes = diff(&example(), &NodeDataplane::from_fragment(next));
            serde_json::to_vec(&changes).expect("encodes")
        } else {
            serde_json::to_vec(&example()).expect("encodes")
        };
        check_json(&edited(&valid, &edits));
    }
}

#[test]
fn the_valid_encodings_decode() {
    let json = serde_json::to_vec(&example()).expect("encodes");
    let back: NodeDataplane = serde_json::from_slice(&json).expect("decodes");
    assert_eq!(back.digest(), example().digest());
}
