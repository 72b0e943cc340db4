//! The objects the index consumes, as both sources (manifest files, the
//! Kubernetes API) produce them: plain k8s-openapi types, not yet validated.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};

use crate::policy::cluster::api::ClusterNetworkPolicy;

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
    /// networking.k8s.io/v1: ranges ClusterIPs are allocated from.
    ServiceCidr(ServiceCIDR),
    /// policy.networking.k8s.io/v1alpha2: cluster-wide policy tiers.
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

/// The kinds of object Setpoint reads.
///
/// Declared in the alphabetical order of their names: keys sort as they
/// did when the kind was its name, so problems and objects are listed in
/// the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ClusterNetworkPolicy,
    EndpointSlice,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
    ServiceCidr,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::ClusterNetworkPolicy,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::ServiceCidr,
    ];

    /// The API kind, as written in manifests.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }

    /// Nodes, Namespaces, ServiceCIDRs and ClusterNetworkPolicies have no
    /// namespace.
    pub const fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node | Kind::Namespace | Kind::ServiceCidr | Kind::ClusterNetworkPolicy
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind equals its name as manifests spell it (`kind == "Node"`).
impl PartialEq<&str> for Kind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl ClusterObject {
    pub fn kind(&self) -> Kind {
        match self {
            ClusterObject::Service(_) => Kind::Service,
            ClusterObject::EndpointSlice(_) => Kind::EndpointSlice,
            ClusterObject::Node(_) => Kind::Node,
            ClusterObject::Pod(_) => Kind::Pod,
            ClusterObject::Namespace(_) => Kind::Namespace,
            ClusterObject::NetworkPolicy(_) => Kind::NetworkPolicy,
            ClusterObject::ServiceCidr(_) => Kind::ServiceCidr,
            ClusterObject::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
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
            ClusterObject::ServiceCidr(o) => &o.metadata,
            ClusterObject::ClusterNetworkPolicy(o) => &o.metadata,
        };
        let kind = self.kind();
        let namespace = if kind.is_namespaced() {
            // As the API server does for an object created without one.
            meta.namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".to_string())
        } else {
            String::new()
        };
        ObjectKey {
            kind,
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort by kind name, as they did when the kind was a string.
    #[test]
    fn kinds_sort_by_their_names() {
        for a in Kind::ALL {
            for b in Kind::ALL {
                assert_eq!(a.cmp(&b), a.as_str().cmp(b.as_str()), "{a} {b}");
            }
        }
    }
}

/// One object as sources hand it on: cloning counts a reference, and two
/// handles to one allocation are equal without looking inside, so a
/// source that re-publishes an unchanged object costs nothing to compare.
#[derive(Clone, Debug)]
pub struct SharedObject(std::sync::Arc<ClusterObject>);

impl SharedObject {
    pub fn new(object: ClusterObject) -> SharedObject {
        SharedObject(std::sync::Arc::new(object))
    }

    /// The object itself, copied only if another handle shares it.
    pub fn into_object(self) -> ClusterObject {
        std::sync::Arc::unwrap_or_clone(self.0)
    }
}

impl From<ClusterObject> for SharedObject {
    fn from(object: ClusterObject) -> Self {
        SharedObject::new(object)
    }
}

impl std::ops::Deref for SharedObject {
    type Target = ClusterObject;
    fn deref(&self) -> &ClusterObject {
        &self.0
    }
}

impl PartialEq for SharedObject {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

/// The cluster as a source sees it, by key. Persistent: a view derived
/// from the previous one by the objects that changed shares everything
/// else with it, so `diff` between the two costs what changed.
pub type ObjectMap = imbl::OrdMap<ObjectKey, SharedObject>;

/// `objects` as a map, the later of two with one key winning.
pub fn object_map(objects: impl IntoIterator<Item = ClusterObject>) -> ObjectMap {
    objects
        .into_iter()
        .map(|o| (o.key(), SharedObject::new(o)))
        .collect()
}
