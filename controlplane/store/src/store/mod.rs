//! [`Store`]: open, lead, watch the head; the commit path in [`commit`],
//! a node's state at a revision in [`states`] (from the fragments
//! [`fragments`] loads and checks), revision listings in [`revisions`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use crate::db::{self, Db};
use crate::decoded::Decoded;
use crate::error::{Result, StoreError};
use crate::types::{Backend, Epoch, FailPoint, RevisionId, StoreStats};
use crate::write::WriterCache;

mod commit;
mod fragments;
mod revisions;
mod states;

pub(crate) use states::pin_plan;

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// Atoms of recently read fragments kept decoded (verified against
    /// their keys) after their readers drop them; 0 keeps only what
    /// someone still holds. About 100 bytes of memory per atom.
    pub decoded_atoms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            decoded_atoms: 500_000,
        }
    }
}

/// A handle on the revision store. Cloning shares the pool and the
/// writer's cache; opening the same URL twice gives two independent
/// writers (as two control-plane replicas are).
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) writer: Arc<Mutex<WriterCache>>,
    fail: Arc<AtomicU8>,
    /// Fragments decoded (and verified against their key): those someone
    /// still holds, and the most recently read ones.
    decoded: Arc<Decoded>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn lines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// Opens (and migrates) the store at `url`: `sqlite://path?mode=rwc`
    /// creates the file on first use; `postgres://…` needs the database to
    /// exist.
    pub async fn open(url: &str) -> Result<Store> {
        Self::open_with(url, StoreOptions::default()).await
    }

    pub async fn open_with(url: &str, options: StoreOptions) -> Result<Store> {
        let db = Db::open(url, options.max_connections.max(1)).await?;
        Ok(Store {
            db,
            writer: Arc::new(Mutex::new(WriterCache::default())),
            fail: Arc::new(AtomicU8::new(0)),
            decoded: Arc::new(Decoded::new(options.decoded_atoms)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub async fn close(&self) {
        self.db.close().await
    }

    /// A new fencing epoch, higher than any handed out before. From now
    /// on commits carrying an older epoch are refused.
    pub async fn acquire_epoch(&self) -> Result<Epoch> {
        let e = self.db.acquire_epoch().await?;
        Ok(Epoch(db::to_u64(e, "leader", "epoch")?))
    }

    /// Leadership, if no other control plane holds it (PostgreSQL advisory
    /// lock, released when this process or its connection dies); with
    /// SQLite always granted. Leading also needs an epoch for fencing.
    pub async fn try_lead(&self) -> Result<Option<db::Leadership>> {
        self.db.try_lead().await
    }

    /// The head as it moves, whoever commits: PostgreSQL notifications,
    /// and a poll every `poll` besides (missed notifications, SQLite).
    pub fn watch_head(&self, poll: std::time::Duration) -> tokio::sync::watch::Receiver<u64> {
        let (tx, rx) = tokio::sync::watch::channel(0);
        let store = self.clone();
        tokio::spawn(async move {
            let mut listener = store.db.head_listener().await.ok().flatten();
            loop {
                if let Ok(Some(head)) = store.head().await {
                    tx.send_if_modified(|h| {
                        let newer = head.0 > *h;
                        if newer {
                            *h = head.0;
                        }
                        newer
                    });
                }
                if tx.is_closed() {
                    return;
                }
                match listener.as_mut() {
                    Some(l) => {
                        // A broken listener leaves the poll to do the work.
                        if let Ok(Err(_)) = tokio::time::timeout(poll, l.recv()).await {
                            listener = None;
                        }
                    }
                    None => tokio::time::sleep(poll).await,
                }
            }
        });
        rx
    }

    /// The newest revision, if any was committed.
    pub async fn head(&self) -> Result<Option<RevisionId>> {
        let (_, head) = self.db.leader().await?;
        let head = db::to_u64(head, "leader", "head")?;
        Ok((head > 0).then_some(RevisionId(head)))
    }

    /// Makes the next commits fail at `at` (tests: a commit dying midway).
    #[doc(hidden)]
    pub fn fail_commits_at(&self, at: Option<FailPoint>) {
        let v = match at {
            None => 0,
            Some(FailPoint::AfterContent) => 1,
            Some(FailPoint::BeforeCommit) => 2,
        };
        self.fail.store(v, Ordering::SeqCst);
    }

    fn failing_at(&self, at: FailPoint) -> Result<()> {
        let v = self.fail.load(Ordering::SeqCst);
        let hit = matches!(
            (v, at),
            (1, FailPoint::AfterContent) | (2, FailPoint::BeforeCommit)
        );
        if hit {
            return Err(StoreError::Injected(at));
        }
        Ok(())
    }

    /// Runs one statement as given (tests corrupt rows with it).
    #[doc(hidden)]
    pub async fn execute_unchecked(&self, sql: &str) -> Result<u64> {
        self.db.execute_raw(sql.to_string()).await
    }

    /// Row counts and size on disk, from the database.
    pub async fn stats(&self) -> Result<StoreStats> {
        self.db.stats().await
    }
}
