//! Checks a state must pass before it is published: the kernel would
//! refuse it, or apply it half-way, otherwise.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{
    BUILTIN_TARGETS, Family, MAX_CHAIN_NAME_LEN, MAX_SET_NAME_LEN, Rule, SetEntry, SetSpec,
    SetType, Table,
};
use crate::state::NodeDataplane;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    SetNameTooLong {
        name: String,
    },
    SetNameMalformed {
        name: String,
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
    MixedFamilyVirtualServer {
        key: String,
    },
    DuplicatedAcrossParts {
        atoms: u64,
    },
    NodePortCollision {
        collision: crate::template::Collision,
    },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::SetNameTooLong { name } => write!(
                f,
                "set name {name:?} is {} bytes, the kernel allows {MAX_SET_NAME_LEN}",
                name.len()
            ),
            Invalid::SetNameMalformed { name } => {
                write!(
                    f,
                    "set name {name:?} must be printable ASCII without spaces"
                )
            }
            Invalid::EntriesWithoutSet { set, count } => {
                write!(f, "{count} entries for set {set} which is not defined")
            }
            Invalid::EntryWrongType { set, entry, kind } => {
                write!(f, "entry {entry} does not fit set {set} of type {kind}")
            }
            Invalid::EntryWrongFamily { set, entry, family } => write!(
                f,
                "entry {entry} does not fit set {set} of family {}",
                family.as_str()
            ),
            Invalid::SetOverfull {
                set,
                entries,
                maxelem,
            } => write!(
                f,
                "set {set} holds {entries} entries but maxelem is {maxelem}"
            ),
            Invalid::UnknownSetInRule { chain, set } => {
                write!(
                    f,
                    "a rule in {chain} matches set {set} which is not defined"
                )
            }
            Invalid::SetFamilyMismatchInRule { chain, set } => write!(
                f,
                "a rule in {chain} matches set {set} of the other address family"
            ),
            Invalid::ChainNameTooLong { name } => write!(
                f,
                "chain name {name:?} is longer than {MAX_CHAIN_NAME_LEN} bytes"
            ),
            Invalid::UnknownChainTarget { chain, target } => {
                write!(
                    f,
                    "a rule in {chain} jumps to {target} which is not defined"
                )
            }
            Invalid::BuiltinChainDeclared { name } => {
                write!(f, "built-in chain {name} cannot be owned")
            }
            Invalid::JumpFromUnknownChain { table, from } => write!(
                f,
                "jump from {from} which is not a built-in chain of table {}",
                table.as_str()
            ),
            Invalid::MixedFamilyVirtualServer { key } => {
                write!(
                    f,
                    "virtual server {key} has a real server of the other family"
                )
            }
            Invalid::DuplicatedAcrossParts { atoms } => {
                write!(f, "{atoms} atoms are defined in more than one fragment")
            }
            Invalid::NodePortCollision { collision } => write!(f, "{collision}"),
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
        if let Err(collision) = crate::template::expand(&self.flatten()) {
            problems.push(Invalid::NodePortCollision { collision });
        }
        let specs: BTreeMap<&String, &SetSpec> = self.parts().flat_map(|(_, p)| p.sets()).collect();
        for name in specs.keys() {
            if name.len() > MAX_SET_NAME_LEN {
                problems.push(Invalid::SetNameTooLong {
                    name: name.to_string(),
                });
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(Invalid::SetNameMalformed {
                    name: name.to_string(),
                });
            }
        }
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for (_, part) in self.parts() {
            for (set, members) in part.all_entries() {
                *counts.entry(set).or_default() += members.len();
                let Some(spec) = specs.get(set) else {
                    continue;
                };
                for entry in members {
                    if !spec.kind.accepts(entry) {
                        problems.push(Invalid::EntryWrongType {
                            set: set.clone(),
                            entry: entry.clone(),
                            kind: spec.kind,
                        });
                    } else if entry.family().is_some_and(|fam| fam != spec.family)
                        || !entry.is_single_family()
                    {
                        problems.push(Invalid::EntryWrongFamily {
                            set: set.clone(),
                            entry: entry.clone(),
                            family: spec.family,
                        });
                    }
                }
            }
        }
        for (set, count) in counts {
            match specs.get(set) {
                None => problems.push(Invalid::EntriesWithoutSet {
                    set: set.clone(),
                    count,
                }),
                Some(spec) if count > spec.maxelem as usize => {
                    problems.push(Invalid::SetOverfull {
                        set: set.clone(),
                        entries: count,
                        maxelem: spec.maxelem,
                    })
                }
                Some(_) => {}
            }
        }

        let chains: Vec<_> = self.parts().flat_map(|(_, p)| p.chains()).collect();
        let check_rule =
            |chain: &str, family: Family, table: Table, rule: &Rule, out: &mut Vec<Invalid>| {
                for set in rule.referenced_sets() {
                    match specs.get(&set.to_string()) {
                        None => out.push(Invalid::UnknownSetInRule {
                            chain: chain.to_string(),
                            set: set.to_string(),
                        }),
                        Some(spec) if spec.kind != SetType::BitmapPort && spec.family != family => {
                            out.push(Invalid::SetFamilyMismatchInRule {
                                chain: chain.to_string(),
                                set: set.to_string(),
                            })
                        }
                        Some(_) => {}
                    }
                }
                if let Some(target) = rule.target() {
                    let known = BUILTIN_TARGETS.contains(&target)
                        || chains.iter().any(|(k, _)| {
                            k.family == family && k.table == table && k.name == target
                        });
                    if !known {
                        out.push(Invalid::UnknownChainTarget {
                            chain: chain.to_string(),
                            target: target.to_string(),
                        });
                    }
                }
            };
        for (key, chain) in &chains {
            if key.name.len() > MAX_CHAIN_NAME_LEN {
                problems.push(Invalid::ChainNameTooLong {
                    name: key.name.clone(),
                });
            }
            if key.table.builtin_chains().contains(&key.name.as_str()) {
                problems.push(Invalid::BuiltinChainDeclared {
                    name: key.name.clone(),
                });
            }
            for rule in &chain.rules {
                check_rule(&key.name, key.family, key.table, rule, &mut problems);
            }
        }
        for (_, part) in self.parts() {
            for jump in part.jumps() {
                if !jump.table.builtin_chains().contains(&jump.from.as_str()) {
                    problems.push(Invalid::JumpFromUnknownChain {
                        table: jump.table,
                        from: jump.from.clone(),
                    });
                }
                check_rule(
                    &jump.from,
                    jump.family,
                    jump.table,
                    &jump.rule,
                    &mut problems,
                );
            }
            for (key, vs) in part.virtual_servers() {
                if vs
                    .real_servers
                    .iter()
                    .any(|rs| Family::of(&rs.address) != key.family())
                {
                    problems.push(Invalid::MixedFamilyVirtualServer {
                        key: format!("{}/{key}", key.protocol),
                    });
                }
            }
        }
        problems
    }
}
