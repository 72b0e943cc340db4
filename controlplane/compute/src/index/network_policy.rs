//! NetworkPolicies: a change rebuilds every node's policy fragment.

use k8s_openapi::api::networking::v1 as k8s;

use super::{Index, IndexResource};
use crate::object::ObjectKey;
use crate::policy;

impl IndexResource<k8s::NetworkPolicy> for Index {
    fn apply(&mut self, key: &ObjectKey, policy: k8s::NetworkPolicy) {
        let slot = (key.namespace.clone(), key.name.clone());
        match policy::convert_policy(&policy) {
            Ok((model, warnings)) => {
                self.note(key, warnings, false);
                self.policy_view.policies.insert(slot, model);
            }
            Err(r) => {
                self.note(key, vec![r], true);
                self.policy_view.policies.remove(&slot);
            }
        }
        self.policy_full = true;
    }

    fn delete(&mut self, key: &ObjectKey) {
        let slot = (key.namespace.clone(), key.name.clone());
        self.policy_full |= self.policy_view.policies.remove(&slot).is_some();
    }
}
