//! The bytes of a chunk: a format byte, then atoms, each a tag and its
//! fields as the contract's [`Encoder`] writes them (lengths and counts as
//! LEB128); a run of entries of one set names the set once. Decoding goes
//! through the contract's [`AtomRun`], which hashes every atom and refuses
//! atoms out of canonical order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use setpoint_dataplane::digest::Encoder;
use setpoint_dataplane::{
    AtomError, AtomRun, Chain, ChainKey, Digest, Family, Forward, HealthCheck, Jump, NodeCondition,
    Protocol, RealServer, Rule, Scheduler, SetEntry, SetSpec, SetType, Table, VirtualServer,
    VirtualServerKey,
};

use super::order::AtomRef;
use super::{CHUNK_FORMAT, ChunkError, sha256};

const TAG_SET: u8 = 1;
pub(super) const TAG_ENTRY: u8 = 2;
pub(super) const TAG_ENTRY_SAME_SET: u8 = 3;
const TAG_VS: u8 = 4;
pub(super) const TAG_ADDRESS: u8 = 5;
const TAG_CHAIN: u8 = 6;
const TAG_JUMP: u8 = 7;
// Tags added later; bytes written before them decode unchanged.
pub(super) const TAG_HEALTH_CHECK: u8 = 8;
pub(super) const TAG_NODE_CONDITION: u8 = 9;

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
/// Node conditions by index; new ones go at the end.
const NODE_CONDITIONS: [NodeCondition; 1] = NodeCondition::ALL;
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
        AtomRef::HealthCheck(port, check) => {
            w.u8(TAG_HEALTH_CHECK);
            w.u16(port);
            w.str(&check.namespace);
            w.str(&check.name);
            w.u32(check.local_endpoints);
        }
        AtomRef::NodeCondition(condition) => {
            w.u8(TAG_NODE_CONDITION);
            w.u8(index_of(&NODE_CONDITIONS, &condition));
        }
    }
}

/// What is wrong in a chunk's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("format {0}, expected {CHUNK_FORMAT}")]
    Format(u8),
    #[error("needs {needs} more bytes, has {has}")]
    Short { needs: usize, has: usize },
    #[error("varint longer than 64 bits")]
    LongVarint,
    #[error("length {claimed} exceeds the {left} bytes left")]
    Length { claimed: u64, left: usize },
    #[error("string: {0}")]
    Utf8(std::string::FromUtf8Error),
    #[error("address family tag {0}")]
    FamilyTag(u8),
    #[error("net {ip}/{prefix}: {source}")]
    Net {
        ip: IpAddr,
        prefix: u8,
        source: ipnet::PrefixLenError,
    },
    #[error("protocol number {0}")]
    Protocol(u8),
    /// A byte past the end of the list of a kind's values.
    #[error("{what} index {index}")]
    Index { what: &'static str, index: u8 },
    #[error("nomatch flag {0}")]
    Nomatch(u8),
    #[error("entry kind {0}")]
    EntryKind(u8),
    #[error("persistence flag {0}")]
    Persistence(u8),
    #[error("virtual server {0} lists a real server twice")]
    RealServerTwice(VirtualServerKey),
    #[error("atom tag {0}")]
    AtomTag(u8),
    /// Out of canonical order, or an entry continuing no set.
    #[error(transparent)]
    Atom(#[from] AtomError),
}

/// A chunk's bytes as they are written: the format byte, then atoms.
pub(super) struct ChunkWriter {
    w: Writer,
    /// The set the last atom is of, so the entries that follow it name it
    /// no more.
    set: Option<String>,
}

impl ChunkWriter {
    pub(super) fn new() -> Self {
        let mut w = Writer::default();
        w.u8(CHUNK_FORMAT);
        ChunkWriter { w, set: None }
    }

    /// Appends an atom; returns how many bytes it took.
    pub(super) fn push(&mut self, atom: &AtomRef<'_>) -> usize {
        let before = self.w.buf.len();
        encode_atom(&mut self.w, atom, self.set.as_deref());
        self.set = match *atom {
            AtomRef::Set(name, _) | AtomRef::Entry(name, _) => match self.set.take() {
                Some(s) if s == name => Some(s),
                _ => Some(name.to_string()),
            },
            _ => None,
        };
        self.w.buf.len() - before
    }

    /// Bytes written so far.
    pub(super) fn len(&self) -> usize {
        self.w.buf.len()
    }

    pub(super) fn into_body(self) -> Vec<u8> {
        self.w.buf
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Read<T> = Result<T, BodyError>;

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(BodyError::Short {
                needs: n,
                has: self.buf.len() - self.pos,
            })?;
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
        Err(BodyError::LongVarint)
    }
    fn len(&mut self) -> Read<usize> {
        let n = self.varint()?;
        let left = self.buf.len() - self.pos;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or(BodyError::Length { claimed: n, left })
    }
    fn str(&mut self) -> Read<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(BodyError::Utf8)
    }
    fn ip(&mut self) -> Read<IpAddr> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            other => Err(BodyError::FamilyTag(other)),
        }
    }
    fn net(&mut self) -> Read<IpNet> {
        let ip = self.ip()?;
        let prefix = self.u8()?;
        IpNet::new(ip, prefix).map_err(|source| BodyError::Net { ip, prefix, source })
    }
    fn proto(&mut self) -> Read<Protocol> {
        match self.u8()? {
            6 => Ok(Protocol::Tcp),
            17 => Ok(Protocol::Udp),
            132 => Ok(Protocol::Sctp),
            other => Err(BodyError::Protocol(other)),
        }
    }
    fn pick<T: Copy>(&mut self, all: &[T], what: &'static str) -> Read<T> {
        let i = self.u8()?;
        all.get(usize::from(i))
            .copied()
            .ok_or(BodyError::Index { what, index: i })
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
                    other => return Err(BodyError::Nomatch(other)),
                },
            },
            6 => SetEntry::Port(self.u16()?),
            other => return Err(BodyError::EntryKind(other)),
        })
    }
}

/// One chunk checked against its key, parsed and its atoms hashed, not yet
/// in a fragment: the part of [`assemble`] each chunk does on its own, so
/// chunks can be decoded on several threads and then put together in order
/// with [`assemble_decoded`].
#[derive(Debug)]
pub struct DecodedChunk {
    pub(super) key: Digest,
    pub(super) atoms: AtomRun,
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
    let fail = |offset: usize, reason: BodyError| ChunkError::ChunkBody {
        key: *key,
        offset,
        reason,
    };
    match r.u8() {
        Ok(CHUNK_FORMAT) => {}
        Ok(other) => return Err(fail(0, BodyError::Format(other))),
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
                other => return Err(BodyError::Persistence(other)),
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
                return Err(BodyError::RealServerTwice(key));
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
        TAG_HEALTH_CHECK => {
            let port = r.u16()?;
            let check = HealthCheck {
                namespace: r.str()?,
                name: r.str()?,
                local_endpoints: r.u32()?,
            };
            atoms.health_check(port, check)
        }
        TAG_NODE_CONDITION => atoms.node_condition(r.pick(&NODE_CONDITIONS, "node condition")?),
        other => return Err(BodyError::AtomTag(other)),
    };
    Ok(added?)
}
