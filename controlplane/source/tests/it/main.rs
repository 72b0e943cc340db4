//! Integration tests of the manifest source: in-memory text (`parse`) and
//! files on disk (`load`).

mod cluster_network_policy;
mod decoders;
#[path = "../../../../proto/dataplane/tests/it/hostile.rs"]
mod hostile;
mod limits;
mod load;
mod parse;

use std::fmt::Write;
use std::path::Path;

use setpoint_source::LoadReport;

/// One line per fact of the report: `object KEY`, `skipped DISPLAY`,
/// `ignored KIND COUNT`, `warning TEXT`.
pub fn render(report: &LoadReport) -> String {
    let mut out = String::new();
    for object in &report.objects {
        let _ = writeln!(out, "object {}", object.key());
    }
    for skipped in &report.skipped {
        let _ = writeln!(out, "skipped {skipped}");
    }
    for (kind, count) in &report.ignored_kinds {
        let _ = writeln!(out, "ignored {kind} {count}");
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning {warning}");
    }
    out
}

/// Parses `text` as `m.yaml` and compares the rendered report with
/// `expected` (leading/trailing whitespace of each line ignored).
#[track_caller]
pub fn check(text: &str, expected: &str) {
    check_as(text, "m.yaml", expected);
}

#[track_caller]
pub fn check_as(text: &str, origin: &str, expected: &str) {
    let report = setpoint_source::parse_str(text, Path::new(origin));
    assert_eq!(render(&report).trim(), trim_lines(expected));
}

pub fn trim_lines(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}
