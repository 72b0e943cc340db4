//! [`Fragment`]: a flat, canonical collection of dataplane atoms with its
//! running digest. A whole node state is one fragment or several disjoint
//! ones (see [`crate::NodeDataplane`]).
//!
//! Collections are persistent maps (`imbl`): cloning a fragment is O(1) and
//! an edit copies only the path to the edited entry, so the control plane
//! can keep the previous revision while building the next, and share one
//! fragment between thousands of nodes.

use std::net::IpAddr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::digest::{self, Accumulator, Digest};
use crate::model::{
    Chain, ChainKey, HealthCheck, Jump, NodeCondition, SetEntry, SetSpec, VirtualServer,
    VirtualServerKey,
};

/// A virtual server with its atom hash, kept so that removing or replacing
/// it does not hash it again.
#[derive(Clone, Debug)]
pub struct HashedVirtualServer {
    pub(crate) vs: Arc<VirtualServer>,
    hash: [u8; 32],
}

impl HashedVirtualServer {
    pub fn virtual_server(&self) -> &Arc<VirtualServer> {
        &self.vs
    }
}

impl PartialEq for HashedVirtualServer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.vs, &other.vs) || (self.hash == other.hash && self.vs == other.vs)
    }
}
impl Eq for HashedVirtualServer {}

/// A flat collection of atoms. Every mutation keeps the digest accumulator
/// in step, so [`Fragment::digest`] is O(1).
///
/// Set entries may be present for a set whose [`SetSpec`] lives in another
/// fragment of the same node; validation checks the whole node.
#[derive(Clone, Debug, Default)]
pub struct Fragment {
    sets: OrdMap<String, SetSpec>,
    entries: OrdMap<String, OrdSet<SetEntry>>,
    virtual_servers: OrdMap<VirtualServerKey, HashedVirtualServer>,
    addresses: OrdSet<IpAddr>,
    chains: OrdMap<ChainKey, Arc<Chain>>,
    jumps: OrdSet<Jump>,
    health_checks: OrdMap<u16, HealthCheck>,
    node_conditions: OrdSet<NodeCondition>,
    acc: Accumulator,
}

impl PartialEq for Fragment {
    fn eq(&self, other: &Self) -> bool {
        self.acc.count() == other.acc.count()
            && self.sets == other.sets
            && self.entries == other.entries
            && self.virtual_servers == other.virtual_servers
            && self.addresses == other.addresses
            && self.chains == other.chains
            && self.jumps == other.jumps
            && self.health_checks == other.health_checks
            && self.node_conditions == other.node_conditions
    }
}
impl Eq for Fragment {}

impl Fragment {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn digest(&self) -> Digest {
        self.acc.finish()
    }

    pub fn accumulator(&self) -> &Accumulator {
        &self.acc
    }

    /// Number of atoms (set definitions, entries, virtual servers,
    /// addresses, chains, jumps, health checks, node conditions).
    pub fn atom_count(&self) -> u64 {
        self.acc.count()
    }

    pub fn is_empty(&self) -> bool {
        self.acc.count() == 0
    }

    // --- sets ---

    pub fn sets(&self) -> impl Iterator<Item = (&String, &SetSpec)> {
        self.sets.iter()
    }

    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.get(name)
    }

    /// Defines (or redefines) a set; returns the previous definition.
    pub fn put_set(&mut self, name: impl Into<String>, spec: SetSpec) -> Option<SetSpec> {
        let name = name.into();
        let hash = digest::hash_set(&name, &spec);
        self.put_set_hashed(name, spec, &hash)
    }

    /// [`Fragment::put_set`] with the atom's hash already computed.
    pub(crate) fn put_set_hashed(
        &mut self,
        name: String,
        spec: SetSpec,
        hash: &[u8; 32],
    ) -> Option<SetSpec> {
        self.acc.add(hash);
        let old = self.sets.insert(name.clone(), spec);
        if let Some(old) = &old {
            self.acc.remove(&digest::hash_set(&name, old));
        }
        old
    }

    /// Removes a set's definition (not its entries).
    pub fn remove_set(&mut self, name: &str) -> Option<SetSpec> {
        let old = self.sets.remove(name)?;
        self.acc.remove(&digest::hash_set(name, &old));
        Some(old)
    }

    /// Entries per set name, sets in name order.
    pub fn all_entries(&self) -> impl Iterator<Item = (&String, &OrdSet<SetEntry>)> {
        self.entries.iter()
    }

    pub fn entries(&self, set: &str) -> Option<&OrdSet<SetEntry>> {
        self.entries.get(set)
    }

    pub fn entry_count(&self, set: &str) -> usize {
        self.entries.get(set).map_or(0, OrdSet::len)
    }

    /// Adds an entry; false if it was already there.
    pub fn add_entry(&mut self, set: &str, entry: SetEntry) -> bool {
        let hash = digest::hash_entry(set, &entry);
        self.add_entry_hashed(set, entry, &hash)
    }

    /// [`Fragment::add_entry`] with the atom's hash already computed.
    pub(crate) fn add_entry_hashed(&mut self, set: &str, entry: SetEntry, hash: &[u8; 32]) -> bool {
        let members = match self.entries.get_mut(set) {
            Some(members) => members,
            None => {
                self.entries.insert(set.to_string(), OrdSet::new());
                match self.entries.get_mut(set) {
                    Some(members) => members,
                    None => return false,
                }
            }
        };
        if members.insert(entry).is_none() {
            self.acc.add(hash);
            true
        } else {
            false
        }
    }

    /// Removes an entry; false if it was not there.
    pub fn remove_entry(&mut self, set: &str, entry: &SetEntry) -> bool {
        let Some(members) = self.entries.get_mut(set) else {
            return false;
        };
        if members.remove(entry).is_none() {
            return false;
        }
        if members.is_empty() {
            self.entries.remove(set);
        }
        self.acc.remove(&digest::hash_entry(set, entry));
        true
    }

    /// Removes every entry of a set; returns how many there were.
    pub fn clear_entries(&mut self, set: &str) -> usize {
        let Some(members) = self.entries.remove(set) else {
            return 0;
        };
        for entry in &members {
            self.acc.remove(&digest::hash_entry(set, entry));
        }
        members.len()
    }

    // --- IPVS ---

    pub fn virtual_servers(
        &self,
    ) -> impl Iterator<Item = (&VirtualServerKey, &Arc<VirtualServer>)> {
        self.virtual_servers.iter().map(|(k, h)| (k, &h.vs))
    }

    pub fn virtual_server(&self, key: &VirtualServerKey) -> Option<&Arc<VirtualServer>> {
        self.virtual_servers.get(key).map(|h| &h.vs)
    }

    /// The virtual servers on one address, in key order (a range of the
    /// map: the key orders by address first).
    pub fn virtual_servers_at(
        &self,
        address: IpAddr,
    ) -> impl Iterator<Item = (&VirtualServerKey, &Arc<VirtualServer>)> {
        let first = VirtualServerKey {
            address,
            protocol: crate::model::Protocol::Tcp,
            port: 0,
        };
        let last = VirtualServerKey {
            address,
            protocol: crate::model::Protocol::Sctp,
            port: u16::MAX,
        };
        self.virtual_servers
            .range(first..=last)
            .map(|(k, h)| (k, &h.vs))
    }

    pub fn virtual_server_count(&self) -> usize {
        self.virtual_servers.len()
    }

    pub fn put_virtual_server(
        &mut self,
        key: VirtualServerKey,
        vs: Arc<VirtualServer>,
    ) -> Option<Arc<VirtualServer>> {
        let hash = digest::hash_virtual_server(&key, &vs);
        self.put_virtual_server_hashed(key, vs, hash)
    }

    /// [`Fragment::put_virtual_server`] with the atom's hash already computed.
    pub(crate) fn put_virtual_server_hashed(
        &mut self,
        key: VirtualServerKey,
        vs: Arc<VirtualServer>,
        hash: [u8; 32],
    ) -> Option<Arc<VirtualServer>> {
        self.acc.add(&hash);
        let old = self
            .virtual_servers
            .insert(key, HashedVirtualServer { vs, hash });
        old.map(|old| {
            self.acc.remove(&old.hash);
            old.vs
        })
    }

    pub fn remove_virtual_server(&mut self, key: &VirtualServerKey) -> Option<Arc<VirtualServer>> {
        let old = self.virtual_servers.remove(key)?;
        self.acc.remove(&old.hash);
        Some(old.vs)
    }

    // --- addresses ---

    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.addresses.iter()
    }

    pub fn has_address(&self, addr: &IpAddr) -> bool {
        self.addresses.contains(addr)
    }

    pub fn add_address(&mut self, addr: IpAddr) -> bool {
        self.add_address_hashed(addr, &digest::hash_address(&addr))
    }

    /// [`Fragment::add_address`] with the atom's hash already computed.
    pub(crate) fn add_address_hashed(&mut self, addr: IpAddr, hash: &[u8; 32]) -> bool {
        if self.addresses.insert(addr).is_none() {
            self.acc.add(hash);
            true
        } else {
            false
        }
    }

    pub fn remove_address(&mut self, addr: &IpAddr) -> bool {
        if self.addresses.remove(addr).is_some() {
            self.acc.remove(&digest::hash_address(addr));
            true
        } else {
            false
        }
    }

    // --- iptables ---

    pub fn chains(&self) -> impl Iterator<Item = (&ChainKey, &Arc<Chain>)> {
        self.chains.iter()
    }

    pub fn chain(&self, key: &ChainKey) -> Option<&Arc<Chain>> {
        self.chains.get(key)
    }

    pub fn put_chain(&mut self, key: ChainKey, chain: Arc<Chain>) -> Option<Arc<Chain>> {
        let hash = digest::hash_chain(&key, &chain);
        self.put_chain_hashed(key, chain, &hash)
    }

    /// [`Fragment::put_chain`] with the atom's hash already computed.
    pub(crate) fn put_chain_hashed(
        &mut self,
        key: ChainKey,
        chain: Arc<Chain>,
        hash: &[u8; 32],
    ) -> Option<Arc<Chain>> {
        self.acc.add(hash);
        let old = self.chains.insert(key.clone(), chain);
        if let Some(old) = &old {
            self.acc.remove(&digest::hash_chain(&key, old));
        }
        old
    }

    pub fn remove_chain(&mut self, key: &ChainKey) -> Option<Arc<Chain>> {
        let old = self.chains.remove(key)?;
        self.acc.remove(&digest::hash_chain(key, &old));
        Some(old)
    }

    pub fn jumps(&self) -> impl Iterator<Item = &Jump> {
        self.jumps.iter()
    }

    pub fn add_jump(&mut self, jump: Jump) -> bool {
        let hash = digest::hash_jump(&jump);
        self.add_jump_hashed(jump, &hash)
    }

    /// [`Fragment::add_jump`] with the atom's hash already computed.
    pub(crate) fn add_jump_hashed(&mut self, jump: Jump, hash: &[u8; 32]) -> bool {
        if self.jumps.insert(jump).is_none() {
            self.acc.add(hash);
            true
        } else {
            false
        }
    }

    pub fn remove_jump(&mut self, jump: &Jump) -> bool {
        if self.jumps.remove(jump).is_some() {
            self.acc.remove(&digest::hash_jump(jump));
            true
        } else {
            false
        }
    }

    // --- node facts: served or reported by the agent, not kernel state ---

    /// Health-check node ports by port.
    pub fn health_checks(&self) -> impl Iterator<Item = (&u16, &HealthCheck)> {
        self.health_checks.iter()
    }

    pub fn health_check(&self, port: u16) -> Option<&HealthCheck> {
        self.health_checks.get(&port)
    }

    /// Puts (or replaces) the health check on `port`; returns the previous one.
    pub fn put_health_check(&mut self, port: u16, check: HealthCheck) -> Option<HealthCheck> {
        let hash = digest::hash_health_check(port, &check);
        self.put_health_check_hashed(port, check, &hash)
    }

    /// [`Fragment::put_health_check`] with the atom's hash already computed.
    pub(crate) fn put_health_check_hashed(
        &mut self,
        port: u16,
        check: HealthCheck,
        hash: &[u8; 32],
    ) -> Option<HealthCheck> {
        self.acc.add(hash);
        let old = self.health_checks.insert(port, check);
        if let Some(old) = &old {
            self.acc.remove(&digest::hash_health_check(port, old));
        }
        old
    }

    pub fn remove_health_check(&mut self, port: u16) -> Option<HealthCheck> {
        let old = self.health_checks.remove(&port)?;
        self.acc.remove(&digest::hash_health_check(port, &old));
        Some(old)
    }

    pub fn node_conditions(&self) -> impl Iterator<Item = &NodeCondition> {
        self.node_conditions.iter()
    }

    pub fn has_node_condition(&self, condition: NodeCondition) -> bool {
        self.node_conditions.contains(&condition)
    }

    /// Adds a condition; false if it was already there.
    pub fn add_node_condition(&mut self, condition: NodeCondition) -> bool {
        let hash = digest::hash_node_condition(condition);
        self.add_node_condition_hashed(condition, &hash)
    }

    /// [`Fragment::add_node_condition`] with the atom's hash already computed.
    pub(crate) fn add_node_condition_hashed(
        &mut self,
        condition: NodeCondition,
        hash: &[u8; 32],
    ) -> bool {
        if self.node_conditions.insert(condition).is_none() {
            self.acc.add(hash);
            true
        } else {
            false
        }
    }

    pub fn remove_node_condition(&mut self, condition: NodeCondition) -> bool {
        if self.node_conditions.remove(&condition).is_some() {
            self.acc.remove(&digest::hash_node_condition(condition));
            true
        } else {
            false
        }
    }

    /// This fragment without its node facts (health checks, node
    /// conditions): the atoms a kernel holds. A clone when it has none.
    pub fn without_node_facts(&self) -> Fragment {
        let mut out = self.clone();
        for (port, _) in self.health_checks() {
            out.remove_health_check(*port);
        }
        for condition in self.node_conditions() {
            out.remove_node_condition(*condition);
        }
        out
    }

    /// Adds every atom of `other`; atoms present in both are kept once.
    /// Returns how many of `other`'s atoms were already here, which is zero
    /// when the two fragments are disjoint.
    pub fn absorb(&mut self, other: &Fragment) -> u64 {
        let before = self.atom_count();
        for (name, spec) in other.sets() {
            if self.set(name) != Some(spec) {
                self.put_set(name.clone(), spec.clone());
            }
        }
        for (set, members) in other.all_entries() {
            for entry in members {
                self.add_entry(set, entry.clone());
            }
        }
        for (key, vs) in other.virtual_servers() {
            if self.virtual_server(key) != Some(vs) {
                self.put_virtual_server(*key, vs.clone());
            }
        }
        for addr in other.addresses() {
            self.add_address(*addr);
        }
        for (key, chain) in other.chains() {
            if self.chain(key) != Some(chain) {
                self.put_chain(key.clone(), chain.clone());
            }
        }
        for jump in other.jumps() {
            self.add_jump(jump.clone());
        }
        for (port, check) in other.health_checks() {
            if self.health_check(*port) != Some(check) {
                self.put_health_check(*port, check.clone());
            }
        }
        for condition in other.node_conditions() {
            self.add_node_condition(*condition);
        }
        before + other.atom_count() - self.atom_count()
    }

    /// The persistent maps behind the fragment, read-only.
    pub fn maps(&self) -> Maps<'_> {
        Maps {
            sets: &self.sets,
            entries: &self.entries,
            virtual_servers: &self.virtual_servers,
            addresses: &self.addresses,
            chains: &self.chains,
            jumps: &self.jumps,
            health_checks: &self.health_checks,
            node_conditions: &self.node_conditions,
        }
    }
}

/// The persistent maps behind a [`Fragment`], read-only: for a reader that
/// walks a range or diffs two versions, skipping the subtrees they share
/// (the state diff, the revision store's chunker). Changes go through
/// `Fragment`'s methods, which keep its digest.
#[derive(Clone, Copy, Debug)]
pub struct Maps<'a> {
    pub sets: &'a OrdMap<String, SetSpec>,
    /// Entries per set name; a set with no entries is absent.
    pub entries: &'a OrdMap<String, OrdSet<SetEntry>>,
    pub virtual_servers: &'a OrdMap<VirtualServerKey, HashedVirtualServer>,
    pub addresses: &'a OrdSet<IpAddr>,
    pub chains: &'a OrdMap<ChainKey, Arc<Chain>>,
    pub jumps: &'a OrdSet<Jump>,
    pub health_checks: &'a OrdMap<u16, HealthCheck>,
    pub node_conditions: &'a OrdSet<NodeCondition>,
}
