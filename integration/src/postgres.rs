//! Fresh PostgreSQL databases for tests and benchmarks that run in
//! parallel: one database each, on the server `SETPOINT_TEST_POSTGRES`
//! names (default: the local one, trust auth).

/// The server's maintenance database (`SETPOINT_TEST_POSTGRES`), where
/// databases are created.
pub fn postgres_admin_url() -> String {
    std::env::var("SETPOINT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database for one test; returns its URL.
pub fn fresh_postgres_database() -> String {
    let base = postgres_admin_url();
    let name = format!("setpoint_e2e_{}_{}", std::process::id(), unique_suffix());
    psql(&format!("CREATE DATABASE {name}"));
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("SETPOINT_TEST_POSTGRES must end in /database: {base}"),
    }
}

/// Runs one SQL command on the maintenance database; returns its output.
pub fn psql(sql: &str) -> String {
    let base = postgres_admin_url();
    let out = std::process::Command::new("psql")
        .args([base.as_str(), "-qAtc", sql])
        .output()
        .expect("psql runs (scripts/test makes sure PostgreSQL is up)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    // Tests of one process start within the same nanosecond often enough.
    nanos * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}
