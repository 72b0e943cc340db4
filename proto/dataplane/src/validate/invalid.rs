//! What a check finds: one `Invalid` per problem, shown as one readable
//! line whatever the state holds.

use std::fmt;
use std::net::IpAddr;

use super::{
    MAX_CHAINS, MAX_RULE_WORD_BYTES, MAX_RULE_WORDS, MAX_SET_ELEMENTS, MAX_SETS,
    RESERVED_SET_PREFIX,
};
use crate::model::{
    Family, MAX_CHAIN_NAME_LEN, MAX_NAMESPACE_LEN, MAX_OBJECT_NAME_LEN, MAX_SET_NAME_LEN, SetEntry,
    SetType, Table,
};
use crate::text::{QUOTED_BYTES, quoted};

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
    /// A health check on port 0, which nothing can listen on for others.
    HealthCheckPortZero,
    /// Not a Kubernetes namespace: 1 to 63 of `a-z 0-9 -`, a letter or
    /// digit at each end.
    HealthCheckNamespaceMalformed {
        port: u16,
        namespace: String,
    },
    /// Not a Kubernetes object name: dot-separated namespaces-like labels,
    /// 1 to 253 bytes.
    HealthCheckNameMalformed {
        port: u16,
        name: String,
    },
    /// The same port in more than one part of a node's state: the agent
    /// could serve only one of them.
    HealthCheckPortRepeated {
        port: u16,
        parts: usize,
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
            Invalid::HealthCheckPortZero => write!(f, "a health check on port 0"),
            Invalid::HealthCheckNamespaceMalformed { port, namespace } => write!(
                f,
                "the health check on port {port} names namespace {}, not 1 to {MAX_NAMESPACE_LEN} of a-z, 0-9 and -",
                shown(namespace)
            ),
            Invalid::HealthCheckNameMalformed { port, name } => write!(
                f,
                "the health check on port {port} names Service {}, not 1 to {MAX_OBJECT_NAME_LEN} bytes of dot-separated a-z, 0-9 and -",
                shown(name)
            ),
            Invalid::HealthCheckPortRepeated { port, parts } => write!(
                f,
                "health check port {port} is in {parts} parts, at most one is allowed"
            ),
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
