//! Checks a state must pass before it is published, and again before an
//! agent lets the kernel see it: the kernel would refuse it, apply it
//! half-way, or let it reach beyond Setpoint's own objects otherwise.
//!
//! ```text
//!  whole state ── NodeDataplane::validate ──┐
//!  kernel view ── validate_fragment ─────────┼─▶ Check (one atom at a time) ─▶ [Invalid]
//!  one step    ── validate_step (changes) ───┘
//! ```
//!
//! The same per-atom checks serve the control plane (every computed state)
//! and the agent (every snapshot, and every delta's changed atoms plus the
//! references they can break), so both ends agree on what is publishable.
//! Beyond what the kernel refuses, a state is confined: every set and chain
//! is named `SP-`/`SP6-` plus letters, digits, `-` and `_`; jumps leave
//! built-in chains only, for chains of the state; no rule word or comment
//! holds a control character (a newline would be a second line of
//! `iptables-restore` input); sizes are bounded ([`MAX_SETS`],
//! [`MAX_CHAINS`], [`MAX_SET_ELEMENTS`], [`MAX_RULE_WORDS`],
//! [`MAX_RULE_WORD_BYTES`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::diff::{Change, Diff};
use crate::fragment::Fragment;
use crate::model::{
    BUILTIN_TARGETS, ChainKey, Family, Jump, MAX_CHAIN_NAME_LEN, MAX_SET_NAME_LEN, RealServer,
    Rule, SetEntry, SetSpec, SetType, Table, VirtualServer, VirtualServerKey,
};
use crate::state::NodeDataplane;
use crate::text::{QUOTED_BYTES, quoted};

/// Most sets a state may define (the kernel's own ceiling, `ip_set_max`,
/// is 65,534).
pub const MAX_SETS: usize = 65_534;
/// Most chains a state may define: chains grow with local pods and
/// policies, never with Services, and iptables-nft slows to minutes past
/// tens of thousands.
pub const MAX_CHAINS: usize = 10_000;
/// Largest `maxelem` a set may ask for (16 Mi).
pub const MAX_SET_ELEMENTS: u32 = 1 << 24;
/// Most words in one rule.
pub const MAX_RULE_WORDS: usize = 64;
/// Longest rule word; also iptables' comment limit (255 bytes and a NUL).
pub const MAX_RULE_WORD_BYTES: usize = 255;
/// Set names the agent keeps for itself: sets rebuilt under a temporary
/// name are swapped in and destroyed.
pub const RESERVED_SET_PREFIX: &str = "SP-TMP-";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    SetNameTooLong {
        name: String,
    },
    /// Not `SP-`/`SP6-` followed by letters, digits, `-` and `_`.
    SetNameMalformed {
        name: String,
    },
    SetNameReserved {
        name: String,
    },
    SetCommentMalformed {
        set: String,
    },
    SetTooLarge {
        set: String,
        maxelem: u32,
    },
    TooManySets {
        count: usize,
    },
    EntriesWithoutSet {
        set: String,
        count: usize,
    },
    EntryWrongType {
        set: String,
        entry: SetEntry,
        kind: SetType,
    },
    EntryWrongFamily {
        set: String,
        entry: SetEntry,
        family: Family,
    },
    /// A `/0` net: `hash:net` types hold prefixes of length 1 and up.
    EntryZeroPrefix {
        set: String,
        entry: SetEntry,
    },
    SetOverfull {
        set: String,
        entries: usize,
        maxelem: u32,
    },
    UnknownSetInRule {
        chain: String,
        set: String,
    },
    SetFamilyMismatchInRule {
        chain: String,
        set: String,
    },
    ChainNameTooLong {
        name: String,
    },
    /// Not `SP-`/`SP6-` followed by letters, digits, `-` and `_`.
    ChainNameMalformed {
        name: String,
    },
    TooManyChains {
        count: usize,
    },
    UnknownChainTarget {
        chain: String,
        target: String,
    },
    BuiltinChainDeclared {
        name: String,
    },
    JumpFromUnknownChain {
        table: Table,
        from: String,
    },
    /// A jump must go to one of the state's own chains: the agent knows
    /// its jumps in built-in chains by their target.
    JumpTargetNotOwn {
        table: Table,
        from: String,
        target: Option<String>,
    },
    /// A word holds a control character (newline, NUL, …).
    RuleWordControl {
        chain: String,
        word: String,
    },
    RuleWordTooLong {
        chain: String,
        bytes: usize,
    },
    RuleTooLong {
        chain: String,
        words: usize,
    },
    /// A jump, goto or set match spelt other than `-j`, `-g`,
    /// `--match-set`: iptables would read it, and these checks would not.
    RuleWordSpelling {
        chain: String,
        word: String,
    },
    ReservedAddress {
        what: &'static str,
        address: IpAddr,
        reason: &'static str,
    },
    MixedFamilyVirtualServer {
        key: String,
    },
    /// IPVS takes weights as a signed 32-bit number.
    WeightTooLarge {
        address: IpAddr,
        weight: u32,
    },
    DuplicatedAcrossParts {
        atoms: u64,
    },
    NodePortCollision {
        collision: crate::template::Collision,
    },
}

/// `text` from the state as a problem shows it: as it is when short and
/// printable, else escaped and cut, so a problem is one readable line
/// whatever the state holds.
fn shown(text: &str) -> String {
    if text.len() <= QUOTED_BYTES && !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
    {
        return text.to_string();
    }
    quoted(text)
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every name a state supplies is shown escaped when it is odd.
        match self {
            Invalid::SetNameTooLong { name } => write!(
                f,
                "set name {} is {} bytes, the kernel allows {MAX_SET_NAME_LEN}",
                shown(name),
                name.len()
            ),
            Invalid::SetNameMalformed { name } => write!(
                f,
                "set name {} must be SP- or SP6- followed by letters, digits, - and _",
                shown(name)
            ),
            Invalid::SetNameReserved { name } => write!(
                f,
                "set name {} is reserved for the agent ({RESERVED_SET_PREFIX}…)",
                shown(name)
            ),
            Invalid::SetCommentMalformed { set } => {
                write!(
                    f,
                    "the comment of set {set} holds a control character",
                    set = shown(set)
                )
            }
            Invalid::SetTooLarge { set, maxelem } => write!(
                f,
                "set {set} asks for maxelem {maxelem}, at most {MAX_SET_ELEMENTS} and at least 1 are allowed",
                set = shown(set)
            ),
            Invalid::TooManySets { count } => {
                write!(f, "{count} sets, at most {MAX_SETS} are allowed")
            }
            Invalid::EntriesWithoutSet { set, count } => {
                write!(
                    f,
                    "{count} entries for set {set} which is not defined",
                    set = shown(set)
                )
            }
            Invalid::EntryWrongType { set, entry, kind } => {
                write!(
                    f,
                    "entry {entry} does not fit set {set} of type {kind}",
                    set = shown(set)
                )
            }
            Invalid::EntryWrongFamily { set, entry, family } => write!(
                f,
                "entry {entry} does not fit set {set} of family {}",
                family.as_str(),
                set = shown(set)
            ),
            Invalid::EntryZeroPrefix { set, entry } => write!(
                f,
                "entry {entry} of set {set} has a /0 net, which the kernel refuses",
                set = shown(set)
            ),
            Invalid::SetOverfull {
                set,
                entries,
                maxelem,
            } => write!(
                f,
                "set {set} holds {entries} entries but maxelem is {maxelem}",
                set = shown(set)
            ),
            Invalid::UnknownSetInRule { chain, set } => write!(
                f,
                "a rule in {chain} matches set {} which is not defined",
                shown(set),
                chain = shown(chain)
            ),
            Invalid::SetFamilyMismatchInRule { chain, set } => write!(
                f,
                "a rule in {chain} matches set {set} of the other address family",
                set = shown(set),
                chain = shown(chain)
            ),
            Invalid::ChainNameTooLong { name } => write!(
                f,
                "chain name {} is longer than {MAX_CHAIN_NAME_LEN} bytes",
                shown(name)
            ),
            Invalid::ChainNameMalformed { name } => write!(
                f,
                "chain name {} must be SP- or SP6- followed by letters, digits, - and _",
                shown(name)
            ),
            Invalid::TooManyChains { count } => {
                write!(f, "{count} chains, at most {MAX_CHAINS} are allowed")
            }
            Invalid::UnknownChainTarget { chain, target } => write!(
                f,
                "a rule in {chain} jumps to {} which is not defined",
                shown(target),
                chain = shown(chain)
            ),
            Invalid::BuiltinChainDeclared { name } => {
                write!(
                    f,
                    "built-in chain {name} cannot be owned",
                    name = shown(name)
                )
            }
            Invalid::JumpFromUnknownChain { table, from } => write!(
                f,
                "jump from {} which is not a built-in chain of table {}",
                shown(from),
                table.as_str()
            ),
            Invalid::JumpTargetNotOwn {
                table,
                from,
                target,
            } => match target {
                Some(target) => write!(
                    f,
                    "a jump from {from} (table {}) goes to {}, not to a chain of this state",
                    table.as_str(),
                    shown(target),
                    from = shown(from)
                ),
                None => write!(
                    f,
                    "a jump from {from} (table {}) has no -j or -g target",
                    table.as_str(),
                    from = shown(from)
                ),
            },
            Invalid::RuleWordControl { chain, word } => write!(
                f,
                "a rule in {chain} has a word with a control character: {}",
                shown(word),
                chain = shown(chain)
            ),
            Invalid::RuleWordTooLong { chain, bytes } => write!(
                f,
                "a rule in {chain} has a word of {bytes} bytes, at most {MAX_RULE_WORD_BYTES} are allowed",
                chain = shown(chain)
            ),
            Invalid::RuleTooLong { chain, words } => write!(
                f,
                "a rule in {chain} has {words} words, at most {MAX_RULE_WORDS} are allowed",
                chain = shown(chain)
            ),
            Invalid::RuleWordSpelling { chain, word } => write!(
                f,
                "a rule in {chain} spells {} where only -j, -g and --match-set are accepted",
                shown(word),
                chain = shown(chain)
            ),
            Invalid::ReservedAddress {
                what,
                address,
                reason,
            } => write!(f, "{what} {address} is {reason}"),
            Invalid::MixedFamilyVirtualServer { key } => write!(
                f,
                "virtual server {key} has a real server of the other family"
            ),
            Invalid::WeightTooLarge { address, weight } => write!(
                f,
                "real server {address} has weight {weight}, IPVS takes at most {}",
                i32::MAX
            ),
            Invalid::DuplicatedAcrossParts { atoms } => {
                write!(f, "{atoms} atoms are defined in more than one fragment")
            }
            Invalid::NodePortCollision { collision } => write!(f, "{collision}"),
        }
    }
}

/// Problems as one line for an operator or a nack: the first few, and how
/// many more there are.
pub fn summary(problems: &[Invalid]) -> String {
    const SHOWN: usize = 5;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    text
}

/// Whether `name` is a name Setpoint may give a set or chain: `SP-` or
/// `SP6-`, then at least one of `A-Z a-z 0-9 - _`.
pub fn is_own_name(name: &str) -> bool {
    let rest = name
        .strip_prefix("SP-")
        .or_else(|| name.strip_prefix("SP6-"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Why `address` is never a service address, virtual server or real
/// server, if it is not. Unspecified addresses are checked by the caller:
/// a NodePort template's virtual server has one.
fn reserved(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        _ => None,
    }
}

/// Whether `word` is a spelling of `-j`, `-g` or `--match-set` other than
/// those: getopt takes `--jump`, `--goto` and any unambiguous prefix of a
/// long option, and the set match also answers to `--set`.
fn misspelt(word: &str) -> bool {
    let abbreviates =
        |long: &str, shortest: usize| word.len() >= shortest && long.starts_with(word);
    word == "--set"
        || abbreviates("--jump", 3)
        || abbreviates("--goto", 3)
        || (word != "--match-set" && abbreviates("--match-set", "--match-".len()))
}

/// The per-atom checks, against `within`: the (flat) state the atom is
/// part of, for what it refers to.
struct Check<'a> {
    within: &'a Fragment,
    problems: Vec<Invalid>,
}

impl Check<'_> {
    fn counts(&mut self) {
        let sets = self.within.maps().sets.len();
        if sets > MAX_SETS {
            self.problems.push(Invalid::TooManySets { count: sets });
        }
        let chains = self.within.maps().chains.len();
        if chains > MAX_CHAINS {
            self.problems.push(Invalid::TooManyChains { count: chains });
        }
    }

    fn set(&mut self, name: &str, spec: &SetSpec) {
        let name_owned = || name.to_string();
        if name.len() > MAX_SET_NAME_LEN {
            self.problems
                .push(Invalid::SetNameTooLong { name: name_owned() });
        }
        if !is_own_name(name) {
            self.problems
                .push(Invalid::SetNameMalformed { name: name_owned() });
        } else if name.starts_with(RESERVED_SET_PREFIX) {
            self.problems
                .push(Invalid::SetNameReserved { name: name_owned() });
        }
        if spec.comment.chars().any(char::is_control) {
            self.problems
                .push(Invalid::SetCommentMalformed { set: name_owned() });
        }
        if spec.maxelem == 0 || spec.maxelem > MAX_SET_ELEMENTS {
            self.problems.push(Invalid::SetTooLarge {
                set: name_owned(),
                maxelem: spec.maxelem,
            });
        }
    }

    /// `entries` of `set` fit its definition.
    fn entries<'e>(&mut self, set: &str, entries: impl Iterator<Item = &'e SetEntry>) {
        let Some(spec) = self.within.set(set) else {
            return;
        };
        for entry in entries {
            if !spec.kind.accepts(entry) {
                self.problems.push(Invalid::EntryWrongType {
                    set: set.to_string(),
                    entry: entry.clone(),
                    kind: spec.kind,
                });
            } else if entry.family().is_some_and(|fam| fam != spec.family)
                || !entry.is_single_family()
            {
                self.problems.push(Invalid::EntryWrongFamily {
                    set: set.to_string(),
                    entry: entry.clone(),
                    family: spec.family,
                });
            } else if let SetEntry::Net { net, .. } | SetEntry::IpPortNet { net, .. } = entry
                && net.prefix_len() == 0
            {
                self.problems.push(Invalid::EntryZeroPrefix {
                    set: set.to_string(),
                    entry: entry.clone(),
                });
            }
        }
    }

    /// `set` is defined and holds no more than its `maxelem` in `within`.
    fn fill(&mut self, set: &str) {
        let count = self.within.entry_count(set);
        match self.within.set(set) {
            None if count > 0 => self.problems.push(Invalid::EntriesWithoutSet {
                set: set.to_string(),
                count,
            }),
            Some(spec) if count > spec.maxelem as usize => {
                self.problems.push(Invalid::SetOverfull {
                    set: set.to_string(),
                    entries: count,
                    maxelem: spec.maxelem,
                })
            }
            _ => {}
        }
    }

    fn chain_name(&mut self, key: &ChainKey) {
        if key.name.len() > MAX_CHAIN_NAME_LEN {
            self.problems.push(Invalid::ChainNameTooLong {
                name: key.name.clone(),
            });
        }
        if key.table.builtin_chains().contains(&key.name.as_str()) {
            self.problems.push(Invalid::BuiltinChainDeclared {
                name: key.name.clone(),
            });
        } else if !is_own_name(&key.name) {
            self.problems.push(Invalid::ChainNameMalformed {
                name: key.name.clone(),
            });
        }
    }

    /// The words of a rule in `chain`: bounded, printable, spelt as the
    /// checks below read them.
    fn words(&mut self, chain: &str, rule: &Rule) {
        if rule.0.len() > MAX_RULE_WORDS {
            self.problems.push(Invalid::RuleTooLong {
                chain: chain.to_string(),
                words: rule.0.len(),
            });
        }
        for word in &rule.0 {
            if word.chars().any(char::is_control) {
                self.problems.push(Invalid::RuleWordControl {
                    chain: chain.to_string(),
                    word: word.clone(),
                });
            } else if word.len() > MAX_RULE_WORD_BYTES {
                self.problems.push(Invalid::RuleWordTooLong {
                    chain: chain.to_string(),
                    bytes: word.len(),
                });
            } else if misspelt(word) {
                self.problems.push(Invalid::RuleWordSpelling {
                    chain: chain.to_string(),
                    word: word.clone(),
                });
            }
        }
    }

    /// What a rule in `chain` refers to exists in `within`: its sets, of
    /// its family, and its target.
    fn references(&mut self, chain: &str, family: Family, table: Table, rule: &Rule) {
        for set in rule.referenced_sets() {
            match self.within.set(set) {
                None => self.problems.push(Invalid::UnknownSetInRule {
                    chain: chain.to_string(),
                    set: set.to_string(),
                }),
                Some(spec) if spec.kind != SetType::BitmapPort && spec.family != family => {
                    self.problems.push(Invalid::SetFamilyMismatchInRule {
                        chain: chain.to_string(),
                        set: set.to_string(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(target) = rule.target()
            && !BUILTIN_TARGETS.contains(&target)
            && !self.is_chain(family, table, target)
        {
            self.problems.push(Invalid::UnknownChainTarget {
                chain: chain.to_string(),
                target: target.to_string(),
            });
        }
    }

    fn is_chain(&self, family: Family, table: Table, name: &str) -> bool {
        self.within
            .chain(&ChainKey {
                family,
                table,
                name: name.to_string(),
            })
            .is_some()
    }

    fn chain(&mut self, key: &ChainKey, rules: &[Rule], references: bool) {
        self.chain_name(key);
        for rule in rules {
            self.words(&key.name, rule);
            if references {
                self.references(&key.name, key.family, key.table, rule);
            }
        }
    }

    fn jump(&mut self, jump: &Jump, references: bool) {
        if !jump.table.builtin_chains().contains(&jump.from.as_str()) {
            self.problems.push(Invalid::JumpFromUnknownChain {
                table: jump.table,
                from: jump.from.clone(),
            });
        }
        self.words(&jump.from, &jump.rule);
        if references {
            self.jump_references(jump);
        }
    }

    fn jump_references(&mut self, jump: &Jump) {
        self.references(&jump.from, jump.family, jump.table, &jump.rule);
        let target = jump.rule.target();
        let own = target.is_some_and(|t| self.is_chain(jump.family, jump.table, t));
        // An unknown chain is already reported by `references`.
        if !own && target.is_none_or(|t| BUILTIN_TARGETS.contains(&t)) {
            self.problems.push(Invalid::JumpTargetNotOwn {
                table: jump.table,
                from: jump.from.clone(),
                target: target.map(str::to_string),
            });
        }
    }

    fn address(&mut self, address: IpAddr) {
        if let Some(reason) = reserved(address) {
            self.problems.push(Invalid::ReservedAddress {
                what: "service address",
                address,
                reason,
            });
        }
    }

    fn virtual_server(&mut self, key: &VirtualServerKey, vs: &VirtualServer) {
        if !key.address.is_unspecified()
            && let Some(reason) = reserved(key.address)
        {
            self.problems.push(Invalid::ReservedAddress {
                what: "virtual server",
                address: key.address,
                reason,
            });
        }
        for rs in &vs.real_servers {
            self.real_server(rs);
        }
        if vs
            .real_servers
            .iter()
            .any(|rs| Family::of(&rs.address) != key.family())
        {
            self.problems.push(Invalid::MixedFamilyVirtualServer {
                key: format!("{}/{key}", key.protocol),
            });
        }
    }

    fn real_server(&mut self, rs: &RealServer) {
        if let Some(reason) = reserved(rs.address) {
            self.problems.push(Invalid::ReservedAddress {
                what: "real server",
                address: rs.address,
                reason,
            });
        }
        if i32::try_from(rs.weight).is_err() {
            self.problems.push(Invalid::WeightTooLarge {
                address: rs.address,
                weight: rs.weight,
            });
        }
    }
}

impl NodeDataplane {
    /// Every problem found, empty when the state is publishable. Includes
    /// the disjointness check, which costs a merge of all fragments.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let overlap = self.overlap();
        if overlap > 0 {
            problems.push(Invalid::DuplicatedAcrossParts { atoms: overlap });
        }
        // Checked as the kernel will hold it, NodePort templates expanded
        // over the node's addresses: what the agent checks again.
        let flat = self.flatten();
        match crate::template::expand(&flat) {
            Ok(view) => problems.extend(validate_fragment(&view)),
            Err(collision) => {
                problems.push(Invalid::NodePortCollision { collision });
                problems.extend(validate_fragment(&flat));
            }
        }
        problems
    }
}

/// Every problem of one flat collection of atoms (a state's kernel view,
/// or its fragments merged): all but disjointness and NodePort collisions,
/// which only a [`NodeDataplane`] can tell.
pub fn validate_fragment(f: &Fragment) -> Vec<Invalid> {
    let mut check = Check {
        within: f,
        problems: Vec::new(),
    };
    check.counts();
    for (name, spec) in f.sets() {
        check.set(name, spec);
    }
    for (set, entries) in f.all_entries() {
        check.entries(set, entries.iter());
        check.fill(set);
    }
    for (key, chain) in f.chains() {
        check.chain(key, &chain.rules, true);
    }
    for jump in f.jumps() {
        check.jump(jump, true);
    }
    for (key, vs) in f.virtual_servers() {
        check.virtual_server(key, vs);
    }
    for address in f.addresses() {
        check.address(*address);
    }
    check.problems
}

/// The problems `changes` bring into `goal`, the state they lead to (a
/// flat fragment, as the agent's kernel view is), in time that grows with
/// the change: the changed atoms are checked, and what removing or
/// redefining a set or chain can break — the references of every rule —
/// is checked again only when a step does that. A `goal` reached from a
/// valid state by `changes` is valid exactly when this is empty.
pub fn validate_step(goal: &Fragment, changes: &Diff) -> Vec<Invalid> {
    let mut check = Check {
        within: goal,
        problems: Vec::new(),
    };
    let references_moved = changes.changes.iter().any(|c| {
        matches!(
            c,
            Change::SetDestroyed { .. } | Change::SetRedefined { .. } | Change::ChainRemoved { .. }
        )
    });
    let grows = changes
        .changes
        .iter()
        .any(|c| matches!(c, Change::SetCreated { .. } | Change::ChainReplaced { .. }));
    if grows {
        check.counts();
    }
    // Sets whose every entry was checked, and sets whose size was.
    let mut rechecked: BTreeSet<&str> = BTreeSet::new();
    let mut filled: BTreeSet<&str> = BTreeSet::new();
    for change in &changes.changes {
        if let Change::SetRedefined { name, .. } = change
            && rechecked.insert(name)
        {
            // A new family or a smaller size concerns every entry.
            check.entries(name, goal.entries(name).into_iter().flatten());
        }
    }
    for change in &changes.changes {
        match change {
            Change::SetCreated { name, spec } | Change::SetRedefined { name, spec } => {
                check.set(name, spec);
                if filled.insert(name) {
                    check.fill(name);
                }
            }
            Change::EntriesAdded { set, entries } => {
                if !rechecked.contains(set.as_str()) {
                    check.entries(set, entries.iter());
                }
                if filled.insert(set) {
                    check.fill(set);
                }
            }
            Change::AddressAdded { address } => check.address(*address),
            Change::VirtualServerAdded {
                key,
                virtual_server,
            } => check.virtual_server(key, virtual_server),
            Change::RealServerAdded { key, real_server }
            | Change::RealServerEdited { key, real_server } => {
                check.real_server(real_server);
                if Family::of(&real_server.address) != key.family() {
                    check.problems.push(Invalid::MixedFamilyVirtualServer {
                        key: format!("{}/{key}", key.protocol),
                    });
                }
            }
            Change::ChainReplaced { key, chain } => {
                check.chain(key, &chain.rules, !references_moved);
            }
            Change::JumpAdded { jump } => check.jump(jump, !references_moved),
            Change::EntriesRemoved { .. }
            | Change::SetDestroyed { .. }
            | Change::AddressRemoved { .. }
            | Change::VirtualServerEdited { .. }
            | Change::VirtualServerRemoved { .. }
            | Change::RealServerRemoved { .. }
            | Change::ChainRemoved { .. }
            | Change::JumpRemoved { .. } => {}
        }
    }
    if references_moved {
        for (key, chain) in goal.chains() {
            for rule in &chain.rules {
                check.references(&key.name, key.family, key.table, rule);
            }
        }
        for jump in goal.jumps() {
            check.jump_references(jump);
        }
    }
    check.problems
}
