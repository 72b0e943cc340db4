//! Content-addressed storage form of a [`Fragment`]: chunks of atoms and a
//! tree of manifests over them, so that a one-atom change rewrites one chunk
//! and one path of small manifests instead of the whole fragment.
//!
//! ```text
//!  FragmentHeader (key) ─▶ root manifest (level h) ─▶ … ─▶ level-1 manifests ─▶ chunks
//!  root, height,            ordered child digests          ordered chunk        encoded runs of
//!  state digest, atoms                                     digests              consecutive atoms
//! ```
//!
//! Atoms are taken in canonical order ([`AtomKey`]): set definitions each
//! followed by their entries (sets by name), then virtual servers,
//! addresses, chains and jumps. A chunk is a run of consecutive atoms; it
//! ends after an atom whose digest-derived hash falls under a threshold
//! proportional to the atom's encoded size (so chunks average
//! [`TARGET_CHUNK_BYTES`]), or when it reaches [`MAX_CHUNK_BYTES`] or
//! [`MAX_CHUNK_ATOMS`]. Boundaries depend on content, not on position, so
//! an edit moves at most the boundaries next to it, and the same fragment
//! always gives the same chunks, whatever its history.
//!
//! Every stored object is keyed by the SHA-256 of its bytes, and decoding
//! checks the key first: bytes that do not hash to their key, or that do not
//! parse, are a [`ChunkError`] naming the object, never a different state.
//!
//! Pure: no I/O.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Bound;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

use crate::atoms::{AtomError, AtomRun};
use crate::digest::{self, Digest, Encoder};
use crate::fragment::Fragment;
use crate::model::{
    Chain, ChainKey, Family, Forward, Jump, Protocol, RealServer, Rule, Scheduler, SetEntry,
    SetSpec, SetType, Table, VirtualServer, VirtualServerKey,
};

/// Format byte at the start of every chunk, manifest and header body.
pub const CHUNK_FORMAT: u8 = 1;
/// Average encoded size of a chunk the boundary rule aims at.
pub const TARGET_CHUNK_BYTES: usize = 2048;
/// No content-defined boundary before a chunk has this many bytes.
pub const MIN_CHUNK_BYTES: usize = 256;
/// A chunk is cut once it reaches this size (one atom may exceed it alone).
pub const MAX_CHUNK_BYTES: usize = 8192;
/// A chunk is cut once it holds this many atoms.
pub const MAX_CHUNK_ATOMS: usize = 1024;
/// Average number of children of a manifest node.
pub const TARGET_FANOUT: u64 = 32;
/// Most children a manifest node has.
pub const MAX_FANOUT: usize = 128;

/// Why stored bytes could not be turned back into a fragment. Every variant
/// names the object (by its key) that is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {key}: bytes hash to {actual}, not to the chunk's key")]
    ChunkDigest { key: Digest, actual: Digest },
    #[error("chunk {key}: undecodable at byte {offset}: {reason}")]
    ChunkBody {
        key: Digest,
        offset: usize,
        reason: String,
    },
    #[error("manifest {key}: bytes hash to {actual}, not to the manifest's key")]
    ManifestDigest { key: Digest, actual: Digest },
    #[error("manifest {key}: {reason}")]
    ManifestBody { key: Digest, reason: String },
    #[error("fragment {key}: header hashes to {actual}, not to the fragment's key")]
    HeaderDigest { key: Digest, actual: Digest },
    #[error("fragment {key}: {reason}")]
    Fragment { key: Digest, reason: String },
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

// --- atoms in canonical order ---

/// The position of an atom in the canonical order of a fragment. Derived
/// `Ord` is that order: a set's definition (`entry: None`) comes before its
/// entries, sets before virtual servers, then addresses, chains, jumps.
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
        }
    }

    /// The atom's hash as the state digest sums it.
    fn hash(&self) -> [u8; 32] {
        match *self {
            AtomRef::Set(name, spec) => digest::hash_set(name, spec),
            AtomRef::Entry(name, entry) => digest::hash_entry(name, entry),
            AtomRef::VirtualServer(key, vs) => digest::hash_virtual_server(key, vs),
            AtomRef::Address(addr) => digest::hash_address(addr),
            AtomRef::Chain(key, chain) => digest::hash_chain(key, chain),
            AtomRef::Jump(jump) => digest::hash_jump(jump),
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

    set_atoms.chain(vss).chain(addrs).chain(chains).chain(jumps)
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
    out.sort();
    out.dedup();
    out
}

// --- encoding ---

const TAG_SET: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_ENTRY_SAME_SET: u8 = 3;
const TAG_VS: u8 = 4;
const TAG_ADDRESS: u8 = 5;
const TAG_CHAIN: u8 = 6;
const TAG_JUMP: u8 = 7;

/// The chunk encoding: fields as the digest encodes them ([`Encoder`]),
/// lengths and counts as LEB128.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Encoder for Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    fn length(&mut self, n: usize) {
        let mut v = n as u64;
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
}

const SET_TYPES: [SetType; 6] = SetType::ALL;
const TABLES: [Table; 4] = Table::ALL;
/// In the numbering of [`Encoder::forward`].
const FORWARDS: [Forward; 3] = [Forward::Masq, Forward::Route, Forward::Tunnel];

fn index_of<T: PartialEq>(all: &[T], v: &T) -> u8 {
    all.iter().position(|x| x == v).unwrap_or(0) as u8
}

/// Appends one atom; `set` is the set name of the previous atom of the
/// chunk, so runs of entries name their set once.
fn encode_atom(w: &mut Writer, atom: &AtomRef<'_>, set: Option<&str>) {
    match *atom {
        AtomRef::Set(name, spec) => {
            w.u8(TAG_SET);
            w.str(name);
            w.u8(index_of(&SET_TYPES, &spec.kind));
            w.u8(index_of(&Family::ALL, &spec.family));
            w.u32(spec.maxelem);
            w.str(&spec.comment);
        }
        AtomRef::Entry(name, entry) => {
            if set == Some(name) {
                w.u8(TAG_ENTRY_SAME_SET);
            } else {
                w.u8(TAG_ENTRY);
                w.str(name);
            }
            w.entry(entry);
        }
        AtomRef::VirtualServer(key, vs) => {
            w.u8(TAG_VS);
            w.ip(&key.address);
            w.protocol(key.protocol);
            w.u16(key.port);
            w.u8(index_of(&Scheduler::ALL, &vs.scheduler));
            match vs.persistence_timeout {
                None => w.u8(0),
                Some(t) => w.u8(1).u32(t),
            };
            w.length(vs.real_servers.len());
            for rs in &vs.real_servers {
                w.ip(&rs.address)
                    .u16(rs.port)
                    .u32(rs.weight)
                    .forward(rs.forward);
            }
        }
        AtomRef::Address(addr) => {
            w.u8(TAG_ADDRESS);
            w.ip(addr);
        }
        AtomRef::Chain(key, chain) => {
            w.u8(TAG_CHAIN);
            w.u8(index_of(&Family::ALL, &key.family));
            w.u8(index_of(&TABLES, &key.table));
            w.str(&key.name);
            w.length(chain.rules.len());
            for rule in &chain.rules {
                w.rule(rule);
            }
        }
        AtomRef::Jump(jump) => {
            w.u8(TAG_JUMP);
            w.u8(index_of(&Family::ALL, &jump.family));
            w.u8(index_of(&TABLES, &jump.table));
            w.str(&jump.from);
            w.u16(jump.position);
            w.rule(&jump.rule);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Read<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| format!("needs {n} more bytes, has {}", self.buf.len() - self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Read<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Read<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn varint(&mut self) -> Read<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 64 bits".into())
    }
    fn len(&mut self) -> Read<usize> {
        let n = self.varint()?;
        let left = self.buf.len() - self.pos;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| format!("length {n} exceeds the {left} bytes left"))
    }
    fn str(&mut self) -> Read<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("string: {e}"))
    }
    fn ip(&mut self) -> Read<IpAddr> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            other => Err(format!("address family tag {other}")),
        }
    }
    fn net(&mut self) -> Read<IpNet> {
        let ip = self.ip()?;
        let prefix = self.u8()?;
        IpNet::new(ip, prefix).map_err(|e| format!("net {ip}/{prefix}: {e}"))
    }
    fn proto(&mut self) -> Read<Protocol> {
        match self.u8()? {
            6 => Ok(Protocol::Tcp),
            17 => Ok(Protocol::Udp),
            132 => Ok(Protocol::Sctp),
            other => Err(format!("protocol number {other}")),
        }
    }
    fn pick<T: Copy>(&mut self, all: &[T], what: &str) -> Read<T> {
        let i = self.u8()?;
        all.get(usize::from(i))
            .copied()
            .ok_or_else(|| format!("{what} index {i}"))
    }
    fn rule(&mut self) -> Read<Rule> {
        let n = self.len()?;
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            args.push(self.str()?);
        }
        Ok(Rule(args))
    }
    fn entry(&mut self) -> Read<SetEntry> {
        Ok(match self.u8()? {
            1 => SetEntry::Ip(self.ip()?),
            2 => SetEntry::IpPort {
                ip: self.ip()?,
                protocol: self.proto()?,
                port: self.u16()?,
            },
            3 => SetEntry::IpPortIp {
                ip: self.ip()?,
                protocol: self.proto()?,
                port: self.u16()?,
                ip2: self.ip()?,
            },
            4 => SetEntry::IpPortNet {
                ip: self.ip()?,
                protocol: self.proto()?,
                port: self.u16()?,
                net: self.net()?,
            },
            5 => SetEntry::Net {
                net: self.net()?,
                nomatch: match self.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(format!("nomatch flag {other}")),
                },
            },
            6 => SetEntry::Port(self.u16()?),
            other => return Err(format!("entry kind {other}")),
        })
    }
}

/// One chunk checked against its key, parsed and its atoms hashed, not yet
/// in a fragment: the part of [`assemble`] each chunk does on its own, so
/// chunks can be decoded on several threads and then put together in order
/// with [`assemble_decoded`].
#[derive(Debug)]
pub struct DecodedChunk {
    key: Digest,
    atoms: AtomRun,
}

impl DecodedChunk {
    /// How many atoms the chunk lists.
    pub fn atom_count(&self) -> u64 {
        self.atoms.len() as u64
    }
}

/// Checks that `body` hashes to `key`, parses its atoms (in strictly
/// increasing canonical order) and hashes each. Pure and thread-safe: a
/// fragment's chunks can be decoded in parallel.
pub fn decode_chunk(key: &Digest, body: &[u8]) -> Result<DecodedChunk, ChunkError> {
    let actual = sha256(body);
    if actual != *key {
        return Err(ChunkError::ChunkDigest { key: *key, actual });
    }
    let mut r = Reader { buf: body, pos: 0 };
    let fail = |offset: usize, reason: String| ChunkError::ChunkBody {
        key: *key,
        offset,
        reason,
    };
    match r.u8() {
        Ok(CHUNK_FORMAT) => {}
        Ok(other) => return Err(fail(0, format!("format {other}, expected {CHUNK_FORMAT}"))),
        Err(e) => return Err(fail(0, e)),
    }
    // Atoms are at least 2 bytes.
    let mut atoms = AtomRun::with_capacity(body.len() / 8);
    while !r.done() {
        let at = r.pos;
        decode_atom(&mut r, &mut atoms).map_err(|e| fail(at, e))?;
    }
    Ok(DecodedChunk { key: *key, atoms })
}

/// Reads one atom into `atoms`, which checks its order and hashes it.
fn decode_atom(r: &mut Reader<'_>, atoms: &mut AtomRun) -> Read<()> {
    let added = match r.u8()? {
        TAG_SET => {
            let name = r.str()?;
            let spec = SetSpec {
                kind: r.pick(&SET_TYPES, "set type")?,
                family: r.pick(&Family::ALL, "family")?,
                maxelem: r.u32()?,
                comment: r.str()?,
            };
            atoms.set(name, spec)
        }
        TAG_ENTRY => {
            let name = r.str()?;
            atoms.entry(name, r.entry()?)
        }
        TAG_ENTRY_SAME_SET => atoms.next_entry(r.entry()?),
        TAG_VS => {
            let key = VirtualServerKey {
                address: r.ip()?,
                protocol: r.proto()?,
                port: r.u16()?,
            };
            let scheduler = r.pick(&Scheduler::ALL, "scheduler")?;
            let persistence = match r.u8()? {
                0 => None,
                1 => Some(r.u32()?),
                other => return Err(format!("persistence flag {other}")),
            };
            let n = r.len()?;
            let mut real_servers = Vec::with_capacity(n);
            for _ in 0..n {
                real_servers.push(RealServer {
                    address: r.ip()?,
                    port: r.u16()?,
                    weight: r.u32()?,
                    forward: r.pick(&FORWARDS, "forwarding method")?,
                });
            }
            let vs = VirtualServer::new(scheduler, persistence, real_servers);
            if vs.real_servers.len() != n {
                return Err(format!("virtual server {key} lists a real server twice"));
            }
            atoms.virtual_server(key, Arc::new(vs))
        }
        TAG_ADDRESS => atoms.address(r.ip()?),
        TAG_CHAIN => {
            let key = ChainKey {
                family: r.pick(&Family::ALL, "family")?,
                table: r.pick(&TABLES, "table")?,
                name: r.str()?,
            };
            let n = r.len()?;
            let mut rules = Vec::with_capacity(n);
            for _ in 0..n {
                rules.push(r.rule()?);
            }
            atoms.chain(key, Arc::new(Chain { rules }))
        }
        TAG_JUMP => atoms.jump(Jump {
            family: r.pick(&Family::ALL, "family")?,
            table: r.pick(&TABLES, "table")?,
            from: r.str()?,
            position: r.u16()?,
            rule: r.rule()?,
        }),
        other => return Err(format!("atom tag {other}")),
    };
    added.map_err(|e| e.to_string())
}

// --- chunking ---

/// One encoded chunk: its key (SHA-256 of `body`), its bytes, and how many
/// atoms it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub key: Digest,
    pub body: Vec<u8>,
    pub atoms: u32,
}

/// Where a chunk sits in its fragment: its key and its last atom.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    key: Digest,
    last: AtomKey,
    /// Ended by the boundary rule; false for a fragment's last chunk when
    /// the atoms simply ran out (no boundary to resynchronise on).
    closed: bool,
}

/// Builds chunks from a stream of atoms.
struct Chunker {
    w: Writer,
    atoms: usize,
    set: Option<String>,
    last: Option<AtomKey>,
}

impl Chunker {
    fn new() -> Self {
        let mut w = Writer::default();
        w.u8(CHUNK_FORMAT);
        Chunker {
            w,
            atoms: 0,
            set: None,
            last: None,
        }
    }

    /// Adds an atom; returns the finished chunk when a boundary follows it.
    fn push(&mut self, atom: AtomRef<'_>) -> Option<(Span, Chunk)> {
        let before = self.w.buf.len();
        encode_atom(&mut self.w, &atom, self.set.as_deref());
        self.set = match atom {
            AtomRef::Set(name, _) | AtomRef::Entry(name, _) => match self.set.take() {
                Some(s) if s == name => Some(s),
                _ => Some(name.to_string()),
            },
            _ => None,
        };
        self.atoms += 1;
        let len = self.w.buf.len();
        let atom_len = (len - before) as u128;
        let cut = if len >= MAX_CHUNK_BYTES || self.atoms >= MAX_CHUNK_ATOMS {
            true
        } else if len < MIN_CHUNK_BYTES {
            false
        } else {
            let hash = atom.hash();
            let mut h = [0u8; 8];
            h.copy_from_slice(&hash[24..32]);
            let threshold = (atom_len << 64) / TARGET_CHUNK_BYTES as u128;
            u128::from(u64::from_le_bytes(h)) < threshold
        };
        if cut {
            self.finish(atom.key(), true)
        } else {
            self.last = Some(atom.key());
            None
        }
    }

    fn finish(&mut self, last: AtomKey, closed: bool) -> Option<(Span, Chunk)> {
        let done = std::mem::replace(self, Chunker::new());
        if done.atoms == 0 {
            return None;
        }
        let key = sha256(&done.w.buf);
        Some((
            Span { key, last, closed },
            Chunk {
                key,
                body: done.w.buf,
                atoms: done.atoms as u32,
            },
        ))
    }

    /// The last, open chunk, if any atoms are pending.
    fn flush(&mut self) -> Option<(Span, Chunk)> {
        let last = self.last.take()?;
        self.finish(last, false)
    }
}

// --- manifests ---

/// One node of a fragment's manifest tree: the ordered keys of its children
/// (chunks at level 1, manifests of level − 1 above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub key: Digest,
    pub level: u8,
    /// `[CHUNK_FORMAT, level, child keys (32 bytes each)…]`; `key` is its SHA-256.
    pub body: Vec<u8>,
}

impl Manifest {
    fn new(level: u8, children: &[Digest]) -> Manifest {
        let mut body = Vec::with_capacity(2 + 32 * children.len());
        body.push(CHUNK_FORMAT);
        body.push(level);
        for c in children {
            body.extend_from_slice(&c.0);
        }
        Manifest {
            key: sha256(&body),
            level,
            body,
        }
    }
}

/// Checks a manifest's bytes against its key and expected level; returns
/// its children's keys in order.
pub fn decode_manifest(key: &Digest, level: u8, body: &[u8]) -> Result<Vec<Digest>, ChunkError> {
    let actual = sha256(body);
    if actual != *key {
        return Err(ChunkError::ManifestDigest { key: *key, actual });
    }
    let bad = |reason: String| ChunkError::ManifestBody { key: *key, reason };
    match body {
        [CHUNK_FORMAT, l, rest @ ..] if *l == level && rest.len() % 32 == 0 => Ok(rest
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                Digest(d)
            })
            .collect()),
        [CHUNK_FORMAT, l, rest @ ..] if *l == level => {
            Err(bad(format!("{} bytes of child keys", rest.len())))
        }
        [CHUNK_FORMAT, l, ..] => Err(bad(format!("level {l}, expected {level}"))),
        _ => Err(bad("not a manifest of this format".into())),
    }
}

/// Groups `children` into manifests of one level, boundaries chosen by the
/// children's keys.
fn manifest_level(level: u8, children: &[Digest]) -> Vec<Manifest> {
    let threshold = u64::MAX / TARGET_FANOUT;
    let mut out = Vec::new();
    let mut start = 0;
    for (i, child) in children.iter().enumerate() {
        let n = i + 1 - start;
        let mut h = [0u8; 8];
        h.copy_from_slice(&child.0[16..24]);
        if n >= MAX_FANOUT || (n >= 2 && u64::from_le_bytes(h) < threshold) {
            out.push(Manifest::new(level, &children[start..=i]));
            start = i + 1;
        }
    }
    if start < children.len() || out.is_empty() {
        out.push(Manifest::new(level, &children[start..]));
    }
    out
}

/// The manifest tree over `chunks`: every node, root last.
fn manifest_tree(chunks: &[Digest]) -> Vec<Manifest> {
    let mut all = Vec::new();
    let mut level = 1u8;
    let mut current = manifest_level(level, chunks);
    // Every node but the last of a level has at least two children, so each
    // level is at most half the one below: 64 levels cannot be exceeded.
    while current.len() > 1 && level < u8::MAX {
        let keys: Vec<Digest> = current.iter().map(|m| m.key).collect();
        all.append(&mut current);
        level += 1;
        current = manifest_level(level, &keys);
    }
    all.append(&mut current);
    all
}

/// What a store records for a fragment besides its chunks and manifests.
/// Its key, the SHA-256 of [`FragmentHeader::encode`], is how node states
/// refer to the fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Key of the root manifest.
    pub root: Digest,
    /// Level of the root manifest (1 when it lists chunks).
    pub height: u8,
    /// [`Fragment::digest`] of the content.
    pub digest: Digest,
    /// [`Fragment::atom_count`] of the content.
    pub atoms: u64,
}

impl FragmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(2 + 32 + 32 + 8);
        body.push(CHUNK_FORMAT);
        body.push(self.height);
        body.extend_from_slice(&self.root.0);
        body.extend_from_slice(&self.digest.0);
        body.extend_from_slice(&self.atoms.to_be_bytes());
        body
    }

    pub fn key(&self) -> Digest {
        sha256(&self.encode())
    }

    /// Checks that this header is the one `key` names.
    pub fn verify(&self, key: &Digest) -> Result<(), ChunkError> {
        let actual = self.key();
        if actual != *key {
            return Err(ChunkError::HeaderDigest { key: *key, actual });
        }
        Ok(())
    }
}

/// A fragment with its chunk boundaries and manifest tree. Updating it with
/// the next version of the fragment re-encodes only the chunks around the
/// atoms that changed.
#[derive(Clone, Debug)]
pub struct ChunkedFragment {
    fragment: Arc<Fragment>,
    spans: Vec<Span>,
    manifests: Vec<Manifest>,
    header: FragmentHeader,
}

impl ChunkedFragment {
    /// Chunks a whole fragment. Returns every chunk.
    pub fn new(fragment: Arc<Fragment>) -> (ChunkedFragment, Vec<Chunk>) {
        let mut spans = Vec::new();
        let mut chunks = Vec::new();
        let mut chunker = Chunker::new();
        for atom in atoms_after(&fragment, None) {
            if let Some((span, chunk)) = chunker.push(atom) {
                spans.push(span);
                chunks.push(chunk);
            }
        }
        if let Some((span, chunk)) = chunker.flush() {
            spans.push(span);
            chunks.push(chunk);
        }
        (Self::with_spans(fragment, spans), chunks)
    }

    fn with_spans(fragment: Arc<Fragment>, spans: Vec<Span>) -> ChunkedFragment {
        let keys: Vec<Digest> = spans.iter().map(|s| s.key).collect();
        let manifests = manifest_tree(&keys);
        let (root, height) = manifests
            .last()
            .map_or((Digest([0; 32]), 1), |m| (m.key, m.level));
        let header = FragmentHeader {
            root,
            height,
            digest: fragment.digest(),
            atoms: fragment.atom_count(),
        };
        ChunkedFragment {
            fragment,
            spans,
            manifests,
            header,
        }
    }

    /// The chunking of `next`, reusing this one's chunks where the atoms
    /// did not change. Returns the chunks that were encoded anew (a chunk
    /// equal to one of this version's is not returned). The result is the
    /// same as [`ChunkedFragment::new`] of `next`.
    pub fn update(&self, next: Arc<Fragment>) -> (ChunkedFragment, Vec<Chunk>) {
        if Arc::ptr_eq(&self.fragment, &next) {
            return (self.clone(), Vec::new());
        }
        let changed = changed_keys(&self.fragment, &next);
        if changed.is_empty() {
            let mut same = self.clone();
            same.fragment = next;
            return (same, Vec::new());
        }
        if self.spans.is_empty() {
            return Self::new(next);
        }
        let old = &self.spans;
        let mut spans: Vec<Span> = Vec::with_capacity(old.len() + 1);
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut i = 0; // first old span not yet copied or replaced
        let mut c = 0; // first change not yet covered
        while c < changed.len() {
            let first = &changed[c];
            let mut j = i + old[i..].partition_point(|s| s.last < *first);
            if j == old.len() && !old[j - 1].closed {
                j -= 1;
            }
            spans.extend_from_slice(&old[i..j]);
            let start = j.checked_sub(1).map(|p| &old[p].last);
            let mut chunker = Chunker::new();
            let mut resynced = false;
            for atom in atoms_after(&next, start) {
                let Some((span, chunk)) = chunker.push(atom) else {
                    continue;
                };
                while c < changed.len() && changed[c] <= span.last {
                    c += 1;
                }
                let at = old[j..].binary_search_by(|s| s.last.cmp(&span.last));
                spans.push(span);
                chunks.push(chunk);
                if let Ok(m) = at
                    && old[j + m].closed
                {
                    i = j + m + 1;
                    resynced = true;
                    break;
                }
            }
            if !resynced {
                if let Some((span, chunk)) = chunker.flush() {
                    spans.push(span);
                    chunks.push(chunk);
                }
                i = old.len();
                c = changed.len();
            }
        }
        spans.extend_from_slice(&old[i..]);
        let known: HashSet<Digest> = old.iter().map(|s| s.key).collect();
        chunks.retain(|ch| !known.contains(&ch.key));
        (Self::with_spans(next, spans), chunks)
    }

    pub fn fragment(&self) -> &Arc<Fragment> {
        &self.fragment
    }

    pub fn header(&self) -> &FragmentHeader {
        &self.header
    }

    /// The fragment's key: what a node state refers to.
    pub fn key(&self) -> Digest {
        self.header.key()
    }

    /// Keys of the chunks, in order.
    pub fn chunk_keys(&self) -> impl Iterator<Item = &Digest> {
        self.spans.iter().map(|s| &s.key)
    }

    /// Every manifest of the tree, root last.
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// Manifests of this version that `prev` does not have.
    pub fn new_manifests<'a>(
        &'a self,
        prev: Option<&ChunkedFragment>,
    ) -> impl Iterator<Item = &'a Manifest> {
        let known: HashSet<Digest> = prev
            .map(|p| p.manifests.iter().map(|m| m.key).collect())
            .unwrap_or_default();
        self.manifests
            .iter()
            .filter(move |m| !known.contains(&m.key))
    }
}

/// Rebuilds a fragment from its header and its chunks in order, checking
/// every chunk's key, the canonical order across chunks, the atom count and
/// the state digest the header records.
pub fn assemble<'a>(
    key: &Digest,
    header: &FragmentHeader,
    chunks: impl IntoIterator<Item = (&'a Digest, &'a [u8])>,
) -> Result<Fragment, ChunkError> {
    // Lazily: nothing is decoded before the header is checked.
    let decoded = chunks.into_iter().map(|(k, body)| decode_chunk(k, body));
    assemble_decoded(key, header, decoded)
}

/// [`assemble`] from chunks already through [`decode_chunk`] (in order;
/// the first error is returned), so the per-chunk work (hashing, parsing)
/// can run in parallel. Checks the same: the header against its key, the
/// canonical order across chunks, the atom count and the state digest.
pub fn assemble_decoded(
    key: &Digest,
    header: &FragmentHeader,
    chunks: impl IntoIterator<Item = Result<DecodedChunk, ChunkError>>,
) -> Result<Fragment, ChunkError> {
    header.verify(key)?;
    let mut f = Fragment::new();
    let mut listed = 0u64;
    for chunk in chunks {
        let DecodedChunk {
            key: chunk_key,
            atoms,
        } = chunk?;
        let count = atoms.len() as u64;
        // Every atom of this chunk must follow the previous chunk's.
        f.append(atoms).map_err(|e| ChunkError::Fragment {
            key: *key,
            reason: match e {
                AtomError::Repeated => {
                    format!("chunk {chunk_key} repeats atoms of an earlier chunk")
                }
                AtomError::OutOfOrder | AtomError::NoSet => {
                    format!("chunk {chunk_key} is out of canonical order")
                }
            },
        })?;
        listed += count;
    }
    if listed != header.atoms || f.atom_count() != header.atoms {
        return Err(ChunkError::Fragment {
            key: *key,
            reason: format!(
                "chunks hold {listed} atoms, header records {}",
                header.atoms
            ),
        });
    }
    let actual = f.digest();
    if actual != header.digest {
        return Err(ChunkError::Fragment {
            key: *key,
            reason: format!("content digest {actual}, header records {}", header.digest),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, SetType};
    use proptest::prelude::*;
    use std::collections::HashMap;

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
        f
    }

    fn roundtrip(cf: &ChunkedFragment, store: &HashMap<Digest, Vec<u8>>) -> Fragment {
        let chunks: Vec<(Digest, Vec<u8>)> =
            cf.chunk_keys().map(|k| (*k, store[k].clone())).collect();
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
            (TARGET_CHUNK_BYTES / 4..TARGET_CHUNK_BYTES * 3).contains(&mean),
            "mean chunk {mean} bytes"
        );
        for c in &chunks {
            assert!(c.body.len() < MAX_CHUNK_BYTES + 1024);
            assert!(c.atoms as usize <= MAX_CHUNK_ATOMS);
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
        let chunks: Vec<(Digest, Vec<u8>)> =
            cf.chunk_keys().map(|k| (*k, store[k].clone())).collect();
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
                    if *k == key && reason.contains("canonical order")),
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
}
