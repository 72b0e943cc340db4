//! `agent_status`: each node's last agent report, newest contact wins.

use super::Db;
use crate::error::{Context, Result};

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
macro_rules! agent_upsert {
    () => {
        " ON CONFLICT (node) DO UPDATE SET
     applied_revision = excluded.applied_revision,
     applied_digest = excluded.applied_digest,
     result = excluded.result,
     error = excluded.error,
     operation = excluded.operation,
     contact_ms = excluded.contact_ms,
     agent_version = excluded.agent_version
 WHERE agent_status.contact_ms <= excluded.contact_ms"
    };
}
const AGENT_UPSERT: &str = agent_upsert!();
/// PostgreSQL: every batch in one statement of eight arrays, the same
/// text whatever the batch's size (prepared once, not once per size with
/// eight parameters per row).
const AGENT_UPSERT_ARRAYS: &str = concat!(
    "INSERT INTO agent_status (node, applied_revision, applied_digest, result,
                               error, operation, contact_ms, agent_version)
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bytea[], $4::text[],
                          $5::text[], $6::text[], $7::bigint[], $8::text[])",
    agent_upsert!()
);
const AGENT_COLUMNS: &str = "SELECT node, applied_revision, applied_digest, result, error, operation, contact_ms, agent_version FROM agent_status";

impl Db {
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
        if let Db::Postgres(p) = self {
            let column = |f: fn(&AgentRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
            return sqlx::query(AGENT_UPSERT_ARRAYS)
                .bind(column(|a| Some(&a.node)))
                .bind(rows.iter().map(|a| a.applied_revision).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|a| a.applied_digest.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(column(|a| Some(&a.result)))
                .bind(column(|a| a.error.as_deref()))
                .bind(column(|a| a.operation.as_deref()))
                .bind(rows.iter().map(|a| a.contact_ms).collect::<Vec<_>>())
                .bind(column(|a| Some(&a.agent_version)))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
                .what("recording agent status");
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
}
