//! The running system end to end: the control plane on a fresh PostgreSQL
//! database serving a copy of the example manifests, real agents over gRPC
//! on loopback applying ipsets and iptables in network namespaces (IPVS in
//! memory: this kernel has none).

use std::time::{Duration, Instant};

use setpoint_controlplane::serve::{ServeConfig, start};
use setpoint_integration::{Netns, require_root_and_tools};

use crate::e2e_support::{
    assert_sets_applied, assert_status_is_head, converge, converge_past, copy_examples,
    fresh_postgres_database, progress, spawn_agent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_flow_to_agents_by_delta_and_a_restarted_agent_converges() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let running = start(ServeConfig {
        manifests: manifests.path().to_path_buf(),
        kube: None,
        database: fresh_postgres_database(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
        rollout: None,
        admin: Default::default(),
    })
    .await
    .expect("control plane starts");
    let (ns_a, ns_c) = (
        Netns::create("e2e-a").expect("netns"),
        Netns::create("e2e-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (task_a, a) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent(&running, "node-c", &ns_c, dir_c.path());

    let first = converge(&running, &[&a, &c]).await;
    assert_sets_applied(&running.store, "node-a", first, &ns_a).await;
    assert_sets_applied(&running.store, "node-c", first, &ns_c).await;
    assert_eq!((progress(&a).snapshots, progress(&a).deltas), (1, 0));

    // An endpoint moves: one new revision, sent as a delta.
    let slices = manifests.path().join("endpointslices-core.yaml");
    let text = std::fs::read_to_string(&slices).expect("read");
    assert!(
        text.contains("10.244.1.2"),
        "the example has the endpoint this test moves"
    );
    std::fs::write(&slices, text.replacen("10.244.1.2", "10.244.1.99", 1)).expect("edit");
    let second = converge_past(&running, &[&a, &c], first).await;
    assert_eq!(
        progress(&a).snapshots,
        1,
        "no second snapshot: {:?}",
        progress(&a)
    );
    assert!(progress(&a).deltas >= 1, "{:?}", progress(&a));
    for node in ["node-a", "node-c"] {
        assert_status_is_head(&running.store, node, second).await;
    }

    // node-a's agent restarts. Its virtual servers lived in the old
    // process's memory (simulated IPVS), so its kernel no longer matches
    // its state directory: it must ask for a snapshot and converge.
    task_a.abort();
    let _ = task_a.await;
    let (_task_a2, a2) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !progress(&a2).connected || progress(&a2).revision != second {
        assert!(
            Instant::now() < deadline,
            "restarted agent: {:?}",
            progress(&a2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = progress(&a2);
    assert_eq!(
        (p.snapshots, p.deltas),
        (1, 0),
        "one snapshot after the restart: {p:?}"
    );
    assert_sets_applied(&running.store, "node-a", second, &ns_a).await;

    // A removed file is picked up too: its objects go, a new revision flows.
    std::fs::remove_file(&slices).expect("remove");
    let third = converge_past(&running, &[&a2, &c], second).await;
    assert!(third > second);
    assert_eq!(
        progress(&a2).snapshots,
        1,
        "then deltas again: {:?}",
        progress(&a2)
    );
    let metrics = running.metrics.encode();
    assert!(
        metrics.contains("network_programming_duration_seconds_count"),
        "{metrics}"
    );
}
