//! Each ClusterNetworkPolicy's realization: from which revision the
//! computed states hold its current spec (`since`), and which nodes
//! enforce it.
//!
//! ```text
//!  leader: objects diff ─▶ Tracker::changed (a new spec: since unknown)
//!          commit R (or no commit: the head's states already are it) ─▶ Tracker::settled(R)
//!                ─▶ since = R for every new spec ─▶ watch ─▶ AdminService::cluster_policies
//!  admin:  store (nodes of the head, agents' reports, pins) ─▶ Reach per node
//!                ─▶ a node enforces a policy when its reach ≥ since
//! ```
//!
//! `since` lives in the leader's memory. A new leader's first sync sees
//! every policy as new, so its `since` becomes that leader's first
//! revision: later than the truth, never earlier — enforcement is never
//! claimed before it is true. A node's reach is the newest revision whose
//! state it is known to run: its last ack, or the head when the state it
//! applied is the head's (a node a revision left unchanged is not sent
//! it); no more than a pin holds it at; nothing after a nack, before any
//! report, or while compute holds its state back as invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use setpoint_compute::policy::cluster::api;
use setpoint_compute::{ClusterObject, Index, Kind, ObjectKey};
use setpoint_proto::admin::{ClusterPolicyRealization, PendingNode};
use setpoint_store::{AgentResult, AgentStatus, Pin};
use tokio::sync::watch;

/// Pending nodes listed per policy.
pub const MAX_PENDING: usize = 10;
/// Warnings listed per policy.
pub const MAX_WARNINGS: usize = 5;

/// What the leader publishes after each computation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRevisions {
    /// The revision whose states this describes (the head then).
    pub revision: u64,
    /// By name.
    pub policies: BTreeMap<String, PolicyFacts>,
    /// Nodes whose computed state is invalid: they keep an older state.
    pub held: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFacts {
    /// The first revision whose states hold the current spec; 0 while
    /// it is not committed.
    pub since: u64,
    /// As written (the problem says when it is not a tier).
    pub tier: String,
    pub priority: u32,
    /// Why compute rejected it; empty when it is enforced.
    pub problem: String,
    pub warnings: Vec<String>,
}

struct Tracked {
    /// What compute reads of it: the spec, and the annotations (one asks
    /// for its verdicts to be logged; a change of another one only moves
    /// `since` later, which never claims enforcement early).
    written: String,
    since: Option<u64>,
    tier: String,
    priority: u32,
}

/// The leader's side: told every ClusterNetworkPolicy change and every
/// settled computation.
#[derive(Default)]
pub struct Tracker {
    tracked: BTreeMap<String, Tracked>,
    to: Option<watch::Sender<Option<Arc<PolicyRevisions>>>>,
}

impl Tracker {
    /// From now on each settled computation is published to `to`.
    pub fn publish_to(&mut self, to: watch::Sender<Option<Arc<PolicyRevisions>>>) {
        self.to = Some(to);
    }

    /// An object was added, changed (`Some`) or removed (`None`); only
    /// ClusterNetworkPolicies are looked at.
    pub fn changed(&mut self, key: &ObjectKey, object: Option<&ClusterObject>) {
        if key.kind != Kind::ClusterNetworkPolicy {
            return;
        }
        let Some(ClusterObject::ClusterNetworkPolicy(policy)) = object else {
            self.tracked.remove(&key.name);
            return;
        };
        let written = written(policy);
        if self
            .tracked
            .get(&key.name)
            .is_some_and(|t| t.written == written)
        {
            return;
        }
        let spec = policy.spec.as_ref();
        self.tracked.insert(
            key.name.clone(),
            Tracked {
                written,
                since: None,
                tier: spec.map(|s| s.tier.clone()).unwrap_or_default(),
                priority: spec
                    .and_then(|s| s.priority)
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
            },
        );
    }

    /// The states of `revision` are what compute makes of the objects
    /// now (it committed them, or they were already the head's): every
    /// new spec is in force from it. Revision 0 (nothing committed yet)
    /// settles nothing.
    pub fn settled(&mut self, revision: u64, index: &Index) {
        if revision > 0 {
            for t in self.tracked.values_mut() {
                t.since.get_or_insert(revision);
            }
        }
        let Some(to) = &self.to else {
            return;
        };
        let mut policies: BTreeMap<String, PolicyFacts> = self
            .tracked
            .iter()
            .map(|(name, t)| {
                let facts = PolicyFacts {
                    since: t.since.unwrap_or(0),
                    tier: t.tier.clone(),
                    priority: t.priority,
                    ..PolicyFacts::default()
                };
                (name.clone(), facts)
            })
            .collect();
        for problem in index.problems() {
            if problem.object.kind != Kind::ClusterNetworkPolicy {
                continue;
            }
            let Some(facts) = policies.get_mut(&problem.object.name) else {
                continue;
            };
            if problem.skipped {
                facts.problem = problem.rejection.to_string();
            } else if facts.warnings.len() < MAX_WARNINGS {
                facts.warnings.push(problem.rejection.to_string());
            }
        }
        let now = PolicyRevisions {
            revision,
            policies,
            held: index
                .invalid_nodes()
                .keys()
                .map(|n| n.to_string())
                .collect(),
        };
        to.send_if_modified(|current| {
            let same = current.as_deref() == Some(&now);
            if !same {
                *current = Some(Arc::new(now));
            }
            !same
        });
    }
}

fn written(policy: &api::ClusterNetworkPolicy) -> String {
    format!("{:?} {:?}", policy.spec, policy.metadata.annotations)
}

/// The newest revision whose state a node is known to run, and why not
/// newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    pub upto: u64,
    /// What limits it: said for a policy newer than `upto`.
    pub why: String,
    /// A failure (nack, invalid state) rather than a wait: listed first.
    pub failing: bool,
}

/// A node's reach from its agent's last report, its pin, and whether
/// compute holds it; `at_head` is whether the digest it applied is its
/// desired state's at `head` (asked only when that could matter).
pub fn reach(
    agent: Option<&AgentStatus>,
    pin: Option<&Pin>,
    held: bool,
    head: u64,
    at_head: impl FnOnce() -> bool,
) -> Reach {
    let none = |why: String, failing: bool| Reach {
        upto: 0,
        why,
        failing,
    };
    if held {
        return none("held: its computed state is invalid".into(), true);
    }
    let Some(agent) = agent else {
        return none("no report".into(), false);
    };
    if let AgentResult::Nack { error, operation } = &agent.result {
        return none(format!("nack: {error} ({operation})"), true);
    }
    let Some(applied) = agent.applied_revision else {
        return none("no report".into(), false);
    };
    let mut reach = Reach {
        upto: applied.0,
        why: format!("at {}", applied.0),
        failing: false,
    };
    if applied.0 < head && at_head() {
        reach.upto = head;
    }
    if let Some(pin) = pin.filter(|p| p.held_at.0 < reach.upto) {
        reach.upto = pin.held_at.0;
        reach.why = format!("pinned at {}", pin.held_at.0);
    }
    reach
}

/// Each policy's realization over `nodes` (name → reach); only `only`
/// when given.
pub fn realizations(
    published: &PolicyRevisions,
    nodes: &BTreeMap<String, Reach>,
    only: Option<&str>,
) -> Vec<ClusterPolicyRealization> {
    published
        .policies
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .map(|(name, facts)| {
            let mut realization = ClusterPolicyRealization {
                name: name.clone(),
                tier: facts.tier.clone(),
                priority: facts.priority,
                since: facts.since,
                enforced: 0,
                nodes: nodes.len() as u64,
                pending: Vec::new(),
                problem: facts.problem.clone(),
                warnings: facts.warnings.clone(),
            };
            if !facts.problem.is_empty() {
                return realization;
            }
            if facts.since == 0 {
                realization.pending = nodes
                    .keys()
                    .take(MAX_PENDING)
                    .map(|node| PendingNode {
                        node: node.clone(),
                        reason: "its revision is not committed yet".into(),
                    })
                    .collect();
                return realization;
            }
            let mut pending: Vec<(&String, &Reach)> = Vec::new();
            for (node, reach) in nodes {
                if reach.upto >= facts.since {
                    realization.enforced += 1;
                } else {
                    pending.push((node, reach));
                }
            }
            // Failing first, then by name (already in order).
            pending.sort_by_key(|(_, r)| !r.failing);
            realization.pending = pending
                .into_iter()
                .take(MAX_PENDING)
                .map(|(node, r)| PendingNode {
                    node: node.clone(),
                    reason: r.why.clone(),
                })
                .collect();
            realization
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use setpoint_compute::ComputeConfig;
    use setpoint_store::RevisionId;

    use super::*;

    fn cnp(name: &str, priority: i64, tier: &str) -> ClusterObject {
        let written: api::ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        ClusterObject::ClusterNetworkPolicy(written)
    }

    fn ack(node: &str, revision: u64) -> AgentStatus {
        AgentStatus {
            node: node.into(),
            applied_revision: Some(RevisionId(revision)),
            applied_digest: None,
            result: AgentResult::Ack,
            contact_ms: 1,
            agent_version: "test".into(),
        }
    }

    #[test]
    fn since_is_the_revision_a_new_spec_settles_at() {
        let (to, published) = watch::channel(None);
        let mut tracker = Tracker::default();
        tracker.publish_to(to);
        let index = Index::new(ComputeConfig::default());
        let (a, b) = (cnp("a", 10, "Admin"), cnp("b", 20, "Baseline"));
        tracker.changed(&a.key(), Some(&a));
        tracker.changed(&b.key(), Some(&b));
        tracker.settled(0, &index);
        let since = |name: &str| {
            published
                .borrow()
                .as_ref()
                .and_then(|p| p.policies.get(name).map(|f| f.since))
        };
        assert_eq!(since("a"), Some(0), "nothing committed yet");
        tracker.settled(3, &index);
        assert_eq!((since("a"), since("b")), (Some(3), Some(3)));
        // The same spec again (a resync, a metadata change): unchanged.
        tracker.changed(&a.key(), Some(&a));
        let a2 = cnp("a", 11, "Admin");
        tracker.changed(&a2.key(), Some(&a2));
        tracker.settled(5, &index);
        assert_eq!((since("a"), since("b")), (Some(5), Some(3)));
        let facts = published
            .borrow()
            .as_ref()
            .and_then(|p| p.policies.get("a").cloned());
        assert_eq!(
            facts.map(|f| (f.tier, f.priority)),
            Some(("Admin".to_string(), 11))
        );
        tracker.changed(&b.key(), None);
        tracker.settled(6, &index);
        assert_eq!(since("b"), None, "deleted");
    }

    #[test]
    fn a_node_enforces_from_its_ack_unless_pinned_older_nacking_or_held() {
        let head = 9;
        let pin = Pin {
            node: "n".into(),
            held_at: RevisionId(4),
            since: RevisionId(8),
            reason: "pause".into(),
        };
        let nack = AgentStatus {
            result: AgentResult::Nack {
                error: "boom".into(),
                operation: "ipset restore".into(),
            },
            ..ack("n", 8)
        };
        let cases: Vec<(&str, Reach)> = vec![
            (
                "acked 7",
                reach(Some(&ack("n", 7)), None, false, head, || false),
            ),
            (
                "acked 7, unchanged since",
                reach(Some(&ack("n", 7)), None, false, head, || true),
            ),
            ("no report", reach(None, None, false, head, || true)),
            ("nack", reach(Some(&nack), None, false, head, || true)),
            (
                "pinned",
                reach(Some(&ack("n", 9)), Some(&pin), false, head, || true),
            ),
            ("held", reach(Some(&ack("n", 9)), None, true, head, || true)),
        ];
        let got: Vec<(&str, u64, &str, bool)> = cases
            .iter()
            .map(|(what, r)| (*what, r.upto, r.why.as_str(), r.failing))
            .collect();
        assert_eq!(
            got,
            vec![
                ("acked 7", 7, "at 7", false),
                ("acked 7, unchanged since", 9, "at 7", false),
                ("no report", 0, "no report", false),
                ("nack", 0, "nack: boom (ipset restore)", true),
                ("pinned", 4, "pinned at 4", false),
                ("held", 0, "held: its computed state is invalid", true),
            ]
        );
    }

    #[test]
    fn realizations_count_nodes_at_or_past_since_failing_ones_listed_first() {
        let mut published = PolicyRevisions {
            revision: 9,
            ..PolicyRevisions::default()
        };
        let facts = |since: u64, problem: &str| PolicyFacts {
            since,
            tier: "Admin".into(),
            priority: 1,
            problem: problem.into(),
            warnings: Vec::new(),
        };
        published.policies.insert("new".into(), facts(9, ""));
        published.policies.insert("old".into(), facts(2, ""));
        published.policies.insert("pending".into(), facts(0, ""));
        published
            .policies
            .insert("rejected".into(), facts(2, "no subject"));
        let node = |upto: u64, why: &str, failing: bool| Reach {
            upto,
            why: why.into(),
            failing,
        };
        let nodes = BTreeMap::from([
            ("a".to_string(), node(9, "at 9", false)),
            ("b".to_string(), node(5, "at 5", false)),
            ("c".to_string(), node(0, "nack: x (y)", true)),
        ]);
        let all = realizations(&published, &nodes, None);
        let summary: Vec<(&str, u64, u64, Vec<String>)> = all
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.enforced,
                    r.nodes,
                    r.pending
                        .iter()
                        .map(|p| format!("{} {}", p.node, p.reason))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "new",
                    1,
                    3,
                    vec!["c nack: x (y)".to_string(), "b at 5".to_string()]
                ),
                ("old", 2, 3, vec!["c nack: x (y)".to_string()]),
                (
                    "pending",
                    0,
                    3,
                    ["a", "b", "c"]
                        .map(|n| format!("{n} its revision is not committed yet"))
                        .to_vec()
                ),
                ("rejected", 0, 3, vec![]),
            ]
        );
        assert_eq!(all[3].problem, "no subject");
        let one = realizations(&published, &nodes, Some("old"));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "old");
    }
}
