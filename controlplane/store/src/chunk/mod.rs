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
//! - `order`: atoms in canonical order ([`AtomKey`]): set definitions each
//!   followed by their entries (sets by name), then virtual servers,
//!   addresses, chains, jumps, health checks and node conditions; walking
//!   a fragment from a position, and the positions two versions differ at.
//!   Tags of kinds added later come after the first ones, so bytes
//!   written before stay readable.
//! - `codec`: an atom's bytes (the contract's `digest::Encoder` fields,
//!   LEB128 lengths) and a chunk's decoding, through the contract's
//!   `AtomRun`, which hashes the atoms and checks their order.
//! - `chunker`: where chunks end, and [`ChunkedFragment`], which re-encodes
//!   only the chunks around an edit. Past a minimum size, a chunk ends
//!   after an atom whose digest-derived hash falls under a threshold
//!   proportional to the atom's encoded size, or when it reaches a maximum
//!   size or atom count ([`Cuts`]). Boundaries depend on content, not on
//!   position, so an edit moves at most the boundaries next to it, and the
//!   same fragment always gives the same chunks under one rule, whatever
//!   its history.
//! - `manifest`: the tree of manifests over the chunks, and the
//!   [`FragmentHeader`] naming its root.
//!
//! Every stored object is keyed by the SHA-256 of its bytes, and decoding
//! checks the key first: bytes that do not hash to their key, or that do not
//! parse, are a [`ChunkError`] naming the object, never a different state.
//!
//! Pure: no I/O.

mod chunker;
mod codec;
mod manifest;
mod order;
#[cfg(test)]
mod tests;

use setpoint_dataplane::{AtomError, Digest, Fragment};
use sha2::{Digest as _, Sha256};

pub use chunker::{Chunk, ChunkedFragment};
pub use codec::{BodyError, DecodedChunk, decode_chunk};
pub use manifest::{FragmentHeader, Manifest, decode_manifest};
pub use order::{AtomKey, AtomRef, atoms_after, changed_keys};

/// Format byte at the start of every chunk, manifest and header body.
pub const CHUNK_FORMAT: u8 = 1;
/// Where chunks and manifests end: the boundary rule's sizes. Readers do
/// not depend on it (a fragment is its chunks in order, whatever cut them),
/// so stores written under an earlier rule read unchanged; only the writer
/// uses it, and a writer under a new rule stores each fragment it writes
/// once more in full before edits share chunks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cuts {
    /// No content-defined boundary before a chunk has this many bytes.
    pub min_chunk_bytes: usize,
    /// Past `min_chunk_bytes`, an atom ends its chunk with a probability of
    /// its encoded size over this (its digest-derived hash under a
    /// threshold): chunks average about `min_chunk_bytes` plus this.
    pub chunk_cut_bytes: usize,
    /// A chunk is cut once it reaches this size (one atom may exceed it
    /// alone).
    pub max_chunk_bytes: usize,
    /// A chunk is cut once it holds this many atoms.
    pub max_chunk_atoms: usize,
    /// No content-defined boundary before a manifest has this many
    /// children.
    pub min_fanout: usize,
    /// Past `min_fanout`, a child ends its manifest with a probability of
    /// one over this (its key under a threshold): manifests average about
    /// `min_fanout` plus this many children.
    pub fanout_cut: u64,
    /// Most children a manifest node has.
    pub max_fanout: usize,
}

impl Cuts {
    /// The rule of stores written before [`Cuts::CURRENT`]: boundaries
    /// from 256 bytes and 2 children on, chunks of about 2 KiB and
    /// manifests of about 32 children. Sizes spread widely, and the chunk
    /// and manifest a random edit lands in are about twice the average
    /// (3.5 KiB chunks, 1.7 KiB manifests measured): a LoadBalancer
    /// Service's one-endpoint change, three separate atoms of `services`,
    /// grew a store by 15–23 KiB.
    pub const FIRST: Cuts = Cuts {
        min_chunk_bytes: 256,
        chunk_cut_bytes: 2048,
        max_chunk_bytes: 8192,
        max_chunk_atoms: 1024,
        min_fanout: 2,
        fanout_cut: 32,
        max_fanout: 128,
    };

    /// What a store writes: chunks of about 1 KiB and manifests of about
    /// 16 children, neither cut before half of that, so sizes spread
    /// little and what an edit rewrites is close to the average.
    pub const CURRENT: Cuts = Cuts {
        min_chunk_bytes: 512,
        chunk_cut_bytes: 512,
        max_chunk_bytes: 4096,
        max_chunk_atoms: 1024,
        min_fanout: 8,
        fanout_cut: 8,
        max_fanout: 64,
    };
}

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
        reason: BodyError,
    },
    #[error("manifest {key}: bytes hash to {actual}, not to the manifest's key")]
    ManifestDigest { key: Digest, actual: Digest },
    #[error("manifest {key}: {reason}")]
    ManifestBody { key: Digest, reason: ManifestError },
    #[error("fragment {key}: header hashes to {actual}, not to the fragment's key")]
    HeaderDigest { key: Digest, actual: Digest },
    #[error("fragment {key}: {reason}")]
    Fragment { key: Digest, reason: AssemblyError },
}

/// What is wrong in a manifest's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{0} bytes of child keys")]
    ChildKeys(usize),
    #[error("level {found}, expected {expected}")]
    Level { found: u8, expected: u8 },
    #[error("not a manifest of this format")]
    Format,
}

/// Why chunks that each decode do not make the fragment a header names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("chunk {0} repeats atoms of an earlier chunk")]
    Repeated(Digest),
    #[error("chunk {0} is out of canonical order")]
    OutOfOrder(Digest),
    #[error("chunks hold {listed} atoms, header records {recorded}")]
    Count { listed: u64, recorded: u64 },
    #[error("content digest {actual}, header records {recorded}")]
    Digest { actual: Digest, recorded: Digest },
}

/// The key of stored bytes.
fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
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
                AtomError::Repeated => AssemblyError::Repeated(chunk_key),
                AtomError::OutOfOrder | AtomError::NoSet => AssemblyError::OutOfOrder(chunk_key),
            },
        })?;
        listed += count;
    }
    if listed != header.atoms || f.atom_count() != header.atoms {
        return Err(ChunkError::Fragment {
            key: *key,
            reason: AssemblyError::Count {
                listed,
                recorded: header.atoms,
            },
        });
    }
    let actual = f.digest();
    if actual != header.digest {
        return Err(ChunkError::Fragment {
            key: *key,
            reason: AssemblyError::Digest {
                actual,
                recorded: header.digest,
            },
        });
    }
    Ok(f)
}
