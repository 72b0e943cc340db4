//! What each node's agent last reported: [`Store::record_agent_status`].

use std::collections::HashMap;

use crate::db::{self, AgentRow};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{AgentResult, AgentStatus, RevisionId};
use setpoint_dataplane::text::clean_text;

impl Store {
    /// Stores a node's latest agent report (one row per node, replaced).
    /// Any replica may record it; no epoch is needed. A report whose
    /// `contact_ms` is older than the stored one is ignored (two replicas
    /// racing), and `false` is returned.
    pub async fn record_agent_status(&self, status: &AgentStatus) -> Result<bool> {
        self.db.upsert_agent(&agent_row(status)?).await
    }

    /// Stores many nodes' reports in few statements; a report older than
    /// the stored one is ignored, as above. Of two reports for one node the
    /// newer is kept. A report that cannot be stored (a bad node name, a
    /// row the database refuses) is left out and returned with the reason;
    /// the others are stored regardless. `Err` only when the store itself
    /// failed.
    pub async fn record_agent_statuses(
        &self,
        statuses: &[AgentStatus],
    ) -> Result<Vec<RefusedStatus>> {
        let mut refused = Vec::new();
        let mut newest: HashMap<&str, &AgentStatus> = HashMap::new();
        for status in statuses {
            let kept = newest.entry(status.node.as_str()).or_insert(status);
            if kept.contact_ms <= status.contact_ms {
                *kept = status;
            }
        }
        let mut rows = Vec::with_capacity(newest.len());
        for status in statuses {
            if !newest
                .get(status.node.as_str())
                .is_some_and(|kept| std::ptr::eq(*kept, status))
            {
                continue;
            }
            match agent_row(status) {
                Ok(row) => rows.push(row),
                Err(e) => refused.push(RefusedStatus::new(&status.node, &e)),
            }
        }
        match self.db.upsert_agents(&rows).await {
            Ok(()) => {}
            // A statement the database refused (not a lost connection):
            // one row must not cost the others theirs, so each is tried
            // alone.
            Err(StoreError::Query {
                source: sqlx::Error::Database(_),
                ..
            }) => {
                for row in &rows {
                    if let Err(e) = self.db.upsert_agent(row).await {
                        refused.push(RefusedStatus::new(&row.node, &e));
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(refused)
    }

    /// Every node's latest agent report, by node name.
    pub async fn agent_statuses(&self) -> Result<Vec<AgentStatus>> {
        self.db
            .agents(None)
            .await?
            .into_iter()
            .map(agent_status)
            .collect()
    }

    /// One node's latest agent report, if its agent ever reported.
    pub async fn agent_status(&self, node: &str) -> Result<Option<AgentStatus>> {
        self.db
            .agents(Some(node))
            .await?
            .into_iter()
            .next()
            .map(agent_status)
            .transpose()
    }
}

fn agent_status(row: AgentRow) -> Result<AgentStatus> {
    let result = match (row.result.as_str(), row.error, row.operation) {
        ("ack", _, _) => AgentResult::Ack,
        ("nack", error, operation) => AgentResult::Nack {
            error: error.unwrap_or_default(),
            operation: operation.unwrap_or_default(),
        },
        (other, _, _) => {
            return Err(StoreError::BadRow {
                table: "agent_status",
                reason: format!("result {other:?}"),
            });
        }
    };
    Ok(AgentStatus {
        node: row.node,
        applied_revision: row
            .applied_revision
            .map(|r| db::to_u64(r, "agent_status", "applied_revision").map(RevisionId))
            .transpose()?,
        applied_digest: row
            .applied_digest
            .map(|d| db::digest_of(&d, "agent_status", "applied_digest"))
            .transpose()?,
        result,
        contact_ms: row.contact_ms,
        agent_version: row.agent_version,
    })
}

/// The longest nack error text kept, in bytes.
pub const MAX_NACK_ERROR_BYTES: usize = 2048;
/// The longest nack operation kept, in bytes.
pub const MAX_NACK_OPERATION_BYTES: usize = 256;
/// The longest agent version kept, in bytes.
pub const MAX_AGENT_VERSION_BYTES: usize = 128;
/// The longest node name accepted (a Kubernetes object name's limit).
pub const MAX_NODE_NAME_BYTES: usize = 253;

/// A report [`Store::record_agent_statuses`] did not store, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedStatus {
    /// The report's node name, cleaned for display.
    pub node: String,
    pub reason: String,
}

impl RefusedStatus {
    fn new(node: &str, reason: &StoreError) -> RefusedStatus {
        RefusedStatus {
            node: clean_text(node, 64),
            reason: reason.to_string(),
        }
    }
}

fn agent_row(status: &AgentStatus) -> Result<AgentRow> {
    if status.node.is_empty()
        || status.node.len() > MAX_NODE_NAME_BYTES
        || status.node.chars().any(char::is_control)
    {
        return Err(StoreError::InvalidRequest(format!(
            "node name {:?} must be 1 to {MAX_NODE_NAME_BYTES} bytes without control characters",
            clean_text(&status.node, 64)
        )));
    }
    let (result, error, operation) = match &status.result {
        AgentResult::Ack => ("ack", None, None),
        AgentResult::Nack { error, operation } => (
            "nack",
            Some(clean_text(error, MAX_NACK_ERROR_BYTES)),
            Some(clean_text(operation, MAX_NACK_OPERATION_BYTES)),
        ),
    };
    let applied_revision = status
        .applied_revision
        .map(|r| db::to_i64(r.0, "applied revision"))
        .transpose()?;
    Ok(AgentRow {
        node: status.node.clone(),
        applied_revision,
        applied_digest: status.applied_digest.map(|d| d.0.to_vec()),
        result: result.to_string(),
        error,
        operation,
        contact_ms: status.contact_ms,
        agent_version: clean_text(&status.agent_version, MAX_AGENT_VERSION_BYTES),
    })
}
