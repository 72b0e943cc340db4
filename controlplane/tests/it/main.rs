//! The control-plane binary as operators run it.

mod render;
mod unallocated;
