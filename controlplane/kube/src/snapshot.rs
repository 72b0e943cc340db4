//! What the source publishes: the whole cluster view after each batch.

use std::collections::BTreeMap;
use std::time::SystemTime;

use imbl::{OrdMap, Vector};
use setpoint_compute::{ClusterObject, ObjectKey, ObjectMap};

use crate::kinds::KINDS;

/// How many publications [`Snapshot::seen_since`] remembers.
pub(crate) const HISTORY: usize = 64;

/// The cluster as the watches last saw it. Cheap to clone: the maps are
/// persistent (`imbl`) and shared with the source's own copy.
///
/// Written only by the source task; a consumer gets the newest one from the
/// `watch` channel and may have missed intermediate ones (use
/// [`Snapshot::seen_since`] for the oldest change it has not synced).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Bumped on every publication that changed objects, skips or
    /// readiness; 0 before the first.
    pub generation: u64,
    /// Every kind has completed its initial list. Until then `objects` is a
    /// partial cluster and must not be computed from. Once true it stays
    /// true: a relist keeps the previous objects of its kind until the new
    /// list is complete, then swaps them in at once.
    pub ready: bool,
    /// When the oldest change in this publication was received.
    pub seen_at: SystemTime,
    /// Objects skipped since the start (each skipped list item or watch
    /// event counts once, so an object that stays broken across relists
    /// counts again).
    pub skipped_total: u64,
    pub(crate) kinds: BTreeMap<&'static str, KindView>,
    /// Every listed object of every kind, edited with the kinds' maps: a
    /// publication shares all but the changed objects with the previous
    /// one, so the leader's diff costs what changed.
    pub(crate) all: ObjectMap,
    /// `(generation, seen_at)` of the newest publications, oldest first.
    pub(crate) history: Vector<(u64, SystemTime)>,
}

/// One kind's part of a snapshot.
#[derive(Clone, Debug, Default)]
pub(crate) struct KindView {
    pub(crate) objects: ObjectMap,
    pub(crate) skipped: OrdMap<ObjectKey, String>,
    pub(crate) status: KindStatus,
}

/// How one kind's watch is doing; for logs, metrics and `/readyz`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindStatus {
    /// The initial list completed (at least once).
    pub listed: bool,
    /// Lists started after the first: relists after 410 Gone or a failed list.
    pub relists: u64,
    /// Errors from listing or watching (each followed by a backoff).
    pub errors: u64,
    /// The last such error, as text.
    pub last_error: Option<String>,
    /// An optional kind (ServiceCIDR, ClusterNetworkPolicy) whose last list
    /// or watch was answered 404 (not served: the API or CRD is not
    /// installed) or 403 (the ClusterRole does not grant it): the code. It
    /// counts as listed, is asked again after the backoff (at most 30 s
    /// apart in production), and is not counted in `errors`. `None` once a
    /// list succeeds.
    pub not_served: Option<u16>,
}

impl Snapshot {
    pub(crate) fn empty(now: SystemTime) -> Snapshot {
        Snapshot {
            generation: 0,
            ready: false,
            seen_at: now,
            skipped_total: 0,
            kinds: KINDS
                .iter()
                .map(|kind| (*kind, KindView::default()))
                .collect(),
            all: ObjectMap::new(),
            history: Vector::new(),
        }
    }

    /// Every object, as the manifest loader's `LoadReport::objects` would
    /// hold them: one per key, namespaced ones with a namespace. Grouped by
    /// kind (`Namespace`, `Node`, `Service`, `EndpointSlice`, `Pod`,
    /// `NetworkPolicy`, `ServiceCIDR`, `ClusterNetworkPolicy`), sorted by
    /// key within a kind.
    pub fn objects(&self) -> Vec<ClusterObject> {
        self.iter().cloned().collect()
    }

    /// Every object as one persistent map (cheap to clone, and to diff
    /// against an earlier publication's).
    pub fn object_map(&self) -> ObjectMap {
        self.all.clone()
    }

    /// The same objects, without cloning.
    pub fn iter(&self) -> impl Iterator<Item = &ClusterObject> {
        KINDS
            .iter()
            .filter_map(|kind| self.kinds.get(kind))
            .flat_map(|view| view.objects.values().map(|o| &**o))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.kinds.values().map(|v| v.objects.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&ClusterObject> {
        self.kinds
            .get(key.kind.as_str())?
            .objects
            .get(key)
            .map(|o| &**o)
    }

    /// Objects currently left out because they did not decode, with the
    /// reason, as `Kind/namespace/name: reason`. An object that is fixed or
    /// deleted leaves this list.
    pub fn skipped(&self) -> Vec<String> {
        KINDS
            .iter()
            .filter_map(|kind| self.kinds.get(kind))
            .flat_map(|view| view.skipped.iter())
            .map(|(key, reason)| format!("{key}: {reason}"))
            .collect()
    }

    /// The optional kinds the API server does not serve (or forbids) now,
    /// with the status code it answered; what `/readyz` and logs may show.
    pub fn not_served(&self) -> Vec<(&'static str, u16)> {
        KINDS
            .iter()
            .filter_map(|kind| Some((*kind, self.kinds.get(kind)?.status.not_served?)))
            .collect()
    }

    /// The watch status of `kind` (`"Pod"`, …).
    pub fn status(&self, kind: &str) -> Option<&KindStatus> {
        self.kinds.get(kind).map(|v| &v.status)
    }

    /// When the oldest change after publication `generation` was received:
    /// what a consumer that last synced `generation` passes as `seen_at`.
    /// `None` when nothing was published after it. Only the last 64
    /// publications are remembered; past that, the oldest remembered time
    /// (later than the truth) is returned.
    pub fn seen_since(&self, generation: u64) -> Option<SystemTime> {
        if generation >= self.generation {
            return None;
        }
        self.history
            .iter()
            .find(|(g, _)| *g > generation)
            .map(|(_, at)| *at)
            .or(Some(self.seen_at))
    }
}
