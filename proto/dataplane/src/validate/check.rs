//! The per-atom checks every entry point shares.

use std::net::IpAddr;

use super::{
    Invalid, MAX_CHAINS, MAX_RULE_WORD_BYTES, MAX_RULE_WORDS, MAX_SET_ELEMENTS, MAX_SETS,
    RESERVED_SET_PREFIX, is_own_name,
};
use crate::fragment::Fragment;
use crate::model::{
    BUILTIN_TARGETS, ChainKey, Family, HealthCheck, Jump, MAX_CHAIN_NAME_LEN, MAX_NAMESPACE_LEN,
    MAX_OBJECT_NAME_LEN, MAX_SET_NAME_LEN, RealServer, Rule, SetEntry, SetSpec, SetType, Table,
    VirtualServer, VirtualServerKey,
};

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
pub(super) struct Check<'a> {
    pub(super) within: &'a Fragment,
    pub(super) problems: Vec<Invalid>,
}

/// An RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_dns_label(text: &str) -> bool {
    let b = text.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

impl Check<'_> {
    /// A health check's port and the names it carries (into an HTTP body).
    pub(super) fn health_check(&mut self, port: u16, check: &HealthCheck) {
        if port == 0 {
            self.problems.push(Invalid::HealthCheckPortZero);
        }
        let namespace = &check.namespace;
        if namespace.len() > MAX_NAMESPACE_LEN || !is_dns_label(namespace) {
            self.problems.push(Invalid::HealthCheckNamespaceMalformed {
                port,
                namespace: namespace.clone(),
            });
        }
        let name = &check.name;
        if name.len() > MAX_OBJECT_NAME_LEN || !name.split('.').all(is_dns_label) {
            self.problems.push(Invalid::HealthCheckNameMalformed {
                port,
                name: name.clone(),
            });
        }
    }

    pub(super) fn counts(&mut self) {
        let sets = self.within.maps().sets.len();
        if sets > MAX_SETS {
            self.problems.push(Invalid::TooManySets { count: sets });
        }
        let chains = self.within.maps().chains.len();
        if chains > MAX_CHAINS {
            self.problems.push(Invalid::TooManyChains { count: chains });
        }
    }

    pub(super) fn set(&mut self, name: &str, spec: &SetSpec) {
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
    pub(super) fn entries<'e>(&mut self, set: &str, entries: impl Iterator<Item = &'e SetEntry>) {
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
    pub(super) fn fill(&mut self, set: &str) {
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

    pub(super) fn chain_name(&mut self, key: &ChainKey) {
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
    pub(super) fn words(&mut self, chain: &str, rule: &Rule) {
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
    pub(super) fn references(&mut self, chain: &str, family: Family, table: Table, rule: &Rule) {
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

    pub(super) fn is_chain(&self, family: Family, table: Table, name: &str) -> bool {
        self.within
            .chain(&ChainKey {
                family,
                table,
                name: name.to_string(),
            })
            .is_some()
    }

    pub(super) fn chain(&mut self, key: &ChainKey, rules: &[Rule], references: bool) {
        self.chain_name(key);
        for rule in rules {
            self.words(&key.name, rule);
            if references {
                self.references(&key.name, key.family, key.table, rule);
            }
        }
    }

    pub(super) fn jump(&mut self, jump: &Jump, references: bool) {
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

    pub(super) fn jump_references(&mut self, jump: &Jump) {
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

    pub(super) fn address(&mut self, address: IpAddr) {
        if let Some(reason) = reserved(address) {
            self.problems.push(Invalid::ReservedAddress {
                what: "service address",
                address,
                reason,
            });
        }
    }

    pub(super) fn virtual_server(&mut self, key: &VirtualServerKey, vs: &VirtualServer) {
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

    pub(super) fn real_server(&mut self, rs: &RealServer) {
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
