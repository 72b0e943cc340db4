//! The contract between control plane and agent: a node's desired kernel
//! dataplane, its stable digest, typed diffs, validation and renderings.
//!
//! ```text
//!  compute ──▶ NodeDataplane ──validate──▶ store / stream ──diff──▶ agent
//!              (fragments)       digest()                 apply()   (kernel)
//! ```
//!
//! A [`NodeDataplane`] is a set of disjoint [`Fragment`]s; its meaning is
//! their union. The digest is a sum over atoms (see [`digest`]), so it does
//! not depend on the split and the agent can recompute it from the kernel.
//!
//! Pure: no I/O, no async.

pub mod atoms;
pub mod diff;
pub mod digest;
pub mod explain;
pub mod fragment;
pub mod model;
pub mod render;
pub mod state;
pub mod template;
pub mod text;
pub mod validate;
mod wire;

pub use atoms::{AtomError, AtomRun};
pub use diff::{ApplyError, Change, Diff, Misfit, apply, diff};
pub use digest::Digest;
pub use fragment::{Fragment, Maps};
pub use model::*;
pub use render::{Format, render};
pub use state::NodeDataplane;
pub use validate::Invalid;
