//! An empty stand-in named like the banned crate.
