//! The watch tasks and the task that folds their events into snapshots.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use imbl::ordmap::DiffItem;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::{Api, Client};
use setpoint_compute::policy::cluster::api::ClusterNetworkPolicy;
use setpoint_compute::{ClusterObject, ObjectKey, ObjectMap, SharedObject};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::kinds::{self, Watched};
use crate::lenient::Lenient;
use crate::snapshot::{HISTORY, KindView, Snapshot};

/// Watches Services, EndpointSlices (discovery.k8s.io/v1), Pods,
/// Namespaces, Nodes, NetworkPolicies, ServiceCIDRs and
/// ClusterNetworkPolicies cluster-wide and publishes the whole view as
/// [`Snapshot`]s.
pub struct KubeSource;

/// Tuning; [`Options::default`] is what production uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Delay before retrying after a failed list or watch.
    pub backoff: BackoffPolicy,
    /// At most this many watch events are folded into one publication.
    pub max_batch: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            backoff: BackoffPolicy::Default,
            max_batch: 1024,
        }
    }
}

/// How long a watcher waits after an error before it lists or watches again.
#[derive(Clone, Debug)]
pub enum BackoffPolicy {
    /// kube's `DefaultBackoff` (client-go's reflector: 0.8 s doubling to
    /// 30 s, with jitter, reset after 2 minutes without errors).
    ///
    /// Either policy is reset when the watch makes progress (a list
    /// completes, an event arrives), not merely when a retry starts.
    Default,
    /// `min` doubling to `max`, no jitter.
    Exponential { min: Duration, max: Duration },
}

impl BackoffPolicy {
    fn build(&self) -> Box<dyn Backoff> {
        match self {
            BackoffPolicy::Default => Box::new(DefaultBackoff::default()),
            BackoffPolicy::Exponential { min, max } => Box::new(Exponential {
                min: *min,
                max: *max,
                next: *min,
            }),
        }
    }
}

struct Exponential {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Exponential {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(self.max);
        Some(now)
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

impl KubeSource {
    /// Starts one watch task per kind and the task that publishes
    /// snapshots, with the default [`Options`]. See [`KubeSource::start_with`].
    pub fn start(client: Client) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
        KubeSource::start_with(client, Options::default())
    }

    /// Starts watching. The receiver holds an empty, not-ready snapshot at
    /// first; a new one is published after every batch of events that
    /// changed objects, skips or readiness. Wait for `ready` before
    /// computing from it.
    ///
    /// The tasks never stop on API errors (they retry with backoff and
    /// relist when a watch expires); they end when every receiver is
    /// dropped, or when the handle is aborted.
    pub fn start_with(
        client: Client,
        options: Options,
    ) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(Snapshot::empty(SystemTime::now()));
        let handle = tokio::spawn(run(client, options, tx));
        (rx, handle)
    }
}

/// One object from a watch, ready to store.
enum Entry {
    Object(ObjectKey, Box<ClusterObject>),
    /// Did not decode: key and reason.
    Bad(ObjectKey, String),
}

impl Entry {
    fn key(&self) -> &ObjectKey {
        match self {
            Entry::Object(key, _) | Entry::Bad(key, _) => key,
        }
    }
}

enum Update {
    Event(&'static str, Event<Entry>),
    /// A failed list or watch, as text; `expired` for 410 Gone (the watch
    /// fell too far behind and the kind is relisted: routine, not alarming).
    Error {
        kind: &'static str,
        error: String,
        expired: bool,
    },
    /// An optional kind's list or watch was answered 404 (`code`: the
    /// server does not serve it) or 403 (we may not list it); it counts as
    /// listed, empty. Not an error: a cluster without the CRD is normal.
    Absent {
        kind: &'static str,
        code: u16,
        error: String,
    },
}

fn entry<K: Watched>(object: Lenient<K>) -> Entry {
    match object {
        Lenient::Decoded(object) => {
            let object = kinds::prepare(object);
            Entry::Object(object.key(), Box::new(object))
        }
        Lenient::Undecodable { metadata, reason } => {
            Entry::Bad(kinds::key_of::<K>(&metadata), reason)
        }
    }
}

/// Lists and watches one kind until the receiver is gone.
///
/// Backoff is applied here rather than with `WatchStreamExt::backoff`:
/// kube's `StreamBackoff` resets on every `Ok` item, and the watcher emits
/// `Ok(Init)` before each list attempt, so a list that keeps failing would
/// be retried at the shortest delay forever. Here only progress (a
/// completed list, a watch event) resets it.
async fn watch_kind<K: Watched>(
    client: Client,
    mut backoff: Box<dyn Backoff>,
    tx: mpsc::Sender<Update>,
) {
    let api: Api<Lenient<K>> = Api::all(client);
    let mut events = watcher::watcher(api.clone(), K::config()).boxed();
    while let Some(item) = events.next().await {
        let (update, delay) = match item {
            Ok(event) => {
                if matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
                    backoff.reset();
                }
                (
                    Update::Event(K::KIND.as_str(), map_event(event, entry::<K>)),
                    None,
                )
            }
            Err(err) => {
                let update = match absent_code::<K>(&err) {
                    Some((code, listing)) => {
                        if !listing {
                            // The API went away under an open watch (its
                            // CRD deleted): the watcher would retry the
                            // watch alone forever. Start over from a list,
                            // so the kind is relisted whole once it is
                            // served again.
                            events = watcher::watcher(api.clone(), K::config()).boxed();
                        }
                        Update::Absent {
                            kind: K::KIND.as_str(),
                            code,
                            error: err.to_string(),
                        }
                    }
                    None => Update::Error {
                        kind: K::KIND.as_str(),
                        expired: matches!(&err, watcher::Error::WatchError(status) if status.code == 410),
                        error: err.to_string(),
                    },
                };
                (update, Some(backoff.next().unwrap_or(MAX_DELAY)))
            }
        };
        if tx.send(update).await.is_err() {
            return;
        }
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }
}

/// For an optional kind, the status code of an answer that means "not
/// served" (404) or "not ours to list" (403), and whether it answered the
/// list (else the start of a watch).
fn absent_code<K: Watched>(err: &watcher::Error) -> Option<(u16, bool)> {
    if !K::OPTIONAL {
        return None;
    }
    let (status, listing) = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => (status, true),
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => (status, false),
        _ => return None,
    };
    matches!(status.code, 403 | 404).then_some((status.code, listing))
}

/// The retry delay if a backoff policy runs out.
const MAX_DELAY: Duration = Duration::from_secs(30);

fn map_event<K, T>(event: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

fn spawn_kind<K: Watched>(
    tasks: &mut JoinSet<()>,
    client: &Client,
    options: &Options,
    tx: &mpsc::Sender<Update>,
) {
    let span = tracing::info_span!("watch", kind = K::KIND.as_str());
    tasks.spawn(
        watch_kind::<K>(client.clone(), options.backoff.build(), tx.clone()).instrument(span),
    );
}

async fn run(client: Client, options: Options, tx: watch::Sender<Snapshot>) {
    let max_batch = options.max_batch.max(1);
    let (updates_tx, mut updates) = mpsc::channel(max_batch);
    // Dropped (and so aborted) when this task ends or is aborted.
    let mut tasks = JoinSet::new();
    spawn_kind::<Namespace>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<Node>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<Service>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<EndpointSlice>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<Pod>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<NetworkPolicy>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<ServiceCIDR>(&mut tasks, &client, &options, &updates_tx);
    spawn_kind::<ClusterNetworkPolicy>(&mut tasks, &client, &options, &updates_tx);
    drop(updates_tx);

    let mut state = State::new(tx.borrow().clone());
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        batch.clear();
        tokio::select! {
            n = updates.recv_many(&mut batch, max_batch) => {
                if n == 0 {
                    tracing::warn!("every watch task ended");
                    return;
                }
            }
            () = tx.closed() => return,
        }
        let received = SystemTime::now();
        let mut changed = false;
        for update in batch.drain(..) {
            changed |= state.apply(update);
        }
        state.publish(&tx, changed, received);
    }
}

/// The source task's view, and each kind's relist in progress.
struct State {
    snapshot: Snapshot,
    /// Per kind, the list being received since `Init`, swapped in at `InitDone`.
    listing: std::collections::BTreeMap<&'static str, KindView>,
}

impl State {
    fn new(snapshot: Snapshot) -> State {
        State {
            snapshot,
            listing: Default::default(),
        }
    }

    /// Applies one update; true when objects, skips or readiness changed.
    fn apply(&mut self, update: Update) -> bool {
        let (kind, event) = match update {
            Update::Error {
                kind,
                error,
                expired,
            } => {
                if expired {
                    tracing::info!(kind, %error, "watch expired; relisting");
                } else {
                    tracing::warn!(kind, %error, "list or watch failed; retrying after backoff");
                }
                if let Some(view) = self.snapshot.kinds.get_mut(kind) {
                    view.status.errors += 1;
                    view.status.last_error = Some(error);
                }
                return false;
            }
            Update::Absent { kind, code, error } => {
                let Some(view) = self.snapshot.kinds.get_mut(kind) else {
                    return false;
                };
                // Said once per absence (and when its cause changes), not
                // at every retry.
                if view.status.not_served != Some(code) {
                    if code == 403 {
                        tracing::warn!(
                            kind,
                            %error,
                            "forbidden to list (the ClusterRole lacks it?); counted as listed \
                             with no objects; asking again after backoff"
                        );
                    } else {
                        tracing::info!(
                            kind,
                            "not served by the API server (not installed); counted as listed \
                             with no objects; asking again after backoff"
                        );
                    }
                } else {
                    tracing::debug!(kind, %error, "still not served");
                }
                view.status.not_served = Some(code);
                // A relist started for this attempt never completes.
                self.listing.remove(kind);
                if view.status.listed {
                    // Listed before: kept until a list says otherwise.
                    return false;
                }
                view.status.listed = true;
                return true;
            }
            Update::Event(kind, event) => (kind, event),
        };
        let Snapshot { kinds, all, .. } = &mut self.snapshot;
        let Some(view) = kinds.get_mut(kind) else {
            return false;
        };
        match event {
            Event::Init => {
                // Retrying a kind that is not served is not a relist.
                if view.status.listed && view.status.not_served.is_none() {
                    view.status.relists += 1;
                    tracing::info!(kind, "relisting");
                }
                self.listing.insert(kind, KindView::default());
                false
            }
            Event::InitApply(entry) => {
                if let Some(listing) = self.listing.get_mut(kind) {
                    let (_, skipped) = store(listing, None, entry, kind);
                    self.snapshot.skipped_total += u64::from(skipped);
                }
                false
            }
            Event::InitDone => {
                let Some(listing) = self.listing.remove(kind) else {
                    return false;
                };
                tracing::info!(
                    kind,
                    objects = listing.objects.len(),
                    skipped = listing.skipped.len(),
                    "listed"
                );
                if view.status.not_served.take().is_some() {
                    tracing::info!(kind, "served now");
                }
                let mut changed = !view.status.listed || listing.skipped != view.skipped;
                for item in view.objects.diff(&listing.objects) {
                    changed = true;
                    match item {
                        DiffItem::Add(key, object)
                        | DiffItem::Update {
                            new: (key, object), ..
                        } => {
                            all.insert(key.clone(), object.clone());
                        }
                        DiffItem::Remove(key, _) => {
                            all.remove(key);
                        }
                    }
                }
                view.objects = listing.objects;
                view.skipped = listing.skipped;
                view.status.listed = true;
                changed
            }
            Event::Apply(entry) => {
                let (changed, skipped) = store(view, Some(all), entry, kind);
                self.snapshot.skipped_total += u64::from(skipped);
                changed
            }
            Event::Delete(entry) => {
                let key = entry.key();
                all.remove(key);
                let had = view.objects.remove(key).is_some();
                let was_skipped = view.skipped.remove(key).is_some();
                had || was_skipped
            }
        }
    }

    fn publish(&mut self, tx: &watch::Sender<Snapshot>, changed: bool, received: SystemTime) {
        let ready = self.snapshot.kinds.values().all(|v| v.status.listed);
        let changed = changed || ready != self.snapshot.ready;
        if changed {
            let s = &mut self.snapshot;
            if ready && !s.ready {
                tracing::info!(objects = s.len(), "every kind listed; ready");
            }
            s.ready = ready;
            s.generation += 1;
            s.seen_at = received;
            s.history.push_back((s.generation, received));
            while s.history.len() > HISTORY {
                s.history.pop_front();
            }
        }
        let snapshot = self.snapshot.clone();
        // Status-only updates are stored without waking anyone.
        tx.send_if_modified(|current| {
            *current = snapshot;
            changed
        });
    }
}

/// Puts `entry` in `view` (and in `all`, the published view of every
/// kind, unless it goes to a listing in progress): (whether the view
/// changed, whether it was a skip).
fn store(
    view: &mut KindView,
    all: Option<&mut ObjectMap>,
    entry: Entry,
    kind: &'static str,
) -> (bool, bool) {
    match entry {
        Entry::Object(key, object) => {
            let mut changed = view.skipped.remove(&key).is_some();
            if view.objects.get(&key).is_none_or(|o| **o != *object) {
                let object = SharedObject::new(*object);
                if let Some(all) = all {
                    all.insert(key.clone(), object.clone());
                }
                view.objects.insert(key, object);
                changed = true;
            }
            (changed, false)
        }
        Entry::Bad(key, reason) => {
            tracing::warn!(kind, object = %key, %reason, "skipping an object that does not decode");
            if let Some(all) = all {
                all.remove(&key);
            }
            let mut changed = view.objects.remove(&key).is_some();
            if view.skipped.get(&key) != Some(&reason) {
                view.skipped.insert(key, reason);
                changed = true;
            }
            (changed, true)
        }
    }
}
