//! Where chunks end, and a fragment's chunking kept from one version to the
//! next so that only the chunks around an edit are encoded again.

use std::collections::HashSet;
use std::sync::Arc;

use setpoint_dataplane::{Digest, Fragment};

use super::codec::ChunkWriter;
use super::manifest::{FragmentHeader, Manifest, manifest_tree};
use super::order::{AtomKey, AtomRef, atoms_after, changed_keys};
use super::{Cuts, sha256};

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
pub(super) struct Span {
    key: Digest,
    last: AtomKey,
    /// Ended by the boundary rule; false for a fragment's last chunk when
    /// the atoms simply ran out (no boundary to resynchronise on).
    closed: bool,
}

/// Builds chunks from a stream of atoms.
struct Chunker {
    cuts: Cuts,
    w: ChunkWriter,
    atoms: usize,
    last: Option<AtomKey>,
}

impl Chunker {
    fn new(cuts: Cuts) -> Self {
        Chunker {
            cuts,
            w: ChunkWriter::new(),
            atoms: 0,
            last: None,
        }
    }

    /// Adds an atom; returns the finished chunk when a boundary follows it.
    fn push(&mut self, atom: AtomRef<'_>) -> Option<(Span, Chunk)> {
        let atom_len = self.w.push(&atom) as u128;
        self.atoms += 1;
        let len = self.w.len();
        let cuts = &self.cuts;
        let cut = if len >= cuts.max_chunk_bytes || self.atoms >= cuts.max_chunk_atoms {
            true
        } else if len < cuts.min_chunk_bytes {
            false
        } else {
            let hash = atom.hash();
            let mut h = [0u8; 8];
            h.copy_from_slice(&hash[24..32]);
            let threshold = (atom_len << 64) / cuts.chunk_cut_bytes.max(1) as u128;
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
        let done = std::mem::replace(self, Chunker::new(self.cuts));
        if done.atoms == 0 {
            return None;
        }
        let body = done.w.into_body();
        let key = sha256(&body);
        Some((
            Span { key, last, closed },
            Chunk {
                key,
                body,
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

/// A fragment with its chunk boundaries and manifest tree. Updating it with
/// the next version of the fragment re-encodes only the chunks around the
/// atoms that changed.
#[derive(Clone, Debug)]
pub struct ChunkedFragment {
    cuts: Cuts,
    fragment: Arc<Fragment>,
    pub(super) spans: Vec<Span>,
    manifests: Vec<Manifest>,
    header: FragmentHeader,
}

impl ChunkedFragment {
    /// Chunks a whole fragment under [`Cuts::CURRENT`], what a store
    /// writes. Returns every chunk.
    pub fn new(fragment: Arc<Fragment>) -> (ChunkedFragment, Vec<Chunk>) {
        Self::with_cuts(fragment, Cuts::CURRENT)
    }

    /// Chunks a whole fragment under `cuts` (tests: what a store under an
    /// earlier rule wrote). Returns every chunk.
    pub fn with_cuts(fragment: Arc<Fragment>, cuts: Cuts) -> (ChunkedFragment, Vec<Chunk>) {
        let mut spans = Vec::new();
        let mut chunks = Vec::new();
        let mut chunker = Chunker::new(cuts);
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
        (Self::with_spans(cuts, fragment, spans), chunks)
    }

    fn with_spans(cuts: Cuts, fragment: Arc<Fragment>, spans: Vec<Span>) -> ChunkedFragment {
        let keys: Vec<Digest> = spans.iter().map(|s| s.key).collect();
        let manifests = manifest_tree(&cuts, &keys);
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
            cuts,
            fragment,
            spans,
            manifests,
            header,
        }
    }

    /// The chunking of `next`, reusing this one's chunks where the atoms
    /// did not change. Returns the chunks that were encoded anew (a chunk
    /// equal to one of this version's is not returned). The result is the
    /// same as [`ChunkedFragment::with_cuts`] of `next` under this one's
    /// rule.
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
            return Self::with_cuts(next, self.cuts);
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
            let mut chunker = Chunker::new(self.cuts);
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
        (Self::with_spans(self.cuts, next, spans), chunks)
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
