//! A value built from files and built again when their bytes change: the
//! admin API's tokens and TLS config, the agent listener's TLS config.
//! Kubernetes updates a mounted
//! Secret by swapping a symlink, so the files are read (not their mtimes)
//! and compared by digest.
//!
//! ```text
//!  files ──poll every `every`──▶ digest changed? ──▶ build ──ok──▶ watch::Sender (new value)
//!                                                         └─err─▶ warn, keep the previous value
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// A digest of the files' bytes; `None` while one cannot be read (a
/// Secret mid-swap), which is not a change.
fn fingerprint(files: &[PathBuf]) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    for path in files {
        let bytes = std::fs::read(path).ok()?;
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Some(hash.finalize().into())
}

/// The current value, rebuilt in the background while this is held.
pub struct Reloading<T> {
    current: watch::Receiver<Arc<T>>,
    _task: AbortOnDropHandle<()>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value once (an error here is returned: a file that does
    /// not load at start is a configuration error), then looks at `files`
    /// every `every` and builds again when their bytes changed. `what`
    /// names the value in logs. `reloaded` runs after each successful
    /// rebuild (a metric).
    pub fn start<E, B>(
        what: &'static str,
        files: Vec<PathBuf>,
        every: Duration,
        build: B,
        reloaded: impl Fn() + Send + 'static,
    ) -> Result<Reloading<T>, E>
    where
        E: std::fmt::Display,
        B: Fn() -> Result<T, E> + Send + 'static,
    {
        let mut seen = fingerprint(&files);
        let (tx, current) = watch::channel(Arc::new(build()?));
        let task = tokio::spawn(async move {
            // Bytes that did not build are not tried (nor warned about) again.
            let mut tried = seen;
            loop {
                tokio::time::sleep(every).await;
                let now = fingerprint(&files);
                if now.is_none() || now == seen || now == tried {
                    continue;
                }
                tried = now;
                match build() {
                    Ok(value) => {
                        tx.send_replace(Arc::new(value));
                        seen = now;
                        reloaded();
                        tracing::info!("reloaded {what}");
                    }
                    // A half-written file loads next time round.
                    Err(e) => tracing::warn!("keeping the previous {what}: {e:#}"),
                }
            }
        });
        Ok(Reloading {
            current,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every new value (for a task that outlives no
    /// `Reloading`: it ends when this is dropped).
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rebuilds_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "1").expect("write");
        let read = file.clone();
        let reloading = Reloading::start(
            "the test value",
            vec![file.clone()],
            Duration::from_millis(10),
            move || -> anyhow::Result<u32> { Ok(std::fs::read_to_string(&read)?.trim().parse()?) },
            || {},
        )
        .expect("builds");
        assert_eq!(*reloading.get(), 1);
        let mut changes = reloading.subscribe();
        std::fs::write(&file, "2").expect("write");
        changes.changed().await.expect("rebuilt");
        assert_eq!(*reloading.get(), 2);
        // Garbage is not taken; the next good content is.
        std::fs::write(&file, "garbage").expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*reloading.get(), 2);
        std::fs::write(&file, "3").expect("write");
        changes.changed().await.expect("rebuilt");
        assert_eq!(*reloading.get(), 3);
    }

    #[test]
    fn unreadable_files_have_no_fingerprint() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(fingerprint(&[dir.path().join("absent")]), None);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "ab").expect("write");
        std::fs::write(&b, "").expect("write");
        let one = fingerprint(&[a.clone(), b.clone()]);
        std::fs::write(&a, "a").expect("write");
        std::fs::write(&b, "b").expect("write");
        assert_ne!(one, fingerprint(&[a, b]), "lengths are part of it");
    }
}
