//! The node agent's library: the planner that orders a diff into kernel
//! operations (make-before-break), and an in-memory kernel to prove the
//! order; the ipset and iptables backends with read-back. IPVS comes next.
//!
//! ```text
//!  Diff ──plan()──▶ [Op] (phases 1..7) ──executor──▶ kernel
//!                                      └─KernelModel (tests)
//! ```

pub mod apply;
pub mod ipset;
pub mod iptables;
pub mod kernel_model;
pub mod local_state;
pub mod plan;
pub mod services;
pub mod target;
