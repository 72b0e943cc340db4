//! Fragments already decoded from the tables, by key.
//!
//! Two tiers, both holding only fragments whose every byte was checked
//! against their key when they were decoded (so handing one out again is
//! handing out exactly what the tables hold for that key):
//!
//! - shared: any fragment someone still holds (weak references): the same
//!   Service part read for 5,000 nodes is decoded once and shared, in
//!   memory as it is in the tables;
//! - recent: the most recently used fragments, held strongly up to a budget
//!   of atoms, so that reads one after the other (an agent resync, a diff
//!   after a read, a rollback's checks) do not decode the 47,000-atom
//!   `services` part again each time.
//!
//! Decodes in progress are registered too: a reader wanting a fragment
//! another reader is decoding waits for it instead of decoding its own
//! copy (thousands of agent sessions asking for one new revision at once
//! would otherwise each decode and keep the 47,000-atom part).
//!
//! Content is immutable under its key, so nothing here is ever stale; a
//! row corrupted after its fragment was decoded is caught by the next read
//! that decodes it (another handle, or once it left the recent tier).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use setpoint_dataplane::{Digest, Fragment};
use tokio::sync::watch;

/// Each fragment kept counts its atoms plus this much, so a budget also
/// bounds many tiny fragments.
const ENTRY_COST: u64 = 64;

#[derive(Default)]
struct Inner {
    shared: HashMap<Digest, Weak<Fragment>>,
    /// Key → (fragment, last use).
    recent: HashMap<Digest, (Arc<Fragment>, u64)>,
    /// Sum of [`cost`] over `recent`.
    held: u64,
    clock: u64,
}

fn cost(f: &Fragment) -> u64 {
    f.atom_count().saturating_add(ENTRY_COST)
}

/// Shared by every clone of a [`crate::Store`].
pub(crate) struct Decoded {
    budget: u64,
    inner: Mutex<Inner>,
    /// Keys being decoded; the receiver sees its sender dropped when the
    /// decoder finished (or gave up).
    in_flight: Mutex<HashMap<Digest, watch::Receiver<()>>>,
}

/// The keys one reader decodes; dropping it (after inserting what it
/// decoded, or on failure or cancellation) releases those waiting.
pub(crate) struct Claim<'a> {
    decoded: &'a Decoded,
    pub(crate) keys: Vec<Digest>,
    _done: watch::Sender<()>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.decoded.in_flight.lock() {
            for key in &self.keys {
                in_flight.remove(key);
            }
        }
    }
}

/// Waits until another reader's decode of a key ended.
pub(crate) struct Wait(watch::Receiver<()>);

impl Wait {
    pub(crate) async fn done(mut self) {
        // Err once the sender is gone: that is the signal.
        while self.0.changed().await.is_ok() {}
    }
}

impl Decoded {
    /// `budget`: atoms the recent tier may hold (0 turns it off).
    pub(crate) fn new(budget: u64) -> Decoded {
        Decoded {
            budget,
            inner: Mutex::new(Inner::default()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Splits `keys` into those this reader decodes (the claim) and those
    /// another reader is decoding now (wait, then [`Decoded::get`]; if that
    /// finds nothing, decode them too).
    pub(crate) fn claim(&self, keys: &[Digest]) -> (Claim<'_>, Vec<(Digest, Wait)>) {
        let (done, receiver) = watch::channel(());
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        match self.in_flight.lock() {
            Ok(mut in_flight) => {
                for key in keys {
                    match in_flight.get(key) {
                        Some(r) => theirs.push((*key, Wait(r.clone()))),
                        None => {
                            in_flight.insert(*key, receiver.clone());
                            mine.push(*key);
                        }
                    }
                }
            }
            Err(_) => mine = keys.to_vec(),
        }
        let claim = Claim {
            decoded: self,
            keys: mine,
            _done: done,
        };
        (claim, theirs)
    }

    /// The fragment under `key`, if one is in memory.
    pub(crate) fn get(&self, key: &Digest) -> Option<Arc<Fragment>> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        inner.clock += 1;
        let now = inner.clock;
        if let Some((f, used)) = inner.recent.get_mut(key) {
            *used = now;
            return Some(f.clone());
        }
        let f = inner.shared.get(key).and_then(Weak::upgrade)?;
        Self::keep(&mut inner, self.budget, *key, &f);
        Some(f)
    }

    /// Records `f`, decoded from the tables and checked against `key`.
    pub(crate) fn insert(&self, key: Digest, f: &Arc<Fragment>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.clock += 1;
        inner.shared.insert(key, Arc::downgrade(f));
        if inner.shared.len() > 4096 {
            inner.shared.retain(|_, f| f.strong_count() > 0);
        }
        Self::keep(&mut inner, self.budget, key, f);
    }

    fn keep(inner: &mut Inner, budget: u64, key: Digest, f: &Arc<Fragment>) {
        let c = cost(f);
        if c > budget {
            return;
        }
        let now = inner.clock;
        if let Some((_, used)) = inner.recent.get_mut(&key) {
            *used = now;
            return;
        }
        inner.recent.insert(key, (f.clone(), now));
        inner.held = inner.held.saturating_add(c);
        if inner.held > budget {
            // Evict the least recently used down to three quarters of the
            // budget, so the sort is paid once per many insertions.
            let target = budget - budget / 4;
            let mut by_age: Vec<(u64, Digest, u64)> = inner
                .recent
                .iter()
                .map(|(k, (f, used))| (*used, *k, cost(f)))
                .collect();
            by_age.sort_unstable_by_key(|(used, _, _)| *used);
            for (_, k, c) in by_age {
                if inner.held <= target {
                    break;
                }
                if k != key && inner.recent.remove(&k).is_some() {
                    inner.held = inner.held.saturating_sub(c);
                }
            }
        }
    }

    /// Atoms the recent tier holds now (tests).
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.inner.lock().map(|i| i.held).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn fragment(atoms: u32) -> Arc<Fragment> {
        let mut f = Fragment::new();
        for i in 0..atoms {
            f.add_address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        Arc::new(f)
    }

    fn key(i: u8) -> Digest {
        Digest([i; 32])
    }

    #[test]
    fn keeps_recent_fragments_after_their_holders_drop_them() {
        let d = Decoded::new(10_000);
        d.insert(key(1), &fragment(100));
        let f = d.get(&key(1)).expect("kept");
        assert_eq!(f.atom_count(), 100);
        assert!(d.get(&key(2)).is_none());
    }

    #[test]
    fn stays_within_its_budget_dropping_the_least_recently_used() {
        let d = Decoded::new(1_000);
        for i in 0..20 {
            d.insert(key(i), &fragment(100));
            // Key 0 is used all along and survives.
            assert!(d.get(&key(0)).is_some(), "after {i}");
            assert!(d.held() <= 1_000, "{} held", d.held());
        }
        assert!(d.get(&key(1)).is_none(), "oldest unused one evicted");
        assert!(d.get(&key(19)).is_some(), "newest kept");
    }

    #[tokio::test]
    async fn a_second_reader_waits_for_the_first_ones_decode() {
        let d = Decoded::new(10_000);
        let (first, theirs) = d.claim(&[key(1), key(2)]);
        assert_eq!(
            (first.keys.clone(), theirs.len()),
            (vec![key(1), key(2)], 0)
        );
        let (second, waits) = d.claim(&[key(2), key(3)]);
        assert_eq!(second.keys, vec![key(3)], "key 2 is being decoded");
        let [(waited, wait)]: [(Digest, Wait); 1] = waits.try_into().ok().expect("one wait");
        assert_eq!(waited, key(2));
        let f = fragment(5);
        let waiter = tokio::spawn(wait.done());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still decoding");
        d.insert(key(2), &f);
        drop(first);
        waiter.await.expect("released");
        assert!(d.get(&key(2)).is_some(), "what the first decoded");
        // A released key is claimable again (a failed decode is retried).
        let (again, waits) = d.claim(&[key(1)]);
        assert_eq!((again.keys.clone(), waits.len()), (vec![key(1)], 0));
    }

    #[test]
    fn too_big_or_no_budget_is_only_shared_while_held() {
        let d = Decoded::new(0);
        let f = fragment(10);
        d.insert(key(1), &f);
        assert!(d.get(&key(1)).is_some(), "shared while held");
        drop(f);
        assert!(d.get(&key(1)).is_none(), "gone once dropped");
        assert_eq!(d.held(), 0);
    }
}
