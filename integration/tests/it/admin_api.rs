//! The admin API end to end: the control plane on a fresh PostgreSQL
//! database, two agents applying into network namespaces, and the admin
//! gRPC client an operator's `setpointctl` uses. A bad revision is rolled
//! back, the rolled-back nodes stay pinned while newer revisions are
//! committed, and resume lets them follow again. Callers without a token,
//! with a read-only token, or on a follower replica are refused writes.
//! (`setpointctl` itself — arguments, output, exit codes — is tested in
//! `controlplane/ctl/tests/`.)

use std::path::Path;
use std::time::{Duration, Instant};

use setpoint_controlplane::admin::AdminConfig;
use setpoint_controlplane::serve::{Role, Running, ServeConfig, start};
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_proto::admin::admin_client::AdminClient;
use setpoint_proto::admin::{ListRevisionsRequest, ResumeRequest, RollbackRequest, StatusRequest};
use setpoint_store::RevisionId;
use tonic::transport::Channel;

use crate::e2e_support::{
    assert_status_is_head, converge, converge_past, fresh_postgres_database, manifests_and_tokens,
    progress, spawn_agent, wait_head_past,
};

const READ_TOKEN: &str = "e2e-read-token-0123456789";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

pub(crate) fn config(manifests: &Path, database: &str, tokens: &Path) -> ServeConfig {
    let any = "127.0.0.1:0".parse().expect("addr");
    ServeConfig {
        manifests: manifests.to_path_buf(),
        kube: None,
        database: database.to_string(),
        listen: any,
        metrics_listen: any,
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
        rollout: None,
        admin: AdminConfig {
            listen: Some(any),
            token_file: Some(tokens.to_path_buf()),
        },
        tls: None,
        election: Default::default(),
    }
}

async fn client(running: &Running) -> AdminClient<Channel> {
    let addr = running.admin_addr.expect("the admin API listens");
    AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin API reachable")
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    request
}

/// Replaces every `from` in a manifest file with `to`.
fn edit_all(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read manifest");
    assert!(text.contains(from), "{} has {from}", file.display());
    std::fs::write(file, text.replace(from, to)).expect("edit manifest");
}

fn ipset_save(ns: &Netns) -> String {
    ns.exec(&["ipset", "save"], None).expect("ipset save")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_pins_nodes_until_resume_and_refuses_the_unauthorized() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifests, tokens) =
        manifests_and_tokens(dir.path(), &format!("read {READ_TOKEN}\n{ADMIN_TOKEN}\n"));
    let database = fresh_postgres_database();
    let running = start(config(&manifests, &database, &tokens))
        .await
        .expect("control plane starts");
    let (ns_a, ns_c) = (
        Netns::create("adm-a").expect("netns"),
        Netns::create("adm-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_task_a, a) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent(&running, "node-c", &ns_c, dir_c.path());
    let nodes = [("node-a", &ns_a), ("node-c", &ns_c)];
    let first = converge(&running, &[&a, &c]).await;
    let mut good = Vec::new();
    for (node, _) in nodes {
        let state = running
            .store
            .node_state(node, RevisionId(first))
            .await
            .expect("read")
            .expect("node exists");
        good.push(state.digest());
    }

    // A bad revision: a Service's cluster IP moves.
    let services = manifests.join("services-default.yaml");
    edit_all(&services, "10.96.1.20", "10.96.1.21");
    let second = converge_past(&running, &[&a, &c], first).await;
    for (_, ns) in nodes {
        assert!(ipset_save(ns).contains("10.96.1.21,tcp:80"));
    }

    let mut admin = client(&running).await;
    let rollback = || RollbackRequest {
        to: first,
        nodes: Vec::new(),
        reason: "cluster IP moved by mistake".into(),
    };
    // Refused: no token, an unknown one, a read-only one.
    let refused = admin
        .rollback(with_token(rollback(), None))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = admin
        .rollback(with_token(rollback(), Some("not-a-token-of-this-server")))
        .await
        .expect_err("unknown token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = admin
        .rollback(with_token(rollback(), Some(READ_TOKEN)))
        .await
        .expect_err("read-only token");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(*running.head.borrow(), second, "nothing was written");
    // A read-only token reads.
    let listed = admin
        .list_revisions(with_token(
            ListRevisionsRequest::default(),
            Some(READ_TOKEN),
        ))
        .await
        .expect("read token lists")
        .into_inner();
    assert_eq!(listed.head, second);
    assert_eq!(listed.revisions.len() as u64, second);

    // A follower replica on the same database refuses writes.
    let follower = start(config(&manifests, &database, &tokens))
        .await
        .expect("second control plane starts");
    assert_eq!(*follower.role.borrow(), Role::Follower);
    let refused = client(&follower)
        .await
        .rollback(with_token(rollback(), Some(ADMIN_TOKEN)))
        .await
        .expect_err("follower refuses writes");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // The rollback, every node: a new revision with revision 1's states.
    let started = Instant::now();
    let third = admin
        .rollback(with_token(rollback(), Some(ADMIN_TOKEN)))
        .await
        .expect("admin rolls back")
        .into_inner()
        .revision;
    assert!(third > second);
    assert_eq!(converge_past(&running, &[&a, &c], second).await, third);
    let took = started.elapsed();
    println!("rollback of 2 agents: all acked in {took:.1?}");
    for ((node, ns), digest) in nodes.iter().zip(&good) {
        assert_status_is_head(&running.store, node, third).await;
        let status = running
            .store
            .agent_status(node)
            .await
            .expect("read")
            .expect("reported");
        assert_eq!(status.applied_digest.as_ref(), Some(digest), "{node}");
        let save = ipset_save(ns);
        assert!(save.contains("10.96.1.20,tcp:80"), "{node}: {save}");
        assert!(!save.contains("10.96.1.21"), "{node}: {save}");
    }
    let status = admin
        .status(with_token(StatusRequest {}, Some(READ_TOKEN)))
        .await
        .expect("status")
        .into_inner();
    let fleet = status.fleet.expect("fleet summary");
    // node-b has no agent here, but it is pinned too (the rollback chose every node).
    assert_eq!(
        (fleet.nodes, fleet.at_head, fleet.pinned),
        (3, 2, 3),
        "{status:?}"
    );

    // A later edit is committed, but the pinned nodes keep revision 1's state.
    edit_all(&services, "10.96.1.30", "10.96.1.31");
    let fourth = wait_head_past(&running, third).await;
    assert_eq!(
        running
            .store
            .changed_nodes(RevisionId(fourth))
            .await
            .expect("read"),
        Vec::<String>::new(),
        "pinned nodes do not change"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((node, ns), digest) in nodes.iter().zip(&good) {
        let state = running
            .store
            .node_state(node, RevisionId(fourth))
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(&state.digest(), digest, "{node} stays rolled back");
        let save = ipset_save(ns);
        assert!(!save.contains("10.96.1.31"), "{node}: {save}");
        assert!(save.contains("10.96.1.20,tcp:80"), "{node}: {save}");
    }
    assert_eq!(progress(&a).revision, third, "nothing new was sent");

    // Resume: both follow the computed state again, with both edits.
    let fifth = admin
        .resume(with_token(
            ResumeRequest { nodes: Vec::new() },
            Some(ADMIN_TOKEN),
        ))
        .await
        .expect("resume")
        .into_inner()
        .revision;
    assert_eq!(converge_past(&running, &[&a, &c], fourth).await, fifth);
    for (node, ns) in nodes {
        assert_status_is_head(&running.store, node, fifth).await;
        let save = ipset_save(ns);
        assert!(save.contains("10.96.1.21,tcp:80"), "{node}: {save}");
        assert!(save.contains("10.96.1.31,udp:514"), "{node}: {save}");
    }
    let listed = admin
        .list_revisions(with_token(
            ListRevisionsRequest {
                page_size: 3,
                before: 0,
            },
            Some(READ_TOKEN),
        ))
        .await
        .expect("list")
        .into_inner();
    let actions: Vec<(&str, u64)> = listed
        .revisions
        .iter()
        .map(|r| (r.action.as_str(), r.target))
        .collect();
    assert_eq!(
        actions,
        [("resume", 0), ("commit", 0), ("rollback", first)],
        "{listed:?}"
    );
    assert_eq!(listed.next_before, third);
}
