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

/// Bytes of the hash a tag carries: 96 bits, so that no state can be
/// crafted with two rules of one tag.
pub const TAG_BYTES: usize = 12;

/// The tag of a rule: a hash of its words ([`TAG_BYTES`] bytes, in hex).
pub fn rule_tag(rule: &Rule) -> String {
    let mut h = Sha256::new();
    for word in &rule.0 {
        h.update(word.as_bytes());
        h.update([0]);
    }
    format!("{TAG_PREFIX}{}", hex::encode(&h.finalize()[..TAG_BYTES]))
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
/// states it has applied or is about to apply; and, per tag, the words
/// `iptables-save` printed for that rule when it was first read back.
///
/// A tag alone never vouches for a kernel rule: the first time a tagged
/// rule is read, its target, sets and comments must be the contract
/// rule's (`iptables-save` prints the rest in a normal form of its own,
/// `-p` first, `-m tcp` added, `/32` appended); every later read must
/// print exactly what that first read printed. A rule someone edited
/// under our tag reads as unknown, and is replaced.
#[derive(Default)]
pub struct RuleBook {
    rules: HashMap<String, Rule>,
    jumps: HashMap<(Family, Table, String, String), Jump>,
    printed: HashMap<String, Vec<String>>,
}

impl RuleBook {
    /// Whether `printed` (a kernel rule's words, its tag left out) is the
    /// contract rule `rule` of tag `tag`; remembers the printed form the
    /// first time.
    fn vouches(&mut self, tag: &str, rule: &Rule, printed: &[String]) -> bool {
        if let Some(known) = self.printed.get(tag) {
            return known.as_slice() == printed;
        }
        let same = |flag: &str| -> bool {
            let mut want: Vec<&str> = values_of(&rule.0, flag).collect();
            let mut got: Vec<&str> = values_of(printed, flag).collect();
            want.sort_unstable();
            got.sort_unstable();
            want == got
        };
        let plausible = ["-j", "-g", "--match-set", "--comment"]
            .into_iter()
            .all(same);
        if plausible {
            self.printed.insert(tag.to_string(), printed.to_vec());
        }
        plausible
    }

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

/// The values following `flag` in `words`.
fn values_of<'a>(words: &'a [String], flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    words
        .windows(2)
        .filter(move |w| w[0] == flag)
        .map(|w| w[1].as_str())
}

/// A rule's tag and its words without the tag's comment match.
fn split_tag(words: &[String]) -> (Option<String>, Vec<String>) {
    let at = words.windows(4).position(|w| {
        w[0] == "-m" && w[1] == "comment" && w[2] == "--comment" && w[3].starts_with(TAG_PREFIX)
    });
    match at {
        Some(i) => {
            let mut rest = words[..i].to_vec();
            rest.extend_from_slice(&words[i + 4..]);
            (Some(words[i + 3].clone()), rest)
        }
        None => (None, words.to_vec()),
    }
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
    book: &mut RuleBook,
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
            let (tag, printed) = split_tag(&w);
            if ours(&chain) {
                let known = tag
                    .as_ref()
                    .and_then(|t| Some((t, book.rules.get(t)?.clone())))
                    .filter(|(t, rule)| book.vouches(t, rule, &printed));
                let rule = match known {
                    Some((_, known)) => known,
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
                let known = tag
                    .and_then(|tag| {
                        let jump = book.jumps.get(&(family, t, chain.clone(), tag.clone()))?;
                        Some((tag, jump.clone()))
                    })
                    .filter(|(tag, jump)| book.vouches(tag, &jump.rule, &printed))
                    .map(|(_, jump)| jump);
                jumps.entry((t, chain)).or_default().push((known, Rule(w)));
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
    book: &mut RuleBook,
) -> Result<KernelTables, IptablesError> {
    let text = save(target, family, &["-t", table.as_str()])?;
    Ok(parse_save(&text, family, ours, book))
}

/// Reads back one family's tables.
pub fn read(
    target: &Target,
    family: Family,
    ours: impl Fn(&str) -> bool,
    book: &mut RuleBook,
) -> Result<KernelTables, IptablesError> {
    let text = save(target, family, &[])?;
    Ok(parse_save(&text, family, ours, book))
}

fn save(target: &Target, family: Family, args: &[&str]) -> Result<String, IptablesError> {
    run_tool(target, save_tool(family), args, None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use setpoint_dataplane::{Chain, ChainKey, Family, Fragment, Rule, Table};

    use super::*;

    fn chain_key() -> ChainKey {
        ChainKey {
            family: Family::Inet,
            table: Table::Filter,
            name: "SP-FW".to_string(),
        }
    }

    /// A book that knows one rule of `SP-FW`, and that rule.
    fn book_of(words: &[&str]) -> (RuleBook, Rule) {
        let rule = Rule::new(words.iter().copied());
        let mut f = Fragment::new();
        f.put_chain(
            chain_key(),
            Arc::new(Chain {
                rules: vec![rule.clone()],
            }),
        );
        let mut book = RuleBook::default();
        book.learn(&f);
        (book, rule)
    }

    /// What `iptables-save` prints with `SP-FW` holding one rule.
    fn saved(rule_text: &str) -> String {
        format!("*filter\n:INPUT ACCEPT [0:0]\n:SP-FW - [0:0]\n-A SP-FW {rule_text}\nCOMMIT\n")
    }

    /// Whether the read-back took the kernel rule for the contract rule.
    fn vouched(book: &mut RuleBook, text: &str) -> bool {
        let tables = parse_save(&saved(text), Family::Inet, |n| n.starts_with("SP-"), book);
        tables.raw.is_empty()
    }

    #[test]
    fn tags_carry_96_bits() {
        let tag = rule_tag(&Rule::new(["-j", "ACCEPT"]));
        let hex = tag.strip_prefix(TAG_PREFIX).expect("prefix");
        assert_eq!(hex.len() * 4, 96, "{tag}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
        assert_ne!(tag, rule_tag(&Rule::new(["-j", "DROP"])));
    }

    /// A tag names a rule; it does not vouch for whatever carries it.
    #[test]
    fn read_back_compares_the_words_not_only_the_tag() {
        let (mut book, rule) = book_of(&["-p", "tcp", "--dport", "53", "-j", "ACCEPT"]);
        let tag = rule_tag(&rule);
        // Another target, set or comment under the tag: never the rule.
        for forged in [
            format!("-p tcp -m comment --comment {tag} -m tcp --dport 53 -j DROP"),
            format!(
                "-p tcp -m comment --comment {tag} -m tcp --dport 53 -j ACCEPT -m comment --comment x"
            ),
            format!("-p tcp -m comment --comment {tag} -m set --match-set SP-Y src -j ACCEPT"),
        ] {
            assert!(!vouched(&mut book, &forged), "{forged}");
        }
        // The kernel's normal form of the rule, first read: the rule.
        let normal = format!("-p tcp -m comment --comment {tag} -m tcp --dport 53 -j ACCEPT");
        assert!(vouched(&mut book, &normal));
        assert!(vouched(&mut book, &normal), "and again");
        // Any other words later, even with target and comments kept: not.
        let edited = format!(
            "-s 192.0.2.9/32 -p tcp -m comment --comment {tag} -m tcp --dport 54 -j ACCEPT"
        );
        assert!(!vouched(&mut book, &edited));
        let tables = parse_save(
            &saved(&edited),
            Family::Inet,
            |n| n.starts_with("SP-"),
            &mut book,
        );
        assert_eq!(tables.chains.len(), 1);
        assert_ne!(tables.chains[0].1.rules, vec![rule], "read back as it is");
    }

    /// Words `iptables-save` lines are made of, quoting included.
    fn word() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::sample::select(vec![
                "*filter",
                "*nat",
                "*bogus",
                ":SP-FW",
                ":INPUT",
                "-",
                "[0:0]",
                "-A",
                "SP-FW",
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "\"setpoint:0123",
                "\"a b\"",
                "\\",
                "\"",
                "-j",
                "-g",
                "SP-FW",
                "ACCEPT",
                "COMMIT",
                "",
                "é",
            ])
            .prop_map(str::to_string),
            "[ -~]{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any text as `iptables-save` output: chains, jumps and raw rules,
        /// never a panic; nothing read back that the text does not hold.
        #[test]
        fn arbitrary_save_output_never_panics(
            raw in proptest::prelude::any::<String>(),
            lines in proptest::collection::vec(proptest::collection::vec(word(), 0..8), 0..16),
        ) {
            let (mut book, _) = book_of(&["-j", "ACCEPT"]);
            let _ = parse_save(&raw, Family::Inet, |_| true, &mut book);
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            let tables = parse_save(&text, Family::Inet6, |n| n.starts_with("SP-"), &mut book);
            let rules: usize = tables.chains.iter().map(|(_, c)| c.rules.len()).sum();
            proptest::prop_assert!(rules + tables.jumps.len() <= lines.len());
        }
    }
}
