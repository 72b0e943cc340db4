//! The Kubernetes manifests under `deploy/kubernetes/`: every document is a
//! known kind that decodes into its k8s-openapi type with no field left
//! over (a misspelt field fails, as `kubectl apply --validate=strict`
//! would), kustomize lists every file, the control plane's RBAC grants
//! exactly the reads its Kubernetes source makes, and the objects are
//! wired to each other (selectors, named ports, the agent's URL). Neither
//! the agents' way to the control plane nor the control plane's way to the
//! API server goes through a ClusterIP or cluster DNS, which Setpoint
//! itself programs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::Value;

/// What `--source kube` lists and watches, as (API group, resource): the
/// eight kinds of `controlplane/kube/src/kinds.rs` (`KINDS`). A kind added
/// there must be added here and to `deploy/kubernetes/rbac.yaml`.
const WATCHED: [(&str, &str); 8] = [
    ("", "namespaces"),
    ("", "nodes"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "pods"),
    ("networking.k8s.io", "networkpolicies"),
    ("networking.k8s.io", "servicecidrs"),
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
];

/// Verbs a read-only watcher may hold; `list` and `watch` are required.
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every `.yaml`/`.yml` file under `dir`, relative to it, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The non-empty documents of a multi-document YAML text, as JSON values.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Where `original` has something `round_trip` lacks or holds differently:
/// what the typed decode dropped (unknown or misspelt fields) or changed.
fn dropped(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(other) => dropped(value, other, &here, out),
                    // An explicit null is the same as leaving the field out.
                    None if value.is_null() => {}
                    None => out.push(format!("unknown field `{here}`")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                dropped(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("`{path}`: {a} became {b}")),
    }
}

/// Decodes `value` as `T`, failing on any field `T` does not have.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let round_trip = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    dropped(value, &round_trip, "", &mut problems);
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems.join("; "))
    }
}

/// The manifests, decoded.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    pdbs: Vec<PodDisruptionBudget>,
}

impl Objects {
    /// Adds one document, by apiVersion and kind.
    fn add(&mut self, doc: &Value) -> Result<(), String> {
        let field = |name: &str| doc.get(name).and_then(Value::as_str).unwrap_or("");
        match (field("apiVersion"), field("kind")) {
            ("v1", "Namespace") => self.namespaces.push(strict(doc)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(strict(doc)?),
            ("v1", "Service") => self.services.push(strict(doc)?),
            ("v1", "ConfigMap") => self.config_maps.push(strict(doc)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(strict(doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(strict(doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(strict(doc)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(strict(doc)?)
            }
            ("apps/v1", "Deployment") => self.deployments.push(strict(doc)?),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(strict(doc)?),
            ("policy/v1", "PodDisruptionBudget") => self.pdbs.push(strict(doc)?),
            (api_version, kind) => {
                return Err(format!(
                    "no k8s-openapi type for apiVersion `{api_version}` kind `{kind}`"
                ));
            }
        }
        Ok(())
    }
}

/// `kustomization.yaml`: only the fields it uses, no others.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: Vec<Value>,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<Value>,
}

const KUSTOMIZATION: &str = "kustomization.yaml";

/// Every manifest but the kustomization, decoded; panics listing every
/// problem in every file.
fn load() -> Objects {
    let dir = deploy_dir();
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    let files = yaml_files(&dir);
    assert!(files.len() > 1, "no manifests in {}", dir.display());
    for file in files
        .iter()
        .filter(|f| f.as_path() != Path::new(KUSTOMIZATION))
    {
        let text = fs::read_to_string(dir.join(file)).expect("readable manifest");
        match documents(&text) {
            Err(e) => problems.push(format!("{}: {e}", file.display())),
            Ok(docs) => {
                assert!(!docs.is_empty(), "{}: no documents", file.display());
                for (i, doc) in docs.iter().enumerate() {
                    if let Err(e) = objects.add(doc) {
                        problems.push(format!("{} document {i}: {e}", file.display()));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    objects
}

#[test]
fn every_manifest_decodes_without_unknown_fields() {
    let o = load();
    assert_eq!(o.namespaces.len(), 1);
    assert_eq!(o.deployments.len(), 1);
    assert_eq!(o.daemon_sets.len(), 1);
    assert_eq!(o.pdbs.len(), 1);
    assert_eq!(o.services.len(), 1);
    assert_eq!(o.config_maps.len(), 1);
    assert_eq!(o.service_accounts.len(), 2);
    assert_eq!(o.cluster_roles.len(), 1);
}

#[test]
fn a_misspelt_field_fails_the_check() {
    let doc = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: x
spec:
  replica: 2
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
        - name: x
          image: x
          imagePullPolicyy: Always
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: fine
"#;
    let docs = documents(doc).expect("valid YAML");
    assert_eq!(docs.len(), 2);
    // Plain serde decodes the typo happily: that is why the check exists.
    let lenient: Deployment = serde_json::from_value(docs[0].clone()).expect("lenient decode");
    assert_eq!(lenient.spec.expect("spec").replicas, None);

    let err = Objects::default()
        .add(&docs[0])
        .expect_err("typos must fail");
    assert!(err.contains("unknown field `spec.replica`"), "{err}");
    assert!(
        err.contains("unknown field `spec.template.spec.containers[0].imagePullPolicyy`"),
        "{err}"
    );
    Objects::default()
        .add(&docs[1])
        .expect("a correct document passes");

    let wrong_kind = documents("apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: x}\n")
        .expect("valid YAML");
    let err = Objects::default()
        .add(&wrong_kind[0])
        .expect_err("unknown kinds fail");
    assert!(err.contains("Deploymnet"), "{err}");

    // A value of the wrong type fails in the decode itself.
    let wrong_type = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}}
    });
    assert!(Objects::default().add(&wrong_type).is_err());
}

#[test]
fn kustomization_lists_every_file() {
    let dir = deploy_dir();
    let text = fs::read_to_string(dir.join(KUSTOMIZATION)).expect("kustomization.yaml");
    let k: Kustomization = serde_yaml_ng::from_str(&text).expect("kustomization.yaml decodes");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    assert_eq!(k.namespace.as_deref(), Some("setpoint-system"));

    let listed: BTreeSet<PathBuf> = k.resources.iter().map(PathBuf::from).collect();
    assert_eq!(listed.len(), k.resources.len(), "a resource listed twice");
    let present: BTreeSet<PathBuf> = yaml_files(&dir)
        .into_iter()
        .filter(|f| f.as_path() != Path::new(KUSTOMIZATION))
        .collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&present).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "not in kustomization.yaml: {unlisted:?}; listed but absent: {missing:?}"
    );
}

/// (group, resource) → verbs, for rules without names or wildcards.
fn grants(rules: &[PolicyRule], what: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty),
            "{what}: non-resource URLs granted"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "{what}: wildcard in {rule:?}"
                    );
                    out.entry((group.clone(), resource.clone()))
                        .or_default()
                        .insert(verb.clone());
                }
            }
        }
    }
    out
}

#[test]
fn cluster_role_grants_reads_of_exactly_what_the_kube_source_watches() {
    let o = load();
    let [role] = o.cluster_roles.as_slice() else {
        panic!("expected one ClusterRole");
    };
    let rules = role.rules.as_deref().unwrap_or_default();
    for rule in rules {
        assert!(
            rule.resource_names.as_ref().is_none_or(Vec::is_empty),
            "a watcher lists whole collections; resourceNames would break it: {rule:?}"
        );
    }
    let granted = grants(rules, "ClusterRole");
    let expected: BTreeSet<(String, String)> = WATCHED
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    let granted_keys: BTreeSet<_> = granted.keys().cloned().collect();
    assert_eq!(granted_keys, expected, "ClusterRole resources");
    for ((group, resource), verbs) in &granted {
        for needed in ["list", "watch"] {
            assert!(verbs.contains(needed), "{group}/{resource} lacks {needed}");
        }
        let beyond: Vec<_> = verbs
            .iter()
            .filter(|v| !READ_VERBS.contains(&v.as_str()))
            .collect();
        assert!(beyond.is_empty(), "{group}/{resource}: {beyond:?} granted");
    }

    // The binding gives it to the control plane's account, and only that.
    let [binding] = o.cluster_role_bindings.as_slice() else {
        panic!("expected one ClusterRoleBinding");
    };
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects: Vec<_> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect();
    assert_eq!(
        subjects,
        [(
            "ServiceAccount",
            "setpoint-controlplane",
            Some("setpoint-system")
        )]
    );

    // The namespaced Role: Leases for election, nothing else.
    let [lease_role] = o.roles.as_slice() else {
        panic!("expected one Role");
    };
    let lease_grants = grants(lease_role.rules.as_deref().unwrap_or_default(), "Role");
    let lease_keys: Vec<_> = lease_grants.keys().cloned().collect();
    assert_eq!(
        lease_keys,
        [("coordination.k8s.io".to_owned(), "leases".to_owned())]
    );
    // Exactly what `setpoint_kube::lease::LeaseElector` calls: GET, POST
    // (create) and PUT (update, with the read resourceVersion).
    let verbs = &lease_grants[&lease_keys[0]];
    assert_eq!(
        verbs.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["get", "create", "update"]),
    );

    // The agent's account is bound to nothing.
    let bound_agent = o
        .role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            o.cluster_role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        )
        .any(|s| s.name == "setpoint-agent");
    assert!(!bound_agent, "the agent needs no API access");
}

fn labels_match(selector: &BTreeMap<String, String>, template: &PodTemplateSpec) -> bool {
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .cloned()
        .unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn env<'a>(
    template: &'a PodTemplateSpec,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    template.spec.as_ref()?.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

/// The first container's mount at `path`, and the pod volume behind it.
fn mounted<'a>(pod: &'a PodSpec, path: &str) -> (&'a VolumeMount, &'a Volume) {
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {}", mount.name));
    (mount, volume)
}

#[test]
fn the_objects_are_wired_to_each_other() {
    let o = load();
    let deployment = &o.deployments[0];
    let daemon_set = &o.daemon_sets[0];
    let service = &o.services[0];
    let pdb = &o.pdbs[0];
    let d_spec = deployment.spec.as_ref().expect("spec");
    let ds_spec = daemon_set.spec.as_ref().expect("spec");

    // Selectors select their pod templates.
    let d_selector = d_spec.selector.match_labels.clone().unwrap_or_default();
    assert!(labels_match(&d_selector, &d_spec.template));
    let ds_selector = ds_spec.selector.match_labels.clone().unwrap_or_default();
    assert!(labels_match(&ds_selector, &ds_spec.template));
    let svc_spec = service.spec.as_ref().expect("spec");
    assert!(labels_match(
        svc_spec.selector.as_ref().expect("selector"),
        &d_spec.template
    ));
    let pdb_spec = pdb.spec.as_ref().expect("spec");
    let pdb_selector = pdb_spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(labels_match(&pdb_selector, &d_spec.template));
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(d_spec.replicas, Some(2));

    // The Service's named target ports exist on the control plane, with
    // the ports the binary listens on.
    let pod = d_spec.template.spec.as_ref().expect("pod spec");
    let container = &pod.containers[0];
    let ports: BTreeMap<&str, i32> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap_or(""), p.container_port))
        .collect();
    let service_ports: BTreeMap<i32, i32> = svc_spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match &p.target_port {
                Some(IntOrString::String(name)) => *ports
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("no container port named {name}")),
                Some(IntOrString::Int(n)) => *n,
                None => p.port,
            };
            (p.port, target)
        })
        .collect();
    assert_eq!(
        service_ports,
        BTreeMap::from([(7443, 7443), (7444, 7444), (9464, 9464)])
    );
    let args = container.args.clone().unwrap_or_default();
    for arg in [
        "serve",
        "--source=kube",
        "--listen=0.0.0.0:7443",
        "--admin-listen=0.0.0.0:7444",
        "--metrics-listen=0.0.0.0:9464",
        "--election=lease",
        "--tls-cert=/etc/setpoint/tls/tls.crt",
        "--tls-key=/etc/setpoint/tls/tls.key",
        "--client-ca=/etc/setpoint/tls/ca.crt",
        "--admin-tls-cert=/etc/setpoint/tls/tls.crt",
        "--admin-tls-key=/etc/setpoint/tls/tls.key",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} not in {args:?}");
    }
    // The Lease the code elects with is the one the Role grants, in the
    // pod's namespace.
    let lease_name = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("--lease-name");
    let granted: BTreeSet<&str> = o.roles[0]
        .rules
        .iter()
        .flatten()
        .filter(|r| r.verbs.iter().any(|v| v == "update"))
        .flat_map(|r| r.resource_names.iter().flatten())
        .map(String::as_str)
        .collect();
    assert_eq!(granted, BTreeSet::from([lease_name]));
    let lease_ns = env(&d_spec.template, "SETPOINT_LEASE_NAMESPACE")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(lease_ns, Some("metadata.namespace"));
    assert_eq!(
        o.roles[0].metadata.namespace.as_deref(),
        deployment.metadata.namespace.as_deref()
    );
    // The TLS files come from the Secret mounted where the args point.
    let (_, tls_volume) = mounted(pod, "/etc/setpoint/tls");
    let tls_secret = tls_volume
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.as_deref());
    assert_eq!(tls_secret, Some("setpoint-controlplane-tls"));
    let database = env(&d_spec.template, "SETPOINT_DATABASE").expect("SETPOINT_DATABASE");
    assert!(
        database
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some(),
        "the database URL comes from a Secret"
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("setpoint-controlplane")
    );

    // The agent: its node from the downward API, on the host's network
    // (its way to the control plane: `no_path_goes_through_what_setpoint_programs`).
    let agent_pod = ds_spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(agent_pod.host_network, Some(true));
    assert_eq!(
        agent_pod.service_account_name.as_deref(),
        Some("setpoint-agent")
    );
    let node = env(&ds_spec.template, "SETPOINT_NODE").expect("SETPOINT_NODE");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    // mTLS files from the node's own directory, mounted read-only.
    for (var, file) in [
        ("SETPOINT_TLS_CERT", "tls.crt"),
        ("SETPOINT_TLS_KEY", "tls.key"),
        ("SETPOINT_CA", "ca.crt"),
    ] {
        let value = env(&ds_spec.template, var).and_then(|e| e.value.clone());
        assert_eq!(value, Some(format!("/etc/setpoint/pki/{file}")), "{var}");
    }
    let (pki, pki_volume) = mounted(agent_pod, "/etc/setpoint/pki");
    assert_eq!(pki.read_only, Some(true));
    let pki_volume = pki_volume
        .host_path
        .as_ref()
        .expect("the node's certificates are the host's");
    assert_eq!(pki_volume.path, "/etc/setpoint/pki");
    let tolerations = agent_pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent tolerates every taint"
    );
    let agent = &agent_pod.containers[0];
    let security = agent.security_context.as_ref().expect("securityContext");
    assert_ne!(security.privileged, Some(true));
    let added: BTreeSet<&str> = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    let (_, lock) = mounted(agent_pod, "/run/xtables.lock");
    let volume = lock.host_path.as_ref().expect("the lock is the host's");
    assert_eq!(volume.path, "/run/xtables.lock");
    assert_eq!(volume.type_.as_deref(), Some("FileOrCreate"));
}

/// The value of `name` in the first container of `template`, read from the
/// one ConfigMap (it must come from there, by key).
fn from_config_map(o: &Objects, template: &PodTemplateSpec, name: &str) -> String {
    let var = env(template, name).unwrap_or_else(|| panic!("{name} not set"));
    let key = var
        .value_from
        .as_ref()
        .and_then(|v| v.config_map_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{name} does not come from a ConfigMap"));
    let map = &o.config_maps[0];
    assert_eq!(Some(key.name.as_str()), map.metadata.name.as_deref());
    map.data
        .as_ref()
        .and_then(|d| d.get(&key.key))
        .unwrap_or_else(|| panic!("the ConfigMap has no key {}", key.key))
        .clone()
}

/// A name or address that reaches its target only through what Setpoint
/// programs: a Service's cluster DNS name, the `kubernetes` Service, or an
/// address in the usual Service CIDRs.
fn through_a_service(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let service_cidr = |ip: std::net::IpAddr| match ip {
        // 10.96.0.0/12 (kubeadm, kind), 10.0.0.0/16 (AKS), 172.20.0.0/16 (EKS).
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 10 && (o[1] == 0 || (96..112).contains(&o[1]))) || (o[0] == 172 && o[1] == 20)
        }
        std::net::IpAddr::V6(v6) => v6.segments()[0] == 0xfd00,
    };
    host == "kubernetes"
        || host.starts_with("kubernetes.default")
        || host.ends_with(".svc")
        || host.contains(".svc.")
        || host.ends_with(".cluster.local")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .is_ok_and(service_cidr)
}

#[test]
fn the_service_check_knows_service_paths() {
    for via in [
        "setpoint-controlplane.setpoint-system.svc",
        "setpoint-controlplane.setpoint-system.svc.cluster.local.",
        "kubernetes.default",
        "kubernetes",
        "10.96.0.1",
        "[fd00::1]",
    ] {
        assert!(through_a_service(via), "{via}");
    }
    for direct in ["api.cluster.example", "192.0.2.10", "[2001:db8::1]"] {
        assert!(!through_a_service(direct), "{direct}");
    }
}

/// A revision that broke a ClusterIP or cluster DNS could otherwise cut
/// agents off from the control plane, or the control plane off from the
/// API server, and then no revision could repair it.
#[test]
fn no_path_goes_through_what_setpoint_programs() {
    let o = load();
    let cp = &o.deployments[0].spec.as_ref().expect("spec").template;
    let agent = &o.daemon_sets[0].spec.as_ref().expect("spec").template;
    for (what, template) in [("control plane", cp), ("agent", agent)] {
        let pod = template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.host_network, Some(true), "{what}: on the host network");
        // The node's resolver, not cluster DNS (ClusterFirst* would send
        // every lookup to the cluster DNS Service's ClusterIP).
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"), "{what}");
        for var in pod.containers[0].env.iter().flatten() {
            let value = var.value.as_deref().unwrap_or_default();
            assert!(
                !value.contains(".svc") && !value.contains("cluster.local"),
                "{what}: {} = {value} names a Service",
                var.name
            );
        }
    }
    // Agents: the URL in the ConfigMap, to the control plane's own port on
    // its nodes (host network: the container port is the node's).
    let url = from_config_map(&o, agent, "SETPOINT_CONTROLPLANE");
    let rest = url.strip_prefix("https://").expect("an https URL");
    let (host, port) = rest.rsplit_once(':').expect("host:port");
    assert!(
        !through_a_service(host),
        "agents reach the control plane via {host}"
    );
    let cp_pod = cp.spec.as_ref().expect("pod spec");
    let grpc = cp_pod.containers[0]
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("a grpc port");
    assert_eq!(port.parse::<i32>().ok(), Some(grpc.container_port));
    // One replica per node on the node's ports.
    let anti = cp_pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("required anti-affinity");
    assert!(
        anti.iter()
            .any(|t| t.topology_key == "kubernetes.io/hostname")
    );
    // The control plane: the API server at its own address, overriding the
    // `kubernetes` ClusterIP kubelet injects (kube-rs reads these two).
    let api = from_config_map(&o, cp, "KUBERNETES_SERVICE_HOST");
    assert!(!through_a_service(&api), "the API server via {api}");
    let api_port = from_config_map(&o, cp, "KUBERNETES_SERVICE_PORT");
    assert!(api_port.parse::<u16>().is_ok(), "{api_port}");
}
