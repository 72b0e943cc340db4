//! Every SQL statement of the store, for both backends. The statements are
//! the same text where the two dialects agree (sqlx binds `$1` on SQLite
//! too); batches differ: PostgreSQL takes arrays (`UNNEST`, `= ANY`), SQLite
//! runs one prepared statement per row in-process.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use crate::chunk::{Chunk, FragmentHeader, Manifest};
use setpoint_dataplane::Digest;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Row, Sqlite, Transaction};

use crate::error::{Context, Result, StoreError};
use crate::types::{Backend, StoreStats};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Rows per statement in PostgreSQL batch inserts.
const PG_BATCH: usize = 2000;

/// The PostgreSQL channel a new head is announced on.
pub(crate) const HEAD_CHANNEL: &str = "setpoint_head";
/// The advisory lock whose holder is the one control plane that commits.
const LEADER_LOCK: i64 = 0x5e7_9017;

/// Held while this process leads; dropping it gives leadership up.
pub struct Leadership {
    connection: Option<sqlx::PgConnection>,
}

impl Leadership {
    /// Whether the lock is still held: its session must still be alive.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.connection {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }
}

impl Db {
    /// Leadership if no other process holds it. With SQLite there is one
    /// replica by design, so it always leads.
    pub(crate) async fn try_lead(&self) -> Result<Option<Leadership>> {
        let Db::Postgres(pool) = self else {
            return Ok(Some(Leadership { connection: None }));
        };
        let mut connection = pool
            .acquire()
            .await
            .what("connecting for leadership")?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut connection)
            .await
            .what("trying the leader lock")?;
        Ok(got.then_some(Leadership {
            connection: Some(connection),
        }))
    }

    /// A PostgreSQL listener on the head channel (`None` for SQLite).
    pub(crate) async fn head_listener(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        let Db::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .what("connecting the head listener")?;
        listener.listen(HEAD_CHANNEL).await.what("LISTEN")?;
        Ok(Some(listener))
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the backend's pool or connection; the
/// body is compiled once per backend.
macro_rules! on_pool {
    ($db:expr, $c:ident => $body:expr) => {
        match $db {
            Db::Sqlite($c) => $body,
            Db::Postgres($c) => $body,
        }
    };
}

macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::InvalidRequest(format!("{what} {v} is too large")))
}

pub(crate) fn to_u64(v: i64, table: &'static str, column: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::BadRow {
        table,
        reason: format!("{column} is negative ({v})"),
    })
}

pub(crate) fn digest_of(bytes: &[u8], table: &'static str, column: &str) -> Result<Digest> {
    <[u8; 32]>::try_from(bytes)
        .map(Digest)
        .map_err(|_| StoreError::BadRow {
            table,
            reason: format!("{column} has {} bytes, not 32", bytes.len()),
        })
}

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

/// An `agent_status` row.
pub(crate) struct AgentRow {
    pub node: String,
    pub applied_revision: Option<i64>,
    pub applied_digest: Option<Vec<u8>>,
    pub result: String,
    pub error: Option<String>,
    pub operation: Option<String>,
    pub contact_ms: i64,
    pub agent_version: String,
}

type AgentRaw = (
    String,
    Option<i64>,
    Option<Vec<u8>>,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
);

fn agent_row(r: AgentRaw) -> AgentRow {
    AgentRow {
        node: r.0,
        applied_revision: r.1,
        applied_digest: r.2,
        result: r.3,
        error: r.4,
        operation: r.5,
        contact_ms: r.6,
        agent_version: r.7,
    }
}

/// Replaces a node's report unless the stored one is newer.
const AGENT_UPSERT: &str = " ON CONFLICT (node) DO UPDATE SET
     applied_revision = excluded.applied_revision,
     applied_digest = excluded.applied_digest,
     result = excluded.result,
     error = excluded.error,
     operation = excluded.operation,
     contact_ms = excluded.contact_ms,
     agent_version = excluded.agent_version
 WHERE agent_status.contact_ms <= excluded.contact_ms";
const AGENT_COLUMNS: &str = "SELECT node, applied_revision, applied_digest, result, error, operation, contact_ms, agent_version FROM agent_status";

/// The tables whose rows are versioned by revision, and their key column.
pub(crate) const VERSIONED: [(&str, &str); 3] = [
    ("nodes", "node"),
    ("shared_parts", "name"),
    ("node_pins", "node"),
];

/// The content tables, in the order a sweep deletes from them (a fragment
/// before the manifests it names, a manifest before its chunks).
pub(crate) const CONTENT: [&str; 3] = ["fragments", "manifests", "chunks"];

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

/// The store's view of an `fragments` row.
pub(crate) struct FragmentRow {
    pub key: Digest,
    pub header: FragmentHeader,
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

/// Keys per `IN (…)` list on SQLite (well under its variable limit).
const SQLITE_IN_BATCH: usize = 500;

/// Rows of `select` (ending in `IN (`) for `keys`, in batches.
async fn sqlite_in<T>(
    pool: &SqlitePool,
    select: &'static str,
    keys: &[Digest],
) -> std::result::Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(SQLITE_IN_BATCH) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(select);
        let mut list = q.separated(", ");
        for k in batch {
            list.push_bind(k.0.to_vec());
        }
        q.push(")");
        out.extend(q.build_query_as::<T>().fetch_all(pool).await?);
    }
    Ok(out)
}

impl Db {
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Db> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|source| StoreError::Connect {
                    backend: "SQLite",
                    source,
                })?
                .journal_mode(SqliteJournalMode::Wal)
                // Nothing acknowledged may be lost, even on power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Connect {
                    backend: "SQLite",
                    source,
                })?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|source| StoreError::Migrate {
                    backend: "SQLite",
                    source,
                })?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .connect(url)
                .await
                .map_err(|source| StoreError::Connect {
                    backend: "PostgreSQL",
                    source,
                })?;
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|source| StoreError::Migrate {
                    backend: "PostgreSQL",
                    source,
                })?;
            Ok(Db::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl {
                url: url.to_string(),
            })
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    pub(crate) async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            // IMMEDIATE takes the write lock up front, so two writers queue
            // on the busy timeout instead of failing to upgrade a read lock.
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await.what("BEGIN")?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await.what("BEGIN")?),
        })
    }

    pub(crate) async fn acquire_epoch(&self) -> Result<i64> {
        on_pool!(self, p => sqlx::query_scalar::<_, i64>(
            "UPDATE leader SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch"
        )
        .fetch_one(p)
        .await
        .what("acquiring an epoch"))
    }

    pub(crate) async fn leader(&self) -> Result<(i64, i64)> {
        on_pool!(self, p => sqlx::query_as::<_, (i64, i64)>("SELECT epoch, head FROM leader WHERE id = 1")
            .fetch_one(p)
            .await
            .what("reading the leader row"))
    }

    /// Newest fragment of each shared part at or before `head` (removed
    /// parts have `None`).
    pub(crate) async fn live_shared(&self, head: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        on_pool!(self, p => sqlx::query_as::<_, (String, Option<Vec<u8>>)>(
            "SELECT s.name, s.fragment FROM shared_parts s
              WHERE s.revision = (SELECT MAX(t.revision) FROM shared_parts t
                                   WHERE t.name = s.name AND t.revision <= $1)"
        )
        .bind(head)
        .fetch_all(p)
        .await
        .what("loading current shared parts"))
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
        on_pool!(self, p => sqlx::query_as::<_, (String, i64, Option<Vec<u8>>)>(
            "SELECT s.name, s.revision, s.fragment FROM shared_parts s
              WHERE s.revision = (SELECT MAX(t.revision) FROM shared_parts t
                                   WHERE t.name = s.name AND t.revision <= $1)"
        )
        .bind(revision)
        .fetch_all(p)
        .await
        .what("loading shared parts"))
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

    pub(crate) async fn fragments(&self, keys: &[Digest]) -> Result<Vec<FragmentRow>> {
        type Raw = (Vec<u8>, Vec<u8>, i64, Vec<u8>, i64);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => sqlx::query_as::<_, Raw>(
                "SELECT digest, root, height::bigint, state_digest, atoms FROM fragments
                  WHERE digest = ANY($1)",
            )
            .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
            .fetch_all(p)
            .await
            .what("reading fragments")?,
            Db::Sqlite(p) => sqlite_in(
                p,
                "SELECT digest, root, height, state_digest, atoms FROM fragments WHERE digest IN (",
                keys,
            )
            .await
            .what("reading fragments")?,
        };
        raw.into_iter()
            .map(|(key, root, height, state_digest, atoms)| {
                Ok(FragmentRow {
                    key: digest_of(&key, "fragments", "digest")?,
                    header: FragmentHeader {
                        root: digest_of(&root, "fragments", "root")?,
                        height: u8::try_from(height).map_err(|_| StoreError::BadRow {
                            table: "fragments",
                            reason: format!("height {height}"),
                        })?,
                        digest: digest_of(&state_digest, "fragments", "state_digest")?,
                        atoms: to_u64(atoms, "fragments", "atoms")?,
                    },
                })
            })
            .collect()
    }

    /// (key, level, body) of the manifests asked for that exist.
    pub(crate) async fn manifests(&self, keys: &[Digest]) -> Result<Vec<(Digest, i64, Vec<u8>)>> {
        type Raw = (Vec<u8>, i64, Vec<u8>);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => sqlx::query_as::<_, Raw>(
                "SELECT digest, level::bigint, body FROM manifests WHERE digest = ANY($1)",
            )
            .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
            .fetch_all(p)
            .await
            .what("reading manifests")?,
            Db::Sqlite(p) => sqlite_in(
                p,
                "SELECT digest, level, body FROM manifests WHERE digest IN (",
                keys,
            )
            .await
            .what("reading manifests")?,
        };
        raw.into_iter()
            .map(|(k, level, body)| Ok((digest_of(&k, "manifests", "digest")?, level, body)))
            .collect()
    }

    /// (key, body) of the chunks asked for that exist.
    pub(crate) async fn chunks(&self, keys: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>> {
        type Raw = (Vec<u8>, Vec<u8>);
        let raw: Vec<Raw> = match self {
            Db::Postgres(p) => {
                sqlx::query_as::<_, Raw>("SELECT digest, body FROM chunks WHERE digest = ANY($1)")
                    .bind(keys.iter().map(|k| k.0.to_vec()).collect::<Vec<_>>())
                    .fetch_all(p)
                    .await
                    .what("reading chunks")?
            }
            Db::Sqlite(p) => {
                sqlite_in(p, "SELECT digest, body FROM chunks WHERE digest IN (", keys)
                    .await
                    .what("reading chunks")?
            }
        };
        raw.into_iter()
            .map(|(k, body)| Ok((digest_of(&k, "chunks", "digest")?, body)))
            .collect()
    }

    pub(crate) async fn stats(&self) -> Result<StoreStats> {
        let counts = "SELECT (SELECT COUNT(*) FROM revisions), (SELECT COUNT(*) FROM chunks),
                             (SELECT COUNT(*) FROM manifests), (SELECT COUNT(*) FROM fragments),
                             (SELECT COUNT(*) FROM shared_parts), (SELECT COUNT(*) FROM nodes)";
        type Counts = (i64, i64, i64, i64, i64, i64);
        let (c, bytes): (Counts, i64) = match self {
            Db::Postgres(p) => {
                let c = sqlx::query_as::<_, Counts>(counts)
                    .fetch_one(p)
                    .await
                    .what("counting rows")?;
                let bytes = sqlx::query_scalar::<_, i64>(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind = 'r' AND n.nspname = current_schema()",
                )
                .fetch_one(p)
                .await
                .what("measuring table sizes")?;
                (c, bytes)
            }
            Db::Sqlite(p) => {
                let c = sqlx::query_as::<_, Counts>(counts)
                    .fetch_one(p)
                    .await
                    .what("counting rows")?;
                let pages = sqlx::query_scalar::<_, i64>("PRAGMA page_count")
                    .fetch_one(p)
                    .await
                    .what("measuring the database")?;
                let size = sqlx::query_scalar::<_, i64>("PRAGMA page_size")
                    .fetch_one(p)
                    .await
                    .what("measuring the database")?;
                (c, pages.saturating_mul(size))
            }
        };
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(StoreStats {
            revisions: n(c.0),
            chunks: n(c.1),
            manifests: n(c.2),
            fragments: n(c.3),
            shared_parts: n(c.4),
            nodes: n(c.5),
            bytes: n(bytes),
        })
    }

    // --- pins ---

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

    // --- agents ---

    /// Upserts an agent's report unless the stored one is newer; true when
    /// stored.
    pub(crate) async fn upsert_agent(&self, a: &AgentRow) -> Result<bool> {
        self.upsert_rows(std::slice::from_ref(a))
            .await
            .map(|stored| stored > 0)
    }

    /// [`Db::upsert_agent`] for many rows (distinct nodes), a few hundred
    /// per statement.
    pub(crate) async fn upsert_agents(&self, rows: &[AgentRow]) -> Result<()> {
        for chunk in rows.chunks(500) {
            self.upsert_rows(chunk).await?;
        }
        Ok(())
    }

    /// One statement upserting `rows`; how many were stored.
    async fn upsert_rows(&self, rows: &[AgentRow]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        on_pool!(self, p => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO agent_status (node, applied_revision, applied_digest, result,
                                           error, operation, contact_ms, agent_version) ",
            );
            q.push_values(rows, |mut b, a| {
                b.push_bind(&a.node)
                    .push_bind(a.applied_revision)
                    .push_bind(a.applied_digest.as_deref())
                    .push_bind(&a.result)
                    .push_bind(a.error.as_deref())
                    .push_bind(a.operation.as_deref())
                    .push_bind(a.contact_ms)
                    .push_bind(&a.agent_version);
            });
            q.push(AGENT_UPSERT);
            q.build()
                .execute(p)
                .await
                .map(|r| r.rows_affected())
                .what("recording agent status")
        })
    }

    pub(crate) async fn agents(&self, node: Option<&str>) -> Result<Vec<AgentRow>> {
        let rows = match node {
            Some(n) => on_pool!(self, p => sqlx::query_as::<_, AgentRaw>(sqlx::AssertSqlSafe(
                format!("{AGENT_COLUMNS} WHERE node = $1")
            ))
            .bind(n)
            .fetch_all(p)
            .await),
            None => on_pool!(self, p => sqlx::query_as::<_, AgentRaw>(sqlx::AssertSqlSafe(
                format!("{AGENT_COLUMNS} ORDER BY node")
            ))
            .fetch_all(p)
            .await),
        }
        .what("reading agent status")?;
        Ok(rows.into_iter().map(agent_row).collect())
    }

    // --- retention ---

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

    /// Runs a statement given as text (tests and tools: corrupting rows,
    /// checkpoints). Returns the rows affected.
    pub(crate) async fn execute_raw(&self, sql: String) -> Result<u64> {
        on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            .what("running a raw statement"))
    }
}

impl Tx {
    /// The fencing step: bumps `head` if `epoch` is not older than the
    /// highest seen. `None` when refused.
    pub(crate) async fn fence(&mut self, epoch: i64) -> Result<Option<i64>> {
        let head = on_tx!(self, c => sqlx::query_scalar::<_, i64>(
            "UPDATE leader SET epoch = $1, head = head + 1
              WHERE id = 1 AND epoch <= $1 RETURNING head"
        )
        .bind(epoch)
        .fetch_optional(&mut *c)
        .await
        .what("fencing the commit"))?;
        // Followers LISTEN; the notification goes out only if this commits.
        if let (Tx::Postgres(c), Some(head)) = (&mut *self, head) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(HEAD_CHANNEL)
                .bind(head.to_string())
                .execute(&mut **c)
                .await
                .what("notifying the new head")?;
        }
        Ok(head)
    }

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

    pub(crate) async fn insert_chunks(&mut self, chunks: &[&Chunk]) -> Result<()> {
        match self {
            Tx::Postgres(t) => {
                for batch in chunks.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|c| &c.key.0[..]).collect();
                    let atoms: Vec<i32> = batch
                        .iter()
                        .map(|c| i32::try_from(c.atoms).unwrap_or(i32::MAX))
                        .collect();
                    let bodies: Vec<&[u8]> = batch.iter().map(|c| c.body.as_slice()).collect();
                    sqlx::query(
                        "INSERT INTO chunks (digest, atoms, body)
                         SELECT * FROM UNNEST($1::bytea[], $2::int4[], $3::bytea[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(atoms)
                    .bind(bodies)
                    .execute(&mut **t)
                    .await
                    .what("writing chunks")?;
                }
            }
            Tx::Sqlite(t) => {
                for c in chunks {
                    sqlx::query(
                        "INSERT INTO chunks (digest, atoms, body) VALUES ($1, $2, $3)
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&c.key.0[..])
                    .bind(i64::from(c.atoms))
                    .bind(c.body.as_slice())
                    .execute(&mut **t)
                    .await
                    .what("writing chunks")?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn insert_manifests(&mut self, manifests: &[&Manifest]) -> Result<()> {
        match self {
            Tx::Postgres(t) => {
                for batch in manifests.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|m| &m.key.0[..]).collect();
                    let levels: Vec<i16> = batch.iter().map(|m| i16::from(m.level)).collect();
                    let bodies: Vec<&[u8]> = batch.iter().map(|m| m.body.as_slice()).collect();
                    sqlx::query(
                        "INSERT INTO manifests (digest, level, body)
                         SELECT * FROM UNNEST($1::bytea[], $2::int2[], $3::bytea[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(levels)
                    .bind(bodies)
                    .execute(&mut **t)
                    .await
                    .what("writing manifests")?;
                }
            }
            Tx::Sqlite(t) => {
                for m in manifests {
                    sqlx::query(
                        "INSERT INTO manifests (digest, level, body) VALUES ($1, $2, $3)
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&m.key.0[..])
                    .bind(i64::from(m.level))
                    .bind(m.body.as_slice())
                    .execute(&mut **t)
                    .await
                    .what("writing manifests")?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn insert_fragments(
        &mut self,
        fragments: &[(Digest, FragmentHeader)],
    ) -> Result<()> {
        let atoms = |h: &FragmentHeader| to_i64(h.atoms, "atom count");
        match self {
            Tx::Postgres(t) => {
                for batch in fragments.chunks(PG_BATCH) {
                    let keys: Vec<&[u8]> = batch.iter().map(|(k, _)| &k.0[..]).collect();
                    let roots: Vec<&[u8]> = batch.iter().map(|(_, h)| &h.root.0[..]).collect();
                    let heights: Vec<i16> =
                        batch.iter().map(|(_, h)| i16::from(h.height)).collect();
                    let digests: Vec<&[u8]> = batch.iter().map(|(_, h)| &h.digest.0[..]).collect();
                    let counts = batch
                        .iter()
                        .map(|(_, h)| atoms(h))
                        .collect::<Result<Vec<i64>>>()?;
                    sqlx::query(
                        "INSERT INTO fragments (digest, root, height, state_digest, atoms)
                         SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int2[], $4::bytea[], $5::int8[])
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(keys)
                    .bind(roots)
                    .bind(heights)
                    .bind(digests)
                    .bind(counts)
                    .execute(&mut **t)
                    .await
                    .what("writing fragments")?;
                }
            }
            Tx::Sqlite(t) => {
                for (k, h) in fragments {
                    sqlx::query(
                        "INSERT INTO fragments (digest, root, height, state_digest, atoms)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&k.0[..])
                    .bind(&h.root.0[..])
                    .bind(i64::from(h.height))
                    .bind(&h.digest.0[..])
                    .bind(atoms(h)?)
                    .execute(&mut **t)
                    .await
                    .what("writing fragments")?;
                }
            }
        }
        Ok(())
    }

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

    /// Takes the lock commits take (the leader row) without bumping
    /// anything, so what follows in this transaction runs between commits.
    /// Returns the head.
    pub(crate) async fn lock_head(&mut self) -> Result<i64> {
        match self {
            // BEGIN IMMEDIATE already holds the database's write lock.
            Tx::Sqlite(t) => {
                sqlx::query_scalar::<_, i64>("SELECT head FROM leader WHERE id = 1")
                    .fetch_one(&mut **t)
                    .await
            }
            Tx::Postgres(t) => {
                sqlx::query_scalar::<_, i64>("SELECT head FROM leader WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut **t)
                    .await
            }
        }
        .what("locking the leader row")
    }

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

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
        .what("COMMIT")
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
        }
        .what("ROLLBACK")
    }
}
