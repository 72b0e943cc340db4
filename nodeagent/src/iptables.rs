//! The iptables backend: one `iptables-restore -w --noflush` per family and
//! table, touching only Setpoint's own chains and its jumps.
//!
//! Declaring a chain (`:NAME - [0:0]`) flushes it even under `--noflush`,
//! so a replaced chain is declared and refilled in the same atomic restore.
//! Jumps from built-in chains are kept first, in their `position` order:
//! when any of a built-in chain's jumps change, all of Setpoint's jumps in
//! it are deleted and inserted again at the top, in the same restore.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use setpoint_dataplane::{Chain, ChainKey, Family, Fragment, Jump, Rule, Table};
use sha2::{Digest as _, Sha256};

use crate::plan::Op;
use crate::target::{RunError, Target, XTABLES_LOCK_WAIT_SECS};

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

/// Marks a rule as Setpoint's and names its content: read-back maps the
/// tag to the exact contract rule, whatever normal form `iptables-save`
/// prints the rest in.
const TAG_PREFIX: &str = "setpoint:";

/// The tag of a rule: a hash of its words (12 hex digits).
pub fn rule_tag(rule: &Rule) -> String {
    let mut h = Sha256::new();
    for word in &rule.0 {
        h.update(word.as_bytes());
        h.update([0]);
    }
    format!("{TAG_PREFIX}{}", hex::encode(&h.finalize()[..6]))
}

/// Rules read from the kernel that Setpoint cannot name (untagged, or a
/// tag it does not know): they are deleted by their kernel text.
pub type RawRules = BTreeSet<Rule>;

/// A rule as it goes into `iptables-restore`.
fn kernel_text(rule: &Rule, raw: &RawRules) -> String {
    let text = setpoint_dataplane::render::rule_text(&rule.0);
    if raw.contains(rule) {
        text
    } else {
        format!("-m comment --comment {} {text}", rule_tag(rule))
    }
}

/// The restore input for one `Op::Iptables`. `current` is the state before
/// the operation (to know which jumps are installed), `target` the state
/// after (the full jump list per built-in chain); `raw` the rules of
/// `current` that are deleted by their kernel text.
pub fn script(op: &Op, current: &Fragment, target: &Fragment, raw: &RawRules) -> Option<String> {
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
            let _ = writeln!(out, "-D {from} {}", kernel_text(&jump.rule, raw));
        }
    }
    let fresh = RawRules::new();
    for (name, chain) in replace {
        for rule in &chain.rules {
            let _ = writeln!(out, "-A {name} {}", kernel_text(rule, &fresh));
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
            let text = kernel_text(&jump.rule, &fresh);
            let _ = writeln!(out, "-I {from} {} {text}", i + 1);
        }
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Runs one restore for `family`, waiting a bounded time for the xtables
/// lock.
pub fn restore(target: &Target, family: Family, text: &str) -> Result<(), IptablesError> {
    let wait = XTABLES_LOCK_WAIT_SECS.to_string();
    run_tool(
        target,
        restore_tool(family),
        &["-w", &wait, "--noflush"],
        Some(text),
    )
    .map(|_| ())
}

fn run_tool(
    target: &Target,
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, IptablesError> {
    target.run(tool, args, stdin).map_err(|e| match e {
        RunError::Spawn(source) => IptablesError::Spawn { tool, source },
        failed => IptablesError::Failed {
            tool,
            stderr: failed.describe(),
        },
    })
}

/// The rules Setpoint knows by tag: every chain rule and jump of the
/// states it has applied or is about to apply.
#[derive(Default)]
pub struct RuleBook {
    rules: HashMap<String, Rule>,
    jumps: HashMap<(Family, Table, String, String), Jump>,
}

impl RuleBook {
    pub fn learn(&mut self, f: &Fragment) {
        for (_, chain) in f.chains() {
            for rule in &chain.rules {
                self.rules.insert(rule_tag(rule), rule.clone());
            }
        }
        for jump in f.jumps() {
            let key = (
                jump.family,
                jump.table,
                jump.from.clone(),
                rule_tag(&jump.rule),
            );
            self.jumps.insert(key, jump.clone());
        }
    }
}

/// Setpoint's part of one family's tables as the kernel holds it.
#[derive(Debug, Default)]
pub struct KernelTables {
    pub chains: Vec<(ChainKey, Chain)>,
    pub jumps: Vec<Jump>,
    pub raw: RawRules,
}

fn table_of(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.as_str() == name)
}

/// Splits an `iptables-save` rule into words, undoing its quoting.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return out;
        };
        let mut word = String::new();
        if first == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            word.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        out.push(word);
    }
}

fn tag_of(words: &[String]) -> Option<&str> {
    words
        .windows(2)
        .find(|w| w[0] == "--comment" && w[1].starts_with(TAG_PREFIX))
        .map(|w| w[1].as_str())
}

fn target_of(words: &[String]) -> Option<&str> {
    words
        .windows(2)
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1].as_str())
}

fn chain_key(family: Family, table: Table, name: &str) -> ChainKey {
    ChainKey {
        family,
        table,
        name: name.to_string(),
    }
}

/// One of our jumps as found in a built-in chain: known by tag, or not.
type FoundJump = (Option<Jump>, Rule);

/// Parses `iptables-save` output of one family into Setpoint's chains and
/// jumps; own chains are those `ours` accepts. Rules whose tag `book`
/// knows come back as the exact contract rule, others verbatim (and in
/// `raw`). A built-in chain whose jumps are out of position order, or
/// repeated, gives them all back raw, so the next apply lays them again.
pub fn parse_save(
    text: &str,
    family: Family,
    ours: impl Fn(&str) -> bool,
    book: &RuleBook,
) -> KernelTables {
    let mut k = KernelTables::default();
    let mut chains: BTreeMap<ChainKey, Chain> = BTreeMap::new();
    let mut jumps: BTreeMap<(Table, String), Vec<FoundJump>> = BTreeMap::new();
    let mut table = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = table_of(name);
        } else if let (Some(t), Some(decl)) = (table, line.strip_prefix(':')) {
            let name = decl.split(' ').next().unwrap_or_default();
            if ours(name) {
                chains
                    .entry(chain_key(family, t, name))
                    .or_insert_with(|| Chain { rules: Vec::new() });
            }
        } else if let (Some(t), Some(rest)) = (table, line.strip_prefix("-A ")) {
            let mut w = words(rest);
            if w.is_empty() {
                continue;
            }
            let chain = w.remove(0);
            let tag = tag_of(&w).map(str::to_string);
            if ours(&chain) {
                let rule = match tag.as_ref().and_then(|t| book.rules.get(t)) {
                    Some(known) => known.clone(),
                    None => {
                        let rule = Rule(w);
                        k.raw.insert(rule.clone());
                        rule
                    }
                };
                chains
                    .entry(chain_key(family, t, &chain))
                    .or_insert_with(|| Chain { rules: Vec::new() })
                    .rules
                    .push(rule);
            } else if target_of(&w).is_some_and(&ours) {
                let known = tag.and_then(|tag| book.jumps.get(&(family, t, chain.clone(), tag)));
                jumps
                    .entry((t, chain))
                    .or_default()
                    .push((known.cloned(), Rule(w)));
            }
        }
    }
    for ((table, from), found) in jumps {
        let in_order = found.windows(2).all(|w| match (&w[0].0, &w[1].0) {
            (Some(a), Some(b)) => a.position < b.position,
            _ => true,
        });
        for (i, (known, rule)) in found.into_iter().enumerate() {
            match known {
                Some(jump) if in_order => k.jumps.push(jump),
                _ => {
                    k.raw.insert(rule.clone());
                    k.jumps.push(Jump {
                        family,
                        table,
                        from: from.clone(),
                        position: u16::MAX - u16::try_from(i).unwrap_or(u16::MAX),
                        rule,
                    });
                }
            }
        }
    }
    k.chains = chains.into_iter().collect();
    k
}

/// Reads back one table of one family.
pub fn read_table(
    target: &Target,
    family: Family,
    table: Table,
    ours: impl Fn(&str) -> bool,
    book: &RuleBook,
) -> Result<KernelTables, IptablesError> {
    let text = save(target, family, &["-t", table.as_str()])?;
    Ok(parse_save(&text, family, ours, book))
}

/// Reads back one family's tables.
pub fn read(
    target: &Target,
    family: Family,
    ours: impl Fn(&str) -> bool,
    book: &RuleBook,
) -> Result<KernelTables, IptablesError> {
    let text = save(target, family, &[])?;
    Ok(parse_save(&text, family, ours, book))
}

fn save(target: &Target, family: Family, args: &[&str]) -> Result<String, IptablesError> {
    run_tool(target, save_tool(family), args, None)
}
