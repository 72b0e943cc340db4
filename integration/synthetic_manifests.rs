//! A synthetic cluster (`setpoint_compute::synthetic`) written as manifest
//! files the control plane's manifest source reads: `nodes.yaml`,
//! `services.yaml` and one file per EndpointSlice, so a one-endpoint
//! change rewrites one small file. Shared by the fleet benchmark and the
//! large-state test (`#[path]`-included by both).

use std::path::Path;

use setpoint_compute::ClusterObject;
use setpoint_compute::synthetic::{self, ClusterShape};

pub fn yaml(object: &ClusterObject) -> String {
    let text = match object {
        ClusterObject::Service(o) => serde_yaml_ng::to_string(o),
        ClusterObject::EndpointSlice(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Node(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Pod(o) => serde_yaml_ng::to_string(o),
        ClusterObject::Namespace(o) => serde_yaml_ng::to_string(o),
        ClusterObject::NetworkPolicy(o) => serde_yaml_ng::to_string(o),
        ClusterObject::ServiceCidr(o) => serde_yaml_ng::to_string(o),
        ClusterObject::ClusterNetworkPolicy(o) => serde_yaml_ng::to_string(o),
    };
    text.expect("k8s objects serialise")
}

/// Writes EndpointSlice `i` at `generation` (odd generations mark one
/// endpoint not ready).
pub fn write_slice(dir: &Path, i: usize, shape: &ClusterShape, generation: usize) {
    let path = dir.join(format!("slice-{i:05}.yaml"));
    let tmp = dir.join(format!(".slice-{i:05}.tmp"));
    std::fs::write(&tmp, yaml(&synthetic::slice(i, shape, generation))).expect("write");
    // A rename is atomic: the control plane never reads half a file.
    std::fs::rename(&tmp, &path).expect("rename");
}

/// Writes the whole cluster into `dir`.
pub fn write_cluster(dir: &Path, shape: &ClusterShape) {
    let nodes: String = (0..shape.nodes)
        .map(|i| format!("---\n{}", yaml(&synthetic::node(i, shape))))
        .collect();
    std::fs::write(dir.join("nodes.yaml"), nodes).expect("nodes");
    let services: String = (0..shape.services)
        .map(|i| format!("---\n{}", yaml(&synthetic::service(i))))
        .collect();
    std::fs::write(dir.join("services.yaml"), services).expect("services");
    for i in 0..shape.services {
        write_slice(dir, i, shape, 0);
    }
}
