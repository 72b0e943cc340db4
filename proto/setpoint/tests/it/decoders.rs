//! Decoders a peer reaches, under fire: the gRPC messages both ends decode,
//! the reassembly of pieces, and the parts (JSON and deflated) and plain
//! JSON payloads of snapshots and deltas. Fed arbitrary bytes and valid encodings with a few
//! bytes changed, each answers with a value or an error — never a panic —
//! and allocates in proportion to what it was given.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use setpoint_dataplane::{NodeDataplane, diff};

use crate::hostile;
use setpoint_proto::parts::{
    DIFF_PARTS_ENCODING, FragmentCache, PartsEncoding, STATE_PARTS_DEFLATE_ENCODING,
    STATE_PARTS_ENCODING, apply_delta, decode_state, decode_state_deflated, delta_of_parts,
    encode_part, encode_part_as, encode_part_diff, encode_state, snapshot_of_parts,
    snapshot_state_cached,
};
use setpoint_proto::pieces::{Reassembly, into_pieces};
use setpoint_proto::v1::{
    self, Ack, AgentMessage, ControlMessage, Hello, Nack, Piece, agent_message,
    control_message::Body,
};
use setpoint_proto::{
    DIFF_ENCODING, PROTOCOL_VERSION, STATE_ENCODING, example_fragment, snapshot_state,
};

use hostile::{arbitrary_bytes, assert_bounded, edited, edits, measure};

fn before() -> NodeDataplane {
    NodeDataplane::from_parts([
        (
            "services",
            Arc::new(example_fragment("SP-A", &["10.0.0.1", "10.0.0.2"])),
        ),
        ("node/n1", Arc::new(example_fragment("SP-B", &["10.1.0.1"]))),
    ])
}

fn after() -> NodeDataplane {
    NodeDataplane::from_parts([
        (
            "services",
            Arc::new(example_fragment("SP-A", &["10.0.0.1", "10.0.0.3"])),
        ),
        ("zone/z", Arc::new(example_fragment("SP-C", &["10.2.0.1"]))),
    ])
}

/// The parts payload of `after`.
fn state_parts() -> Vec<u8> {
    encode_state(&after()).expect("encodes")
}

/// The compact (deflated) parts payload of `after`.
fn state_parts_deflated() -> Vec<u8> {
    after()
        .parts()
        .flat_map(|(n, f)| encode_part_as(n, f, PartsEncoding::Deflate).expect("encodes"))
        .collect()
}

/// One part of `state` as a state of its own.
fn part(state: &NodeDataplane, name: &str) -> Option<NodeDataplane> {
    state
        .parts()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| NodeDataplane::from_fragment(f.as_ref().clone()))
}

/// The parts delta from `before` to `after`.
fn diff_parts() -> v1::Delta {
    let (from, to) = (before(), after());
    let names: BTreeSet<String> = from
        .parts()
        .chain(to.parts())
        .map(|(n, _)| n.clone())
        .collect();
    let empty = NodeDataplane::default();
    let parts: Vec<Vec<u8>> = names
        .iter()
        .map(|name| {
            let (a, b) = (part(&from, name), part(&to, name));
            let changes = diff(a.as_ref().unwrap_or(&empty), b.as_ref().unwrap_or(&empty));
            let digest = |s: Option<&NodeDataplane>| s.map(NodeDataplane::digest);
            encode_part_diff(name, digest(a.as_ref()), digest(b.as_ref()), &changes)
                .expect("encodes")
        })
        .collect();
    delta_of_parts(1, 2, &to.digest(), &parts)
}

fn snapshot_message() -> ControlMessage {
    let parts: Vec<Vec<u8>> = after()
        .parts()
        .map(|(n, f)| encode_part(n, f).expect("encodes"))
        .collect();
    ControlMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(Body::Snapshot(snapshot_of_parts(
            2,
            &after().digest(),
            &parts,
        ))),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    }
}

fn agent_messages() -> Vec<AgentMessage> {
    let digest = after().digest().0.to_vec();
    [
        agent_message::Body::Hello(Hello {
            node: "node-a".into(),
            agent_version: "0.1.0".into(),
            applied_revision: 7,
            applied_digest: digest.clone(),
            accept_encodings: vec![setpoint_proto::parts::STATE_PARTS_DEFLATE_ENCODING.into()],
        }),
        agent_message::Body::Ack(Ack {
            revision: 7,
            digest,
            apply_micros: 1200,
        }),
        agent_message::Body::Nack(Nack {
            revision: 7,
            error: "ipset restore failed".into(),
            failed_operation: "ipset".into(),
        }),
    ]
    .into_iter()
    .map(|body| AgentMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
    })
    .collect()
}

/// A payload decoded every way a receiver decodes one: as a snapshot's
/// state in both encodings and as a delta's changes in both encodings.
fn check_payload(bytes: &[u8]) {
    let cache = FragmentCache::default();
    let digest = after().digest().0.to_vec();
    let (_, allocated) = measure(|| {
        let _ = decode_state(bytes, None, &cache);
        let _ = decode_state_deflated(bytes, None, &cache);
        for encoding in [
            STATE_PARTS_ENCODING,
            STATE_PARTS_DEFLATE_ENCODING,
            STATE_ENCODING,
            "other",
        ] {
            let snapshot = v1::Snapshot {
                revision: 2,
                digest: digest.clone(),
                state: bytes.to_vec(),
                encoding: encoding.into(),
            };
            let _ = snapshot_state_cached(&snapshot, &cache);
            let _ = snapshot_state(&snapshot);
        }
        for encoding in [DIFF_PARTS_ENCODING, DIFF_ENCODING] {
            let delta = v1::Delta {
                from_revision: 1,
                to_revision: 2,
                digest: digest.clone(),
                changes: bytes.to_vec(),
                encoding: encoding.into(),
            };
            let _ = apply_delta(&before(), &delta, &cache);
        }
    });
    // Several decodes of the bytes, each holding a copy and its parse.
    assert_bounded("payload", bytes, allocated, 256, 256 << 10);
}

/// Messages decoded as both ends decode them; what decodes also passes
/// through reassembly.
fn check_message(bytes: &[u8]) {
    let (_, allocated) = measure(|| {
        let _ = AgentMessage::decode(bytes);
        if let Ok(message) = ControlMessage::decode(bytes) {
            let _ = Reassembly::default().push(message);
        }
    });
    assert_bounded("message", bytes, allocated, 16, 16 << 10);
}

fn piece(index: u32, count: u32, data: Vec<u8>) -> ControlMessage {
    ControlMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(Body::Piece(Piece {
            index,
            count,
            data: Bytes::from(data),
        })),
        traceparent: String::new(),
    }
}

/// After whatever came before, a well-formed run reassembles (the first
/// try may fail once, when it lands inside the previous run).
fn assert_recovers(reassembly: &mut Reassembly) {
    let message = snapshot_message();
    let pieces = into_pieces(message.clone(), 64);
    assert!(pieces.len() > 1);
    for _attempt in 0..2 {
        let mut out = None;
        for p in pieces.iter().cloned() {
            match reassembly.push(p) {
                Ok(whole) => out = whole,
                Err(_) => break,
            }
        }
        if out.is_some() {
            assert_eq!(out, Some(message));
            return;
        }
    }
    panic!("a well-formed run did not reassemble twice in a row");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn payloads_of_arbitrary_bytes(bytes in arbitrary_bytes()) {
        check_payload(&bytes);
    }

    #[test]
    fn payloads_edited(which in 0..3u8, edits in edits()) {
        let valid = match which {
            0 => diff_parts().changes,
            1 => state_parts(),
            _ => state_parts_deflated(),
        };
        check_payload(&edited(&valid, &edits));
    }

    #[test]
    fn messages_of_arbitrary_bytes(bytes in arbitrary_bytes()) {
        check_message(&bytes);
    }

    #[test]
    fn messages_edited(which in any::<prop::sample::Index>(), edits in edits()) {
        let mut valid: Vec<Vec<u8>> =
            agent_messages().iter().map(Message::encode_to_vec).collect();
        valid.push(snapshot_message().encode_to_vec());
        let delta = ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            body: Some(Body::Delta(diff_parts())),
            traceparent: String::new(),
        };
        valid.push(delta.encode_to_vec());
        valid.extend(into_pieces(snapshot_message(), 64).iter().map(Message::encode_to_vec));
        check_message(&edited(which.get::<Vec<u8>>(&valid), &edits));
    }

    #[test]
    fn runs_of_arbitrary_pieces(
        run in prop::collection::vec(
            (0u32..6, prop_oneof![0u32..6, Just(u32::MAX)], arbitrary_bytes()),
            1..8,
        )
    ) {
        let mut reassembly = Reassembly::default();
        let input: usize = run.iter().map(|(_, _, d)| d.len()).sum();
        let (_, allocated) = measure(|| {
            for (index, count, data) in run {
                let _ = reassembly.push(piece(index, count, data));
            }
        });
        assert_bounded("pieces", &vec![0; input], allocated, 8, 16 << 10);
        assert_recovers(&mut reassembly);
    }

    #[test]
    fn runs_with_an_edited_piece(which in any::<prop::sample::Index>(), edits in edits()) {
        let mut run: Vec<Vec<u8>> =
            into_pieces(snapshot_message(), 64).iter().map(Message::encode_to_vec).collect();
        let i = which.index(run.len());
        run[i] = edited(&run[i], &edits);
        let mut reassembly = Reassembly::default();
        for bytes in &run {
            // The stream decodes each message first; one that does not
            // decode ends the stream before reassembly sees it.
            let Ok(message) = ControlMessage::decode(bytes.as_slice()) else { break };
            if let Ok(Some(whole)) = reassembly.push(message) {
                // Whatever reassembles is a whole message, never a piece.
                prop_assert!(!matches!(whole.body, Some(Body::Piece(_))));
            }
        }
        assert_recovers(&mut reassembly);
    }
}

#[test]
fn the_valid_encodings_decode() {
    let cache = FragmentCache::default();
    let state = decode_state(&state_parts(), Some(after().digest()), &cache).expect("decodes");
    assert_eq!(state.digest(), after().digest());
    let state = decode_state_deflated(
        &state_parts_deflated(),
        Some(after().digest()),
        &FragmentCache::default(),
    )
    .expect("decodes");
    assert_eq!(state.digest(), after().digest());
    let applied = apply_delta(&before(), &diff_parts(), &cache).expect("applies");
    assert_eq!(applied.digest(), after().digest());
    for message in agent_messages() {
        assert_eq!(
            AgentMessage::decode(message.encode_to_vec().as_slice()).ok(),
            Some(message)
        );
    }
    assert_recovers(&mut Reassembly::default());
}

#[test]
fn a_length_claiming_two_to_the_sixty_allocates_nothing_like_it() {
    // Field 2 (the hello), length-delimited, claiming 2^60 bytes; then a
    // few bytes. And a piece claiming u32::MAX pieces of 2^60 bytes.
    let mut claim = vec![0x12];
    claim.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
    claim.extend_from_slice(b"node-a");
    let (decoded, allocated) = measure(|| AgentMessage::decode(claim.as_slice()));
    assert!(decoded.is_err());
    assert_bounded("hello claim", &claim, allocated, 16, 4 << 10);
    let (decoded, allocated) = measure(|| ControlMessage::decode(claim.as_slice()));
    assert!(decoded.is_err());
    assert_bounded("snapshot claim", &claim, allocated, 16, 4 << 10);

    let mut reassembly = Reassembly::default();
    let (outcome, allocated) =
        measure(|| reassembly.push(piece(0, u32::MAX, b"a little".to_vec())));
    assert_eq!(outcome.ok(), Some(None), "the first of many pieces is held");
    assert_bounded("piece claim", b"a little", allocated, 16, 4 << 10);
    assert_recovers(&mut reassembly);
}
