//! Agent status: one row per node, the newest report wins.

use setpoint_dataplane::Digest;
use setpoint_store::{AgentResult, AgentStatus, Backend, RevisionId, StoreError};

use crate::support::TestDb;

both!(
    agent_status_upserts_per_node,
    a_nack_with_nul_and_a_huge_text_is_stored_clean_beside_other_acks,
    a_row_the_database_refuses_costs_only_its_own_report
);

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

/// One batch as the status writer sends it: node-b's nack carries NUL,
/// newlines and an escape in its error, node-c's nack a megabyte of text
/// and version; node-a's and node-d's acks ride in the same batch. All
/// four are stored, the texts cleaned and cut; a bad node name is refused
/// alone, with its reason.
async fn a_nack_with_nul_and_a_huge_text_is_stored_clean_beside_other_acks(db: TestDb) {
    let store = &db.store;
    let nul = AgentResult::Nack {
        error: "ipset v7.1:\0 Set cannot\nbe created\u{1b}[2J".to_string(),
        operation: "ipset\0restore".to_string(),
    };
    let huge = AgentResult::Nack {
        error: "x".repeat(1 << 20),
        operation: "y".repeat(1 << 16),
    };
    let mut c = status("node-c", 2, huge, 1_000);
    c.agent_version = format!("0.1.0\0{}", "v".repeat(1 << 20));
    let mut bad = status("node-\0e", 2, AgentResult::Ack, 1_000);
    bad.node = "node-\0e".to_string();
    let batch = vec![
        status("node-a", 2, AgentResult::Ack, 1_000),
        status("node-b", 2, nul, 1_000),
        c,
        bad,
        status("node-d", 2, AgentResult::Ack, 1_000),
    ];
    let refused = store
        .record_agent_statuses(&batch)
        .await
        .expect("the batch is stored");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].node, "node- e");
    assert!(
        refused[0].reason.contains("control characters"),
        "{refused:?}"
    );

    let stored = store.agent_statuses().await.expect("read");
    let nodes: Vec<&str> = stored.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b", "node-c", "node-d"]);
    assert_eq!(stored[0], batch[0]);
    assert_eq!(stored[3], batch[4]);
    assert_eq!(
        stored[1].result,
        AgentResult::Nack {
            error: "ipset v7.1:  Set cannot be created [2J".to_string(),
            operation: "ipset restore".to_string(),
        }
    );
    let AgentResult::Nack { error, operation } = &stored[2].result else {
        panic!("node-c's nack: {:?}", stored[2]);
    };
    assert_eq!(error.len(), setpoint_store::MAX_NACK_ERROR_BYTES);
    assert!(
        error.starts_with("xxx") && error.ends_with('…'),
        "{error:.20}"
    );
    assert_eq!(operation.len(), setpoint_store::MAX_NACK_OPERATION_BYTES);
    let version = &stored[2].agent_version;
    assert_eq!(version.len(), setpoint_store::MAX_AGENT_VERSION_BYTES);
    assert!(version.starts_with("0.1.0 vvv"), "{version:.20}");

    // Two reports for one node in a batch: the newer is kept.
    let older = status("node-a", 3, AgentResult::Ack, 2_000);
    let newer = status("node-a", 4, AgentResult::Ack, 3_000);
    let refused = store
        .record_agent_statuses(&[newer.clone(), older])
        .await
        .expect("stored");
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(
        store.agent_status("node-a").await.expect("read"),
        Some(newer)
    );
}

/// The database refuses one row of a batch (here a constraint the test
/// adds): that report alone is left out, with the database's reason; the
/// others in the same statement are stored.
async fn a_row_the_database_refuses_costs_only_its_own_report(db: TestDb) {
    let refuse = match db.backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_one BEFORE INSERT ON agent_status \
             WHEN NEW.agent_version = 'refused by the database' \
             BEGIN SELECT RAISE(ABORT, 'refuse_one'); END"
        }
        Backend::Postgres => {
            "ALTER TABLE agent_status ADD CONSTRAINT refuse_one \
             CHECK (agent_version <> 'refused by the database')"
        }
    };
    db.store
        .execute_unchecked(refuse)
        .await
        .expect("the test's constraint");
    let mut bad = status("node-b", 2, AgentResult::Ack, 1_000);
    bad.agent_version = "refused by the database".to_string();
    let batch = [
        status("node-a", 2, AgentResult::Ack, 1_000),
        bad,
        status("node-c", 2, AgentResult::Ack, 1_000),
    ];
    let refused = db
        .store
        .record_agent_statuses(&batch)
        .await
        .expect("the others are stored");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].node, "node-b");
    assert!(refused[0].reason.contains("refuse_one"), "{refused:?}");
    let stored = db.store.agent_statuses().await.expect("read");
    assert_eq!(stored, vec![batch[0].clone(), batch[2].clone()]);
}
