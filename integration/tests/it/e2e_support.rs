//! What the running-system tests share: a fresh PostgreSQL database per
//! test, a copy of the example manifests, real agents in network
//! namespaces (IPVS in memory: this kernel has none), and waiting for them
//! to converge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions, AgentProgress};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;
use setpoint_controlplane::serve::Running;
use setpoint_integration::Netns;
use setpoint_store::{RevisionId, Store};

pub use setpoint_integration::postgres::{fresh_postgres_database, psql};

pub fn copy_examples(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for entry in std::fs::read_dir(from).expect("examples") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A copy of the examples in `dir/manifests` and an admin token file
/// `dir/tokens` holding `tokens`.
pub fn manifests_and_tokens(dir: &Path, tokens: &str) -> (PathBuf, PathBuf) {
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_examples(&manifests);
    let file = dir.join("tokens");
    std::fs::write(&file, tokens).expect("tokens");
    (manifests, file)
}

/// Replaces the first `from` in a manifest file with `to`.
pub fn edit_manifest(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read manifest");
    assert!(
        text.contains(from),
        "{} has the text this test edits: {from}",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).expect("edit manifest");
}

pub type Progress = Arc<Mutex<AgentProgress>>;

pub fn spawn_agent(
    running: &Running,
    node: &str,
    ns: &Netns,
    state_dir: &Path,
) -> (tokio::task::JoinHandle<()>, Progress) {
    spawn_agent_to(running.agent_addr, node, ns, state_dir)
}

/// An agent for `node` applying into `ns`, connecting to `controlplane`.
pub fn spawn_agent_to(
    controlplane: SocketAddr,
    node: &str,
    ns: &Netns,
    state_dir: &Path,
) -> (tokio::task::JoinHandle<()>, Progress) {
    let agent = Agent::new(AgentOptions {
        target: Target {
            netns: Some(ns.name().to_string()),
        },
        state_dir: Some(state_dir.to_path_buf()),
        ipvs: IpvsMode::Simulated,
        ..AgentOptions::new(node, format!("http://{controlplane}"))
    });
    let progress = agent.progress.clone();
    (tokio::spawn(agent.run()), progress)
}

/// The head once it is past `past` (20 s at most): a write's head can be
/// raised a moment after the write reports itself done.
pub async fn wait_head_past(running: &Running, past: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let head = *running.head.borrow();
        if head > past {
            return head;
        }
        assert!(Instant::now() < deadline, "no revision after {past}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn progress(p: &Progress) -> AgentProgress {
    p.lock().map(|p| p.clone()).unwrap_or_default()
}

/// Waits until every agent applied the control plane's head; returns it.
pub async fn converge(running: &Running, agents: &[&Progress]) -> u64 {
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

/// Waits until every agent applied a head newer than `after`; returns it.
pub async fn converge_past(running: &Running, agents: &[&Progress], after: u64) -> u64 {
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

/// Every set of `node`'s state at `revision` is in the namespace with its entries.
pub async fn assert_sets_applied(store: &Store, node: &str, revision: u64, ns: &Netns) {
    let state = store
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

/// The store records `node`'s agent at `head` with the head's digest
/// (polled: the session records an ack just after the agent counts it).
pub async fn assert_status_is_head(store: &Store, node: &str, head: u64) {
    let want = store
        .node_state(node, RevisionId(head))
        .await
        .expect("store read")
        .expect("node exists")
        .digest();
    // The session records the ack just after the agent counts it applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = store.agent_statuses().await.expect("statuses");
        let status = statuses.iter().find(|s| s.node == node);
        if let Some(s) = status
            && s.applied_revision == Some(RevisionId(head))
        {
            assert_eq!(s.applied_digest, Some(want), "{node}: {s:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: the store's agent status is not at head {head}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a control plane came back: `last` carries `address` (an edit made
/// while it was down), and each agent is connected, took it by delta (its
/// one snapshot is the first one ever), nacked nothing, and its kernel and
/// recorded status are at `last`.
pub async fn assert_resumed_by_delta(
    store: &Store,
    agents: &[(&str, &Progress, &Netns, &AgentProgress)],
    last: u64,
    address: &str,
) {
    let state = store
        .node_state(agents[0].0, RevisionId(last))
        .await
        .expect("read")
        .expect("node exists");
    let ipvs = setpoint_dataplane::render(&state, setpoint_dataplane::Format::Ipvs);
    assert!(ipvs.contains(address), "{ipvs}");
    for (node, p, ns, was) in agents {
        let now = progress(p);
        assert!(now.connected, "{node}: {now:?}");
        assert_eq!(
            now.snapshots, 1,
            "{node} resumed by delta, not snapshot: {now:?}"
        );
        assert!(now.deltas > was.deltas, "{node}: {was:?} → {now:?}");
        assert_eq!(now.nacks, 0, "{node}: {now:?}");
        assert_sets_applied(store, node, last, ns).await;
        assert_status_is_head(store, node, last).await;
    }
}
