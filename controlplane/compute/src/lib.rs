pub mod object;
pub use object::{ClusterObject, ObjectKey};
