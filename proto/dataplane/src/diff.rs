//! Typed differences between two states, and applying them.
//!
//! `diff(a, b)` lists what must change to turn `a` into `b`; it is empty
//! exactly when the states are equal, and its size grows with the change,
//! not with the state: fragments both states share are skipped whole, and
//! inside a fragment the persistent maps skip shared subtrees.
//!
//! `apply` is strict: a change whose precondition does not hold (adding a
//! set that exists, removing an entry that is absent) is an error, so a
//! diff applied to the wrong base is caught rather than blended in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use serde::{Deserialize, Serialize};

use crate::fragment::Fragment;
use crate::model::{
    Chain, ChainKey, HealthCheck, Jump, NodeCondition, RealServer, Scheduler, SetEntry, SetSpec,
    VirtualServer, VirtualServerKey,
};
use crate::state::{NodeDataplane, flatten};

/// One typed change. A diff lists changes in the order the variants are
/// declared, then by key. That order is canonical, not an apply order for
/// the kernel: the agent's planner sequences kernel operations
/// make-before-break (a set is destroyed only after no rule uses it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    SetCreated {
        name: String,
        spec: SetSpec,
    },
    /// Size or comment changed; the agent rebuilds the set under a
    /// temporary name and swaps it in. `ipset swap` cannot change a set's
    /// type or family, so the agent refuses such a change: Setpoint's set
    /// names encode their type.
    SetRedefined {
        name: String,
        spec: SetSpec,
    },
    EntriesAdded {
        set: String,
        entries: Vec<SetEntry>,
    },
    EntriesRemoved {
        set: String,
        entries: Vec<SetEntry>,
    },
    /// Removes the set's definition and every entry it still has.
    SetDestroyed {
        name: String,
    },
    AddressAdded {
        address: IpAddr,
    },
    AddressRemoved {
        address: IpAddr,
    },
    VirtualServerAdded {
        key: VirtualServerKey,
        virtual_server: Arc<VirtualServer>,
    },
    /// Scheduler or persistence changed; real servers are untouched.
    VirtualServerEdited {
        key: VirtualServerKey,
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
    },
    VirtualServerRemoved {
        key: VirtualServerKey,
    },
    RealServerAdded {
        key: VirtualServerKey,
        real_server: RealServer,
    },
    /// Weight or forwarding method changed.
    RealServerEdited {
        key: VirtualServerKey,
        real_server: RealServer,
    },
    RealServerRemoved {
        key: VirtualServerKey,
        address: IpAddr,
        port: u16,
    },
    ChainReplaced {
        key: ChainKey,
        chain: Arc<Chain>,
    },
    ChainRemoved {
        key: ChainKey,
    },
    JumpAdded {
        jump: Jump,
    },
    JumpRemoved {
        jump: Jump,
    },
    /// A health check added on a port, or its content changed. Not a
    /// kernel change (see [`Change::is_kernel`]).
    HealthCheckSet {
        port: u16,
        health_check: HealthCheck,
    },
    HealthCheckRemoved {
        port: u16,
    },
    NodeConditionAdded {
        condition: NodeCondition,
    },
    NodeConditionRemoved {
        condition: NodeCondition,
    },
}

impl Change {
    /// Position of the variant in the declaration: the order of a diff.
    fn rank(&self) -> u8 {
        match self {
            Change::SetCreated { .. } => 0,
            Change::SetRedefined { .. } => 1,
            Change::EntriesAdded { .. } => 2,
            Change::EntriesRemoved { .. } => 3,
            Change::SetDestroyed { .. } => 4,
            Change::AddressAdded { .. } => 5,
            Change::AddressRemoved { .. } => 6,
            Change::VirtualServerAdded { .. } => 7,
            Change::VirtualServerEdited { .. } => 8,
            Change::VirtualServerRemoved { .. } => 9,
            Change::RealServerAdded { .. } => 10,
            Change::RealServerEdited { .. } => 11,
            Change::RealServerRemoved { .. } => 12,
            Change::ChainReplaced { .. } => 13,
            Change::ChainRemoved { .. } => 14,
            Change::JumpAdded { .. } => 15,
            Change::JumpRemoved { .. } => 16,
            Change::HealthCheckSet { .. } => 17,
            Change::HealthCheckRemoved { .. } => 18,
            Change::NodeConditionAdded { .. } => 19,
            Change::NodeConditionRemoved { .. } => 20,
        }
    }

    /// Whether the change is to kernel state. Health checks and node
    /// conditions are facts the agent serves or reports; it plans none of
    /// them into the kernel ([`crate::template::expand_diff`] drops them).
    pub fn is_kernel(&self) -> bool {
        !matches!(
            self,
            Change::HealthCheckSet { .. }
                | Change::HealthCheckRemoved { .. }
                | Change::NodeConditionAdded { .. }
                | Change::NodeConditionRemoved { .. }
        )
    }

    /// The virtual server the change is about, if it is about one.
    pub fn virtual_server_key(&self) -> Option<&VirtualServerKey> {
        match self {
            Change::VirtualServerAdded { key, .. }
            | Change::VirtualServerEdited { key, .. }
            | Change::VirtualServerRemoved { key }
            | Change::RealServerAdded { key, .. }
            | Change::RealServerEdited { key, .. }
            | Change::RealServerRemoved { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The same change made to the virtual server `at` (any other change
    /// comes back as it is).
    pub fn at(&self, at: VirtualServerKey) -> Change {
        let mut change = self.clone();
        match &mut change {
            Change::VirtualServerAdded { key, .. }
            | Change::VirtualServerEdited { key, .. }
            | Change::VirtualServerRemoved { key }
            | Change::RealServerAdded { key, .. }
            | Change::RealServerEdited { key, .. }
            | Change::RealServerRemoved { key, .. } => *key = at,
            _ => {}
        }
        change
    }

    /// How many atoms the change touches: entries count one each.
    pub fn size(&self) -> usize {
        match self {
            Change::EntriesAdded { entries, .. } | Change::EntriesRemoved { entries, .. } => {
                entries.len()
            }
            _ => 1,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Diff {
    pub changes: Vec<Change>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of atoms changed (see [`Change::size`]).
    pub fn size(&self) -> usize {
        self.changes.iter().map(Change::size).sum()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("change {index} ({change}) does not fit the base state: {reason}")]
    Mismatch {
        index: usize,
        change: &'static str,
        reason: Misfit,
    },
}

/// Why a change does not fit the state it is applied to.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Misfit {
    #[error("set {0} exists")]
    SetExists(String),
    #[error("set {0} does not exist")]
    NoSet(String),
    #[error("{set} already has {entry}")]
    EntryPresent { set: String, entry: SetEntry },
    #[error("{set} has no {entry}")]
    EntryAbsent { set: String, entry: SetEntry },
    #[error("{0} is already bound")]
    AddressBound(IpAddr),
    #[error("{0} is not bound")]
    AddressUnbound(IpAddr),
    #[error("{0} exists")]
    VirtualServerExists(VirtualServerKey),
    #[error("no {0}")]
    NoVirtualServer(VirtualServerKey),
    /// A real server change for a virtual server that is not there.
    #[error("no virtual server {0}")]
    NoVirtualServerOfRealServer(VirtualServerKey),
    #[error("real server exists")]
    RealServerExists,
    #[error("no such real server")]
    NoRealServer,
    #[error("no chain {0}")]
    NoChain(String),
    #[error("jump exists")]
    JumpExists,
    #[error("no such jump")]
    NoJump,
    #[error("no health check on port {0}")]
    NoHealthCheck(u16),
    #[error("node condition {0} holds already")]
    NodeConditionPresent(NodeCondition),
    #[error("node condition {0} does not hold")]
    NodeConditionAbsent(NodeCondition),
}

/// What must change to turn `a` into `b`.
pub fn diff(a: &NodeDataplane, b: &NodeDataplane) -> Diff {
    let shared = |name: &String, frag: &Arc<Fragment>, other: &NodeDataplane| {
        other
            .part(name)
            .is_some_and(|o| Arc::ptr_eq(o, frag) || o.digest() == frag.digest())
    };
    let a_changed: Vec<&Arc<Fragment>> = a
        .parts()
        .filter(|(n, f)| !shared(n, f, b))
        .map(|(_, f)| f)
        .collect();
    let b_changed: Vec<&Arc<Fragment>> = b
        .parts()
        .filter(|(n, f)| !shared(n, f, a))
        .map(|(_, f)| f)
        .collect();
    if a_changed.is_empty() && b_changed.is_empty() {
        return Diff::default();
    }
    // Fragments are disjoint within each state, so an atom outside the
    // changed fragments is in both states and cannot be part of the diff.
    let fa = flatten(a_changed.into_iter());
    let fb = flatten(b_changed.into_iter());
    diff_fragments(&fa, &fb)
}

/// What must change to turn fragment `a` into fragment `b`.
pub fn diff_fragments(a: &Fragment, b: &Fragment) -> Diff {
    let mut created = Vec::new();
    let mut redefined = Vec::new();
    let mut destroyed = Vec::new();
    for item in a.maps().sets.diff(b.maps().sets) {
        match item {
            DiffItem::Add(name, spec) => created.push(Change::SetCreated {
                name: name.clone(),
                spec: spec.clone(),
            }),
            DiffItem::Update {
                new: (name, spec), ..
            } => redefined.push(Change::SetRedefined {
                name: name.clone(),
                spec: spec.clone(),
            }),
            DiffItem::Remove(name, _) => {
                destroyed.push(Change::SetDestroyed { name: name.clone() })
            }
        }
    }

    let mut added: BTreeMap<&String, Vec<SetEntry>> = BTreeMap::new();
    let mut removed: BTreeMap<&String, Vec<SetEntry>> = BTreeMap::new();
    let destroyed_names: Vec<&String> = a
        .maps()
        .sets
        .keys()
        .filter(|n| b.set(n).is_none())
        .collect();
    for item in a.maps().entries.diff(b.maps().entries) {
        match item {
            DiffItem::Add(set, members) => added
                .entry(set)
                .or_default()
                .extend(members.iter().cloned()),
            DiffItem::Update {
                old: (set, old),
                new: (_, new),
            } => {
                for e in old.diff(new) {
                    match e {
                        imbl::ordset::DiffItem::Add(x) => {
                            added.entry(set).or_default().push(x.clone())
                        }
                        imbl::ordset::DiffItem::Remove(x) => {
                            removed.entry(set).or_default().push(x.clone())
                        }
                    }
                }
            }
            DiffItem::Remove(set, members) => {
                // A destroyed set takes its entries with it.
                if !destroyed_names.contains(&set) {
                    removed
                        .entry(set)
                        .or_default()
                        .extend(members.iter().cloned())
                }
            }
        }
    }

    let mut changes = Vec::new();
    changes.extend(created);
    changes.extend(redefined);
    changes.extend(
        added
            .into_iter()
            .map(|(set, entries)| Change::EntriesAdded {
                set: set.clone(),
                entries,
            }),
    );
    changes.extend(
        removed
            .into_iter()
            .map(|(set, entries)| Change::EntriesRemoved {
                set: set.clone(),
                entries,
            }),
    );
    changes.extend(destroyed);

    for item in a.maps().addresses.diff(b.maps().addresses) {
        match item {
            imbl::ordset::DiffItem::Add(x) => changes.push(Change::AddressAdded { address: *x }),
            imbl::ordset::DiffItem::Remove(x) => {
                changes.push(Change::AddressRemoved { address: *x })
            }
        }
    }

    let mut vs_changes = Vec::new();
    for item in a.maps().virtual_servers.diff(b.maps().virtual_servers) {
        match item {
            DiffItem::Add(key, vs) => vs_changes.push(Change::VirtualServerAdded {
                key: *key,
                virtual_server: vs.vs.clone(),
            }),
            DiffItem::Remove(key, _) => vs_changes.push(Change::VirtualServerRemoved { key: *key }),
            DiffItem::Update {
                old: (key, old),
                new: (_, new),
            } => diff_virtual_server(*key, &old.vs, &new.vs, &mut vs_changes),
        }
    }
    changes.extend(vs_changes);

    for item in a.maps().chains.diff(b.maps().chains) {
        match item {
            DiffItem::Add(key, chain)
            | DiffItem::Update {
                new: (key, chain), ..
            } => changes.push(Change::ChainReplaced {
                key: key.clone(),
                chain: chain.clone(),
            }),
            DiffItem::Remove(key, _) => changes.push(Change::ChainRemoved { key: key.clone() }),
        }
    }
    for item in a.maps().jumps.diff(b.maps().jumps) {
        match item {
            imbl::ordset::DiffItem::Add(j) => changes.push(Change::JumpAdded { jump: j.clone() }),
            imbl::ordset::DiffItem::Remove(j) => {
                changes.push(Change::JumpRemoved { jump: j.clone() })
            }
        }
    }
    for item in a.maps().health_checks.diff(b.maps().health_checks) {
        match item {
            DiffItem::Add(port, check)
            | DiffItem::Update {
                new: (port, check), ..
            } => changes.push(Change::HealthCheckSet {
                port: *port,
                health_check: check.clone(),
            }),
            DiffItem::Remove(port, _) => changes.push(Change::HealthCheckRemoved { port: *port }),
        }
    }
    for item in a.maps().node_conditions.diff(b.maps().node_conditions) {
        match item {
            imbl::ordset::DiffItem::Add(c) => {
                changes.push(Change::NodeConditionAdded { condition: *c })
            }
            imbl::ordset::DiffItem::Remove(c) => {
                changes.push(Change::NodeConditionRemoved { condition: *c })
            }
        }
    }
    // Within each variant the changes are already in key order; a stable
    // sort by variant keeps it.
    changes.sort_by_key(Change::rank);
    Diff { changes }
}

fn diff_virtual_server(
    key: VirtualServerKey,
    old: &VirtualServer,
    new: &VirtualServer,
    out: &mut Vec<Change>,
) {
    if !old.same_settings(new) {
        out.push(Change::VirtualServerEdited {
            key,
            scheduler: new.scheduler,
            persistence_timeout: new.persistence_timeout,
        });
    }
    let (mut i, mut j) = (0, 0);
    let (o, n) = (&old.real_servers, &new.real_servers);
    while i < o.len() || j < n.len() {
        let ord = match (o.get(i), n.get(j)) {
            (Some(x), Some(y)) => (x.address, x.port).cmp(&(y.address, y.port)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(Change::RealServerRemoved {
                    key,
                    address: o[i].address,
                    port: o[i].port,
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Change::RealServerAdded {
                    key,
                    real_server: n[j],
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if o[i] != n[j] {
                    out.push(Change::RealServerEdited {
                        key,
                        real_server: n[j],
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
}

/// Applies `diff` to `base`; the result is one flat fragment.
pub fn apply(base: &NodeDataplane, diff: &Diff) -> Result<NodeDataplane, ApplyError> {
    let mut f = base.flatten();
    apply_to_fragment(&mut f, diff)?;
    Ok(NodeDataplane::from_fragment(f))
}

/// Applies `diff` to a fragment in place; on error the fragment holds the
/// changes before the failing one.
pub fn apply_to_fragment(f: &mut Fragment, diff: &Diff) -> Result<(), ApplyError> {
    for (index, change) in diff.changes.iter().enumerate() {
        let fail = |name: &'static str, reason: Misfit| ApplyError::Mismatch {
            index,
            change: name,
            reason,
        };
        match change {
            Change::SetCreated { name, spec } => {
                if f.set(name).is_some() {
                    return Err(fail("set_created", Misfit::SetExists(name.clone())));
                }
                f.put_set(name.clone(), spec.clone());
            }
            Change::SetRedefined { name, spec } => {
                if f.put_set(name.clone(), spec.clone()).is_none() {
                    f.remove_set(name);
                    return Err(fail("set_redefined", Misfit::NoSet(name.clone())));
                }
            }
            Change::EntriesAdded { set, entries } => {
                for e in entries {
                    if !f.add_entry(set, e.clone()) {
                        return Err(fail(
                            "entries_added",
                            Misfit::EntryPresent {
                                set: set.clone(),
                                entry: e.clone(),
                            },
                        ));
                    }
                }
            }
            Change::EntriesRemoved { set, entries } => {
                for e in entries {
                    if !f.remove_entry(set, e) {
                        return Err(fail(
                            "entries_removed",
                            Misfit::EntryAbsent {
                                set: set.clone(),
                                entry: e.clone(),
                            },
                        ));
                    }
                }
            }
            Change::SetDestroyed { name } => {
                if f.remove_set(name).is_none() {
                    return Err(fail("set_destroyed", Misfit::NoSet(name.clone())));
                }
                f.clear_entries(name);
            }
            Change::AddressAdded { address } => {
                if !f.add_address(*address) {
                    return Err(fail("address_added", Misfit::AddressBound(*address)));
                }
            }
            Change::AddressRemoved { address } => {
                if !f.remove_address(address) {
                    return Err(fail("address_removed", Misfit::AddressUnbound(*address)));
                }
            }
            Change::VirtualServerAdded {
                key,
                virtual_server,
            } => {
                if f.virtual_server(key).is_some() {
                    return Err(fail(
                        "virtual_server_added",
                        Misfit::VirtualServerExists(*key),
                    ));
                }
                f.put_virtual_server(*key, virtual_server.clone());
            }
            Change::VirtualServerEdited {
                key,
                scheduler,
                persistence_timeout,
            } => {
                let old = f
                    .virtual_server(key)
                    .ok_or_else(|| fail("virtual_server_edited", Misfit::NoVirtualServer(*key)))?;
                let new =
                    VirtualServer::new(*scheduler, *persistence_timeout, old.real_servers.clone());
                f.put_virtual_server(*key, Arc::new(new));
            }
            Change::VirtualServerRemoved { key } => {
                if f.remove_virtual_server(key).is_none() {
                    return Err(fail(
                        "virtual_server_removed",
                        Misfit::NoVirtualServer(*key),
                    ));
                }
            }
            Change::RealServerAdded { key, real_server } => {
                edit_reals(f, key, |reals| {
                    if reals
                        .iter()
                        .any(|r| (r.address, r.port) == (real_server.address, real_server.port))
                    {
                        return Err(Misfit::RealServerExists);
                    }
                    reals.push(*real_server);
                    Ok(())
                })
                .map_err(|r| fail("real_server_added", r))?;
            }
            Change::RealServerEdited { key, real_server } => {
                edit_reals(f, key, |reals| {
                    let slot = reals
                        .iter_mut()
                        .find(|r| (r.address, r.port) == (real_server.address, real_server.port))
                        .ok_or(Misfit::NoRealServer)?;
                    *slot = *real_server;
                    Ok(())
                })
                .map_err(|r| fail("real_server_edited", r))?;
            }
            Change::RealServerRemoved { key, address, port } => {
                edit_reals(f, key, |reals| {
                    let before = reals.len();
                    reals.retain(|r| (r.address, r.port) != (*address, *port));
                    if reals.len() == before {
                        return Err(Misfit::NoRealServer);
                    }
                    Ok(())
                })
                .map_err(|r| fail("real_server_removed", r))?;
            }
            Change::ChainReplaced { key, chain } => {
                f.put_chain(key.clone(), chain.clone());
            }
            Change::ChainRemoved { key } => {
                if f.remove_chain(key).is_none() {
                    return Err(fail("chain_removed", Misfit::NoChain(key.name.clone())));
                }
            }
            Change::JumpAdded { jump } => {
                if !f.add_jump(jump.clone()) {
                    return Err(fail("jump_added", Misfit::JumpExists));
                }
            }
            Change::JumpRemoved { jump } => {
                if !f.remove_jump(jump) {
                    return Err(fail("jump_removed", Misfit::NoJump));
                }
            }
            Change::HealthCheckSet { port, health_check } => {
                f.put_health_check(*port, health_check.clone());
            }
            Change::HealthCheckRemoved { port } => {
                if f.remove_health_check(*port).is_none() {
                    return Err(fail("health_check_removed", Misfit::NoHealthCheck(*port)));
                }
            }
            Change::NodeConditionAdded { condition } => {
                if !f.add_node_condition(*condition) {
                    return Err(fail(
                        "node_condition_added",
                        Misfit::NodeConditionPresent(*condition),
                    ));
                }
            }
            Change::NodeConditionRemoved { condition } => {
                if !f.remove_node_condition(*condition) {
                    return Err(fail(
                        "node_condition_removed",
                        Misfit::NodeConditionAbsent(*condition),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn edit_reals(
    f: &mut Fragment,
    key: &VirtualServerKey,
    edit: impl FnOnce(&mut Vec<RealServer>) -> Result<(), Misfit>,
) -> Result<(), Misfit> {
    let old = f
        .virtual_server(key)
        .ok_or(Misfit::NoVirtualServerOfRealServer(*key))?;
    let mut reals = old.real_servers.clone();
    edit(&mut reals)?;
    let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
    f.put_virtual_server(*key, Arc::new(new));
    Ok(())
}
