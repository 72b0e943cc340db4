//! Revisions as rows: whether one exists, pages of them with their cause,
//! the nodes one changed.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::lines;
use crate::db::{self, RevisionRow};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{Cause, Epoch, RevisionAction, RevisionId, RevisionInfo};

impl Store {
    pub(crate) async fn revision_row(&self, revision: RevisionId) -> Result<RevisionRow> {
        let r = i64::try_from(revision.0).map_err(|_| StoreError::UnknownRevision(revision))?;
        self.db
            .revision(r)
            .await?
            .ok_or(StoreError::UnknownRevision(revision))
    }

    /// A GC may delete a revision while it is read, and the rows it
    /// resolved through with it: whatever was read is only trusted if the
    /// revision still exists afterwards (GC deletes the revision row first).
    pub(super) async fn still_there<T>(&self, revision: RevisionId, read: Result<T>) -> Result<T> {
        match self.revision_row(revision).await {
            Err(e @ StoreError::UnknownRevision(_)) => Err(e),
            _ => read,
        }
    }

    /// Up to `page_size` revisions older than `before` (all when `None`),
    /// newest first. The next page is `before = Some(last.revision)`.
    pub async fn list_revisions(
        &self,
        page_size: u32,
        before: Option<RevisionId>,
    ) -> Result<Vec<RevisionInfo>> {
        let before = match before {
            Some(r) => i64::try_from(r.0).unwrap_or(i64::MAX),
            None => i64::MAX,
        };
        let rows = self
            .db
            .revisions_before(before, i64::from(page_size))
            .await?;
        let (Some(high), Some(low)) = (rows.first(), rows.last()) else {
            return Ok(Vec::new());
        };
        let mut objects: HashMap<i64, Vec<String>> = HashMap::new();
        for (r, o) in self.db.objects_between(low.revision, high.revision).await? {
            objects.entry(r).or_default().push(o);
        }
        rows.into_iter()
            .map(|row| {
                let action = action_of(&row)?;
                Ok(RevisionInfo {
                    revision: RevisionId(db::to_u64(row.revision, "revisions", "revision")?),
                    committed_ms: row.committed_ms,
                    epoch: Epoch(db::to_u64(row.epoch, "revisions", "epoch")?),
                    cause: Cause {
                        objects: objects.remove(&row.revision).unwrap_or_default(),
                        summary: row.summary,
                    },
                    nodes_changed: db::to_u64(row.nodes_changed, "revisions", "nodes_changed")?,
                    shared_changed: lines(&row.shared_changed),
                    action,
                })
            })
            .collect()
    }

    /// Nodes whose current state changed at `revision`: those whose
    /// composition was written then and those using a shared part written
    /// then, unless a rollback pinned them earlier; and those rolled back
    /// or resumed at `revision`.
    pub async fn changed_nodes(&self, revision: RevisionId) -> Result<Vec<String>> {
        let row = self.revision_row(revision).await?;
        let mut out: BTreeSet<String> = self
            .db
            .nodes_written_at(row.revision)
            .await?
            .into_iter()
            .collect();
        let changed: HashSet<String> = lines(&row.shared_changed).into_iter().collect();
        if !changed.is_empty() {
            for (node, db::NodeRow { shared, .. }) in self.db.node_rows_at(row.revision).await? {
                if shared.is_some_and(|s| s.split('\n').any(|name| changed.contains(name))) {
                    out.insert(node);
                }
            }
        }
        for pin in self.db.pins_at(row.revision).await? {
            if pin.revision == row.revision {
                out.insert(pin.node);
            } else if pin.parts.is_some() {
                out.remove(&pin.node);
            }
        }
        let out = self.still_there(revision, Ok(out)).await?;
        Ok(out.into_iter().collect())
    }
}

fn action_of(row: &RevisionRow) -> Result<RevisionAction> {
    match (row.action.as_str(), row.target) {
        ("commit", _) => Ok(RevisionAction::Commit),
        ("resume", _) => Ok(RevisionAction::Resume),
        ("rollback", Some(to)) => Ok(RevisionAction::Rollback {
            to: RevisionId(db::to_u64(to, "revisions", "target")?),
        }),
        (other, target) => Err(StoreError::BadRow {
            table: "revisions",
            reason: format!("action {other:?} with target {target:?}"),
        }),
    }
}
