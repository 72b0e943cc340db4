//! What gc reads and deletes: revision times, superseded versions, the
//! references that keep content alive and unreferenced content.

use setpoint_dataplane::Digest;

use super::{Db, Tx, digest_of};
use crate::error::{Context, Result, StoreError};

/// The tables whose rows are versioned by revision, and their key column.
pub(crate) const VERSIONED: [(&str, &str); 3] = [
    ("nodes", "node"),
    ("shared_parts", "name"),
    ("node_pins", "node"),
];

/// The content tables, in the order a sweep deletes from them (a fragment
/// before the manifests it names, a manifest before its chunks).
pub(crate) const CONTENT: [&str; 3] = ["fragments", "manifests", "chunks"];

impl Db {
    /// (revision, committed_ms) of every revision, oldest first.
    pub(crate) async fn revision_times(&self) -> Result<Vec<(i64, i64)>> {
        on_pool!(self, p => sqlx::query_as::<_, (i64, i64)>(
            "SELECT revision, committed_ms FROM revisions ORDER BY revision"
        )
        .fetch_all(p)
        .await
        .what("listing revisions for retention"))
    }

    /// Deletes the rows of `table` (one of [`VERSIONED`]) with a revision
    /// in `[low, high)` that a newer row of the same key at or before
    /// `keep` supersedes. Returns how many.
    pub(crate) async fn delete_superseded(
        &self,
        (table, key): (&str, &str),
        low: i64,
        high: i64,
        keep: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {table} WHERE revision >= $1 AND revision < $2
               AND EXISTS (SELECT 1 FROM {table} t
                            WHERE t.{key} = {table}.{key}
                              AND t.revision > {table}.revision AND t.revision <= $3)"
        );
        on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(low)
            .bind(high)
            .bind(keep)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            .what("deleting superseded versions"))
    }

    /// Fragment keys named by rows of revision > `after`: shared parts,
    /// node compositions (`own`) and pins (`parts`), as raw column values.
    pub(crate) async fn references_after(
        &self,
        after: i64,
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        on_pool!(self, p => {
            let shared = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT fragment FROM shared_parts WHERE revision > $1 AND fragment IS NOT NULL"
            )
            .bind(after)
            .fetch_all(p)
            .await
            .what("reading shared part references")?;
            let mut packed = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT own FROM nodes WHERE revision > $1 AND own IS NOT NULL"
            )
            .bind(after)
            .fetch_all(p)
            .await
            .what("reading node references")?;
            packed.extend(sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT parts FROM node_pins WHERE revision > $1 AND parts IS NOT NULL"
            )
            .bind(after)
            .fetch_all(p)
            .await
            .what("reading pin references")?);
            Ok((shared, packed))
        })
    }

    /// Every key of a content table (one of [`CONTENT`]).
    pub(crate) async fn content_keys(&self, table: &str) -> Result<Vec<Digest>> {
        let sql = format!("SELECT digest FROM {table}");
        let raw = on_pool!(self, p => sqlx::query_scalar::<_, Vec<u8>>(sqlx::AssertSqlSafe(sql))
            .fetch_all(p)
            .await
            .what("listing content keys"))?;
        raw.iter()
            .map(|k| digest_of(k, "content", "digest"))
            .collect()
    }
}

impl Tx {
    pub(crate) async fn delete_revisions(&mut self, revisions: &[i64]) -> Result<u64> {
        let mut n = 0;
        on_tx!(self, c => {
            for r in revisions {
                n += sqlx::query("DELETE FROM revisions WHERE revision = $1")
                    .bind(*r)
                    .execute(&mut *c)
                    .await
                    .what("deleting revisions")?
                    .rows_affected();
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(n)
    }

    /// Deletes rows of a content table (one of [`CONTENT`]) by key.
    pub(crate) async fn delete_content(&mut self, table: &str, keys: &[Digest]) -> Result<u64> {
        let mut n = 0;
        match self {
            Tx::Postgres(t) => {
                let sql = format!("DELETE FROM {table} WHERE digest = ANY($1)");
                n += sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
                    .execute(&mut **t)
                    .await
                    .what("deleting unreferenced content")?
                    .rows_affected();
            }
            Tx::Sqlite(t) => {
                let sql = format!("DELETE FROM {table} WHERE digest = $1");
                for k in keys {
                    n += sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(&k.0[..])
                        .execute(&mut **t)
                        .await
                        .what("deleting unreferenced content")?
                        .rows_affected();
                }
            }
        }
        Ok(n)
    }
}
