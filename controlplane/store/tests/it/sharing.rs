//! Structural sharing: what a revision writes grows with the change.

use std::sync::Arc;

use setpoint_dataplane::Fragment;
use setpoint_store::chunk::{ChunkedFragment, Cuts};
use setpoint_store::{Cause, CommitRequest, NodeParts, Retention};

use crate::support::{Cluster, TestDb, assert_state, own, services};

both!(
    shared_change_writes_no_node_rows,
    identical_fragments_stored_once,
    reopened_writer_writes_only_changes,
    reads_what_an_earlier_rule_wrote,
);

async fn shared_change_writes_no_node_rows(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(50, 400);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    assert_eq!(before.nodes, 50);
    assert_eq!(before.shared_parts, 4);

    // One real server's weight changes: only `services` changes. Every node
    // is passed, as a caller that does not track compositions would.
    cluster.services = Arc::new(services(400, 1));
    let r2 = store
        .commit(cluster.request(epoch, "endpoint"))
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.nodes, before.nodes, "no node row for a shared change");
    assert_eq!(after.shared_parts, before.shared_parts + 1);
    assert_eq!(after.fragments, before.fragments + 1);
    assert!(
        after.chunks - before.chunks <= 2,
        "{} new chunks for one changed atom",
        after.chunks - before.chunks
    );
    assert!(after.manifests - before.manifests <= 3);
    assert_eq!(after.revisions, 2);
    assert_eq!(store.changed_nodes(r2).await.unwrap().len(), 50);
    for n in [0, 17, 49] {
        assert_state(store, &Cluster::node_name(n), r2, &cluster.state(n)).await;
    }
    let old = Cluster::new(50, 400);
    assert_state(store, "node-017", r1, &old.state(17)).await;
}

async fn identical_fragments_stored_once(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(2, 50);
    store
        .commit(cluster.shared_request(epoch, "shared"))
        .await
        .unwrap();
    let shared_only = store.stats().await.unwrap();

    // Ten nodes whose own parts have equal content in distinct Arcs.
    let mut req = CommitRequest::new(epoch, Cause::default());
    for n in 0..10 {
        let mut parts = NodeParts::default();
        parts.shared.insert("services".into());
        parts.own.insert("node/own".into(), Arc::new(own(7, 1)));
        req.nodes.insert(format!("twin-{n}"), parts);
    }
    store.commit(req).await.unwrap();
    let twins = store.stats().await.unwrap();
    assert_eq!(twins.nodes, 10);
    assert_eq!(
        twins.fragments,
        shared_only.fragments + 1,
        "one fragment for ten nodes"
    );
    assert_eq!(twins.chunks, shared_only.chunks + 1);

    // The same content again in a later revision, in fresh Arcs: no content rows.
    let fresh = Cluster::new(2, 50);
    let mut req = fresh.shared_request(epoch, "same again");
    req.shared.insert(
        "services".into(),
        Arc::new(Fragment::clone(&services(50, 0))),
    );
    store.commit(req).await.unwrap();
    let again = store.stats().await.unwrap();
    assert_eq!(again.chunks, twins.chunks);
    assert_eq!(again.fragments, twins.fragments);
    assert_eq!(
        again.shared_parts, twins.shared_parts,
        "unchanged parts get no row"
    );
    assert_eq!(again.revisions, 3);
}

async fn reopened_writer_writes_only_changes(db: TestDb) {
    let epoch = db.store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(20, 100);
    db.store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    let before = db.store.stats().await.unwrap();

    // A new process: its cache is loaded from the database.
    let store = db.reopen().await;
    let epoch = store.acquire_epoch().await.unwrap();
    cluster.services = Arc::new(services(100, 2));
    cluster.own[5] = Arc::new(own(5, 3));
    let r2 = store
        .commit(cluster.request(epoch, "after restart"))
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.nodes, before.nodes + 1, "only node-005's row");
    assert_eq!(after.shared_parts, before.shared_parts + 1);
    for n in [0, 5, 19] {
        assert_state(&store, &Cluster::node_name(n), r2, &cluster.state(n)).await;
    }
    assert_eq!(store.changed_nodes(r2).await.unwrap().len(), 20);
}

/// Stores written under an earlier boundary rule (`Cuts::FIRST`: where
/// chunks and manifests ended, with the same bodies' encoding) read as
/// before, a writer under the current rule commits on top of them, and gc
/// sweeps their rows once no kept revision reads them.
async fn reads_what_an_earlier_rule_wrote(db: TestDb) {
    let epoch = db.store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(4, 400);
    let r1 = db
        .store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();

    // `services` at r1 as a store under the first rule wrote it.
    let (first, chunks) = ChunkedFragment::with_cuts(cluster.services.clone(), Cuts::FIRST);
    let (current, _) = ChunkedFragment::new(cluster.services.clone());
    assert_ne!(first.key(), current.key(), "the rules cut differently");
    assert!(first.manifests().len() < current.manifests().len());
    let mut sql = Vec::new();
    for c in &chunks {
        sql.push(format!(
            "INSERT INTO chunks (digest, atoms, body) VALUES ({}, {}, {}) ON CONFLICT (digest) DO NOTHING",
            db.blob(&c.key.0),
            c.atoms,
            db.blob(&c.body)
        ));
    }
    for m in first.manifests() {
        sql.push(format!(
            "INSERT INTO manifests (digest, level, body) VALUES ({}, {}, {}) ON CONFLICT (digest) DO NOTHING",
            db.blob(&m.key.0),
            m.level,
            db.blob(&m.body)
        ));
    }
    let h = first.header();
    sql.push(format!(
        "INSERT INTO fragments (digest, root, height, state_digest, atoms) VALUES ({}, {}, {}, {}, {})",
        db.blob(&first.key().0),
        db.blob(&h.root.0),
        h.height,
        db.blob(&h.digest.0),
        h.atoms
    ));
    sql.push(format!(
        "UPDATE shared_parts SET fragment = {} WHERE name = 'services'",
        db.blob(&first.key().0)
    ));
    for statement in sql {
        db.store.execute_unchecked(&statement).await.unwrap();
    }
    // The current rule's `services` rows are unreferenced now.
    db.store
        .gc(Retention {
            keep_newest: 10,
            keep_younger_than_ms: 0,
            now_ms: in_an_hour(),
        })
        .await
        .unwrap();

    // A new process reads the first rule's rows, and writes on top of them.
    let store = db.reopen().await;
    for n in [0, 3] {
        assert_state(&store, &Cluster::node_name(n), r1, &cluster.state(n)).await;
    }
    let epoch = store.acquire_epoch().await.unwrap();
    cluster.services = Arc::new(services(400, 1));
    let r2 = store
        .commit(cluster.request(epoch, "endpoint"))
        .await
        .unwrap();
    for n in [0, 3] {
        assert_state(&store, &Cluster::node_name(n), r2, &cluster.state(n)).await;
    }
    let old = Cluster::new(4, 400);
    assert_state(&store, "node-002", r1, &old.state(2)).await;

    // Once r1 is dropped, so is every row only the first rule wrote.
    store
        .gc(Retention {
            keep_newest: 1,
            keep_younger_than_ms: 0,
            now_ms: in_an_hour(),
        })
        .await
        .unwrap();
    let (_, now) = ChunkedFragment::new(cluster.services.clone());
    let stats = store.stats().await.unwrap();
    let others: u64 = [&cluster.base, &cluster.zones[0], &cluster.zones[1]]
        .into_iter()
        .chain(&cluster.own)
        .map(|f| ChunkedFragment::new(f.clone()).1.len() as u64)
        .sum();
    assert_eq!(
        stats.chunks,
        now.len() as u64 + others,
        "only the chunks of r2's fragments are kept"
    );
    assert_state(&store, "node-001", r2, &cluster.state(1)).await;
}

/// Unix milliseconds an hour from now: every revision is older.
fn in_an_hour() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_millis()).unwrap() + 3_600_000
}
