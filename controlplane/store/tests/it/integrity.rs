//! Bad bytes are errors naming the object; failed commits leave no trace.

use std::sync::Arc;

use setpoint_dataplane::Digest;
use setpoint_store::chunk::ChunkedFragment;
use setpoint_store::{FailPoint, RevisionId, Store, StoreError, StoreOptions};

use crate::support::{Cluster, TestDb, assert_state, own, services};

/// Overwrites the chunk `victim` with a well-formed but different body.
async fn corrupt_chunk(db: &TestDb, victim: &Digest) {
    let changed = db
        .store
        .execute_unchecked(&format!(
            "UPDATE chunks SET body = {} WHERE digest = {}",
            db.blob(&[1, 5, 4, 10, 0, 0, 1]),
            db.blob(&victim.0)
        ))
        .await
        .unwrap();
    assert_eq!(changed, 1);
}

/// Reading `node` at `r` is a corruption error naming it and the chunk.
async fn assert_corrupt_naming(store: &Store, node: &str, r: RevisionId, victim: &Digest) {
    let err = store.node_state(node, r).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&victim.to_string()), "{text}");
    assert!(text.contains(node), "{text}");
}

both!(
    corrupt_chunk_is_an_error_naming_it,
    corrupt_chunk_of_a_big_fragment_is_an_error_naming_it,
    corrupt_manifest_and_header_are_errors,
    failed_commit_leaves_previous_revision,
);

async fn corrupt_chunk_is_an_error_naming_it(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(3, 10);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    let (cf, _) = ChunkedFragment::new(Arc::new(own(1, 0)));
    let victim = *cf.chunk_keys().next().unwrap();
    corrupt_chunk(&db, &victim).await;
    assert_corrupt_naming(store, "node-001", r1, &victim).await;
    assert!(store.diff("node-001", r1, r1).await.is_err());
    // Other nodes do not share that chunk and stay readable.
    assert_state(store, "node-000", r1, &cluster.state(0)).await;
}

/// A `services` part big enough to be decoded on several threads, read
/// once (so the handle keeps it decoded), then one of its chunks corrupted.
async fn corrupt_chunk_of_a_big_fragment_is_an_error_naming_it(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(2, 2000);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    assert_state(store, "node-001", r1, &cluster.state(1)).await;
    let (cf, chunks) = ChunkedFragment::new(cluster.services.clone());
    let bytes: usize = chunks.iter().map(|c| c.body.len()).sum();
    // Reads decode in parallel from 64 KiB of chunks.
    assert!(bytes > 128 * 1024, "{bytes} bytes of chunks");
    let keys: Vec<_> = cf.chunk_keys().copied().collect();
    let victim = keys[keys.len() / 2];
    corrupt_chunk(&db, &victim).await;

    // A handle that decodes from the tables: an error naming chunk and node.
    let fresh = db.reopen().await;
    assert_corrupt_naming(&fresh, "node-001", r1, &victim).await;
    assert!(fresh.diff("node-000", r1, r1).await.is_err());

    // Nothing kept decoded: every read decodes, and fails.
    let options = StoreOptions {
        decoded_atoms: 0,
        ..StoreOptions::default()
    };
    let uncached = Store::open_with(&db.url, options).await.unwrap();
    for _ in 0..2 {
        let err = uncached.node_state("node-000", r1).await.unwrap_err();
        assert!(err.to_string().contains(&victim.to_string()), "{err}");
    }

    // The first handle still hands out what it checked before the bytes
    // changed: the committed state, never another one.
    assert_state(store, "node-001", r1, &cluster.state(1)).await;
    assert_state(store, "node-000", r1, &cluster.state(0)).await;
}

async fn corrupt_manifest_and_header_are_errors(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let cluster = Cluster::new(3, 10);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();

    let (cf, _) = ChunkedFragment::new(Arc::new(own(0, 0)));
    let manifest = cf.manifests()[0].key;
    store
        .execute_unchecked(&format!(
            "UPDATE manifests SET body = {} WHERE digest = {}",
            db.blob(&[1, 1]),
            db.blob(&manifest.0)
        ))
        .await
        .unwrap();
    let err = store.node_state("node-000", r1).await.unwrap_err();
    assert!(err.to_string().contains(&manifest.to_string()), "{err}");

    let (cf, _) = ChunkedFragment::new(cluster.services.clone());
    let key = cf.key();
    store
        .execute_unchecked(&format!(
            "UPDATE fragments SET atoms = atoms + 1 WHERE digest = {}",
            db.blob(&key.0)
        ))
        .await
        .unwrap();
    let err = store.node_state("node-002", r1).await.unwrap_err();
    assert!(err.to_string().contains(&key.to_string()), "{err}");

    store
        .execute_unchecked(&format!(
            "DELETE FROM fragments WHERE digest = {}",
            db.blob(&key.0)
        ))
        .await
        .unwrap();
    let err = store.node_state("node-002", r1).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Missing {
                what: "fragment",
                ..
            }
        ),
        "{err}"
    );
}

async fn failed_commit_leaves_previous_revision(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.unwrap();
    let mut cluster = Cluster::new(4, 30);
    let r1 = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .unwrap();
    let before = store.stats().await.unwrap();
    let old = Cluster::new(4, 30);

    for at in [FailPoint::AfterContent, FailPoint::BeforeCommit] {
        store.fail_commits_at(Some(at));
        cluster.services = Arc::new(services(30, 5));
        cluster.own[2] = Arc::new(own(2, 9));
        let err = store
            .commit(cluster.request(epoch, "doomed"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Injected(a) if a == at), "{err}");
        assert_eq!(store.head().await.unwrap(), Some(r1));
        let stats = store.stats().await.unwrap();
        assert_eq!(stats, before, "a failed commit leaves no rows");
        for n in 0..4 {
            assert_state(store, &Cluster::node_name(n), r1, &old.state(n)).await;
        }
    }
    store.fail_commits_at(None);
    let r2 = store.commit(cluster.request(epoch, "retry")).await.unwrap();
    assert_eq!(r2, RevisionId(2));
    for n in 0..4 {
        assert_state(store, &Cluster::node_name(n), r2, &cluster.state(n)).await;
        assert_state(store, &Cluster::node_name(n), r1, &old.state(n)).await;
    }
}
