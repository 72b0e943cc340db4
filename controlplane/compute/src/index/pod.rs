//! Pods, as NetworkPolicy sees them: a change is remembered (before,
//! after) so that a commit rebuilds only the policy fragments it alters.

use k8s_openapi::api::core::v1 as k8s;

use super::{Index, IndexResource};
use crate::object::ObjectKey;
use crate::policy;

impl IndexResource<k8s::Pod> for Index {
    fn apply(&mut self, key: &ObjectKey, pod: k8s::Pod) {
        let slot = (key.namespace.clone(), key.name.clone());
        let new = match policy::convert_pod_reporting(&pod) {
            Ok((model, warnings)) => {
                self.note(key, warnings, false);
                model
            }
            Err(r) => {
                self.note(key, vec![r], true);
                None
            }
        };
        let old = match &new {
            Some(model) => self.policy_view.pods.insert(slot, model.clone()),
            None => self.policy_view.pods.remove(&slot),
        };
        if old != new {
            self.policy_pod_changes.push((old, new));
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        let slot = (key.namespace.clone(), key.name.clone());
        if let Some(old) = self.policy_view.pods.remove(&slot) {
            self.policy_pod_changes.push((Some(old), None));
        }
    }
}
