//! The Kubernetes API source: the same objects as the manifest source
//! (`setpoint-source`), read from the API server with kube-rs watchers.
//!
//! ```text
//!  API server ─▶ watcher per kind (list, then watch; Lenient decoding;       ┐
//!               relist on 410 Gone, re-watch on a dropped connection,       │ mpsc
//!               backoff after errors)                                       ┘
//!      ─▶ source task: trim, key, relist buffers swapped in at InitDone
//!      ─▶ watch::Receiver<Snapshot> (full view per batch; ready once every kind listed)
//! ```
//!
//! Kinds: Namespaces, Nodes, Services, EndpointSlices (discovery.k8s.io/v1),
//! Pods (terminal ones excluded by a field selector), NetworkPolicies,
//! ServiceCIDRs (networking.k8s.io/v1) and ClusterNetworkPolicies
//! (policy.networking.k8s.io/v1alpha2, a CRD), cluster-wide. ServiceCIDRs
//! and ClusterNetworkPolicies are optional: a server that does not serve
//! them (404), or forbids listing them (403), counts as having none, says
//! so once ([`Snapshot::not_served`]), and is asked again after the backoff;
//! the other kinds' snapshot never waits for them. An object that does not decode is left out with its reason
//! ([`Snapshot::skipped`]) and counted; the rest of its list is kept.
//! Objects are trimmed to what compute reads (see `kinds`), and
//! EndpointSlices keep [`TRIGGER_ANNOTATION`], where the control plane's
//! programming latency starts.
//!
//! A consumer feeds [`Snapshot::objects`] to the leader exactly as it feeds
//! a manifest load's objects, once [`Snapshot::ready`] is true.

mod kinds;
pub mod lease;
mod lenient;
mod snapshot;
mod source;
mod trigger;

pub use kinds::{KINDS, POD_FIELD_SELECTOR};
pub use snapshot::{KindStatus, Snapshot};
pub use source::{BackoffPolicy, KubeSource, Options};
pub use trigger::{TRIGGER_ANNOTATION, parse_time, trigger_time};

/// The client crate, re-exported so a caller builds the `Client` with the
/// same kube version (`setpoint_kube::kube::Client::try_default()`).
pub use kube;
