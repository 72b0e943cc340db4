//! The manifest reader under fire: arbitrary bytes and valid manifests with
//! a few bytes changed, as YAML and as JSON. Every outcome is objects and
//! skips with reasons — never a panic — and the allocations stay in
//! proportion to the file.

use std::path::Path;

use proptest::prelude::*;
use setpoint_source::{Limits, parse_bytes};

use crate::hostile::{arbitrary_bytes, assert_bounded, edited, edits, measure};

const YAML: &str = "# shop
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: \"front\"}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
  nodeName: node-a
ports:
- {name: http, port: 8080, protocol: TCP}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}
  status:
    addresses:
    - {type: InternalIP, address: 192.168.0.10}
";

const JSON: &str = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.11"}]}}
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "deny", "namespace": "shop"},
 "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
  "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}
"#;

fn check(bytes: &[u8], origin: &str) {
    let (report, allocated) = measure(|| parse_bytes(bytes, Path::new(origin), &Limits::default()));
    // serde_yaml_ng buffers a document's events and builds its tree: a few
    // hundred bytes per input byte at worst, never what a claim asks for.
    assert_bounded(origin, bytes, allocated, 512, 1 << 20);
    for skipped in &report.skipped {
        assert_eq!(skipped.file, Path::new(origin));
        assert!(!skipped.reason.is_empty(), "{skipped:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_as_yaml_and_json(bytes in arbitrary_bytes()) {
        check(&bytes, "m.yaml");
        check(&bytes, "m.json");
    }

    #[test]
    fn edited_yaml(edits in edits()) {
        check(&edited(YAML.as_bytes(), &edits), "m.yaml");
    }

    #[test]
    fn edited_json(edits in edits()) {
        check(&edited(JSON.as_bytes(), &edits), "m.json");
        // Read as YAML too (a `.yaml` file may hold JSON).
        check(&edited(JSON.as_bytes(), &edits), "m.yaml");
    }
}

#[test]
fn the_valid_manifests_load() {
    let report = parse_bytes(YAML.as_bytes(), Path::new("m.yaml"), &Limits::default());
    assert_eq!(report.objects.len(), 3, "{:?}", report.skipped);
    let report = parse_bytes(JSON.as_bytes(), Path::new("m.json"), &Limits::default());
    assert_eq!(report.objects.len(), 2, "{:?}", report.skipped);
}
