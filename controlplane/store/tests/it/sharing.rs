//! Structural sharing: what a revision writes grows with the change.

use std::sync::Arc;

use setpoint_dataplane::Fragment;
use setpoint_store::{Cause, CommitRequest, NodeParts};

use crate::support::{Cluster, TestDb, assert_state, own, services};

both!(
    shared_change_writes_no_node_rows,
    identical_fragments_stored_once,
    reopened_writer_writes_only_changes,
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
