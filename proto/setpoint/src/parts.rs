//! Payloads by fragment: a snapshot lists a node's parts (name, digest,
//! content) and a delta lists, per changed part, its digest before and
//! after and the typed diff between them.
//!
//! Keeping the split on the wire lets both ends share work and memory
//! across nodes: the control plane encodes the `services` part (and the
//! diff between two of its versions) once for every node that has it, and
//! a receiver decodes each part through a [`FragmentCache`] keyed by
//! verified digest, so an agent process holding several nodes (the fleet
//! benchmark) or several revisions holds one copy of a shared part. A
//! cached part is only ever one whose content was hashed to its digest.
//!
//! A snapshot's parts travel in one of two encodings: JSON
//! ([`STATE_PARTS_ENCODING`], which every agent reads) or, to an agent whose
//! hello names it, [`STATE_PARTS_DEFLATE_ENCODING`]: the same JSON of each
//! part deflated on its own inside a protobuf `StateParts` (a 10,000-Service
//! node's 5 MB is about 0.3 MB). Each part is compressed once per digest
//! by the sender and inflated once per digest by a receiver (inside the
//! [`FragmentCache`]), within [`crate::MAX_INFLATED_BYTES`]. Deltas stay
//! JSON: a one-endpoint delta is a few hundred bytes.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use setpoint_dataplane::{Diff, Digest, Fragment, NodeDataplane};

use crate::{MAX_INFLATED_BYTES, PayloadError, digest_bytes, digest_from, v1};

pub const STATE_PARTS_ENCODING: &str = "setpoint.state-parts.v1+json";
pub const DIFF_PARTS_ENCODING: &str = "setpoint.diff-parts.v1+json";
/// A protobuf `StateParts` (`v1/agent.proto`): each part's JSON, deflated.
pub const STATE_PARTS_DEFLATE_ENCODING: &str = "setpoint.state-parts.v1+deflate";

/// How a snapshot's parts are encoded for one receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PartsEncoding {
    /// [`STATE_PARTS_ENCODING`]: what every agent decodes.
    #[default]
    Json,
    /// [`STATE_PARTS_DEFLATE_ENCODING`]: for agents whose hello names it.
    Deflate,
}

impl PartsEncoding {
    /// The encoding's name, as a snapshot's `encoding` says it.
    pub fn name(self) -> &'static str {
        match self {
            PartsEncoding::Json => STATE_PARTS_ENCODING,
            PartsEncoding::Deflate => STATE_PARTS_DEFLATE_ENCODING,
        }
    }

    /// The most compact encoding `hello`'s agent accepts (JSON for an agent
    /// that names none: one older than the compact encoding).
    pub fn accepted_by(hello: &v1::Hello) -> PartsEncoding {
        if hello
            .accept_encodings
            .iter()
            .any(|e| e == STATE_PARTS_DEFLATE_ENCODING)
        {
            PartsEncoding::Deflate
        } else {
            PartsEncoding::Json
        }
    }
}

/// What a receiver built from this crate decodes besides JSON, for its
/// hello's `accept_encodings`.
pub fn accepted_encodings() -> Vec<String> {
    vec![STATE_PARTS_DEFLATE_ENCODING.to_string()]
}

/// One part of a snapshot in `encoding`, ready for [`snapshot_of_parts_as`].
/// Deflated at the default level: the sender compresses a part once per
/// digest, however many nodes it goes to.
pub fn encode_part_as(
    name: &str,
    fragment: &Fragment,
    encoding: PartsEncoding,
) -> Result<Vec<u8>, PayloadError> {
    match encoding {
        PartsEncoding::Json => encode_part(name, fragment),
        PartsEncoding::Deflate => {
            let json = serde_json::to_vec(&NodeDataplane::from_fragment(fragment.clone()))?;
            let deflated = deflate(&json, flate2::Compression::default());
            let part = v1::StatePart {
                name: name.to_string(),
                digest: digest_bytes(&fragment.digest()),
                deflated,
                inflated_len: json.len() as u64,
            };
            // Field 1 of `StateParts`, so a snapshot is its parts
            // concatenated, whichever nodes share them.
            let len = part.encoded_len();
            let mut out = Vec::with_capacity(len + 11);
            out.push(0x0a);
            prost::encoding::encode_varint(len as u64, &mut out);
            part.encode_raw(&mut out);
            Ok(out)
        }
    }
}

fn deflate(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::with_capacity(bytes.len() / 8), level);
    // Writing into a Vec cannot fail.
    let _ = z.write_all(bytes);
    z.finish().unwrap_or_default()
}

/// `deflated` inflated, when it inflates to exactly `declared` bytes and
/// `declared` fits in what is `left` of the payload's limit (taken from it).
/// Inflation stops one byte past `declared`: a bomb costs what it declares.
fn inflate(
    part: &str,
    deflated: &[u8],
    declared: u64,
    left: &mut usize,
) -> Result<Vec<u8>, PayloadError> {
    let Some(want) = usize::try_from(declared).ok().filter(|d| *d <= *left) else {
        return Err(PayloadError::InflatedTooLarge {
            part: part.to_string(),
            declared,
            left: *left,
        });
    };
    // Grown as bytes arrive; reserved up front only as far as the input
    // could plausibly inflate, so a claimed length allocates nothing alone.
    let mut out = Vec::with_capacity(want.min(deflated.len().saturating_mul(32)));
    flate2::read::DeflateDecoder::new(deflated)
        .take(declared.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| PayloadError::Inflate {
            part: part.to_string(),
            reason: e.to_string(),
        })?;
    if out.len() > want {
        return Err(PayloadError::InflatesPastDeclared {
            part: part.to_string(),
            declared: want,
        });
    }
    if out.len() < want {
        return Err(PayloadError::InflatedShort {
            part: part.to_string(),
            got: out.len(),
            declared: want,
        });
    }
    *left -= want;
    Ok(out)
}

/// One part of a snapshot, encoded: `{"name":…,"digest":…,"state":…}`.
pub fn encode_part(name: &str, fragment: &Fragment) -> Result<Vec<u8>, PayloadError> {
    #[derive(Serialize)]
    struct PartOut<'a> {
        name: &'a str,
        digest: Digest,
        state: NodeDataplane,
    }
    Ok(serde_json::to_vec(&PartOut {
        name,
        digest: fragment.digest(),
        state: NodeDataplane::from_fragment(fragment.clone()),
    })?)
}

/// One changed part of a delta, encoded. `from` is `None` for a part the
/// node did not have, `to` is `None` for a part it no longer has.
pub fn encode_part_diff(
    name: &str,
    from: Option<Digest>,
    to: Option<Digest>,
    diff: &Diff,
) -> Result<Vec<u8>, PayloadError> {
    #[derive(Serialize)]
    struct PartDiffOut<'a> {
        name: &'a str,
        from: Option<Digest>,
        to: Option<Digest>,
        diff: &'a Diff,
    }
    Ok(serde_json::to_vec(&PartDiffOut {
        name,
        from,
        to,
        diff,
    })?)
}

fn join<B: AsRef<[u8]>>(encoded: &[B]) -> Vec<u8> {
    let len = encoded.iter().map(|e| e.as_ref().len() + 1).sum::<usize>() + 12;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"{\"parts\":[");
    for (i, e) in encoded.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

/// A snapshot made of encoded parts ([`encode_part`]); `digest` is the
/// whole state's.
pub fn snapshot_of_parts<B: AsRef<[u8]>>(
    revision: u64,
    digest: &Digest,
    parts: &[B],
) -> v1::Snapshot {
    v1::Snapshot {
        revision,
        digest: digest_bytes(digest),
        state: join(parts),
        encoding: STATE_PARTS_ENCODING.to_string(),
    }
}

/// A snapshot made of parts encoded in `encoding` ([`encode_part_as`]).
pub fn snapshot_of_parts_as<B: AsRef<[u8]>>(
    revision: u64,
    digest: &Digest,
    parts: &[B],
    encoding: PartsEncoding,
) -> v1::Snapshot {
    match encoding {
        PartsEncoding::Json => snapshot_of_parts(revision, digest, parts),
        PartsEncoding::Deflate => v1::Snapshot {
            revision,
            digest: digest_bytes(digest),
            state: parts.iter().flat_map(|p| p.as_ref()).copied().collect(),
            encoding: STATE_PARTS_DEFLATE_ENCODING.to_string(),
        },
    }
}

/// A delta made of encoded part diffs ([`encode_part_diff`]).
pub fn delta_of_parts<B: AsRef<[u8]>>(
    from: u64,
    to: u64,
    digest: &Digest,
    parts: &[B],
) -> v1::Delta {
    v1::Delta {
        from_revision: from,
        to_revision: to,
        digest: digest_bytes(digest),
        changes: join(parts),
        encoding: DIFF_PARTS_ENCODING.to_string(),
    }
}

/// A whole state as a parts payload (the agent's local record).
pub fn encode_state(state: &NodeDataplane) -> Result<Vec<u8>, PayloadError> {
    let parts = state
        .parts()
        .map(|(name, f)| encode_part(name, f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(join(&parts))
}

#[derive(Deserialize)]
struct SnapshotIn<'a> {
    #[serde(borrow)]
    parts: Vec<PartIn<'a>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow)]
    parts: Vec<PartDiffIn<'a>>,
}

#[derive(Deserialize)]
struct PartIn<'a> {
    name: String,
    digest: Digest,
    #[serde(borrow)]
    state: &'a RawValue,
}

#[derive(Deserialize)]
struct PartDiffIn<'a> {
    name: String,
    from: Option<Digest>,
    to: Option<Digest>,
    #[serde(borrow)]
    diff: &'a RawValue,
}

/// Decoded fragments by digest, held weakly: a part stays cached while
/// some state uses it. Concurrent decodes of one digest run once.
#[derive(Default)]
pub struct FragmentCache {
    slots: Mutex<Slots>,
}

type Slot = Arc<OnceLock<Option<Weak<Fragment>>>>;

#[derive(Default)]
struct Slots {
    map: HashMap<Digest, Slot>,
    sweep_at: usize,
}

static PROCESS: LazyLock<FragmentCache> = LazyLock::new(FragmentCache::default);

impl FragmentCache {
    /// The cache every decoder in this process shares.
    pub fn process() -> &'static FragmentCache {
        &PROCESS
    }

    fn slot(&self, digest: Digest) -> Slot {
        let Ok(mut slots) = self.slots.lock() else {
            return Slot::default();
        };
        if slots.map.len() >= slots.sweep_at {
            // Forget parts no state holds any more (slots being filled stay).
            slots.map.retain(|_, s| match s.get() {
                None => true,
                Some(w) => w.as_ref().is_some_and(|w| w.strong_count() > 0),
            });
            slots.sweep_at = (2 * slots.map.len()).max(64);
        }
        slots.map.entry(digest).or_default().clone()
    }

    fn forget(&self, digest: &Digest, slot: &Slot) {
        if let Ok(mut slots) = self.slots.lock()
            && slots.map.get(digest).is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            slots.map.remove(digest);
        }
    }

    /// The fragment with `digest`: the cached one, or what `decode` makes
    /// (checked to hash to `digest` before anyone else sees it).
    pub fn get_or_decode(
        &self,
        digest: Digest,
        mut decode: impl FnMut() -> Result<Fragment, PayloadError>,
    ) -> Result<Arc<Fragment>, PayloadError> {
        for _ in 0..2 {
            let slot = self.slot(digest);
            let mut mine: Option<Result<Arc<Fragment>, PayloadError>> = None;
            let cached = slot.get_or_init(|| {
                let made = decode().and_then(|f| {
                    let content = f.digest();
                    if content == digest {
                        Ok(Arc::new(f))
                    } else {
                        Err(PayloadError::DigestMismatch {
                            content,
                            claimed: digest,
                        })
                    }
                });
                let weak = made.as_ref().ok().map(Arc::downgrade);
                mine = Some(made);
                weak
            });
            match mine {
                Some(Ok(f)) => return Ok(f),
                Some(Err(e)) => {
                    self.forget(&digest, &slot);
                    return Err(e);
                }
                None => {}
            }
            if let Some(f) = cached.as_ref().and_then(Weak::upgrade) {
                return Ok(f);
            }
            // Dropped since, or another decoder failed: decode afresh.
            self.forget(&digest, &slot);
        }
        // Only reachable when the fragment died twice in between; decode
        // without the cache.
        let f = decode()?;
        let content = f.digest();
        if content != digest {
            return Err(PayloadError::DigestMismatch {
                content,
                claimed: digest,
            });
        }
        Ok(Arc::new(f))
    }
}

fn decode_fragment(raw: &RawValue) -> Result<Fragment, PayloadError> {
    let state: NodeDataplane = serde_json::from_str(raw.get())?;
    Ok(state.flatten())
}

/// The state a parts payload holds (parts decoded through `cache`), checked
/// against `claimed` when given.
pub fn decode_state(
    bytes: &[u8],
    claimed: Option<Digest>,
    cache: &FragmentCache,
) -> Result<NodeDataplane, PayloadError> {
    let wire: SnapshotIn = serde_json::from_slice(bytes)?;
    let mut parts = BTreeMap::new();
    for p in wire.parts {
        let fragment = cache.get_or_decode(p.digest, || decode_fragment(p.state))?;
        parts.insert(p.name, fragment);
    }
    let state = NodeDataplane::from_parts(parts);
    check(state, claimed)
}

/// The state a compact parts payload ([`STATE_PARTS_DEFLATE_ENCODING`])
/// holds, parts inflated and decoded through `cache`, checked against
/// `claimed` when given.
pub fn decode_state_deflated(
    bytes: &[u8],
    claimed: Option<Digest>,
    cache: &FragmentCache,
) -> Result<NodeDataplane, PayloadError> {
    decode_deflated_within(bytes, claimed, cache, MAX_INFLATED_BYTES)
}

fn decode_deflated_within(
    bytes: &[u8],
    claimed: Option<Digest>,
    cache: &FragmentCache,
    limit: usize,
) -> Result<NodeDataplane, PayloadError> {
    let wire = v1::StateParts::decode(bytes)?;
    let mut left = limit;
    let mut parts = BTreeMap::new();
    for p in wire.parts {
        let digest = digest_from(&p.digest)?;
        // Inflated only when this process does not hold the part already.
        let fragment = cache.get_or_decode(digest, || {
            let json = inflate(&p.name, &p.deflated, p.inflated_len, &mut left)?;
            let state: NodeDataplane = serde_json::from_slice(&json)?;
            Ok(state.flatten())
        })?;
        parts.insert(p.name, fragment);
    }
    check(NodeDataplane::from_parts(parts), claimed)
}

fn check(state: NodeDataplane, claimed: Option<Digest>) -> Result<NodeDataplane, PayloadError> {
    let content = state.digest();
    match claimed {
        Some(claimed) if claimed != content => {
            Err(PayloadError::DigestMismatch { content, claimed })
        }
        _ => Ok(state),
    }
}

/// What a snapshot carries, in any encoding, checked against its digest.
pub fn snapshot_state_cached(
    s: &v1::Snapshot,
    cache: &FragmentCache,
) -> Result<NodeDataplane, PayloadError> {
    match s.encoding.as_str() {
        STATE_PARTS_ENCODING => decode_state(&s.state, Some(digest_from(&s.digest)?), cache),
        STATE_PARTS_DEFLATE_ENCODING => {
            decode_state_deflated(&s.state, Some(digest_from(&s.digest)?), cache)
        }
        _ => crate::snapshot_state(s),
    }
}

/// Why a delta does not apply to what the receiver holds.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("part {part}: the delta starts from {expected:?}, this side holds {held:?}")]
    Base {
        part: String,
        expected: Option<Digest>,
        held: Option<Digest>,
    },
    #[error("part {part}: {source}")]
    Apply {
        part: String,
        #[source]
        source: setpoint_dataplane::ApplyError,
    },
}

/// `base` with a delta applied (either encoding); the result is checked
/// against the delta's digest. In the parts encoding, a part whose
/// target digest is cached is taken from the cache without applying.
pub fn apply_delta(
    base: &NodeDataplane,
    d: &v1::Delta,
    cache: &FragmentCache,
) -> Result<NodeDataplane, DeltaError> {
    if d.encoding != DIFF_PARTS_ENCODING {
        let (changes, digest) = crate::delta_changes(d)?;
        let next =
            setpoint_dataplane::apply(base, &changes).map_err(|source| DeltaError::Apply {
                part: "whole".into(),
                source,
            })?;
        return Ok(check(next, Some(digest))?);
    }
    let digest = digest_from(&d.digest)?;
    let wire: DeltaIn = serde_json::from_slice(&d.changes).map_err(PayloadError::from)?;
    let mut parts: BTreeMap<String, Arc<Fragment>> =
        base.parts().map(|(n, f)| (n.clone(), f.clone())).collect();
    for p in wire.parts {
        let held = parts.get(&p.name);
        let held_digest = held.map(|f| f.digest());
        if held_digest != p.from {
            return Err(DeltaError::Base {
                part: p.name,
                expected: p.from,
                held: held_digest,
            });
        }
        let Some(to) = p.to else {
            parts.remove(&p.name);
            continue;
        };
        let mut failed: Option<DeltaError> = None;
        let made = cache.get_or_decode(to, || {
            let diff: Diff = serde_json::from_str(p.diff.get())?;
            let mut f = held.map(|h| Fragment::clone(h)).unwrap_or_default();
            if let Err(source) = setpoint_dataplane::diff::apply_to_fragment(&mut f, &diff) {
                failed = Some(DeltaError::Apply {
                    part: p.name.clone(),
                    source,
                });
                // Fails the digest check below; the real error is kept.
                return Ok(Fragment::new());
            }
            Ok(f)
        });
        let fragment = match (made, failed) {
            (_, Some(e)) => return Err(e),
            (made, None) => made?,
        };
        parts.insert(p.name, fragment);
    }
    Ok(check(NodeDataplane::from_parts(parts), Some(digest))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(set: &str, ips: &[&str]) -> Arc<Fragment> {
        Arc::new(crate::example_fragment(set, ips))
    }

    fn snapshot(revision: u64, state: &NodeDataplane) -> v1::Snapshot {
        let parts: Vec<Vec<u8>> = state
            .parts()
            .map(|(n, f)| encode_part(n, f).expect("encodes"))
            .collect();
        snapshot_of_parts(revision, &state.digest(), &parts)
    }

    fn delta(from: (u64, &NodeDataplane), to: (u64, &NodeDataplane)) -> v1::Delta {
        let mut names: Vec<&String> = from.1.parts().chain(to.1.parts()).map(|p| p.0).collect();
        names.sort();
        names.dedup();
        let mut parts = Vec::new();
        for name in names {
            let (a, b) = (from.1.part(name), to.1.part(name));
            if a.map(|f| f.digest()) == b.map(|f| f.digest()) {
                continue;
            }
            let empty = Fragment::new();
            let diff = setpoint_dataplane::diff::diff_fragments(
                a.map(|f| &**f).unwrap_or(&empty),
                b.map(|f| &**f).unwrap_or(&empty),
            );
            parts.push(
                encode_part_diff(name, a.map(|f| f.digest()), b.map(|f| f.digest()), &diff)
                    .expect("encodes"),
            );
        }
        delta_of_parts(from.0, to.0, &to.1.digest(), &parts)
    }

    #[test]
    fn parts_round_trip_and_are_shared_through_the_cache() {
        let services = fragment("SP-SVC", &["10.0.0.1", "10.0.0.2"]);
        let a = NodeDataplane::from_parts([
            ("services", services.clone()),
            ("node/a", fragment("SP-A", &["10.1.0.1"])),
        ]);
        let b = NodeDataplane::from_parts([
            ("services", services.clone()),
            ("node/b", fragment("SP-B", &["10.2.0.1"])),
        ]);
        let cache = FragmentCache::default();
        let got_a = snapshot_state_cached(&snapshot(1, &a), &cache).expect("decodes");
        let got_b = snapshot_state_cached(&snapshot(1, &b), &cache).expect("decodes");
        assert_eq!((&got_a, &got_b), (&a, &b));
        let (sa, sb) = (
            got_a.part("services").expect("part"),
            got_b.part("services").expect("part"),
        );
        assert!(Arc::ptr_eq(sa, sb), "one decoded copy of the shared part");

        // A change to the shared part, a part added and one removed.
        let services2 = fragment("SP-SVC", &["10.0.0.1", "10.0.0.3"]);
        let a2 = NodeDataplane::from_parts([
            ("services", services2.clone()),
            ("zone/z", fragment("SP-Z", &["10.9.0.1"])),
        ]);
        let b2 = NodeDataplane::from_parts([
            ("services", services2),
            ("node/b", fragment("SP-B", &["10.2.0.1"])),
        ]);
        let da = delta((1, &a), (2, &a2));
        assert!(da.changes.len() < 1200, "{}", da.changes.len());
        let next_a = apply_delta(&got_a, &da, &cache).expect("applies");
        let next_b = apply_delta(&got_b, &delta((1, &b), (2, &b2)), &cache).expect("applies");
        assert_eq!((&next_a, &next_b), (&a2, &b2));
        assert!(Arc::ptr_eq(
            next_a.part("services").expect("part"),
            next_b.part("services").expect("part")
        ));
        // The local record's form decodes to the same state.
        let bytes = encode_state(&next_a).expect("encodes");
        let back = decode_state(&bytes, Some(a2.digest()), &FragmentCache::default());
        assert_eq!(back.expect("decodes"), a2);
    }

    fn deflated_snapshot(revision: u64, state: &NodeDataplane) -> v1::Snapshot {
        let parts: Vec<Vec<u8>> = state
            .parts()
            .map(|(n, f)| encode_part_as(n, f, PartsEncoding::Deflate).expect("encodes"))
            .collect();
        snapshot_of_parts_as(revision, &state.digest(), &parts, PartsEncoding::Deflate)
    }

    fn big_fragment(n: u32) -> Fragment {
        let ips: Vec<String> = (0..n)
            .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        crate::example_fragment("SP-BIG", &ips)
    }

    #[test]
    fn deflated_parts_round_trip_smaller_and_share_the_cache() {
        let services = Arc::new(big_fragment(2_000));
        let a = NodeDataplane::from_parts([
            ("services", services.clone()),
            ("node/a", fragment("SP-A", &["10.1.0.1"])),
        ]);
        let b = NodeDataplane::from_parts([
            ("services", services),
            ("node/b", fragment("SP-B", &["10.2.0.1"])),
        ]);
        let (json, compact) = (snapshot(1, &a), deflated_snapshot(1, &a));
        assert_eq!(compact.encoding, STATE_PARTS_DEFLATE_ENCODING);
        assert!(
            compact.state.len() * 5 < json.state.len(),
            "deflated {} bytes, JSON {}",
            compact.state.len(),
            json.state.len()
        );
        let cache = FragmentCache::default();
        let got_a = snapshot_state_cached(&compact, &cache).expect("decodes");
        let got_b = snapshot_state_cached(&deflated_snapshot(1, &b), &cache).expect("decodes");
        assert_eq!((&got_a, &got_b), (&a, &b));
        assert!(Arc::ptr_eq(
            got_a.part("services").expect("part"),
            got_b.part("services").expect("part")
        ));
        // A delta (JSON) applies to a state that came deflated.
        let a2 = NodeDataplane::from_parts([("services", fragment("SP-S", &["10.0.0.1"]))]);
        assert_eq!(
            apply_delta(&got_a, &delta((1, &a), (2, &a2)), &cache).expect("applies"),
            a2
        );
        // A hello naming the encoding gets it; one naming none gets JSON.
        let mut hello = v1::Hello::default();
        assert_eq!(PartsEncoding::accepted_by(&hello), PartsEncoding::Json);
        hello.accept_encodings = accepted_encodings();
        assert_eq!(PartsEncoding::accepted_by(&hello), PartsEncoding::Deflate);
    }

    /// One deflated part whose declared length is `declared`, holding
    /// `content`.
    fn bomb(content: &[u8], declared: u64) -> Vec<u8> {
        let part = v1::StatePart {
            name: "services".into(),
            digest: vec![7; 32],
            deflated: deflate(content, flate2::Compression::best()),
            inflated_len: declared,
        };
        v1::StateParts { parts: vec![part] }.encode_to_vec()
    }

    #[test]
    fn decompression_bombs_are_refused_with_what_they_claimed() {
        let cache = FragmentCache::default();
        let zeros = vec![b' '; 4 << 20];
        // Declares little, inflates to much: stopped one byte past it.
        let small_claim = bomb(&zeros, 1024);
        assert!(small_claim.len() < 16 << 10, "{}", small_claim.len());
        let err = decode_state_deflated(&small_claim, None, &cache).expect_err("bomb");
        assert!(
            matches!(
                err,
                PayloadError::InflatesPastDeclared { declared: 1024, .. }
            ),
            "{err}"
        );
        // Declares more than the limit: refused before inflating anything.
        let huge_claim = bomb(&zeros, MAX_INFLATED_BYTES as u64 + 1);
        let err = decode_state_deflated(&huge_claim, None, &cache).expect_err("bomb");
        assert!(
            matches!(err, PayloadError::InflatedTooLarge { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not inflated"), "{err}");
        // Honest about its length but over the payload's limit (a tighter
        // one here, so the test stays small), parts counted together.
        let honest = bomb(&zeros, zeros.len() as u64);
        let err = decode_deflated_within(&honest, None, &cache, 1 << 20).expect_err("over");
        assert!(
            matches!(err, PayloadError::InflatedTooLarge { .. }),
            "{err}"
        );
        // Declares more than it holds.
        let short = bomb(b"{}", 10);
        let err = decode_state_deflated(&short, None, &cache).expect_err("short");
        assert!(
            matches!(err, PayloadError::InflatedShort { got: 2, .. }),
            "{err}"
        );
        // Not DEFLATE at all, and not protobuf at all.
        let mut garbage = bomb(b"{}", 2);
        let at = garbage.len() - 4;
        garbage[at] ^= 0xff;
        assert!(decode_state_deflated(&garbage, None, &cache).is_err());
        assert!(matches!(
            decode_state_deflated(b"\xff\xff\xff", None, &cache),
            Err(PayloadError::Frame(_))
        ));
    }

    #[test]
    fn bad_parts_payloads_are_errors() {
        let cache = FragmentCache::default();
        let a = NodeDataplane::from_parts([("services", fragment("SP-SVC", &["10.0.0.1"]))]);
        let b = NodeDataplane::from_parts([("services", fragment("SP-SVC", &["10.0.0.2"]))]);
        // A delta against the wrong base is refused, naming the part.
        let d = delta((1, &b), (2, &a));
        let other = NodeDataplane::from_parts([("services", fragment("SP-SVC", &["10.0.0.9"]))]);
        let err = apply_delta(&other, &d, &cache).expect_err("wrong base");
        assert!(matches!(err, DeltaError::Base { .. }), "{err}");
        // A part whose content is not its digest is refused and not cached.
        let mut s = snapshot(1, &a);
        let forged = String::from_utf8(s.state.clone())
            .expect("utf8")
            .replace("10.0.0.1", "10.0.0.7");
        s.state = forged.into_bytes();
        assert!(snapshot_state_cached(&s, &cache).is_err(), "forged");
        assert!(snapshot_state_cached(&snapshot(1, &a), &cache).is_ok());
        s.state = b"{\"parts\":[{\"name\":1}]}".to_vec();
        assert!(matches!(
            snapshot_state_cached(&s, &cache),
            Err(PayloadError::Decode(_))
        ));
    }
}
