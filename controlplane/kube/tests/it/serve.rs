//! The control plane against the mock API server end to end: objects in
//! through the real kube client → `serve` (SQLite) → a revision → a real
//! agent applying it in a network namespace; then watch events → new
//! revisions reach the agent. Needs root (namespaces, ipset, iptables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions, AgentProgress};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_dataplane::Format;
use setpoint_integration::{Netns, readyz, require_root_and_tools};
use setpoint_store::RevisionId;

use crate::fixtures::*;
use crate::mock::ApiServer;

type Progress = Arc<Mutex<AgentProgress>>;

fn progress(p: &Progress) -> AgentProgress {
    p.lock().map(|p| p.clone()).unwrap_or_default()
}

/// Waits until the agent applied a head newer than `after`; returns it.
async fn converge_past(running: &Running, agent: &Progress, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = *running.head.borrow();
        if head > after && progress(agent).revision == head {
            return head;
        }
        assert!(
            Instant::now() < deadline,
            "no revision after {after} reached the agent: head {head}, agent {:?}, problems {:?}",
            progress(agent),
            running.problems.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `serve` on the mock API server's `client`, SQLite in `db`, every
/// listener on a free loopback port, short batch and poll intervals.
fn serve_config(client: kube::Client, db: &tempfile::TempDir) -> ServeConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    ServeConfig {
        manifests: PathBuf::from("/nonexistent: the Kubernetes API is the source"),
        manifest_limits: Default::default(),
        kube: Some(client),
        database: format!(
            "sqlite://{}?mode=rwc",
            db.path().join("setpoint.db").display()
        ),
        listen: any,
        metrics_listen: any,
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
        rollout: None,
        admin: Default::default(),
        tls: None,
        agents: Default::default(),
        election: Default::default(),
    }
}

/// node-a's state at `revision`, rendered as `format`.
async fn rendered(running: &Running, revision: u64, format: Format) -> String {
    let state = running
        .store
        .node_state("node-a", RevisionId(revision))
        .await
        .expect("store read")
        .expect("node-a has a state");
    setpoint_dataplane::render::render(&state, format)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_objects_reach_an_agent_and_watch_events_make_new_revisions() {
    require_root_and_tools();
    let mut objects = small_cluster();
    let mut bad = mk_endpointslice("shop", "broken", "web", &["10.244.0.7"]);
    bad["endpoints"] = "oops".into();
    objects.push(bad);
    let (server, client) = ApiServer::start(objects);
    // The Pods' first list fails (retried after kube's default backoff,
    // 0.8 s): until it completes nothing is computed and /readyz says no.
    server.fail_lists("Pod", 1);
    let db = tempfile::tempdir().expect("tempdir");
    let running = start(serve_config(client, &db))
        .await
        .expect("control plane starts");
    assert_eq!(readyz(running.metrics_addr).await, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readyz(running.metrics_addr).await, 503);
    assert_eq!(
        *running.head.borrow(),
        0,
        "no revision from a half-listed cluster"
    );
    assert!(
        server.requests("Pod").iter().any(|r| !r.watch),
        "the Pods were listed (and failed)"
    );

    let ns = Netns::create("kube-a").expect("netns");
    let state_dir = tempfile::tempdir().expect("dir");
    let agent = Agent::new(AgentOptions {
        target: Target {
            netns: Some(ns.name().to_string()),
        },
        state_dir: Some(state_dir.path().to_path_buf()),
        ipvs: IpvsMode::Simulated,
        ..AgentOptions::new("node-a", format!("http://{}", running.agent_addr))
    });
    let a = agent.progress.clone();
    let _agent = tokio::spawn(agent.run());

    // The first revision: from the complete cluster, applied in the namespace.
    let first = converge_past(&running, &a, 0).await;
    assert_eq!(readyz(running.metrics_addr).await, 200);
    let sets = ns.exec(&["ipset", "save"], None).expect("ipset save");
    assert!(
        sets.contains("10.96.0.10"),
        "the Service's ClusterIP is in the namespace's ipsets:\n{sets}"
    );
    // The ServiceCIDR object's range, rejected where no Service holds it.
    assert!(
        sets.contains("add SP-SERVICE-CIDR 10.96.0.0/16"),
        "the ServiceCIDR's range is in SP-SERVICE-CIDR:\n{sets}"
    );
    let ipvs = rendered(&running, first, Format::Ipvs).await;
    assert!(ipvs.contains("10.244.0.5:8080"), "{ipvs}");
    let problems = running.problems.borrow().clone();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("skipped: EndpointSlice/shop/broken"),
        "{problems:?}"
    );

    // A new Service and its slice arrive as watch events: one more revision.
    server.apply(mk_service("shop", "api", "10.96.0.20"));
    server.apply(mk_endpointslice("shop", "api-1", "api", &["10.244.0.8"]));
    let second = converge_past(&running, &a, first).await;
    let sets = ns.exec(&["ipset", "save"], None).expect("ipset save");
    assert!(sets.contains("10.96.0.20"), "{sets}");
    assert!(progress(&a).deltas >= 1, "{:?}", progress(&a));

    // An endpoint moves (MODIFIED EndpointSlice): the agent gets it too.
    server.apply(mk_endpointslice("shop", "web-1", "web", &["10.244.0.6"]));
    let third = converge_past(&running, &a, second).await;
    let ipvs = rendered(&running, third, Format::Ipvs).await;
    assert!(
        ipvs.contains("10.244.0.6:8080") && !ipvs.contains("10.244.0.5:8080"),
        "{ipvs}"
    );

    // A deleted Service leaves the namespace's sets.
    server.delete("Service", "shop", "api");
    let fourth = converge_past(&running, &a, third).await;
    let sets = ns.exec(&["ipset", "save"], None).expect("ipset save");
    assert!(!sets.contains("10.96.0.20"), "{sets}");
    assert!(sets.contains("10.96.0.10"), "{sets}");

    // A ClusterNetworkPolicy from the watch (the CRD is served here) is in
    // node-a's policy chains, applied; deleted, it leaves them.
    let tier_rule = "cnp:Admin/deny-ops/";
    server.apply(mk_cluster_network_policy("deny-ops", 10, "ops"));
    let fifth = converge_past(&running, &a, fourth).await;
    let rules = rendered(&running, fifth, Format::Iptables).await;
    assert!(rules.contains(tier_rule), "{rules}");
    let applied = ns.exec(&["iptables-save"], None).expect("iptables-save");
    assert!(applied.contains(tier_rule), "{applied}");
    server.delete("ClusterNetworkPolicy", "", "deny-ops");
    let sixth = converge_past(&running, &a, fifth).await;
    let rules = rendered(&running, sixth, Format::Iptables).await;
    assert!(!rules.contains(tier_rule), "{rules}");
    // Nothing skipped from the watch but the broken slice.
    let problems = running.problems.borrow().clone();
    assert_eq!(problems.len(), 1, "{problems:?}");
}

/// A cluster without the ClusterNetworkPolicy CRD: the control plane
/// computes without it and says so in `setpoint_kube_kind_not_served`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_api_does_not_serve_is_exported_as_not_served() {
    use setpoint_controlplane::metrics::KindLabel;
    let (server, client) = ApiServer::start(small_cluster());
    server.unserve("ClusterNetworkPolicy");
    let db = tempfile::tempdir().expect("tempdir");
    let mut running = start(serve_config(client, &db))
        .await
        .expect("control plane starts");
    tokio::time::timeout(Duration::from_secs(30), running.head.wait_for(|h| *h > 0))
        .await
        .expect("a first revision in time")
        .expect("the head is published");
    let not_served = |kind: &'static str| {
        running
            .metrics
            .kube_kinds_not_served
            .get_or_create(&KindLabel { kind })
            .get()
    };
    assert_eq!(not_served("ClusterNetworkPolicy"), 1);
    assert_eq!(not_served("Pod"), 0);
    assert_eq!(not_served("ServiceCIDR"), 0);
    let exported = running.metrics.encode();
    assert!(
        exported.contains("setpoint_kube_kind_not_served{kind=\"ClusterNetworkPolicy\"} 1"),
        "{exported}"
    );
}
