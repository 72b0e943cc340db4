//! The control plane as an operator runs it — the `setpoint-controlplane
//! serve` binary, PostgreSQL, a manifests directory — SIGKILLed by the
//! kernel mid-rollout and started again. Agents (the real client, applying
//! into network namespaces) keep their kernel state while it is away,
//! reconnect to the new process and resume by delta.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use setpoint_integration::binaries::workspace_binary;
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_store::Store;

use crate::e2e_support::{
    Progress, assert_resumed_by_delta, assert_sets_applied, copy_examples, edit_manifest,
    fresh_postgres_database, progress, spawn_agent_to,
};
use crate::running_failures::{free_addr, open_store, wait_for};

/// The control-plane binary of this build.
pub(crate) fn controlplane_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("setpoint-controlplane"))
}

/// A `serve` process; killed with SIGKILL when dropped.
pub(crate) struct Serve(pub(crate) Child);

impl Serve {
    fn start(manifests: &Path, database: &str, listen: SocketAddr) -> Serve {
        let child = Command::new(controlplane_binary())
            .arg("serve")
            .arg("--manifests")
            .arg(manifests)
            .args(["--database", database])
            .args(["--listen", &listen.to_string()])
            .args(["--metrics-listen", &free_addr().to_string()])
            .args(["--admin-listen", &free_addr().to_string()])
            .args(["--batch-ms", "50"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start setpoint-controlplane serve");
        Serve(child)
    }

    /// SIGKILL: no handler runs, the kernel closes every socket.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn head(store: &Store) -> u64 {
    store
        .head()
        .await
        .expect("store head")
        .map(|r| r.0)
        .unwrap_or(0)
}

/// Waits until every agent is connected and applied the store's head,
/// which is newer than `after`; returns it.
async fn converge_past(store: &Store, agents: &[&Progress], after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let head = head(store).await;
        if head > after
            && agents.iter().all(|p| {
                let p = progress(p);
                p.connected && p.revision == head
            })
        {
            return head;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not converge past {after} (head {head}): {:?}",
            agents.iter().map(|p| progress(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controlplane_binary_sigkilled_mid_rollout_agents_keep_state_and_resume_by_delta() {
    require_root_and_tools();
    let binary = tokio::task::spawn_blocking(controlplane_binary);
    binary.await.expect("binary");
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let database = fresh_postgres_database();
    let listen = free_addr();
    let mut first_cp = Serve::start(manifests.path(), &database, listen);
    let store = open_store(&database).await;
    let (ns_a, ns_c) = (
        Netns::create("kill-a").expect("netns"),
        Netns::create("kill-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_task_a, a) = spawn_agent_to(listen, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent_to(listen, "node-c", &ns_c, dir_c.path());
    let first = converge_past(&store, &[&a, &c], 0).await;
    assert_eq!(progress(&a).snapshots, 1, "{:?}", progress(&a));
    assert_eq!(progress(&c).snapshots, 1, "{:?}", progress(&c));

    // A rollout starts: an endpoint moves, and the process is SIGKILLed
    // as soon as the revision carrying it is committed — the agents may
    // or may not have it.
    let slices = manifests.path().join("endpointslices-core.yaml");
    edit_manifest(&slices, "10.244.1.2", "10.244.1.99");
    let deadline = Instant::now() + Duration::from_secs(20);
    while head(&store).await <= first {
        assert!(Instant::now() < deadline, "the edit was not committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first_cp.kill();
    let committed = head(&store).await;
    wait_for(
        "agents notice the control plane is gone",
        Duration::from_secs(10),
        || !progress(&a).connected && !progress(&c).connected,
    )
    .await;

    // While it is away the kernels keep what the agents last applied.
    let before = (progress(&a), progress(&c));
    for (node, p, ns) in [("node-a", &before.0, &ns_a), ("node-c", &before.1, &ns_c)] {
        eprintln!(
            "{node} held revision {} of {first}..={committed} when the control plane was killed",
            p.revision
        );
        assert!(p.revision >= first, "{node}: {p:?}");
        assert_sets_applied(&store, node, p.revision, ns).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (node, p, ns) in [("node-a", &before.0, &ns_a), ("node-c", &before.1, &ns_c)] {
        assert_sets_applied(&store, node, p.revision, ns).await;
    }

    // Edited while it is down; then the same binary starts again on the
    // same database and address.
    edit_manifest(&slices, "10.244.1.99", "10.244.1.123");
    let _second_cp = Serve::start(manifests.path(), &database, listen);
    let last = converge_past(&store, &[&a, &c], committed).await;
    let resumed = [
        ("node-a", &a, &ns_a, &before.0),
        ("node-c", &c, &ns_c, &before.1),
    ];
    assert_resumed_by_delta(&store, &resumed, last, "10.244.1.123").await;
}
