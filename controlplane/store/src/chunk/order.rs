//! Atoms in canonical order: the positions chunk boundaries are recorded
//! at, walking a fragment from a position, and the positions where two
//! versions of a fragment differ.

use std::net::IpAddr;
use std::ops::Bound;

use setpoint_dataplane::digest;
use setpoint_dataplane::{
    Chain, ChainKey, Fragment, HealthCheck, Jump, NodeCondition, SetEntry, SetSpec, VirtualServer,
    VirtualServerKey,
};

/// The position of an atom in the canonical order of a fragment. Derived
/// `Ord` is that order: a set's definition (`entry: None`) comes before its
/// entries, sets before virtual servers, then addresses, chains, jumps,
/// health checks and node conditions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AtomKey {
    Set {
        name: String,
        entry: Option<SetEntry>,
    },
    VirtualServer(VirtualServerKey),
    Address(IpAddr),
    Chain(ChainKey),
    Jump(Jump),
    HealthCheck(u16),
    NodeCondition(NodeCondition),
}

/// One atom of a fragment, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum AtomRef<'a> {
    Set(&'a str, &'a SetSpec),
    Entry(&'a str, &'a SetEntry),
    VirtualServer(&'a VirtualServerKey, &'a VirtualServer),
    Address(&'a IpAddr),
    Chain(&'a ChainKey, &'a Chain),
    Jump(&'a Jump),
    HealthCheck(u16, &'a HealthCheck),
    NodeCondition(NodeCondition),
}

impl AtomRef<'_> {
    pub fn key(&self) -> AtomKey {
        match *self {
            AtomRef::Set(name, _) => AtomKey::Set {
                name: name.to_string(),
                entry: None,
            },
            AtomRef::Entry(name, entry) => AtomKey::Set {
                name: name.to_string(),
                entry: Some(entry.clone()),
            },
            AtomRef::VirtualServer(key, _) => AtomKey::VirtualServer(*key),
            AtomRef::Address(addr) => AtomKey::Address(*addr),
            AtomRef::Chain(key, _) => AtomKey::Chain(key.clone()),
            AtomRef::Jump(jump) => AtomKey::Jump(jump.clone()),
            AtomRef::HealthCheck(port, _) => AtomKey::HealthCheck(port),
            AtomRef::NodeCondition(c) => AtomKey::NodeCondition(c),
        }
    }

    /// The atom's hash as the state digest sums it.
    pub fn hash(&self) -> [u8; 32] {
        match *self {
            AtomRef::Set(name, spec) => digest::hash_set(name, spec),
            AtomRef::Entry(name, entry) => digest::hash_entry(name, entry),
            AtomRef::VirtualServer(key, vs) => digest::hash_virtual_server(key, vs),
            AtomRef::Address(addr) => digest::hash_address(addr),
            AtomRef::Chain(key, chain) => digest::hash_chain(key, chain),
            AtomRef::Jump(jump) => digest::hash_jump(jump),
            AtomRef::HealthCheck(port, check) => digest::hash_health_check(port, check),
            AtomRef::NodeCondition(c) => digest::hash_node_condition(c),
        }
    }
}

/// Sorted, deduplicated union of two sorted iterators.
struct MergeKeys<'a, A, B>
where
    A: Iterator<Item = &'a String>,
    B: Iterator<Item = &'a String>,
{
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for MergeKeys<'a, A, B>
where
    A: Iterator<Item = &'a String>,
    B: Iterator<Item = &'a String>,
{
    type Item = &'a String;
    fn next(&mut self) -> Option<&'a String> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Less => self.a.next(),
                std::cmp::Ordering::Greater => self.b.next(),
                std::cmp::Ordering::Equal => {
                    self.b.next();
                    self.a.next()
                }
            },
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// Where a section's iteration starts.
fn section_bound<K: Clone>(after: Option<&AtomKey>, rank: u8, key: Option<&K>) -> Option<Bound<K>> {
    match after {
        None => Some(Bound::Unbounded),
        Some(a) => match atom_rank(a).cmp(&rank) {
            std::cmp::Ordering::Less => Some(Bound::Unbounded),
            std::cmp::Ordering::Equal => key.map(|k| Bound::Excluded(k.clone())),
            std::cmp::Ordering::Greater => None,
        },
    }
}

fn atom_rank(key: &AtomKey) -> u8 {
    match key {
        AtomKey::Set { .. } => 0,
        AtomKey::VirtualServer(_) => 1,
        AtomKey::Address(_) => 2,
        AtomKey::Chain(_) => 3,
        AtomKey::Jump(_) => 4,
        AtomKey::HealthCheck(_) => 5,
        AtomKey::NodeCondition(_) => 6,
    }
}

/// The atoms of `f` in canonical order, starting after `after` (from the
/// first atom when `None`). `after` need not be an atom of `f`.
pub fn atoms_after<'a>(
    f: &'a Fragment,
    after: Option<&AtomKey>,
) -> impl Iterator<Item = AtomRef<'a>> + 'a {
    // Sets: (name, entry) positions.
    let set_after: Option<Option<(String, Option<SetEntry>)>> = match after {
        None => Some(None),
        Some(AtomKey::Set { name, entry }) => Some(Some((name.clone(), entry.clone()))),
        Some(_) => None,
    };
    let set_atoms = set_after.into_iter().flat_map(move |start| {
        let lower = match &start {
            Some((name, _)) => Bound::Included(name.clone()),
            None => Bound::Unbounded,
        };
        let names = MergeKeys {
            a: f.maps()
                .sets
                .range((lower.clone(), Bound::Unbounded))
                .map(|(k, _)| k)
                .peekable(),
            b: f.maps()
                .entries
                .range((lower, Bound::Unbounded))
                .map(|(k, _)| k)
                .peekable(),
        };
        names.flat_map(move |name| {
            let (skip_def, from) = match &start {
                Some((first, entry)) if first == name => (
                    true,
                    entry.clone().map_or(Bound::Unbounded, Bound::Excluded),
                ),
                _ => (false, Bound::Unbounded),
            };
            let def = if skip_def { None } else { f.set(name) }
                .map(|spec| AtomRef::Set(name.as_str(), spec));
            let entries = f
                .maps()
                .entries
                .get(name)
                .into_iter()
                .flat_map(move |members| members.range((from.clone(), Bound::Unbounded)))
                .map(move |e| AtomRef::Entry(name.as_str(), e));
            def.into_iter().chain(entries)
        })
    });

    let vs_key = match after {
        Some(AtomKey::VirtualServer(k)) => Some(k),
        _ => None,
    };
    let vss = section_bound(after, 1, vs_key)
        .into_iter()
        .flat_map(move |b| f.maps().virtual_servers.range((b, Bound::Unbounded)))
        .map(|(k, h)| AtomRef::VirtualServer(k, h.virtual_server()));

    let addr_key = match after {
        Some(AtomKey::Address(a)) => Some(a),
        _ => None,
    };
    let addrs = section_bound(after, 2, addr_key)
        .into_iter()
        .flat_map(move |b| f.maps().addresses.range((b, Bound::Unbounded)))
        .map(AtomRef::Address);

    let chain_key = match after {
        Some(AtomKey::Chain(k)) => Some(k),
        _ => None,
    };
    let chains = section_bound(after, 3, chain_key)
        .into_iter()
        .flat_map(move |b| f.maps().chains.range((b, Bound::Unbounded)))
        .map(|(k, c)| AtomRef::Chain(k, c));

    let jump_key = match after {
        Some(AtomKey::Jump(j)) => Some(j),
        _ => None,
    };
    let jumps = section_bound(after, 4, jump_key)
        .into_iter()
        .flat_map(move |b| f.maps().jumps.range((b, Bound::Unbounded)))
        .map(AtomRef::Jump);

    let port = match after {
        Some(AtomKey::HealthCheck(p)) => Some(p),
        _ => None,
    };
    let health_checks = section_bound(after, 5, port)
        .into_iter()
        .flat_map(move |b| f.maps().health_checks.range((b, Bound::Unbounded)))
        .map(|(port, check)| AtomRef::HealthCheck(*port, check));

    let condition = match after {
        Some(AtomKey::NodeCondition(c)) => Some(c),
        _ => None,
    };
    let conditions = section_bound(after, 6, condition)
        .into_iter()
        .flat_map(move |b| f.maps().node_conditions.range((b, Bound::Unbounded)))
        .map(|c| AtomRef::NodeCondition(*c));

    set_atoms
        .chain(vss)
        .chain(addrs)
        .chain(chains)
        .chain(jumps)
        .chain(health_checks)
        .chain(conditions)
}

/// Keys of the atoms added, removed or changed between `old` and `new`,
/// sorted. Shared subtrees of the persistent maps are skipped, so the cost
/// follows the change, not the fragment.
pub fn changed_keys(old: &Fragment, new: &Fragment) -> Vec<AtomKey> {
    use imbl::ordmap::DiffItem as M;
    use imbl::ordset::DiffItem as S;
    let mut out = Vec::new();
    let set_key = |name: &String, entry: Option<&SetEntry>| AtomKey::Set {
        name: name.clone(),
        entry: entry.cloned(),
    };
    for item in old.maps().sets.diff(new.maps().sets) {
        let name = match item {
            M::Add(n, _) | M::Remove(n, _) => n,
            M::Update { new: (n, _), .. } => n,
        };
        out.push(set_key(name, None));
    }
    for item in old.maps().entries.diff(new.maps().entries) {
        match item {
            M::Add(n, members) | M::Remove(n, members) => {
                out.extend(members.iter().map(|e| set_key(n, Some(e))))
            }
            M::Update {
                old: (n, a),
                new: (_, b),
            } => {
                for d in a.diff(b) {
                    let (S::Add(e) | S::Remove(e)) = d;
                    out.push(set_key(n, Some(e)));
                }
            }
        }
    }
    for item in old.maps().virtual_servers.diff(new.maps().virtual_servers) {
        let key = match item {
            M::Add(k, _) | M::Remove(k, _) => k,
            M::Update { new: (k, _), .. } => k,
        };
        out.push(AtomKey::VirtualServer(*key));
    }
    for d in old.maps().addresses.diff(new.maps().addresses) {
        let (S::Add(a) | S::Remove(a)) = d;
        out.push(AtomKey::Address(*a));
    }
    for item in old.maps().chains.diff(new.maps().chains) {
        let key = match item {
            M::Add(k, _) | M::Remove(k, _) => k,
            M::Update { new: (k, _), .. } => k,
        };
        out.push(AtomKey::Chain(key.clone()));
    }
    for d in old.maps().jumps.diff(new.maps().jumps) {
        let (S::Add(j) | S::Remove(j)) = d;
        out.push(AtomKey::Jump(j.clone()));
    }
    for item in old.maps().health_checks.diff(new.maps().health_checks) {
        let port = match item {
            M::Add(p, _) | M::Remove(p, _) => p,
            M::Update { new: (p, _), .. } => p,
        };
        out.push(AtomKey::HealthCheck(*port));
    }
    for d in old.maps().node_conditions.diff(new.maps().node_conditions) {
        let (S::Add(c) | S::Remove(c)) = d;
        out.push(AtomKey::NodeCondition(*c));
    }
    out.sort();
    out.dedup();
    out
}
