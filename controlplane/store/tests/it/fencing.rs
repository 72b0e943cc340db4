//! Two writers: the deposed one is refused, inside the transaction.

use std::sync::Arc;

use setpoint_store::{Epoch, RevisionId, StoreError};

use crate::support::{Cluster, TestDb, assert_state, own, services};

both!(stale_epoch_is_refused, concurrent_writers_serialise);

async fn stale_epoch_is_refused(db: TestDb) {
    let a = db.store.clone();
    let b = db.reopen().await;
    let mut cluster = Cluster::new(3, 10);

    let ea = a.acquire_epoch().await.unwrap();
    let r1 = a.commit(cluster.request(ea, "leader a")).await.unwrap();

    // b takes over.
    let eb = b.acquire_epoch().await.unwrap();
    assert!(eb > ea);
    cluster.services = Arc::new(services(10, 1));
    let err = a
        .commit(cluster.request(ea, "deposed a"))
        .await
        .unwrap_err();
    match err {
        StoreError::StaleEpoch { ours, current } => {
            assert_eq!(ours, ea);
            assert_eq!(current, eb);
        }
        other => panic!("expected a stale epoch, got {other}"),
    }
    assert_eq!(a.head().await.unwrap(), Some(r1));

    // b's cache was loaded before a committed nothing more; it commits.
    let r2 = b.commit(cluster.request(eb, "leader b")).await.unwrap();
    assert_eq!(r2, RevisionId(2));

    // a comes back with a new epoch; its cache is behind b's commit and is
    // reloaded, so what it writes is right.
    let ea2 = a.acquire_epoch().await.unwrap();
    cluster.own[1] = Arc::new(own(1, 6));
    let r3 = a
        .commit(cluster.request(ea2, "leader a again"))
        .await
        .unwrap();
    assert_eq!(r3, RevisionId(3));
    for n in 0..3 {
        assert_state(&a, &Cluster::node_name(n), r3, &cluster.state(n)).await;
    }
    assert_eq!(
        a.changed_nodes(r3).await.unwrap(),
        vec!["node-001".to_string()]
    );
    // And b is now the deposed one.
    assert!(matches!(
        b.commit(cluster.request(eb, "deposed b")).await,
        Err(StoreError::StaleEpoch { .. })
    ));
    // An epoch nobody acquired but higher than all is accepted (fencing only
    // refuses the past).
    assert!(
        b.commit(cluster.request(Epoch(ea2.0 + 10), "ahead"))
            .await
            .is_ok()
    );
}

async fn concurrent_writers_serialise(db: TestDb) {
    let a = db.store.clone();
    let b = db.reopen().await;
    let epoch = a.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(2, 10);
    a.commit(cluster.request(epoch, "initial")).await.unwrap();
    // Same epoch from two handles (one leader, two connections): commits
    // interleave and every revision number is used once.
    let mut tasks = Vec::new();
    for (w, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for g in 0..5u32 {
                let mut c = Cluster::new(2, 10);
                c.services = Arc::new(services(10, g * 2 + w as u32));
                out.push(store.commit(c.request(epoch, "race")).await);
            }
            out
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(r) => numbers.push(r.0),
                Err(StoreError::Raced { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }
    numbers.sort();
    let mut unique = numbers.clone();
    unique.dedup();
    assert_eq!(numbers, unique);
    let head = a.head().await.unwrap().unwrap();
    assert_eq!(head.0, 1 + numbers.len() as u64);
}
