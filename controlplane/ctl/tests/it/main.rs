//! `setpointctl` driven as an operator drives it, against a control plane
//! started in this process (SQLite, the example manifests, dry-run agents).

mod cli;
