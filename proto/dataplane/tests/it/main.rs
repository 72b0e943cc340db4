//! Integration tests of the `setpoint-dataplane` contract, one binary.
//!
//! - `props`: property tests of the diff/apply/digest laws over generated
//!   valid states, whole and split into fragments.
//! - `golden`: pins the digest encoding.
//! - `validation`: table tests of `NodeDataplane::validate`.
//! - `render`: the kernel-tool renderings, JSON and `SetEntry` text.
//! - `model`: canonical forms of the atoms (real server order, rule
//!   targets).
//!
//! Fixtures are built with the builders in `fixtures`.

mod fixtures;
mod golden;
mod model;
mod props;
mod render;
mod validation;
