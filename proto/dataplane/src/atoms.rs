//! Building a [`Fragment`] from atoms read back from elsewhere (the
//! revision store's chunks). The contract hashes every atom itself and
//! checks that atoms come in strictly increasing canonical order, so a
//! fragment built this way has a true running digest and holds no atom
//! twice, whoever supplied the atoms.
//!
//! ```text
//!  any thread:  AtomRun::set / entry / next_entry / virtual_server / …   hash, check order
//!  one thread:  Fragment::append(run), run after run                       check order, insert
//! ```
//!
//! The canonical order: set definitions by name, each followed by its
//! entries, then virtual servers, addresses, chains, jumps, health checks
//! and node conditions, each by key.

use std::net::IpAddr;
use std::sync::Arc;

use crate::digest;
use crate::fragment::Fragment;
use crate::model::{
    Chain, ChainKey, HealthCheck, Jump, NodeCondition, SetEntry, SetSpec, VirtualServer,
    VirtualServerKey,
};

/// Why atoms could not go into a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AtomError {
    /// An atom does not come after the one before it.
    #[error("atoms out of canonical order")]
    OutOfOrder,
    /// [`AtomRun::next_entry`] where the atom before is not of a set.
    #[error("entry continues a set but no set precedes it")]
    NoSet,
    /// A run's first atom is already in the fragment.
    #[error("atoms repeated")]
    Repeated,
}

/// One atom of a run, owned; set names are indices into the run's names.
#[derive(Debug)]
enum Atom {
    Set(usize, SetSpec),
    Entry(usize, SetEntry),
    VirtualServer(VirtualServerKey, Arc<VirtualServer>),
    Address(IpAddr),
    Chain(ChainKey, Arc<Chain>),
    Jump(Jump),
    HealthCheck(u16, HealthCheck),
    NodeCondition(NodeCondition),
}

/// An atom's place in the canonical order, borrowed; the derived order is
/// that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Position<'a> {
    Set {
        name: &'a str,
        entry: Option<&'a SetEntry>,
    },
    VirtualServer(&'a VirtualServerKey),
    Address(&'a IpAddr),
    Chain(&'a ChainKey),
    Jump(&'a Jump),
    HealthCheck(u16),
    NodeCondition(NodeCondition),
}

/// A run of consecutive atoms of a fragment, each hashed as the digest sums
/// it, in strictly increasing canonical order. Built on any thread (a store
/// decodes a big fragment's chunks in parallel), then put into a fragment
/// with [`Fragment::append`].
#[derive(Debug, Default)]
pub struct AtomRun {
    /// Set names, each once per stretch of atoms of that set.
    names: Vec<String>,
    atoms: Vec<(Atom, [u8; 32])>,
}

impl AtomRun {
    /// An empty run with room for `atoms` atoms.
    pub fn with_capacity(atoms: usize) -> Self {
        AtomRun {
            names: Vec::new(),
            atoms: Vec::with_capacity(atoms),
        }
    }

    /// How many atoms the run holds.
    pub fn len(&self) -> usize {
        self.atoms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.atoms.is_empty()
    }

    /// A set's definition.
    pub fn set(&mut self, name: String, spec: SetSpec) -> Result<(), AtomError> {
        self.follows(Position::Set {
            name: &name,
            entry: None,
        })?;
        let hash = digest::hash_set(&name, &spec);
        let i = self.name_index(name);
        self.atoms.push((Atom::Set(i, spec), hash));
        Ok(())
    }

    /// An entry of the set `set`.
    pub fn entry(&mut self, set: String, entry: SetEntry) -> Result<(), AtomError> {
        self.follows(Position::Set {
            name: &set,
            entry: Some(&entry),
        })?;
        let i = self.name_index(set);
        self.push_entry(i, entry);
        Ok(())
    }

    /// An entry of the set the atom before (a definition or an entry) is
    /// of; the set's name is not repeated.
    pub fn next_entry(&mut self, entry: SetEntry) -> Result<(), AtomError> {
        let i = match self.atoms.last() {
            Some((Atom::Set(i, _) | Atom::Entry(i, _), _)) => *i,
            _ => return Err(AtomError::NoSet),
        };
        self.follows(Position::Set {
            name: self.name(i),
            entry: Some(&entry),
        })?;
        self.push_entry(i, entry);
        Ok(())
    }

    pub fn virtual_server(
        &mut self,
        key: VirtualServerKey,
        vs: Arc<VirtualServer>,
    ) -> Result<(), AtomError> {
        self.follows(Position::VirtualServer(&key))?;
        let hash = digest::hash_virtual_server(&key, &vs);
        self.atoms.push((Atom::VirtualServer(key, vs), hash));
        Ok(())
    }

    pub fn address(&mut self, address: IpAddr) -> Result<(), AtomError> {
        self.follows(Position::Address(&address))?;
        let hash = digest::hash_address(&address);
        self.atoms.push((Atom::Address(address), hash));
        Ok(())
    }

    pub fn chain(&mut self, key: ChainKey, chain: Arc<Chain>) -> Result<(), AtomError> {
        self.follows(Position::Chain(&key))?;
        let hash = digest::hash_chain(&key, &chain);
        self.atoms.push((Atom::Chain(key, chain), hash));
        Ok(())
    }

    pub fn jump(&mut self, jump: Jump) -> Result<(), AtomError> {
        self.follows(Position::Jump(&jump))?;
        let hash = digest::hash_jump(&jump);
        self.atoms.push((Atom::Jump(jump), hash));
        Ok(())
    }

    /// A health check on `port`.
    pub fn health_check(&mut self, port: u16, check: HealthCheck) -> Result<(), AtomError> {
        self.follows(Position::HealthCheck(port))?;
        let hash = digest::hash_health_check(port, &check);
        self.atoms.push((Atom::HealthCheck(port, check), hash));
        Ok(())
    }

    pub fn node_condition(&mut self, condition: NodeCondition) -> Result<(), AtomError> {
        self.follows(Position::NodeCondition(condition))?;
        let hash = digest::hash_node_condition(condition);
        self.atoms.push((Atom::NodeCondition(condition), hash));
        Ok(())
    }

    fn push_entry(&mut self, i: usize, entry: SetEntry) {
        let hash = digest::hash_entry(self.name(i), &entry);
        self.atoms.push((Atom::Entry(i, entry), hash));
    }

    /// Refuses an atom at `next` unless it comes after the run's last.
    fn follows(&self, next: Position<'_>) -> Result<(), AtomError> {
        if self.last_position().is_some_and(|last| last >= next) {
            return Err(AtomError::OutOfOrder);
        }
        Ok(())
    }

    fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", String::as_str)
    }

    /// The index of `name`, added unless it is the last one.
    fn name_index(&mut self, name: String) -> usize {
        if self.names.last() != Some(&name) {
            self.names.push(name);
        }
        self.names.len() - 1
    }

    fn position<'a>(&'a self, atom: &'a Atom) -> Position<'a> {
        match atom {
            Atom::Set(i, _) => Position::Set {
                name: self.name(*i),
                entry: None,
            },
            Atom::Entry(i, e) => Position::Set {
                name: self.name(*i),
                entry: Some(e),
            },
            Atom::VirtualServer(k, _) => Position::VirtualServer(k),
            Atom::Address(a) => Position::Address(a),
            Atom::Chain(k, _) => Position::Chain(k),
            Atom::Jump(j) => Position::Jump(j),
            Atom::HealthCheck(port, _) => Position::HealthCheck(*port),
            Atom::NodeCondition(c) => Position::NodeCondition(*c),
        }
    }

    fn first_position(&self) -> Option<Position<'_>> {
        self.atoms.first().map(|(atom, _)| self.position(atom))
    }

    fn last_position(&self) -> Option<Position<'_>> {
        self.atoms.last().map(|(atom, _)| self.position(atom))
    }
}

impl Fragment {
    /// Adds a run of atoms that all come after this fragment's last atom in
    /// the canonical order, with the hashes the run computed. Appending a
    /// fragment's runs in order rebuilds it; anything else is refused.
    pub fn append(&mut self, run: AtomRun) -> Result<(), AtomError> {
        if let (Some(first), Some(last)) = (run.first_position(), self.last_position())
            && first <= last
        {
            return Err(if self.holds(first) {
                AtomError::Repeated
            } else {
                AtomError::OutOfOrder
            });
        }
        let AtomRun { names, atoms } = run;
        let name = |i: usize| names.get(i).map_or("", String::as_str);
        for (atom, hash) in atoms {
            match atom {
                Atom::Set(i, spec) => {
                    self.put_set_hashed(name(i).to_string(), spec, &hash);
                }
                Atom::Entry(i, entry) => {
                    self.add_entry_hashed(name(i), entry, &hash);
                }
                Atom::VirtualServer(key, vs) => {
                    self.put_virtual_server_hashed(key, vs, hash);
                }
                Atom::Address(address) => {
                    self.add_address_hashed(address, &hash);
                }
                Atom::Chain(key, chain) => {
                    self.put_chain_hashed(key, chain, &hash);
                }
                Atom::Jump(jump) => {
                    self.add_jump_hashed(jump, &hash);
                }
                Atom::HealthCheck(port, check) => {
                    self.put_health_check_hashed(port, check, &hash);
                }
                Atom::NodeCondition(condition) => {
                    self.add_node_condition_hashed(condition, &hash);
                }
            }
        }
        Ok(())
    }

    /// The fragment's greatest atom in the canonical order.
    fn last_position(&self) -> Option<Position<'_>> {
        let maps = self.maps();
        if let Some(condition) = maps.node_conditions.get_max() {
            return Some(Position::NodeCondition(*condition));
        }
        if let Some((port, _)) = maps.health_checks.get_max() {
            return Some(Position::HealthCheck(*port));
        }
        if let Some(jump) = maps.jumps.get_max() {
            return Some(Position::Jump(jump));
        }
        if let Some((key, _)) = maps.chains.get_max() {
            return Some(Position::Chain(key));
        }
        if let Some(address) = maps.addresses.get_max() {
            return Some(Position::Address(address));
        }
        if let Some((key, _)) = maps.virtual_servers.get_max() {
            return Some(Position::VirtualServer(key));
        }
        let definition = maps
            .sets
            .get_max()
            .map(|(name, _)| Position::Set { name, entry: None });
        let entry = maps.entries.get_max().and_then(|(name, members)| {
            members.get_max().map(|entry| Position::Set {
                name,
                entry: Some(entry),
            })
        });
        definition.max(entry)
    }

    fn holds(&self, at: Position<'_>) -> bool {
        let maps = self.maps();
        match at {
            Position::Set { name, entry: None } => maps.sets.contains_key(name),
            Position::Set {
                name,
                entry: Some(entry),
            } => maps
                .entries
                .get(name)
                .is_some_and(|members| members.contains(entry)),
            Position::VirtualServer(key) => maps.virtual_servers.contains_key(key),
            Position::Address(address) => maps.addresses.contains(address),
            Position::Chain(key) => maps.chains.contains_key(key),
            Position::Jump(jump) => maps.jumps.contains(jump),
            Position::HealthCheck(port) => maps.health_checks.contains_key(&port),
            Position::NodeCondition(c) => maps.node_conditions.contains(&c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Protocol, SetType, Table};
    use crate::{Rule, Scheduler};

    fn spec() -> SetSpec {
        SetSpec {
            kind: SetType::HashIp,
            family: Family::Inet,
            maxelem: 16,
            comment: String::new(),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn vs_key(port: u16) -> VirtualServerKey {
        VirtualServerKey {
            address: ip(1),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn sample() -> Fragment {
        let mut f = Fragment::new();
        f.put_set("SP-A", spec());
        f.add_entry("SP-A", SetEntry::Ip(ip(1)));
        f.add_entry("SP-A", SetEntry::Ip(ip(2)));
        f.add_entry("SP-B", SetEntry::Ip(ip(3)));
        f.put_virtual_server(
            vs_key(80),
            Arc::new(VirtualServer::new(Scheduler::Rr, None, Vec::new())),
        );
        f.add_address(ip(1));
        f.put_chain(
            ChainKey {
                family: Family::Inet,
                table: Table::Nat,
                name: "SP-X".into(),
            },
            Arc::new(Chain {
                rules: vec![Rule::new(["-j", "ACCEPT"])],
            }),
        );
        f.add_jump(Jump {
            family: Family::Inet,
            table: Table::Nat,
            from: "PREROUTING".into(),
            position: 0,
            rule: Rule::new(["-j", "SP-X"]),
        });
        f.put_health_check(30000, health_check(2));
        f.add_node_condition(NodeCondition::Draining);
        f
    }

    fn health_check(local_endpoints: u32) -> HealthCheck {
        HealthCheck {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints,
        }
    }

    /// `sample`'s atoms as two runs, split after the first entry of SP-A.
    fn sample_runs() -> [AtomRun; 2] {
        let f = sample();
        let mut first = AtomRun::default();
        first.set("SP-A".into(), spec()).unwrap();
        first.next_entry(SetEntry::Ip(ip(1))).unwrap();
        let mut second = AtomRun::default();
        second.entry("SP-A".into(), SetEntry::Ip(ip(2))).unwrap();
        second.entry("SP-B".into(), SetEntry::Ip(ip(3))).unwrap();
        for (key, vs) in f.virtual_servers() {
            second.virtual_server(*key, vs.clone()).unwrap();
        }
        second.address(ip(1)).unwrap();
        for (key, chain) in f.chains() {
            second.chain(key.clone(), chain.clone()).unwrap();
        }
        for jump in f.jumps() {
            second.jump(jump.clone()).unwrap();
        }
        second.health_check(30000, health_check(2)).unwrap();
        second.node_condition(NodeCondition::Draining).unwrap();
        [first, second]
    }

    #[test]
    fn runs_appended_in_order_rebuild_the_fragment_and_its_digest() {
        let mut built = Fragment::new();
        for run in sample_runs() {
            built.append(run).unwrap();
        }
        assert_eq!(built, sample());
        assert_eq!(built.digest(), sample().digest());
        assert_eq!(built.atom_count(), 10);
    }

    #[test]
    fn a_run_refuses_atoms_out_of_order() {
        let mut run = AtomRun::default();
        run.address(ip(2)).unwrap();
        // The same atom, a smaller one, and an earlier kind.
        assert_eq!(run.address(ip(2)), Err(AtomError::OutOfOrder));
        assert_eq!(run.address(ip(1)), Err(AtomError::OutOfOrder));
        assert_eq!(run.set("SP-A".into(), spec()), Err(AtomError::OutOfOrder));
        assert_eq!(
            run.virtual_server(
                vs_key(1),
                Arc::new(VirtualServer::new(Scheduler::Rr, None, Vec::new()))
            ),
            Err(AtomError::OutOfOrder)
        );
        // Node facts come after every kernel atom, conditions last.
        let mut run = AtomRun::default();
        run.node_condition(NodeCondition::Draining).unwrap();
        assert_eq!(
            run.health_check(30000, health_check(1)),
            Err(AtomError::OutOfOrder)
        );
        assert_eq!(run.address(ip(1)), Err(AtomError::OutOfOrder));
        let mut run = AtomRun::default();
        run.health_check(30001, health_check(1)).unwrap();
        assert_eq!(
            run.health_check(30000, health_check(1)),
            Err(AtomError::OutOfOrder)
        );
        assert_eq!(
            run.health_check(30001, health_check(2)),
            Err(AtomError::OutOfOrder)
        );
        // A definition comes before its entries.
        let mut run = AtomRun::default();
        run.entry("SP-A".into(), SetEntry::Ip(ip(1))).unwrap();
        assert_eq!(run.set("SP-A".into(), spec()), Err(AtomError::OutOfOrder));
        assert_eq!(run.len(), 1);
    }

    #[test]
    fn next_entry_needs_a_set_just_before() {
        let mut run = AtomRun::default();
        assert_eq!(run.next_entry(SetEntry::Ip(ip(1))), Err(AtomError::NoSet));
        run.set("SP-A".into(), spec()).unwrap();
        run.address(ip(1)).unwrap();
        assert_eq!(run.next_entry(SetEntry::Ip(ip(2))), Err(AtomError::NoSet));
    }

    #[test]
    fn runs_out_of_order_or_repeated_are_refused() {
        let [first, second] = sample_runs();
        let mut f = Fragment::new();
        f.append(second).unwrap();
        assert_eq!(f.append(first), Err(AtomError::OutOfOrder));

        let [first, _] = sample_runs();
        let [again, _] = sample_runs();
        let mut f = Fragment::new();
        f.append(first).unwrap();
        let before = f.clone();
        assert_eq!(f.append(again), Err(AtomError::Repeated));
        assert_eq!(f, before);
        assert!(f.append(AtomRun::default()).is_ok());
    }
}
