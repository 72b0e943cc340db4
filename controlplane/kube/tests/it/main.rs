//! The Kubernetes source against a mock API server, through the real kube
//! client: lists, watches, 410 Gone, dropped connections, bad objects.

mod fixtures;
mod mock;
mod source;
