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
//! Content is immutable under its key, so nothing here is ever stale; a
//! row corrupted after its fragment was decoded is caught by the next read
//! that decodes it (another handle, or once it left the recent tier).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use setpoint_dataplane::{Digest, Fragment};

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
}

impl Decoded {
    /// `budget`: atoms the recent tier may hold (0 turns it off).
    pub(crate) fn new(budget: u64) -> Decoded {
        Decoded {
            budget,
            inner: Mutex::new(Inner::default()),
        }
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
