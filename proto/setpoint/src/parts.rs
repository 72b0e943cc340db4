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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use setpoint_dataplane::{Diff, Digest, Fragment, NodeDataplane};

use crate::{PayloadError, digest_bytes, digest_from, v1};

pub const STATE_PARTS_ENCODING: &str = "setpoint.state-parts.v1+json";
pub const DIFF_PARTS_ENCODING: &str = "setpoint.diff-parts.v1+json";

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

fn check(state: NodeDataplane, claimed: Option<Digest>) -> Result<NodeDataplane, PayloadError> {
    let content = state.digest();
    match claimed {
        Some(claimed) if claimed != content => {
            Err(PayloadError::DigestMismatch { content, claimed })
        }
        _ => Ok(state),
    }
}

/// What a snapshot carries, in either encoding, checked against its digest.
pub fn snapshot_state_cached(
    s: &v1::Snapshot,
    cache: &FragmentCache,
) -> Result<NodeDataplane, PayloadError> {
    if s.encoding == STATE_PARTS_ENCODING {
        decode_state(&s.state, Some(digest_from(&s.digest)?), cache)
    } else {
        crate::snapshot_state(s)
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
