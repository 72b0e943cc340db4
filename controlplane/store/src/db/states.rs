//! What a node has at a revision: its `nodes` rows (composition) and the
//! `shared_parts` rows they name, each read as the newest at or before it.

use std::collections::HashMap;

use setpoint_dataplane::Digest;

use super::{Db, PG_BATCH, Tx};
use crate::error::{Context, Result, StoreError};

/// A `nodes` row; `shared` is `None` for a removed node.
pub(crate) struct NodeRow {
    pub revision: i64,
    pub shared: Option<String>,
    pub own: Option<Vec<u8>>,
    pub state_digest: Option<Vec<u8>>,
}

/// A `nodes` row to write.
pub(crate) struct NewNodeRow {
    pub node: String,
    pub shared: Option<String>,
    pub own: Option<Vec<u8>>,
    pub state_digest: Option<Vec<u8>>,
}

impl Db {
    /// Newest fragment of each shared part at or before `head` (removed
    /// parts have `None`).
    pub(crate) async fn live_shared(&self, head: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let rows = self
            .newest_shared_rows(head, "loading current shared parts")
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, _, fragment)| (name, fragment))
            .collect())
    }

    /// Newest row of each node at or before `revision`, as [`NodeRow`]s.
    pub(crate) async fn node_rows_at(&self, revision: i64) -> Result<Vec<(String, NodeRow)>> {
        on_pool!(self, p => {
            let rows = sqlx::query_as::<_, (String, i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>)>(
                "SELECT n.node, n.revision, n.shared, n.own, n.state_digest FROM nodes n
                  WHERE n.revision = (SELECT MAX(m.revision) FROM nodes m
                                       WHERE m.node = n.node AND m.revision <= $1)"
            )
            .bind(revision)
            .fetch_all(p)
            .await
            .what("loading node rows")?;
            Ok(rows
                .into_iter()
                .map(|(node, revision, shared, own, state_digest)| {
                    (node, NodeRow { revision, shared, own, state_digest })
                })
                .collect())
        })
    }

    /// Newest row of each shared part at or before `revision`: (name,
    /// revision of the row, fragment key).
    pub(crate) async fn shared_rows_at(
        &self,
        revision: i64,
    ) -> Result<Vec<(String, i64, Option<Vec<u8>>)>> {
        self.newest_shared_rows(revision, "loading shared parts")
            .await
    }

    /// The one query behind [`Db::live_shared`] and [`Db::shared_rows_at`].
    async fn newest_shared_rows(
        &self,
        revision: i64,
        what: &'static str,
    ) -> Result<Vec<(String, i64, Option<Vec<u8>>)>> {
        on_pool!(self, p => sqlx::query_as::<_, (String, i64, Option<Vec<u8>>)>(
            "SELECT s.name, s.revision, s.fragment FROM shared_parts s
              WHERE s.revision = (SELECT MAX(t.revision) FROM shared_parts t
                                   WHERE t.name = s.name AND t.revision <= $1)"
        )
        .bind(revision)
        .fetch_all(p)
        .await
        .what(what))
    }

    pub(crate) async fn nodes_written_at(&self, revision: i64) -> Result<Vec<String>> {
        on_pool!(self, p => sqlx::query_scalar::<_, String>(
            "SELECT node FROM nodes WHERE revision = $1"
        )
        .bind(revision)
        .fetch_all(p)
        .await
        .what("listing nodes written at a revision"))
    }

    pub(crate) async fn node_row(&self, node: &str, revision: i64) -> Result<Option<NodeRow>> {
        on_pool!(self, p => {
            let row = sqlx::query_as::<_, (i64, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>)>(
                "SELECT revision, shared, own, state_digest FROM nodes
                  WHERE node = $1 AND revision <= $2 ORDER BY revision DESC LIMIT 1"
            )
            .bind(node)
            .bind(revision)
            .fetch_optional(p)
            .await
            .what("reading a node row")?;
            Ok(row.map(|(revision, shared, own, state_digest)| NodeRow { revision, shared, own, state_digest }))
        })
    }

    /// The newest row of a shared part at or before `revision`.
    pub(crate) async fn shared_at(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<Option<(i64, Option<Vec<u8>>)>> {
        on_pool!(self, p => sqlx::query_as::<_, (i64, Option<Vec<u8>>)>(
            "SELECT revision, fragment FROM shared_parts
              WHERE name = $1 AND revision <= $2 ORDER BY revision DESC LIMIT 1"
        )
        .bind(name)
        .bind(revision)
        .fetch_optional(p)
        .await
        .what("reading a shared part"))
    }

    /// [`Db::shared_at`] of each of `names` (one round trip on
    /// PostgreSQL): name → (revision, fragment) for the names that have a
    /// row at or before `revision`.
    pub(crate) async fn shared_many(
        &self,
        names: &[String],
        revision: i64,
    ) -> Result<HashMap<String, (i64, Option<Vec<u8>>)>> {
        match self {
            Db::Postgres(p) => {
                let rows = sqlx::query_as::<_, (String, i64, Option<Vec<u8>>)>(
                    "SELECT DISTINCT ON (name) name, revision, fragment FROM shared_parts
                      WHERE name = ANY($1) AND revision <= $2
                      ORDER BY name, revision DESC",
                )
                .bind(names)
                .bind(revision)
                .fetch_all(p)
                .await
                .what("reading shared parts")?;
                Ok(rows
                    .into_iter()
                    .map(|(name, at, fragment)| (name, (at, fragment)))
                    .collect())
            }
            Db::Sqlite(_) => {
                let mut out = HashMap::with_capacity(names.len());
                for name in names {
                    if let Some(row) = self.shared_at(name, revision).await? {
                        out.insert(name.clone(), row);
                    }
                }
                Ok(out)
            }
        }
    }
}

impl Tx {
    pub(crate) async fn insert_shared(
        &mut self,
        revision: i64,
        rows: &[(String, Option<Digest>)],
    ) -> Result<()> {
        on_tx!(self, c => {
            for (name, key) in rows {
                sqlx::query("INSERT INTO shared_parts (name, revision, fragment) VALUES ($1, $2, $3)")
                    .bind(name)
                    .bind(revision)
                    .bind(key.map(|k| k.0.to_vec()))
                    .execute(&mut *c)
                    .await
                    .what("writing shared parts")?;
            }
            Ok::<(), StoreError>(())
        })
    }

    pub(crate) async fn insert_nodes(&mut self, revision: i64, rows: &[NewNodeRow]) -> Result<()> {
        match self {
            Tx::Postgres(t) => {
                for batch in rows.chunks(PG_BATCH) {
                    let nodes: Vec<&str> = batch.iter().map(|r| r.node.as_str()).collect();
                    let shared: Vec<Option<&str>> =
                        batch.iter().map(|r| r.shared.as_deref()).collect();
                    let own: Vec<Option<&[u8]>> = batch.iter().map(|r| r.own.as_deref()).collect();
                    let digests: Vec<Option<&[u8]>> =
                        batch.iter().map(|r| r.state_digest.as_deref()).collect();
                    sqlx::query(
                        "INSERT INTO nodes (node, revision, shared, own, state_digest)
                         SELECT n, $2, s, o, d FROM UNNEST($1::text[], $3::text[], $4::bytea[], $5::bytea[])
                              AS u(n, s, o, d)",
                    )
                    .bind(nodes)
                    .bind(revision)
                    .bind(shared)
                    .bind(own)
                    .bind(digests)
                    .execute(&mut **t)
                    .await
                    .what("writing node rows")?;
                }
            }
            Tx::Sqlite(t) => {
                for r in rows {
                    sqlx::query(
                        "INSERT INTO nodes (node, revision, shared, own, state_digest)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&r.node)
                    .bind(revision)
                    .bind(r.shared.as_deref())
                    .bind(r.own.as_deref())
                    .bind(r.state_digest.as_deref())
                    .execute(&mut **t)
                    .await
                    .what("writing node rows")?;
                }
            }
        }
        Ok(())
    }
}
