//! Agent reports to the store, off the sessions' path: a session hands its
//! report over and goes on; one task writes what accumulated, the newest
//! report per node, in a few statements. With thousands of agents acking
//! one revision this is a handful of writes, not one per agent, and an
//! ack is never held up by the database.

use std::collections::HashMap;

use setpoint_store::{AgentStatus, Store};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<AgentStatus>,
}

impl StatusWriter {
    /// Starts the writer task (on the current runtime).
    pub fn start(store: Store) -> StatusWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<AgentStatus>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut newest: HashMap<String, AgentStatus> = HashMap::new();
                newest.insert(first.node.clone(), first);
                while let Ok(next) = rx.try_recv() {
                    newest.insert(next.node.clone(), next);
                }
                let batch: Vec<AgentStatus> = newest.into_values().collect();
                if let Err(e) = store.record_agent_statuses(&batch).await {
                    tracing::warn!("cannot record {} agent statuses: {e}", batch.len());
                }
            }
        });
        StatusWriter { tx }
    }

    /// Queues `status` for the store.
    pub fn record(&self, status: AgentStatus) {
        if self.tx.send(status).is_err() {
            tracing::warn!("the agent status writer has stopped");
        }
    }
}
