//! One integration test binary for the store. Every test body is an async
//! fn taking a [`support::TestDb`]; `both!` runs it on a fresh SQLite file
//! (`sqlite::<name>`) and on a fresh PostgreSQL database (`postgres::<name>`).
//! `chunks` pins the chunk format and feeds its decoders hostile bytes
//! (`hostile`, shared with the contract's tests, brings a counting
//! allocator).

/// Declares `sqlite::$name` and `postgres::$name` tests for each body.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::on_sqlite(super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::on_postgres(super::$name).await
                }
            )*
        }
    };
}

#[path = "../../../../proto/dataplane/tests/it/hostile.rs"]
mod hostile;

mod agents;
mod chunks;
mod cluster;
mod crash;
mod decoders;
mod fencing;
mod gc;
mod integrity;
mod revisions;
mod rollback;
mod sharing;
mod sqlite_url;
mod support;
