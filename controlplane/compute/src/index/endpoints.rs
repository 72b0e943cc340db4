//! EndpointSlices: each belongs to one Service, which is replanned when
//! one of its slices changes.

use std::sync::Arc;

use k8s_openapi::api::discovery::v1 as k8s;

use super::{Index, IndexResource};
use crate::convert::{self, SliceOutcome};
use crate::object::ObjectKey;

/// `(namespace, name)` of an EndpointSlice.
pub(super) type SliceKey = (Arc<str>, Arc<str>);

fn slot(key: &ObjectKey) -> SliceKey {
    (
        Arc::from(key.namespace.as_str()),
        Arc::from(key.name.as_str()),
    )
}

impl IndexResource<k8s::EndpointSlice> for Index {
    fn apply(&mut self, key: &ObjectKey, slice: k8s::EndpointSlice) {
        let slot = slot(key);
        self.remove_slice(&slot);
        match convert::endpoint_slice(&slice, "default") {
            SliceOutcome::Used(model, warnings) => {
                self.note(key, warnings, false);
                self.dirty_services.insert(model.service.clone());
                self.slices_by_service
                    .entry(model.service.clone())
                    .or_default()
                    .insert(slot.clone());
                self.slices.insert(slot, model);
            }
            SliceOutcome::Ignored(why) => {
                self.ignored.insert(key.clone(), why);
            }
            SliceOutcome::Rejected(r) => self.note(key, vec![r], true),
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.remove_slice(&slot(key));
    }
}

impl Index {
    fn remove_slice(&mut self, slot: &SliceKey) {
        if let Some(old) = self.slices.remove(slot) {
            self.dirty_services.insert(old.service.clone());
            if let Some(set) = self.slices_by_service.get_mut(&old.service) {
                set.remove(slot);
                if set.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
        }
    }
}
