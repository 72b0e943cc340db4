//! [`Store::commit`]: prepare against the writer's cache, then one fenced
//! transaction.

use std::sync::Arc;

use super::now_ms;
use super::states::composition;
use crate::db::{self, RevisionRow};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{Cause, CommitRequest, Epoch, FailPoint, RevisionId};
use crate::write::{WriterCache, prepare};

enum Written {
    Revision(i64),
    /// Another writer committed since this one's cache was loaded.
    Moved(i64),
}

impl Store {
    /// Records a revision in one transaction and returns its number.
    ///
    /// Writes grow with the change: chunks, manifests and fragments the
    /// store lacks, a row per shared part whose fragment changed, a row per
    /// node whose composition changed, the revision and its cause. Refused
    /// with [`StoreError::StaleEpoch`] when `req.epoch` is older than the
    /// newest epoch acquired.
    pub async fn commit(&self, req: CommitRequest) -> Result<RevisionId> {
        let epoch = db::to_i64(req.epoch.0, "epoch")?;
        let req = Arc::new(req);
        let mut cache = self.writer.clone().lock_owned().await;
        let mut last_found = 0;
        for _attempt in 0..2 {
            if cache.head.is_none() {
                *cache = self.load_cache().await?;
            }
            let expected = cache.head.unwrap_or(0) + 1;
            let request = req.clone();
            let (returned, prepared) = tokio::task::spawn_blocking(move || {
                let prepared = prepare(&cache, &request);
                (cache, prepared)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
            cache = returned;
            let prepared = prepared?;
            match self.write(&req.cause, epoch, &prepared, expected).await {
                Ok(Written::Revision(revision)) => {
                    prepared.apply(&mut cache, revision);
                    return Ok(RevisionId(db::to_u64(revision, "leader", "head")?));
                }
                Ok(Written::Moved(found)) => {
                    tracing::info!(expected, found, "store moved on; reloading writer cache");
                    last_found = found;
                    cache.head = None;
                }
                Err(e) => {
                    // The transaction rolled back, but a lost connection
                    // may hide a commit: reload before the next one.
                    if !matches!(e, StoreError::StaleEpoch { .. } | StoreError::Injected(_)) {
                        cache.head = None;
                    }
                    return Err(e);
                }
            }
        }
        Err(StoreError::Raced {
            expected: cache.head.unwrap_or(0) + 1,
            found: last_found,
        })
    }

    async fn load_cache(&self) -> Result<WriterCache> {
        let (_, head) = self.db.leader().await?;
        let mut cache = WriterCache {
            head: Some(head),
            ..Default::default()
        };
        for (name, key) in self.db.live_shared(head).await? {
            if let Some(key) = key {
                cache
                    .shared
                    .insert(name, db::digest_of(&key, "shared_parts", "fragment")?);
            }
        }
        for (node, row) in self.db.node_rows_at(head).await? {
            if let Some(c) = composition(&row)? {
                cache.nodes.insert(node, c);
            }
        }
        for pin in self.db.pins_at(head).await? {
            if pin.parts.is_some() {
                cache.pinned.insert(pin.node);
            }
        }
        Ok(cache)
    }

    async fn write(
        &self,
        cause: &Cause,
        epoch: i64,
        p: &crate::write::Prepared,
        expected: i64,
    ) -> Result<Written> {
        let mut tx = self.db.begin().await?;
        let Some(revision) = tx.fence(epoch).await? else {
            tx.rollback().await?;
            let (current, _) = self.db.leader().await?;
            return Err(StoreError::StaleEpoch {
                ours: Epoch(db::to_u64(epoch, "leader", "epoch")?),
                current: Epoch(db::to_u64(current, "leader", "epoch")?),
            });
        };
        if revision != expected {
            tx.rollback().await?;
            return Ok(Written::Moved(revision));
        }
        tx.insert_revision(&RevisionRow {
            revision,
            committed_ms: now_ms(),
            epoch,
            summary: cause.summary.clone(),
            nodes_changed: db::to_i64(p.nodes_changed, "node count")?,
            shared_changed: p.shared_changed(),
            action: "commit".into(),
            target: None,
        })
        .await?;
        tx.insert_objects(revision, &p.objects).await?;
        tx.insert_chunks(&p.chunks.iter().collect::<Vec<_>>())
            .await?;
        tx.insert_manifests(&p.manifests.iter().collect::<Vec<_>>())
            .await?;
        tx.insert_fragments(&p.fragments).await?;
        self.failing_at(FailPoint::AfterContent)?;
        tx.insert_shared(revision, &p.shared_rows).await?;
        tx.insert_nodes(revision, &p.node_rows).await?;
        self.failing_at(FailPoint::BeforeCommit)?;
        tx.commit().await?;
        Ok(Written::Revision(revision))
    }
}
