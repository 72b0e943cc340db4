//! The node agent's library: the planner that orders a diff into kernel
//! operations (make-before-break), and an in-memory kernel to prove the
//! order; the ipset, iptables, IPVS (generic netlink) and address
//! (rtnetlink) backends with read-back; the executor, `Applier::plan` /
//! `apply(base, want)` from `Base::Kernel` (the whole kernel read) or
//! `Base::Held(&Verified)` (a state this agent applied and verified) on a
//! `Kernel` — `NodeKernel`, `DryRun` or the `KernelModel` — checked by
//! reading back; and the client, the agent's side of the stream.
//!
//! ```text
//!  stream ─client─▶ apply(base, want)     base: Base::Kernel | Base::Held(&Verified)
//!                     └─plan()─▶ [Op] by phase ─▶ Kernel ─▶ read back == want?
//!                                   NodeKernel | DryRun | KernelModel (tests)
//! ```

pub mod apply;
pub mod client;
pub mod health;
pub mod ipset;
pub mod iptables;
pub mod ipvs;
pub mod kernel_model;
pub mod link;
pub mod local_state;
pub mod metrics;
mod netlink;
pub mod node_addresses;
pub use netlink::in_netns;
pub mod plan;
pub mod services;
pub mod sysctl;
pub mod target;
pub mod verdicts;
