//! Wakes the manifest loader when something under the manifest path
//! changes (inotify on Linux), so a tree of thousands of files is not
//! re-stat'ed on every poll: with 10,000 files, polling every 100 ms was a
//! fifth of the control plane's CPU.
//!
//! The events only say "look again"; what changed is still decided by the
//! loader's look at sizes and modification times, so a missed or
//! spurious event costs a late or an extra look, never a wrong state.
//! Callers keep a slow rescan for what inotify cannot see (network file
//! systems, a watch limit reached).

use std::path::Path;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

/// Keeps the watch alive; dropping it stops the events.
pub struct ManifestWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for ManifestWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManifestWatch")
    }
}

/// Whether an event can mean the manifests changed. Reads (the loader's
/// own, or anyone's) open and close files without writing: ignored, else
/// every load would wake the next.
fn may_change(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

impl ManifestWatch {
    /// Calls `changed` (on the watcher's own thread) after an event under
    /// `path` that may be a change: anything below it when it is a
    /// directory, the file's directory when it is a file (editors and
    /// Kubernetes ConfigMap volumes replace files by renaming, which a
    /// watch on the file itself would not survive). An error when the
    /// platform cannot watch (then poll).
    pub fn start(
        path: &Path,
        changed: impl Fn() + Send + 'static,
    ) -> Result<ManifestWatch, notify::Error> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            match event {
                Ok(e) if !may_change(&e) => {}
                // An error (an overflowed queue, say) may hide a change.
                _ => changed(),
            }
        })?;
        if path.is_dir() {
            watcher.watch(path, RecursiveMode::Recursive)?;
        } else {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
        Ok(ManifestWatch { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A named change to a manifest tree.
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);

    fn counted(path: &Path) -> (ManifestWatch, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let watch = ManifestWatch::start(path, move || {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .expect("inotify works here");
        (watch, count)
    }

    /// Waits up to 5 s for the count to move past `before`.
    fn woken(count: &AtomicUsize, before: usize) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if count.load(Ordering::SeqCst) > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Lets events of earlier steps arrive, then reads the count.
    fn settled(count: &AtomicUsize) -> usize {
        std::thread::sleep(Duration::from_millis(200));
        count.load(Ordering::SeqCst)
    }

    #[test]
    fn edits_additions_removals_and_renames_below_a_directory_wake_it_reads_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("team-a");
        std::fs::create_dir(&sub).expect("subdir");
        std::fs::write(sub.join("svc.yaml"), "a: 1\n").expect("write");
        let (_watch, count) = counted(dir.path());

        let before = settled(&count);
        let _ = std::fs::read(sub.join("svc.yaml")).expect("read");
        assert_eq!(settled(&count), before, "a read is not a change");

        let steps: Vec<Step> = vec![
            (
                "edit in a subdirectory",
                Box::new(|| std::fs::write(sub.join("svc.yaml"), "a: 2\n").expect("edit")),
            ),
            (
                "new file",
                Box::new(|| std::fs::write(dir.path().join("new.yaml"), "b: 1\n").expect("add")),
            ),
            (
                "rename over a file",
                Box::new(|| {
                    std::fs::write(dir.path().join(".tmp"), "b: 2\n").expect("tmp");
                    std::fs::rename(dir.path().join(".tmp"), dir.path().join("new.yaml"))
                        .expect("rename");
                }),
            ),
            (
                "removal",
                Box::new(|| std::fs::remove_file(dir.path().join("new.yaml")).expect("remove")),
            ),
        ];
        for (what, step) in steps {
            let before = settled(&count);
            step();
            assert!(woken(&count, before), "{what} wakes the loader");
        }
    }

    #[test]
    fn a_single_file_replaced_by_rename_still_wakes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cluster.yaml");
        std::fs::write(&file, "a: 1\n").expect("write");
        let (_watch, count) = counted(&file);
        for round in 0..2 {
            let before = settled(&count);
            let tmp = dir.path().join(".cluster.yaml.tmp");
            std::fs::write(&tmp, format!("a: {round}\n")).expect("tmp");
            std::fs::rename(&tmp, &file).expect("rename");
            assert!(woken(&count, before), "replacement {round}");
        }
    }
}
