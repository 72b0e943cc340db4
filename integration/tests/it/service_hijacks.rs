//! A tenant who may create Services in one namespace tries to take what
//! is not theirs, with `render` on a two-node cluster as an operator would
//! see it; and a Service whose atoms would make a state invalid is left
//! out while its neighbours reach the store through the leader.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Output};

use setpoint_compute::ComputeConfig;
use setpoint_controlplane::leader::Leader;
use setpoint_dataplane::NodeDataplane;
use setpoint_store::Store;
use tokio::sync::watch;

use crate::e2e_support::fresh_postgres_database;
use crate::sigkill::controlplane_binary;

/// Two nodes, the API server's `default/kubernetes` Service (ClusterIP
/// 10.96.0.1:443 → node-a's 6443), and the tenant's `aaa/hijack` with
/// `externalIPs` and ports 443 and 10250 (the kubelet's) to its own pod.
fn cluster(external_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec: {{podCIDRs: [10.244.1.0/24]}}
status: {{addresses: [{{type: InternalIP, address: 192.168.10.11}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-b}}
spec: {{podCIDRs: [10.244.2.0/24]}}
status: {{addresses: [{{type: InternalIP, address: 192.168.10.12}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: kubernetes, namespace: default}}
spec:
  clusterIP: 10.96.0.1
  ports: [{{name: https, port: 443, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {{kubernetes.io/service-name: kubernetes}}
addressType: IPv4
ports: [{{name: https, port: 6443, protocol: TCP}}]
endpoints: [{{addresses: [192.168.10.11], nodeName: node-a}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hijack, namespace: aaa}}
spec:
  clusterIP: 10.96.5.5
  externalIPs: [{external_ip}]
  ports:
    - {{name: https, port: 443, protocol: TCP}}
    - {{name: kubelet, port: 10250, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hijack
  namespace: aaa
  labels: {{kubernetes.io/service-name: hijack}}
addressType: IPv4
ports:
  - {{name: https, port: 8443, protocol: TCP}}
  - {{name: kubelet, port: 8443, protocol: TCP}}
endpoints: [{{addresses: [10.244.2.66], nodeName: node-b}}]
"#
    )
}

/// `render --format json` of `node` over `manifests`: the state (checked
/// valid) and stderr.
fn render(manifests: &str, node: &str, flags: &[&str]) -> (NodeDataplane, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, manifests).expect("write manifests");
    let out: Output = Command::new(controlplane_binary())
        .arg("render")
        .arg("--manifests")
        .arg(&file)
        .args(["--node", node, "--format", "json"])
        .args(flags)
        .output()
        .expect("render runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "render failed: {stderr}");
    let state: NodeDataplane = serde_json::from_slice(&out.stdout).expect("render's JSON");
    assert_eq!(state.validate(), Vec::new());
    (state, stderr)
}

/// Where `address:port/tcp` goes on the node: the real servers' addresses
/// of its virtual server (NodePort templates expanded, as in the kernel).
fn backends(state: &NodeDataplane, address: &str, port: u16) -> Option<Vec<IpAddr>> {
    let address: IpAddr = address.parse().expect("address");
    let kernel = setpoint_dataplane::template::expand(&state.flatten()).expect("expands");
    kernel
        .virtual_servers_at(address)
        .find(|(k, _)| k.port == port)
        .map(|(_, vs)| vs.real_servers.iter().map(|rs| rs.address).collect())
}

fn node_a() -> Vec<IpAddr> {
    vec!["192.168.10.11".parse().expect("ip")]
}

#[test]
fn an_external_ip_cannot_take_the_kubernetes_cluster_ip() {
    for node in ["node-a", "node-b"] {
        let (state, stderr) = render(&cluster("10.96.0.1"), node, &[]);
        assert_eq!(
            backends(&state, "10.96.0.1", 443),
            Some(node_a()),
            "{node}: the API server's ClusterIP goes to the API server"
        );
        assert_eq!(backends(&state, "10.96.0.1", 10250), None, "{node}");
        assert!(
            stderr.contains(
                "warning: Service aaa/hijack: external IP 10.96.0.1 is not served: it is a \
                 Service's cluster IP, which belongs to that Service (reason ClusterIp)"
            ),
            "{stderr}"
        );
        // The rest of the tenant's Service works.
        assert_eq!(
            backends(&state, "10.96.5.5", 443),
            Some(vec!["10.244.2.66".parse().expect("ip")])
        );
    }
}

#[test]
fn the_unspecified_address_is_no_node_port() {
    for node in ["node-a", "node-b"] {
        let (state, stderr) = render(&cluster("0.0.0.0"), node, &[]);
        let own = if node == "node-a" {
            "192.168.10.11"
        } else {
            "192.168.10.12"
        };
        for port in [443, 10250] {
            assert_eq!(backends(&state, own, port), None, "{node} {own}:{port}");
            assert_eq!(backends(&state, "0.0.0.0", port), None, "{node}");
        }
        assert!(
            stderr.contains("external IP 0.0.0.0 is not served") && stderr.contains("Unspecified"),
            "{stderr}"
        );
    }
}

#[test]
fn another_nodes_address_is_not_taken_nor_bound() {
    let node_b: IpAddr = "192.168.10.12".parse().expect("ip");
    let bound = |state: &NodeDataplane| {
        let flat = state.flatten();
        flat.has_address(&node_b)
            || flat
                .entries("SP-IPVS-IPS")
                .is_some_and(|e| e.contains(&setpoint_dataplane::SetEntry::Ip(node_b)))
    };
    let (state, stderr) = render(&cluster("192.168.10.12"), "node-a", &[]);
    assert!(!bound(&state));
    assert_eq!(backends(&state, "192.168.10.12", 443), None);
    assert!(
        stderr.contains("external IP 192.168.10.12 is not served")
            && stderr.contains("NodeAddress"),
        "{stderr}"
    );
    // The operator's leave serves it, and still binds it on no node.
    for node in ["node-a", "node-b"] {
        let (state, stderr) = render(
            &cluster("192.168.10.12"),
            node,
            &["--allow-node-external-ips"],
        );
        assert!(!bound(&state), "{node}");
        assert!(!stderr.contains("not served"), "{stderr}");
    }
}

#[test]
fn external_ip_cidrs_restrict_external_ips() {
    let (state, stderr) = render(
        &cluster("203.0.113.7"),
        "node-a",
        &["--external-ip-cidrs", "198.51.100.0/24"],
    );
    assert_eq!(backends(&state, "203.0.113.7", 443), None);
    assert!(stderr.contains("OutsideExternalIpCidrs"), "{stderr}");
    let (state, _) = render(
        &cluster("203.0.113.7"),
        "node-a",
        &["--external-ip-cidrs", "203.0.113.0/24"],
    );
    assert!(backends(&state, "203.0.113.7", 443).is_some());
}

/// A Service of six ports with sets of eight entries overfills
/// SP-CLUSTER-IP beside `default/kubernetes` and `aaa/hijack`'s two:
/// left out, while the neighbours' states are committed to PostgreSQL.
/// And node-a, whose two addresses overfill SP-NODEPORT-IPS with a
/// maxelem of 1 (no Service's fault), keeps its last valid state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_commits_neighbours_of_an_invalid_service_and_never_an_invalid_state() {
    let url = fresh_postgres_database();
    let store = Store::open(&url).await.expect("store");
    let mut big = String::from(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: aaa}\n\
         spec:\n  clusterIP: 10.96.9.9\n  ports:\n",
    );
    for i in 0..6 {
        big.push_str(&format!(
            "    - {{name: p{i}, port: {}, protocol: TCP}}\n",
            2000 + i
        ));
    }
    let manifests = format!("{}{big}", cluster("203.0.113.7"));
    let objects = load(&manifests);
    let config = ComputeConfig {
        set_max_elements: 8,
        ..ComputeConfig::default()
    };
    let mut leader = Leader::start(store.clone(), config, watch::Sender::new(0))
        .await
        .expect("leader");
    let committed = synced(&mut leader, objects.clone()).await;
    for node in ["node-a", "node-b"] {
        let state = stored(&store, node, committed.revision).await;
        assert_eq!(state.validate(), Vec::new(), "{node}");
        assert_eq!(backends(&state, "10.96.0.1", 443), Some(node_a()));
        assert!(backends(&state, "203.0.113.7", 10250).is_some());
        assert_eq!(backends(&state, "10.96.9.9", 2000), None, "{node}");
    }
    assert!(
        leader.index().problems().any(|p| p
            .rejection
            .to_string()
            .starts_with("Service aaa/big: left out: its 6 entries in set SP-CLUSTER-IP")),
        "{:?}",
        leader.index().problems().collect::<Vec<_>>()
    );

    // Now no Service is at fault: node-a's two addresses overfill a set.
    let mut leader = Leader::start(
        store.clone(),
        ComputeConfig {
            set_max_elements: 1,
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            ..ComputeConfig::default()
        },
        watch::Sender::new(0),
    )
    .await
    .expect("a second leader");
    // Its sessions' view: what it publishes must be what it commits.
    let fanout = std::sync::Arc::new(setpoint_controlplane::fanout::Fanout::default());
    leader.publish_to(fanout.clone()).await;
    let two_addresses = manifests.replacen(
        "status: {addresses: [{type: InternalIP, address: 192.168.10.11}]}",
        "status: {addresses: [{type: InternalIP, address: 192.168.10.11}, \
         {type: ExternalIP, address: 198.51.100.11}]}",
        1,
    );
    assert_ne!(two_addresses, manifests);
    let objects: Vec<_> = load(&two_addresses)
        .into_iter()
        .filter(|o| o.kind() == "Node")
        .collect();
    let second = synced(&mut leader, objects).await;
    assert!(leader.index().invalid_nodes().contains_key("node-a"));
    let kept = stored(&store, "node-a", second.revision).await;
    assert_eq!(kept.validate(), Vec::new());
    assert_eq!(
        backends(&kept, "10.96.0.1", 443),
        Some(node_a()),
        "node-a keeps the state of the first revision"
    );
    let b = stored(&store, "node-b", second.revision).await;
    assert_eq!(b.validate(), Vec::new());
    assert_eq!(backends(&b, "10.96.0.1", 443), None, "node-b moved on");
    assert_store_holds_computed(&store, &leader, second.revision, "node-b").await;
    assert_published(&fanout, &store, second.revision, &["node-b"]).await;

    // A change only to the shared part: node-a, still invalid, stays held;
    // node-b takes it.
    let with_kubernetes = |manifests: &str| -> Vec<_> {
        load(manifests)
            .into_iter()
            .filter(|o| o.kind() == "Node" || o.key().to_string().contains("default/kubernetes"))
            .collect()
    };
    let third = synced(&mut leader, with_kubernetes(&two_addresses)).await;
    assert!(leader.index().invalid_nodes().contains_key("node-a"));
    let kept = stored(&store, "node-a", third.revision).await;
    assert_eq!(
        backends(&kept, "10.96.0.1", 443),
        Some(node_a()),
        "node-a still keeps the state of the first revision"
    );
    assert_store_holds_computed(&store, &leader, third.revision, "node-b").await;
    assert_published(&fanout, &store, third.revision, &["node-b"]).await;
    assert_eq!(
        backends(
            &stored(&store, "node-b", third.revision).await,
            "10.96.0.1",
            443
        ),
        Some(node_a()),
        "node-b took the shared change"
    );

    // node-a's own fault mended: it takes its computed state again.
    let fourth = synced(&mut leader, with_kubernetes(&manifests)).await;
    assert!(leader.index().invalid_nodes().is_empty());
    for node in ["node-a", "node-b"] {
        assert_store_holds_computed(&store, &leader, fourth.revision, node).await;
    }
    assert_published(&fanout, &store, fourth.revision, &["node-a", "node-b"]).await;
}

/// The fanout serves each of `valid` the store's state at `revision`, and
/// nothing for another node (its computed state is invalid: its sessions
/// read the store).
async fn assert_published(
    fanout: &setpoint_controlplane::fanout::Fanout,
    store: &Store,
    revision: setpoint_store::RevisionId,
    valid: &[&str],
) {
    for node in ["node-a", "node-b"] {
        let published = fanout.published(revision.0, node).map(|s| s.digest());
        if valid.contains(&node) {
            assert_eq!(
                published,
                Some(stored(store, node, revision).await.digest()),
                "{node} at {revision:?}"
            );
        } else {
            assert_eq!(published, None, "{node} at {revision:?}");
        }
    }
}

/// `objects` synced: the revision it committed.
async fn synced(
    leader: &mut Leader,
    objects: Vec<setpoint_compute::ClusterObject>,
) -> setpoint_controlplane::leader::Committed {
    leader
        .sync(objects, std::time::SystemTime::now())
        .await
        .expect("sync")
        .expect("a revision")
}

/// The store's state of `node` at `revision`; it has one.
async fn stored(store: &Store, node: &str, revision: setpoint_store::RevisionId) -> NodeDataplane {
    store
        .node_state(node, revision)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("{node} has a state at {revision:?}"))
}

/// The store's state of `node` at `revision` is the leader's computed one.
async fn assert_store_holds_computed(
    store: &Store,
    leader: &Leader,
    revision: setpoint_store::RevisionId,
    node: &str,
) {
    let computed = leader.index().node_state(node).expect("computed");
    assert_eq!(
        stored(store, node, revision).await.digest(),
        computed.digest(),
        "{node} at {revision:?}"
    );
}

fn load(manifests: &str) -> Vec<setpoint_compute::ClusterObject> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, manifests).expect("write");
    let report = setpoint_source::load_path(Path::new(&file)).expect("loads");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    report.objects
}
