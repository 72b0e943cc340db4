//! Pins the digest encoding.
//!
//! The encoding is versioned (`DIGEST_DOMAIN`, `setpoint/dataplane/v1`).
//! Stored states, acknowledged revisions and agents all compare digests, so
//! a change to any literal below means every stored digest changes: bump
//! the domain and plan the migration, don't just paste the new value.

use std::sync::Arc;

use setpoint_dataplane::digest::{
    DIGEST_DOMAIN, hash_address, hash_chain, hash_entry, hash_jump, hash_set, hash_virtual_server,
};
use setpoint_dataplane::{
    Chain, Digest, Family, Fragment, NodeDataplane, Protocol, Scheduler, SetType, Table,
    VirtualServer, diff,
};

use crate::fixtures::{
    StateBuilder, entry, ip, mk_chain_key, mk_jump, mk_rule, mk_spec, mk_vs, mk_vs_key, state,
};

const SET: &str = "KUBE-CLUSTER-IP";
const SERVICES_RULE: &[&str] = &[
    "-m",
    "comment",
    "--comment",
    "default/web:http cluster IP",
    "-m",
    "set",
    "--match-set",
    SET,
    "dst,dst",
    "-j",
    "ACCEPT",
];
const PORTALS_JUMP: &[&str] = &[
    "-m",
    "comment",
    "--comment",
    "setpoint service portals",
    "-j",
    "SETPOINT-SERVICES",
];
const REALS: &[(&str, u32)] = &[("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1)];

fn with_set(b: StateBuilder) -> StateBuilder {
    b.set(SET, SetType::HashIpPort, Family::Inet, 65536)
}
fn with_entries(b: StateBuilder, entries: &[&str]) -> StateBuilder {
    b.entries(SET, entries)
}
fn with_vs(b: StateBuilder) -> StateBuilder {
    b.vs(Protocol::Tcp, "10.96.0.10:80", Scheduler::Rr, None, REALS)
}
fn with_address(b: StateBuilder) -> StateBuilder {
    b.address("10.96.0.10")
}
fn with_chain(b: StateBuilder) -> StateBuilder {
    b.chain(
        Family::Inet,
        Table::Nat,
        "SETPOINT-SERVICES",
        &[SERVICES_RULE],
    )
}
fn with_jump(b: StateBuilder) -> StateBuilder {
    b.jump(Family::Inet, Table::Nat, "PREROUTING", 0, PORTALS_JUMP)
}

/// The golden state: a `hash:ip,port` set with two entries, one virtual
/// server with two real servers, one address, one chain, one jump.
fn golden() -> NodeDataplane {
    let b = with_set(state());
    let b = with_entries(b, &["10.96.0.10,tcp:80", "10.96.0.1,tcp:443"]);
    with_jump(with_chain(with_address(with_vs(b)))).build()
}

/// Encoding version `setpoint/dataplane/v1`. A change here means every
/// stored digest changes. Cross-checked against an independent
/// implementation of the encoding described in `digest.rs` (tagged,
/// length-prefixed, big-endian atoms; SHA-256 over the domain, the
/// little-endian lane sums and the atom count).
const GOLDEN_DIGEST: &str = "750b8763bf658f7cfd598aa185602bebfbc159e6657e48b78b7d3f73e4143578";
/// The digest of a state without atoms, same version.
const EMPTY_DIGEST: &str = "7809ba3a3240bb31ebaa4cfec0426e1f1dbabf6d8b35744cb59b07ae2ed8f965";

#[test]
fn digest_is_pinned() {
    assert_eq!(DIGEST_DOMAIN, b"setpoint/dataplane/v1");
    let state = golden();
    assert_eq!(state.atom_count(), 7);
    assert_eq!(state.digest().to_string(), GOLDEN_DIGEST);
    assert_eq!(NodeDataplane::new().digest().to_string(), EMPTY_DIGEST);
    assert_eq!(Fragment::new().digest().to_string(), EMPTY_DIGEST);
}

/// Each atom's hash, so that a failure of `digest_is_pinned` says which
/// part of the encoding moved. Same versioning rule.
#[test]
fn atom_hashes_are_pinned() {
    let vs = mk_vs(Scheduler::Rr, None, REALS);
    let chain = Chain {
        rules: vec![mk_rule(SERVICES_RULE)],
    };
    let hashes = [
        (
            "set",
            hash_set(SET, &mk_spec(SetType::HashIpPort, Family::Inet, 65536)),
        ),
        ("entry", hash_entry(SET, &entry("10.96.0.10,tcp:80"))),
        (
            "virtual server",
            hash_virtual_server(&mk_vs_key(Protocol::Tcp, "10.96.0.10:80"), &vs),
        ),
        ("address", hash_address(&ip("10.96.0.10"))),
        (
            "chain",
            hash_chain(
                &mk_chain_key(Family::Inet, Table::Nat, "SETPOINT-SERVICES"),
                &chain,
            ),
        ),
        (
            "jump",
            hash_jump(&mk_jump(
                Family::Inet,
                Table::Nat,
                "PREROUTING",
                0,
                PORTALS_JUMP,
            )),
        ),
    ];
    let got: Vec<(&str, String)> = hashes.iter().map(|(k, h)| (*k, hex::encode(h))).collect();
    let want: Vec<(&str, String)> = [
        (
            "set",
            "0cc2f2a1fc6e088a63e74f9af93da6626e74c749fff6c8048893faffc94b7a7f",
        ),
        (
            "entry",
            "b288ca0435c6ad0241c0ddc4c75e4a8b7d980fd78efd28fe1406ce9fa42f066d",
        ),
        (
            "virtual server",
            "cbf2e461fb7889d9d113deca56a1d8cfb4efd4b3815ea28606089e7e7a70831f",
        ),
        (
            "address",
            "943e00b584026b55015d04bff0019aa598fa78ccf4cc2fdeb7fe79045de0b7a5",
        ),
        (
            "chain",
            "682a5ca213fc5bc66cf62f6a81476881682a558ed83458b9c07254b54fd0f793",
        ),
        (
            "jump",
            "7c2a0fffca51818d2e66f80c93df05333d6bbc7bd001d92b9e5fe69bd11e808a",
        ),
    ]
    .iter()
    .map(|(k, h)| (*k, h.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn digest_ignores_insertion_order_and_split() {
    let reference = golden().digest();

    // Every atom in the opposite order, entries too.
    let b = with_jump(state());
    let b = with_chain(with_address(with_vs(b)));
    let b = with_entries(b, &["10.96.0.1,tcp:443", "10.96.0.10,tcp:80"]);
    let reversed = with_set(b).build();
    assert_eq!(reversed.digest(), reference);
    assert_eq!(reversed, golden());

    // Three fragments, the set's entries away from its definition and
    // from each other.
    let b = with_set(state().part("node"));
    let b = with_entries(b.part("zone"), &["10.96.0.1,tcp:443"]);
    let b = with_vs(b);
    let b = with_entries(b.part("cluster"), &["10.96.0.10,tcp:80"]);
    let split = with_jump(with_chain(with_address(b))).build();
    assert_eq!(split.parts().count(), 3);
    assert_eq!(split.overlap(), 0, "the split keeps atoms disjoint");
    assert_eq!(split.digest(), reference);
    assert_eq!(split.flatten().digest(), reference);
    assert!(diff(&split, &golden()).is_empty());

    // Two fragments, split the other way, with an empty third one.
    let b = with_address(with_chain(state().part("a")));
    let b = with_entries(b, &["10.96.0.10,tcp:80"]);
    let b = with_jump(with_set(with_vs(b.part("b"))));
    let b = with_entries(b, &["10.96.0.1,tcp:443"]).part("empty");
    let other = b.build();
    assert_eq!(other.digest(), reference);
}

#[test]
fn digest_prints_and_parses_as_hex() {
    let digest = golden().digest();
    let text = digest.to_string();
    assert_eq!(text.len(), 64);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(text.parse::<Digest>(), Ok(digest));
    assert_eq!(text.to_uppercase().parse::<Digest>(), Ok(digest));
    let err = text[..63].parse::<Digest>().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("digest {:?}: Odd number of digits", &text[..63])
    );
    assert_eq!(
        format!("{digest:?}"),
        format!("Digest({})", &GOLDEN_DIGEST[..16])
    );
}

/// A persistence timeout of zero is a different state from no persistence
/// (`VirtualServer` equality and the ipvsadm render tell them apart), so
/// the digest must too; and `diff` must see the change, since it skips
/// fragments with equal digests.
#[test]
fn digest_tells_no_persistence_from_zero_persistence() {
    let none = state()
        .vs(Protocol::Tcp, "10.96.0.10:80", Scheduler::Rr, None, REALS)
        .build();
    let zero = state()
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            Some(0),
            REALS,
        )
        .build();
    assert_ne!(none, zero);
    assert_ne!(none.digest(), zero.digest());
    assert!(!diff(&none, &zero).is_empty());
}

/// `VirtualServer`'s fields are public and it is `Clone`, so editing a
/// clone is ordinary use; the clone must not keep the original's cached
/// body hash.
#[test]
fn digest_follows_edits_of_a_cloned_virtual_server() {
    let key = mk_vs_key(Protocol::Tcp, "10.96.0.10:80");
    let original = mk_vs(Scheduler::Rr, None, REALS);
    let mut before = Fragment::new();
    before.put_virtual_server(key, original.clone()); // caches the body hash

    let mut edited = VirtualServer::clone(&original);
    edited.scheduler = Scheduler::Lc;
    let mut after = Fragment::new();
    after.put_virtual_server(key, Arc::new(edited));

    let mut fresh = Fragment::new();
    fresh.put_virtual_server(key, mk_vs(Scheduler::Lc, None, REALS));

    assert_ne!(before, after);
    assert_eq!(after.digest(), fresh.digest());
    assert_ne!(after.digest(), before.digest());
    let (a, b) = (
        NodeDataplane::from_fragment(before),
        NodeDataplane::from_fragment(after),
    );
    assert!(!diff(&a, &b).is_empty());
}
