//! The chunk format: pinned, and its decoders under fire.
//!
//! Stored revisions must read back, so the bytes a store writes for a
//! fragment are pinned by a fingerprint, under the boundary rule it writes
//! with (`Cuts::CURRENT`) and under every earlier one (`Cuts::FIRST`). A
//! change to a body's encoding changes both: bump `CHUNK_FORMAT` and plan
//! the migration, don't just paste the new value. A new boundary rule
//! (where chunks and manifests end, not what they hold) is a new `Cuts`
//! constant with its own pin; the earlier pins stay, and stores written
//! under them must keep reading (`sharing::reads_what_an_earlier_rule_wrote`).
//!
//! Chunk and manifest bodies get arbitrary bytes and valid encodings with
//! a few bytes changed. Each decoder must answer with a value or an error —
//! never a panic — and allocate in proportion to its input, whatever a
//! length or count in it claims.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use proptest::prelude::*;
use setpoint_dataplane::{
    Chain, ChainKey, Digest, Family, Forward, Fragment, Jump, Protocol, RealServer, Rule,
    Scheduler, SetEntry, SetSpec, SetType, Table, VirtualServer, VirtualServerKey,
};
use setpoint_store::chunk::{CHUNK_FORMAT, ChunkedFragment, Cuts, decode_chunk, decode_manifest};
use sha2::{Digest as _, Sha256};

use crate::hostile::{arbitrary_bytes, assert_bounded, edited, edits, measure};

/// A fragment with every kind of atom and of set entry, both families,
/// names longer than one LEB128 byte, and `entries` extra entries.
fn every_kind(entries: u32) -> Fragment {
    let mut f = Fragment::new();
    let long = "SP-".to_string() + &"L".repeat(200);
    for (i, kind) in SetType::ALL.into_iter().enumerate() {
        let family = if i % 2 == 0 {
            Family::Inet
        } else {
            Family::Inet6
        };
        f.put_set(
            format!("SP-SET-{i}"),
            SetSpec {
                kind,
                family,
                maxelem: 1 << (10 + i),
                comment: format!("set {i}"),
            },
        );
    }
    f.put_set(
        long.clone(),
        SetSpec {
            kind: SetType::HashIp,
            family: Family::Inet,
            maxelem: 16,
            comment: String::new(),
        },
    );
    let v4 = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    let v6 = |i: u32| {
        IpAddr::V6(Ipv6Addr::from(
            0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
        ))
    };
    f.add_entry("SP-SET-0", SetEntry::Ip(v4(1)));
    f.add_entry("SP-SET-0", SetEntry::Ip(v6(1)));
    f.add_entry(
        "SP-SET-1",
        SetEntry::IpPort {
            ip: v6(2),
            protocol: Protocol::Udp,
            port: 53,
        },
    );
    f.add_entry(
        "SP-SET-2",
        SetEntry::IpPortIp {
            ip: v4(3),
            protocol: Protocol::Sctp,
            port: 9,
            ip2: v4(4),
        },
    );
    f.add_entry(
        "SP-SET-3",
        SetEntry::IpPortNet {
            ip: v4(5),
            protocol: Protocol::Tcp,
            port: 80,
            net: "192.168.0.0/16".parse().unwrap(),
        },
    );
    f.add_entry(
        "SP-SET-4",
        SetEntry::Net {
            net: "fd00::/8".parse().unwrap(),
            nomatch: true,
        },
    );
    f.add_entry(
        "SP-SET-4",
        SetEntry::Net {
            net: "10.0.0.0/8".parse().unwrap(),
            nomatch: false,
        },
    );
    f.add_entry("SP-SET-5", SetEntry::Port(30080));
    f.add_entry(&long, SetEntry::Ip(v4(6)));
    f.add_entry("SP-FOREIGN", SetEntry::Ip(v4(7)));
    for i in 0..entries {
        f.add_entry(
            "SP-BIG",
            SetEntry::IpPort {
                ip: v4(1000 + i),
                protocol: Protocol::Tcp,
                port: (i % 60000) as u16 + 1,
            },
        );
    }
    for (i, scheduler) in Scheduler::ALL.into_iter().enumerate() {
        let i = i as u32;
        let reals = (0..i)
            .map(|b| RealServer {
                address: if b % 2 == 0 {
                    v4(5000 + i * 16 + b)
                } else {
                    v6(5000 + i * 16 + b)
                },
                port: 8080 + b as u16,
                weight: b,
                forward: [Forward::Masq, Forward::Route, Forward::Tunnel][(b % 3) as usize],
            })
            .collect();
        let persistence = (i % 2 == 1).then_some(10800 + i);
        let key = VirtualServerKey {
            address: v4(9000 + i),
            protocol: Protocol::ALL[(i % 3) as usize],
            port: 80 + i as u16,
        };
        f.put_virtual_server(
            key,
            Arc::new(VirtualServer::new(scheduler, persistence, reals)),
        );
        f.add_address(key.address);
    }
    f.add_address(v6(9000));
    for (i, table) in Table::ALL.into_iter().enumerate() {
        let family = if i % 2 == 0 {
            Family::Inet
        } else {
            Family::Inet6
        };
        let rules = (0..i)
            .map(|r| {
                Rule::new([
                    "-m",
                    "comment",
                    "--comment",
                    &format!("rule {r} {long}"),
                    "-j",
                    "ACCEPT",
                ])
            })
            .collect();
        f.put_chain(
            ChainKey {
                family,
                table,
                name: format!("SP-CHAIN-{i}"),
            },
            Arc::new(Chain { rules }),
        );
        f.add_jump(Jump {
            family,
            table,
            from: "PREROUTING".into(),
            position: i as u16,
            rule: Rule::new(["-j", &format!("SP-CHAIN-{i}")]),
        });
    }
    f
}

/// SHA-256 over every byte a store writes for `f` under `cuts`: chunk
/// bodies, manifest levels and bodies, the header.
fn stored_fingerprint(f: Fragment, cuts: Cuts) -> String {
    let (chunked, chunks) = ChunkedFragment::with_cuts(Arc::new(f), cuts);
    let mut h = Sha256::new();
    for c in &chunks {
        h.update(&c.body);
    }
    for m in chunked.manifests() {
        h.update([m.level]);
        h.update(&m.body);
    }
    h.update(chunked.header().encode());
    hex::encode(h.finalize())
}

/// Written by the chunk format of `setpoint/dataplane/v1` (checked equal
/// to what the format wrote when it lived in the contract crate), under
/// the first boundary rule, which stores wrote until it was replaced.
#[test]
fn stored_bytes_are_pinned_under_the_first_rule() {
    assert_eq!(CHUNK_FORMAT, 1);
    let small = every_kind(0);
    assert_eq!(small.atom_count(), 44);
    assert_eq!(
        stored_fingerprint(small, Cuts::FIRST),
        "ff81567e6aaf257cfa417d3cb98762e4ff507945be2f3519726431a09c58a170"
    );
    assert_eq!(
        stored_fingerprint(every_kind(20_000), Cuts::FIRST),
        "ae6b5a145e038c8bd53cc4ca028a3e1d125397335c7ee2f68922782b100e5509"
    );
}

/// What a store writes now: the same bodies' encoding, chunks of about
/// 1 KiB and manifests of about 16 children, neither cut before half of
/// that (smaller rewrites per edit; see `Cuts::CURRENT`).
#[test]
fn stored_bytes_are_pinned() {
    assert_eq!(CHUNK_FORMAT, 1);
    assert_eq!(
        ChunkedFragment::new(Arc::new(every_kind(0))).1,
        ChunkedFragment::with_cuts(Arc::new(every_kind(0)), Cuts::CURRENT).1
    );
    assert_eq!(
        stored_fingerprint(every_kind(0), Cuts::CURRENT),
        "7f7eaa23065e2801da5a0169c996f4a3b4750a590f177f65d2b1c574807e1616"
    );
    assert_eq!(
        stored_fingerprint(every_kind(20_000), Cuts::CURRENT),
        "aecaaa597f6d9a241ff2cbd53d6e810d3b626fb76c24ce8e21d17634446c15af"
    );
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
    let (chunked, chunks) = ChunkedFragment::new(Arc::new(every_kind(0)));
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
    let mut one_rule = Fragment::new();
    one_rule.put_chain(
        ChainKey {
            family: Family::Inet,
            table: Table::Filter,
            name: "SP-X".into(),
        },
        Arc::new(Chain {
            rules: vec![Rule::new(["X"])],
        }),
    );
    let (_, chunks) = ChunkedFragment::new(Arc::new(one_rule));
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
