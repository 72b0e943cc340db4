//! The control plane as a library: the leader (objects → revisions), the
//! agent stream (revisions → agents), metrics, and `serve` wiring them.

pub mod demo;
pub mod leader;
pub mod metrics;
pub mod serve;
pub mod stream;
