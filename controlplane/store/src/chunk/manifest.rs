//! The tree of manifests over a fragment's chunks, and the header that
//! names its root: what a node state refers to.

use setpoint_dataplane::Digest;

use super::{CHUNK_FORMAT, ChunkError, Cuts, ManifestError, sha256};

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
    let bad = |reason: ManifestError| ChunkError::ManifestBody { key: *key, reason };
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
            Err(bad(ManifestError::ChildKeys(rest.len())))
        }
        [CHUNK_FORMAT, l, ..] => Err(bad(ManifestError::Level {
            found: *l,
            expected: level,
        })),
        _ => Err(bad(ManifestError::Format)),
    }
}

/// Groups `children` into manifests of one level, boundaries chosen by the
/// children's keys.
fn manifest_level(cuts: &Cuts, level: u8, children: &[Digest]) -> Vec<Manifest> {
    let threshold = u64::MAX / cuts.fanout_cut.max(1);
    // At least two children before a boundary, so each level is at most
    // half the one below.
    let min = cuts.min_fanout.max(2);
    let max = cuts.max_fanout.max(min);
    let mut out = Vec::new();
    let mut start = 0;
    for (i, child) in children.iter().enumerate() {
        let n = i + 1 - start;
        let mut h = [0u8; 8];
        h.copy_from_slice(&child.0[16..24]);
        if n >= max || (n >= min && u64::from_le_bytes(h) < threshold) {
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
pub(super) fn manifest_tree(cuts: &Cuts, chunks: &[Digest]) -> Vec<Manifest> {
    let mut all = Vec::new();
    let mut level = 1u8;
    let mut current = manifest_level(cuts, level, chunks);
    // Every node but the last of a level has at least two children, so each
    // level is at most half the one below: 64 levels cannot be exceeded.
    while current.len() > 1 && level < u8::MAX {
        let keys: Vec<Digest> = current.iter().map(|m| m.key).collect();
        all.append(&mut current);
        level += 1;
        current = manifest_level(cuts, level, &keys);
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
