//! One module per verb: the admin call it makes and what it prints, as a
//! table (the default) or JSON (`-o json`).

mod cluster_policies;
mod diff;
mod explain;
mod pins;
mod revisions;
mod show;
mod status;

pub use cluster_policies::cluster_policies;
pub use diff::diff;
pub use explain::explain;
pub use pins::{pause, resume, rollback};
pub use revisions::revisions;
pub use show::show;
pub use status::{status, watch};
