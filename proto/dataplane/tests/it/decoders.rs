//! Decoders under fire: the store's chunk and manifest bodies and the JSON
//! of states and diffs get arbitrary bytes and valid encodings with a few
//! bytes changed. Each must answer with a value or an error — never a
//! panic — and allocate in proportion to its input, whatever a length or
//! count in it claims.

use std::sync::Arc;

use proptest::prelude::*;
use setpoint_dataplane::chunk::{ChunkedFragment, decode_chunk, decode_manifest};
use setpoint_dataplane::{
    Diff, Digest, Family, NodeDataplane, Protocol, Scheduler, SetType, Table, apply, diff,
};
use sha2::{Digest as _, Sha256};

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

fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

/// How a store holds the example: chunk bodies, and manifest bodies with
/// their level.
struct Stored {
    chunks: Vec<Vec<u8>>,
    manifests: Vec<(u8, Vec<u8>)>,
}

fn stored_bodies() -> Stored {
    let (chunked, chunks) = ChunkedFragment::new(Arc::new(example().flatten()));
    let manifests = chunked
        .manifests()
        .iter()
        .map(|m| (m.level, m.body.clone()))
        .collect();
    Stored {
        chunks: chunks.into_iter().map(|c| c.body).collect(),
        manifests,
    }
}

/// A chunk body whose key is its hash (so the body itself is parsed) is
/// decoded with bounded allocation; a decoded chunk's atoms are in order.
fn check_chunk(body: &[u8]) {
    let key = sha256(body);
    let (decoded, allocated) = measure(|| decode_chunk(&key, body));
    assert_bounded("chunk", body, allocated, 64, 64 << 10);
    if let Ok(chunk) = decoded {
        assert!(chunk.atom_count() as usize <= body.len());
    }
}

fn check_manifest(level: u8, body: &[u8]) {
    let key = sha256(body);
    let (decoded, allocated) = measure(|| decode_manifest(&key, level, body));
    assert_bounded("manifest", body, allocated, 4, 4 << 10);
    if let Ok(children) = decoded {
        assert_eq!(children.len() * 32 + 2, body.len());
    }
    // The same bytes under another key are refused before being read.
    assert!(decode_manifest(&sha256(b"other"), level, body).is_err());
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
    fn chunks_of_arbitrary_bytes(body in arbitrary_bytes()) {
        check_chunk(&body);
        // Past the format byte, so the atom decoder is reached.
        let mut formatted = vec![stored_bodies().chunks[0][0]];
        formatted.extend_from_slice(&body);
        check_chunk(&formatted);
    }

    #[test]
    fn chunks_edited(which in any::<prop::sample::Index>(), edits in edits()) {
        let chunks = stored_bodies().chunks;
        let valid = which.get(&chunks);
        check_chunk(&edited(valid, &edits));
    }

    #[test]
    fn manifests_of_arbitrary_bytes(level in any::<u8>(), body in arbitrary_bytes()) {
        check_manifest(level, &body);
    }

    #[test]
    fn manifests_edited(which in any::<prop::sample::Index>(), edits in edits()) {
        let manifests = stored_bodies().manifests;
        let (level, valid) = which.get(&manifests);
        check_manifest(*level, &edited(valid, &edits));
    }

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
    let Stored { chunks, manifests } = stored_bodies();
    assert!(!chunks.is_empty() && !manifests.is_empty());
    for body in &chunks {
        assert!(decode_chunk(&sha256(body), body).is_ok());
    }
    for (level, body) in &manifests {
        assert!(decode_manifest(&sha256(body), *level, body).is_ok());
    }
    let json = serde_json::to_vec(&example()).expect("encodes");
    let back: NodeDataplane = serde_json::from_slice(&json).expect("decodes");
    assert_eq!(back.digest(), example().digest());
}

/// LEB128, as chunks write lengths.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[test]
fn a_length_claiming_two_to_the_sixty_allocates_nothing_like_it() {
    let one_rule = state()
        .chain(Family::Inet, Table::Filter, "SP-X", &[&["X"]])
        .build();
    let (_, chunks) = ChunkedFragment::new(Arc::new(one_rule.flatten()));
    let body = &chunks[0].body;
    // The chain ends: 1 rule, of 1 word, of 1 byte, "X".
    let tail = [1, 1, 1, b'X'];
    assert!(body.ends_with(&tail), "{body:?}");
    let head = &body[..body.len() - tail.len()];
    for claim in [
        [varint(1 << 60), vec![1, 1, b'X']].concat(),
        [vec![1], varint(1 << 60), vec![1, b'X']].concat(),
        [vec![1, 1], varint(1 << 60), vec![b'X']].concat(),
    ] {
        let forged = [head, &claim].concat();
        let (decoded, allocated) = measure(|| decode_chunk(&sha256(&forged), &forged));
        let err = decoded.expect_err("a claim past the body is refused");
        assert!(err.to_string().contains("exceeds"), "{err}");
        assert_bounded("forged chunk", &forged, allocated, 64, 4 << 10);
    }
}
