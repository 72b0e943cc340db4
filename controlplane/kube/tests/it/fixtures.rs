//! Builders for API objects as the server would send them (JSON).

use serde_json::{Value, json};

pub fn mk_namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

pub fn mk_node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

pub fn mk_service(ns: &str, name: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns,
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

pub fn mk_endpointslice(ns: &str, name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-a"}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

pub fn mk_pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub fn mk_policy(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {}}]}]}})
}

pub fn mk_service_cidr(name: &str, cidrs: &[&str]) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name, "finalizers": ["networking.k8s.io/service-cidr-finalizer"]},
        "spec": {"cidrs": cidrs},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "",
            "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})
}

/// An Admin-tier policy denying ingress to `app: web` pods from
/// namespace `from`, with a status as another implementation writes it.
pub fn mk_cluster_network_policy(name: &str, priority: i64, from: &str) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name, "generation": 1},
        "spec": {"tier": "Admin", "priority": priority,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
            "ingress": [{"name": "deny-from", "action": "Deny",
                "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": from}}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 9000}}}}]}]},
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Setup",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

/// One object of every kind but ClusterNetworkPolicy (a CRD most clusters
/// lack), in namespace `shop` (ServiceCIDRs are cluster-scoped).
pub fn small_cluster() -> Vec<Value> {
    vec![
        mk_namespace("shop"),
        mk_node("node-a", "192.0.2.10"),
        mk_service("shop", "web", "10.96.0.10"),
        mk_endpointslice("shop", "web-1", "web", &["10.244.0.5"]),
        mk_pod("shop", "web-0", "node-a", "10.244.0.5"),
        mk_policy("shop", "web-ingress"),
        mk_service_cidr("kubernetes", &["10.96.0.0/16"]),
    ]
}
