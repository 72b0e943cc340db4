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

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
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

/// What an event asks the loader to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Look {
    /// These manifest files may have been written, added or removed
    /// (the loader stats just them).
    Files(Vec<PathBuf>),
    /// Anything may have changed: a directory, a link, a hidden name
    /// that is not a plain file (a ConfigMap volume swaps its `..data`
    /// link), an event without paths, a lost event.
    Everything,
}

/// What `event` asks to look at; `None` when it cannot be a change.
/// Reads (the loader's own, or anyone's) open and close files without
/// writing: ignored, else every load would wake the next. Hidden plain
/// files (an editor's swap file, a `.tmp` renamed into place) are never
/// manifests: ignored; the rename's target is what is looked at.
pub fn look_for(event: &notify::Result<Event>) -> Option<Look> {
    let event = match event {
        Ok(e) => e,
        // An error (an overflowed queue, say) may hide a change.
        Err(_) => return Some(Look::Everything),
    };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return None,
        _ => {}
    }
    if event.paths.is_empty() {
        return Some(Look::Everything);
    }
    let moved_away = matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::From))
    );
    let mut files = Vec::new();
    for path in &event.paths {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if hidden {
            // A ConfigMap volume's writer swaps `..data` to a new `..<time>`
            // directory, changing what the visible links resolve to:
            // everything may have changed; so may a hidden directory or
            // link. Other hidden names are an editor's or a writer's files
            // (`.x.tmp`, often renamed away before this event is read); a
            // name moved away comes back as the rename's target.
            let configmap = path
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b".."));
            let dir_or_link = std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file());
            if configmap || (dir_or_link && !moved_away) {
                return Some(Look::Everything);
            }
            continue;
        }
        if !crate::is_manifest(path) {
            return Some(Look::Everything);
        }
        files.push(path.clone());
    }
    (!files.is_empty()).then_some(Look::Files(files))
}

impl ManifestWatch {
    /// Calls `changed` (on the watcher's own thread) after an event under
    /// `path` that may be a change, with what to look at: anything below
    /// it when it is a directory, the file's directory when it is a file
    /// (editors and Kubernetes ConfigMap volumes replace files by
    /// renaming, which a watch on the file itself would not survive). An
    /// error when the platform cannot watch (then poll).
    pub fn start(
        path: &Path,
        changed: impl Fn(Look) + Send + 'static,
    ) -> Result<ManifestWatch, notify::Error> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Some(look) = look_for(&event) {
                changed(look);
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
        let watch = ManifestWatch::start(path, move |_| {
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

    /// What each kind of event asks to look at.
    #[test]
    fn events_name_the_files_to_look_at_or_everything() {
        use notify::event::{CreateKind, DataChange};
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at(".tmp"), "a: 1\n").expect("hidden file");
        std::fs::create_dir(at("..2026_12_07")).expect("hidden dir");
        std::os::unix::fs::symlink(at("..2026_12_07"), at("..data")).expect("link");
        std::fs::create_dir(at("team-a")).expect("dir");
        let event = |kind: EventKind, paths: &[&str]| -> notify::Result<Event> {
            Ok(Event {
                kind,
                paths: paths.iter().map(|p| at(p)).collect(),
                attrs: Default::default(),
            })
        };
        let files = |names: &[&str]| Some(Look::Files(names.iter().map(|n| at(n)).collect()));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let cases: Vec<(&str, notify::Result<Event>, Option<Look>)> = vec![
            (
                "a read",
                event(
                    EventKind::Access(AccessKind::Open(AccessMode::Read)),
                    &["a.yaml"],
                ),
                None,
            ),
            (
                "a closed write",
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &["a.yaml"],
                ),
                files(&["a.yaml"]),
            ),
            ("a write", event(write, &["a.yaml"]), files(&["a.yaml"])),
            (
                "a removal",
                event(
                    EventKind::Remove(notify::event::RemoveKind::File),
                    &["b.json"],
                ),
                files(&["b.json"]),
            ),
            (
                "a hidden temporary file",
                event(EventKind::Create(CreateKind::File), &[".tmp"]),
                None,
            ),
            (
                "moved away under a hidden name",
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    &[".gone"],
                ),
                None,
            ),
            (
                "a hidden file gone before its event is read",
                event(EventKind::Create(CreateKind::File), &[".x.yaml.tmp"]),
                None,
            ),
            (
                "renamed into place",
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &[".tmp", "a.yaml"],
                ),
                files(&["a.yaml"]),
            ),
            (
                "a ConfigMap's link swapped",
                event(EventKind::Create(CreateKind::Any), &["..data"]),
                Some(Look::Everything),
            ),
            (
                "a directory",
                event(EventKind::Create(CreateKind::Folder), &["team-a"]),
                Some(Look::Everything),
            ),
            (
                "an event without paths",
                event(write, &[]),
                Some(Look::Everything),
            ),
            (
                "a lost event",
                Err(notify::Error::generic("queue overflow")),
                Some(Look::Everything),
            ),
        ];
        for (what, event, want) in cases {
            assert_eq!(look_for(&event), want, "{what}");
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
