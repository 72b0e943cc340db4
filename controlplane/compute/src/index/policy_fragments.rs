//! The `policy/<node>` fragments: rebuilt whole when a Namespace,
//! NetworkPolicy or Node (addresses or labels) changes, and otherwise only
//! on the nodes a pod or ClusterNetworkPolicy change can alter.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;
use setpoint_dataplane::{Fragment, SetEntry};

use super::Index;
use crate::policy::cluster::NodePeer;
use crate::policy::{self, NamedSets, PeerUse};

impl Index {
    /// Rebuilds the policy fragments pending changes alter: every node's
    /// after a Namespace, NetworkPolicy or Node change. Otherwise the nodes
    /// of the changed pods and those a ClusterNetworkPolicy change reaches
    /// are rebuilt, and the other nodes with a set a changed pod enters,
    /// leaves or moves in get only those sets' entries recomputed: their
    /// chains depend on their own pods alone.
    pub(super) fn refresh_policy(&mut self, touched: &mut Vec<Arc<str>>) {
        if self.policy_full || self.nodes_changed {
            self.policy_pod_changes.clear();
            self.policy_subject_nodes.clear();
            self.policy_patched = 0;
            touched.extend(self.recompute_policy(None));
        } else if !self.policy_pod_changes.is_empty() || !self.policy_subject_nodes.is_empty() {
            let (mut rebuild, peers) = self.pod_change_reach();
            rebuild.append(&mut self.policy_subject_nodes);
            let patch: BTreeSet<Arc<str>> = peers
                .iter()
                .filter_map(|peer| self.peer_nodes.get(peer))
                .flatten()
                .filter(|n| !rebuild.contains(*n))
                .cloned()
                .collect();
            touched.extend(self.recompute_policy(Some(rebuild)));
            touched.extend(self.patch_policy_sets(&patch, &peers));
        }
    }

    /// The nodes of the changed pods (before and after), and the peers
    /// whose members change: a pod enters or leaves them, or a member's
    /// addresses or named ports change.
    fn pod_change_reach(&mut self) -> (BTreeSet<Arc<str>>, HashSet<PeerUse>) {
        let mut nodes = BTreeSet::new();
        let mut peers = HashSet::new();
        for (old, new) in std::mem::take(&mut self.policy_pod_changes) {
            for pod in [&old, &new].into_iter().flatten() {
                if let Some(node) = &pod.node {
                    nodes.insert(node.clone());
                }
            }
            let same_addresses = match (&old, &new) {
                (Some(a), Some(b)) => a.ips == b.ips && a.named_ports == b.named_ports,
                _ => false,
            };
            for peer in self.peer_nodes.keys() {
                let was = old
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                let is = new
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                if was != is || (is && !same_addresses) {
                    peers.insert(peer.clone());
                }
            }
        }
        (nodes, peers)
    }

    /// Recomputes, on each of `nodes`, the entries of the sets drawn from
    /// `peers`; returns the nodes whose fragment changed.
    fn patch_policy_sets(
        &mut self,
        nodes: &BTreeSet<Arc<str>>,
        peers: &HashSet<PeerUse>,
    ) -> Vec<Arc<str>> {
        self.policy_patched = nodes.len();
        let view = &self.policy_view;
        let members = policy::MemberCache::default();
        // Every node's copy of a set holds the same entries: the change is
        // worked out once per set, against the first copy met, and applied
        // to each; a copy that does not come out at the wanted size is
        // compared whole instead.
        let diffs: std::sync::Mutex<HashMap<String, Arc<SetDiff>>> = Default::default();
        let patched: Vec<(Arc<str>, Fragment)> = nodes
            .par_iter()
            .filter_map(|node| {
                let old = self.policy_fragments.get(node)?;
                let sources = self.node_sets.get(node)?;
                let mut fragment: Option<Fragment> = None;
                for (name, source) in sources {
                    if !peers.contains(&source.peer()) {
                        continue;
                    }
                    let want = members.get_or_compute(name, || source.entries(view));
                    let f = fragment.get_or_insert_with(|| (**old).clone());
                    let known = diffs.lock().ok().and_then(|d| d.get(name).cloned());
                    let diff = match known {
                        Some(diff) => diff,
                        None => {
                            let diff = Arc::new(SetDiff::between(f, name, &want));
                            if let Ok(mut d) = diffs.lock() {
                                d.insert(name.clone(), diff.clone());
                            }
                            diff
                        }
                    };
                    diff.apply(f, name);
                    if f.entry_count(name) != want.len() {
                        SetDiff::between(f, name, &want).apply(f, name);
                    }
                }
                let f = fragment?;
                (f.digest() != old.digest()).then(|| (node.clone(), f))
            })
            .collect();
        let mut changed = Vec::new();
        for (node, fragment) in patched {
            self.policy_fragments
                .insert(node.clone(), Arc::new(fragment));
            changed.push(node);
        }
        changed
    }

    /// Rebuilds the policy fragment of `only` those nodes, or of every node;
    /// returns the nodes whose policy fragment changed.
    fn recompute_policy(&mut self, only: Option<BTreeSet<Arc<str>>>) -> Vec<Arc<str>> {
        self.policy_full = false;
        let targets: Vec<Arc<str>> = match &only {
            None => self.nodes.keys().cloned().collect(),
            Some(set) => set
                .iter()
                .filter(|n| self.nodes.contains_key(*n))
                .cloned()
                .collect(),
        };
        self.policy_rebuilt = targets.len();
        let view = &self.policy_view;
        let police = self.config.police_node_traffic;
        let verdict_log = self.config.verdict_log;
        let by_node = view.pods_by_node();
        let members = policy::MemberCache::default();
        let empty = std::collections::BTreeMap::new();
        let nodes: Vec<NodePeer> = self
            .nodes
            .values()
            .map(|n| NodePeer {
                name: n.name.to_string(),
                labels: view.node_labels.get(&*n.name).unwrap_or(&empty).clone(),
                addresses: n.addresses.clone(),
            })
            .collect();
        let fresh: Vec<(Arc<str>, Fragment, NamedSets)> = targets
            .par_iter()
            .map(|name| {
                let local = by_node.get(&**name).map(Vec::as_slice).unwrap_or(&[]);
                let (fragment, used) =
                    view.node_fragment(local, &nodes, police, verdict_log, &members);
                (name.clone(), fragment, used)
            })
            .collect();
        if only.is_none() {
            // Nodes that are gone lose their fragment and their peer uses.
            let gone: Vec<Arc<str>> = self
                .node_sets
                .keys()
                .chain(self.policy_fragments.keys())
                .filter(|n| !self.nodes.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                self.policy_fragments.remove(&name);
                self.forget_peers(&name);
            }
        }
        let mut changed = Vec::new();
        for (name, fragment, sources) in fresh {
            self.forget_peers(&name);
            for (_, source) in &sources {
                self.peer_nodes
                    .entry(source.peer())
                    .or_default()
                    .insert(name.clone());
            }
            self.node_sets.insert(name.clone(), sources);
            let same = self
                .policy_fragments
                .get(&name)
                .is_some_and(|old| old.digest() == fragment.digest());
            if !same {
                changed.push(name.clone());
                self.policy_fragments.insert(name, Arc::new(fragment));
            }
        }
        changed
    }

    fn forget_peers(&mut self, node: &Arc<str>) {
        for (_, source) in self.node_sets.remove(node).unwrap_or_default() {
            let peer = source.peer();
            if let Some(nodes) = self.peer_nodes.get_mut(&peer) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.peer_nodes.remove(&peer);
                }
            }
        }
    }
}

/// How one set's entries change.
struct SetDiff {
    gone: Vec<SetEntry>,
    added: Vec<SetEntry>,
}

impl SetDiff {
    /// From what `fragment` holds in `set` to `want`.
    fn between(fragment: &Fragment, set: &str, want: &[SetEntry]) -> SetDiff {
        let wanted: BTreeSet<&SetEntry> = want.iter().collect();
        let have = fragment.entries(set);
        SetDiff {
            gone: have
                .into_iter()
                .flatten()
                .filter(|e| !wanted.contains(e))
                .cloned()
                .collect(),
            added: want
                .iter()
                .filter(|e| !have.is_some_and(|h| h.contains(*e)))
                .cloned()
                .collect(),
        }
    }

    fn apply(&self, fragment: &mut Fragment, set: &str) {
        for e in &self.gone {
            fragment.remove_entry(set, e);
        }
        for e in &self.added {
            fragment.add_entry(set, e.clone());
        }
    }
}
