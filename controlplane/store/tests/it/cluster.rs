//! A realistic cluster at small scale: states computed by the index from a
//! synthetic cluster, committed revision after revision, read back.

use std::collections::HashMap;

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::Digest;
use setpoint_store::{Cause, CommitRequest, Epoch, RevisionId, Store};

use crate::support::TestDb;

both!(synthetic_cluster_history);

const SHAPE: ClusterShape = ClusterShape {
    nodes: 50,
    services: 300,
    endpoints: 3_000,
    zones: 3,
};

/// Commits every node the index reports changed (all of them the first
/// time); returns the revision.
async fn commit(
    store: &Store,
    index: &Index,
    epoch: Epoch,
    nodes: impl Iterator<Item = String>,
    cause: Cause,
) -> RevisionId {
    let mut req = CommitRequest::new(epoch, cause);
    for node in nodes {
        let state = index.node_state(&node).expect("a node the index knows");
        req.add_node_state(node, &state);
    }
    store.commit(req).await.expect("commit")
}

async fn synthetic_cluster_history(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(&SHAPE) {
        index.upsert(object);
    }
    index.commit();
    let names: Vec<String> = index.node_names().map(|n| n.to_string()).collect();
    assert_eq!(names.len(), SHAPE.nodes);
    let r1 = commit(
        store,
        &index,
        epoch,
        names.iter().cloned(),
        Cause {
            objects: vec![],
            summary: "initial".into(),
        },
    )
    .await;
    let initial = store.stats().await.unwrap();
    let mut digests: Vec<(RevisionId, HashMap<String, Digest>)> = vec![(
        r1,
        names
            .iter()
            .map(|n| (n.clone(), index.node_digest(n).unwrap()))
            .collect(),
    )];

    // One endpoint changes per revision.
    let mut last = initial;
    let mut node_rows_written = 0;
    for g in 1..=12usize {
        let i = (g * 7907) % SHAPE.services;
        let slice = synthetic::slice(i, &SHAPE, g);
        let key = slice.key().to_string();
        index.upsert(slice);
        let outcome = index.commit();
        let r = commit(
            store,
            &index,
            epoch,
            outcome.changed_nodes.iter().map(|n| n.to_string()),
            Cause {
                objects: vec![key],
                summary: format!("endpoint flip {g}"),
            },
        )
        .await;
        let stats = store.stats().await.unwrap();
        // Node rows only for nodes whose own part changed: a handful.
        let new_rows = stats.nodes - last.nodes;
        assert!(new_rows <= 3, "revision {r}: {new_rows} node rows");
        node_rows_written += new_rows;
        assert!(stats.chunks - last.chunks <= 8, "revision {r}: chunks");
        last = stats;
        digests.push((
            r,
            names
                .iter()
                .map(|n| (n.clone(), index.node_digest(n).unwrap()))
                .collect(),
        ));
    }
    assert!(node_rows_written < 12 * 3);

    // Every node at the newest revision equals the index's state.
    let (head, _) = digests.last().unwrap().clone();
    for name in &names {
        let got = store.node_state(name, head).await.unwrap().unwrap();
        let want = index.node_state(name).unwrap();
        assert!(got == want, "{name} at {head}");
    }
    // Old revisions give the digests the index had then.
    for (r, by_node) in digests.iter().step_by(3) {
        for name in names.iter().step_by(7) {
            let got = store.node_state(name, *r).await.unwrap().unwrap();
            assert_eq!(got.digest(), by_node[name], "{name} at {r}");
        }
    }
    let listed = store.list_revisions(100, None).await.unwrap();
    assert_eq!(listed.len(), 13);
}
