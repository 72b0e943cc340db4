//! A diff → kernel operations, ordered make-before-break:
//!
//! ```text
//!  1 sets created / redefined / grown   (ipset restore)
//!  2 service addresses added            (rtnetlink)
//!  3 IPVS additions and edits           (generic netlink)
//!  4 iptables chains and jumps          (iptables-restore --noflush, per family and table)
//!  5 IPVS removals                      (TCP real servers drained first by the executor)
//!  6 set shrinks and destroys           (no rule uses them any more)
//!  7 service addresses removed
//! ```
//!
//! So at every step each rule's sets exist, each real server's virtual
//! server exists, and traffic keeps a path until its replacement is in.
//! Pure: the executor (kernel backends) comes next.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use setpoint_dataplane::{
    Chain, Change, Diff, Family, Fragment, Jump, RealServer, Scheduler, SetEntry, SetSpec, Table,
    VirtualServer, VirtualServerKey,
};

/// One kernel operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    CreateSet {
        name: String,
        spec: SetSpec,
    },
    /// Build under a temporary name, `swap`, destroy the temporary: the
    /// set's size or description changed (its type and family never do).
    RebuildSet {
        name: String,
        spec: SetSpec,
        entries: Vec<SetEntry>,
    },
    AddEntries {
        set: String,
        entries: Vec<SetEntry>,
    },
    DelEntries {
        set: String,
        entries: Vec<SetEntry>,
    },
    DestroySet {
        name: String,
    },
    AddAddress {
        address: IpAddr,
    },
    DelAddress {
        address: IpAddr,
    },
    AddVirtualServer {
        key: VirtualServerKey,
        virtual_server: Arc<VirtualServer>,
    },
    EditVirtualServer {
        key: VirtualServerKey,
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
    },
    AddRealServer {
        key: VirtualServerKey,
        real_server: RealServer,
    },
    EditRealServer {
        key: VirtualServerKey,
        real_server: RealServer,
    },
    DelRealServer {
        key: VirtualServerKey,
        address: IpAddr,
        port: u16,
    },
    DelVirtualServer {
        key: VirtualServerKey,
    },
    /// One `iptables-restore --noflush` for a family and table: chains
    /// declared and refilled, chains deleted, jumps added and removed.
    Iptables {
        family: Family,
        table: Table,
        replace: Vec<(String, Arc<Chain>)>,
        delete: Vec<String>,
        add_jumps: Vec<Jump>,
        del_jumps: Vec<Jump>,
    },
}

/// What one `iptables-restore` for a family and table will carry.
#[derive(Default)]
struct TableOps {
    replace: Vec<(String, Arc<Chain>)>,
    delete: Vec<String>,
    add_jumps: Vec<Jump>,
    del_jumps: Vec<Jump>,
}

fn table_ops(
    tables: &mut BTreeMap<(Family, Table), TableOps>,
    family: Family,
    table: Table,
) -> &mut TableOps {
    tables.entry((family, table)).or_default()
}

/// When an operation runs (see the module doc): phases run in the order
/// declared here, which is what makes a plan make-before-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Sets created, redefined or grown.
    SetsGrown = 1,
    ServiceAddressesAdded = 2,
    /// Virtual and real servers added or edited.
    IpvsAdded = 3,
    /// Chains and jumps, per family and table.
    Iptables = 4,
    /// Real and virtual servers removed.
    IpvsRemoved = 5,
    /// Set entries removed, sets destroyed.
    SetsShrunk = 6,
    ServiceAddressesRemoved = 7,
}

impl Phase {
    /// Its number in the module doc's table (1–7), as operators read it.
    pub fn number(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The phase `op` runs in.
pub fn phase(op: &Op) -> Phase {
    match op {
        Op::CreateSet { .. } | Op::RebuildSet { .. } | Op::AddEntries { .. } => Phase::SetsGrown,
        Op::AddAddress { .. } => Phase::ServiceAddressesAdded,
        Op::AddVirtualServer { .. }
        | Op::EditVirtualServer { .. }
        | Op::AddRealServer { .. }
        | Op::EditRealServer { .. } => Phase::IpvsAdded,
        Op::Iptables { .. } => Phase::Iptables,
        Op::DelRealServer { .. } | Op::DelVirtualServer { .. } => Phase::IpvsRemoved,
        Op::DelEntries { .. } | Op::DestroySet { .. } => Phase::SetsShrunk,
        Op::DelAddress { .. } => Phase::ServiceAddressesRemoved,
    }
}

/// A diff the kernel cannot carry out without a gap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `ipset swap` needs both sets of one type and family, and rules name
    /// sets by name: a set cannot change type in place. Setpoint's set
    /// names encode their type, so this means a bad target state.
    #[error("set {name} would change from {from} to {to}: a set keeps its type for life")]
    SetTypeChanged {
        name: String,
        from: String,
        to: String,
    },
}

/// The operations that carry out `diff` on `current` to reach `target`, in
/// execution order. Sets rebuilt whole take their entries from `target`.
pub fn plan(diff: &Diff, current: &Fragment, target: &Fragment) -> Result<Vec<Op>, PlanError> {
    for change in &diff.changes {
        if let Change::SetRedefined { name, spec } = change
            && let Some(old) = current.set(name)
            && (old.kind != spec.kind || old.family != spec.family)
        {
            return Err(PlanError::SetTypeChanged {
                name: name.clone(),
                from: format!("{} {}", old.kind, old.family.as_str()),
                to: format!("{} {}", spec.kind, spec.family.as_str()),
            });
        }
    }
    let entries_of = |set: &str| -> Vec<SetEntry> {
        target
            .entries(set)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    };
    let mut ops = Vec::new();
    let mut tables: BTreeMap<(Family, Table), TableOps> = BTreeMap::new();
    let redefined: Vec<&String> = diff
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::SetRedefined { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    for change in &diff.changes {
        match change {
            Change::SetCreated { name, spec } => ops.push(Op::CreateSet {
                name: name.clone(),
                spec: spec.clone(),
            }),
            Change::SetRedefined { name, spec } => ops.push(Op::RebuildSet {
                name: name.clone(),
                spec: spec.clone(),
                entries: entries_of(name),
            }),
            // A rebuilt set already holds its target entries.
            Change::EntriesAdded { set, .. } | Change::EntriesRemoved { set, .. }
                if redefined.contains(&set) => {}
            Change::EntriesAdded { set, entries } => ops.push(Op::AddEntries {
                set: set.clone(),
                entries: entries.clone(),
            }),
            Change::EntriesRemoved { set, entries } => ops.push(Op::DelEntries {
                set: set.clone(),
                entries: entries.clone(),
            }),
            Change::SetDestroyed { name } => ops.push(Op::DestroySet { name: name.clone() }),
            Change::AddressAdded { address } => ops.push(Op::AddAddress { address: *address }),
            Change::AddressRemoved { address } => ops.push(Op::DelAddress { address: *address }),
            Change::VirtualServerAdded {
                key,
                virtual_server,
            } => ops.push(Op::AddVirtualServer {
                key: *key,
                virtual_server: virtual_server.clone(),
            }),
            Change::VirtualServerEdited {
                key,
                scheduler,
                persistence_timeout,
            } => ops.push(Op::EditVirtualServer {
                key: *key,
                scheduler: *scheduler,
                persistence_timeout: *persistence_timeout,
            }),
            Change::VirtualServerRemoved { key } => ops.push(Op::DelVirtualServer { key: *key }),
            Change::RealServerAdded { key, real_server } => ops.push(Op::AddRealServer {
                key: *key,
                real_server: *real_server,
            }),
            Change::RealServerEdited { key, real_server } => ops.push(Op::EditRealServer {
                key: *key,
                real_server: *real_server,
            }),
            Change::RealServerRemoved { key, address, port } => ops.push(Op::DelRealServer {
                key: *key,
                address: *address,
                port: *port,
            }),
            Change::ChainReplaced { key, chain } => {
                table_ops(&mut tables, key.family, key.table)
                    .replace
                    .push((key.name.clone(), chain.clone()));
            }
            Change::ChainRemoved { key } => {
                table_ops(&mut tables, key.family, key.table)
                    .delete
                    .push(key.name.clone());
            }
            Change::JumpAdded { jump } => {
                table_ops(&mut tables, jump.family, jump.table)
                    .add_jumps
                    .push(jump.clone());
            }
            Change::JumpRemoved { jump } => {
                table_ops(&mut tables, jump.family, jump.table)
                    .del_jumps
                    .push(jump.clone());
            }
            // Node facts are served, not applied: kernel views hold none.
            Change::HealthCheckSet { .. }
            | Change::HealthCheckRemoved { .. }
            | Change::NodeConditionAdded { .. }
            | Change::NodeConditionRemoved { .. } => {}
        }
    }
    ops.extend(tables.into_iter().map(|((family, table), t)| Op::Iptables {
        family,
        table,
        replace: t.replace,
        delete: t.delete,
        add_jumps: t.add_jumps,
        del_jumps: t.del_jumps,
    }));
    // Stable: within a phase the diff's canonical order is kept.
    ops.sort_by_key(phase);
    Ok(ops)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every kind of operation, with the phase it runs in, in plan order.
    pub(crate) fn one_of_each() -> Vec<(Op, Phase)> {
        let key = VirtualServerKey {
            address: "10.96.0.1".parse().expect("ip"),
            protocol: setpoint_dataplane::Protocol::Tcp,
            port: 80,
        };
        let address: IpAddr = "10.96.0.1".parse().expect("ip");
        let spec = SetSpec {
            kind: setpoint_dataplane::SetType::HashIp,
            family: Family::Inet,
            maxelem: 1024,
            comment: String::new(),
        };
        let real_server = RealServer {
            address: "10.244.0.5".parse().expect("ip"),
            port: 8080,
            weight: 1,
            forward: Default::default(),
        };
        let set = || "SP-X".to_string();
        vec![
            (
                Op::CreateSet {
                    name: set(),
                    spec: spec.clone(),
                },
                Phase::SetsGrown,
            ),
            (
                Op::RebuildSet {
                    name: set(),
                    spec,
                    entries: Vec::new(),
                },
                Phase::SetsGrown,
            ),
            (
                Op::AddEntries {
                    set: set(),
                    entries: Vec::new(),
                },
                Phase::SetsGrown,
            ),
            (Op::AddAddress { address }, Phase::ServiceAddressesAdded),
            (
                Op::AddVirtualServer {
                    key,
                    virtual_server: Arc::new(VirtualServer::new(Scheduler::Rr, None, Vec::new())),
                },
                Phase::IpvsAdded,
            ),
            (
                Op::EditVirtualServer {
                    key,
                    scheduler: Scheduler::Rr,
                    persistence_timeout: None,
                },
                Phase::IpvsAdded,
            ),
            (Op::AddRealServer { key, real_server }, Phase::IpvsAdded),
            (Op::EditRealServer { key, real_server }, Phase::IpvsAdded),
            (
                Op::Iptables {
                    family: Family::Inet,
                    table: Table::Filter,
                    replace: Vec::new(),
                    delete: Vec::new(),
                    add_jumps: Vec::new(),
                    del_jumps: Vec::new(),
                },
                Phase::Iptables,
            ),
            (
                Op::DelRealServer {
                    key,
                    address: real_server.address,
                    port: real_server.port,
                },
                Phase::IpvsRemoved,
            ),
            (Op::DelVirtualServer { key }, Phase::IpvsRemoved),
            (
                Op::DelEntries {
                    set: set(),
                    entries: Vec::new(),
                },
                Phase::SetsShrunk,
            ),
            (Op::DestroySet { name: set() }, Phase::SetsShrunk),
            (Op::DelAddress { address }, Phase::ServiceAddressesRemoved),
        ]
    }

    #[test]
    fn phases_are_the_module_docs_and_run_in_its_order() {
        let rows = one_of_each();
        for (op, expected) in &rows {
            assert_eq!(phase(op), *expected, "{op:?}");
        }
        let numbers: Vec<u8> = rows.iter().map(|(_, p)| p.number()).collect();
        assert_eq!(numbers, [1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5, 6, 6, 7]);
        assert_eq!(Phase::Iptables.to_string(), "4");
        // The order of the variants is the order of execution.
        let mut reversed: Vec<Op> = rows.iter().rev().map(|(op, _)| op.clone()).collect();
        reversed.sort_by_key(phase);
        let phases: Vec<Phase> = reversed.iter().map(phase).collect();
        let expected: Vec<Phase> = rows.iter().map(|(_, p)| *p).collect();
        assert_eq!(phases, expected);
    }
}
