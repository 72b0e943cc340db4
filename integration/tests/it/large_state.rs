//! A node state larger than gRPC's customary 4 MiB message limit reaches
//! its agent in one snapshot. With the default limit the agent refused the
//! snapshot, reconnected and was sent it again, forever (the fleet
//! benchmark's 10,000-Service cluster never converged).

use std::time::{Duration, Instant};

use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_controlplane::serve::{ServeConfig, start};
use setpoint_store::RevisionId;

use crate::e2e_support::{fresh_postgres_database, progress};

#[path = "../../synthetic_manifests.rs"]
mod synthetic_manifests;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_four_mebibytes_reaches_the_agent_once() {
    let manifests = tempfile::tempdir().expect("tempdir");
    let shape = ClusterShape {
        nodes: 1,
        services: 10_000,
        endpoints: 50_000,
        zones: 1,
    };
    synthetic_manifests::write_cluster(manifests.path(), &shape);
    let running = start(ServeConfig::local(
        manifests.path(),
        fresh_postgres_database(),
    ))
    .await
    .expect("control plane starts");
    let node = synthetic::node_name(0);
    let agent = Agent::new(AgentOptions {
        dry_run: true,
        ipvs: IpvsMode::Simulated,
        ..AgentOptions::new(node.clone(), format!("http://{}", running.agent_addr))
    });
    let seen = agent.progress.clone();
    let task = tokio::spawn(agent.run());

    let deadline = Instant::now() + Duration::from_secs(180);
    let head = loop {
        let head = *running.head.borrow();
        if head > 0 && progress(&seen).revision == head {
            break head;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not apply revision {head}: {:?}",
            progress(&seen)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state = running
        .store
        .node_state(&node, RevisionId(head))
        .await
        .expect("read")
        .expect("the node has a state");
    let size = setpoint_proto::snapshot(head, &state)
        .expect("encodes")
        .state
        .len();
    assert!(
        size > 4 << 20,
        "the state must exceed 4 MiB to test the limit; it is {size} bytes"
    );
    let p = progress(&seen);
    assert_eq!(p.snapshots, 1, "one snapshot, not a resend loop: {p:?}");
    assert_eq!(p.nacks, 0, "{p:?}");
    task.abort();
}
