//! Two control planes on one PostgreSQL database: one leads (commits), the
//! other follows (serves streams from the store, learns new revisions by
//! LISTEN/NOTIFY). When the leader dies the follower takes over, revision
//! numbers keep rising, and an agent on the follower saw every revision.

use std::path::Path;
use std::time::{Duration, Instant};

use setpoint_controlplane::serve::{Role, ServeConfig, start};
use setpoint_integration::postgres::fresh_postgres_database;

fn config(manifests: &Path, database: &str) -> ServeConfig {
    ServeConfig::local(manifests, database)
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn one_leader_then_the_follower_takes_over_with_rising_revisions() {
    let manifests = tempfile::tempdir().expect("tempdir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), manifests.path().join(entry.file_name())).expect("copy");
    }
    let database = fresh_postgres_database();

    // The first control plane runs on its own runtime so that dropping it
    // kills every task and connection at once, as a crash would.
    let first_runtime = tokio::runtime::Runtime::new().expect("runtime");
    let first = first_runtime
        .block_on(start(config(manifests.path(), &database)))
        .expect("first control plane");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        wait_for("the first to lead", || *first.role.borrow() == Role::Leader).await;
        wait_for("a first revision", || *first.head.borrow() > 0).await;
    });
    let second = runtime
        .block_on(start(config(manifests.path(), &database)))
        .expect("second control plane");
    // A dry-run agent on the follower.
    let agent = setpoint_agent::client::Agent::new(setpoint_agent::client::AgentOptions {
        dry_run: true,
        ipvs: setpoint_agent::services::IpvsMode::Simulated,
        ..setpoint_agent::client::AgentOptions::new(
            "node-a",
            format!("http://{}", second.agent_addr),
        )
    });
    let _agent = runtime.spawn(agent.run());
    // An agent given both replicas, as an operator gives them: it starts
    // at either, and moves to the other when its stream ends.
    let both = setpoint_agent::client::Agent::new(setpoint_agent::client::AgentOptions {
        dry_run: true,
        ipvs: setpoint_agent::services::IpvsMode::Simulated,
        controlplanes: vec![
            format!("http://{}", first.agent_addr),
            format!("http://{}", second.agent_addr),
        ],
        ..setpoint_agent::client::AgentOptions::new("node-b", String::new())
    });
    let _both = runtime.spawn(both.run());
    let acked_by = |running: &setpoint_controlplane::serve::Running, node: &str| {
        running
            .service
            .fleet
            .lock()
            .map(|f| f.get(node).map_or(0, |v| v.acked_revision))
            .unwrap_or(0)
    };
    let acked = |running: &setpoint_controlplane::serve::Running| acked_by(running, "node-a");
    let first_head = runtime.block_on(async {
        // The follower learns the head from the store; it never commits.
        wait_for("the follower to see the head", || {
            *second.head.borrow() == *first.head.borrow()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(*second.role.borrow(), Role::Follower, "one leader only");
        // A change committed by the leader reaches the follower by notification.
        let slices = manifests.path().join("endpointslices-core.yaml");
        let text = std::fs::read_to_string(&slices).expect("read");
        std::fs::write(&slices, text.replacen("10.244.1.2", "10.244.1.77", 1)).expect("edit");
        let before = *first.head.borrow();
        wait_for("the follower to see the leader's new revision", || {
            *second.head.borrow() > before
        })
        .await;
        let head = *second.head.borrow();
        wait_for(
            "the follower's agent to ack the leader's new revision",
            || acked(&second) >= head,
        )
        .await;
        // Served from the follower's publication (one bulk read of the
        // store per head), not from a read per session.
        assert!(
            second.service.fanout.published(head, "node-a").is_some(),
            "the follower published revision {head}"
        );
        wait_for("node-b on either replica at the head", || {
            acked_by(&first, "node-b").max(acked_by(&second, "node-b")) >= head
        })
        .await;
        head
    });
    let snapshots_before = second.metrics.snapshots_sent.get();

    drop(first_runtime);
    runtime.block_on(async {
        wait_for("the follower to take over", || {
            *second.role.borrow() == Role::Leader
        })
        .await;
        let slices = manifests.path().join("endpointslices-core.yaml");
        let text = std::fs::read_to_string(&slices).expect("read");
        std::fs::write(&slices, text.replacen("10.244.1.77", "10.244.1.78", 1)).expect("edit");
        wait_for("a revision from the new leader", || {
            *second.head.borrow() > first_head
        })
        .await;
        let head = *second.head.borrow();
        wait_for("the agent to ack the new leader's revision", || {
            acked(&second) >= head
        })
        .await;
        // node-b, on whichever replica, is now on the survivor, at the
        // head, by delta: its hello's revision and digest were trusted.
        wait_for("node-b on the survivor at the new head", || {
            acked_by(&second, "node-b") >= head
        })
        .await;
        assert_eq!(
            second.metrics.snapshots_sent.get(),
            snapshots_before,
            "no snapshot after the failover"
        );
        let revisions = second.store.list_revisions(100, None).await.expect("list");
        let numbers: Vec<u64> = revisions.iter().map(|r| r.revision.0).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(
            numbers, sorted,
            "revision numbers are unique and newest first"
        );
        let epochs: Vec<u64> = revisions.iter().map(|r| r.epoch.0).collect();
        assert!(
            epochs.first() > epochs.last(),
            "the new leader writes with a higher epoch: {epochs:?}"
        );
    });
}
