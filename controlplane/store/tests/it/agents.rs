//! Agent status: one row per node, the newest report wins.

use setpoint_dataplane::Digest;
use setpoint_store::{AgentResult, AgentStatus, RevisionId, StoreError};

use crate::support::TestDb;

both!(agent_status_upserts_per_node);

fn status(node: &str, revision: u64, result: AgentResult, contact_ms: i64) -> AgentStatus {
    AgentStatus {
        node: node.to_string(),
        applied_revision: Some(RevisionId(revision)),
        applied_digest: Some(Digest([revision as u8; 32])),
        result,
        contact_ms,
        agent_version: "0.1.0".to_string(),
    }
}

async fn agent_status_upserts_per_node(db: TestDb) {
    let store = &db.store;
    assert!(store.agent_statuses().await.unwrap().is_empty());
    assert_eq!(store.agent_status("node-a").await.unwrap(), None);

    let a1 = status("node-a", 1, AgentResult::Ack, 1_000);
    let nack = AgentResult::Nack {
        error: "ipset v7.1: Set cannot be created".to_string(),
        operation: "ipset restore".to_string(),
    };
    let b1 = status("node-b", 1, nack.clone(), 1_100);
    assert!(store.record_agent_status(&a1).await.unwrap());
    assert!(store.record_agent_status(&b1).await.unwrap());
    assert_eq!(
        store.agent_statuses().await.unwrap(),
        vec![a1.clone(), b1.clone()]
    );

    // A newer report replaces the row.
    let mut a2 = status("node-a", 2, nack, 2_000);
    a2.agent_version = "0.2.0".to_string();
    assert!(store.record_agent_status(&a2).await.unwrap());
    assert_eq!(
        store.agent_status("node-a").await.unwrap(),
        Some(a2.clone())
    );
    // An older one (a slower replica) is ignored.
    assert!(!store.record_agent_status(&a1).await.unwrap());
    assert_eq!(
        store.agent_status("node-a").await.unwrap(),
        Some(a2.clone())
    );

    // An agent that never applied anything.
    let fresh = AgentStatus {
        node: "node-c".to_string(),
        applied_revision: None,
        applied_digest: None,
        result: AgentResult::Ack,
        contact_ms: 3_000,
        agent_version: "0.2.0".to_string(),
    };
    assert!(store.record_agent_status(&fresh).await.unwrap());
    assert_eq!(store.agent_statuses().await.unwrap(), vec![a2, b1, fresh]);

    let mut bad = status("", 1, AgentResult::Ack, 1);
    bad.node.clear();
    assert!(matches!(
        store.record_agent_status(&bad).await,
        Err(StoreError::InvalidRequest(_))
    ));
}
