//! ClusterNetworkPolicies: converted and kept beside the NetworkPolicies.
//! A policy's rules live only in the chains of the pods it is about, so a
//! change rebuilds the policy fragment of the nodes holding a pod the old
//! or the new policy is about, and no other. Node labels are kept here
//! too, for `nodes` peers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Index, IndexResource};
use crate::object::ObjectKey;
use crate::policy::cluster::{self, ClusterPolicy, api};

impl IndexResource<api::ClusterNetworkPolicy> for Index {
    fn apply(&mut self, key: &ObjectKey, policy: api::ClusterNetworkPolicy) {
        let old = self.policy_view.cluster_policies.remove(&key.name);
        let new = match cluster::convert_cluster_policy(&policy) {
            Ok((model, warnings)) => {
                self.note(key, warnings, false);
                Some(model)
            }
            Err(r) => {
                self.note(key, vec![r], true);
                None
            }
        };
        if old == new {
            if let Some(model) = new {
                self.policy_view
                    .cluster_policies
                    .insert(key.name.clone(), model);
            }
            return;
        }
        let reached = self.subject_nodes([old.as_ref(), new.as_ref()]);
        self.policy_subject_nodes.extend(reached);
        if let Some(model) = new {
            self.policy_view
                .cluster_policies
                .insert(key.name.clone(), model);
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        if let Some(old) = self.policy_view.cluster_policies.remove(&key.name) {
            let reached = self.subject_nodes([Some(&old)]);
            self.policy_subject_nodes.extend(reached);
        }
    }
}

impl Index {
    /// The nodes holding a local pod that one of `policies` is about.
    fn subject_nodes<'a>(
        &self,
        policies: impl IntoIterator<Item = Option<&'a ClusterPolicy>>,
    ) -> BTreeSet<Arc<str>> {
        let view = &self.policy_view;
        let mut out = BTreeSet::new();
        for policy in policies.into_iter().flatten() {
            out.extend(
                view.pods
                    .values()
                    .filter(|pod| view.pod_in(&policy.subject, pod))
                    .filter_map(|pod| pod.node.clone()),
            );
        }
        out
    }

    /// Keeps a Node's labels for `nodes` peers; a change rebuilds every
    /// node's policy fragment (its addresses are the Node module's).
    pub(super) fn note_node_labels(
        &mut self,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) {
        let changed = match labels.filter(|l| !l.is_empty()) {
            Some(labels) => {
                let old = self
                    .policy_view
                    .node_labels
                    .insert(name.to_string(), labels.clone());
                old != Some(labels)
            }
            None => self.policy_view.node_labels.remove(name).is_some(),
        };
        self.policy_full |= changed;
    }
}

#[cfg(test)]
mod tests {
    use crate::index::Index;
    use crate::layout::ComputeConfig;
    use crate::object::{ClusterObject, Kind, ObjectKey};
    use crate::policy::cluster::{Tier, api};

    fn object(name: &str, tier: &str, priority: i64) -> ClusterObject {
        let written: api::ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": api::API_VERSION,
            "kind": api::KIND,
            "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {}},
                     "egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        ClusterObject::ClusterNetworkPolicy(written)
    }

    #[test]
    fn a_cluster_network_policy_is_kept_with_its_problems_and_forgotten_on_delete() {
        let mut index = Index::new(ComputeConfig::default());
        let good = object("baseline", "Baseline", 3);
        let key = good.key();
        assert_eq!(
            key,
            ObjectKey {
                kind: Kind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: "baseline".into(),
            }
        );
        index.upsert(good);
        let kept = index.policy_view.cluster_policies.get("baseline");
        assert_eq!(
            kept.map(|p| (p.tier, p.priority)),
            Some((Tier::Baseline, 3))
        );
        let problems: Vec<String> = index
            .problems()
            .map(|p| format!("{} {}", p.skipped, p.rejection))
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("false ") && problems[0].contains("domainNames"),
            "{problems:?}"
        );

        // Rejected: no longer enforced, and the problem says it is skipped.
        index.upsert(object("baseline", "Developer", 3));
        assert!(index.policy_view.cluster_policies.is_empty());
        let skipped: Vec<bool> = index.problems().map(|p| p.skipped).collect();
        assert_eq!(skipped, vec![true]);

        index.upsert(object("baseline", "Admin", 1));
        index.delete(&key);
        assert!(index.policy_view.cluster_policies.is_empty());
        assert_eq!(index.problems().count(), 0);
    }

    /// A policy about namespace x's pods (all on node-1): its change, its
    /// deletion and an unchanged re-apply rebuild node-1's policy fragment
    /// at most, not node-2's.
    #[test]
    fn a_policy_change_rebuilds_only_the_nodes_of_its_subjects() {
        use serde_json::json;
        fn of<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
        }
        let policy = |action: &str| {
            ClusterObject::ClusterNetworkPolicy(of(json!({
                "apiVersion": api::API_VERSION,
                "kind": api::KIND,
                "metadata": {"name": "about-x"},
                "spec": {"tier": "Admin", "priority": 5,
                         "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                         "ingress": [{"action": action,
                                      "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]},
            })))
        };
        let mut index = Index::new(ComputeConfig::default());
        for (n, ns) in [("node-1", "x"), ("node-2", "y")] {
            index.upsert(ClusterObject::Node(of(json!({"metadata": {"name": n}}))));
            index.upsert(ClusterObject::Namespace(of(
                json!({"metadata": {"name": ns, "labels": {"ns": ns}}}),
            )));
            let ip = if ns == "x" { "10.0.1.1" } else { "10.0.2.1" };
            index.upsert(ClusterObject::Pod(of(json!({
                "metadata": {"name": "a", "namespace": ns},
                "spec": {"nodeName": n, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ip},
            }))));
        }
        index.upsert(policy("Deny"));
        index.commit();
        assert_eq!(index.policy_rebuilt, 2, "the first commit builds both");
        index.upsert(policy("Accept"));
        let outcome = index.commit();
        assert_eq!(index.policy_rebuilt, 1);
        let changed: Vec<&str> = outcome.changed_nodes.iter().map(|n| &**n).collect();
        assert_eq!(changed, vec!["node-1"]);
        // The same policy again: nothing to rebuild.
        index.policy_rebuilt = 0;
        index.upsert(policy("Accept"));
        index.commit();
        assert_eq!(index.policy_rebuilt, 0);
        let key = policy("Accept").key();
        index.delete(&key);
        index.commit();
        assert_eq!(index.policy_rebuilt, 1);
    }
}
