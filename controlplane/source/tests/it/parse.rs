//! `parse_str`: text → objects, skips, ignored kinds and warnings.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use setpoint_compute::ClusterObject;
use setpoint_source::{Skipped, parse_str};

use crate::{check, check_as, render};

fn service(namespace: &str, name: &str, port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  ports:\n  - port: {port}\n"
    )
}

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

fn ports(object: &ClusterObject) -> Vec<ServicePort> {
    match object {
        ClusterObject::Service(Service {
            spec: Some(spec), ..
        }) => spec.ports.clone().unwrap_or_default(),
        other => panic!("not a Service with a spec: {other:?}"),
    }
}

#[test]
fn a_service_is_read_into_the_typed_object() {
    let report = parse_str(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
  - port: 443
    targetPort: 8443
",
        Path::new("m.yaml"),
    );
    assert_eq!(render(&report), "object Service/shop/web\n");
    let ports = ports(&report.objects[0]);
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].port, 80);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(ports[1].target_port, Some(IntOrString::Int(8443)));
}

#[test]
fn every_kind_read_is_dispatched_on_api_version_and_kind() {
    check(
        "apiVersion: v1
kind: Service
metadata: {name: s}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1}
addressType: IPv4
endpoints: []
---
apiVersion: v1
kind: Node
metadata: {name: n}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes, namespace: ignored}
spec: {cidrs: [10.96.0.0/12, 'fd00:96::/112']}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline, namespace: ignored}
spec: {tier: Baseline, priority: 0, subject: {namespaces: {}}}
",
        "
        object Service/default/s
        object EndpointSlice/default/s-1
        object Node/n
        object Pod/default/p
        object Namespace/shop
        object NetworkPolicy/default/deny
        object ServiceCIDR/kubernetes
        object ClusterNetworkPolicy/baseline
        ",
    );
}

#[test]
fn multi_document_files_count_documents_and_skip_empty_ones() {
    let text = format!(
        "# a leading comment is not a document
---
{}---
---
# only a comment
---
{}...
---
apiVersion: v1
kind: Service
metadata: {{namespace: shop}}
",
        service("shop", "a", "80"),
        service("shop", "b", "80"),
    );
    check(
        &text,
        "
        object Service/shop/a
        object Service/shop/b
        skipped m.yaml doc 5 (Service): missing metadata.name
        ",
    );
}

#[test]
fn crlf_line_endings() {
    let text = format!("{}---\n{}", node("n1"), node("n2")).replace('\n', "\r\n");
    check(&text, "object Node/n1\nobject Node/n2");
}

#[test]
fn lists_are_flattened_and_their_items_located() {
    check(
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
- apiVersion: v1
  kind: ServiceList
  items:
  - apiVersion: v1
    kind: Service
    metadata: {name: b, namespace: shop}
  - apiVersion: v1
    kind: Service
    metadata: {name: c, namespace: shop}
    spec: {ports: [{port: "x"}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d}
---
apiVersion: v1
kind: List
items: 3
---
apiVersion: v1
kind: List
---
apiVersion: example.com/v1
kind: AllowList
metadata: {name: not-a-list}
"#,
        r#"
        object Node/n1
        object Service/shop/b
        skipped m.yaml doc 1 (Service shop/c): items[1].items[1]: spec.ports[0].port: invalid type: string "x", expected i32
        skipped m.yaml doc 2 (List): items is a number, not a list
        ignored AllowList 1
        ignored Deployment 1
        "#,
    );
}

#[test]
fn unknown_kinds_are_ignored_and_counted() {
    check(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: knative}
",
        "
        ignored ConfigMap 1
        ignored Deployment 2
        ignored Service.serving.knative.dev 1
        ",
    );
}

#[test]
fn malformed_objects_are_skipped_and_their_neighbours_load() {
    let text = format!(
        "{}---
{}---
just a string
---
- a
- list
---
metadata: {{name: no-kind}}
---
kind: 5
---
apiVersion: v1
kind: Node
metadata:
  name: n
  labels: [not, a, map]
---
{}",
        service("shop", "before", "80"),
        service("shop", "bad-port", "eighty"),
        service("shop", "after", "80"),
    );
    check(
        &text,
        r#"
        object Service/shop/before
        object Service/shop/after
        skipped m.yaml doc 2 (Service shop/bad-port): spec.ports[0].port: invalid type: string "eighty", expected i32
        skipped m.yaml doc 3: not a mapping but a string
        skipped m.yaml doc 4: not a mapping but a list
        skipped m.yaml doc 5: missing kind
        skipped m.yaml doc 6: kind is a number, not a string
        skipped m.yaml doc 7 (Node n): metadata.labels: invalid type: sequence, expected a map
        "#,
    );
}

#[test]
fn a_syntax_error_skips_only_its_document() {
    let text = format!(
        "{}---
apiVersion: v1
kind: Node
metadata: {{name: [unclosed
---
{}",
        node("n1"),
        node("n3"),
    );
    // Lines count from the top of the file: the bad document is lines 5-8,
    // and the flow sequence opened on line 8 is still open at the next `---`.
    check(
        &text,
        "
        object Node/n1
        object Node/n3
        skipped m.yaml doc 2: invalid YAML: unclosed bracket '[' at line 8 column 18
        ",
    );
}

#[test]
fn a_known_kind_of_another_version_is_skipped() {
    check(
        "apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop}
addressType: IPv4
endpoints: []
---
apiVersion: v2
kind: Node
metadata: {name: n}
---
kind: Service
metadata: {name: web}
---
apiVersion: 1
kind: Pod
metadata: {name: p}
",
        "
        skipped m.yaml doc 1 (EndpointSlice shop/web-1): unsupported apiVersion discovery.k8s.io/v1beta1 for EndpointSlice, expected discovery.k8s.io/v1
        skipped m.yaml doc 2 (Node n): unsupported apiVersion v2 for Node, expected v1
        skipped m.yaml doc 3 (Service default/web): missing apiVersion, expected v1
        skipped m.yaml doc 4 (Pod default/p): apiVersion is a number, expected v1
        ",
    );
}

#[test]
fn objects_without_a_name_are_skipped() {
    check(
        "apiVersion: v1
kind: Service
---
apiVersion: v1
kind: Service
metadata: {namespace: shop, generateName: web-}
---
apiVersion: v1
kind: Node
metadata: {name: ''}
---
apiVersion: v1
kind: Node
metadata: {name: 7}
",
        "
        skipped m.yaml doc 1 (Service): missing metadata.name
        skipped m.yaml doc 2 (Service): missing metadata.name
        skipped m.yaml doc 3 (Node): missing metadata.name
        skipped m.yaml doc 4 (Node): invalid type: integer `7`, expected a string
        ",
    );
}

#[test]
fn namespaced_objects_default_to_default_and_cluster_scoped_have_none() {
    let report = parse_str(
        "apiVersion: v1
kind: Service
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ''}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: shop}
---
apiVersion: v1
kind: Node
metadata: {name: n, namespace: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, namespace: default}
",
        Path::new("m.yaml"),
    );
    assert_eq!(
        render(&report),
        "object Service/default/a\nobject Pod/default/b\nobject Pod/shop/c\n\
         object Node/n\nobject Namespace/shop\n"
    );
    for object in &report.objects {
        let namespace = object.key().namespace;
        match object {
            ClusterObject::Node(n) => assert_eq!(n.metadata.namespace, None),
            ClusterObject::Namespace(n) => assert_eq!(n.metadata.namespace, None),
            _ => assert!(!namespace.is_empty()),
        }
    }
}

#[test]
fn a_duplicate_replaces_the_earlier_object_with_a_warning() {
    // No namespace and `namespace: default` are the same object.
    let text = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{port: 80}}]}}
---
{}---
{}",
        node("n1"),
        service("default", "web", "81"),
    );
    let report = parse_str(&text, Path::new("m.yaml"));
    assert_eq!(
        render(&report),
        "object Service/default/web\nobject Node/n1\n\
         warning duplicate Service/default/web: m.yaml doc 3 replaces m.yaml doc 1\n"
    );
    assert_eq!(ports(&report.objects[0])[0].port, 81);
}

#[test]
fn merge_keys_are_applied() {
    check(
        "apiVersion: v1
kind: Service
metadata:
  <<: {name: web, namespace: shop}
",
        "object Service/shop/web",
    );
}

#[test]
fn json_text_is_read_as_json() {
    check_as(
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
   "spec": {"ports": [{"port": 80, "targetPort": "http"}]}}
]}
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
"#,
        "m.json",
        "
        object Node/n1
        object Service/default/web
        skipped m.json doc 3: invalid JSON: EOF while parsing a value at line 7 column 0
        ",
    );
}

#[test]
fn skipped_displays_as_one_line() {
    let mut skipped = Skipped {
        file: PathBuf::from("deploy/x.yaml"),
        document: 2,
        kind: Some("Service".into()),
        name: Some("default/web".into()),
        reason: "invalid type: string \"x\", expected i32".into(),
    };
    assert_eq!(
        skipped.to_string(),
        "deploy/x.yaml doc 2 (Service default/web): invalid type: string \"x\", expected i32"
    );
    skipped.document = 0;
    skipped.kind = None;
    skipped.name = None;
    skipped.reason = "not UTF-8 text".into();
    assert_eq!(skipped.to_string(), "deploy/x.yaml: not UTF-8 text");
}

#[test]
fn no_input_panics() {
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n\
                  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
                  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n\
                  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    let deep_list = |depth: usize| {
        format!(
            "{}{{apiVersion: v1, kind: Node, metadata: {{name: n}}}}{}",
            "{kind: List, items: [".repeat(depth),
            "]}".repeat(depth)
        )
    };
    // Within the nesting limit (each List is two levels), nested Lists are
    // followed all the way.
    check(&deep_list(30), "object Node/n");
    let too_deep = deep_list(200);
    let inputs = [
        "",
        "---",
        "...",
        "\0",
        "[",
        "{",
        "}",
        "\t\tkind: Service",
        "*unknown",
        "a: &x 1\nb: *y",
        "&a [*a]",
        "!!binary x",
        "? [a]\n: b",
        "%YAML 9.9\n---\na: 1",
        "kind:\n  - List",
        "kind: List\nitems: [null, 1, [2], {kind: List}]",
        "kind: Service\napiVersion: v1\nmetadata: [1]",
        "kind: Service\napiVersion: v1\nmetadata: {name: a, <<: 3}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: 3",
        "apiVersion: v1\nkind: Node\nmetadata: {name: !tagged n}",
        "{\"kind\": \"Node\", \"apiVersion\": \"v1\", \"metadata\": {\"name\": 1e400}}",
        "null\nnull",
        "18446744073709551616",
        laughs,
        &too_deep,
        &"[".repeat(10_000),
        &"- ".repeat(10_000),
    ];
    for input in inputs {
        for origin in ["m.yaml", "m.json"] {
            let report = parse_str(input, Path::new(origin));
            for skipped in &report.skipped {
                assert!(!skipped.reason.is_empty(), "{input:?}: {skipped:?}");
            }
        }
    }
}

/// A manifest's EndpointSlice keeps the trigger annotation its writer set
/// (a generator, a benchmark): the control plane's programming latency
/// starts there, as it does for the Kubernetes API's slices.
#[test]
fn an_endpoint_slice_keeps_its_last_change_trigger_time() {
    let report = parse_str(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: \"2026-12-07T17:19:57.250Z\"
addressType: IPv4
endpoints: [{addresses: [10.0.0.5]}]
",
        Path::new("slice.yaml"),
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let [ClusterObject::EndpointSlice(slice)] = report.objects.as_slice() else {
        panic!("{:?}", report.objects)
    };
    let annotations = slice.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("endpoints.kubernetes.io/last-change-trigger-time")
            .map(String::as_str),
        Some("2026-12-07T17:19:57.250Z")
    );
}
