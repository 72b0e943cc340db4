//! The objects the index consumes, as both sources (manifest files, the
//! Kubernetes API) produce them: plain k8s-openapi types, not yet validated.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// One Kubernetes object of a kind Setpoint reads.
// Objects are moved once from a source into the index; boxing would only
// add an allocation per object.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Pod(Pod),
    Namespace(Namespace),
    NetworkPolicy(NetworkPolicy),
}

impl ClusterObject {
    /// The API kind, as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterObject::Service(_) => "Service",
            ClusterObject::EndpointSlice(_) => "EndpointSlice",
            ClusterObject::Node(_) => "Node",
            ClusterObject::Pod(_) => "Pod",
            ClusterObject::Namespace(_) => "Namespace",
            ClusterObject::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    /// `namespace/name` for namespaced kinds (`default` when unset), `name`
    /// for cluster-scoped ones; an empty name stays empty and is reported by
    /// validation.
    pub fn key(&self) -> ObjectKey {
        let meta = match self {
            ClusterObject::Service(o) => &o.metadata,
            ClusterObject::EndpointSlice(o) => &o.metadata,
            ClusterObject::Node(o) => &o.metadata,
            ClusterObject::Pod(o) => &o.metadata,
            ClusterObject::Namespace(o) => &o.metadata,
            ClusterObject::NetworkPolicy(o) => &o.metadata,
        };
        let namespace = match self {
            ClusterObject::Node(_) | ClusterObject::Namespace(_) => String::new(),
            // As the API server does for an object created without one.
            _ => meta
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".to_string()),
        };
        ObjectKey {
            kind: self.kind(),
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names come from tenants: one with a newline is shown escaped.
        let name = crate::convert::printable(&self.name);
        if self.namespace.is_empty() {
            write!(f, "{}/{name}", self.kind)
        } else {
            let namespace = crate::convert::printable(&self.namespace);
            write!(f, "{}/{namespace}/{name}", self.kind)
        }
    }
}
