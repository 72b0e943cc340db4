//! The protocol crate from outside: its decoders under hostile input.

/// The contract's kit for hostile inputs, shared rather than copied.
#[path = "../../../dataplane/tests/it/hostile.rs"]
mod hostile;

mod decoders;
