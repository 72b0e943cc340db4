//! What the store reads back, under fire: a node row's list of parts, a
//! fragment's header, manifest and chunk bodies, each replaced by arbitrary
//! bytes or its own bytes with a few changed. A read is then the state or an
//! error — never a panic — and the rows restored read as before. (The
//! decoders behind the hash checks are fed directly in `chunks`; here the
//! checks themselves are under fire.)

use std::sync::Arc;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};
use setpoint_store::chunk::ChunkedFragment;
use setpoint_store::{Store, StoreOptions};

use crate::hostile::{arbitrary_bytes, edited, edits};
use crate::support::{Cluster, TestDb, assert_state, own};

both!(corrupted_rows_read_as_errors_never_panics);

/// Cases per row kind and backend: each is an UPDATE, a read and a restore.
const CASES: u32 = 48;

/// A stored column: where it is, and its good bytes.
struct Column {
    table: &'static str,
    column: &'static str,
    /// SQL condition naming the row.
    row: String,
    good: Vec<u8>,
}

/// Sets `column` to `bytes`, reads `node`, and checks the outcome is an
/// answer or an error.
async fn read_with(db: &TestDb, reader: &Store, column: &Column, bytes: &[u8], node: &str) {
    let sql = format!(
        "UPDATE {} SET {} = {} WHERE {}",
        column.table,
        column.column,
        db.blob(bytes),
        column.row
    );
    let changed = db.store.execute_unchecked(&sql).await.expect("update");
    assert_eq!(changed, 1, "{sql}");
    let revision = db.store.head().await.expect("head").expect("a head");
    // Either way is fine; a panic or a hang is not.
    let _ = reader.node_state(node, revision).await;
}

async fn corrupted_rows_read_as_errors_never_panics(db: TestDb) {
    let store = &db.store;
    let epoch = store.acquire_epoch().await.expect("epoch");
    let cluster = Cluster::new(2, 40);
    let revision = store
        .commit(cluster.request(epoch, "initial"))
        .await
        .expect("commit");
    let node = Cluster::node_name(1);
    let (own_part, own_chunks) = ChunkedFragment::new(Arc::new(own(1, 0)));
    let header = own_part.header();
    let blob = |bytes: &[u8]| db.blob(bytes);

    // The node row's own parts: (u16 name length, name, fragment key).
    let name = format!("node/{node}");
    let mut own_column = u16::try_from(name.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    own_column.extend_from_slice(name.as_bytes());
    own_column.extend_from_slice(&own_part.key().0);
    let manifest = &own_part.manifests()[0];
    let chunk = &own_chunks[0];
    let columns = [
        Column {
            table: "nodes",
            column: "own",
            row: format!("node = '{node}' AND revision = {}", revision.0),
            good: own_column,
        },
        Column {
            table: "fragments",
            column: "root",
            row: format!("digest = {}", blob(&own_part.key().0)),
            good: header.root.0.to_vec(),
        },
        Column {
            table: "manifests",
            column: "body",
            row: format!("digest = {}", blob(&manifest.key.0)),
            good: manifest.body.clone(),
        },
        Column {
            table: "chunks",
            column: "body",
            row: format!("digest = {}", blob(&chunk.key.0)),
            good: chunk.body.clone(),
        },
    ];

    // A reader that keeps nothing decoded, so every read goes to the rows.
    let options = StoreOptions {
        decoded_atoms: 0,
        ..StoreOptions::default()
    };
    let reader = Store::open_with(&db.url, options).await.expect("reader");
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    for column in &columns {
        for case in 0..CASES {
            let bytes = if case % 2 == 0 {
                let edits = edits().new_tree(&mut runner).expect("edits").current();
                edited(&column.good, &edits)
            } else {
                arbitrary_bytes()
                    .new_tree(&mut runner)
                    .expect("bytes")
                    .current()
            };
            read_with(&db, &reader, column, &bytes, &node).await;
        }
        read_with(&db, &reader, column, &column.good, &node).await;
        // Restored, it reads as committed, and the other node never minded.
        assert_state(&reader, &node, revision, &cluster.state(1)).await;
        assert_state(&reader, &Cluster::node_name(0), revision, &cluster.state(0)).await;
    }
}
