//! The running system end to end: the control plane on a fresh PostgreSQL
//! database serving a copy of the example manifests, real agents over gRPC
//! on loopback applying ipsets and iptables in network namespaces (IPVS in
//! memory: this kernel has none).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions, AgentProgress};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_store::RevisionId;

fn fresh_postgres_database() -> String {
    let base = std::env::var("SETPOINT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("setpoint_e2e_{}_{}", std::process::id(), rand_suffix());
    let out = std::process::Command::new("psql")
        .args([base.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql runs (scripts/test makes sure PostgreSQL is up)");
    assert!(
        out.status.success(),
        "create database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("SETPOINT_TEST_POSTGRES must end in /database: {base}"),
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
}

fn copy_examples(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for entry in std::fs::read_dir(from).expect("examples") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

type Progress = Arc<Mutex<AgentProgress>>;

fn spawn_agent(
    running: &Running,
    node: &str,
    ns: &Netns,
    state_dir: &Path,
) -> (tokio::task::JoinHandle<()>, Progress) {
    let agent = Agent::new(AgentOptions {
        node: node.to_string(),
        controlplane: format!("http://{}", running.agent_addr),
        target: Target {
            netns: Some(ns.name().to_string()),
        },
        dry_run: false,
        state_dir: Some(state_dir.to_path_buf()),
        ipvs: IpvsMode::Simulated,
        drift_interval: Duration::from_secs(30),
    });
    let progress = agent.progress.clone();
    (tokio::spawn(agent.run()), progress)
}

fn progress(p: &Progress) -> AgentProgress {
    p.lock().map(|p| p.clone()).unwrap_or_default()
}

async fn converge(running: &Running, agents: &[&Progress]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = *running.head.borrow();
        if head > 0 && agents.iter().all(|p| progress(p).revision == head) {
            return head;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not converge to revision {head}: {:?}",
            agents.iter().map(|p| progress(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every set of `node`'s state at `revision` is in the namespace with its entries.
async fn assert_sets_applied(running: &Running, node: &str, revision: u64, ns: &Netns) {
    let state = running
        .store
        .node_state(node, RevisionId(revision))
        .await
        .expect("store read")
        .expect("node exists");
    let save = ns.exec(&["ipset", "save"], None).expect("ipset save");
    let kernel = setpoint_agent::ipset::parse_save(&save, |n| n.starts_with("SP")).expect("parses");
    let flat = state.flatten();
    for (name, _) in flat.sets() {
        let want = flat.entries(name).map(|e| e.len()).unwrap_or(0);
        let have = kernel.get(name).map(|s| s.entries.len());
        assert_eq!(
            have,
            Some(want),
            "{node}: set {name} at revision {revision}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_flow_to_agents_by_delta_and_a_restarted_agent_converges() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let running = start(ServeConfig {
        manifests: manifests.path().to_path_buf(),
        database: fresh_postgres_database(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
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
    assert_sets_applied(&running, "node-a", first, &ns_a).await;
    assert_sets_applied(&running, "node-c", first, &ns_c).await;
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
    let statuses = running.store.agent_statuses().await.expect("statuses");
    for node in ["node-a", "node-c"] {
        let status = statuses.iter().find(|s| s.node == node).expect("recorded");
        assert_eq!(
            status.applied_revision,
            Some(RevisionId(second)),
            "{status:?}"
        );
        let want = running
            .store
            .node_state(node, RevisionId(second))
            .await
            .expect("read")
            .expect("node");
        assert_eq!(status.applied_digest, Some(want.digest()));
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
    assert_sets_applied(&running, "node-a", second, &ns_a).await;

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

async fn converge_past(running: &Running, agents: &[&Progress], after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = converge(running, agents).await;
        if head > after {
            return head;
        }
        assert!(Instant::now() < deadline, "no revision after {after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
