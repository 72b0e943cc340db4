//! The eight kinds Setpoint reads: how each is watched, and what of it is kept.
//!
//! Objects are trimmed to the fields compute reads before they are stored,
//! and `resourceVersion` and `managedFields` are dropped from all of them,
//! so an update that changes nothing compute reads (a Node heartbeat, a Pod
//! condition) leaves the stored object equal and is no change at all
//! downstream. Whoever makes compute read a new Pod or Node field must keep
//! it here too (`trimmed_pod_and_node_convert_the_same` guards the fields
//! read today).

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use setpoint_compute::policy::cluster::api::ClusterNetworkPolicy;
use setpoint_compute::{ClusterObject, Kind, ObjectKey};

use crate::trigger::TRIGGER_ANNOTATION;

/// The kinds, in the order snapshots list them.
pub const KINDS: [&str; 8] = [
    "Namespace",
    "Node",
    "Service",
    "EndpointSlice",
    "Pod",
    "NetworkPolicy",
    "ServiceCIDR",
    "ClusterNetworkPolicy",
];

/// A kind the source watches.
pub(crate) trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// As in `ClusterObject::kind`.
    const KIND: Kind;
    const NAMESPACED: bool;
    /// The API server may not serve this kind (or may not let Setpoint
    /// list it): a list answered 404 or 403 counts as listed with no
    /// objects, so the source still becomes ready, and is retried after
    /// the backoff like any failed list.
    const OPTIONAL: bool = false;

    /// List and watch parameters.
    fn config() -> watcher::Config {
        watcher::Config::default()
    }

    /// Drops what compute does not read (beyond the common metadata).
    fn trim(&mut self) {}

    fn wrap(self) -> ClusterObject;
}

/// The object to store, trimmed and with the manifest source's namespace
/// rules: namespaced objects carry a namespace (`default` when unset),
/// cluster-scoped ones none.
pub(crate) fn prepare<K: Watched>(mut object: K) -> ClusterObject {
    object.trim();
    let meta = object.meta_mut();
    meta.resource_version = None;
    meta.managed_fields = None;
    if !K::NAMESPACED {
        meta.namespace = None;
    } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
    object.wrap()
}

/// The key an object of kind `K` with this metadata has, as
/// `ClusterObject::key` would compute it; for objects that did not decode.
pub(crate) fn key_of<K: Watched>(meta: &ObjectMeta) -> ObjectKey {
    let namespace = if K::NAMESPACED {
        meta.namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    } else {
        String::new()
    };
    ObjectKey {
        kind: K::KIND,
        namespace,
        name: meta.name.clone().unwrap_or_default(),
    }
}

impl Watched for Service {
    const KIND: Kind = Kind::Service;
    const NAMESPACED: bool = true;
    fn wrap(self) -> ClusterObject {
        ClusterObject::Service(self)
    }
}

impl Watched for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    const NAMESPACED: bool = true;
    /// Compute reads a slice's name, namespace and labels (the Service it
    /// belongs to, its proxy) besides the endpoints and ports; the leader
    /// reads the trigger annotation. Other annotations, owner references
    /// and timestamps are dropped.
    fn trim(&mut self) {
        let meta = std::mem::take(&mut self.metadata);
        let annotations = meta.annotations.and_then(|mut a| {
            let trigger = a.remove(TRIGGER_ANNOTATION)?;
            Some([(TRIGGER_ANNOTATION.to_owned(), trigger)].into())
        });
        self.metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            labels: meta.labels,
            annotations,
            ..ObjectMeta::default()
        };
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::EndpointSlice(self)
    }
}

impl Watched for Namespace {
    const KIND: Kind = Kind::Namespace;
    const NAMESPACED: bool = false;
    /// Policy reads a namespace's labels only.
    fn trim(&mut self) {
        self.spec = None;
        self.status = None;
        self.metadata.annotations = None;
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::Namespace(self)
    }
}

impl Watched for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    const NAMESPACED: bool = true;
    fn wrap(self) -> ClusterObject {
        ClusterObject::NetworkPolicy(self)
    }
}

/// networking.k8s.io/v1 since Kubernetes 1.33 (beta before, off by
/// default): older clusters and clusters with the API disabled answer 404,
/// and a control plane upgraded before its ClusterRole gets 403; either way
/// the service CIDRs are then `--service-cidr`'s alone.
impl Watched for ServiceCIDR {
    const KIND: Kind = Kind::ServiceCidr;
    const NAMESPACED: bool = false;
    const OPTIONAL: bool = true;
    /// Compute reads `spec.cidrs` only.
    fn trim(&mut self) {
        let meta = std::mem::take(&mut self.metadata);
        self.metadata = ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            ..ObjectMeta::default()
        };
        self.status = None;
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::ServiceCidr(self)
    }
}

/// policy.networking.k8s.io/v1alpha2, a CRD (kubernetes-sigs/network-policy-api)
/// that most clusters do not have: 404 until it is installed, 403 while the
/// ClusterRole predates it. Either way there are no cluster-wide tiers, and
/// NetworkPolicy alone decides.
impl Watched for ClusterNetworkPolicy {
    const KIND: Kind = Kind::ClusterNetworkPolicy;
    const NAMESPACED: bool = false;
    const OPTIONAL: bool = true;
    /// Compute reads the name and the spec. The status is dropped: it is
    /// where implementations (Setpoint too, later) write their conditions,
    /// and a write there must not recompute every node's policy.
    /// `generation` is kept: it names the spec revision a status reports on.
    /// Of the annotations, only the one asking to log accepted verdicts.
    fn trim(&mut self) {
        use setpoint_compute::policy::cluster::LOG_ACCEPTED_ANNOTATION;
        let meta = std::mem::take(&mut self.metadata);
        let annotations = meta.annotations.and_then(|mut a| {
            let log = a.remove(LOG_ACCEPTED_ANNOTATION)?;
            Some([(LOG_ACCEPTED_ANNOTATION.to_owned(), log)].into())
        });
        self.metadata = ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            generation: meta.generation,
            labels: meta.labels,
            annotations,
            ..ObjectMeta::default()
        };
        self.status = None;
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::ClusterNetworkPolicy(self)
    }
}

impl Watched for Node {
    const KIND: Kind = Kind::Node;
    const NAMESPACED: bool = false;
    /// Compute reads a node's labels (zone), `spec.podCIDR(s)`, its
    /// InternalIP/ExternalIP addresses, and whether it is draining (a
    /// deletion timestamp, the autoscaler's to-be-deleted taint; other
    /// taints are dropped). Conditions, images and heartbeats are most of
    /// a Node's updates and none of compute's business.
    fn trim(&mut self) {
        let meta = std::mem::take(&mut self.metadata);
        self.metadata = ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            labels: meta.labels,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        };
        self.spec = self.spec.take().map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            taints: s.taints.map(|taints| {
                taints
                    .into_iter()
                    .filter(|t| t.key == setpoint_compute::convert::TO_BE_DELETED_TAINT)
                    .collect()
            }),
            ..NodeSpec::default()
        });
        self.status = self.status.take().map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        });
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::Node(self)
    }
}

/// Terminal pods are not watched: compute drops a `Succeeded` or `Failed`
/// pod anyway. Pending pods are watched: one that already has an IP is a
/// policy peer and may be policed. When a watched pod turns terminal, the
/// API server reports it as deleted from this watch.
pub const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

impl Watched for Pod {
    const KIND: Kind = Kind::Pod;
    const NAMESPACED: bool = true;
    fn config() -> watcher::Config {
        watcher::Config::default().fields(POD_FIELD_SELECTOR)
    }
    /// Compute reads a pod's labels, node, host networking, phase, IPs and
    /// named container ports; a metadata-only watch would miss all but the
    /// labels, so the full object is watched and cut down here.
    fn trim(&mut self) {
        let meta = std::mem::take(&mut self.metadata);
        self.metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            labels: meta.labels,
            ..ObjectMeta::default()
        };
        self.spec = self.spec.take().map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
        self.status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..PodStatus::default()
        });
    }
    fn wrap(self) -> ClusterObject {
        ClusterObject::Pod(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_compute::{convert, policy};

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1",
                "resourceVersion": "42", "labels": {"app": "web"},
                "annotations": {"big": "x"},
                "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "hostNetwork": false, "serviceAccountName": "sa",
                "containers": [{"name": "c", "image": "img", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Pending", "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap()
    }

    fn node() -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "resourceVersion": "9",
                "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"], "providerID": "p"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"},
                    {"type": "Hostname", "address": "n1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["img"], "sizeBytes": 1}]}
        }))
        .unwrap()
    }

    #[test]
    fn trimmed_pod_and_node_convert_the_same() {
        let full = pod();
        let ClusterObject::Pod(trimmed) = prepare(full.clone()) else {
            panic!("not a pod")
        };
        assert_eq!(
            policy::convert_pod(&full).unwrap(),
            policy::convert_pod(&trimmed).unwrap()
        );
        assert!(trimmed.metadata.annotations.is_none());
        assert!(trimmed.metadata.resource_version.is_none());
        assert!(trimmed.status.as_ref().unwrap().conditions.is_none());

        let full = node();
        let ClusterObject::Node(trimmed) = prepare(full.clone()) else {
            panic!("not a node")
        };
        assert_eq!(
            convert::node(&full).unwrap(),
            convert::node(&trimmed).unwrap()
        );
        assert!(trimmed.status.as_ref().unwrap().images.is_none());
    }

    /// What makes a node draining survives the trim; other taints do not.
    #[test]
    fn trimmed_nodes_keep_what_drains_them() {
        let mut deleted = node();
        deleted.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap());
        let mut tainted = node();
        tainted.spec.as_mut().unwrap().taints = Some(
            serde_json::from_value(serde_json::json!([
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000",
                    "effect": "NoSchedule"}
            ]))
            .unwrap(),
        );
        for (full, draining) in [(node(), false), (deleted, true), (tainted, true)] {
            let ClusterObject::Node(trimmed) = prepare(full.clone()) else {
                panic!("not a node")
            };
            let model = convert::node(&trimmed).unwrap();
            assert_eq!(model, convert::node(&full).unwrap());
            assert_eq!(model.draining, draining);
            let taints = trimmed.spec.and_then(|s| s.taints).unwrap_or_default();
            assert!(
                taints
                    .iter()
                    .all(|t| t.key == "ToBeDeletedByClusterAutoscaler")
            );
        }
    }

    /// The trim keeps what compute reads and the trigger annotation the
    /// programming latency starts from.
    #[test]
    fn trimmed_slices_convert_the_same_and_keep_the_trigger_time() {
        let full: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "uid": "u2",
                "resourceVersion": "7", "generation": 3,
                "labels": {"kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "annotations": {TRIGGER_ANNOTATION: "2026-12-07T17:19:57Z", "other": "x"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "s1"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}, "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let ClusterObject::EndpointSlice(trimmed) = prepare(full.clone()) else {
            panic!("not a slice")
        };
        let outcome = convert::endpoint_slice(&full, "default");
        assert!(
            matches!(outcome, convert::SliceOutcome::Used(_, ref r) if r.is_empty()),
            "{outcome:?}"
        );
        assert_eq!(outcome, convert::endpoint_slice(&trimmed, "default"));
        let annotations = trimmed.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.into_iter().collect::<Vec<_>>(),
            [(
                TRIGGER_ANNOTATION.to_string(),
                "2026-12-07T17:19:57Z".to_string()
            )]
        );
        assert!(trimmed.metadata.owner_references.is_none());
        // Without the annotation there is no annotation map at all.
        let mut bare = full;
        bare.metadata.annotations = Some([("other".to_string(), "x".to_string())].into());
        let ClusterObject::EndpointSlice(trimmed) = prepare(bare) else {
            panic!("not a slice")
        };
        assert!(trimmed.metadata.annotations.is_none());
    }

    #[test]
    fn a_heartbeat_is_no_change() {
        let mut later = node();
        later.metadata.resource_version = Some("10".into());
        if let Some(status) = later.status.as_mut() {
            status.conditions = None;
        }
        assert_eq!(prepare(node()), prepare(later));
    }

    /// A status write (another implementation's conditions, or Setpoint's
    /// own later) is no change; a spec edit is.
    #[test]
    fn a_cluster_network_policy_keeps_its_spec_and_drops_its_status() {
        let written = |priority: i64, status: &str| -> ClusterNetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "p", "namespace": "bogus", "uid": "u3",
                    "generation": 2, "resourceVersion": "11",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                    "managedFields": [{"manager": "kubectl"}]},
                "spec": {"tier": "Admin", "priority": priority,
                    "subject": {"namespaces": {}},
                    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
                "status": {"conditions": [{"type": "Ready", "status": status, "reason": "r",
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        let ClusterObject::ClusterNetworkPolicy(trimmed) = prepare(written(5, "True")) else {
            panic!("not a ClusterNetworkPolicy")
        };
        assert_eq!(trimmed.spec, written(5, "True").spec);
        assert!(trimmed.status.is_none());
        assert_eq!(trimmed.metadata.namespace, None);
        assert_eq!(trimmed.metadata.generation, Some(2));
        assert!(trimmed.metadata.annotations.is_none());
        assert!(trimmed.metadata.managed_fields.is_none());
        assert_eq!(prepare(written(5, "True")), prepare(written(5, "False")));
        assert_ne!(prepare(written(5, "True")), prepare(written(6, "True")));
        assert_eq!(
            prepare(written(5, "True")).key().to_string(),
            "ClusterNetworkPolicy/p"
        );
    }

    #[test]
    fn namespaces_follow_the_manifest_rules() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("shop".into());
        ns.metadata.namespace = Some("bogus".into());
        assert_eq!(prepare(ns).key().namespace, "");
        let mut svc = Service::default();
        svc.metadata.name = Some("web".into());
        assert_eq!(prepare(svc).key().namespace, "default");
    }
}
