//! The computing side of the control plane: cluster objects in, one
//! revision out per batch of changes.
//!
//! ```text
//!  manifests (polled) ─▶ changed objects ─▶ Index ─▶ changed nodes' states ─▶ Store::commit ─▶ head (watch)
//! ```
//!
//! Only the leader runs this; the epoch it acquired fences its commits, so
//! a deposed leader's late commit is refused by the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use imbl::ordmap::DiffItem;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use setpoint_compute::admit::{LeftOutReason, RefusalReason};
use setpoint_compute::index::ProblemKind;
use setpoint_compute::{ClusterObject, ComputeConfig, Index, ObjectMap};
use setpoint_dataplane::NodeDataplane;
use setpoint_store::{Cause, CommitRequest, Epoch, OWN_PART_PREFIX, RevisionId, Store};
use tokio::sync::watch;

use crate::fanout::{Fanout, Publisher};

/// What one computation committed.
#[derive(Clone, Debug)]
pub struct Committed {
    pub revision: RevisionId,
    pub nodes_changed: usize,
    pub objects_changed: usize,
    pub compute: Duration,
    pub commit: Duration,
    /// When the oldest change in this batch was seen.
    pub seen_at: SystemTime,
    /// Where programming latency is measured from: the earliest trigger
    /// annotation of the batch's EndpointSlices, else `seen_at`.
    pub start: crate::sli::Start,
}

pub struct Leader {
    store: Store,
    epoch: Epoch,
    index: Index,
    /// The view last synced; the next one is diffed against it.
    objects: ObjectMap,
    nodes: BTreeSet<String>,
    /// Nodes whose computed composition the store does not hold: invalid
    /// when it changed (held at its last state, or never committed), or
    /// recomposed in a sync that committed nothing (its state stayed the
    /// same). Each is listed whole in the next commit where it is valid,
    /// even when it changed only through a shared part.
    unlisted: BTreeSet<String>,
    /// A commit failed: the index is ahead of the store, so the next sync
    /// commits every node even if no object changed since.
    dirty: bool,
    head: watch::Sender<u64>,
    /// Publishes committed states to this process's sessions.
    publisher: Option<Publisher>,
    gauges: Option<ProblemGauges>,
    /// The compute problems last logged, so each is logged when it appears.
    logged: BTreeSet<String>,
    /// Where the address problems are published for `explain`.
    address_problems: Option<watch::Sender<Option<Arc<AddressProblems>>>>,
    /// Told each revision's start before the head moves.
    sli: Option<crate::sli::Sli>,
    /// Trigger times older than this leader are ignored (kube-proxy's
    /// tracker start time): its first sync carries every object.
    started_at: SystemTime,
    /// From which revision each ClusterNetworkPolicy's spec is in force.
    cluster_policies: crate::admin::policies::Tracker,
}

/// A compute problem about a Service's addresses: what `explain` says
/// beside a packet's verdict when the packet's destination is among
/// `addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressProblem {
    /// `namespace/name`.
    pub service: String,
    /// The addresses it concerns: the refused one, the taken frontend's,
    /// or every address of a Service left out.
    pub addresses: Vec<IpAddr>,
    /// Bounded: a `RefusalReason` or `LeftOutReason` variant name, or
    /// `FrontendTaken`.
    pub reason: &'static str,
    /// The problem as `render` prints it.
    pub text: String,
}

/// The leader's address problems, for the node states of one revision.
/// Published after each commit and relabelled with each revision an admin
/// write or the rollout commits (they do not change what compute refuses),
/// so a reader holding revision `r` knows whether these describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressProblems {
    pub revision: u64,
    pub problems: Arc<Vec<AddressProblem>>,
}

impl AddressProblems {
    /// The problems that concern `address`.
    pub fn concerning(&self, address: IpAddr) -> impl Iterator<Item = &AddressProblem> {
        self.problems
            .iter()
            .filter(move |p| p.addresses.contains(&address))
    }
}

/// The address problems `index` holds now.
pub fn address_problems(index: &Index) -> Vec<AddressProblem> {
    index
        .problems()
        .filter(|p| !p.addresses.is_empty())
        .map(|p| AddressProblem {
            service: format!("{}/{}", p.object.namespace, p.object.name),
            addresses: p.addresses.clone(),
            reason: match p.kind {
                ProblemKind::AddressRefused(r) => r.as_str(),
                ProblemKind::LeftOut(r) => r.as_str(),
                ProblemKind::FrontendTaken => "FrontendTaken",
                ProblemKind::Object => "Object",
            },
            text: p.rejection.to_string(),
        })
        .collect()
}

/// A reason, as a metric label (a variant name: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What compute refused, as gauges of the current count: Service addresses
/// not served and Services left out (by reason), node states held back.
#[derive(Clone, Debug, Default)]
pub struct ProblemGauges {
    pub address_refusals: Family<ReasonLabel, Gauge>,
    pub services_left_out: Family<ReasonLabel, Gauge>,
    pub invalid_node_states: Gauge,
}

impl ProblemGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "setpoint_service_address_refusals",
            "Service addresses (external, load-balancer, cluster IPs) not served, by reason",
            self.address_refusals.clone(),
        );
        registry.register(
            "setpoint_services_left_out",
            "Services not served at all (over a budget, or making a node's state invalid), by reason",
            self.services_left_out.clone(),
        );
        registry.register(
            "setpoint_invalid_node_states",
            "Nodes whose computed state is invalid for no Service's fault: they keep their last valid state",
            self.invalid_node_states.clone(),
        );
    }

    /// Sets the gauges to what `index` holds now.
    pub fn record(&self, index: &Index) {
        let mut refusals: BTreeMap<RefusalReason, i64> = BTreeMap::new();
        let mut left_out: BTreeMap<LeftOutReason, i64> = BTreeMap::new();
        for problem in index.problems() {
            match problem.kind {
                ProblemKind::AddressRefused(r) => *refusals.entry(r).or_default() += 1,
                ProblemKind::LeftOut(r) => *left_out.entry(r).or_default() += 1,
                ProblemKind::Object | ProblemKind::FrontendTaken => {}
            }
        }
        for reason in RefusalReason::ALL {
            self.address_refusals
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(refusals.get(&reason).copied().unwrap_or(0));
        }
        for reason in LeftOutReason::ALL {
            self.services_left_out
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(left_out.get(&reason).copied().unwrap_or(0));
        }
        self.invalid_node_states
            .set(i64::try_from(index.invalid_nodes().len()).unwrap_or(i64::MAX));
    }
}

impl Leader {
    /// Becomes the writer: a new epoch fences every earlier one.
    pub async fn start(
        store: Store,
        config: ComputeConfig,
        head: watch::Sender<u64>,
    ) -> anyhow::Result<Leader> {
        let epoch = store.acquire_epoch().await.context("acquiring an epoch")?;
        let now = store.head().await?.map(|r| r.0).unwrap_or(0);
        raise(&head, now);
        Ok(Leader {
            store,
            epoch,
            index: Index::new(config),
            objects: ObjectMap::new(),
            nodes: BTreeSet::new(),
            unlisted: BTreeSet::new(),
            dirty: false,
            head,
            publisher: None,
            gauges: None,
            logged: BTreeSet::new(),
            address_problems: None,
            sli: None,
            started_at: SystemTime::now(),
            cluster_policies: Default::default(),
        })
    }

    /// From now on, each revision's start is announced to `sli`.
    pub fn measure_with(&mut self, sli: crate::sli::Sli) {
        self.sli = Some(sli);
    }

    /// From now on, the address problems of each revision this leader
    /// writes are published to `to` (`None` until its first commit).
    pub fn publish_problems_to(&mut self, to: watch::Sender<Option<Arc<AddressProblems>>>) {
        self.address_problems = Some(to);
    }

    /// Publishes the index's address problems as those of `revision`,
    /// whose computed states are the index's.
    fn publish_problems(&self, revision: RevisionId) {
        if let Some(to) = &self.address_problems {
            to.send_replace(Some(Arc::new(AddressProblems {
                revision: revision.0,
                problems: Arc::new(address_problems(&self.index)),
            })));
        }
    }

    /// The problems last published, relabelled as `revision`'s.
    fn relabel_problems(&self, revision: RevisionId) {
        if let Some(to) = &self.address_problems {
            to.send_if_modified(|current| match current {
                Some(p) if p.revision != revision.0 => {
                    *current = Some(Arc::new(AddressProblems {
                        revision: revision.0,
                        problems: p.problems.clone(),
                    }));
                    true
                }
                _ => false,
            });
        }
    }

    /// From now on, each sync publishes from which revision every
    /// ClusterNetworkPolicy's current spec is in force to `to`.
    pub fn publish_cluster_policies_to(
        &mut self,
        to: watch::Sender<Option<Arc<crate::admin::policies::PolicyRevisions>>>,
    ) {
        self.cluster_policies.publish_to(to);
    }

    /// From now on, every sync sets `gauges` to the compute problems.
    pub fn report_to(&mut self, gauges: ProblemGauges) {
        gauges.record(&self.index);
        self.gauges = Some(gauges);
    }

    /// Logs compute problems that appeared since the last sync (a refused
    /// address, a Service left out, a node state held back) and updates
    /// the gauges.
    fn report_problems(&mut self) {
        let mut now: BTreeSet<String> = BTreeSet::new();
        for problem in self.index.problems() {
            let what = if problem.skipped {
                "skipped"
            } else {
                "warning"
            };
            now.insert(format!("{what}: {}", problem.rejection));
        }
        for (node, invalid) in self.index.invalid_nodes() {
            let list: Vec<String> = invalid.iter().map(|i| i.to_string()).collect();
            now.insert(format!(
                "invalid: node {node}'s computed state is not published ({})",
                list.join("; ")
            ));
        }
        for line in now.difference(&self.logged) {
            tracing::warn!("{line}");
        }
        self.logged = now;
        if let Some(gauges) = &self.gauges {
            gauges.record(&self.index);
        }
    }

    /// From now on, every revision this leader writes is published to
    /// `fanout` (sessions in this process then serve it from memory).
    pub async fn publish_to(&mut self, fanout: Arc<Fanout>) {
        fanout.lead();
        let mut publisher = Publisher::new(fanout);
        publisher.load_pins(&self.store).await;
        self.publisher = Some(publisher);
    }

    /// After an admin write committed `revision`: pins changed, so the
    /// published states are re-derived.
    pub async fn admin_wrote(&mut self, revision: RevisionId) {
        self.relabel_problems(revision);
        let Some(publisher) = self.publisher.as_mut() else {
            return;
        };
        publisher.load_pins(&self.store).await;
        let index = &self.index;
        publisher.publish(revision.0, &self.nodes, Some(&BTreeSet::new()), |n| {
            publishable(index, n)
        });
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest committed revision, as it changes.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Makes the cluster view equal `objects`; commits a revision when any
    /// node's state changed (none when nothing did).
    pub async fn sync(
        &mut self,
        objects: Vec<ClusterObject>,
        seen_at: SystemTime,
    ) -> anyhow::Result<Option<Committed>> {
        self.sync_view(setpoint_compute::object_map(objects), seen_at)
            .await
    }

    /// [`Leader::sync`] from a persistent view: only the objects that
    /// differ from the last view synced are looked at, so a view derived
    /// from that one by a few edits (the manifest cache's, the Kubernetes
    /// source's) costs what changed, not the cluster's size.
    pub async fn sync_view(
        &mut self,
        objects: ObjectMap,
        seen_at: SystemTime,
    ) -> anyhow::Result<Option<Committed>> {
        let started = Instant::now();
        let mut changed: Vec<String> = Vec::new();
        let mut triggers: Vec<SystemTime> = Vec::new();
        for item in self.objects.diff(&objects) {
            match item {
                DiffItem::Add(key, object)
                | DiffItem::Update {
                    new: (key, object), ..
                } => {
                    triggers.extend(crate::sli::trigger_time(object));
                    self.cluster_policies.changed(key, Some(&**object));
                    self.index.upsert((**object).clone());
                    changed.push(key.to_string());
                }
                DiffItem::Remove(key, _) => {
                    self.cluster_policies.changed(key, None);
                    self.index.delete(key);
                    changed.push(key.to_string());
                }
            }
        }
        self.objects = objects;
        if changed.is_empty() && !self.dirty {
            return Ok(None);
        }
        let outcome = self.index.commit();
        self.report_problems();
        // The node set, rebuilt only when it changed (names compared in
        // order; no copies).
        let same_nodes = self
            .nodes
            .iter()
            .map(String::as_str)
            .eq(self.index.node_names().map(|n| &**n));
        let (live, removed) = if same_nodes {
            (None, BTreeSet::new())
        } else {
            let live: BTreeSet<String> = self.index.node_names().map(|n| n.to_string()).collect();
            let removed = self.nodes.difference(&live).cloned().collect();
            (Some(live), removed)
        };
        // A restarted leader has no memory of what the store holds: its
        // first commit carries every node.
        let first = self.nodes.is_empty() || self.dirty;
        let summary = summarize(&changed);
        let mut request = CommitRequest::new(
            self.epoch,
            Cause {
                objects: changed.iter().take(100).cloned().collect(),
                summary,
            },
        );
        // The shared parts go in once: a node that changed only through
        // them (one endpoint of a Service on every node) is not listed,
        // and the store keeps its composition.
        request.shared.extend(self.index.shared_parts());
        let invalid = self.index.invalid_nodes();
        let changed_node = |node: &str| first || outcome.changed_nodes.contains(node);
        let listed: BTreeSet<&str> = if first {
            self.index.node_names().map(|n| &**n).collect()
        } else {
            outcome
                .recomposed_nodes
                .iter()
                .map(|n| &**n)
                .chain(self.unlisted.iter().map(String::as_str))
                .filter(|n| self.index.node(n).is_some())
                .collect()
        };
        let mut listed_states = 0;
        // The states committed, handed to the publisher as they are: a
        // clone shares the state's digest, which sessions ask for.
        let mut built: HashMap<&str, NodeDataplane> = HashMap::new();
        for &node in &listed {
            if invalid.contains_key(node) {
                continue;
            }
            if let Some(state) = self.index.node_state(node) {
                request.add_node_state(node, &state);
                listed_states += 1;
                if self.publisher.is_some() {
                    built.insert(node, state);
                }
            }
        }
        // A node whose computed state is invalid keeps its last one, also
        // when only a shared part changed under it.
        let held: Vec<String> = invalid
            .keys()
            .filter(|n| changed_node(n))
            .map(|n| n.to_string())
            .collect();
        let kept = if held.is_empty() {
            0
        } else {
            self.hold(&held, &mut request).await?
        };
        let computed_changed = if first {
            listed_states
        } else {
            outcome.changed_nodes.len().saturating_sub(held.len())
        };
        let nodes_changed = computed_changed + kept;
        // What the store will lack once this request is committed.
        let unlisted: BTreeSet<String> = self
            .unlisted
            .iter()
            .map(String::as_str)
            .chain(held.iter().map(String::as_str))
            .filter(|n| invalid.contains_key(*n) || !listed.contains(n))
            .filter(|n| !removed.contains(*n))
            .map(str::to_string)
            .collect();
        if nodes_changed == 0 && removed.is_empty() {
            // The head's states are what compute makes of the objects now.
            self.publish_problems(RevisionId(*self.head.borrow()));
            self.cluster_policies
                .settled(*self.head.borrow(), &self.index);
            if let Some(live) = live {
                self.nodes = live;
            }
            // Nothing was committed: what the store lacks, it still lacks,
            // and so it does the compositions listed here.
            let pending: Vec<String> = listed.iter().map(|n| n.to_string()).collect();
            self.unlisted.extend(pending);
            self.unlisted.extend(held);
            return Ok(None);
        }
        request.removed_nodes = removed;
        let compute = started.elapsed();
        let committing = Instant::now();
        self.dirty = true;
        let revision = self.store.commit(request).await.context("committing")?;
        self.dirty = false;
        self.publish_problems(revision);
        self.cluster_policies.settled(revision.0, &self.index);
        if let Some(live) = live {
            self.nodes = live;
        }
        if let Some(publisher) = self.publisher.as_mut() {
            let changed: BTreeSet<&str> = outcome.changed_nodes.iter().map(|n| &**n).collect();
            let index = &self.index;
            publisher.publish(revision.0, &self.nodes, (!first).then_some(&changed), |n| {
                built.get(n).cloned().or_else(|| publishable(index, n))
            });
        }
        self.unlisted = unlisted;
        let start = crate::sli::batch_start(triggers, seen_at, self.started_at);
        if let Some(sli) = &self.sli {
            sli.started(revision.0, start);
        }
        self.head.send_replace(revision.0);
        Ok(Some(Committed {
            revision,
            nodes_changed,
            objects_changed: changed.len(),
            compute,
            commit: committing.elapsed(),
            seen_at,
            start,
        }))
    }
}

impl Leader {
    /// Keeps `nodes`, whose computed states are invalid, at the state the
    /// store holds for them now. Shared parts are recorded per revision
    /// for every node, so a node merely left out of the request would
    /// combine its old parts with the new shared ones — a state nobody
    /// validated; instead its state is recorded whole as its own part.
    /// A node never committed has nothing to keep and stays absent.
    async fn hold(&self, nodes: &[String], request: &mut CommitRequest) -> anyhow::Result<usize> {
        let Some(head) = self.store.head().await? else {
            return Ok(0);
        };
        let mut held = 0;
        for node in nodes {
            let Some(last) = self
                .store
                .node_state(node, head)
                .await
                .with_context(|| format!("reading node {node}'s last state to keep it"))?
            else {
                continue;
            };
            let whole = NodeDataplane::from_parts([(
                format!("{OWN_PART_PREFIX}{node}"),
                Arc::new(last.flatten()),
            )]);
            request.add_node_state(node.as_str(), &whole);
            held += 1;
        }
        Ok(held)
    }
}

/// A node's computed state, unless it is invalid: then its sessions read
/// its last valid state from the store.
fn publishable(index: &Index, node: &str) -> Option<NodeDataplane> {
    if index.invalid_nodes().contains_key(node) {
        return None;
    }
    index.node_state(node)
}

/// Moves the shared head forward to `revision`; never back (the leader,
/// the store's notifications and admin writes all report heads, in any
/// order).
pub(crate) fn raise(head: &watch::Sender<u64>, revision: u64) {
    head.send_if_modified(|h| {
        let newer = revision > *h;
        if newer {
            *h = revision;
        }
        newer
    });
}

fn summarize(changed: &[String]) -> String {
    match changed {
        [] => "nothing".to_string(),
        [one] => format!("{one} changed"),
        [first, rest @ ..] => format!("{first} and {} more changed", rest.len()),
    }
}

#[cfg(test)]
mod tests {
    use setpoint_compute::{ComputeConfig, Index};

    use super::*;

    fn services(hijack_external: &str) -> Vec<ClusterObject> {
        let text = format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: kubernetes, namespace: default}}
spec: {{clusterIP: 10.96.0.1, ports: [{{port: 443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: hijack, namespace: default}}
spec: {{clusterIP: 10.96.5.5, externalIPs: {hijack_external}, ports: [{{port: 443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: wide, namespace: default}}
spec: {{clusterIP: 10.96.5.6, externalIPs: [203.0.113.1, 203.0.113.2], ports: [{{port: 443}}]}}
"#
        );
        let report = setpoint_source::parse_str(&text, std::path::Path::new("services.yaml"));
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        report.objects
    }

    fn exposed(gauges: &ProblemGauges) -> String {
        let mut registry = Registry::default();
        gauges.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    /// `default/hijack` claims 10.96.0.1 (a ClusterIP) and 0.0.0.0;
    /// `default/wide` is over a budget of 2 frontends.
    fn hijacked_index() -> Index {
        let mut index = Index::new(ComputeConfig {
            max_service_frontends: 2,
            ..ComputeConfig::default()
        });
        for o in services("[10.96.0.1, 0.0.0.0]") {
            index.upsert(o);
        }
        index.commit();
        index
    }

    #[test]
    fn address_problems_name_service_addresses_and_reason() {
        let index = hijacked_index();
        let published = AddressProblems {
            revision: 3,
            problems: Arc::new(address_problems(&index)),
        };
        let about = |ip: &str| -> Vec<(String, &'static str)> {
            published
                .concerning(ip.parse().expect("ip"))
                .map(|p| (p.service.clone(), p.reason))
                .collect()
        };
        assert_eq!(
            about("10.96.0.1"),
            [("default/hijack".to_string(), "ClusterIp")]
        );
        assert_eq!(
            about("0.0.0.0"),
            [("default/hijack".to_string(), "Unspecified")]
        );
        // Every address of a Service left out.
        for ip in ["10.96.5.6", "203.0.113.2"] {
            assert_eq!(
                about(ip),
                [("default/wide".to_string(), "TooManyFrontends")],
                "{ip}"
            );
        }
        assert_eq!(about("10.96.5.5"), []);
        let refusal = published
            .concerning("10.96.0.1".parse().expect("ip"))
            .next()
            .expect("refused");
        // The line `render` prints after "warning: ".
        let rendered: Vec<String> = index.problems().map(|p| p.rejection.to_string()).collect();
        assert!(rendered.contains(&refusal.text), "{rendered:?}");
        assert!(
            refusal.text.contains("Service default/hijack")
                && refusal.text.contains("10.96.0.1")
                && refusal.text.contains("ClusterIp"),
            "{}",
            refusal.text
        );
    }

    #[test]
    fn gauges_count_refusals_and_left_out_services_by_reason() {
        let mut index = hijacked_index();
        let gauges = ProblemGauges::default();
        gauges.record(&index);
        let text = exposed(&gauges);
        for line in [
            "setpoint_service_address_refusals{reason=\"ClusterIp\"} 1",
            "setpoint_service_address_refusals{reason=\"Unspecified\"} 1",
            "setpoint_service_address_refusals{reason=\"NodeAddress\"} 0",
            "setpoint_services_left_out{reason=\"TooManyFrontends\"} 1",
            "setpoint_services_left_out{reason=\"InvalidState\"} 0",
            "setpoint_invalid_node_states 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Fixed: the gauges go back to zero.
        for o in services("[]") {
            index.upsert(o);
        }
        index.commit();
        gauges.record(&index);
        assert!(
            exposed(&gauges)
                .lines()
                .any(|l| l == "setpoint_service_address_refusals{reason=\"ClusterIp\"} 0")
        );
    }
}
