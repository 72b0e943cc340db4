//! The ipset backend: one `ipset restore` batch per phase, and read-back
//! through `ipset save`.
//!
//! A set that changes type or size is built under a temporary name and
//! `swap`ped in, so rules matching on it never see it missing or half-full.
//! Through the CLI rather than libipset: its default handlers `exit()` the
//! process on any error, and a failed subprocess only fails that batch.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use setpoint_dataplane::render::ipset_entry;
use setpoint_dataplane::{Family, SetEntry, SetSpec, SetType};
use sha2::{Digest as _, Sha256};

use crate::plan::Op;
use crate::target::{RunError, Target};

#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    #[error("cannot run ipset: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ipset {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("ipset save line {line}: {reason}")]
    Parse { line: usize, reason: String },
}

impl Target {
    /// Runs `ipset` with `args`, feeding `stdin`; returns stdout.
    pub fn ipset(&self, args: &[&str], stdin: Option<&str>) -> Result<String, IpsetError> {
        self.run("ipset", args, stdin).map_err(|e| match e {
            RunError::Spawn(e) => IpsetError::Spawn(e),
            failed => IpsetError::Failed {
                command: args.join(" "),
                stderr: failed.describe(),
            },
        })
    }
}

/// The temporary name a set is rebuilt under (within the 31-byte limit).
pub fn temporary_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("SP-TMP-{}", hex::encode_upper(&digest[..8]))
}

fn create_line(name: &str, spec: &SetSpec) -> String {
    match spec.kind {
        SetType::BitmapPort => format!("create {name} bitmap:port range 0-65535\n"),
        kind => format!(
            "create {name} {kind} family {} hashsize 1024 maxelem {}\n",
            spec.family.as_str(),
            spec.maxelem
        ),
    }
}

/// The `ipset restore -exist` script for the set operations among `ops`
/// (others are ignored); `None` when there are none.
pub fn script(ops: &[Op], kinds: &BTreeMap<String, SetType>) -> Option<String> {
    let mut out = String::new();
    let kind_of = |set: &str| kinds.get(set).copied().unwrap_or(SetType::HashIp);
    for op in ops {
        match op {
            Op::CreateSet { name, spec } => out.push_str(&create_line(name, spec)),
            Op::RebuildSet {
                name,
                spec,
                entries,
            } => {
                let tmp = temporary_name(name);
                // A leftover from an interrupted run is reused, emptied.
                out.push_str(&create_line(&tmp, spec));
                let _ = writeln!(out, "flush {tmp}");
                for e in entries {
                    let _ = writeln!(out, "add {tmp} {}", ipset_entry(spec.kind, e));
                }
                let _ = writeln!(out, "swap {tmp} {name}");
                let _ = writeln!(out, "destroy {tmp}");
            }
            Op::AddEntries { set, entries } => {
                for e in entries {
                    let _ = writeln!(out, "add {set} {}", ipset_entry(kind_of(set), e));
                }
            }
            Op::DelEntries { set, entries } => {
                for e in entries {
                    let _ = writeln!(out, "del {set} {}", ipset_entry(kind_of(set), e));
                }
            }
            Op::DestroySet { name } => {
                let _ = writeln!(out, "destroy {name}");
            }
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A set as the kernel holds it: type, family, maxelem, entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSet {
    pub kind: SetType,
    pub family: Family,
    pub maxelem: Option<u32>,
    pub entries: Vec<SetEntry>,
}

/// Parses `ipset save` output, keeping the sets whose name `ours` accepts.
pub fn parse_save(
    text: &str,
    ours: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, KernelSet>, IpsetError> {
    let mut sets: BTreeMap<String, KernelSet> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| IpsetError::Parse {
            line: i + 1,
            reason,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, kind, rest @ ..] if ours(name) => {
                let kind =
                    SetType::parse(kind).ok_or_else(|| bad(format!("unknown set type {kind}")))?;
                let option = |key: &str| rest.windows(2).find(|w| w[0] == key).map(|w| w[1]);
                let family = match option("family") {
                    Some("inet6") => Family::Inet6,
                    _ => Family::Inet,
                };
                let maxelem = option("maxelem").and_then(|m| m.parse().ok());
                sets.insert(
                    name.to_string(),
                    KernelSet {
                        kind,
                        family,
                        maxelem,
                        entries: Vec::new(),
                    },
                );
            }
            ["add", name, entry @ ..] if ours(name) => {
                let set = sets
                    .get_mut(*name)
                    .ok_or_else(|| bad(format!("entry for unknown set {name}")))?;
                let mut text = entry.join(" ");
                // `ipset save` prints host nets of hash:net without a prefix.
                if set.kind == SetType::HashNet {
                    let (addr, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
                    if !addr.contains('/') {
                        let bits = if addr.contains(':') { 128 } else { 32 };
                        text = format!("{addr}/{bits} {rest}").trim_end().to_string();
                    }
                }
                let entry = text.parse().map_err(|e| bad(format!("{e}")))?;
                set.entries.push(entry);
            }
            _ => {}
        }
    }
    for set in sets.values_mut() {
        set.entries.sort();
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Words `ipset save` lines are made of, and some it never prints.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "create",
                "add",
                "SP-X",
                "SP-Y",
                "KUBE-Z",
                "hash:ip",
                "hash:net",
                "hash:ip,port",
                "bitmap:port",
                "hash:nope",
                "family",
                "inet",
                "inet6",
                "maxelem",
                "65536",
                "4294967296",
                "10.0.0.1",
                "10.0.0.0/8",
                "fd00::1",
                "10.0.0.1,tcp:80",
                "nomatch",
                "0-65535",
                "",
                "\u{0}",
                "é",
            ])
            .prop_map(str::to_string),
            "[ -~]{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text as `ipset save` output: sets or a line-numbered
        /// error, never a panic.
        #[test]
        fn arbitrary_save_output_never_panics(
            raw in any::<String>(),
            lines in proptest::collection::vec(proptest::collection::vec(word(), 0..6), 0..12),
        ) {
            let _ = parse_save(&raw, |_| true);
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            if let Err(IpsetError::Parse { line, .. }) = parse_save(&text, |n| n.starts_with("SP-")) {
                prop_assert!(line >= 1 && line <= lines.len());
            }
        }
    }
}
