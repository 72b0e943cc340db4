//! ClusterNetworkPolicies: converted and kept beside the NetworkPolicies;
//! a change rebuilds every node's policy fragment, as a NetworkPolicy
//! change does. Node labels are kept here too, for `nodes` peers.

use std::collections::BTreeMap;

use super::{Index, IndexResource};
use crate::object::ObjectKey;
use crate::policy::cluster::{self, api};

impl IndexResource<api::ClusterNetworkPolicy> for Index {
    fn apply(&mut self, key: &ObjectKey, policy: api::ClusterNetworkPolicy) {
        match cluster::convert_cluster_policy(&policy) {
            Ok((model, warnings)) => {
                self.note(key, warnings, false);
                self.policy_view
                    .cluster_policies
                    .insert(key.name.clone(), model);
            }
            Err(r) => {
                self.note(key, vec![r], true);
                self.policy_view.cluster_policies.remove(&key.name);
            }
        }
        self.policy_full = true;
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.policy_full |= self
            .policy_view
            .cluster_policies
            .remove(&key.name)
            .is_some();
    }
}

impl Index {
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
}
