//! An in-memory kernel: applies [`Op`]s to a [`Fragment`] and refuses what
//! the kernel would refuse — a rule naming a set or chain that does not
//! exist, destroying a set or chain still in use, a real server without its
//! virtual server. The planner's ordering is proven against it; the real
//! backends are checked against the same expectations.

use std::sync::Arc;

use setpoint_dataplane::{BUILTIN_TARGETS, ChainKey, Fragment, Rule, VirtualServer};

use crate::apply::ApplyError;
use crate::plan::Op;

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

    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let f = &mut self.state;
        match op {
            Op::CreateSet { name, spec } => {
                if f.set(name).is_some() {
                    return Err(format!("set {name} exists"));
                }
                f.put_set(name.clone(), spec.clone());
            }
            Op::RebuildSet {
                name,
                spec,
                entries,
            } => {
                if f.set(name).is_none() {
                    return Err(format!("swap: set {name} does not exist"));
                }
                f.put_set(name.clone(), spec.clone());
                f.clear_entries(name);
                for e in entries {
                    f.add_entry(name, e.clone());
                }
            }
            Op::AddEntries { set, entries } => {
                if f.set(set).is_none() {
                    return Err(format!("add: set {set} does not exist"));
                }
                for e in entries {
                    f.add_entry(set, e.clone());
                }
            }
            Op::DelEntries { set, entries } => {
                if f.set(set).is_none() {
                    return Err(format!("del: set {set} does not exist"));
                }
                for e in entries {
                    f.remove_entry(set, e);
                }
            }
            Op::DestroySet { name } => {
                if self.set_in_use(name) {
                    return Err(format!("set {name} is in use by a rule"));
                }
                let f = &mut self.state;
                if f.remove_set(name).is_none() {
                    return Err(format!("destroy: set {name} does not exist"));
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
                    return Err(format!("virtual server {key} exists"));
                }
                f.put_virtual_server(*key, virtual_server.clone());
            }
            Op::EditVirtualServer {
                key,
                scheduler,
                persistence_timeout,
            } => {
                let old = f
                    .virtual_server(key)
                    .ok_or_else(|| format!("edit: no virtual server {key}"))?;
                let new =
                    VirtualServer::new(*scheduler, *persistence_timeout, old.real_servers.clone());
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::AddRealServer { key, real_server } => {
                let old = f
                    .virtual_server(key)
                    .ok_or_else(|| format!("real server for missing virtual server {key}"))?;
                if old
                    .real_server(real_server.address, real_server.port)
                    .is_some()
                {
                    return Err(format!("real server exists in {key}"));
                }
                let mut reals = old.real_servers.clone();
                reals.push(*real_server);
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::EditRealServer { key, real_server } => {
                let old = f
                    .virtual_server(key)
                    .ok_or_else(|| format!("edit real server: no virtual server {key}"))?;
                let mut reals = old.real_servers.clone();
                let slot = reals
                    .iter_mut()
                    .find(|r| (r.address, r.port) == (real_server.address, real_server.port))
                    .ok_or_else(|| format!("edit: no such real server in {key}"))?;
                *slot = *real_server;
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::DelRealServer { key, address, port } => {
                let old = f
                    .virtual_server(key)
                    .ok_or_else(|| format!("del real server: no virtual server {key}"))?;
                let mut reals = old.real_servers.clone();
                let before = reals.len();
                reals.retain(|r| (r.address, r.port) != (*address, *port));
                if reals.len() == before {
                    return Err(format!("del: no such real server in {key}"));
                }
                let new = VirtualServer::new(old.scheduler, old.persistence_timeout, reals);
                f.put_virtual_server(*key, Arc::new(new));
            }
            Op::DelVirtualServer { key } => {
                if f.remove_virtual_server(key).is_none() {
                    return Err(format!("del: no virtual server {key}"));
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
                        return Err(format!("no jump from {} to delete", jump.from));
                    }
                }
                for (name, chain) in replace {
                    next.put_chain(key(name), chain.clone());
                }
                for name in delete {
                    if next.remove_chain(&key(name)).is_none() {
                        return Err(format!("no chain {name} to delete"));
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
                            return Err(format!("rule uses set {set} which does not exist"));
                        }
                    }
                    if let Some(target) = rule.target()
                        && !BUILTIN_TARGETS.contains(&target)
                        && !chains.iter().any(|c| c == target)
                    {
                        return Err(format!("rule jumps to {target} which does not exist"));
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
        self.model.apply(op).map_err(|message| ApplyError::Service {
            operation: format!("{op:?}"),
            message,
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
