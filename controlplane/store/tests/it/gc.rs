//! Retention: kept revisions read identically, collected ones are gone,
//! content shrinks, pin targets survive, commits run beside a GC.

use std::sync::Arc;

use setpoint_dataplane::NodeDataplane;
use setpoint_store::{Retention, RevisionId, RollbackRequest, Store, StoreError};

use crate::support::{Cluster, TestDb, assert_state, own, services, zone};

both!(
    gc_keeps_the_windows_and_drops_the_rest,
    gc_keeps_pin_targets,
    commits_run_beside_gc,
);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Keep the newest `n` only (everything is older than "now + 1 h - 0").
fn newest(n: usize) -> Retention {
    Retention {
        keep_newest: n,
        keep_younger_than_ms: 0,
        now_ms: now_ms() + 3_600_000,
    }
}

/// Commits 10 revisions: services every time, a zone and an own part now
/// and then, `base` only at the first. Returns each revision's states.
async fn history(store: &Store, cluster: &mut Cluster) -> Vec<(RevisionId, Vec<NodeDataplane>)> {
    let epoch = store.acquire_epoch().await.unwrap();
    let mut out = Vec::new();
    for g in 0..10u32 {
        cluster.services = Arc::new(services(40, g));
        if g % 3 == 1 {
            cluster.zones[1] = Arc::new(zone(1, g));
        }
        if g % 4 == 2 {
            cluster.own[2] = Arc::new(own(2, g));
        }
        let r = store
            .commit(cluster.request(epoch, &format!("g{g}")))
            .await
            .unwrap();
        out.push((
            r,
            (0..cluster.own.len()).map(|n| cluster.state(n)).collect(),
        ));
    }
    out
}

async fn gc_keeps_the_windows_and_drops_the_rest(db: TestDb) {
    let store = &db.store;
    let mut cluster = Cluster::new(4, 40);
    let hist = history(store, &mut cluster).await;
    let before = store.stats().await.unwrap();

    // The time window keeps everything.
    let all = store
        .gc(Retention {
            keep_newest: 1,
            keep_younger_than_ms: 3_600_000,
            now_ms: now_ms(),
        })
        .await
        .unwrap();
    assert_eq!(all.revisions, 0);
    assert_eq!(store.stats().await.unwrap().chunks, before.chunks);

    let report = store.gc(newest(3)).await.unwrap();
    assert_eq!(report.revisions, 7);
    assert!(report.chunks > 0 && report.fragments > 0, "{report:?}");
    let after = store.stats().await.unwrap();
    assert_eq!(after.revisions, 3);
    assert!(after.chunks < before.chunks, "{before:?} → {after:?}");
    assert!(after.fragments < before.fragments);
    assert!(after.nodes < before.nodes && after.shared_parts < before.shared_parts);

    for (r, states) in &hist[..7] {
        assert!(
            matches!(store.node_state("node-000", *r).await, Err(StoreError::UnknownRevision(x)) if x == *r)
        );
        assert!(matches!(
            store.changed_nodes(*r).await,
            Err(StoreError::UnknownRevision(_))
        ));
        let _ = states;
    }
    assert!(matches!(
        store.diff("node-000", hist[0].0, hist[9].0).await,
        Err(StoreError::UnknownRevision(_))
    ));
    for (r, states) in &hist[7..] {
        for (n, state) in states.iter().enumerate() {
            assert_state(store, &Cluster::node_name(n), *r, state).await;
        }
    }
    let listed: Vec<RevisionId> = store
        .list_revisions(10, None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.revision)
        .collect();
    assert_eq!(listed, vec![hist[9].0, hist[8].0, hist[7].0]);

    // Idempotent, and the writer carries on.
    assert_eq!(store.gc(newest(3)).await.unwrap(), Default::default());
    let epoch = store.acquire_epoch().await.unwrap();
    cluster.own[0] = Arc::new(own(0, 9));
    cluster.services = Arc::new(services(40, 1));
    let r = store
        .commit(cluster.request(epoch, "after gc"))
        .await
        .unwrap();
    for n in 0..4 {
        assert_state(store, &Cluster::node_name(n), r, &cluster.state(n)).await;
    }
    // A reopened writer (cache loaded from the collected store) too.
    let other = db.reopen().await;
    let e2 = other.acquire_epoch().await.unwrap();
    cluster.zones[0] = Arc::new(zone(0, 7));
    let r = other.commit(cluster.request(e2, "reopened")).await.unwrap();
    for n in 0..4 {
        assert_state(&other, &Cluster::node_name(n), r, &cluster.state(n)).await;
    }
}

async fn gc_keeps_pin_targets(db: TestDb) {
    let store = &db.store;
    let mut cluster = Cluster::new(3, 40);
    let hist = history(store, &mut cluster).await;
    let epoch = store.acquire_epoch().await.unwrap();
    let target = hist[2].0;
    let rb = store
        .rollback(RollbackRequest {
            epoch,
            to: target,
            nodes: Some(["node-002".to_string()].into()),
            reason: "hold".into(),
        })
        .await
        .unwrap();
    cluster.services = Arc::new(services(40, 77));
    let r = store.commit(cluster.request(epoch, "later")).await.unwrap();

    store.gc(newest(2)).await.unwrap();
    let kept: Vec<RevisionId> = store
        .list_revisions(20, None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.revision)
        .collect();
    assert_eq!(kept, vec![r, rb, target]);
    for (n, state) in hist[2].1.iter().enumerate() {
        assert_state(store, &Cluster::node_name(n), target, state).await;
    }
    assert_state(store, "node-002", r, &hist[2].1[2]).await;
    assert_state(store, "node-000", r, &cluster.state(0)).await;
    assert!(matches!(
        store.node_state("node-000", hist[3].0).await,
        Err(StoreError::UnknownRevision(_))
    ));

    // Once resumed, the target is no longer special.
    let resumed = store.resume(epoch, None).await.unwrap();
    assert_state(store, "node-002", resumed, &cluster.state(2)).await;
    store.gc(newest(1)).await.unwrap();
    assert_eq!(store.stats().await.unwrap().revisions, 1);
    for n in 0..3 {
        assert_state(store, &Cluster::node_name(n), resumed, &cluster.state(n)).await;
    }
}

async fn commits_run_beside_gc(db: TestDb) {
    let store = db.store.clone();
    let mut cluster = Cluster::new(3, 40);
    history(&store, &mut cluster).await;
    let epoch = store.acquire_epoch().await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut c = Cluster::new(3, 40);
            let mut last = None;
            for g in 0..30u32 {
                c.services = Arc::new(services(40, 100 + g));
                c.own[g as usize % 3] = Arc::new(own(g % 3, g));
                let r = store
                    .commit(c.request(epoch, "beside gc"))
                    .await
                    .unwrap_or_else(|e| panic!("commit {g} beside gc: {e}"));
                last = Some((r, (0..3).map(|n| c.state(n)).collect::<Vec<_>>()));
            }
            last
        })
    };
    let gcs = {
        let gc_store = db.reopen().await;
        tokio::spawn(async move {
            let mut runs = 0;
            for _ in 0..20 {
                gc_store.gc(newest(2)).await.unwrap();
                runs += 1;
            }
            runs
        })
    };
    let (r, states) = writer.await.unwrap().unwrap();
    assert_eq!(gcs.await.unwrap(), 20);
    for (n, state) in states.iter().enumerate() {
        assert_state(&store, &Cluster::node_name(n), r, state).await;
    }
    store.gc(newest(2)).await.unwrap();
    for (n, state) in states.iter().enumerate() {
        assert_state(&store, &Cluster::node_name(n), r, state).await;
    }
}
