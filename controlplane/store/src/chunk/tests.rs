//! Unit tests of the chunk format: round trips, bounds, corruption, and
//! incremental chunking equal to chunking from scratch.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proptest::prelude::*;
use setpoint_dataplane::{
    Chain, ChainKey, Family, Forward, HealthCheck, Jump, NodeCondition, Protocol, RealServer, Rule,
    Scheduler, SetEntry, SetSpec, SetType, Table, VirtualServer, VirtualServerKey,
};

use super::codec::{
    TAG_ADDRESS, TAG_ENTRY, TAG_ENTRY_SAME_SET, TAG_HEALTH_CHECK, TAG_NODE_CONDITION,
};
use super::*;

fn spec() -> SetSpec {
    SetSpec {
        kind: SetType::HashIpPort,
        family: Family::Inet,
        maxelem: 65536,
        comment: "test".into(),
    }
}

fn entry(i: u32) -> SetEntry {
    SetEntry::IpPort {
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        protocol: Protocol::Tcp,
        port: (i % 60000) as u16 + 1,
    }
}

fn vs(i: u32, backends: u32) -> (VirtualServerKey, Arc<VirtualServer>) {
    let key = VirtualServerKey {
        address: IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)),
        protocol: Protocol::Tcp,
        port: 80,
    };
    let rs = (0..backends)
        .map(|b| RealServer {
            address: IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i * 16 + b)),
            port: 8080,
            weight: 1,
            forward: Forward::Masq,
        })
        .collect();
    (key, Arc::new(VirtualServer::new(Scheduler::Rr, None, rs)))
}

fn chain(name: &str, rules: usize) -> (ChainKey, Arc<Chain>) {
    let key = ChainKey {
        family: Family::Inet,
        table: Table::Nat,
        name: name.into(),
    };
    let rules = (0..rules)
        .map(|r| {
            Rule::new([
                "-m",
                "comment",
                "--comment",
                &format!("rule {r}"),
                "-j",
                "ACCEPT",
            ])
        })
        .collect();
    (key, Arc::new(Chain { rules }))
}

/// A fragment with every kind of atom, `n` scaling the big parts.
fn sample(n: u32) -> Fragment {
    let mut f = Fragment::new();
    f.put_set("SP-A", spec());
    f.put_set("SP-EMPTY", spec());
    for i in 0..n * 10 {
        f.add_entry("SP-A", entry(i));
    }
    for i in 0..n {
        f.add_entry("SP-FOREIGN", entry(i + 100_000));
    }
    f.put_set(
        "SP-NET",
        SetSpec {
            kind: SetType::HashNet,
            family: Family::Inet6,
            maxelem: 16,
            comment: String::new(),
        },
    );
    f.add_entry(
        "SP-NET",
        SetEntry::Net {
            net: "fd00::/8".parse().unwrap(),
            nomatch: true,
        },
    );
    for i in 0..n {
        let (k, v) = vs(i, 1 + i % 12);
        f.put_virtual_server(k, v);
        f.add_address(k.address);
    }
    for c in 0..3 {
        let (k, v) = chain(&format!("SP-CHAIN-{c}"), 5);
        f.put_chain(k, v);
    }
    f.add_jump(Jump {
        family: Family::Inet,
        table: Table::Nat,
        from: "PREROUTING".into(),
        position: 0,
        rule: Rule::new(["-j", "SP-CHAIN-0"]),
    });
    for i in 0..n / 10 {
        f.put_health_check(30000 + i as u16, health_check(i, 1 + i % 3));
    }
    f.add_node_condition(NodeCondition::Draining);
    f
}

fn health_check(i: u32, local_endpoints: u32) -> HealthCheck {
    HealthCheck {
        namespace: format!("ns-{}", i % 7),
        name: format!("svc-{i}"),
        local_endpoints,
    }
}

fn roundtrip(cf: &ChunkedFragment, store: &HashMap<Digest, Vec<u8>>) -> Fragment {
    let chunks: Vec<(Digest, Vec<u8>)> = cf.chunk_keys().map(|k| (*k, store[k].clone())).collect();
    assemble(
        &cf.key(),
        cf.header(),
        chunks.iter().map(|(k, b)| (k, b.as_slice())),
    )
    .unwrap()
}

fn remember(store: &mut HashMap<Digest, Vec<u8>>, chunks: Vec<Chunk>) {
    for c in chunks {
        store.insert(c.key, c.body);
    }
}

#[test]
fn round_trip_every_atom_kind() {
    let f = Arc::new(sample(300));
    let (cf, chunks) = ChunkedFragment::new(f.clone());
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    assert!(!cf.manifests().is_empty());
    let mut store = HashMap::new();
    remember(&mut store, chunks);
    let back = roundtrip(&cf, &store);
    assert_eq!(back, *f);
    assert_eq!(back.digest(), f.digest());
    assert_eq!(back.health_checks().count(), 30);
    assert!(back.has_node_condition(NodeCondition::Draining));
}

#[test]
fn empty_fragment_round_trips() {
    let f = Arc::new(Fragment::new());
    let (cf, chunks) = ChunkedFragment::new(f.clone());
    assert!(chunks.is_empty());
    let back = roundtrip(&cf, &HashMap::new());
    assert_eq!(back, *f);
}

#[test]
fn chunks_stay_within_bounds() {
    let (_, chunks) = ChunkedFragment::new(Arc::new(sample(2000)));
    let mean = chunks.iter().map(|c| c.body.len()).sum::<usize>() / chunks.len();
    assert!(
        (Cuts::CURRENT.min_chunk_bytes..Cuts::CURRENT.max_chunk_bytes).contains(&mean),
        "mean chunk {mean} bytes"
    );
    for c in &chunks {
        assert!(c.body.len() < Cuts::CURRENT.max_chunk_bytes + 1024);
        assert!(c.atoms as usize <= Cuts::CURRENT.max_chunk_atoms);
    }
}

#[test]
fn corrupt_chunk_is_an_error_naming_it() {
    let f = Arc::new(sample(50));
    let (cf, chunks) = ChunkedFragment::new(f);
    let mut store = HashMap::new();
    remember(&mut store, chunks);
    let victim = *cf.chunk_keys().nth(1).unwrap();
    if let Some(body) = store.get_mut(&victim) {
        let last = body.len() - 1;
        body[last] ^= 1;
    }
    let chunks: Vec<(Digest, Vec<u8>)> = cf.chunk_keys().map(|k| (*k, store[k].clone())).collect();
    let err = assemble(
        &cf.key(),
        cf.header(),
        chunks.iter().map(|(k, b)| (k, b.as_slice())),
    )
    .unwrap_err();
    assert!(matches!(err, ChunkError::ChunkDigest { key, .. } if key == victim));
    assert!(err.to_string().contains(&victim.to_string()));
}

#[test]
fn undecodable_chunk_with_matching_key_is_an_error() {
    for body in [
        vec![CHUNK_FORMAT, 99],
        vec![CHUNK_FORMAT, TAG_ENTRY_SAME_SET, 1, 4, 10, 0, 0, 1],
        vec![CHUNK_FORMAT, TAG_ADDRESS, 4, 10],
        vec![2],
        vec![CHUNK_FORMAT, TAG_ENTRY, 200, 200, 200],
        // A node condition past the list of conditions.
        vec![CHUNK_FORMAT, TAG_NODE_CONDITION, 7],
        // A health check cut short in its count.
        vec![
            CHUNK_FORMAT,
            TAG_HEALTH_CHECK,
            0x75,
            0x30,
            1,
            b'a',
            1,
            b'b',
            0,
        ],
    ] {
        let key = sha256(&body);
        let err = decode_chunk(&key, &body).unwrap_err();
        assert!(
            matches!(&err, ChunkError::ChunkBody { key: k, .. } if *k == key),
            "{err}"
        );
    }
}

#[test]
fn atoms_out_of_order_in_a_chunk_are_an_error() {
    for body in [
        // Two addresses, descending.
        vec![
            CHUNK_FORMAT,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            2,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            1,
        ],
        // The same address twice.
        vec![
            CHUNK_FORMAT,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            1,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            1,
        ],
        // A node condition before a health check (conditions come last).
        vec![
            CHUNK_FORMAT,
            TAG_NODE_CONDITION,
            0,
            TAG_HEALTH_CHECK,
            0x75,
            0x30,
            1,
            b'a',
            1,
            b'b',
            0,
            0,
            0,
            1,
        ],
        // A health check before an address (kernel atoms come first).
        vec![
            CHUNK_FORMAT,
            TAG_HEALTH_CHECK,
            0x75,
            0x30,
            1,
            b'a',
            1,
            b'b',
            0,
            0,
            0,
            1,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            1,
        ],
        // An address before a set entry (sets come first).
        vec![
            CHUNK_FORMAT,
            TAG_ADDRESS,
            4,
            10,
            0,
            0,
            1,
            TAG_ENTRY,
            1,
            b'S',
            6,
            0,
            80,
        ],
    ] {
        let key = sha256(&body);
        let err = decode_chunk(&key, &body).unwrap_err();
        assert!(
            matches!(&err, ChunkError::ChunkBody { key: k, reason, .. }
                if *k == key && reason.to_string().contains("canonical order")),
            "{err}"
        );
    }
}

#[test]
fn chunks_decoded_apart_assemble_to_the_same_fragment() {
    let f = Arc::new(sample(300));
    let (cf, chunks) = ChunkedFragment::new(f.clone());
    let mut store = HashMap::new();
    remember(&mut store, chunks);
    let keys: Vec<Digest> = cf.chunk_keys().copied().collect();
    assert!(keys.len() > 3);
    let decode = |k: &Digest| decode_chunk(k, &store[k]);

    // Decoded in any order (as threads finish), assembled in order.
    let mut decoded: Vec<(usize, DecodedChunk)> = keys
        .iter()
        .enumerate()
        .rev()
        .map(|(i, k)| (i, decode(k).unwrap()))
        .collect();
    assert_eq!(
        decoded.iter().map(|(_, d)| d.atom_count()).sum::<u64>(),
        f.atom_count()
    );
    decoded.sort_by_key(|(i, _)| *i);
    let back = assemble_decoded(
        &cf.key(),
        cf.header(),
        decoded.into_iter().map(|(_, d)| Ok(d)),
    )
    .unwrap();
    assert_eq!(back, *f);
    assert_eq!(back.digest(), f.digest());

    // Chunks put together out of order: an error naming the fragment.
    let mut swapped: Vec<_> = keys.iter().map(decode).collect();
    swapped.swap(0, 1);
    let err = assemble_decoded(&cf.key(), cf.header(), swapped).unwrap_err();
    assert!(
        matches!(&err, ChunkError::Fragment { key, .. } if *key == cf.key()),
        "{err}"
    );

    // A bad chunk anywhere fails the whole fragment, naming the chunk.
    let bad = keys[keys.len() / 2];
    let mut with_bad: Vec<_> = keys.iter().map(decode).collect();
    with_bad[keys.len() / 2] = decode_chunk(&bad, &[CHUNK_FORMAT, TAG_ADDRESS]);
    let err = assemble_decoded(&cf.key(), cf.header(), with_bad).unwrap_err();
    assert!(
        matches!(err, ChunkError::ChunkDigest { key, .. } if key == bad),
        "{err}"
    );

    // A wrong header is refused before any chunk is looked at.
    let mut header = *cf.header();
    header.atoms += 1;
    let err = assemble_decoded(&cf.key(), &header, keys.iter().map(decode)).unwrap_err();
    assert!(matches!(err, ChunkError::HeaderDigest { .. }), "{err}");
}

#[test]
fn wrong_header_and_manifest_are_errors() {
    let (cf, chunks) = ChunkedFragment::new(Arc::new(sample(20)));
    let mut header = *cf.header();
    header.atoms += 1;
    let bodies: Vec<(Digest, Vec<u8>)> = chunks.into_iter().map(|c| (c.key, c.body)).collect();
    let err = assemble(
        &cf.key(),
        &header,
        bodies.iter().map(|(k, b)| (k, b.as_slice())),
    );
    assert!(matches!(err, Err(ChunkError::HeaderDigest { .. })));
    // A header that hashes right but lies about the content.
    let key = header.key();
    let err = assemble(&key, &header, bodies.iter().map(|(k, b)| (k, b.as_slice())));
    assert!(matches!(err, Err(ChunkError::Fragment { key: k, .. }) if k == key));
    // Leaving a chunk out.
    let err = assemble(
        &cf.key(),
        cf.header(),
        bodies.iter().skip(1).map(|(k, b)| (k, b.as_slice())),
    );
    assert!(matches!(err, Err(ChunkError::Fragment { .. })));

    let m = &cf.manifests()[0];
    assert!(decode_manifest(&m.key, m.level, &m.body).is_ok());
    assert!(matches!(
        decode_manifest(&m.key, m.level + 1, &m.body),
        Err(ChunkError::ManifestBody { .. })
    ));
    let mut bad = m.body.clone();
    bad.push(0);
    assert!(matches!(
        decode_manifest(&m.key, m.level, &bad),
        Err(ChunkError::ManifestDigest { .. })
    ));
}

#[test]
fn big_fragment_gets_a_tall_tree_and_one_edit_touches_one_path() {
    let mut f = Fragment::new();
    for i in 0..200_000 {
        f.add_entry("SP-BIG", entry(i));
    }
    let f = Arc::new(f);
    let (cf, chunks) = ChunkedFragment::new(f.clone());
    assert!(cf.header().height >= 2, "height {}", cf.header().height);
    let mut g = Fragment::clone(&f);
    g.remove_entry("SP-BIG", &entry(123_456));
    let (cg, new_chunks) = cf.update(Arc::new(g));
    assert!(new_chunks.len() <= 2, "{} new chunks", new_chunks.len());
    let new_manifests = cg.new_manifests(Some(&cf)).count();
    assert!(
        new_manifests <= 2 * cg.header().height as usize,
        "{new_manifests} new manifests"
    );
    let mut store = HashMap::new();
    remember(&mut store, chunks);
    remember(&mut store, new_chunks);
    assert_eq!(roundtrip(&cg, &store), **cg.fragment());
}

#[derive(Clone, Debug)]
enum Edit {
    AddEntry(u32),
    RemoveEntry(u32),
    PutVs(u32, u32),
    RemoveVs(u32),
    AddAddress(u32),
    RemoveSet,
    PutChain(u8, usize),
    PutHealthCheck(u32, u32),
    RemoveHealthCheck(u32),
    FlipDraining,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..4000u32).prop_map(Edit::AddEntry),
        (0..4000u32).prop_map(Edit::RemoveEntry),
        (0..400u32, 0..20u32).prop_map(|(i, b)| Edit::PutVs(i, b)),
        (0..400u32).prop_map(Edit::RemoveVs),
        (0..400u32).prop_map(Edit::AddAddress),
        Just(Edit::RemoveSet),
        (0..4u8, 0..40usize).prop_map(|(c, r)| Edit::PutChain(c, r)),
        (0..40u32, 0..3u32).prop_map(|(i, n)| Edit::PutHealthCheck(i, n)),
        (0..40u32).prop_map(Edit::RemoveHealthCheck),
        Just(Edit::FlipDraining),
    ]
}

fn apply_edit(f: &mut Fragment, e: &Edit) {
    match e {
        Edit::AddEntry(i) => {
            f.add_entry("SP-A", entry(*i));
        }
        Edit::RemoveEntry(i) => {
            f.remove_entry("SP-A", &entry(*i));
        }
        Edit::PutVs(i, b) => {
            let (k, v) = vs(*i, *b);
            f.put_virtual_server(k, v);
        }
        Edit::RemoveVs(i) => {
            f.remove_virtual_server(&vs(*i, 0).0);
        }
        Edit::AddAddress(i) => {
            f.add_address(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        }
        Edit::RemoveSet => {
            f.remove_set("SP-EMPTY");
            f.clear_entries("SP-FOREIGN");
        }
        Edit::PutChain(c, r) => {
            let (k, v) = chain(&format!("SP-CHAIN-{c}"), *r);
            f.put_chain(k, v);
        }
        Edit::PutHealthCheck(i, n) => {
            f.put_health_check(30000 + *i as u16, health_check(*i, *n));
        }
        Edit::RemoveHealthCheck(i) => {
            f.remove_health_check(30000 + *i as u16);
        }
        Edit::FlipDraining => {
            if !f.remove_node_condition(NodeCondition::Draining) {
                f.add_node_condition(NodeCondition::Draining);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Incremental chunking equals chunking from scratch, round trips,
    /// and a single edit re-encodes few chunks.
    #[test]
    fn update_equals_fresh_and_round_trips(
        n in 0u32..300,
        edits in proptest::collection::vec(proptest::collection::vec(edit(), 1..6), 1..6),
    ) {
        let mut f = sample(n);
        let (mut cf, chunks) = ChunkedFragment::new(Arc::new(f.clone()));
        let mut store = HashMap::new();
        remember(&mut store, chunks);
        for batch in &edits {
            for e in batch {
                apply_edit(&mut f, e);
            }
            let next = Arc::new(f.clone());
            let (updated, new_chunks) = cf.update(next.clone());
            let (fresh, _) = ChunkedFragment::new(next.clone());
            prop_assert_eq!(&updated.spans, &fresh.spans);
            prop_assert_eq!(updated.key(), fresh.key());
            if batch.len() == 1 {
                prop_assert!(new_chunks.len() <= 3, "{} chunks for one edit", new_chunks.len());
            }
            remember(&mut store, new_chunks);
            let back = roundtrip(&updated, &store);
            prop_assert_eq!(&back, &*next);
            prop_assert_eq!(back.digest(), next.digest());
            cf = updated;
        }
    }
}
