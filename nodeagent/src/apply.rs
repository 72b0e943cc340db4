//! The executor: plans the way from a base to a wanted state, runs the
//! plan on a kernel phase by phase, and reads the kernel back to verify.
//!
//! ```text
//!  want ──contract checks──▶ kernel view (goal)
//!  Base::Kernel    ──read whole──▶ current ─┐
//!  Base::Held(v)   ──v.view, trusted──────▶ ├─diff/plan──▶ [Op] ──Kernel──▶ read back == goal?
//! ```
//!
//! A kernel holds a state's kernel view ([`kernel_view`]): NodePort
//! templates expanded over the node's addresses. [`Base::Kernel`] reads
//! the whole kernel before and after; [`Base::Held`] starts from a
//! [`Verified`] state this agent applied, plans the two states' diff in
//! time that grows with the change, and reads back only what the plan
//! touched. The [`Kernel`] is the node's ([`NodeKernel`]) or, for a dry
//! run, [`DryRun`]: it reads as empty, runs nothing and has nothing to
//! read back, so a dry run plans exactly as an apply would from the same
//! base.
//!
//! Nothing sent is trusted: before any kernel operation, a whole target
//! passes the contract's checks ([`checked_view`]) and a step from the
//! held state passes them for what it changes (`validate_step`); a
//! refusal is [`ApplyError::Refused`] with the problems, the kernel
//! untouched.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use setpoint_dataplane::diff::{apply_to_fragment, diff_fragments};
use setpoint_dataplane::template::{self, Collision};
use setpoint_dataplane::validate::{
    summary, validate_fragment, validate_node_facts, validate_step,
};
use setpoint_dataplane::{Change, Diff, Digest, Family, Fragment, Invalid, NodeDataplane};

use crate::ipset::IpsetError;
use crate::iptables::{IptablesError, RawRules};
use crate::node_addresses::{LeftOut, NodeAddresses};
use crate::plan::{Op, PlanError, plan};

mod node;
pub use node::{ConntrackError, Draining, NoIpvs, NodeKernel, ServiceKernel};

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

/// [`kernel_view`] with the node-port address sets filled from the node's
/// own addresses where `local` chose them ([`NodeAddresses::overlay`]);
/// what the overlay left out.
pub fn local_view(
    state: &NodeDataplane,
    local: &NodeAddresses,
) -> Result<(Fragment, LeftOut), ApplyError> {
    if local.is_none() {
        return Ok((kernel_view(state)?, LeftOut::default()));
    }
    let mut flat = state.flatten();
    let left_out = local.overlay(state, &mut flat);
    Ok((template::expand(&flat)?, left_out))
}

/// [`kernel_view`] of a state the agent was sent, refused unless every
/// atom passes the contract's checks: what is sent is not trusted.
/// (Disjointness of the fragments is the control plane's concern; the
/// kernel sees their union.)
pub fn checked_view(state: &NodeDataplane) -> Result<Fragment, ApplyError> {
    let view = kernel_view(state)?;
    refuse_invalid(state, &view)?;
    Ok(view)
}

/// `state`'s kernel view checked whole, and its node facts, which the
/// kernel view leaves out but the health servers read.
fn refuse_invalid(state: &NodeDataplane, view: &Fragment) -> Result<(), ApplyError> {
    refuse(validate_fragment(view))?;
    refuse(validate_node_facts(state))
}

fn refuse(problems: Vec<Invalid>) -> Result<(), ApplyError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Refused { problems })
    }
}

/// A state that passed the contract's checks, with the kernel view it
/// expands to: what the agent holds once the kernel verifiably holds it
/// (the view an apply hands back), or what it found recorded and checked
/// ([`Verified::check`]). The view is kept so that the next delta is
/// planned from it ([`Base::Held`]) in time that grows with the change.
#[derive(Clone, Debug)]
pub struct Verified {
    pub revision: u64,
    pub state: NodeDataplane,
    /// `state`'s [`kernel_view`].
    pub view: Fragment,
}

impl Verified {
    /// `state` checked whole ([`checked_view`]).
    pub fn check(revision: u64, state: NodeDataplane) -> Result<Verified, ApplyError> {
        let view = checked_view(&state)?;
        Ok(Verified {
            revision,
            state,
            view,
        })
    }
}

/// What a plan starts from.
#[derive(Clone, Copy, Debug)]
pub enum Base<'a> {
    /// Whatever the kernel holds of Setpoint's, read whole; the target is
    /// checked whole, and after an apply the whole kernel is read back.
    Kernel,
    /// The state this agent last applied and verified, taken to be what
    /// the kernel holds: the kernel's changes are the contract's diff of
    /// the two states (changed parts only, template changes expanded per
    /// node address), checked for what they change, and after an apply
    /// only what the plan touched is read back. The drift timer re-reads
    /// the rest.
    Held(&'a Verified),
}

/// The operations from a base to a wanted state, in execution order.
#[derive(Debug)]
pub struct Plan<'a> {
    /// How many kernel changes the operations carry out.
    pub changes: usize,
    pub ops: Vec<Op>,
    /// The wanted state's kernel view.
    pub goal: Fragment,
    /// What the kernel holds before: read, or the held view.
    current: Cow<'a, Fragment>,
    /// Rules read back that no state names (replaced, as printed).
    raw: RawRules,
}

/// The kernel's changes from `held` to `want`, and `want`'s kernel view.
/// From the contract's diff of the two states when templates allow (only
/// the changed parts are compared and only the changes expanded); by
/// expanding `want` whole when the diff edits the node-port addresses or
/// does not fit. Refused when the changes break the contract's checks:
/// `held.view` passed them, so the changed atoms and what they can break
/// are all that is checked, in time that grows with the change.
fn kernel_step(
    held: &Verified,
    want: &NodeDataplane,
    local: &NodeAddresses,
) -> Result<(Diff, Fragment, LeftOut), ApplyError> {
    let (changes, goal, left_out) = kernel_changes(held, want, local)?;
    refuse(validate_step(&goal, &changes))?;
    // A few per node (one per Local load balancer): checked whole.
    refuse(validate_node_facts(want))?;
    Ok((changes, goal, left_out))
}

fn kernel_changes(
    held: &Verified,
    want: &NodeDataplane,
    local: &NodeAddresses,
) -> Result<(Diff, Fragment, LeftOut), ApplyError> {
    // The node's own addresses fill a set where `local` chose them: the
    // held view's templates expand over what it held, so a step from it
    // holds only while `want` gets those same addresses.
    let mut left_out = LeftOut::default();
    let mut same_addresses = true;
    for family in Family::ALL {
        let held_entries: BTreeSet<IpAddr> = template::node_port_addresses(&held.view, family)
            .into_iter()
            .collect();
        let wanted = match local.entries(want, family) {
            Some(overlaid) => {
                left_out.service_addresses += overlaid.left_out.service_addresses;
                left_out.over_limit += overlaid.left_out.over_limit;
                overlaid.entries
            }
            // The control plane's list (a change to it is a change to the
            // set, which `expand_diff` declines below).
            None => want
                .parts()
                .flat_map(|(_, part)| template::node_port_addresses(part, family))
                .collect(),
        };
        same_addresses &= held_entries == wanted;
    }
    if same_addresses {
        let contract = setpoint_dataplane::diff(&held.state, want);
        if let Some(changes) = template::expand_diff(&held.view, &contract) {
            let mut goal = held.view.clone();
            // Not fitting means a collision (or a view that is not `held`'s):
            // the whole expansion below names it, or gets it right.
            if apply_to_fragment(&mut goal, &changes).is_ok() {
                return Ok((changes, goal, left_out));
            }
        }
    }
    let (goal, left_out) = local_view(want, local)?;
    Ok((diff_fragments(&held.view, &goal), goal, left_out))
}

/// What plans run on: the node's kernel ([`NodeKernel`]) or none
/// ([`DryRun`]). Reads leave out real servers still draining: they are on
/// their way out and part of no state.
pub trait Kernel {
    /// Why it cannot hold virtual servers and service addresses, if it
    /// cannot.
    fn missing_feature(&self) -> Option<String> {
        None
    }
    /// Takes note of what reads cannot tell about `goal` (set
    /// descriptions and sizes, the contract's rules behind their tags);
    /// nothing for a kernel whose reads tell everything.
    fn learn(&mut self, _goal: &Fragment) {}
    /// What it holds of Setpoint's, and the rules it could not name.
    fn read(&mut self) -> Result<(Fragment, RawRules), ApplyError>;
    /// Real servers left draining by an earlier process that `goal` drops
    /// drain on here instead of being removed again; they leave `current`.
    /// Nothing for a kernel that never drains.
    fn adopt_draining(&mut self, _current: &mut Fragment, _goal: &Fragment) {}
    /// Runs `ops` in order, from `current` to `goal`; what did not stop
    /// it but an operator should see goes to `warnings`.
    fn execute(
        &mut self,
        ops: &[Op],
        current: &Fragment,
        goal: &Fragment,
        raw: &RawRules,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApplyError>;
    /// Reads it all back: [`ApplyError::Mismatch`] unless it holds `goal`,
    /// the view of the state whose digest is `want`.
    fn verify(&mut self, goal: &Fragment, want: Digest) -> Result<(), ApplyError>;
    /// Reads back what `ops` touched (the sets they edited, the tables
    /// they restored, the virtual servers they changed, the addresses)
    /// and compares it with `goal`; reading back everything is always
    /// correct, only slower.
    fn verify_touched(
        &mut self,
        _ops: &[Op],
        goal: &Fragment,
        want: Digest,
    ) -> Result<(), ApplyError> {
        self.verify(goal, want)
    }
    /// Removes drained real servers: no connections left, or past the
    /// timeout. How many were removed.
    fn reap_drained(&mut self) -> Result<usize, ApplyError> {
        Ok(0)
    }
}

/// The kernel of a dry run: reads as holding nothing, runs nothing, and
/// has nothing to read back. Plans on it are an apply's plans; an ack
/// from it means "accepted".
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRun;

impl Kernel for DryRun {
    fn read(&mut self) -> Result<(Fragment, RawRules), ApplyError> {
        Ok((Fragment::new(), RawRules::new()))
    }
    fn execute(
        &mut self,
        ops: &[Op],
        _current: &Fragment,
        _goal: &Fragment,
        _raw: &RawRules,
        _warnings: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        tracing::info!(operations = ops.len(), "dry run: planned, nothing applied");
        Ok(())
    }
    fn verify(&mut self, _goal: &Fragment, _want: Digest) -> Result<(), ApplyError> {
        Ok(())
    }
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

/// Plans and applies wanted states on one [`Kernel`].
pub struct Applier {
    kernel: Box<dyn Kernel + Send>,
    /// The node's own addresses for the node-port address sets, where
    /// `--nodeport-addresses` chose them; none: the control plane's.
    local: NodeAddresses,
    /// What the last view left out of those sets (logged when it changes).
    left_out: LeftOut,
}

impl Applier {
    /// On the node's kernel: the tools run in `target`, IPVS and
    /// addresses through `services`.
    pub fn new(target: crate::target::Target, services: Box<dyn ServiceKernel + Send>) -> Applier {
        Applier::on(Box::new(NodeKernel::new(target, services)))
    }

    /// On no kernel at all ([`DryRun`]).
    pub fn dry_run() -> Applier {
        Applier::on(Box::new(DryRun))
    }

    pub fn on(kernel: Box<dyn Kernel + Send>) -> Applier {
        Applier {
            kernel,
            local: NodeAddresses::default(),
            left_out: LeftOut::default(),
        }
    }

    /// The node's own addresses to fill the node-port address sets with
    /// from now on (a local overlay: states keep their digests, only the
    /// kernel's view changes). Whether they differ from before; the caller
    /// then re-applies what it holds (a step from [`Base::Held`] sees the
    /// sets' entries change and expands whole).
    pub fn set_node_addresses(&mut self, local: NodeAddresses) -> bool {
        let changed = self.local != local;
        self.local = local;
        changed
    }

    /// What the last planned view left out of the node-port address sets.
    pub fn left_out(&self) -> LeftOut {
        self.left_out
    }

    fn note_left_out(&mut self, left_out: LeftOut) {
        if left_out != self.left_out {
            if left_out != LeftOut::default() {
                tracing::warn!(
                    service_addresses = left_out.service_addresses,
                    over_limit = left_out.over_limit,
                    limit = crate::node_addresses::NODE_PORT_ADDRESS_LIMIT,
                    "NodePort addresses: local addresses left out of the node-port address sets \
                     (a Service's address, or past the set's maxelem or the agent's limit)"
                );
            }
            self.left_out = left_out;
        }
    }

    /// `state`'s kernel view on this node: [`checked_view`] with the
    /// node's own addresses where they were chosen.
    pub fn view(&mut self, state: &NodeDataplane) -> Result<Fragment, ApplyError> {
        let (view, left_out) = local_view(state, &self.local)?;
        self.note_left_out(left_out);
        refuse_invalid(state, &view)?;
        Ok(view)
    }

    /// `state` checked whole, with its kernel view on this node
    /// ([`Applier::view`]): [`Verified::check`] with the node's own
    /// addresses.
    pub fn check(&mut self, revision: u64, state: NodeDataplane) -> Result<Verified, ApplyError> {
        let view = self.view(&state)?;
        Ok(Verified {
            revision,
            state,
            view,
        })
    }

    /// The operations that would take the kernel from `base` to `want`;
    /// nothing is changed (see [`Applier::refuse_unsupported`] for
    /// whether this kernel can carry them out).
    pub fn plan<'a>(
        &mut self,
        base: Base<'a>,
        want: &NodeDataplane,
    ) -> Result<Plan<'a>, ApplyError> {
        self.planned(base, want, false)
    }

    /// The plan from `base` to `want`, `want` checked first; refused
    /// before anything is read when `refuse_unsupported` and this kernel
    /// cannot hold `want`.
    fn planned<'a>(
        &mut self,
        base: Base<'a>,
        want: &NodeDataplane,
        refuse_unsupported: bool,
    ) -> Result<Plan<'a>, ApplyError> {
        let (goal, step) = match base {
            Base::Kernel => (self.view(want)?, None),
            Base::Held(held) => {
                let (changes, goal, left_out) = kernel_step(held, want, &self.local)?;
                self.note_left_out(left_out);
                (goal, Some((held, changes)))
            }
        };
        self.kernel.learn(&goal);
        if refuse_unsupported {
            self.refuse_unsupported(&goal)?;
        }
        let (changes, current, raw) = match step {
            Some((held, changes)) => (changes, Cow::Borrowed(&held.view), RawRules::new()),
            None => {
                let (mut current, raw) = self.kernel.read()?;
                self.kernel.adopt_draining(&mut current, &goal);
                (diff_fragments(&current, &goal), Cow::Owned(current), raw)
            }
        };
        let ops = plan(&changes, &current, &goal)?;
        Ok(Plan {
            changes: changes.changes.len(),
            ops,
            goal,
            current,
            raw,
        })
    }

    /// [`ApplyError::Unsupported`] when `goal` needs what this kernel
    /// lacks.
    pub fn refuse_unsupported(&self, goal: &Fragment) -> Result<(), ApplyError> {
        if let Some(feature) = self.kernel.missing_feature() {
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

    /// Takes the kernel from `base` to `want`, then verifies it by reading
    /// back (all of it from [`Base::Kernel`], what the plan touched from
    /// [`Base::Held`]). Hands back `want`'s kernel view, for the
    /// [`Verified`] state the caller now holds.
    pub fn apply(
        &mut self,
        base: Base<'_>,
        want: &NodeDataplane,
    ) -> Result<(ApplyReport, Fragment), ApplyError> {
        let started = Instant::now();
        let plan = self.planned(base, want, true)?;
        let mut report = ApplyReport {
            changes: plan.changes,
            operations: plan.ops.len(),
            digest: want.digest(),
            duration: Duration::ZERO,
            warnings: Vec::new(),
        };
        self.kernel.execute(
            &plan.ops,
            &plan.current,
            &plan.goal,
            &plan.raw,
            &mut report.warnings,
        )?;
        match base {
            Base::Kernel => {
                self.kernel.learn(&plan.goal);
                self.kernel.verify(&plan.goal, report.digest)?;
            }
            Base::Held(_) => self
                .kernel
                .verify_touched(&plan.ops, &plan.goal, report.digest)?,
        }
        report.duration = started.elapsed();
        Ok((report, plan.goal))
    }

    /// Reads the kernel back; `held`'s digest when it holds `held`, else
    /// the differences.
    pub fn verify(&mut self, held: &Verified) -> Result<Digest, ApplyError> {
        // A restarted agent knows the rules only from the state it checks.
        self.kernel.learn(&held.view);
        let want = held.state.digest();
        self.kernel.verify(&held.view, want)?;
        Ok(want)
    }

    /// Removes drained real servers; how many.
    pub fn reap_drained(&mut self) -> Result<usize, ApplyError> {
        self.kernel.reap_drained()
    }
}

/// Up to 20 of `left`'s changes, one line each.
pub(crate) fn differences(left: &Diff) -> Vec<String> {
    left.changes.iter().take(20).map(describe).collect()
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

#[cfg(test)]
pub(crate) mod tests {
    use setpoint_dataplane::{Family, SetEntry, SetSpec, SetType};

    use super::*;
    use crate::kernel_model::KernelModel;

    /// A state of one set holding `entries`.
    pub(crate) fn state(entries: &[&str]) -> NodeDataplane {
        let mut f = Fragment::new();
        f.put_set(
            "SP-TEST",
            SetSpec {
                kind: SetType::HashIp,
                family: Family::Inet,
                maxelem: 1024,
                comment: String::new(),
            },
        );
        for e in entries {
            f.add_entry("SP-TEST", e.parse::<SetEntry>().expect("entry"));
        }
        NodeDataplane::from_fragment(f)
    }

    fn verified(entries: &[&str]) -> Verified {
        Verified::check(1, state(entries)).expect("a valid state")
    }

    /// An operation, short.
    fn shown(op: &Op) -> String {
        match op {
            Op::CreateSet { name, .. } => format!("create {name}"),
            Op::AddEntries { set, entries } => format!("add {} to {set}", entries.len()),
            Op::DelEntries { set, entries } => format!("del {} from {set}", entries.len()),
            Op::DestroySet { name } => format!("destroy {name}"),
            other => format!("{other:?}"),
        }
    }

    /// On which kernel a row plans.
    #[derive(Clone, Copy, Debug)]
    enum On {
        /// The in-memory kernel, holding these entries (`None`: no set).
        Model(Option<&'static [&'static str]>),
        DryRun,
    }

    fn applier(on: On) -> Applier {
        match on {
            On::Model(holds) => Applier::on(Box::new(KernelModel::new(
                holds.map(|e| state(e).flatten()).unwrap_or_default(),
            ))),
            On::DryRun => Applier::dry_run(),
        }
    }

    /// Plans `want` on `on` from the held entries (`None`: from the
    /// kernel), and compares the operations with `expected`.
    fn check(on: On, held: Option<&[&str]>, want: &[&str], expected: &[&str]) {
        let held = held.map(verified);
        let base = held.as_ref().map_or(Base::Kernel, Base::Held);
        let plan = applier(on)
            .plan(base, &state(want))
            .unwrap_or_else(|e| panic!("{on:?} from {held:?}: {e}"));
        let ops: Vec<String> = plan.ops.iter().map(shown).collect();
        assert_eq!(ops, expected, "{on:?}, held {held:?}, want {want:?}");
        assert_eq!(plan.goal, kernel_view(&state(want)).expect("view"));
    }

    #[test]
    fn plans_over_each_base() {
        use On::*;
        const A: &[&str] = &["10.0.0.1"];
        const AB: &[&str] = &["10.0.0.1", "10.0.0.2"];
        // From the kernel, read whole: what it holds decides.
        check(
            Model(None),
            None,
            A,
            &["create SP-TEST", "add 1 to SP-TEST"],
        );
        check(Model(Some(A)), None, AB, &["add 1 to SP-TEST"]);
        check(Model(Some(AB)), None, A, &["del 1 from SP-TEST"]);
        check(Model(Some(AB)), None, AB, &[]);
        // From the held state: the kernel is not read, whatever it holds.
        check(Model(Some(A)), Some(A), AB, &["add 1 to SP-TEST"]);
        check(Model(None), Some(A), AB, &["add 1 to SP-TEST"]);
        check(Model(Some(AB)), Some(AB), AB, &[]);
        check(Model(None), Some(AB), &[], &["del 2 from SP-TEST"]);
        // A dry run reads as holding nothing, and plans from the held
        // state as an apply would.
        check(DryRun, None, A, &["create SP-TEST", "add 1 to SP-TEST"]);
        check(DryRun, Some(A), AB, &["add 1 to SP-TEST"]);
        check(DryRun, Some(AB), A, &["del 1 from SP-TEST"]);
    }

    #[test]
    fn applies_from_each_base_reach_the_wanted_state_and_hand_back_its_view() {
        let (a, ab) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let mut applier = Applier::on(Box::new(KernelModel::default()));
        let (report, view) = applier.apply(Base::Kernel, &a).expect("from nothing");
        assert_eq!((report.changes, report.operations), (2, 2));
        assert_eq!(report.digest, a.digest());
        let held = Verified {
            revision: 1,
            state: a.clone(),
            view,
        };
        let (report, view) = applier.apply(Base::Held(&held), &ab).expect("a delta");
        assert_eq!((report.operations, report.digest), (1, ab.digest()));
        assert_eq!(view, kernel_view(&ab).expect("view"));
        let held = Verified {
            revision: 2,
            state: ab.clone(),
            view,
        };
        assert_eq!(applier.verify(&held).expect("holds it"), ab.digest());
        // A held state the kernel does not hold: the delta fails as the
        // kernel would, and an apply from the kernel repairs it.
        let mut drifted = Applier::on(Box::new(KernelModel::default()));
        assert!(matches!(
            drifted.apply(Base::Held(&held), &a),
            Err(ApplyError::Service { .. })
        ));
        assert!(matches!(
            drifted.verify(&held),
            Err(ApplyError::Mismatch { .. })
        ));
        drifted.apply(Base::Kernel, &ab).expect("repair");
        assert_eq!(drifted.verify(&held).expect("repaired"), ab.digest());
    }

    #[test]
    fn a_dry_run_plans_and_refuses_like_an_apply_and_touches_nothing() {
        let mut dry = Applier::dry_run();
        let (report, view) = dry
            .apply(Base::Kernel, &state(&["10.0.0.1"]))
            .expect("accepted");
        assert_eq!((report.changes, report.operations), (2, 2));
        assert_eq!(view, kernel_view(&state(&["10.0.0.1"])).expect("view"));
        // Nothing was done, and nothing is read back.
        assert_eq!(
            dry.plan(Base::Kernel, &state(&["10.0.0.1"]))
                .expect("plan")
                .ops
                .len(),
            2
        );
        assert_eq!(dry.reap_drained().expect("nothing draining"), 0);
        // What an apply refuses, a dry run refuses.
        let mut bad = state(&[]).flatten();
        bad.put_set(
            "SP-BAD\n",
            SetSpec {
                kind: SetType::HashIp,
                family: Family::Inet,
                maxelem: 1024,
                comment: String::new(),
            },
        );
        let bad = NodeDataplane::from_fragment(bad);
        let held = verified(&[]);
        for base in [Base::Kernel, Base::Held(&held)] {
            assert!(matches!(
                dry.apply(base, &bad),
                Err(ApplyError::Refused { .. })
            ));
        }
    }

    #[test]
    fn malformed_health_checks_are_refused_with_the_state() {
        let state = |namespace: &str| {
            let mut f = Fragment::new();
            f.put_health_check(
                32000,
                setpoint_dataplane::HealthCheck {
                    namespace: namespace.to_string(),
                    name: "web".to_string(),
                    local_endpoints: 1,
                },
            );
            NodeDataplane::from_fragment(f)
        };
        assert!(Verified::check(1, state("shop")).is_ok());
        let refused = Verified::check(1, state("Not_A_Label"));
        assert!(
            matches!(refused, Err(ApplyError::Refused { .. })),
            "{refused:?}"
        );
        let mut applier = Applier::dry_run();
        assert!(matches!(
            applier.check(1, state("Not_A_Label")),
            Err(ApplyError::Refused { .. })
        ));
    }
}
