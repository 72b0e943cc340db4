//! Every SQL statement of the store, for both backends. The statements are
//! the same text where the two dialects agree (sqlx binds `$1` on SQLite
//! too); batches differ: PostgreSQL takes arrays (`UNNEST`, `= ANY`), SQLite
//! runs one prepared statement per row in-process.
//!
//! One file per family of tables: [`revisions`] (a revision and its cause),
//! [`states`] (`nodes` and `shared_parts`), [`content`] (fragments,
//! manifests, chunks), [`pins`], [`agents`] (`agent_status`), [`leader`]
//! (epochs, the advisory lock, the head channel) and [`retention`] (what gc
//! deletes). This file holds the connection, the transaction and the
//! conversions every one of them uses.

use std::str::FromStr;
use std::time::Duration;

use setpoint_dataplane::Digest;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

use crate::error::{Context, Result, StoreError};
use crate::types::{Backend, StoreStats};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Rows per statement in PostgreSQL batch inserts.
const PG_BATCH: usize = 2000;

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

// Declared after the macros above, which they use.
mod agents;
mod content;
mod leader;
mod pins;
mod retention;
mod revisions;
mod states;

pub(crate) use agents::AgentRow;
pub use leader::Leadership;
pub(crate) use pins::PinRow;
pub(crate) use retention::{CONTENT, VERSIONED};
pub(crate) use revisions::RevisionRow;
pub(crate) use states::{NewNodeRow, NodeRow};

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

/// Whether a `sqlite:` URL's query sets `mode=` (ro, rw, rwc, memory).
fn sqlite_url_names_mode(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("mode=")))
}

impl Db {
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Db> {
        if url.starts_with("sqlite:") {
            let options =
                SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                    backend: "SQLite",
                    source,
                })?;
            // sqlx opens an existing file only unless the URL says
            // `?mode=rwc`; an operator naming a file means "keep the store
            // there", so a URL without any `mode=` creates it. An explicit
            // `mode=ro`/`mode=rw` is left as written.
            let options = if sqlite_url_names_mode(url) {
                options
            } else {
                let file = options.get_filename();
                if !file.as_os_str().is_empty()
                    && file != std::path::Path::new(":memory:")
                    && !file.exists()
                {
                    tracing::info!(file = %file.display(), "creating the SQLite store");
                }
                options.create_if_missing(true)
            };
            let options = options
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
