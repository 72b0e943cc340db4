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
//!
//! Node facts (health checks, node conditions) are in no kernel view:
//! [`validate_node_facts`] checks them on a whole state, as
//! [`NodeDataplane::validate`] does, and an agent before it serves them.

mod check;
mod invalid;

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::{Change, Diff};
use crate::fragment::Fragment;
use crate::model::Family;
use crate::state::NodeDataplane;
use check::Check;
pub use invalid::{Invalid, summary};

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
                problems.extend(validate_fragment(&flat.without_node_facts()));
            }
        }
        problems.extend(validate_node_facts(self));
        problems
    }
}

/// Every problem of a state's node facts: each health check's port and
/// names, and a port in more than one part. O(health checks): an agent
/// checks them whole with every state it is sent.
pub fn validate_node_facts(state: &NodeDataplane) -> Vec<Invalid> {
    let empty = Fragment::new();
    let mut check = Check {
        within: &empty,
        problems: Vec::new(),
    };
    let mut parts_of: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, part) in state.parts() {
        for (port, health_check) in part.health_checks() {
            check.health_check(*port, health_check);
            *parts_of.entry(*port).or_default() += 1;
        }
    }
    for (port, parts) in parts_of {
        if parts > 1 {
            check
                .problems
                .push(Invalid::HealthCheckPortRepeated { port, parts });
        }
    }
    check.problems
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
    for (port, health_check) in f.health_checks() {
        check.health_check(*port, health_check);
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
            Change::HealthCheckSet { port, health_check } => {
                check.health_check(*port, health_check)
            }
            Change::EntriesRemoved { .. }
            | Change::SetDestroyed { .. }
            | Change::AddressRemoved { .. }
            | Change::VirtualServerEdited { .. }
            | Change::VirtualServerRemoved { .. }
            | Change::RealServerRemoved { .. }
            | Change::ChainRemoved { .. }
            | Change::JumpRemoved { .. }
            | Change::HealthCheckRemoved { .. }
            | Change::NodeConditionAdded { .. }
            | Change::NodeConditionRemoved { .. } => {}
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
