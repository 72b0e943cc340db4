//! Lease leader election through the real kube client against the mock API
//! server (GET/POST/PUT with resourceVersion checks, 409 on conflict), with
//! the store's epoch fencing a deposed leader.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use setpoint_controlplane::leader::Leader;
use setpoint_controlplane::serve::{Election, Role, ServeConfig, start};
use setpoint_kube::lease::{Attempt, LeaseElector, LeaseSettings};
use setpoint_store::{Store, StoreError};
use tokio::sync::{Mutex, watch};

use crate::mock::ApiServer;

const NS: &str = "setpoint-system";
const NAME: &str = "setpoint-controlplane";

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry_period: Duration::from_millis(200),
        ..LeaseSettings::new(NS, NAME, identity.to_string())
    }
}

fn examples() -> Vec<setpoint_compute::ClusterObject> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    setpoint_source::load_path(&path)
        .expect("the examples load")
        .objects
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn newest_revision(store: &Store) -> setpoint_store::RevisionInfo {
    let mut newest = store.list_revisions(1, None).await.expect("revisions");
    assert_eq!(newest.len(), 1, "a revision exists");
    newest.remove(0)
}

fn holder(server: &ApiServer) -> (String, i64) {
    let lease = server.lease(NS, NAME).expect("the Lease exists");
    (
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_leads_the_other_takes_over_after_expiry_and_the_deposed_cannot_commit() {
    let (server, client) = ApiServer::start(Vec::new());
    let mut a = LeaseElector::new(client.clone(), settings("replica-a"));
    let mut b = LeaseElector::new(client.clone(), settings("replica-b"));
    let (first_a, first_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (first_a, first_b) = (first_a.expect("a tries"), first_b.expect("b tries"));
    assert!(
        first_a.leads() != first_b.leads(),
        "exactly one leads: {first_a:?} {first_b:?}"
    );
    // Name them by outcome: `old` won the first round.
    let (mut old, mut new, old_id, new_id) = if first_a.leads() {
        (a, b, "replica-a", "replica-b")
    } else {
        (b, a, "replica-b", "replica-a")
    };
    assert_eq!(holder(&server), (old_id.to_string(), 0));
    assert_eq!(
        new.try_acquire_or_renew().await.expect("tries"),
        Attempt::HeldBy(old_id.to_string())
    );
    let held_since = Instant::now();

    // The winner leads with a store epoch and commits.
    let db = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", db.path().join("s.db").display());
    let store = Store::open(&url).await.expect("store");
    let mut old_leader = Leader::start(store.clone(), Default::default(), watch::Sender::new(0))
        .await
        .expect("leads");
    let mut objects = examples();
    assert!(
        old_leader
            .sync(objects.clone(), SystemTime::now())
            .await
            .expect("commits")
            .is_some()
    );
    // It keeps renewing for a while: the other stays out.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            old.try_acquire_or_renew().await.expect("renews"),
            Attempt::Renewed
        );
        assert_eq!(
            new.try_acquire_or_renew().await.expect("tries"),
            Attempt::HeldBy(old_id.to_string())
        );
    }
    // The holder stops renewing (a hung process): after the lease duration
    // the other takes it over, with one more transition.
    let taken_at = loop {
        match new.try_acquire_or_renew().await.expect("tries") {
            Attempt::Acquired => break Instant::now(),
            Attempt::HeldBy(h) => assert_eq!(h, old_id),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            held_since.elapsed() < Duration::from_secs(20),
            "no takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        taken_at - held_since >= Duration::from_secs(2),
        "not before the last renewal seen is a lease duration old"
    );
    assert_eq!(holder(&server), (new_id.to_string(), 1));
    let mut new_leader = Leader::start(store.clone(), Default::default(), watch::Sender::new(0))
        .await
        .expect("leads");
    assert!(new_leader.epoch() > old_leader.epoch(), "a higher epoch");

    // The deposed leader has not noticed; its commit is refused by the store.
    objects.truncate(objects.len() / 2);
    let refused = old_leader
        .sync(objects.clone(), SystemTime::now())
        .await
        .expect_err("a stale epoch cannot commit");
    assert!(
        refused.chain().any(|e| matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::StaleEpoch { .. })
        )),
        "refused for its epoch: {refused:#}"
    );
    assert!(
        new_leader
            .sync(objects, SystemTime::now())
            .await
            .expect("the new leader commits")
            .is_some()
    );
    // And it learns it lost the Lease.
    assert_eq!(
        old.try_acquire_or_renew().await.expect("tries"),
        Attempt::HeldBy(new_id.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_renew_is_retried_and_a_lease_lost_to_another_holder_ends_the_term() {
    let (server, client) = ApiServer::start(Vec::new());
    let elector = Arc::new(Mutex::new(LeaseElector::new(client, settings("replica-a"))));
    let hold = LeaseElector::campaign(&elector)
        .await
        .expect("campaigns")
        .expect("the first leads");
    // One renewal loses a race (409): the next one, from a fresh read,
    // succeeds and the term goes on.
    server.conflict_lease_writes(1);
    wait_for("a 409 on renew, then a successful renewal", || {
        let log = server.lease_log();
        log.iter()
            .position(|(m, c)| m == "PUT" && *c == 409)
            .is_some_and(|at| log[at..].iter().any(|(m, c)| m == "PUT" && *c == 200))
    })
    .await;
    assert!(hold.held(), "one conflict does not end the term");
    assert_eq!(holder(&server).0, "replica-a");

    // Someone else writes the Lease: the next renewal sees another holder.
    server.write_lease(
        NS,
        NAME,
        json!({"holderIdentity": "replica-z", "leaseDurationSeconds": 15, "leaseTransitions": 7}),
    );
    wait_for("the term to end", || !hold.held()).await;
    assert_eq!(holder(&server), ("replica-z".to_string(), 7), "left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_lease_election_steps_down_on_loss_and_leads_again_with_a_new_epoch() {
    let (server, client) = ApiServer::start(Vec::new());
    let db = tempfile::tempdir().expect("tempdir");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let running = start(ServeConfig {
        election: Election::Lease {
            client,
            settings: settings("replica-a"),
        },
        ..ServeConfig::local(
            manifests,
            format!("sqlite://{}?mode=rwc", db.path().join("s.db").display()),
        )
    })
    .await
    .expect("control plane starts");
    let mut role = running.role.clone();
    wait_for("leading by the Lease", || {
        *role.borrow_and_update() == Role::Leader
    })
    .await;
    wait_for("a first revision", || *running.head.borrow() > 0).await;
    assert_eq!(holder(&server), ("replica-a".to_string(), 0));
    let first = newest_revision(&running.store).await;

    // Another replica takes the Lease (its duration: 2 s): this one steps
    // down, then leads again once that Lease expires unrenewed.
    server.write_lease(
        NS,
        NAME,
        json!({"holderIdentity": "replica-z", "leaseDurationSeconds": 2, "leaseTransitions": 1}),
    );
    wait_for("stepping down", || {
        *role.borrow_and_update() == Role::Follower
    })
    .await;
    wait_for("leading again", || {
        *role.borrow_and_update() == Role::Leader
    })
    .await;
    assert_eq!(holder(&server), ("replica-a".to_string(), 2));
    // The new term commits with a new, higher epoch (a full resync: the
    // new leader starts from an empty index).
    wait_for("a revision of the new term", || {
        *running.head.borrow() > first.revision.0
    })
    .await;
    let newest = newest_revision(&running.store).await;
    assert!(
        newest.epoch > first.epoch,
        "{:?} after {:?}",
        newest.epoch,
        first.epoch
    );
}
