//! The node agent's library: the planner that orders a diff into kernel
//! operations (make-before-break), and an in-memory kernel to prove the
//! order; the ipset, iptables, IPVS (generic netlink) and address
//! (rtnetlink) backends with read-back; the executor that runs a plan and
//! verifies the kernel by digest.
//!
//! ```text
//!  Diff ──plan()──▶ [Op] (phases 1..7) ──executor──▶ kernel
//!                                      └─KernelModel (tests)
//! ```

pub mod apply;
pub mod client;
pub mod ipset;
pub mod iptables;
pub mod ipvs;
pub mod kernel_model;
pub mod link;
pub mod local_state;
pub mod metrics;
mod netlink;
pub use netlink::in_netns;
pub mod plan;
pub mod services;
pub mod sysctl;
pub mod target;
