//! The executor: reads what the kernel holds of Setpoint's, plans the way
//! to a target state, runs the plan through the backends phase by phase,
//! and reads the kernel back to verify.
//!
//! ```text
//!  kernel ──read──▶ Fragment ──diff/plan──▶ [Op] ──backends──▶ kernel ──read──▶ digest == target?
//! ```
//!
//! The kernel holds a state's kernel view ([`kernel_view`]): NodePort
//! templates expanded over the node's addresses.
//!
//! IPVS and service addresses sit behind [`ServiceKernel`] so that a kernel
//! without IPVS refuses, before touching anything, a state that needs it.
//!
//! Nothing sent is trusted: before any kernel operation, a whole target
//! passes the contract's checks ([`checked_view`]) and a step from the
//! held state passes them for what it changes (`validate_step`); a
//! refusal is [`ApplyError::Refused`] with the problems, the kernel
//! untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use setpoint_dataplane::diff::{apply_to_fragment, diff_fragments};
use setpoint_dataplane::template::{self, Collision};
use setpoint_dataplane::validate::{summary, validate_fragment, validate_step};
use setpoint_dataplane::{
    Change, Digest, Family, Fragment, Invalid, NodeDataplane, Protocol, SetSpec, SetType,
    VirtualServer, VirtualServerKey,
};

use crate::ipset::{self, IpsetError};
use crate::iptables::{self, IptablesError, RawRules, RuleBook};
use crate::plan::{Op, PlanError, phase, plan};
use crate::target::Target;

/// Kernel objects named like this are Setpoint's; nothing else is touched.
pub fn is_ours(name: &str) -> bool {
    name.starts_with("SP-") || name.starts_with("SP6-")
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Ipset(#[from] IpsetError),
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The target cannot be laid out on this node; nothing applied.
    #[error("target not applicable: {0}")]
    Template(#[from] Collision),
    /// The target breaks the contract's rules (`validate`); nothing
    /// applied.
    #[error("refused, nothing applied: {}", summary(.problems))]
    Refused { problems: Vec<Invalid> },
    /// The state needs a kernel feature this kernel lacks; nothing applied.
    #[error("{feature}: needed for {needed_for}; nothing applied")]
    Unsupported { feature: String, needed_for: String },
    #[error("{operation}: {message}")]
    Service { operation: String, message: String },
    /// The kernel read back after the apply is not the target.
    #[error(
        "the kernel does not hold the target (digest {kernel}, want {want}): {}",
        differences.join("; ")
    )]
    Mismatch {
        kernel: Digest,
        want: Digest,
        differences: Vec<String>,
    },
}

/// What the kernel holds for `state`: its fragments as one, NodePort
/// templates expanded over the node's addresses. Everything the agent
/// plans, applies and reads back is in these terms; only the digest it
/// acks is the contract's.
pub fn kernel_view(state: &NodeDataplane) -> Result<Fragment, ApplyError> {
    Ok(template::expand(&state.flatten())?)
}

/// [`kernel_view`] of a state the agent was sent, refused unless every
/// atom passes the contract's checks: what is sent is not trusted.
/// (Disjointness of the fragments is the control plane's concern; the
/// kernel sees their union.)
pub fn checked_view(state: &NodeDataplane) -> Result<Fragment, ApplyError> {
    let view = kernel_view(state)?;
    refuse(validate_fragment(&view))?;
    Ok(view)
}

fn refuse(problems: Vec<Invalid>) -> Result<(), ApplyError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Refused { problems })
    }
}

/// The kernel's changes from `held` (whose kernel view is `held_view`) to
/// `want`, and `want`'s kernel view. From the contract's diff of the two
/// states when templates allow (only the changed parts are compared and
/// only the changes expanded); by expanding `want` whole when the diff
/// edits the node-port addresses or does not fit. Refused when the
/// changes break the contract's checks: `held_view` passed them, so the
/// changed atoms and what they can break are all that is checked, in time
/// that grows with the change.
fn kernel_step(
    held: &NodeDataplane,
    held_view: &Fragment,
    want: &NodeDataplane,
) -> Result<(setpoint_dataplane::Diff, Fragment), ApplyError> {
    let (changes, goal) = kernel_changes(held, held_view, want)?;
    refuse(validate_step(&goal, &changes))?;
    Ok((changes, goal))
}

fn kernel_changes(
    held: &NodeDataplane,
    held_view: &Fragment,
    want: &NodeDataplane,
) -> Result<(setpoint_dataplane::Diff, Fragment), ApplyError> {
    let contract = setpoint_dataplane::diff(held, want);
    if let Some(changes) = template::expand_diff(held_view, &contract) {
        let mut goal = held_view.clone();
        // Not fitting means a collision (or a view that is not `held`'s):
        // the whole expansion below names it, or gets it right.
        if apply_to_fragment(&mut goal, &changes).is_ok() {
            return Ok((changes, goal));
        }
    }
    let goal = kernel_view(want)?;
    Ok((diff_fragments(held_view, &goal), goal))
}

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

/// What one apply did.
#[derive(Debug)]
pub struct ApplyReport {
    pub changes: usize,
    pub operations: usize,
    pub digest: Digest,
    pub duration: Duration,
    /// Things that did not stop the apply but an operator should see.
    pub warnings: Vec<String>,
}

pub struct Applier {
    target: Target,
    services: Box<dyn ServiceKernel + Send>,
    book: RuleBook,
    /// Set descriptions and bitmap sizes the kernel does not report back.
    known_sets: BTreeMap<String, SetSpec>,
    draining: BTreeMap<Draining, Instant>,
    pub drain_timeout: Duration,
}

/// One plan step for the kernel: operations of one backend run together.
fn backend_of(op: &Op) -> u8 {
    match op {
        Op::CreateSet { .. }
        | Op::RebuildSet { .. }
        | Op::AddEntries { .. }
        | Op::DelEntries { .. }
        | Op::DestroySet { .. } => 0,
        Op::Iptables { .. } => 1,
        _ => 2,
    }
}

impl Applier {
    pub fn new(target: Target, services: Box<dyn ServiceKernel + Send>) -> Applier {
        Applier {
            target,
            services,
            book: RuleBook::default(),
            known_sets: BTreeMap::new(),
            draining: BTreeMap::new(),
            drain_timeout: Duration::from_secs(60),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn learn(&mut self, f: &Fragment) {
        self.book.learn(f);
        for (name, spec) in f.sets() {
            self.known_sets.insert(name.clone(), spec.clone());
        }
    }

    /// What the kernel holds of Setpoint's, as a fragment, and the rules it
    /// could not name. Real servers draining are left out: they are on
    /// their way out and not part of any state.
    pub fn read(&mut self) -> Result<(Fragment, RawRules), ApplyError> {
        let mut f = Fragment::new();
        let save = self.target.ipset(&["save"], None)?;
        self.put_kernel_sets(&mut f, &save)?;
        let mut raw = RawRules::new();
        for family in Family::ALL {
            let tables = iptables::read(&self.target, family, is_ours, &mut self.book)?;
            for (key, chain) in tables.chains {
                f.put_chain(key, std::sync::Arc::new(chain));
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
                f.put_virtual_server(d.key, std::sync::Arc::new(vs));
            }
        }
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

    /// The operations that would take the kernel to `want` (dry run; see
    /// [`Applier::refuse_unsupported`] for whether this kernel can).
    pub fn plan(&mut self, want: &NodeDataplane) -> Result<(Fragment, Vec<Op>), ApplyError> {
        let goal = checked_view(want)?;
        self.learn(&goal);
        let (mut current, _) = self.read()?;
        self.adopt_draining(&mut current, &goal);
        let ops = plan(&diff_fragments(&current, &goal), &current, &goal)?;
        Ok((current, ops))
    }

    /// The operations from `held` to `want`, without looking at the
    /// kernel: what a dry-run agent reports.
    pub fn plan_from(held: &NodeDataplane, want: &NodeDataplane) -> Result<Vec<Op>, ApplyError> {
        Ok(Self::plan_step(held, &kernel_view(held)?, want)?.0)
    }

    /// [`Applier::plan_from`] when the kernel view of `held` is at hand:
    /// the plan and `want`'s kernel view, in time that grows with the
    /// change, not the state.
    pub fn plan_step(
        held: &NodeDataplane,
        held_view: &Fragment,
        want: &NodeDataplane,
    ) -> Result<(Vec<Op>, Fragment), ApplyError> {
        let (changes, goal) = kernel_step(held, held_view, want)?;
        Ok((plan(&changes, held_view, &goal)?, goal))
    }

    pub fn refuse_unsupported(&self, goal: &Fragment) -> Result<(), ApplyError> {
        if let Some(feature) = self.services.missing_feature() {
            let needs = goal.virtual_server_count() + goal.addresses().count();
            if needs > 0 {
                return Err(ApplyError::Unsupported {
                    feature,
                    needed_for: format!(
                        "{} virtual servers and {} service addresses",
                        goal.virtual_server_count(),
                        goal.addresses().count()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Takes the kernel to `want`, then verifies it by reading it back.
    pub fn apply(&mut self, want: &NodeDataplane) -> Result<ApplyReport, ApplyError> {
        Ok(self.apply_viewed(want)?.0)
    }

    /// [`Applier::apply`], also handing back `want`'s kernel view.
    pub fn apply_viewed(
        &mut self,
        want: &NodeDataplane,
    ) -> Result<(ApplyReport, Fragment), ApplyError> {
        let started = Instant::now();
        let goal = checked_view(want)?;
        self.learn(&goal);
        self.refuse_unsupported(&goal)?;
        let (mut current, raw) = self.read()?;
        self.adopt_draining(&mut current, &goal);
        let changes = diff_fragments(&current, &goal);
        let ops = plan(&changes, &current, &goal)?;
        let mut report = ApplyReport {
            changes: changes.changes.len(),
            operations: ops.len(),
            digest: want.digest(),
            duration: Duration::ZERO,
            warnings: Vec::new(),
        };
        self.execute(&ops, &current, &goal, &raw, &mut report)?;
        self.learn(&goal);
        report.digest = self.verify_view(&goal, want.digest())?;
        report.duration = started.elapsed();
        Ok((report, goal))
    }

    /// Takes the kernel from `held` — the state this agent last applied and
    /// verified — to `want` without reading the whole kernel: the plan is
    /// the diff of the two states, and afterwards only what the plan
    /// touched is read back and compared (the sets it edited, the tables it
    /// restored, the virtual servers it changed, the addresses). Everything
    /// else is as verified before; the drift timer re-reads it all.
    pub fn apply_from(
        &mut self,
        held: &NodeDataplane,
        want: &NodeDataplane,
    ) -> Result<ApplyReport, ApplyError> {
        Ok(self.apply_step(held, &kernel_view(held)?, want)?.0)
    }

    /// [`Applier::apply_from`] when the kernel view of `held` is at hand
    /// (the agent keeps the one it verified): planning takes time that
    /// grows with the change, not the state. Hands back `want`'s kernel
    /// view.
    pub fn apply_step(
        &mut self,
        held: &NodeDataplane,
        held_view: &Fragment,
        want: &NodeDataplane,
    ) -> Result<(ApplyReport, Fragment), ApplyError> {
        let started = Instant::now();
        let (changes, goal) = kernel_step(held, held_view, want)?;
        self.learn(&goal);
        self.refuse_unsupported(&goal)?;
        let current = held_view;
        let ops = plan(&changes, current, &goal)?;
        let mut report = ApplyReport {
            changes: changes.changes.len(),
            operations: ops.len(),
            digest: want.digest(),
            duration: Duration::ZERO,
            warnings: Vec::new(),
        };
        self.execute(&ops, current, &goal, &RawRules::new(), &mut report)?;
        self.verify_touched(&ops, &goal, want.digest())?;
        report.duration = started.elapsed();
        Ok((report, goal))
    }

    /// Reads back what `ops` touched and compares it with `goal`.
    fn verify_touched(
        &mut self,
        ops: &[Op],
        goal: &Fragment,
        want: Digest,
    ) -> Result<(), ApplyError> {
        let mut sets: BTreeSet<&str> = BTreeSet::new();
        let mut tables: BTreeSet<(Family, setpoint_dataplane::Table)> = BTreeSet::new();
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
                kernel.put_chain(key, std::sync::Arc::new(chain));
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
                kernel.put_virtual_server(key, std::sync::Arc::new(vs));
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
            differences: left.changes.iter().take(20).map(describe).collect(),
        })
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

    fn execute(
        &mut self,
        ops: &[Op],
        current: &Fragment,
        goal: &Fragment,
        raw: &RawRules,
        report: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        let kinds: BTreeMap<String, SetType> = current
            .sets()
            .chain(goal.sets())
            .map(|(name, spec)| (name.clone(), spec.kind))
            .collect();
        // Consecutive set operations of one phase go in one restore batch.
        let mut start = 0;
        while start < ops.len() {
            let op = &ops[start];
            let mut end = start + 1;
            if backend_of(op) == 0 {
                while end < ops.len() && backend_of(&ops[end]) == 0 && phase(&ops[end]) == phase(op)
                {
                    end += 1;
                }
                if let Some(text) = ipset::script(&ops[start..end], &kinds) {
                    self.target.ipset(&["restore", "-exist"], Some(&text))?;
                }
            } else if let Op::Iptables { family, .. } = op {
                if let Some(text) = iptables::script(op, current, goal, raw) {
                    iptables::restore(&self.target, *family, &text)?;
                }
            } else {
                self.service_op(op, report)?;
            }
            start = end;
        }
        Ok(())
    }

    /// IPVS and address operations, with graceful termination: a removed
    /// TCP real server drains at weight 0; a UDP one goes at once and its
    /// conntrack entries with it, so clients do not wait out the UDP timeout.
    fn service_op(&mut self, op: &Op, report: &mut ApplyReport) -> Result<(), ApplyError> {
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
                    report.warnings.push(e);
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
    ) -> Result<(), String> {
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
            Err(crate::target::RunError::Failed(stderr))
                if stderr.contains("0 flow entries have been deleted") =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "clearing UDP conntrack entries of {vip}:{vport} -> {rs}:{rport}: {}",
                e.describe()
            )),
        }
    }

    /// Removes drained real servers: no connections left, or past the
    /// timeout. Returns how many were removed.
    pub fn reap_drained(&mut self) -> Result<usize, ApplyError> {
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

    pub fn draining(&self) -> impl Iterator<Item = &Draining> {
        self.draining.keys()
    }

    /// Reads the kernel back; its digest when it holds `want`, else the
    /// differences.
    pub fn verify(&mut self, want: &NodeDataplane) -> Result<Digest, ApplyError> {
        // A state read back from disk at start is checked like one sent.
        let goal = checked_view(want)?;
        // A restarted agent knows the rules only from the state it checks.
        self.learn(&goal);
        self.verify_view(&goal, want.digest())
    }

    /// Reads the kernel back and compares it with `goal`, the kernel view
    /// of the state whose digest is `want_digest`; that digest when equal.
    fn verify_view(&mut self, goal: &Fragment, want_digest: Digest) -> Result<Digest, ApplyError> {
        let (kernel, _) = self.read()?;
        let kernel_digest = kernel.digest();
        if kernel_digest == goal.digest() {
            return Ok(want_digest);
        }
        let differences = diff_fragments(&kernel, goal)
            .changes
            .iter()
            .take(20)
            .map(describe)
            .collect();
        Err(ApplyError::Mismatch {
            kernel: kernel_digest,
            want: want_digest,
            differences,
        })
    }
}

/// One line per change the kernel still needs, for operators.
pub fn describe(change: &Change) -> String {
    let s = serde_json::to_string(change).unwrap_or_else(|e| format!("{change:?} ({e})"));
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}
