//! The `revisions` row and the objects that caused it (`revision_objects`).

use sqlx::Row;

use super::{Db, PG_BATCH, Tx};
use crate::error::{Context, Result};

/// A `revisions` row.
pub(crate) struct RevisionRow {
    pub revision: i64,
    pub committed_ms: i64,
    pub epoch: i64,
    pub summary: String,
    pub nodes_changed: i64,
    pub shared_changed: String,
    /// 'commit', 'rollback' or 'resume'.
    pub action: String,
    /// The revision a rollback went back to.
    pub target: Option<i64>,
}

fn revision_row<R: Row>(row: &R) -> std::result::Result<RevisionRow, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(RevisionRow {
        revision: row.try_get(0)?,
        committed_ms: row.try_get(1)?,
        epoch: row.try_get(2)?,
        summary: row.try_get(3)?,
        nodes_changed: row.try_get(4)?,
        shared_changed: row.try_get(5)?,
        action: row.try_get(6)?,
        target: row.try_get(7)?,
    })
}

impl Db {
    pub(crate) async fn revision(&self, revision: i64) -> Result<Option<RevisionRow>> {
        let sql = "SELECT revision, committed_ms, epoch, summary, nodes_changed, shared_changed,
                          action, target
                     FROM revisions WHERE revision = $1";
        on_pool!(self, p => {
            let row = sqlx::query(sql).bind(revision).fetch_optional(p).await.what("reading a revision")?;
            row.as_ref().map(revision_row).transpose().what("decoding a revision")
        })
    }

    pub(crate) async fn revisions_before(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<RevisionRow>> {
        let sql = "SELECT revision, committed_ms, epoch, summary, nodes_changed, shared_changed,
                          action, target
                     FROM revisions WHERE revision < $1 ORDER BY revision DESC LIMIT $2";
        on_pool!(self, p => {
            let rows = sqlx::query(sql).bind(before).bind(limit).fetch_all(p).await.what("listing revisions")?;
            rows.iter().map(revision_row).collect::<std::result::Result<Vec<_>, _>>().what("decoding revisions")
        })
    }

    pub(crate) async fn objects_between(&self, low: i64, high: i64) -> Result<Vec<(i64, String)>> {
        on_pool!(self, p => sqlx::query_as::<_, (i64, String)>(
            "SELECT revision, object FROM revision_objects
              WHERE revision >= $1 AND revision <= $2 ORDER BY revision, object"
        )
        .bind(low)
        .bind(high)
        .fetch_all(p)
        .await
        .what("reading revision causes"))
    }
}

impl Tx {
    pub(crate) async fn insert_revision(&mut self, row: &RevisionRow) -> Result<()> {
        on_tx!(self, c => sqlx::query(
            "INSERT INTO revisions (revision, committed_ms, epoch, summary, nodes_changed, shared_changed,
                                    action, target)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(row.revision)
        .bind(row.committed_ms)
        .bind(row.epoch)
        .bind(&row.summary)
        .bind(row.nodes_changed)
        .bind(&row.shared_changed)
        .bind(&row.action)
        .bind(row.target)
        .execute(&mut *c)
        .await
        .map(|_| ())
        .what("writing the revision"))
    }

    pub(crate) async fn insert_objects(&mut self, revision: i64, objects: &[String]) -> Result<()> {
        let sql = "INSERT INTO revision_objects (revision, object) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING";
        match self {
            Tx::Postgres(t) => {
                for batch in objects.chunks(PG_BATCH) {
                    sqlx::query(
                        "INSERT INTO revision_objects (revision, object)
                         SELECT $1, o FROM UNNEST($2::text[]) AS o ON CONFLICT DO NOTHING",
                    )
                    .bind(revision)
                    .bind(batch)
                    .execute(&mut **t)
                    .await
                    .what("writing the revision's cause")?;
                }
            }
            Tx::Sqlite(t) => {
                for o in objects {
                    sqlx::query(sql)
                        .bind(revision)
                        .bind(o)
                        .execute(&mut **t)
                        .await
                        .what("writing the revision's cause")?;
                }
            }
        }
        Ok(())
    }
}
