//! Rollback, pins and resume: history is never rewritten, pinned nodes
//! keep their old state while their computed state is still recorded.

use std::collections::BTreeSet;
use std::sync::Arc;

use setpoint_dataplane::NodeDataplane;
use setpoint_store::{Epoch, RevisionAction, RevisionId, RollbackRequest, Store, StoreError};

use crate::support::{Cluster, TestDb, assert_state, own, services, zone};

both!(
    rollback_all_nodes_pins_and_resumes,
    rollback_some_nodes,
    rollback_refusals,
);

fn rollback(epoch: Epoch, to: RevisionId, nodes: Option<&[&str]>, reason: &str) -> RollbackRequest {
    RollbackRequest {
        epoch,
        to,
        nodes: nodes.map(|n| n.iter().map(|s| s.to_string()).collect()),
        reason: reason.to_string(),
    }
}

fn states(c: &Cluster) -> Vec<NodeDataplane> {
    (0..c.own.len()).map(|n| c.state(n)).collect()
}

async fn computed(store: &Store, node: &str, r: RevisionId) -> NodeDataplane {
    store
        .computed_state(node, r)
        .await
        .unwrap_or_else(|e| panic!("computed {node} at {r}: {e}"))
        .unwrap_or_else(|| panic!("computed {node} missing at {r}"))
}

async fn rollback_all_nodes_pins_and_resumes(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(4, 20);
    let r1 = store.commit(cluster.request(epoch, "v1")).await.unwrap();
    let v1 = states(&cluster);
    // A shared part and one node's own part change.
    cluster.services = Arc::new(services(20, 3));
    cluster.zones[0] = Arc::new(zone(0, 4));
    cluster.own[1] = Arc::new(own(1, 5));
    let r2 = store.commit(cluster.request(epoch, "v2")).await.unwrap();
    let v2 = states(&cluster);

    let r3 = store
        .rollback(rollback(epoch, r1, None, "bad services"))
        .await
        .unwrap();
    assert_eq!(r3, RevisionId(3));
    for n in 0..4 {
        let node = Cluster::node_name(n);
        assert_state(store, &node, r3, &v1[n]).await;
        // The computed state is still v2: nothing recomputed it.
        assert!(computed(store, &node, r3).await == v2[n]);
        // History is intact.
        assert_state(store, &node, r2, &v2[n]).await;
        assert_state(store, &node, r1, &v1[n]).await;
    }
    let d = store.diff("node-001", r2, r3).await.unwrap();
    assert_eq!(d, setpoint_dataplane::diff(&v2[1], &v1[1]));
    // Read all at once: the same states, and the pinned ones with where
    // they are held.
    let all = store.node_states(r3, None).await.unwrap();
    assert_eq!(all.len(), 4);
    for n in 0..4 {
        assert!(
            all[&Cluster::node_name(n)] == v1[n],
            "node {n} read in bulk"
        );
    }
    let pinned = store.pinned_states().await.unwrap();
    assert_eq!(pinned.len(), 4);
    for n in 0..4 {
        let (held_at, state) = &pinned[&Cluster::node_name(n)];
        assert_eq!(*held_at, r1);
        assert!(*state == v1[n], "node {n} pinned state");
    }
    let pins = store.pins().await.unwrap();
    assert_eq!(pins.len(), 4);
    for (n, pin) in pins.iter().enumerate() {
        assert_eq!(pin.node, Cluster::node_name(n));
        assert_eq!((pin.held_at, pin.since), (r1, r3));
        assert_eq!(pin.reason, "bad services");
    }
    let info = &store.list_revisions(1, None).await.unwrap()[0];
    assert_eq!(info.revision, r3);
    assert_eq!(info.action, RevisionAction::Rollback { to: r1 });
    assert_eq!(info.cause.summary, "bad services");
    assert_eq!(info.nodes_changed, 4);
    assert_eq!(store.changed_nodes(r3).await.unwrap().len(), 4);

    // A later commit is recorded but does not move the pinned nodes.
    cluster.services = Arc::new(services(20, 4));
    cluster.own[2] = Arc::new(own(2, 6));
    let r4 = store.commit(cluster.request(epoch, "v3")).await.unwrap();
    let v3 = states(&cluster);
    for n in 0..4 {
        let node = Cluster::node_name(n);
        assert_state(store, &node, r4, &v1[n]).await;
        assert!(computed(store, &node, r4).await == v3[n], "{node} computed");
    }
    assert!(store.changed_nodes(r4).await.unwrap().is_empty());
    let info = &store.list_revisions(1, None).await.unwrap()[0];
    assert_eq!(info.action, RevisionAction::Commit);
    assert_eq!(info.nodes_changed, 0, "pinned nodes are not changes");

    // Resume: the newest computed states become current.
    let r5 = store.resume(epoch, None).await.unwrap();
    assert!(store.pins().await.unwrap().is_empty());
    for n in 0..4 {
        let node = Cluster::node_name(n);
        assert_state(store, &node, r5, &v3[n]).await;
        assert_state(store, &node, r4, &v1[n]).await;
    }
    assert_eq!(store.changed_nodes(r5).await.unwrap().len(), 4);
    let info = &store.list_revisions(1, None).await.unwrap()[0];
    assert_eq!(info.action, RevisionAction::Resume);

    // Another writer's cache loads the store as it is and commits on top.
    let other = db.reopen().await;
    let e2 = other.acquire_epoch().await.unwrap();
    cluster.own[3] = Arc::new(own(3, 7));
    let r6 = other.commit(cluster.request(e2, "v4")).await.unwrap();
    assert_eq!(
        other.changed_nodes(r6).await.unwrap(),
        vec!["node-003".to_string()]
    );
    for n in 0..4 {
        assert_state(store, &Cluster::node_name(n), r6, &cluster.state(n)).await;
    }
}

async fn rollback_some_nodes(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(3, 10);
    let r1 = store.commit(cluster.request(epoch, "v1")).await.unwrap();
    let v1 = states(&cluster);
    cluster.services = Arc::new(services(10, 2));
    let r2 = store.commit(cluster.request(epoch, "v2")).await.unwrap();

    let r3 = store
        .rollback(rollback(epoch, r1, Some(&["node-001"]), "canary"))
        .await
        .unwrap();
    assert_eq!(
        store.changed_nodes(r3).await.unwrap(),
        vec!["node-001".to_string()]
    );
    assert_state(store, "node-001", r3, &v1[1]).await;
    assert_state(store, "node-000", r3, &cluster.state(0)).await;
    assert_state(store, "node-002", r3, &cluster.state(2)).await;

    // Only shared parts change: the unpinned nodes follow, node-001 not.
    cluster.services = Arc::new(services(10, 5));
    let r4 = store
        .commit(cluster.shared_request(epoch, "v3"))
        .await
        .unwrap();
    assert_eq!(
        store.changed_nodes(r4).await.unwrap(),
        vec!["node-000".to_string(), "node-002".to_string()]
    );
    assert_state(store, "node-000", r4, &cluster.state(0)).await;
    assert_state(store, "node-001", r4, &v1[1]).await;
    assert!(computed(store, "node-001", r4).await == cluster.state(1));
    let all = store.node_states(r4, None).await.unwrap();
    assert!(all["node-000"] == cluster.state(0));
    assert!(all["node-001"] == v1[1], "the pinned node, in bulk");
    assert!(all["node-002"] == cluster.state(2));
    let one: BTreeSet<String> = ["node-002".to_string()].into();
    let some = store.node_states(r1, Some(&one)).await.unwrap();
    assert_eq!(some.keys().collect::<Vec<_>>(), ["node-002"]);
    assert!(some["node-002"] == v1[2]);
    let pinned = store.pinned_states().await.unwrap();
    assert_eq!(pinned.keys().collect::<Vec<_>>(), ["node-001"]);
    assert_eq!(
        store.list_revisions(1, None).await.unwrap()[0].nodes_changed,
        2
    );

    // Rolling an already pinned node back again moves its pin.
    let r5 = store
        .rollback(rollback(epoch, r2, Some(&["node-001"]), "less far"))
        .await
        .unwrap();
    let pins = store.pins().await.unwrap();
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].held_at, pins[0].since), (r2, r5));
    assert!(
        store.node_state("node-001", r5).await.unwrap().unwrap()
            == computed(store, "node-001", r2).await
    );

    // Resuming a node that is not pinned is refused; the pinned one resumes.
    let not_pinned: BTreeSet<String> = ["node-000".to_string()].into();
    assert!(matches!(
        store.resume(epoch, Some(not_pinned)).await,
        Err(StoreError::InvalidRequest(_))
    ));
    let r6 = store
        .resume(epoch, Some(["node-001".to_string()].into()))
        .await
        .unwrap();
    assert_state(store, "node-001", r6, &cluster.state(1)).await;
    assert!(matches!(
        store.resume(epoch, None).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert_eq!(store.head().await.unwrap(), Some(r6));
}

async fn rollback_refusals(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(2, 10);
    let r1 = store.commit(cluster.request(epoch, "v1")).await.unwrap();
    cluster.services = Arc::new(services(10, 1));
    let r2 = store.commit(cluster.request(epoch, "v2")).await.unwrap();

    let err = store
        .rollback(rollback(epoch, RevisionId(99), None, "nowhere"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownRevision(RevisionId(99))),
        "{err}"
    );
    let err = store
        .rollback(rollback(epoch, r1, Some(&["node-404"]), "who"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    assert!(err.to_string().contains("node-404"), "{err}");

    // A deposed leader can neither roll back nor resume.
    let other = db.reopen().await;
    let newer = other.acquire_epoch().await.unwrap();
    assert!(matches!(
        store.rollback(rollback(epoch, r1, None, "deposed")).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        store.resume(epoch, None).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    assert_eq!(store.head().await.unwrap(), Some(r2));
    assert!(store.pins().await.unwrap().is_empty());

    // Refusals left the writer able to commit on top of r2.
    cluster.own[0] = Arc::new(own(0, 3));
    let r3 = store.commit(cluster.request(newer, "v3")).await.unwrap();
    assert_eq!(r3, RevisionId(3));
    assert_eq!(
        store.changed_nodes(r3).await.unwrap(),
        vec!["node-000".to_string()]
    );
    for n in 0..2 {
        assert_state(store, &Cluster::node_name(n), r3, &cluster.state(n)).await;
    }
}
