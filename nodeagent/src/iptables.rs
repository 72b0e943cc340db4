//! The iptables backend: one `iptables-restore -w --noflush` per family and
//! table, touching only Setpoint's own chains and its jumps.
//!
//! Declaring a chain (`:NAME - [0:0]`) flushes it even under `--noflush`,
//! so a replaced chain is declared and refilled in the same atomic restore.
//! Jumps from built-in chains are kept first, in their `position` order:
//! when any of a built-in chain's jumps change, all of Setpoint's jumps in
//! it are deleted and inserted again at the top, in the same restore.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use setpoint_dataplane::{Family, Fragment, Jump, Rule, Table};

use crate::plan::Op;
use crate::target::{RunError, Target};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

pub fn restore_tool(family: Family) -> &'static str {
    match family {
        Family::Inet => "iptables-restore",
        Family::Inet6 => "ip6tables-restore",
    }
}

pub fn save_tool(family: Family) -> &'static str {
    match family {
        Family::Inet => "iptables-save",
        Family::Inet6 => "ip6tables-save",
    }
}

fn rule_text(rule: &Rule) -> String {
    setpoint_dataplane::render::rule_text(&rule.0)
}

/// The restore input for one `Op::Iptables`. `current` is the state before
/// the operation (to know which jumps are installed), `target` the state
/// after (the full jump list per built-in chain).
pub fn script(op: &Op, current: &Fragment, target: &Fragment) -> Option<String> {
    let Op::Iptables {
        family,
        table,
        replace,
        delete,
        add_jumps,
        del_jumps,
    } = op
    else {
        return None;
    };
    let mut out = format!("*{}\n", table.as_str());
    for (name, _) in replace {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    // Built-in chains whose jumps change get all of ours re-laid.
    let touched: BTreeSet<&str> = add_jumps
        .iter()
        .chain(del_jumps)
        .map(|j| j.from.as_str())
        .collect();
    let ours = |f: &Fragment, from: &str| -> Vec<Jump> {
        f.jumps()
            .filter(|j| j.family == *family && j.table == *table && j.from == from)
            .cloned()
            .collect()
    };
    for from in &touched {
        for jump in ours(current, from) {
            let _ = writeln!(out, "-D {from} {}", rule_text(&jump.rule));
        }
    }
    for (name, chain) in replace {
        for rule in &chain.rules {
            let _ = writeln!(out, "-A {name} {}", rule_text(rule));
        }
    }
    for name in delete {
        let _ = writeln!(out, "-F {name}");
    }
    for name in delete {
        let _ = writeln!(out, "-X {name}");
    }
    for from in &touched {
        for (i, jump) in ours(target, from).iter().enumerate() {
            let _ = writeln!(out, "-I {from} {} {}", i + 1, rule_text(&jump.rule));
        }
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Runs one restore for `family`.
pub fn restore(target: &Target, family: Family, text: &str) -> Result<(), IptablesError> {
    let tool = restore_tool(family);
    target
        .run(tool, &["-w", "--noflush"], Some(text))
        .map(|_| ())
        .map_err(|e| match e {
            RunError::Spawn(source) => IptablesError::Spawn { tool, source },
            RunError::Failed(stderr) => IptablesError::Failed { tool, stderr },
        })
}

/// What the kernel holds of Setpoint's: rules per own chain, and the number
/// of jumps into own chains per built-in chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTables {
    pub chains: BTreeMap<(Table, String), usize>,
    pub jumps: BTreeMap<(Table, String), usize>,
}

fn table_of(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.as_str() == name)
}

/// Parses `iptables-save` output; own chains are those `ours` accepts.
pub fn parse_save(text: &str, ours: impl Fn(&str) -> bool) -> KernelTables {
    let mut k = KernelTables::default();
    let mut table = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = table_of(name);
        } else if let (Some(t), Some(decl)) = (table, line.strip_prefix(':')) {
            let name = decl.split(' ').next().unwrap_or_default();
            if ours(name) {
                k.chains.entry((t, name.to_string())).or_insert(0);
            }
        } else if let (Some(t), Some(rest)) = (table, line.strip_prefix("-A ")) {
            let chain = rest.split(' ').next().unwrap_or_default();
            let target = rest
                .split(' ')
                .skip_while(|w| *w != "-j" && *w != "-g")
                .nth(1)
                .unwrap_or_default();
            if ours(chain) {
                *k.chains.entry((t, chain.to_string())).or_insert(0) += 1;
            } else if ours(target) {
                *k.jumps.entry((t, chain.to_string())).or_insert(0) += 1;
            }
        }
    }
    k
}

/// The kernel view a state should produce, in the terms of [`KernelTables`].
pub fn expected(state: &Fragment, family: Family) -> KernelTables {
    let mut k = KernelTables::default();
    for (key, chain) in state.chains().filter(|(k, _)| k.family == family) {
        k.chains
            .insert((key.table, key.name.clone()), chain.rules.len());
    }
    for jump in state.jumps().filter(|j| j.family == family) {
        *k.jumps.entry((jump.table, jump.from.clone())).or_insert(0) += 1;
    }
    k
}

/// Reads back one family's tables.
pub fn read(
    target: &Target,
    family: Family,
    ours: impl Fn(&str) -> bool,
) -> Result<KernelTables, IptablesError> {
    let tool = save_tool(family);
    let text = target.run(tool, &[], None).map_err(|e| match e {
        RunError::Spawn(source) => IptablesError::Spawn { tool, source },
        RunError::Failed(stderr) => IptablesError::Failed { tool, stderr },
    })?;
    Ok(parse_save(&text, ours))
}
