//! `load_path`: files and directories on disk.

use std::fs;
use std::path::Path;

use setpoint_compute::ClusterObject;
use setpoint_source::{LoadReport, SourceError, load_path};
use tempfile::TempDir;

use crate::{render, trim_lines};

/// A temporary directory holding `files` (relative path → content).
fn tree(files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, content) in files {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, content).expect("write");
    }
    dir
}

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

/// Renders the report with `dir/` cut from paths.
#[track_caller]
fn check_load(dir: &Path, report: &LoadReport, expected: &str) {
    let prefix = format!("{}/", dir.display());
    assert_eq!(
        render(report).replace(&prefix, "").trim(),
        trim_lines(expected)
    );
}

#[test]
fn a_single_file() {
    let dir = tree(&[(
        "all.yaml",
        format!("{}---\n{}", node("n1"), node("n2")).as_bytes(),
    )]);
    let report = load_path(&dir.path().join("all.yaml")).expect("loads");
    check_load(dir.path(), &report, "object Node/n1\nobject Node/n2");
}

#[test]
fn a_file_given_directly_is_read_whatever_its_name() {
    let dir = tree(&[("manifest.txt", node("n1").as_bytes())]);
    let report = load_path(&dir.path().join("manifest.txt")).expect("loads");
    check_load(dir.path(), &report, "object Node/n1");
}

#[test]
fn a_directory_is_read_recursively_in_sorted_order() {
    let dir = tree(&[
        ("b.yaml", node("b").as_bytes()),
        (
            "a.json",
            br#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a-json"}}"#,
        ),
        ("a/z.yml", node("a-z").as_bytes()),
        ("sub/deeper/c.YAML", node("c").as_bytes()),
        // Not manifests, or hidden: never read.
        ("README.md", b"not: [yaml"),
        ("notes.txt", node("txt").as_bytes()),
        (".git/config.yaml", node("hidden").as_bytes()),
        ("..data/x.yaml", node("configmap-link").as_bytes()),
    ]);
    let report = load_path(dir.path()).expect("loads");
    check_load(
        dir.path(),
        &report,
        "
        object Node/a-z
        object Node/a-json
        object Node/b
        object Node/c
        ",
    );
}

#[test]
fn bad_files_are_reported_and_the_others_still_load() {
    let dir = tree(&[
        ("1-syntax.yaml", b"kind: [\n"),
        ("2-binary.yaml", b"\xff\xfe\x00garbage"),
        ("3-bad.json", b"{\"kind\": "),
        ("4-good.yaml", node("n1").as_bytes()),
        ("5-bom.yaml", format!("\u{feff}{}", node("n2")).as_bytes()),
    ]);
    let report = load_path(dir.path()).expect("loads");
    check_load(
        dir.path(),
        &report,
        "
        object Node/n1
        object Node/n2
        skipped 1-syntax.yaml doc 1: invalid YAML: unclosed bracket '[' at line 1 column 7
        skipped 2-binary.yaml: not UTF-8 text: invalid utf-8 sequence of 1 bytes from index 0
        skipped 3-bad.json doc 1: invalid JSON: EOF while parsing a value at line 1 column 9
        ",
    );
}

#[test]
fn a_later_file_replaces_a_duplicate_with_a_warning() {
    let service = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
             spec: {{ports: [{{port: {port}}}]}}\n"
        )
    };
    let dir = tree(&[
        ("a.yaml", service(80).as_bytes()),
        (
            "b/c.yaml",
            format!("{}---\n{}", node("n1"), service(81)).as_bytes(),
        ),
    ]);
    let report = load_path(dir.path()).expect("loads");
    // `b/c.yaml` sorts after `a.yaml`, so its Service wins, in the first one's place.
    check_load(
        dir.path(),
        &report,
        "
        object Service/default/web
        object Node/n1
        warning duplicate Service/default/web: b/c.yaml doc 2 replaces a.yaml doc 1
        ",
    );
    let ClusterObject::Service(service) = &report.objects[0] else {
        panic!("not a service: {:?}", report.objects[0]);
    };
    let port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p[0].port);
    assert_eq!(port, Some(81));
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let dir = tree(&[]);
    let missing = dir.path().join("nope");
    let err = load_path(&missing).expect_err("missing path");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let SourceError::Read { path, source } = &err;
    assert_eq!(path, &missing);
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
}

#[cfg(unix)]
#[test]
fn a_dangling_manifest_link_is_an_error_naming_it() {
    let dir = tree(&[("a.yaml", node("n1").as_bytes())]);
    let link = dir.path().join("b.yaml");
    std::os::unix::fs::symlink(dir.path().join("gone.yaml"), &link).expect("symlink");
    let err = load_path(dir.path()).expect_err("dangling link");
    assert!(err.to_string().contains("b.yaml"), "{err}");
}

#[cfg(unix)]
#[test]
fn symlinked_directories_are_followed_once() {
    let dir = tree(&[("real/a.yaml", node("n1").as_bytes())]);
    std::os::unix::fs::symlink(dir.path(), dir.path().join("real/loop")).expect("symlink");
    let report = load_path(dir.path()).expect("loads");
    check_load(dir.path(), &report, "object Node/n1");
}

/// The cache re-reads only changed files and always agrees with a fresh
/// load: after an edit, an addition, a removal, and a file turned bad.
#[test]
fn the_cache_agrees_with_a_fresh_load_through_edits() {
    use setpoint_source::ManifestCache;
    let dir = tree(&[
        ("a.yaml", node("n1").as_bytes()),
        (
            "b.yaml",
            format!("{}---\n{}", node("n2"), node("n1")).as_bytes(),
        ),
    ]);
    let mut cache = ManifestCache::default();
    let same = |cache: &mut ManifestCache| {
        let cached = cache.load(dir.path()).expect("cached load");
        let fresh = load_path(dir.path()).expect("fresh load");
        assert_eq!(cached.objects, fresh.objects);
        assert_eq!(render(&cached), render(&fresh));
    };
    same(&mut cache);
    // Modification times can be equal within a second: change the size too.
    fs::write(
        dir.path().join("a.yaml"),
        format!("{}---\n{}", node("n3"), node("n4")),
    )
    .expect("edit");
    same(&mut cache);
    fs::write(dir.path().join("c.yaml"), node("n5")).expect("add");
    same(&mut cache);
    fs::remove_file(dir.path().join("b.yaml")).expect("remove");
    same(&mut cache);
    fs::write(
        dir.path().join("c.yaml"),
        "kind: Node\nmetadata: [not, a, map]\n",
    )
    .expect("break");
    same(&mut cache);
    let report = cache.load(dir.path()).expect("load");
    assert_eq!(report.skipped.len(), 1, "{}", render(&report));
}

/// A named change to a manifest tree.
type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);

/// `load_if_changed` loads the first time (even an empty tree), then only
/// after an edit, an addition or a removal, and agrees with a fresh load.
#[test]
fn load_if_changed_answers_none_until_a_file_changes() {
    use setpoint_source::ManifestCache;
    let dir = tree(&[]);
    let mut cache = ManifestCache::default();
    let first = cache.load_if_changed(dir.path()).expect("loads");
    assert_eq!(first.map(|r| r.objects.len()), Some(0), "first look loads");
    assert!(cache.load_if_changed(dir.path()).expect("looks").is_none());
    let changes: Vec<Step> = vec![
        (
            "addition",
            Box::new(|| fs::write(dir.path().join("a.yaml"), node("n1")).expect("add")),
        ),
        (
            "edit",
            Box::new(|| {
                let two = format!("{}---\n{}", node("n1"), node("n2"));
                fs::write(dir.path().join("a.yaml"), two).expect("edit")
            }),
        ),
        (
            "removal",
            Box::new(|| fs::remove_file(dir.path().join("a.yaml")).expect("remove")),
        ),
    ];
    for (what, change) in changes {
        change();
        let loaded = cache.load_if_changed(dir.path()).expect("loads");
        let fresh = load_path(dir.path()).expect("fresh load");
        assert_eq!(loaded.map(|r| r.objects), Some(fresh.objects), "{what}");
        assert!(
            cache.load_if_changed(dir.path()).expect("looks").is_none(),
            "nothing after the {what} was seen"
        );
    }
}

/// The cache's persistent view agrees with a fresh load through edits,
/// duplicates across files (the later file wins, and wins again when the
/// earlier one changes), removals and a file turned bad; an unchanged
/// object stays the same allocation from one view to the next.
#[test]
fn the_cache_view_agrees_with_a_fresh_load_through_edits() {
    use setpoint_compute::{ObjectKey, ObjectMap, object_map};
    use setpoint_source::ManifestCache;
    let dir = tree(&[
        ("a.yaml", node("n1").as_bytes()),
        (
            "b.yaml",
            format!("{}---\n{}", node("n2"), node("n1")).as_bytes(),
        ),
    ]);
    let mut cache = ManifestCache::default();
    let mut previous: Option<ObjectMap> = None;
    let mut check = |cache: &mut ManifestCache, what: &str| {
        let view = cache
            .view_if_changed(dir.path(), false)
            .expect("view")
            .unwrap_or_else(|| panic!("{what}: a change is seen"));
        let fresh = load_path(dir.path()).expect("fresh load");
        assert!(
            view.objects == object_map(fresh.objects.clone()),
            "{what}: the same objects"
        );
        assert_eq!(view.skipped, fresh.skipped, "{what}");
        assert_eq!(view.ignored_kinds, fresh.ignored_kinds, "{what}");
        let (mut a, mut b) = (view.warnings.clone(), fresh.warnings.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{what}: the same warnings");
        assert!(
            cache
                .view_if_changed(dir.path(), false)
                .expect("look")
                .is_none(),
            "{what}: nothing new after it was seen"
        );
        if let Some(before) = &previous {
            // Objects of files that did not change are the same handles.
            let n2 = ObjectKey {
                kind: setpoint_compute::Kind::Node,
                namespace: String::new(),
                name: "n2".into(),
            };
            if let (Some(x), Some(y)) = (before.get(&n2), view.objects.get(&n2))
                && what != "edit b"
            {
                assert!(std::ptr::eq(&**x, &**y), "{what}: n2 not copied");
            }
        }
        previous = Some(view.objects);
    };
    check(&mut cache, "first");
    fs::write(
        dir.path().join("a.yaml"),
        format!("{}---\n{}", node("n3"), node("n1")),
    )
    .expect("edit");
    check(&mut cache, "edit a");
    fs::write(dir.path().join("c.yaml"), node("n3")).expect("add");
    check(&mut cache, "add c");
    fs::write(dir.path().join("b.yaml"), node("n2")).expect("edit");
    check(&mut cache, "edit b");
    fs::remove_file(dir.path().join("c.yaml")).expect("remove");
    check(&mut cache, "remove c");
    fs::write(
        dir.path().join("a.yaml"),
        "kind: Node\nmetadata: [not, a, map]\n",
    )
    .expect("break");
    check(&mut cache, "break a");
    fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    check(&mut cache, "remove a");
}

/// Looking at named files only agrees with a fresh load: an edit, an
/// addition, a removal, a file in a hidden directory (never a manifest),
/// and a name outside the tree (then the whole tree is looked at).
#[test]
fn looking_at_named_files_agrees_with_a_fresh_load() {
    use setpoint_compute::object_map;
    use setpoint_source::ManifestCache;
    let dir = tree(&[
        ("a.yaml", node("n1").as_bytes()),
        ("b.yaml", node("n2").as_bytes()),
    ]);
    let at = |name: &str| dir.path().join(name);
    let mut cache = ManifestCache::default();
    let agrees = |view: Option<setpoint_source::ManifestView>, what: &str| {
        let view = view.unwrap_or_else(|| panic!("{what}: a change is seen"));
        let fresh = load_path(dir.path()).expect("fresh load");
        assert!(
            view.objects == object_map(fresh.objects),
            "{what}: the same objects"
        );
        assert_eq!(view.skipped, fresh.skipped, "{what}");
    };
    agrees(
        cache.view_of_files(dir.path(), &[]).expect("first look"),
        "first look loads the tree",
    );
    assert!(
        cache
            .view_of_files(dir.path(), &[at("a.yaml")])
            .expect("look")
            .is_none(),
        "a named file that did not change is no change"
    );
    fs::write(at("a.yaml"), format!("{}---\n{}", node("n1"), node("n3"))).expect("edit");
    agrees(
        cache
            .view_of_files(dir.path(), &[at("a.yaml")])
            .expect("look"),
        "edit",
    );
    fs::write(at("c.yaml"), node("n4")).expect("add");
    agrees(
        cache
            .view_of_files(dir.path(), &[at("c.yaml")])
            .expect("look"),
        "addition",
    );
    fs::remove_file(at("b.yaml")).expect("remove");
    agrees(
        cache
            .view_of_files(dir.path(), &[at("b.yaml")])
            .expect("look"),
        "removal",
    );
    fs::create_dir(at("..2026")).expect("hidden dir");
    fs::write(at("..2026/d.yaml"), node("n5")).expect("hidden file");
    assert!(
        cache
            .view_of_files(dir.path(), &[at("..2026/d.yaml")])
            .expect("look")
            .is_none(),
        "a file in a hidden directory is not a manifest"
    );
    fs::write(at("e.yaml"), node("n6")).expect("add unnamed");
    let elsewhere = std::env::temp_dir().join("not-below-the-tree.yaml");
    agrees(
        cache.view_of_files(dir.path(), &[elsewhere]).expect("look"),
        "a name outside the tree looks at the whole tree",
    );
}
