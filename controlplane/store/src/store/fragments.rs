//! Fragments by key: from the decoded cache, or read from the content
//! tables and decoded, every byte checked against its key.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use setpoint_dataplane::{Digest, Fragment};

use crate::chunk::{self, FragmentHeader};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::RevisionId;

impl Store {
    /// Fragments by key, every byte checked against its key.
    pub(crate) async fn load_fragments(
        &self,
        node: &str,
        revision: RevisionId,
        keys: &BTreeSet<Digest>,
    ) -> Result<HashMap<Digest, Arc<Fragment>>> {
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            if let Some(f) = self.decoded.get(key) {
                out.insert(*key, f);
            }
        }
        let wanted: Vec<Digest> = keys
            .iter()
            .filter(|k| !out.contains_key(*k))
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(out);
        }
        let (claim, others) = self.decoded.claim(&wanted);
        if !claim.keys.is_empty() {
            out.extend(self.decode_from_tables(node, revision, &claim.keys).await?);
        }
        drop(claim);
        let mut left = Vec::new();
        for (key, wait) in others {
            wait.done().await;
            match self.decoded.get(&key) {
                Some(f) => {
                    out.insert(key, f);
                }
                // The other reader failed, or dropped it uncached.
                None => left.push(key),
            }
        }
        if !left.is_empty() {
            out.extend(self.decode_from_tables(node, revision, &left).await?);
        }
        Ok(out)
    }

    /// Reads and decodes `wanted` from the tables, checking every byte,
    /// and records them in the decoded cache.
    async fn decode_from_tables(
        &self,
        node: &str,
        revision: RevisionId,
        wanted: &[Digest],
    ) -> Result<HashMap<Digest, Arc<Fragment>>> {
        let corrupt = |source| StoreError::Corrupt {
            node: node.to_string(),
            revision,
            source: Box::new(source),
        };
        let missing = |what: &'static str, key: &Digest| StoreError::Missing {
            node: node.to_string(),
            revision,
            what,
            key: key.to_string(),
        };
        let mut out = HashMap::with_capacity(wanted.len());
        let rows = self.db.fragments(wanted).await?;
        let headers: HashMap<Digest, FragmentHeader> =
            rows.into_iter().map(|r| (r.key, r.header)).collect();
        // Per fragment: its keys at the current level, and that level.
        let mut walk: Vec<(Digest, FragmentHeader, Vec<Digest>, u8)> = Vec::new();
        for key in wanted {
            let header = headers.get(key).ok_or_else(|| missing("fragment", key))?;
            header.verify(key).map_err(corrupt)?;
            walk.push((*key, *header, vec![header.root], header.height));
        }
        while walk.iter().any(|(_, _, _, level)| *level > 0) {
            let needed: BTreeSet<Digest> = walk
                .iter()
                .filter(|w| w.3 > 0)
                .flat_map(|w| w.2.iter().copied())
                .collect();
            let needed: Vec<Digest> = needed.into_iter().collect();
            let found: HashMap<Digest, (i64, Vec<u8>)> = self
                .db
                .manifests(&needed)
                .await?
                .into_iter()
                .map(|(k, level, body)| (k, (level, body)))
                .collect();
            for (_, _, current, level) in walk.iter_mut().filter(|w| w.3 > 0) {
                let mut children = Vec::new();
                for key in current.iter() {
                    let (_, body) = found.get(key).ok_or_else(|| missing("manifest", key))?;
                    children.extend(chunk::decode_manifest(key, *level, body).map_err(corrupt)?);
                }
                *current = children;
                *level -= 1;
            }
        }
        let chunk_keys: BTreeSet<Digest> = walk.iter().flat_map(|w| w.2.iter().copied()).collect();
        let chunk_keys: Vec<Digest> = chunk_keys.into_iter().collect();
        let bodies: HashMap<Digest, Vec<u8>> =
            self.db.chunks(&chunk_keys).await?.into_iter().collect();
        if let Some(c) = chunk_keys.iter().find(|c| !bodies.contains_key(*c)) {
            return Err(missing("chunk", c));
        }
        let bytes: usize = bodies.values().map(Vec::len).sum();
        let assembled = if bytes < PARALLEL_DECODE_BYTES {
            decode_all(walk, &bodies)
        } else {
            // Hashing and parsing a big fragment's chunks is most of a
            // read: on the blocking pool, chunks on every core.
            tokio::task::spawn_blocking(move || decode_all(walk, &bodies))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        };
        for (key, fragment) in assembled {
            out.insert(key, Arc::new(fragment.map_err(corrupt)?));
        }
        for key in wanted {
            if let Some(f) = out.get(key) {
                self.decoded.insert(*key, f);
            }
        }
        Ok(out)
    }
}

/// Chunk bytes from which a read decodes on several threads.
const PARALLEL_DECODE_BYTES: usize = 64 * 1024;

/// Each fragment of `walk` (key, header, chunk keys in order) from its
/// chunks, every byte checked; the chunks of one fragment are decoded in
/// parallel, then put together in order. Every chunk key is in `bodies`.
fn decode_all(
    walk: Vec<(Digest, FragmentHeader, Vec<Digest>, u8)>,
    bodies: &HashMap<Digest, Vec<u8>>,
) -> Vec<(Digest, std::result::Result<Fragment, chunk::ChunkError>)> {
    use rayon::prelude::*;
    walk.into_iter()
        .map(|(key, header, chunks, _)| {
            let decoded: Vec<_> = chunks
                .par_iter()
                .with_min_len(8)
                .map(|c| {
                    // Absent bodies were refused before; an empty one would
                    // fail its hash check anyway.
                    let body = bodies.get(c).map(Vec::as_slice).unwrap_or_default();
                    chunk::decode_chunk(c, body)
                })
                .collect();
            (key, chunk::assemble_decoded(&key, &header, decoded))
        })
        .collect()
}
