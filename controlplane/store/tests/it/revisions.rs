//! Commit and read back: round trips, old revisions, diffs, paging.

use std::sync::Arc;

use setpoint_dataplane::{Change, NodeDataplane, apply};
use setpoint_store::{Cause, CommitRequest, RevisionId, StoreError};

use crate::support::{Cluster, TestDb, assert_state, own, services, zone};

both!(
    round_trip_equals_input,
    old_revisions_stay_readable,
    diff_between_revisions,
    list_revisions_pages_newest_first,
    changed_nodes_and_removal,
    unknown_revision_and_node,
    invalid_requests_are_refused,
);

async fn round_trip_equals_input(db: TestDb) {
    let store = &db.store;
    assert_eq!(store.head().await.unwrap(), None);
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(6, 40);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    assert_eq!(r1, RevisionId(1));
    assert_eq!(store.head().await.unwrap(), Some(r1));
    for n in 0..6 {
        assert_state(store, &Cluster::node_name(n), r1, &cluster.state(n)).await;
    }
    let got = store
        .node_state(&Cluster::node_name(2), r1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.parts().count(), 4, "parts keep their names");
    assert!(got.part("zone/z0").is_some());
    assert!(got.part("node/node-002").is_some());
}

async fn old_revisions_stay_readable(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(4, 30);
    let mut history: Vec<(RevisionId, Vec<NodeDataplane>)> = Vec::new();
    let snapshot = |c: &Cluster| (0..4).map(|n| c.state(n)).collect::<Vec<_>>();

    let r = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    history.push((r, snapshot(&cluster)));
    for g in 1..=4u32 {
        match g % 3 {
            // An endpoint change: only `services`.
            1 => cluster.services = Arc::new(services(30, g)),
            // A zone grows.
            2 => cluster.zones[1] = Arc::new(zone(1, g)),
            // One node's own part.
            _ => cluster.own[3] = Arc::new(own(3, g)),
        }
        let r = store
            .commit(cluster.request(epoch, &format!("g{g}")))
            .await
            .unwrap();
        history.push((r, snapshot(&cluster)));
    }
    for (r, states) in &history {
        for (n, state) in states.iter().enumerate() {
            assert_state(store, &Cluster::node_name(n), *r, state).await;
        }
    }
}

async fn diff_between_revisions(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(3, 20);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    let before = cluster.state(1);
    cluster.services = Arc::new(services(20, 3));
    cluster.own[1] = Arc::new(own(1, 2));
    let r2 = store
        .commit(cluster.request(epoch, "change"))
        .await
        .unwrap();
    let after = cluster.state(1);

    let d = store.diff("node-001", r1, r2).await.unwrap();
    assert_eq!(d, setpoint_dataplane::diff(&before, &after));
    assert!(!d.is_empty());
    assert!(apply(&before, &d).unwrap() == after);
    assert!(store.diff("node-001", r2, r2).await.unwrap().is_empty());
    // Node 0 changed only through `services`.
    let d0 = store.diff("node-000", r1, r2).await.unwrap();
    assert!(
        d0.changes
            .iter()
            .all(|c| matches!(c, Change::RealServerEdited { .. })),
        "{:?}",
        d0.changes
    );
    // A node absent at one end diffs against the empty state.
    let mut req = CommitRequest::new(epoch, Cause::default());
    req.removed_nodes.insert("node-002".into());
    let r3 = store.commit(req).await.unwrap();
    let gone = store.diff("node-002", r2, r3).await.unwrap();
    assert_eq!(
        gone,
        setpoint_dataplane::diff(&cluster.state(2), &NodeDataplane::new())
    );
}

async fn list_revisions_pages_newest_first(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(2, 10);
    for g in 0..7u32 {
        cluster.services = Arc::new(services(10, g));
        let mut req = cluster.request(epoch, &format!("revision {g}"));
        req.cause.objects = vec![format!("EndpointSlice/ns/s{g}"), "Service/ns/a".into()];
        store.commit(req).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_revisions(3, before).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        before = page.last().map(|r| r.revision);
        seen.extend(page);
    }
    let numbers: Vec<u64> = seen.iter().map(|r| r.revision.0).collect();
    assert_eq!(numbers, vec![7, 6, 5, 4, 3, 2, 1]);
    let r7 = &seen[0];
    assert_eq!(r7.cause.summary, "revision 6");
    assert_eq!(
        r7.cause.objects,
        vec!["EndpointSlice/ns/s6".to_string(), "Service/ns/a".into()]
    );
    assert_eq!(r7.epoch, epoch);
    assert_eq!(r7.nodes_changed, 2);
    assert_eq!(r7.shared_changed, vec!["services".to_string()]);
    assert!(r7.committed_ms > 1_600_000_000_000);
    let r1 = &seen[6];
    assert_eq!(r1.nodes_changed, 2);
    assert_eq!(r1.shared_changed.len(), 4);
}

async fn changed_nodes_and_removal(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(5, 10);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    assert_eq!(store.changed_nodes(r1).await.unwrap().len(), 5);

    cluster.own[2] = Arc::new(own(2, 5));
    let r2 = store
        .commit(cluster.request(epoch, "one node"))
        .await
        .unwrap();
    assert_eq!(
        store.changed_nodes(r2).await.unwrap(),
        vec!["node-002".to_string()]
    );

    // Zone z1 is used by nodes 1 and 3.
    cluster.zones[1] = Arc::new(zone(1, 4));
    let r3 = store.commit(cluster.request(epoch, "zone")).await.unwrap();
    assert_eq!(
        store.changed_nodes(r3).await.unwrap(),
        vec!["node-001".to_string(), "node-003".into()]
    );

    let mut req = CommitRequest::new(epoch, Cause::default());
    req.removed_nodes.insert("node-004".into());
    let r4 = store.commit(req).await.unwrap();
    assert_eq!(
        store.changed_nodes(r4).await.unwrap(),
        vec!["node-004".to_string()]
    );
    assert!(store.node_state("node-004", r4).await.unwrap().is_none());
    assert_state(store, "node-004", r3, &cluster.state(4)).await;
    let info = store.list_revisions(1, None).await.unwrap();
    assert_eq!(info[0].nodes_changed, 1);

    // Nothing changed: a revision with no node changed.
    let r5 = store
        .commit(cluster.shared_request(epoch, "noop"))
        .await
        .unwrap();
    assert!(store.changed_nodes(r5).await.unwrap().is_empty());
}

async fn unknown_revision_and_node(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(1, 3);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    assert!(store.node_state("nobody", r1).await.unwrap().is_none());
    let err = store
        .node_state("node-000", RevisionId(9))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownRevision(RevisionId(9))),
        "{err}"
    );
    assert!(store.changed_nodes(RevisionId(0)).await.is_err());
}

async fn invalid_requests_are_refused(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(2, 3);
    store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();

    let mut req = CommitRequest::new(epoch, Cause::default());
    let mut parts = crate::support::parts_of(&cluster.state(0));
    parts.shared.insert("zone/nowhere".into());
    req.nodes.insert("node-000".into(), parts);
    let err = store.commit(req).await.unwrap_err();
    assert!(err.to_string().contains("zone/nowhere"), "{err}");

    let mut req = CommitRequest::new(epoch, Cause::default());
    req.removed_shared.insert("zone/z1".into());
    let err = store.commit(req).await.unwrap_err();
    assert!(err.to_string().contains("node-001"), "{err}");

    let mut req = CommitRequest::new(epoch, Cause::default());
    req.shared.insert("bad\nname".into(), cluster.base.clone());
    assert!(matches!(
        store.commit(req).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert_eq!(store.head().await.unwrap(), Some(RevisionId(1)));
}
