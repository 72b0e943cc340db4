//! The node's kernel as the executor's [`Kernel`]: sets through `ipset`,
//! rules through `iptables-restore`, IPVS and service addresses behind
//! [`ServiceKernel`] (so that a kernel without IPVS refuses, before
//! touching anything, a state that needs it), with removed TCP real
//! servers drained at weight 0 and UDP ones cleared from conntrack.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint_dataplane::diff::diff_fragments;
use setpoint_dataplane::{
    Digest, Family, Fragment, NodeDataplane, Protocol, SetSpec, SetType, Table, VirtualServer,
    VirtualServerKey,
};

use super::{ApplyError, Kernel, differences, is_ours};
use crate::ipset::{self, IpsetError};
use crate::iptables::{self, RawRules, RuleBook};
use crate::plan::{Op, phase};
use crate::target::{RunError, Target};

/// IPVS virtual servers and the service addresses, as a kernel backend.
pub trait ServiceKernel {
    /// Why this kernel cannot hold virtual servers, if it cannot.
    fn missing_feature(&self) -> Option<String>;
    /// Adds the kernel's virtual servers and service addresses to `into`.
    fn read(&mut self, into: &mut Fragment) -> Result<(), ApplyError>;
    /// One virtual server as the kernel holds it (for targeted checks).
    fn read_virtual_server(
        &mut self,
        key: &VirtualServerKey,
    ) -> Result<Option<VirtualServer>, ApplyError>;
    /// The service addresses as the kernel holds them.
    fn read_addresses(&mut self) -> Result<BTreeSet<IpAddr>, ApplyError>;
    /// Carries out an address or IPVS operation.
    fn execute(&mut self, op: &Op) -> Result<(), ApplyError>;
    /// (address, port, active, inactive connections) per real server.
    fn connections(
        &mut self,
        key: &VirtualServerKey,
    ) -> Result<Vec<(IpAddr, u16, u32, u32)>, ApplyError>;
}

/// A kernel without IPVS (this machine's): holds no virtual servers and
/// accepts no state that has any.
pub struct NoIpvs {
    pub reason: String,
}

impl ServiceKernel for NoIpvs {
    fn missing_feature(&self) -> Option<String> {
        Some(self.reason.clone())
    }
    fn read(&mut self, _into: &mut Fragment) -> Result<(), ApplyError> {
        Ok(())
    }
    fn read_virtual_server(
        &mut self,
        _key: &VirtualServerKey,
    ) -> Result<Option<VirtualServer>, ApplyError> {
        Ok(None)
    }
    fn read_addresses(&mut self) -> Result<BTreeSet<IpAddr>, ApplyError> {
        Ok(BTreeSet::new())
    }
    fn execute(&mut self, op: &Op) -> Result<(), ApplyError> {
        Err(ApplyError::Unsupported {
            feature: self.reason.clone(),
            needed_for: format!("{op:?}"),
        })
    }
    fn connections(
        &mut self,
        _key: &VirtualServerKey,
    ) -> Result<Vec<(IpAddr, u16, u32, u32)>, ApplyError> {
        Ok(Vec::new())
    }
}

/// A removed TCP real server kept at weight 0 until its connections end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Draining {
    pub key: VirtualServerKey,
    pub address: IpAddr,
    pub port: u16,
}

/// Which tool carries out an operation. Consecutive set operations of one
/// phase go to `ipset` in one restore batch; the others run one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Ipset,
    Iptables,
    /// IPVS and service addresses ([`ServiceKernel`]).
    Services,
}

pub(crate) fn backend_of(op: &Op) -> Backend {
    match op {
        Op::CreateSet { .. }
        | Op::RebuildSet { .. }
        | Op::AddEntries { .. }
        | Op::DelEntries { .. }
        | Op::DestroySet { .. } => Backend::Ipset,
        Op::Iptables { .. } => Backend::Iptables,
        Op::AddAddress { .. }
        | Op::DelAddress { .. }
        | Op::AddVirtualServer { .. }
        | Op::EditVirtualServer { .. }
        | Op::AddRealServer { .. }
        | Op::EditRealServer { .. }
        | Op::DelRealServer { .. }
        | Op::DelVirtualServer { .. } => Backend::Services,
    }
}

/// Where consecutive operations of `ops` go as one batch: `(start, end)`
/// ranges in order, a set batch holding the set operations of one phase.
pub(crate) fn batches(ops: &[Op]) -> Vec<(usize, usize)> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let op = &ops[start];
        let mut end = start + 1;
        if backend_of(op) == Backend::Ipset {
            while end < ops.len()
                && backend_of(&ops[end]) == Backend::Ipset
                && phase(&ops[end]) == phase(op)
            {
                end += 1;
            }
        }
        batches.push((start, end));
        start = end;
    }
    batches
}

/// The node's kernel (or a network namespace's): the tools run in
/// `target`, IPVS and addresses through `services`.
pub struct NodeKernel {
    target: Target,
    services: Box<dyn ServiceKernel + Send>,
    book: RuleBook,
    /// Set descriptions and bitmap sizes the kernel does not report back.
    known_sets: BTreeMap<String, SetSpec>,
    draining: BTreeMap<Draining, Instant>,
    pub drain_timeout: Duration,
}

impl NodeKernel {
    pub fn new(target: Target, services: Box<dyn ServiceKernel + Send>) -> NodeKernel {
        NodeKernel {
            target,
            services,
            book: RuleBook::default(),
            known_sets: BTreeMap::new(),
            draining: BTreeMap::new(),
            drain_timeout: Duration::from_secs(60),
        }
    }

    /// Leaves the real servers draining out of `f`.
    fn drop_draining(&self, f: &mut Fragment) {
        for d in self.draining.keys() {
            if let Some(vs) = f.virtual_server(&d.key) {
                let kept = vs
                    .real_servers
                    .iter()
                    .filter(|r| (r.address, r.port) != (d.address, d.port))
                    .copied()
                    .collect();
                let vs = VirtualServer::new(vs.scheduler, vs.persistence_timeout, kept);
                f.put_virtual_server(d.key, Arc::new(vs));
            }
        }
    }

    fn put_kernel_sets(&self, f: &mut Fragment, save: &str) -> Result<(), ApplyError> {
        for (name, set) in ipset::parse_save(save, is_ours)? {
            let known = self.known_sets.get(&name);
            // A bitmap has no family in the kernel; the contract gives it one.
            let family = match (set.kind, known) {
                (SetType::BitmapPort, Some(k)) => k.family,
                _ => set.family,
            };
            let spec = SetSpec {
                kind: set.kind,
                family,
                maxelem: set
                    .maxelem
                    .or_else(|| known.map(|k| k.maxelem))
                    .unwrap_or(65536),
                comment: known.map(|k| k.comment.clone()).unwrap_or_default(),
            };
            f.put_set(name.clone(), spec);
            for entry in set.entries {
                f.add_entry(&name, entry);
            }
        }
        Ok(())
    }

    /// IPVS and address operations, with graceful termination: a removed
    /// TCP real server drains at weight 0; a UDP one goes at once and its
    /// conntrack entries with it, so clients do not wait out the UDP timeout.
    fn service_op(&mut self, op: &Op, warnings: &mut Vec<String>) -> Result<(), ApplyError> {
        match op {
            Op::DelRealServer { key, address, port } if key.protocol == Protocol::Tcp => {
                let draining = Draining {
                    key: *key,
                    address: *address,
                    port: *port,
                };
                let weight_zero = setpoint_dataplane::RealServer {
                    address: *address,
                    port: *port,
                    weight: 0,
                    forward: Default::default(),
                };
                self.services.execute(&Op::EditRealServer {
                    key: *key,
                    real_server: weight_zero,
                })?;
                self.draining
                    .insert(draining, Instant::now() + self.drain_timeout);
                Ok(())
            }
            Op::DelRealServer { key, address, port } => {
                self.services.execute(op)?;
                if key.protocol == Protocol::Udp
                    && let Err(e) = self.clear_udp_conntrack(key, *address, *port)
                {
                    warnings.push(e.to_string());
                }
                Ok(())
            }
            Op::DelVirtualServer { key } => {
                self.draining.retain(|d, _| d.key != *key);
                self.services.execute(op)
            }
            Op::AddRealServer { key, real_server } => {
                // A server that comes back while draining is simply re-weighted.
                let back = Draining {
                    key: *key,
                    address: real_server.address,
                    port: real_server.port,
                };
                if self.draining.remove(&back).is_some() {
                    self.services.execute(&Op::EditRealServer {
                        key: *key,
                        real_server: *real_server,
                    })
                } else {
                    self.services.execute(op)
                }
            }
            op => self.services.execute(op),
        }
    }

    fn clear_udp_conntrack(
        &self,
        key: &VirtualServerKey,
        address: IpAddr,
        port: u16,
    ) -> Result<(), ConntrackError> {
        let (vip, vport, rs, rport) = (
            key.address.to_string(),
            key.port.to_string(),
            address.to_string(),
            port.to_string(),
        );
        let family = if key.address.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        let args = [
            "-D",
            "-f",
            family,
            "-p",
            "udp",
            "--orig-dst",
            &vip,
            "--orig-port-dst",
            &vport,
            "--reply-src",
            &rs,
            "--reply-port-src",
            &rport,
        ];
        match self.target.run("conntrack", &args, None) {
            Ok(_) => Ok(()),
            // conntrack exits 1 when no entry matched: nothing to clear.
            Err(RunError::Failed(stderr))
                if stderr.contains("0 flow entries have been deleted") =>
            {
                Ok(())
            }
            Err(e) => Err(ConntrackError {
                flow: format!("{vip}:{vport} -> {rs}:{rport}"),
                reason: e.describe(),
            }),
        }
    }
}

/// UDP conntrack entries of a removed real server that could not be
/// cleared (a warning: the apply goes on).
#[derive(Debug, thiserror::Error)]
#[error("clearing UDP conntrack entries of {flow}: {reason}")]
pub struct ConntrackError {
    flow: String,
    reason: String,
}

impl Kernel for NodeKernel {
    fn missing_feature(&self) -> Option<String> {
        self.services.missing_feature()
    }

    fn learn(&mut self, goal: &Fragment) {
        self.book.learn(goal);
        for (name, spec) in goal.sets() {
            self.known_sets.insert(name.clone(), spec.clone());
        }
    }

    /// Real servers draining are left out: they are on their way out and
    /// not part of any state.
    fn read(&mut self) -> Result<(Fragment, RawRules), ApplyError> {
        let mut f = Fragment::new();
        let save = self.target.ipset(&["save"], None)?;
        self.put_kernel_sets(&mut f, &save)?;
        let mut raw = RawRules::new();
        for family in Family::ALL {
            let tables = iptables::read(&self.target, family, is_ours, &mut self.book)?;
            for (key, chain) in tables.chains {
                f.put_chain(key, Arc::new(chain));
            }
            for jump in tables.jumps {
                f.add_jump(jump);
            }
            raw.extend(tables.raw);
        }
        self.services.read(&mut f)?;
        self.drop_draining(&mut f);
        Ok((f, raw))
    }

    /// TCP real servers at weight 0 that `goal` does not have were left
    /// draining by an earlier process (the one-shot CLI, a restarted
    /// agent): they drain on here, with a fresh timeout, instead of being
    /// counted and executed as changes again; then they leave `current`.
    fn adopt_draining(&mut self, current: &mut Fragment, goal: &Fragment) {
        let deadline = Instant::now() + self.drain_timeout;
        let mut adopted = false;
        for (key, vs) in current.virtual_servers() {
            let Some(want) = goal.virtual_server(key) else {
                continue;
            };
            if key.protocol != Protocol::Tcp {
                continue;
            }
            for r in &vs.real_servers {
                if r.weight == 0 && want.real_server(r.address, r.port).is_none() {
                    let d = Draining {
                        key: *key,
                        address: r.address,
                        port: r.port,
                    };
                    self.draining.entry(d).or_insert(deadline);
                    adopted = true;
                }
            }
        }
        if adopted {
            self.drop_draining(current);
        }
    }

    fn execute(
        &mut self,
        ops: &[Op],
        current: &Fragment,
        goal: &Fragment,
        raw: &RawRules,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        let kinds: BTreeMap<String, SetType> = current
            .sets()
            .chain(goal.sets())
            .map(|(name, spec)| (name.clone(), spec.kind))
            .collect();
        for (start, end) in batches(ops) {
            let op = &ops[start];
            match (backend_of(op), op) {
                (Backend::Ipset, _) => {
                    if let Some(text) = ipset::script(&ops[start..end], &kinds) {
                        self.target.ipset(&["restore", "-exist"], Some(&text))?;
                    }
                }
                (Backend::Iptables, Op::Iptables { family, .. }) => {
                    if let Some(text) = iptables::script(op, current, goal, raw) {
                        iptables::restore(&self.target, *family, &text)?;
                    }
                }
                _ => self.service_op(op, warnings)?,
            }
        }
        Ok(())
    }

    fn verify(&mut self, goal: &Fragment, want: Digest) -> Result<(), ApplyError> {
        let (kernel, _) = self.read()?;
        let kernel_digest = kernel.digest();
        if kernel_digest == goal.digest() {
            return Ok(());
        }
        Err(ApplyError::Mismatch {
            kernel: kernel_digest,
            want,
            differences: differences(&diff_fragments(&kernel, goal)),
        })
    }

    fn verify_touched(
        &mut self,
        ops: &[Op],
        goal: &Fragment,
        want: Digest,
    ) -> Result<(), ApplyError> {
        let mut sets: BTreeSet<&str> = BTreeSet::new();
        let mut tables: BTreeSet<(Family, Table)> = BTreeSet::new();
        let mut servers: BTreeSet<VirtualServerKey> = BTreeSet::new();
        let mut addresses = false;
        for op in ops {
            match op {
                Op::CreateSet { name, .. }
                | Op::RebuildSet { name, .. }
                | Op::DestroySet { name } => {
                    sets.insert(name);
                }
                Op::AddEntries { set, .. } | Op::DelEntries { set, .. } => {
                    sets.insert(set);
                }
                Op::Iptables { family, table, .. } => {
                    tables.insert((*family, *table));
                }
                Op::AddVirtualServer { key, .. }
                | Op::EditVirtualServer { key, .. }
                | Op::DelVirtualServer { key }
                | Op::AddRealServer { key, .. }
                | Op::EditRealServer { key, .. }
                | Op::DelRealServer { key, .. } => {
                    servers.insert(*key);
                }
                Op::AddAddress { .. } | Op::DelAddress { .. } => addresses = true,
            }
        }
        let mut expected = Fragment::new();
        let mut kernel = Fragment::new();
        for name in sets {
            if let Some(spec) = goal.set(name) {
                expected.put_set(name, spec.clone());
                for e in goal.entries(name).into_iter().flatten() {
                    expected.add_entry(name, e.clone());
                }
            }
            let text = match self.target.ipset(&["save", name], None) {
                Ok(text) => text,
                // A set that is gone, as it should be when destroyed.
                Err(IpsetError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                    String::new()
                }
                Err(e) => return Err(e.into()),
            };
            self.put_kernel_sets(&mut kernel, &text)?;
        }
        for (family, table) in tables {
            for (key, chain) in goal
                .chains()
                .filter(|(k, _)| k.family == family && k.table == table)
            {
                expected.put_chain(key.clone(), chain.clone());
            }
            for jump in goal
                .jumps()
                .filter(|j| j.family == family && j.table == table)
            {
                expected.add_jump(jump.clone());
            }
            let read = iptables::read_table(&self.target, family, table, is_ours, &mut self.book)?;
            for (key, chain) in read.chains {
                kernel.put_chain(key, Arc::new(chain));
            }
            for jump in read.jumps {
                kernel.add_jump(jump);
            }
        }
        for key in servers {
            if let Some(vs) = goal.virtual_server(&key) {
                expected.put_virtual_server(key, vs.clone());
            }
            if let Some(vs) = self.services.read_virtual_server(&key)? {
                kernel.put_virtual_server(key, Arc::new(vs));
            }
        }
        if addresses {
            for a in goal.addresses() {
                expected.add_address(*a);
            }
            for a in self.services.read_addresses()? {
                kernel.add_address(a);
            }
        }
        self.drop_draining(&mut kernel);
        let left = diff_fragments(&kernel, &expected);
        if left.is_empty() {
            return Ok(());
        }
        Err(ApplyError::Mismatch {
            kernel: NodeDataplane::from_fragment(kernel).digest(),
            want,
            differences: differences(&left),
        })
    }

    /// Removes drained real servers: no connections left, or past the
    /// timeout.
    fn reap_drained(&mut self) -> Result<usize, ApplyError> {
        if self.draining.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let keys: BTreeSet<VirtualServerKey> = self.draining.keys().map(|d| d.key).collect();
        let mut done = Vec::new();
        for key in keys {
            let counts = self.services.connections(&key)?;
            for (d, deadline) in self.draining.range(
                Draining {
                    key,
                    address: IpAddr::from([0u8; 4]),
                    port: 0,
                }..,
            ) {
                if d.key != key {
                    break;
                }
                let idle = counts
                    .iter()
                    .find(|(a, p, _, _)| (*a, *p) == (d.address, d.port))
                    .is_none_or(|(_, _, active, inactive)| active + inactive == 0);
                if idle || now >= *deadline {
                    done.push(*d);
                }
            }
        }
        for d in &done {
            self.services.execute(&Op::DelRealServer {
                key: d.key,
                address: d.address,
                port: d.port,
            })?;
            self.draining.remove(d);
        }
        Ok(done.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::one_of_each;

    #[test]
    fn set_operations_of_one_phase_go_in_one_batch_the_rest_one_by_one() {
        use Backend::*;
        let ops: Vec<Op> = one_of_each().into_iter().map(|(op, _)| op).collect();
        let backends: Vec<Backend> = ops.iter().map(backend_of).collect();
        #[rustfmt::skip]
        assert_eq!(backends, [
            Ipset, Ipset, Ipset, // created, rebuilt, grown
            Services, // address added
            Services, Services, Services, Services, // IPVS added or edited
            Iptables,
            Services, Services, // IPVS removed
            Ipset, Ipset, // shrunk, destroyed
            Services, // address removed
        ]);
        assert_eq!(
            batches(&ops),
            [
                (0, 3),
                (3, 4),
                (4, 5),
                (5, 6),
                (6, 7),
                (7, 8),
                (8, 9),
                (9, 10),
                (10, 11),
                (11, 13),
                (13, 14)
            ]
        );
        // Set operations of different phases are separate restores, and
        // two restores of one table kind stay two.
        let grow_then_shrink = [ops[2].clone(), ops[11].clone()];
        assert_eq!(batches(&grow_then_shrink), [(0, 1), (1, 2)]);
        let two_tables = [ops[8].clone(), ops[8].clone()];
        assert_eq!(batches(&two_tables), [(0, 1), (1, 2)]);
    }
}
