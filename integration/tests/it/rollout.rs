//! Progressive rollout end to end (`serve --rollout canary`): the control
//! plane on a fresh PostgreSQL database, three agents applying into network
//! namespaces, node-a the canary (by label selector). A healthy revision
//! reaches node-a first and the others only after the soak; a revision
//! node-a's kernel refuses (a set of the wrong type created by the test in
//! its namespace, so `ipset restore` fails) halts the rollout, node-a is
//! rolled back automatically, and node-b and node-c never get it. A
//! canary that acks and then goes silent (its agent gone) during the soak
//! halts the rollout the same way.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use setpoint_compute::Index;
use setpoint_controlplane::rollout::{REASON_PREFIX, RolloutConfig};
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_dataplane::{Digest, NodeDataplane};
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_proto::admin::StatusRequest;
use setpoint_proto::admin::admin_client::AdminClient;
use setpoint_store::{AgentResult, RevisionId, Store};

use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;

use crate::e2e_support::{
    copy_examples, fresh_postgres_database, manifests_and_tokens, wait_head_past,
};

const TOKEN: &str = "e2e-rollout-admin-token-0123";
const SOAK: Duration = Duration::from_secs(2);
/// Agents here heartbeat every 200 ms.
const SILENCE: Duration = Duration::from_millis(1500);

/// An agent applying into `ns` that heartbeats every 200 ms, so canaries
/// are heard from within the short silence bound of these tests.
fn spawn_agent(
    running: &Running,
    node: &str,
    ns: &Netns,
    state_dir: &Path,
) -> tokio::task::JoinHandle<()> {
    let agent = Agent::new(AgentOptions {
        target: Target {
            netns: Some(ns.name().to_string()),
        },
        state_dir: Some(state_dir.to_path_buf()),
        ipvs: IpvsMode::Simulated,
        heartbeat: Duration::from_millis(200),
        ..AgentOptions::new(node, format!("http://{}", running.agent_addr))
    });
    tokio::spawn(agent.run())
}

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// node-a, node-b and node-c, each with an agent applying into a namespace
/// of its own (`<tag>-a` …), all settled on the first revision.
struct Fleet {
    namespaces: Vec<Netns>,
    _dirs: Vec<tempfile::TempDir>,
    agents: Vec<tokio::task::JoinHandle<()>>,
    /// The first revision, and every node's state in it.
    first: u64,
    first_states: Vec<Digest>,
}

impl Fleet {
    async fn start(running: &Running, tag: &str) -> Fleet {
        let namespaces: Vec<Netns> = ["a", "b", "c"]
            .iter()
            .map(|n| Netns::create(&format!("{tag}-{n}")).expect("netns"))
            .collect();
        let dirs: Vec<tempfile::TempDir> = NAMES
            .iter()
            .map(|_| tempfile::tempdir().expect("dir"))
            .collect();
        let agents = NAMES
            .iter()
            .zip(&namespaces)
            .zip(&dirs)
            .map(|((node, ns), d)| spawn_agent(running, node, ns, d.path()))
            .collect();
        // The first revision: nothing to hold yet; it settles as the good one.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            let s = running.rollout.borrow().clone();
            if s.phase == "idle" && s.good > 0 {
                break *running.head.borrow();
            }
            assert!(Instant::now() < deadline, "no first rollout: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut first_states = Vec::new();
        for node in NAMES {
            let want = desired(&running.store, node, first).await;
            wait_applied(&running.store, node, want).await;
            first_states.push(want);
        }
        Fleet {
            namespaces,
            _dirs: dirs,
            agents,
            first,
            first_states,
        }
    }
}

fn config(manifests: &Path, database: &str, tokens: &Path) -> ServeConfig {
    ServeConfig {
        rollout: Some(RolloutConfig {
            share: None,
            selector: vec!["kubernetes.io/hostname=node-a".parse().expect("selector")],
            soak: SOAK,
            failure_threshold: 1,
            canary_silence: SILENCE,
        }),
        ..crate::admin_api::config(manifests, database, tokens)
    }
}

async fn desired(store: &Store, node: &str, revision: u64) -> Digest {
    store
        .node_state(node, RevisionId(revision))
        .await
        .expect("store read")
        .expect("node exists")
        .digest()
}

async fn applied(store: &Store, node: &str) -> Option<Digest> {
    store
        .agent_status(node)
        .await
        .expect("store read")
        .and_then(|s| s.applied_digest)
}

/// Waits until `node`'s agent reports `want` applied.
async fn wait_applied(store: &Store, node: &str, want: Digest) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if applied(store, node).await == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never applied {want}: {:?}; revisions {:#?}; pins {:?}",
            store.agent_status(node).await,
            store.list_revisions(10, None).await,
            store.pins().await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the rollout to be in `phase`; returns the head then.
async fn wait_phase(running: &Running, phase: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if running.rollout.borrow().phase == phase {
            return *running.head.borrow();
        }
        assert!(
            Instant::now() < deadline,
            "rollout never {phase}: {:?}",
            running.rollout.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves a Service's address in the manifests; waits for the canary phase
/// of the revision carrying it (newer than `past`) and returns it.
async fn move_service(running: &Running, services: &Path, from: &str, to: &str, past: u64) -> u64 {
    let text = std::fs::read_to_string(services).expect("read manifest");
    std::fs::write(services, text.replace(from, to)).expect("edit");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = running.rollout.borrow().clone();
        if s.phase == "canary" && s.target > past {
            return s.target;
        }
        assert!(
            Instant::now() < deadline,
            "no canary phase after {past}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn compute(manifests: &Path, node: &str) -> NodeDataplane {
    let report = setpoint_source::load_path(manifests).expect("manifests load");
    let mut index = Index::new(Default::default());
    for object in report.objects {
        index.upsert(object);
    }
    index.commit();
    index.node_state(node).expect("node computed")
}

fn ipset_save(ns: &Netns) -> String {
    ns.exec(&["ipset", "save"], None).expect("ipset save")
}

const BAD_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: only-from-documentation-net
  namespace: default
spec:
  podSelector: {}
  policyTypes:
    - Ingress
  ingress:
    - from:
        - ipBlock:
            cidr: 198.51.100.0/24
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_first_then_all_and_a_failing_canary_halts_and_rolls_back() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifests, tokens) = manifests_and_tokens(dir.path(), &format!("{TOKEN}\n"));
    let running = start(config(&manifests, &fresh_postgres_database(), &tokens))
        .await
        .expect("control plane starts");
    let store = running.store.clone();
    let names = NAMES;
    let fleet = Fleet::start(&running, "ro").await;
    let (namespaces, first, before) = (&fleet.namespaces, fleet.first, &fleet.first_states);
    assert_eq!(running.rollout.borrow().canaries, ["node-a"]);

    // A healthy revision: a Service's cluster IP moves.
    let services = manifests.join("services-default.yaml");
    let target = move_service(&running, &services, "10.96.1.20", "10.96.1.21", first).await;
    let canary_done = {
        wait_applied(&store, "node-a", desired(&store, "node-a", target).await).await;
        Instant::now()
    };
    // The canary has it; the others are held at their earlier state.
    assert!(ipset_save(&namespaces[0]).contains("10.96.1.21,tcp:80"));
    for (i, node) in names.iter().enumerate().skip(1) {
        assert_eq!(
            desired(&store, node, *running.head.borrow()).await,
            before[i],
            "{node} is held"
        );
        assert_eq!(applied(&store, node).await, Some(before[i]), "{node}");
        let save = ipset_save(&namespaces[i]);
        assert!(!save.contains("10.96.1.21"), "{node}: {save}");
    }
    wait_phase(&running, "idle").await;
    // Promotion resumed the held nodes: a revision past the target.
    let promoted = wait_head_past(&running, target).await;
    println!(
        "canary acked to promotion: {:.1?} (soak {SOAK:?})",
        canary_done.elapsed()
    );
    assert!(
        canary_done.elapsed() >= SOAK - Duration::from_millis(200),
        "promoted after the soak"
    );
    assert!(promoted > target);
    for (i, node) in names.iter().enumerate() {
        let want = desired(&store, node, promoted).await;
        let computed = store
            .computed_state(node, RevisionId(target))
            .await
            .expect("read")
            .expect("node exists");
        assert_eq!(want, computed.digest(), "{node}: the target's state");
        wait_applied(&store, node, want).await;
        assert!(ipset_save(&namespaces[i]).contains("10.96.1.21,tcp:80"));
    }
    let good = running.rollout.borrow().good;
    assert_eq!(good, target);

    // A failing revision: a NetworkPolicy whose new set node-a's kernel
    // refuses (the test made a set of that name with another type).
    let policy = manifests.join("zz-bad-policy.yaml");
    let scratch = dir.path().join("bad");
    std::fs::create_dir(&scratch).expect("mkdir");
    copy_examples(&scratch);
    std::fs::copy(&services, scratch.join("services-default.yaml")).expect("copy");
    std::fs::write(scratch.join("zz-bad-policy.yaml"), BAD_POLICY).expect("write");
    let (old, new) = (
        compute(&manifests, "node-a").flatten(),
        compute(&scratch, "node-a").flatten(),
    );
    let old_sets: BTreeSet<&String> = old.sets().map(|(n, _)| n).collect();
    let (set, spec) = new
        .sets()
        .find(|(n, _)| !old_sets.contains(n))
        .expect("the policy adds a set on node-a");
    let wrong = if format!("{:?}", spec.kind) == "HashNet" {
        "hash:ip"
    } else {
        "hash:net"
    };
    namespaces[0]
        .exec(&["ipset", "create", set, wrong], None)
        .expect("foreign set");
    // What every node runs now: the promoted revision's states.
    let before_bad = *running.head.borrow();
    let held: Vec<Digest> = {
        let mut v = Vec::new();
        for node in names {
            v.push(desired(&store, node, before_bad).await);
        }
        v
    };
    assert_eq!(desired(&store, "node-a", good).await, held[0]);
    std::fs::write(&policy, BAD_POLICY).expect("policy");
    let written = Instant::now();
    wait_phase(&running, "halted").await;
    println!("bad policy written to halted: {:.1?}", written.elapsed());
    let status = running.rollout.borrow().clone();
    assert_eq!(status.failed, ["node-a"], "{status:?}");
    assert!(status.reason.starts_with(REASON_PREFIX), "{status:?}");
    // The kernel refused the set, nothing else.
    assert!(
        status.reason.contains("Set cannot be created"),
        "{status:?}"
    );
    let bad = status.target;
    assert!(bad > good);
    // node-a is rolled back to the good revision's state, and acks it.
    wait_head_past(&running, bad).await;
    let pins = store.pins().await.expect("pins");
    let pin_a = pins
        .iter()
        .find(|p| p.node == "node-a")
        .expect("node-a pinned");
    assert_eq!(pin_a.held_at, RevisionId(good), "{pin_a:?}");
    assert!(pin_a.reason.contains("failed on 1 canary"), "{pin_a:?}");
    wait_applied(&store, "node-a", held[0]).await;
    println!(
        "bad policy written to node-a acking its rollback: {:.1?}",
        written.elapsed()
    );
    // The rest never got the bad revision: held at the good state all along.
    tokio::time::sleep(SOAK + Duration::from_millis(500)).await;
    for (i, node) in names.iter().enumerate().skip(1) {
        let head = *running.head.borrow();
        assert_eq!(desired(&store, node, head).await, held[i], "{node}");
        assert_eq!(applied(&store, node).await, Some(held[i]), "{node}");
        let s = store
            .agent_status(node)
            .await
            .expect("read")
            .expect("agent");
        assert_eq!(s.result, AgentResult::Ack, "{node}");
        assert!(
            s.applied_revision.is_some_and(|r| r.0 < bad),
            "{node} never applied {bad}: {s:?}"
        );
        let save = ipset_save(&namespaces[i]);
        assert!(!save.contains("198.51.100.0/24"), "{node}: {save}");
    }
    assert_eq!(running.rollout.borrow().phase, "halted", "stays halted");
    // Operators see it: the rollback revision's cause, the status, metrics.
    let mut admin =
        AdminClient::connect(format!("http://{}", running.admin_addr.expect("admin API")))
            .await
            .expect("admin API");
    let mut request = tonic::Request::new(StatusRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let reply = admin.status(request).await.expect("status").into_inner();
    let rollout = reply.rollout.expect("rollout status");
    assert_eq!((rollout.phase.as_str(), rollout.target), ("halted", bad));
    assert_eq!(rollout.failed, ["node-a"]);
    let node_a = reply
        .nodes
        .iter()
        .find(|n| n.node == "node-a")
        .expect("node-a listed");
    assert_eq!(node_a.pinned_at, good);
    let revisions = store.list_revisions(5, None).await.expect("revisions");
    assert!(
        revisions
            .iter()
            .any(|r| r.cause.summary.contains("failed on 1 canary")),
        "{revisions:?}"
    );
    let metrics = running.metrics.encode();
    assert!(
        metrics.contains("setpoint_rollouts_halted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("setpoint_rollout_rollbacks_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("setpoint_rollouts_promoted_total 2"),
        "{metrics}"
    );

    // A newer revision (the bad policy gone, another Service moved)
    // restarts the rollout: node-a is released to it first, the rest
    // follow after the soak.
    std::fs::remove_file(&policy).expect("remove the policy");
    let newer = move_service(&running, &services, "10.96.1.30", "10.96.1.31", bad).await;
    // Released after the commit: its computed state, not its pin at `newer`.
    let computed = store
        .computed_state("node-a", RevisionId(newer))
        .await
        .expect("read")
        .expect("node-a exists");
    wait_applied(&store, "node-a", computed.digest()).await;
    assert!(ipset_save(&namespaces[0]).contains("10.96.1.31,udp:514"));
    for (i, node) in names.iter().enumerate().skip(1) {
        assert_eq!(applied(&store, node).await, Some(held[i]), "{node} waits");
    }
    wait_phase(&running, "idle").await;
    let promoted = wait_head_past(&running, newer).await;
    for (i, node) in names.iter().enumerate() {
        wait_applied(&store, node, desired(&store, node, promoted).await).await;
        let save = ipset_save(&namespaces[i]);
        assert!(save.contains("10.96.1.31,udp:514"), "{node}: {save}");
        assert!(!save.contains("198.51.100.0/24"), "{node}: {save}");
    }
    assert_eq!(running.rollout.borrow().good, newer);
    assert!(store.pins().await.expect("pins").is_empty(), "all released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_acks_and_goes_silent_halts_the_rollout() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifests, tokens) = manifests_and_tokens(dir.path(), &format!("{TOKEN}\n"));
    // A soak four times the silence bound: the silent canary is noticed
    // long before the rest could be promoted.
    let mut config = config(&manifests, &fresh_postgres_database(), &tokens);
    if let Some(rollout) = &mut config.rollout {
        rollout.soak = SILENCE * 4;
    }
    let running = start(config).await.expect("control plane starts");
    let store = running.store.clone();
    let fleet = Fleet::start(&running, "rs").await;
    let (first, before) = (fleet.first, fleet.first_states.clone());

    // A revision reaches the canary, which acks it and then goes silent:
    // its agent is gone (no stream, no heartbeat) during the soak.
    let services = manifests.join("services-default.yaml");
    let target = move_service(&running, &services, "10.96.1.20", "10.96.1.21", first).await;
    wait_applied(&store, "node-a", desired(&store, "node-a", target).await).await;
    fleet.agents[0].abort();
    wait_phase(&running, "halted").await;
    let status = running.rollout.borrow().clone();
    assert_eq!(status.failed, ["node-a"], "{status:?}");
    assert_eq!(status.target, target, "{status:?}");
    assert!(
        status.reason.contains("node-a: silent for"),
        "the reason names the silence: {status:?}"
    );
    // Rolled back (pinned at the good revision for when it returns), and
    // the others never got the target.
    wait_head_past(&running, target).await;
    let pins = store.pins().await.expect("pins");
    let pin_a = pins
        .iter()
        .find(|p| p.node == "node-a")
        .expect("node-a pinned");
    assert_eq!(pin_a.held_at, RevisionId(first), "{pin_a:?}");
    for (i, node) in NAMES.iter().enumerate().skip(1) {
        let head = *running.head.borrow();
        assert_eq!(desired(&store, node, head).await, before[i], "{node}");
        assert_eq!(applied(&store, node).await, Some(before[i]), "{node}");
        let save = ipset_save(&fleet.namespaces[i]);
        assert!(!save.contains("10.96.1.21"), "{node}: {save}");
    }
    assert!(
        running
            .metrics
            .encode()
            .contains("setpoint_rollouts_halted_total 1"),
        "counted"
    );
}
