//! Retention: [`Store::gc`] drops revisions outside the windows, the
//! version rows no kept revision reads, then unreferenced content.
//!
//! ```text
//!  1. revisions      delete rows outside Retention (never the head, never
//!                    a pin target); batches under the commit lock
//!  2. version rows   nodes / shared_parts / node_pins rows superseded, at
//!                    or before the next kept revision, by a newer row of
//!                    the same key; plain DELETEs by revision range
//!  3. content        mark: every fragment the remaining rows name, walked
//!                    down to its manifests and chunks; sweep: the rest,
//!                    in batches under the commit lock
//! ```
//!
//! Every step is a short transaction; a commit waits at most one batch.
//! Sweep batches re-mark what commits wrote since the mark (rows with a
//! newer revision) before deleting, so content a commit re-used through
//! `ON CONFLICT DO NOTHING` is never swept from under it. Readers re-check
//! that the revision they read still exists afterwards (step 1 precedes
//! step 2), so a revision collected mid-read is an UnknownRevision error,
//! never a state assembled from half-deleted rows.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::chunk;
use setpoint_dataplane::Digest;

use crate::db::{self, CONTENT, VERSIONED};
use crate::error::Result;
use crate::store::Store;
use crate::types::{GcReport, Retention};
use crate::write::Composition;

/// Revisions or keys per GC transaction.
const GC_BATCH: usize = 500;
/// Revisions per version-row DELETE.
const GC_SLICE: i64 = 256;

/// Content reachable from the rows the mark has seen.
#[derive(Default)]
struct Live {
    fragments: HashSet<Digest>,
    manifests: HashSet<Digest>,
    chunks: HashSet<Digest>,
    /// A live fragment or manifest was missing or did not decode: what it
    /// names is unknown, so no manifest or chunk is swept this time.
    incomplete: bool,
}

impl Live {
    fn of(&self, table: &str) -> &HashSet<Digest> {
        match table {
            "fragments" => &self.fragments,
            "manifests" => &self.manifests,
            _ => &self.chunks,
        }
    }
}

impl Store {
    /// Deletes the revisions `retention` does not keep, what only they
    /// read, and content no remaining row reaches. Kept revisions read
    /// exactly as before; collected ones are
    /// [`crate::StoreError::UnknownRevision`]. Runs beside commits.
    pub async fn gc(&self, retention: Retention) -> Result<GcReport> {
        let mut report = GcReport::default();
        let retained = self.collect_revisions(retention, &mut report).await?;
        self.collect_versions(&retained, &mut report).await?;
        self.sweep_content(&mut report).await?;
        tracing::info!(?report, "store gc");
        Ok(report)
    }

    /// Step 1; returns the revisions kept.
    async fn collect_revisions(
        &self,
        retention: Retention,
        report: &mut GcReport,
    ) -> Result<BTreeSet<i64>> {
        let times = self.db.revision_times().await?;
        let keep_newest = retention.keep_newest.max(1);
        let cutoff = retention
            .now_ms
            .saturating_sub(retention.keep_younger_than_ms.max(0));
        let mut retained: BTreeSet<i64> = times
            .iter()
            .rev()
            .take(keep_newest)
            .map(|(r, _)| *r)
            .collect();
        retained.extend(times.iter().filter(|(_, t)| *t >= cutoff).map(|(r, _)| *r));
        let doomed: Vec<i64> = times
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| !retained.contains(r))
            .collect();
        for batch in doomed.chunks(GC_BATCH) {
            let mut tx = self.db.begin().await?;
            let head = tx.lock_head().await?;
            // Read under the lock: a rollback that just pinned a node to
            // one of these keeps it.
            let targets: HashSet<i64> = tx.pin_targets(head).await?.into_iter().collect();
            let batch: Vec<i64> = batch
                .iter()
                .copied()
                .filter(|r| {
                    let pinned = targets.contains(r);
                    if pinned {
                        retained.insert(*r);
                    }
                    !pinned
                })
                .collect();
            report.revisions += tx.delete_revisions(&batch).await?;
            tx.commit().await?;
        }
        Ok(retained)
    }

    /// Step 2: between consecutive kept revisions a < b, a row at r in
    /// (a, b) serves no kept revision when a newer row of its key exists at
    /// or before b.
    async fn collect_versions(
        &self,
        retained: &BTreeSet<i64>,
        report: &mut GcReport,
    ) -> Result<()> {
        let mut low = 1;
        for &keep in retained {
            let mut start = low;
            while start < keep {
                let end = start.saturating_add(GC_SLICE).min(keep);
                for table in VERSIONED {
                    report.version_rows +=
                        self.db.delete_superseded(table, start, end, keep).await?;
                }
                start = end;
            }
            low = keep + 1;
        }
        Ok(())
    }

    /// Step 3.
    async fn sweep_content(&self, report: &mut GcReport) -> Result<()> {
        let (_, mut marked) = self.db.leader().await?;
        let mut live = Live::default();
        self.mark_after(0, &mut live).await?;
        for table in CONTENT {
            if live.incomplete && table != "fragments" {
                tracing::warn!(table, "store gc: a live fragment is damaged; not sweeping");
                continue;
            }
            let garbage: Vec<Digest> = self
                .db
                .content_keys(table)
                .await?
                .into_iter()
                .filter(|k| !live.of(table).contains(k))
                .collect();
            for batch in garbage.chunks(GC_BATCH) {
                let mut tx = self.db.begin().await?;
                let head = tx.lock_head().await?;
                if head != marked {
                    // Commits since the mark may name content the mark
                    // took for garbage; no commit runs while this holds.
                    self.mark_after(marked, &mut live).await?;
                    marked = head;
                    if live.incomplete && table != "fragments" {
                        break;
                    }
                }
                let batch: Vec<Digest> = batch
                    .iter()
                    .copied()
                    .filter(|k| !live.of(table).contains(k))
                    .collect();
                let n = tx.delete_content(table, &batch).await?;
                match table {
                    "fragments" => report.fragments += n,
                    "manifests" => report.manifests += n,
                    _ => report.chunks += n,
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Marks live everything the rows of revision > `after` reach.
    async fn mark_after(&self, after: i64, live: &mut Live) -> Result<()> {
        let (shared, packed) = self.db.references_after(after).await?;
        let mut new: BTreeSet<Digest> = BTreeSet::new();
        for key in shared {
            new.insert(db::digest_of(&key, "shared_parts", "fragment")?);
        }
        for parts in packed {
            new.extend(Composition::decode("", &parts)?.own.into_values());
        }
        new.retain(|k| live.fragments.insert(*k));
        let wanted: Vec<Digest> = new.into_iter().collect();
        // (key, level): manifests above level 0, chunks at it.
        let mut frontier: Vec<(Digest, u8)> = Vec::new();
        for batch in wanted.chunks(GC_BATCH) {
            let rows = self.db.fragments(batch).await?;
            live.incomplete |= rows.len() != batch.len();
            for row in rows {
                frontier.push((row.header.root, row.header.height));
            }
        }
        while !frontier.is_empty() {
            let mut manifests = Vec::new();
            for (key, level) in frontier.drain(..) {
                if level == 0 {
                    live.chunks.insert(key);
                } else if live.manifests.insert(key) {
                    manifests.push((key, level));
                }
            }
            for batch in manifests.chunks(GC_BATCH) {
                let keys: Vec<Digest> = batch.iter().map(|(k, _)| *k).collect();
                let levels: HashMap<Digest, u8> = batch.iter().copied().collect();
                let rows = self.db.manifests(&keys).await?;
                live.incomplete |= rows.len() != keys.len();
                for (key, _, body) in rows {
                    let Some(&level) = levels.get(&key) else {
                        continue;
                    };
                    // Readers report a corrupt manifest; GC only stops
                    // sweeping below it.
                    match chunk::decode_manifest(&key, level, &body) {
                        Ok(children) => {
                            frontier.extend(children.into_iter().map(|c| (c, level - 1)));
                        }
                        Err(_) => live.incomplete = true,
                    }
                }
            }
        }
        Ok(())
    }
}
