//! What each node's agent last reported: [`Store::record_agent_status`].

use crate::db::{self, AgentRow};
use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::types::{AgentResult, AgentStatus, RevisionId};

impl Store {
    /// Stores a node's latest agent report (one row per node, replaced).
    /// Any replica may record it; no epoch is needed. A report whose
    /// `contact_ms` is older than the stored one is ignored (two replicas
    /// racing), and `false` is returned.
    pub async fn record_agent_status(&self, status: &AgentStatus) -> Result<bool> {
        self.db.upsert_agent(&agent_row(status)?).await
    }

    /// Stores many nodes' reports in few statements (at most one report
    /// per node; older than the stored one are ignored, as above).
    pub async fn record_agent_statuses(&self, statuses: &[AgentStatus]) -> Result<()> {
        let rows = statuses.iter().map(agent_row).collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = rows.iter().find(|r| !seen.insert(r.node.as_str())) {
            return Err(StoreError::InvalidRequest(format!(
                "two reports for node {} in one batch",
                twice.node
            )));
        }
        self.db.upsert_agents(&rows).await
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

fn agent_row(status: &AgentStatus) -> Result<AgentRow> {
    if status.node.is_empty() || status.node.len() > 1024 {
        return Err(StoreError::InvalidRequest(format!(
            "node name {:?} must be 1 to 1024 bytes",
            status.node
        )));
    }
    let (result, error, operation) = match &status.result {
        AgentResult::Ack => ("ack", None, None),
        AgentResult::Nack { error, operation } => {
            ("nack", Some(error.clone()), Some(operation.clone()))
        }
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
        agent_version: status.agent_version.clone(),
    })
}
