//! `node_pins`: a rollback's pin per node, a resume's release.

use super::{Db, Tx};
use crate::error::{Context, Result, StoreError};

/// A `node_pins` row; `parts` is `None` for a resume.
pub(crate) struct PinRow {
    pub node: String,
    pub revision: i64,
    pub held_at: Option<i64>,
    pub parts: Option<Vec<u8>>,
    pub state_digest: Option<Vec<u8>>,
    pub reason: String,
}

type PinRaw = (
    String,
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    String,
);

fn pin_row(r: PinRaw) -> PinRow {
    PinRow {
        node: r.0,
        revision: r.1,
        held_at: r.2,
        parts: r.3,
        state_digest: r.4,
        reason: r.5,
    }
}

impl Db {
    /// Newest `node_pins` row of each node at or before `revision`
    /// (resumes included: `parts` is `None`).
    pub(crate) async fn pins_at(&self, revision: i64) -> Result<Vec<PinRow>> {
        on_pool!(self, p => sqlx::query_as::<_, PinRaw>(
            "SELECT n.node, n.revision, n.held_at, n.parts, n.state_digest, n.reason FROM node_pins n
              WHERE n.revision = (SELECT MAX(m.revision) FROM node_pins m
                                   WHERE m.node = n.node AND m.revision <= $1)"
        )
        .bind(revision)
        .fetch_all(p)
        .await
        .map(|rows| rows.into_iter().map(pin_row).collect())
        .what("loading pins"))
    }

    /// The newest `node_pins` row of `node` at or before `revision`.
    pub(crate) async fn pin_row(&self, node: &str, revision: i64) -> Result<Option<PinRow>> {
        on_pool!(self, p => sqlx::query_as::<_, PinRaw>(
            "SELECT node, revision, held_at, parts, state_digest, reason FROM node_pins
              WHERE node = $1 AND revision <= $2 ORDER BY revision DESC LIMIT 1"
        )
        .bind(node)
        .bind(revision)
        .fetch_optional(p)
        .await
        .map(|row| row.map(pin_row))
        .what("reading a pin"))
    }
}

impl Tx {
    pub(crate) async fn insert_pins(&mut self, revision: i64, rows: &[PinRow]) -> Result<()> {
        on_tx!(self, c => {
            for r in rows {
                sqlx::query(
                    "INSERT INTO node_pins (node, revision, held_at, parts, state_digest, reason)
                     VALUES ($1, $2, $3, $4, $5, $6)"
                )
                .bind(&r.node)
                .bind(revision)
                .bind(r.held_at)
                .bind(r.parts.as_deref())
                .bind(r.state_digest.as_deref())
                .bind(&r.reason)
                .execute(&mut *c)
                .await
                .what("writing pins")?;
            }
            Ok::<(), StoreError>(())
        })
    }

    /// Current pin targets (the revisions pinned nodes are held at).
    pub(crate) async fn pin_targets(&mut self, head: i64) -> Result<Vec<i64>> {
        on_tx!(self, c => sqlx::query_scalar::<_, i64>(
            "SELECT n.held_at FROM node_pins n
              WHERE n.held_at IS NOT NULL
                AND n.revision = (SELECT MAX(m.revision) FROM node_pins m
                                   WHERE m.node = n.node AND m.revision <= $1)"
        )
        .bind(head)
        .fetch_all(&mut *c)
        .await
        .what("reading pin targets"))
    }
}
