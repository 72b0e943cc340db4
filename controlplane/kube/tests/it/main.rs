//! The Kubernetes source against a mock API server, through the real kube
//! client: lists, watches, 410 Gone, dropped connections, bad objects;
//! and the control plane serving from it to a real agent (`serve`).

mod fixtures;
mod lease;
mod mock;
mod serve;
mod source;
