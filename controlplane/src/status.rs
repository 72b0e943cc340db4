//! Agent reports to the store, off the sessions' path: a session hands its
//! report over and goes on; one task writes what accumulated, the newest
//! report per node, in a few statements. With thousands of agents acking
//! one revision this is a handful of writes, not one per agent, and an
//! ack is never held up by the database.
//!
//! What waits is one report per node, at most [`MAX_PENDING_NODES`] nodes:
//! a peer reporting fast only replaces its own pending report, and a
//! flood of node names cannot grow the queue without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use setpoint_store::{AgentStatus, Store};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Nodes whose reports wait for the writer at most; a report for another
/// node beyond it is dropped and counted (the agent's next one retries).
pub const MAX_PENDING_NODES: usize = 100_000;

type Pending = Arc<Mutex<HashMap<String, AgentStatus>>>;

#[derive(Clone)]
pub struct StatusWriter {
    pending: Pending,
    /// Rings the writer; one ring stands for any number of reports.
    doorbell: mpsc::Sender<()>,
    metrics: Arc<Metrics>,
    max_nodes: usize,
}

impl StatusWriter {
    /// Starts the writer task (on the current runtime); it ends when the
    /// last handle is dropped.
    pub fn start(store: Store, metrics: Arc<Metrics>) -> StatusWriter {
        StatusWriter::start_bounded(store, metrics, MAX_PENDING_NODES)
    }

    /// [`StatusWriter::start`] with at most `max_nodes` nodes' reports
    /// waiting.
    fn start_bounded(store: Store, metrics: Arc<Metrics>, max_nodes: usize) -> StatusWriter {
        let pending = Pending::default();
        let (doorbell, mut rung) = mpsc::channel(1);
        let (reports, task_metrics) = (pending.clone(), metrics.clone());
        tokio::spawn(async move {
            while rung.recv().await.is_some() {
                let batch: Vec<AgentStatus> = match reports.lock() {
                    Ok(mut reports) => reports.drain().map(|(_, s)| s).collect(),
                    Err(_) => return,
                };
                if batch.is_empty() {
                    continue;
                }
                match store.record_agent_statuses(&batch).await {
                    Ok(refused) => {
                        for r in refused {
                            task_metrics.agent_statuses_refused.inc();
                            tracing::warn!(node = %r.node, "agent status not stored: {}", r.reason);
                        }
                    }
                    Err(e) => {
                        task_metrics.store_errors.inc();
                        tracing::warn!("cannot record {} agent statuses: {e}", batch.len());
                    }
                }
            }
        });
        StatusWriter {
            pending,
            doorbell,
            metrics,
            max_nodes,
        }
    }

    /// Queues `status` for the store, replacing a pending one of its node.
    pub fn record(&self, status: AgentStatus) {
        let queued = match self.pending.lock() {
            Ok(mut reports) => {
                if reports.len() < self.max_nodes || reports.contains_key(&status.node) {
                    reports.insert(status.node.clone(), status);
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if queued {
            // Full: a ring is pending, and the writer takes this report too.
            let _ = self.doorbell.try_send(());
        } else {
            self.metrics.agent_statuses_dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_store::{AgentResult, RevisionId};

    fn report(node: &str, revision: u64) -> AgentStatus {
        AgentStatus {
            node: node.to_string(),
            applied_revision: Some(RevisionId(revision)),
            applied_digest: None,
            result: AgentResult::Ack,
            contact_ms: i64::try_from(revision).unwrap_or(0),
            agent_version: "test".to_string(),
        }
    }

    /// On this single-threaded runtime the writer cannot run until the
    /// test awaits, so what waits is exactly what `record` kept.
    #[tokio::test]
    async fn waiting_reports_are_one_per_node_and_at_most_the_bound() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = Store::open(&url).await.expect("store");
        let metrics = Metrics::new();
        let writer = StatusWriter::start_bounded(store.clone(), metrics.clone(), 2);
        for revision in 1..=50 {
            writer.record(report("node-a", revision));
        }
        writer.record(report("node-b", 1));
        writer.record(report("node-c", 1));
        assert_eq!(
            metrics.agent_statuses_dropped.get(),
            1,
            "node-c is over the bound"
        );
        writer.record(report("node-b", 2));
        assert_eq!(
            metrics.agent_statuses_dropped.get(),
            1,
            "a waiting node's report replaces its own"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stored = store.agent_statuses().await.expect("read");
            if stored.len() == 2 {
                assert_eq!(stored, vec![report("node-a", 50), report("node-b", 2)]);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stored:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
