//! Namespaces: their labels are what namespace selectors match; a change
//! rebuilds every node's policy fragment.

use k8s_openapi::api::core::v1 as k8s;

use super::{Index, IndexResource};
use crate::object::ObjectKey;
use crate::policy;

impl IndexResource<k8s::Namespace> for Index {
    fn apply(&mut self, key: &ObjectKey, namespace: k8s::Namespace) {
        let (labels, warnings) = policy::convert_namespace(&namespace);
        self.note(key, warnings, false);
        if self.policy_view.namespaces.get(&key.name) != Some(&labels) {
            self.policy_view.namespaces.insert(key.name.clone(), labels);
            self.policy_full = true;
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.policy_full |= self.policy_view.namespaces.remove(&key.name).is_some();
    }
}
