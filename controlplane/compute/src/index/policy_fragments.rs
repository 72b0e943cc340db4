//! The `policy/<node>` fragments: rebuilt whole when a Namespace,
//! NetworkPolicy or Node (addresses or labels) changes, and otherwise only
//! on the nodes a pod or ClusterNetworkPolicy change can alter.

use std::collections::BTreeSet;
use std::sync::Arc;

use rayon::prelude::*;
use setpoint_dataplane::Fragment;

use super::Index;
use crate::policy::cluster::NodePeer;
use crate::policy::{self, PeerUse};

impl Index {
    /// Rebuilds the policy fragments pending changes alter: every node's
    /// after a Namespace, NetworkPolicy or Node change, else those pod and
    /// ClusterNetworkPolicy changes reach.
    pub(super) fn refresh_policy(&mut self, touched: &mut Vec<Arc<str>>) {
        if self.policy_full || self.nodes_changed {
            self.policy_pod_changes.clear();
            self.policy_subject_nodes.clear();
            touched.extend(self.recompute_policy(None));
        } else if !self.policy_pod_changes.is_empty() || !self.policy_subject_nodes.is_empty() {
            let mut affected = self.nodes_affected_by_pod_changes();
            affected.append(&mut self.policy_subject_nodes);
            touched.extend(self.recompute_policy(Some(affected)));
        }
    }

    /// Nodes whose policy fragment a pod change can alter: the pod's node
    /// (before and after) and the nodes with sets whose members change — the
    /// pod enters or leaves them, or a member's addresses or ports change.
    fn nodes_affected_by_pod_changes(&mut self) -> BTreeSet<Arc<str>> {
        let mut affected = BTreeSet::new();
        for (old, new) in std::mem::take(&mut self.policy_pod_changes) {
            for pod in [&old, &new].into_iter().flatten() {
                if let Some(node) = &pod.node {
                    affected.insert(node.clone());
                }
            }
            let same_addresses = match (&old, &new) {
                (Some(a), Some(b)) => a.ips == b.ips && a.named_ports == b.named_ports,
                _ => false,
            };
            for (peer, nodes) in &self.peer_nodes {
                let was = old
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                let is = new
                    .as_ref()
                    .is_some_and(|p| self.policy_view.peer_has(peer, p));
                if was != is || (is && !same_addresses) {
                    affected.extend(nodes.iter().cloned());
                }
            }
        }
        affected
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
        let fresh: Vec<(Arc<str>, Fragment, Vec<PeerUse>)> = targets
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
                .node_peers
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
        for (name, fragment, used) in fresh {
            self.forget_peers(&name);
            for peer in &used {
                self.peer_nodes
                    .entry(peer.clone())
                    .or_default()
                    .insert(name.clone());
            }
            self.node_peers.insert(name.clone(), used);
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
        for peer in self.node_peers.remove(node).unwrap_or_default() {
            if let Some(nodes) = self.peer_nodes.get_mut(&peer) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.peer_nodes.remove(&peer);
                }
            }
        }
    }
}
