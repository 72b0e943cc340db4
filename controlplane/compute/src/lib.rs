//! Compute: the cluster as Kubernetes objects → each node's desired
//! dataplane ([`setpoint_dataplane::NodeDataplane`]).
//!
//! ```text
//!  ClusterObject ──convert──▶ model ──plan──▶ atoms ──index──▶ fragments ──▶ NodeDataplane
//!  (k8s-openapi)   (validated)      (per Service)     (shared: all / zone / node)
//! ```
//!
//! Pure: no I/O, no async, no clocks. Bad objects become [`index::Problem`]s,
//! never panics, and never affect other objects.

pub mod admit;
pub mod convert;
pub mod index;
pub mod layout;
pub mod model;
pub mod object;
pub mod plan;
pub mod policy;
pub mod synthetic;

pub use index::{CommitOutcome, Index, Problem};
pub use layout::ComputeConfig;
pub use object::{ClusterObject, Kind, ObjectKey, ObjectMap, SharedObject, object_map};
