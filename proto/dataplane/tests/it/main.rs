//! Integration tests of the `setpoint-dataplane` contract, one binary.
//!
//! - `props`: property tests of the diff/apply/digest laws over generated
//!   valid states, whole and split into fragments.
//! - `golden`: pins the digest encoding.
//! - `facts`: health checks and node conditions through digest, diff,
//!   JSON, validation, the kernel view and the text render.
//! - `validation`: table tests of `NodeDataplane::validate`.
//! - `render`: the kernel-tool renderings, JSON and `SetEntry` text.
//! - `model`: canonical forms of the atoms (real server order, rule
//!   targets).
//! - `decoders`: state and diff decoders fed arbitrary and edited bytes
//!   (`hostile`: the inputs and a counting allocator, shared with the
//!   store's chunk decoder tests).
//!
//! Fixtures are built with the builders in `fixtures`.

mod decoders;
mod facts;
mod fixtures;
mod golden;
mod hostile;
mod model;
mod props;
mod render;
mod validation;
