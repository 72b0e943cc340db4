//! The control plane as a library: the leader (objects → revisions), the
//! agent stream (revisions → agents), the admin API (revisions, rollback,
//! pause/resume, status for operators), metrics, and `serve` wiring them.

pub mod admin;
pub mod args;
pub mod delivery;
pub mod election;
pub mod explain;
pub mod fanout;
pub mod leader;
pub mod metrics;
pub mod peer_limits;
pub mod reload;
pub mod rollout;
pub mod serve;
pub mod sli;
pub mod status;
pub mod stream;
pub mod tls;
