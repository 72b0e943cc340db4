//! What a manifest may cost: aliases refused, nesting and file size capped,
//! error positions found without re-reading what came before. Allocations
//! are measured on the test's own thread (`hostile`).

use std::path::Path;

use setpoint_source::{Limits, ManifestCache, load_path_with, parse_bytes, parse_str};

use crate::hostile::measure;
use crate::{check, check_as, render};

const MIB: usize = 1 << 20;

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

#[test]
fn aliases_are_refused_and_their_neighbours_load() {
    let text = format!(
        "{}---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: &labels {{app: web}}
spec:
  selector: *labels
---
apiVersion: v1
kind: Service
metadata:
  <<: *missing
---
apiVersion: v1
kind: Service
metadata: &meta {{name: anchored}}
---
{}",
        node("n1"),
        node("n2")
    );
    // An anchor alone is harmless and kept; every alias is refused, even
    // one that names no anchor.
    check(
        &text,
        "
        object Node/n1
        object Service/default/anchored
        object Node/n2
        skipped m.yaml doc 2: refused: YAML alias *labels (aliases are not accepted) at line 12 column 13
        skipped m.yaml doc 3: refused: YAML alias *missing (aliases are not accepted) at line 17 column 7
        ",
    );
}

/// A document where one anchor of `width` scalars is referred to
/// `aliases` times: `width × aliases` values if expanded, from a text of
/// about `3 × width + 4 × aliases` bytes.
fn fan_out(width: usize, aliases: usize) -> String {
    format!(
        "a: &a [{}]\nb: [{}]\n",
        vec!["x"; width].join(", "),
        vec!["*a"; aliases].join(", ")
    )
}

/// Nine levels of nine aliases each: 9^9 scalars if expanded.
fn billion_laughs() -> String {
    let mut text = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n".to_owned();
    for level in 1..9 {
        let prev = format!("*l{}", level - 1);
        text.push_str(&format!(
            "l{level}: &l{level} [{}]\n",
            vec![prev; 9].join(", ")
        ));
    }
    text
}

#[test]
fn alias_bombs_are_refused_without_being_expanded() {
    for (name, text) in [
        ("fan-out", fan_out(1_000, 1_000)),
        ("billion laughs", billion_laughs()),
    ] {
        let (report, allocated) = measure(|| parse_str(&text, Path::new("bomb.yaml")));
        assert_eq!(report.objects.len(), 0, "{name}");
        assert_eq!(report.skipped.len(), 1, "{name}: {}", render(&report));
        assert!(
            report.skipped[0]
                .reason
                .starts_with("refused: YAML alias *"),
            "{name}: {}",
            report.skipped[0]
        );
        // Expanded, the fan-out is a million values (over 80 MiB); refused,
        // it costs a few times its 7 KB of text.
        assert!(
            allocated.peak < MIB,
            "{name}: {} bytes of text took {allocated:?}",
            text.len()
        );
    }
}

#[test]
fn nesting_bombs_stop_at_the_limit() {
    // Unscreened, a MiB of `[` made serde_yaml_ng buffer an event per
    // bracket before failing: 16 MiB of them peaked at 5.4 GB.
    for (name, text) in [
        ("flow", "[".repeat(MIB)),
        ("block", "- ".repeat(MIB / 2)),
        ("json", "[".repeat(MIB)),
    ] {
        let origin = if name == "json" { "m.json" } else { "m.yaml" };
        let (report, allocated) = measure(|| parse_str(&text, Path::new(origin)));
        assert_eq!(report.skipped.len(), 1, "{name}: {}", render(&report));
        assert!(
            report.skipped[0]
                .reason
                .starts_with("refused: nested deeper than 64 at line 1"),
            "{name}: {}",
            report.skipped[0]
        );
        assert!(allocated.peak < MIB, "{name}: {allocated:?}");
    }
}

fn deep_yaml(depth: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: deep\n  annotations: {{a: {}{}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    assert_eq!(Limits::DEFAULT_MAX_DEPTH, 64);
    // Depth: the object 1, metadata 2, annotations 3, then 61 or 62 lists.
    let text = format!("{}---\n{}---\n{}", deep_yaml(61), deep_yaml(62), node("n1"));
    check(
        &text,
        "
        object Node/n1
        skipped m.yaml doc 1 (Node deep): metadata.annotations.a: invalid type: sequence, expected a string
        skipped m.yaml doc 2: refused: nested deeper than 64 at line 11 column 81
        ",
    );
    let json = |depth: usize| {
        format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"n\",\n\"annotations\": {{\"a\": {}\"]\"{}}}}}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    check_as(
        &format!("{}{}{}", json(61), json(62), json(1)),
        "m.json",
        "
        skipped m.json doc 1 (Node n): metadata.annotations.a: invalid type: sequence, expected a string
        skipped m.json doc 2: refused: nested deeper than 64 at line 4 column 83
        ",
    );
    // A tighter limit applies to both formats.
    let tight = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    let report = parse_bytes(node("n").as_bytes(), Path::new("m.yaml"), &tight);
    assert_eq!(render(&report), "object Node/n\n");
    let report = parse_bytes(deep_yaml(0).as_bytes(), Path::new("m.yaml"), &tight);
    assert_eq!(
        render(&report),
        "skipped m.yaml doc 1: refused: nested deeper than 2 at line 5 column 16\n"
    );
}

#[test]
fn a_file_over_the_size_limit_is_skipped_unread_and_the_others_load() {
    assert_eq!(Limits::default().max_file_bytes, 16 << 20);
    let limits = Limits {
        max_file_bytes: 100,
        ..Limits::default()
    };
    let big = format!("{}# padding{}\n", node("big"), " ".repeat(100));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), node("small")).expect("write");
    std::fs::write(dir.path().join("b.yaml"), &big).expect("write");
    let expected = format!(
        "object Node/small\nskipped {}: refused: file is {} bytes, over the limit of 100 bytes; not read\n",
        dir.path().join("b.yaml").display(),
        big.len()
    );
    let report = load_path_with(dir.path(), &limits).expect("loads");
    assert_eq!(render(&report), expected);
    let mut cache = ManifestCache::with_limits(limits);
    assert_eq!(render(&cache.load(dir.path()).expect("loads")), expected);
    // The default limit reads it.
    let report = setpoint_source::load_path(dir.path()).expect("loads");
    assert_eq!(render(&report), "object Node/small\nobject Node/big\n");
    // In-memory text is held to the same limit.
    let report = parse_bytes(big.as_bytes(), Path::new("b.yaml"), &limits);
    assert_eq!(
        render(&report),
        format!(
            "skipped b.yaml: refused: file is {} bytes, over the limit of 100 bytes; not read\n",
            big.len()
        )
    );
}

#[test]
fn an_endless_file_is_read_only_to_the_limit() {
    // A size of 0 that never ends: reading stops one byte past the limit.
    let limits = Limits {
        max_file_bytes: 1024,
        ..Limits::default()
    };
    let report = load_path_with(Path::new("/dev/zero"), &limits).expect("loads");
    assert_eq!(
        render(&report),
        "skipped /dev/zero: refused: file has more than 1024 bytes, over the limit of 1024 bytes; not read\n"
    );
}

/// `count` documents of `comment_lines` comment lines and one unclosed
/// bracket each.
fn broken_documents(count: usize, comment_lines: usize) -> String {
    let doc = format!("---\n{}a: [\n", "#\n".repeat(comment_lines));
    doc.repeat(count)
}

#[test]
fn error_positions_cost_no_reading_of_what_came_before() {
    let text = broken_documents(3, 2);
    check(
        &text,
        "
        skipped m.yaml doc 1: invalid YAML: unclosed bracket '[' at line 4 column 4
        skipped m.yaml doc 2: invalid YAML: unclosed bracket '[' at line 8 column 4
        skipped m.yaml doc 3: invalid YAML: unclosed bracket '[' at line 12 column 4
        ",
    );
    // Locating each error by re-parsing the document behind as many blank
    // lines as precede it made the work grow with the square of the file:
    // these 418 KB allocated 1.1 GB (2,600 times the text). Now each
    // document costs its own parse: 28 MB, mostly a parser's set-up per
    // (tiny) document.
    let text = broken_documents(2_000, 100);
    let (report, allocated) = measure(|| parse_str(&text, Path::new("m.yaml")));
    assert_eq!(report.skipped.len(), 2_000);
    assert!(
        report.skipped[1_999]
            .reason
            .ends_with(&format!("at line {} column 4", 2_000 * 102)),
        "{}",
        report.skipped[1_999]
    );
    assert!(
        allocated.total < 256 * text.len(),
        "{} bytes of text: {allocated:?}",
        text.len()
    );
}
