//! An in-memory kernel: applies [`Op`]s to a [`Fragment`] and refuses what
//! the kernel would refuse — a rule naming a set or chain that does not
//! exist, destroying a set or chain still in use, a real server without its
//! virtual server. The planner's ordering is proven against it, the
//! executor's plans and applies run on it as a [`Kernel`], and the real
//! backends are checked against the same expectations.

use std::sync::Arc;

use setpoint_dataplane::diff::diff_fragments;
use setpoint_dataplane::{
    BUILTIN_TARGETS, ChainKey, Digest, Fragment, Rule, VirtualServer, VirtualServerKey,
};

use crate::apply::{ApplyError, Kernel, differences};
use crate::iptables::RawRules;
use crate::plan::Op;

/// What the kernel would refuse, and why. `doing` names the operation
/// where one message serves several.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("set {0} exists")]
    SetExists(String),
    #[error("{doing}: set {set} does not exist")]
    NoSet { doing: &'static str, set: String },
    #[error("set {0} is in use by a rule")]
    SetInUse(String),
    #[error("virtual server {0} exists")]
    VirtualServerExists(VirtualServerKey),
    #[error("{doing}: no virtual server {key}")]
    NoVirtualServer {
        doing: &'static str,
        key: VirtualServerKey,
    },
    #[error("real server for missing virtual server {0}")]
    RealServerWithoutVirtualServer(VirtualServerKey),
    #[error("real server exists in {0}")]
    RealServerExists(VirtualServerKey),
    #[error("{doing}: no such real server in {key}")]
    NoRealServer {
        doing: &'static str,
        key: VirtualServerKey,
    },
    #[error("no jump from {0} to delete")]
    NoJump(String),
    #[error("no chain {0} to delete")]
    NoChain(String),
    #[error("rule uses set {0} which does not exist")]
    RuleNamesMissingSet(String),
    #[error("rule jumps to {0} which does not exist")]
    RuleJumpsToMissingChain(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelModel {
    pub state: Fragment,
}

fn uses_set(rule: &Rule, set: &str) -> bool {
    rule.referenced_sets().any(|s| s == set)
}

impl KernelModel {
    pub fn new(state: Fragment) -> Self {
        KernelModel { state }
    }

    fn set_in_use(&self, name: &str) -> bool {
        self.state
            .chains()
            .any(|(_, c)| c.rules.iter().any(|r| uses_set(r, name)))
            || self.state.jumps().any(|j| uses_set(&j.rule, name))
    }

    pub fn apply(&mut self, op: &Op) -> Result<(), Refused> {
        let f = &mut self.state;
        match op {
            Op::CreateSet { name, spec } => {
                if f.set(name).is_some() {
                    return Err(Refused::SetExists(name.clone()));
                }
                f.put_set(name.clone(), spec.clone());
            }
            Op::RebuildSet {
                name,
                spec,
                entries,
            } => {
                if f.set(name).is_none() {
                    return Err(Refused::NoSet {
                        doing: "swap",
                        set: name.clone(),
                    });
                }
                f.put_set(name.clone(), spec.clone());
                f.clear_entries(name);
                for e in entries {
                    f.add_entry(name, e.clone());
                }
            }
            Op::AddEntries { set, entries } => {
                if f.set(set).is_none() {
                    return Err(Refused::NoSet {
                        doing: "add",
                        set: set.clone(),
                    });
                }
                for e in entries {
                    f.add_entry(set, e.clone());
                }
            }
            Op::DelEntries { set, entries } => {
                if f.set(set).is_none() {
                    return Err(Refused::NoSet {
                        doing: "del",
                        set: set.clone(),
                    });
                }
                for e in entries {
                    f.remove_entry(set, e);
                }
            }
            Op::DestroySet { name } => {
                if self.set_in_use(name) {
                    return Err(Refused::SetInUse(name.clone()));
                }
                let f = &mut self.state;
                if f.remove_set(name).is_none() {
                    return Err(Refused::NoSet {
                        doing: "destroy",
                        set: name.clone(),
                    });
                }
                f.clear_entries(name);
            }
            Op::AddAddress { address } => {
                f.add_address(*address);
            }
            Op::DelAddress { address } => {
                f.remove_address(address);
            }
            Op::AddVirtualServer {
                key,
                virtual_server,
            } => {
                if f.virtual_server(key).is_some() {
                    return Err(Refused::VirtualServerExists(*key));
                }
                f.put_virtual_server(*key, virtual_server.clone());
            }
            Op::EditVirtualServer {
                key,
                scheduler,
                persistence_timeout,
            } => {
                let old = f.virtual_server(key).ok_or(Refused::NoVirtualServer {
                    doing: "edit",
                    key: *key,
                })?;
                let new =
                    VirtualServer::new(*scheduler, *persistence_timeout, old.real_servers.clone());
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::AddRealServer { key, real_server } => {
                let old = f
                    .virtual_server(key)
                    .ok_or(Refused::RealServerWithoutVirtualServer(*key))?;
                if old
                    .real_server(real_server.address, real_server.port)
                    .is_some()
                {
                    return Err(Refused::RealServerExists(*key));
                }
                let mut reals = old.real_servers.clone();
                reals.push(*real_server);
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::EditRealServer { key, real_server } => {
                let old = f.virtual_server(key).ok_or(Refused::NoVirtualServer {
                    doing: "edit real server",
                    key: *key,
                })?;
                let mut reals = old.real_servers.clone();
                let slot = reals
                    .iter_mut()
                    .find(|r| (r.address, r.port) == (real_server.address, real_server.port))
                    .ok_or(Refused::NoRealServer {
                        doing: "edit",
                        key: *key,
                    })?;
                *slot = *real_server;
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::DelRealServer { key, address, port } => {
                let old = f.virtual_server(key).ok_or(Refused::NoVirtualServer {
                    doing: "del real server",
                    key: *key,
                })?;
                let mut reals = old.real_servers.clone();
                let before = reals.len();
                reals.retain(|r| (r.address, r.port) != (*address, *port));
                if reals.len() == before {
                    return Err(Refused::NoRealServer {
                        doing: "del",
                        key: *key,
                    });
                }
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::DelVirtualServer { key } => {
                if f.remove_virtual_server(key).is_none() {
                    return Err(Refused::NoVirtualServer {
                        doing: "del",
                        key: *key,
                    });
                }
            }
            Op::Iptables {
                family,
                table,
                replace,
                delete,
                add_jumps,
                del_jumps,
            } => {
                // iptables-restore is atomic per table: build, check, swap.
                let mut next = f.clone();
                let key = |name: &str| ChainKey {
                    family: *family,
                    table: *table,
                    name: name.to_string(),
                };
                for jump in del_jumps {
                    if !next.remove_jump(jump) {
                        return Err(Refused::NoJump(jump.from.clone()));
                    }
                }
                for (name, chain) in replace {
                    next.put_chain(key(name), chain.clone());
                }
                for name in delete {
                    if next.remove_chain(&key(name)).is_none() {
                        return Err(Refused::NoChain(name.clone()));
                    }
                }
                for jump in add_jumps {
                    next.add_jump(jump.clone());
                }
                // Every rule of this table must name existing sets and chains.
                let chains: Vec<String> = next
                    .chains()
                    .filter(|(k, _)| k.family == *family && k.table == *table)
                    .map(|(k, _)| k.name.clone())
                    .collect();
                let rules: Vec<Rule> = next
                    .chains()
                    .filter(|(k, _)| k.family == *family && k.table == *table)
                    .flat_map(|(_, c)| c.rules.iter().cloned())
                    .chain(
                        next.jumps()
                            .filter(|j| j.family == *family && j.table == *table)
                            .map(|j| j.rule.clone()),
                    )
                    .collect();
                for rule in &rules {
                    for set in rule.referenced_sets() {
                        if next.set(set).is_none() {
                            return Err(Refused::RuleNamesMissingSet(set.to_string()));
                        }
                    }
                    if let Some(target) = rule.target()
                        && !BUILTIN_TARGETS.contains(&target)
                        && !chains.iter().any(|c| c == target)
                    {
                        return Err(Refused::RuleJumpsToMissingChain(target.to_string()));
                    }
                }
                *f = next;
            }
        }
        Ok(())
    }
}

/// Virtual servers and service addresses held in memory: how the executor
/// runs on a kernel without IPVS in tests, with ipset and iptables real.
#[derive(Default)]
pub struct ModelServices {
    pub model: KernelModel,
}

impl crate::apply::ServiceKernel for ModelServices {
    fn missing_feature(&self) -> Option<String> {
        None
    }

    fn read(&mut self, into: &mut setpoint_dataplane::Fragment) -> Result<(), ApplyError> {
        for (key, vs) in self.model.state.virtual_servers() {
            into.put_virtual_server(*key, vs.clone());
        }
        for address in self.model.state.addresses() {
            into.add_address(*address);
        }
        Ok(())
    }

    fn read_virtual_server(
        &mut self,
        key: &setpoint_dataplane::VirtualServerKey,
    ) -> Result<Option<setpoint_dataplane::VirtualServer>, ApplyError> {
        Ok(self
            .model
            .state
            .virtual_server(key)
            .map(|vs| (**vs).clone()))
    }

    fn read_addresses(
        &mut self,
    ) -> Result<std::collections::BTreeSet<std::net::IpAddr>, ApplyError> {
        Ok(self.model.state.addresses().copied().collect())
    }

    fn execute(&mut self, op: &Op) -> Result<(), ApplyError> {
        self.model.apply(op).map_err(|refused| ApplyError::Service {
            operation: format!("{op:?}"),
            message: refused.to_string(),
        })
    }

    fn connections(
        &mut self,
        key: &setpoint_dataplane::VirtualServerKey,
    ) -> Result<Vec<(std::net::IpAddr, u16, u32, u32)>, ApplyError> {
        Ok(self
            .model
            .state
            .virtual_server(key)
            .map(|vs| {
                vs.real_servers
                    .iter()
                    .map(|r| (r.address, r.port, 0, 0))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The whole kernel in memory, as an executor's [`Kernel`]: plans run on
/// it step by step, refused as the kernel would refuse them, and read back
/// whole. What the executor's state machine is tested against.
impl Kernel for KernelModel {
    fn read(&mut self) -> Result<(Fragment, RawRules), ApplyError> {
        Ok((self.state.clone(), RawRules::new()))
    }

    fn execute(
        &mut self,
        ops: &[Op],
        _current: &Fragment,
        _goal: &Fragment,
        _raw: &RawRules,
        _warnings: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        for op in ops {
            self.apply(op).map_err(|refused| ApplyError::Service {
                operation: format!("{op:?}"),
                message: refused.to_string(),
            })?;
        }
        Ok(())
    }

    fn verify(&mut self, goal: &Fragment, want: Digest) -> Result<(), ApplyError> {
        let left = diff_fragments(&self.state, goal);
        if left.is_empty() {
            return Ok(());
        }
        Err(ApplyError::Mismatch {
            kernel: self.state.digest(),
            want,
            differences: differences(&left),
        })
    }
}
