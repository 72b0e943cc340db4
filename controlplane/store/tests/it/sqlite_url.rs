//! What a `sqlite:` store URL does with a file that is not there yet.

use setpoint_store::Store;

#[tokio::test]
async fn a_sqlite_url_without_a_mode_creates_its_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("setpoint.db");
    let store = Store::open(&format!("sqlite://{}", file.display()))
        .await
        .unwrap_or_else(|e| panic!("a plain sqlite://FILE opens a new store: {e}"));
    drop(store);
    assert!(file.is_file(), "{} was created", file.display());
    // And it opens again, migrated, without creating anything new.
    Store::open(&format!("sqlite://{}", file.display()))
        .await
        .unwrap_or_else(|e| panic!("reopening {}: {e}", file.display()));
}

#[tokio::test]
async fn an_explicit_mode_is_kept() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("missing.db");
    let refused = Store::open(&format!("sqlite://{}?mode=rw", file.display())).await;
    assert!(
        refused.is_err(),
        "mode=rw must not create {}",
        file.display()
    );
    assert!(!file.exists(), "{} was not created", file.display());
    Store::open(&format!("sqlite://{}?mode=rwc", file.display()))
        .await
        .unwrap_or_else(|e| panic!("mode=rwc creates the file: {e}"));
    assert!(file.is_file());
}
