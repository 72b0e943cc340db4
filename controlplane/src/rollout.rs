//! Progressive rollout (`serve --rollout canary`): a new revision reaches
//! the canary nodes first; the rest get it once every canary acked it and
//! the soak time passed without failures. Too many failures halt the
//! rollout and roll the failing canaries back to the last good revision.
//!
//! ```text
//!             commit R                 all canaries acked R, soak passed
//!  Idle{good} ───────▶ Canary{R, good} ─────────────────────────────────▶ Idle{good: R}
//!      ▲                  │    ▲  commit R2 (restart with the newest; failed canaries released)
//!      │                  │    └──────────────────────┐
//!      │                  │ failures ≥ threshold       │
//!      │                  └──────────────────────▶ Halted{R, good, failed}
//! ```
//!
//! Mechanism, all on the store's pins: non-canary nodes are held — pinned
//! at their current state (reason `rollout: …`) — before every sync that
//! may commit, so a commit reaches only the unpinned canaries. Promotion
//! resumes the held nodes (their computed states are the target's); a
//! halt is a rollback of the failing canaries to `good`. The stream needs
//! no change. [`Machine`] is the pure state machine (time in
//! milliseconds as input); [`Rollout`] runs it against the store from the
//! leader loop, which is the only writer, so nothing races a hold.
//!
//! Operators keep control: `setpointctl resume` releases held nodes (they
//! follow the computed head at once: an override), `rollback` and `pause`
//! pin what they name (the rollout never releases those pins); the next
//! sync holds released non-canaries again at the head. A sync that ends up
//! committing nothing leaves its hold in place (same states, shown as
//! pinned) until the next revision's promotion.
//! Nodes new to the cluster have no state to hold and get the revision
//! that introduces them. The phase lives in the leader's memory: a new
//! leader starts idle (holds persist in the store) and its first commit
//! rolls out like any other.

mod config;
mod machine;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use setpoint_store::{AgentResult, Epoch, RevisionId, RollbackRequest, Store};
use tokio::sync::watch;

pub use config::{
    LabelSelector, LabelSelectorError, RolloutConfig, Share, ShareError, choose_canaries,
    node_labels,
};
pub use machine::{CanaryReport, Machine, Phase, Step};

/// The reason prefix of every pin the rollout writes: pins without it are
/// an operator's, and the rollout never releases them.
pub const REASON_PREFIX: &str = "rollout: ";

/// What `setpointctl status` shows of the rollout: the admin API's
/// message, published on a watch channel.
pub use setpoint_proto::admin::RolloutStatus;

/// Runs the [`Machine`] against the store from the leader loop. Every
/// method returns the revisions it wrote, for the caller to publish.
pub struct Rollout {
    config: RolloutConfig,
    machine: Machine,
    canaries: BTreeSet<String>,
    status: watch::Sender<RolloutStatus>,
    /// The target's desired digest per canary (read once per target).
    desired: BTreeMap<String, Option<setpoint_dataplane::Digest>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Rollout {
    /// Starts idle, the head counted as good.
    pub async fn start(
        config: RolloutConfig,
        store: &Store,
        status: watch::Sender<RolloutStatus>,
    ) -> anyhow::Result<Rollout> {
        let good = store.head().await?.map(|r| r.0);
        let machine = Machine::new(good, &config);
        let rollout = Rollout {
            config,
            machine,
            canaries: BTreeSet::new(),
            status,
            desired: BTreeMap::new(),
        };
        rollout.publish();
        Ok(rollout)
    }

    pub fn phase(&self) -> &Phase {
        &self.machine.phase
    }

    fn publish(&self) {
        let (phase, target, good, failed, reason) = match &self.machine.phase {
            Phase::Idle { good } => ("idle", 0, *good, Vec::new(), String::new()),
            Phase::Canary { target, good, .. } => {
                ("canary", *target, *good, Vec::new(), String::new())
            }
            Phase::Halted {
                target,
                good,
                failed,
                reason,
            } => (
                "halted",
                *target,
                *good,
                failed.iter().cloned().collect(),
                reason.clone(),
            ),
        };
        self.status.send_replace(RolloutStatus {
            phase: phase.to_string(),
            target,
            good: good.unwrap_or(0),
            canaries: self.canaries.iter().cloned().collect(),
            failed,
            reason,
        });
    }

    /// Before a sync that may commit: chooses the canaries among the
    /// head's nodes and pins every other node not pinned yet at its current
    /// state, so that the commit reaches the canaries only.
    pub async fn hold(
        &mut self,
        store: &Store,
        epoch: Epoch,
        labels: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> anyhow::Result<Option<RevisionId>> {
        let head = store.head().await?;
        let names = match head {
            Some(h) => store.node_names(h).await?,
            None => BTreeSet::new(),
        };
        // The head's nodes and the source's Nodes (labels from the latter).
        let nodes: BTreeMap<String, BTreeMap<String, String>> = names
            .iter()
            .chain(labels.keys())
            .map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default()))
            .collect();
        self.canaries = choose_canaries(&self.config, &nodes);
        self.publish();
        let Some(head) = head else {
            return Ok(None);
        };
        let pinned: BTreeSet<String> = store.pins().await?.into_iter().map(|p| p.node).collect();
        let hold: BTreeSet<String> = names
            .iter()
            .filter(|n| !self.canaries.contains(*n) && !pinned.contains(*n))
            .cloned()
            .collect();
        if hold.is_empty() {
            return Ok(None);
        }
        let revision = store
            .rollback(RollbackRequest {
                epoch,
                to: head,
                nodes: Some(hold.clone()),
                reason: format!("{REASON_PREFIX}held at {head} until the canaries pass"),
            })
            .await
            .context("holding the non-canary nodes")?;
        tracing::info!(nodes = hold.len(), revision = revision.0, "rollout: held");
        Ok(Some(revision))
    }

    /// A sync committed `revision`: the rollout restarts with it; canaries
    /// a halted rollout had rolled back are released to it. `since_ms`:
    /// when the commit began (agents may report on it before this runs).
    pub async fn committed(
        &mut self,
        store: &Store,
        epoch: Epoch,
        revision: RevisionId,
        since_ms: i64,
    ) -> anyhow::Result<Option<RevisionId>> {
        let released = self.machine.committed(revision.0, since_ms);
        self.desired.clear();
        self.publish();
        tracing::info!(
            revision = revision.0,
            canaries = self.canaries.len(),
            "rollout: started"
        );
        if !released.is_empty() {
            tracing::info!(
                ?released,
                "rollout: the canaries a halt rolled back get the new revision"
            );
        }
        // Every canary this rollout pinned (rolled back by a halt, or held
        // before it became a canary) follows the new revision; an
        // operator's pins stay.
        let ours: BTreeSet<String> = self
            .held_by_us(store)
            .await?
            .intersection(&self.canaries)
            .cloned()
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        let written = store
            .resume(epoch, Some(ours))
            .await
            .context("releasing the rolled-back canaries")?;
        Ok(Some(written))
    }

    /// The nodes pinned by this rollout; without the canaries when
    /// promoting (a halted canary is released by the next revision only).
    async fn held_by_us(&self, store: &Store) -> anyhow::Result<BTreeSet<String>> {
        let promoting = matches!(self.machine.phase, Phase::Idle { .. });
        Ok(store
            .pins()
            .await?
            .into_iter()
            .filter(|p| p.reason.starts_with(REASON_PREFIX))
            .filter(|p| !promoting || !self.canaries.contains(&p.node))
            .map(|p| p.node)
            .collect())
    }

    /// Looks at the canaries' agent reports; promotes or halts when due.
    pub async fn tick(
        &mut self,
        store: &Store,
        epoch: Epoch,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Option<RevisionId>> {
        let Phase::Canary {
            target, started_ms, ..
        } = self.machine.phase
        else {
            return Ok(None);
        };
        let mut reports = Vec::with_capacity(self.canaries.len());
        for node in &self.canaries {
            if !self.desired.contains_key(node) {
                // The computed state: a canary rolled back by a halt is
                // still pinned at the target's commit, released just after.
                let digest = store
                    .computed_state(node, RevisionId(target))
                    .await?
                    .map(|s| s.digest());
                self.desired.insert(node.clone(), digest);
            }
            let Some(Some(want)) = self.desired.get(node) else {
                // Not a node at the target (removed): nothing to wait for.
                continue;
            };
            let agent = store.agent_status(node).await?;
            let acked = agent.as_ref().and_then(|a| a.applied_digest) == Some(*want);
            // Sessions record every contact of an agent holding an acked
            // state (heartbeats too), whichever replica it is connected to.
            let contact_ms = agent.as_ref().map(|a| a.contact_ms);
            let failure = match agent {
                Some(a) if a.contact_ms >= started_ms => match a.result {
                    AgentResult::Nack { error, operation } => {
                        Some(format!("{error} ({operation})"))
                    }
                    AgentResult::Ack => None,
                },
                _ => None,
            };
            reports.push(CanaryReport {
                node: node.clone(),
                acked,
                failure,
                contact_ms,
            });
        }
        let step = self.machine.observe(&reports, now_ms());
        let written = match step {
            Step::Wait => None,
            Step::Promote { target } => {
                // The held nodes follow their computed states again: the
                // target's, as no newer revision was committed (it would
                // have restarted the rollout). An operator's pins stay.
                let rest = self.held_by_us(store).await?;
                metrics.rollouts_promoted.inc();
                tracing::info!(target, nodes = rest.len(), "rollout: promoted");
                if rest.is_empty() {
                    None
                } else {
                    Some(
                        store
                            .resume(epoch, Some(rest))
                            .await
                            .context("promoting the rollout")?,
                    )
                }
            }
            Step::Halt {
                target,
                to,
                nodes,
                reason,
            } => {
                metrics.rollouts_halted.inc();
                tracing::warn!(target, "{reason}");
                match to {
                    None => None,
                    Some(good) => {
                        let existed = store.node_names(RevisionId(good)).await?;
                        let back: BTreeSet<String> =
                            nodes.intersection(&existed).cloned().collect();
                        if back.is_empty() {
                            None
                        } else {
                            metrics.rollout_rollbacks.inc_by(back.len() as u64);
                            Some(
                                store
                                    .rollback(RollbackRequest {
                                        epoch,
                                        to: RevisionId(good),
                                        nodes: Some(back),
                                        reason,
                                    })
                                    .await
                                    .context("rolling back the failing canaries")?,
                            )
                        }
                    }
                }
            }
        };
        self.publish();
        Ok(written)
    }
}
