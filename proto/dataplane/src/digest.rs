//! The stable digest of a dataplane.
//!
//! Every atom of a state (a set definition, a set entry, a virtual server
//! with its real servers, an address, a chain, a jump, a health check, a
//! node condition) has a canonical byte
//! encoding and a SHA-256 hash. A state's digest is SHA-256 over the
//! lane-wise sum of its atoms' hashes and the atom count. The sum makes the
//! digest independent of how a state is split into fragments and lets a
//! fragment update its digest in O(1) when one atom changes; the agent can
//! compute the same digest from what it reads back from the kernel.
//!
//! The encoding is versioned by [`DIGEST_DOMAIN`]: changing any byte of it
//! changes every digest, which a golden test pins.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::{
    Chain, ChainKey, Forward, HealthCheck, Jump, NodeCondition, Protocol, Rule, SetEntry, SetSpec,
    VirtualServer, VirtualServerKey,
};

pub const DIGEST_DOMAIN: &[u8] = b"setpoint/dataplane/v1";

/// A state digest, printed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &hex::encode(self.0)[..16])
    }
}

/// Text that is not a digest: not 64 hex digits.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("digest {text:?}: {source}")]
pub struct NotADigest {
    pub text: String,
    #[source]
    pub source: hex::FromHexError,
}

impl std::str::FromStr for Digest {
    type Err = NotADigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|source| NotADigest {
            text: s.to_string(),
            source,
        })?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The running sum of atom hashes of a fragment.
#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    lanes: [u64; 4],
    count: u64,
    /// [`Accumulator::finish`] of the sum as it stands: the control plane
    /// asks a fragment's digest several times per agent per revision, and
    /// a SHA-256 each time was a measurable share of a change's CPU.
    /// Forgotten by every change to the sum.
    finished: std::sync::OnceLock<Digest>,
}

impl PartialEq for Accumulator {
    fn eq(&self, other: &Self) -> bool {
        self.lanes == other.lanes && self.count == other.count
    }
}
impl Eq for Accumulator {}

impl Accumulator {
    pub fn add(&mut self, atom: &[u8; 32]) {
        self.finished.take();
        for (lane, chunk) in self.lanes.iter_mut().zip(atom.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(chunk_array(chunk)));
        }
        self.count = self.count.wrapping_add(1);
    }

    pub fn remove(&mut self, atom: &[u8; 32]) {
        self.finished.take();
        for (lane, chunk) in self.lanes.iter_mut().zip(atom.chunks_exact(8)) {
            *lane = lane.wrapping_sub(u64::from_le_bytes(chunk_array(chunk)));
        }
        self.count = self.count.wrapping_sub(1);
    }

    pub fn merge(&mut self, other: &Accumulator) {
        self.finished.take();
        for (lane, o) in self.lanes.iter_mut().zip(other.lanes) {
            *lane = lane.wrapping_add(o);
        }
        self.count = self.count.wrapping_add(other.count);
    }

    /// How many atoms were added and not removed.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(&self) -> Digest {
        *self.finished.get_or_init(|| self.hash())
    }

    fn hash(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        for lane in self.lanes {
            h.update(lane.to_le_bytes());
        }
        h.update(self.count.to_le_bytes());
        Digest(h.finalize().into())
    }
}

fn chunk_array(chunk: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(chunk);
    out
}

/// The canonical encoding of atom fields: big-endian integers, an address
/// as its family (4 or 6) and octets, a protocol as its IP number,
/// length-prefixed strings. One writer per field, shared by the digest
/// (lengths as 4-byte big-endian) and the revision store's chunks (lengths
/// as LEB128), so the two encodings of a set entry cannot drift apart.
pub trait Encoder {
    /// Appends bytes as they are.
    fn bytes(&mut self, bytes: &[u8]);
    /// Appends a length or a count, in this encoding's width.
    fn length(&mut self, n: usize);

    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v]);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.length(s.len());
        self.bytes(s.as_bytes());
        self
    }
    fn ip(&mut self, ip: &IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(a) => self.u8(4).bytes(&a.octets()),
            IpAddr::V6(a) => self.u8(6).bytes(&a.octets()),
        }
        self
    }
    fn net(&mut self, net: &IpNet) -> &mut Self {
        self.ip(&net.addr()).u8(net.prefix_len())
    }
    fn protocol(&mut self, p: Protocol) -> &mut Self {
        self.u8(match p {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        })
    }
    fn forward(&mut self, forward: Forward) -> &mut Self {
        self.u8(match forward {
            Forward::Masq => 0,
            Forward::Route => 1,
            Forward::Tunnel => 2,
        })
    }
    fn rule(&mut self, rule: &Rule) -> &mut Self {
        self.length(rule.0.len());
        for arg in &rule.0 {
            self.str(arg);
        }
        self
    }
    /// A set entry: its kind (1 to 6), then its fields.
    fn entry(&mut self, entry: &SetEntry) -> &mut Self {
        match entry {
            SetEntry::Ip(ip) => self.u8(1).ip(ip),
            SetEntry::IpPort { ip, protocol, port } => {
                self.u8(2).ip(ip).protocol(*protocol).u16(*port)
            }
            SetEntry::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => self.u8(3).ip(ip).protocol(*protocol).u16(*port).ip(ip2),
            SetEntry::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => self.u8(4).ip(ip).protocol(*protocol).u16(*port).net(net),
            SetEntry::Net { net, nomatch } => self.u8(5).net(net).u8(u8::from(*nomatch)),
            SetEntry::Port(port) => self.u8(6).u16(*port),
        }
    }
}

/// The digest's encoder: an atom's tag, then its fields, into SHA-256;
/// lengths and counts as 4-byte big-endian.
struct Hashing(Sha256);

impl Hashing {
    fn new(tag: u8) -> Self {
        let mut h = Sha256::new();
        h.update([tag]);
        Hashing(h)
    }
    fn finish(&mut self) -> [u8; 32] {
        std::mem::take(&mut self.0).finalize().into()
    }
}

impl Encoder for Hashing {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn length(&mut self, n: usize) {
        // Atoms are far below 4 GiB: validation bounds names and rules.
        self.u32(n as u32);
    }
}

const TAG_SET: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_VS: u8 = 3;
const TAG_VS_BODY: u8 = 4;
const TAG_ADDRESS: u8 = 5;
const TAG_CHAIN: u8 = 6;
const TAG_JUMP: u8 = 7;
const TAG_HEALTH_CHECK: u8 = 8;
const TAG_NODE_CONDITION: u8 = 9;

pub fn hash_set(name: &str, spec: &SetSpec) -> [u8; 32] {
    Hashing::new(TAG_SET)
        .str(name)
        .str(spec.kind.as_str())
        .str(spec.family.as_str())
        .u32(spec.maxelem)
        .str(&spec.comment)
        .finish()
}

pub fn hash_entry(set: &str, entry: &SetEntry) -> [u8; 32] {
    Hashing::new(TAG_ENTRY).str(set).entry(entry).finish()
}

pub(crate) fn hash_virtual_server_body(vs: &VirtualServer) -> [u8; 32] {
    let mut e = Hashing::new(TAG_VS_BODY);
    e.str(vs.scheduler.as_str());
    match vs.persistence_timeout {
        None => e.u8(0),
        Some(timeout) => e.u8(1).u32(timeout),
    };
    e.length(vs.real_servers.len());
    for rs in &vs.real_servers {
        e.ip(&rs.address)
            .u16(rs.port)
            .u32(rs.weight)
            .forward(rs.forward);
    }
    e.finish()
}

pub fn hash_virtual_server(key: &VirtualServerKey, vs: &VirtualServer) -> [u8; 32] {
    let mut e = Hashing::new(TAG_VS);
    e.ip(&key.address).protocol(key.protocol).u16(key.port);
    e.bytes(vs.body_hash());
    e.finish()
}

pub fn hash_address(addr: &IpAddr) -> [u8; 32] {
    Hashing::new(TAG_ADDRESS).ip(addr).finish()
}

pub fn hash_chain(key: &ChainKey, chain: &Chain) -> [u8; 32] {
    let mut e = Hashing::new(TAG_CHAIN);
    e.str(key.family.as_str())
        .str(key.table.as_str())
        .str(&key.name)
        .length(chain.rules.len());
    for rule in &chain.rules {
        e.rule(rule);
    }
    e.finish()
}

pub fn hash_jump(jump: &Jump) -> [u8; 32] {
    Hashing::new(TAG_JUMP)
        .str(jump.family.as_str())
        .str(jump.table.as_str())
        .str(&jump.from)
        .u16(jump.position)
        .rule(&jump.rule)
        .finish()
}

pub fn hash_health_check(port: u16, check: &HealthCheck) -> [u8; 32] {
    Hashing::new(TAG_HEALTH_CHECK)
        .u16(port)
        .str(&check.namespace)
        .str(&check.name)
        .u32(check.local_endpoints)
        .finish()
}

pub fn hash_node_condition(condition: NodeCondition) -> [u8; 32] {
    Hashing::new(TAG_NODE_CONDITION)
        .str(condition.as_str())
        .finish()
}
