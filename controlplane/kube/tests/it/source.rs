use std::time::Duration;

use setpoint_compute::ClusterObject;
use setpoint_kube::{BackoffPolicy, KINDS, KubeSource, Options, POD_FIELD_SELECTOR, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fixtures::*;
use crate::mock::ApiServer;

/// The source against `server`, with short backoffs.
fn start(client: kube::Client) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
    let options = Options {
        backoff: BackoffPolicy::Exponential {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        ..Options::default()
    };
    KubeSource::start_with(client, options)
}

/// Waits (at most 5 s) for a snapshot that satisfies `what`.
async fn until(
    rx: &mut watch::Receiver<Snapshot>,
    what: &str,
    pred: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(pred))
        .await
        .map(|r| r.map(|s| s.clone()));
    match outcome {
        Ok(Ok(snapshot)) => {
            // The one map of every kind is kept beside the kinds' maps:
            // it must hold exactly their objects, whatever the events.
            assert!(
                snapshot.object_map() == setpoint_compute::object_map(snapshot.objects()),
                "{what}: the map of every kind disagrees with the kinds: {}",
                describe(&snapshot)
            );
            snapshot
        }
        Ok(Err(_)) => panic!("source ended while waiting for: {what}"),
        Err(_) => panic!(
            "timed out waiting for: {what}; last snapshot: {}",
            describe(&rx.borrow())
        ),
    }
}

fn keys(snapshot: &Snapshot) -> Vec<String> {
    snapshot.iter().map(|o| o.key().to_string()).collect()
}

fn describe(snapshot: &Snapshot) -> String {
    let statuses: Vec<String> = KINDS
        .iter()
        .map(|k| format!("{k}: {:?}", snapshot.status(k)))
        .collect();
    format!(
        "ready={} objects={:?} skipped={:?} {statuses:?}",
        snapshot.ready,
        keys(snapshot),
        snapshot.skipped()
    )
}

fn has(snapshot: &Snapshot, key: &str) -> bool {
    snapshot.iter().any(|o| o.key().to_string() == key)
}

fn ready(rx: &mut watch::Receiver<Snapshot>) -> impl Future<Output = Snapshot> + '_ {
    until(rx, "ready", |s| s.ready)
}

#[tokio::test]
async fn initial_lists_of_every_kind_make_one_ready_snapshot() {
    let (server, client) = ApiServer::start(small_cluster());
    let (mut rx, task) = start(client);
    assert!(!rx.borrow().ready);
    let snapshot = ready(&mut rx).await;
    assert_eq!(
        keys(&snapshot),
        [
            "Namespace/shop",
            "Node/node-a",
            "Service/shop/web",
            "EndpointSlice/shop/web-1",
            "Pod/shop/web-0",
            "NetworkPolicy/shop/web-ingress",
            "ServiceCIDR/kubernetes",
        ]
    );
    assert!(snapshot.skipped().is_empty());
    for kind in KINDS {
        let status = snapshot.status(kind).unwrap();
        assert!(status.listed, "{kind}");
        assert_eq!(status.relists, 0, "{kind}");
    }
    // Stored objects are trimmed: no bookkeeping fields that change on
    // every write.
    let Some(ClusterObject::Service(web)) = snapshot.iter().find(|o| o.kind() == "Service") else {
        panic!("no service");
    };
    assert!(web.metadata.managed_fields.is_none());
    assert!(web.metadata.resource_version.is_none());
    // Pods are listed and watched without terminal ones.
    let pods = server.requests("Pod");
    assert!(!pods.is_empty());
    for request in &pods {
        assert_eq!(
            request.query.get("fieldSelector").map(String::as_str),
            Some(POD_FIELD_SELECTOR)
        );
    }
    // Bookmarks are asked for.
    assert!(server.requests("Service").iter().any(|r| {
        r.watch
            && r.query
                .get("allowWatchBookmarks")
                .is_some_and(|v| v == "true")
    }));
    task.abort();
}

#[tokio::test]
async fn not_ready_until_every_initial_list_completed() {
    let (server, client) = ApiServer::start(small_cluster());
    server.fail_lists("NetworkPolicy", 1_000_000);
    let (mut rx, task) = start(client);
    // Every other kind lists; the snapshot holds them but is not ready.
    let partial = until(&mut rx, "every other kind listed", |s| {
        KINDS
            .iter()
            .filter(|k| s.status(k).is_some_and(|st| st.listed))
            .count()
            == KINDS.len() - 1
    })
    .await;
    assert!(!partial.ready);
    // Errors update the status without waking receivers: poll it.
    let errors = |rx: &watch::Receiver<Snapshot>| {
        rx.borrow()
            .status("NetworkPolicy")
            .map_or(0, |st| st.errors)
    };
    let started = tokio::time::Instant::now();
    while errors(&rx) < 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "no list errors");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Retries back off (10 ms doubling to 50 ms): nowhere near one per
    // millisecond, although each retry starts with a fresh `Init`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failing = rx.borrow().clone();
    let count = errors(&rx);
    assert!(count < 25, "{count} list errors in ~0.5 s: no backoff");
    assert!(!failing.ready);
    assert!(
        failing
            .status("NetworkPolicy")
            .and_then(|st| st.last_error.clone())
            .is_some_and(|e| e.contains("etcd is having a bad day")),
        "{}",
        describe(&failing)
    );
    server.fail_lists("NetworkPolicy", 0);
    let snapshot = ready(&mut rx).await;
    assert!(has(&snapshot, "NetworkPolicy/shop/web-ingress"));
    assert_eq!(snapshot.len(), 7);
    task.abort();
}

/// A server without the ServiceCIDR API (Kubernetes before 1.33, or the
/// API off) answers 404: the source is ready without it, keeps asking,
/// and takes the objects in once the API is served.
#[tokio::test]
async fn a_server_without_service_cidrs_is_ready_without_them() {
    let (server, client) = ApiServer::start(small_cluster());
    server.unserve("ServiceCIDR");
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert!(
        !has(&snapshot, "ServiceCIDR/kubernetes"),
        "{}",
        describe(&snapshot)
    );
    assert!(has(&snapshot, "NetworkPolicy/shop/web-ingress"));
    let status = snapshot.status("ServiceCIDR").unwrap();
    assert!(status.listed);
    assert_eq!(status.not_served, Some(404));
    // Absence is not an error: nothing is counted against the kind.
    assert_eq!((status.errors, status.relists), (0, 0));
    server.serve("ServiceCIDR");
    let snapshot = until(&mut rx, "the ServiceCIDR once served", |s| {
        has(s, "ServiceCIDR/kubernetes")
    })
    .await;
    assert_eq!(snapshot.status("ServiceCIDR").unwrap().not_served, None);
    assert!(snapshot.not_served().is_empty());
    task.abort();
}

/// A required kind answered 404 keeps the source not ready.
#[tokio::test]
async fn a_required_kind_not_served_keeps_the_source_not_ready() {
    let (server, client) = ApiServer::start(small_cluster());
    server.unserve("NetworkPolicy");
    let (mut rx, task) = start(client);
    let errors = |rx: &watch::Receiver<Snapshot>| {
        rx.borrow()
            .status("NetworkPolicy")
            .map_or(0, |st| st.errors)
    };
    let started = tokio::time::Instant::now();
    while errors(&rx) < 2 {
        assert!(started.elapsed() < Duration::from_secs(5), "no list errors");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!rx.borrow().ready, "{}", describe(&rx.borrow()));
    server.serve("NetworkPolicy");
    ready(&mut rx).await;
    task.abort();
}

#[tokio::test]
async fn watch_events_update_the_snapshot() {
    let (server, client) = ApiServer::start(small_cluster());
    let (mut rx, task) = start(client);
    let first = ready(&mut rx).await;

    server.apply(mk_service("shop", "api", "10.96.0.11"));
    server.apply(mk_endpointslice(
        "shop",
        "web-1",
        "web",
        &["10.244.0.5", "10.244.0.6"],
    ));
    server.delete("Pod", "shop", "web-0");
    server.apply(mk_namespace("ops"));
    let snapshot = until(&mut rx, "added, modified, deleted", |s| {
        has(s, "Service/shop/api") && !has(s, "Pod/shop/web-0") && has(s, "Namespace/ops")
    })
    .await;
    let snapshot = if snapshot
        .iter()
        .any(|o| matches!(o, ClusterObject::EndpointSlice(s) if s.endpoints.len() == 2))
    {
        snapshot
    } else {
        until(&mut rx, "slice modified", |s| {
            s.iter()
                .any(|o| matches!(o, ClusterObject::EndpointSlice(s) if s.endpoints.len() == 2))
        })
        .await
    };
    assert_eq!(snapshot.len(), 8, "{}", describe(&snapshot));
    assert!(snapshot.generation > first.generation);
    // The oldest change after the first ready snapshot is no later than
    // the newest publication.
    let since = snapshot.seen_since(first.generation).unwrap();
    assert!(since <= snapshot.seen_at);
    assert_eq!(snapshot.seen_since(snapshot.generation), None);

    // An update that changes nothing compute reads publishes nothing new.
    let generation = snapshot.generation;
    let mut node = mk_node("node-a", "192.0.2.10");
    node["status"]["conditions"][0]["status"] = "False".into();
    server.apply(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!rx.has_changed().unwrap(), "a heartbeat woke the consumer");
    assert_eq!(rx.borrow().generation, generation);
    server.apply(mk_service("shop", "late", "10.96.0.12"));
    let later = until(&mut rx, "late service", |s| has(s, "Service/shop/late")).await;
    assert_eq!(later.generation, generation + 1, "{}", describe(&later));
    task.abort();
}

#[tokio::test]
async fn gone_on_a_watch_relists_and_replaces_the_kind() {
    let (server, client) = ApiServer::start(small_cluster());
    let (mut rx, task) = start(client);
    ready(&mut rx).await;
    let lists_before = server
        .requests("Service")
        .iter()
        .filter(|r| !r.watch)
        .count();

    // Changes the watch never delivers, then the history is compacted.
    server.pause("Service");
    server.apply(mk_service("shop", "api", "10.96.0.11"));
    server.delete("Service", "shop", "web");
    server.expire("Service");

    let snapshot = until(&mut rx, "relisted services", |s| {
        has(s, "Service/shop/api") && !has(s, "Service/shop/web")
    })
    .await;
    assert!(snapshot.ready);
    assert_eq!(snapshot.status("Service").unwrap().relists, 1);
    let lists_after = server
        .requests("Service")
        .iter()
        .filter(|r| !r.watch)
        .count();
    assert_eq!(lists_after, lists_before + 1);
    // Other kinds untouched.
    assert!(has(&snapshot, "EndpointSlice/shop/web-1"));
    // And the new watch works.
    server.apply(mk_service("shop", "after", "10.96.0.13"));
    until(&mut rx, "watch after relist", |s| {
        has(s, "Service/shop/after")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_bookmark_without_relisting() {
    let (server, client) = ApiServer::start(small_cluster());
    let (mut rx, task) = start(client);
    ready(&mut rx).await;
    // Wait for the watch to be open before bookmarking it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.open_watches("Service") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no service watch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bookmark = server.bookmark("Service");
    // Give the watcher a moment to read the bookmark before the reset.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.drop_watches("Service", true);
    server.apply(mk_service("shop", "api", "10.96.0.11"));
    until(&mut rx, "service after reconnect", |s| {
        has(s, "Service/shop/api")
    })
    .await;

    let requests = server.requests("Service");
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        1,
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.watch && r.query.get("resourceVersion") == Some(&bookmark)),
        "no watch resumed from bookmark {bookmark}: {requests:?}"
    );
    assert_eq!(rx.borrow().status("Service").unwrap().relists, 0);

    // A clean end of the stream (the server's watch timeout) resumes too.
    server.drop_watches("Service", false);
    server.apply(mk_service("shop", "api2", "10.96.0.12"));
    until(&mut rx, "service after clean close", |s| {
        has(s, "Service/shop/api2")
    })
    .await;
    let lists = server
        .requests("Service")
        .iter()
        .filter(|r| !r.watch)
        .count();
    assert_eq!(lists, 1);
    task.abort();
}

#[tokio::test]
async fn an_object_that_does_not_decode_is_skipped_and_counted() {
    let mut objects = small_cluster();
    let mut bad = mk_endpointslice("shop", "broken", "web", &["10.244.0.7"]);
    bad["endpoints"] = "oops".into();
    objects.push(bad);
    objects.push(mk_endpointslice("shop", "web-2", "web", &["10.244.0.8"]));
    let (server, client) = ApiServer::start(objects);
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert!(has(&snapshot, "EndpointSlice/shop/web-1"));
    assert!(has(&snapshot, "EndpointSlice/shop/web-2"));
    assert!(!has(&snapshot, "EndpointSlice/shop/broken"));
    assert_eq!(snapshot.len(), 8);
    assert_eq!(snapshot.skipped_total, 1);
    let skipped = snapshot.skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].starts_with("EndpointSlice/shop/broken: endpoints: invalid type"),
        "{skipped:?}"
    );

    // A watch event that breaks a good object drops it and records why.
    let mut broken = mk_endpointslice("shop", "web-2", "web", &[]);
    broken["addressType"] = serde_json::json!(42);
    server.apply(broken);
    let snapshot = until(&mut rx, "web-2 skipped", |s| {
        !has(s, "EndpointSlice/shop/web-2")
    })
    .await;
    assert_eq!(snapshot.skipped_total, 2);
    assert!(
        snapshot
            .skipped()
            .iter()
            .any(|s| s.starts_with("EndpointSlice/shop/web-2: addressType:")),
        "{:?}",
        snapshot.skipped()
    );
    assert!(has(&snapshot, "EndpointSlice/shop/web-1"));

    // Fixed, it is back; deleted, its skip is gone.
    server.apply(mk_endpointslice("shop", "web-2", "web", &["10.244.0.8"]));
    server.delete("EndpointSlice", "shop", "broken");
    let snapshot = until(&mut rx, "fixed", |s| {
        has(s, "EndpointSlice/shop/web-2") && s.skipped().is_empty()
    })
    .await;
    assert_eq!(snapshot.len(), 8);
    task.abort();
}

#[tokio::test]
async fn the_task_ends_when_every_receiver_is_dropped() {
    let (_server, client) = ApiServer::start(small_cluster());
    let (mut rx, task) = start(client);
    ready(&mut rx).await;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("source task ended")
        .expect("source task did not panic");
}

/// ClusterNetworkPolicies (a CRD) are listed and watched like the built-in
/// kinds once served: cluster-scoped, their status dropped.
#[tokio::test]
async fn cluster_network_policies_arrive_when_served() {
    let mut objects = small_cluster();
    objects.push(mk_cluster_network_policy("deny-ops", 10, "ops"));
    let (server, client) = ApiServer::start(objects);
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert!(
        has(&snapshot, "ClusterNetworkPolicy/deny-ops"),
        "{}",
        describe(&snapshot)
    );
    assert_eq!(snapshot.len(), 8);
    assert!(snapshot.not_served().is_empty());
    let Some(ClusterObject::ClusterNetworkPolicy(policy)) =
        snapshot.iter().find(|o| o.kind() == "ClusterNetworkPolicy")
    else {
        panic!("no ClusterNetworkPolicy: {}", describe(&snapshot));
    };
    assert!(policy.status.is_none());
    assert!(policy.metadata.resource_version.is_none());
    let spec = policy.spec.as_ref().expect("spec");
    assert_eq!((spec.tier.as_str(), spec.priority), ("Admin", Some(10)));
    // Listed and watched at the CRD's path, as every kind is.
    let requests = server.requests("ClusterNetworkPolicy");
    assert!(requests.iter().any(|r| !r.watch), "{requests:?}");

    // Watch events: a new policy, an edit, a deletion.
    server.apply(mk_cluster_network_policy("deny-dev", 20, "dev"));
    server.apply(mk_cluster_network_policy("deny-ops", 5, "ops"));
    let snapshot = until(&mut rx, "added and edited", |s| {
        has(s, "ClusterNetworkPolicy/deny-dev")
            && s.iter().any(|o| {
                matches!(o, ClusterObject::ClusterNetworkPolicy(p)
                    if p.spec.as_ref().and_then(|s| s.priority) == Some(5))
            })
    })
    .await;
    assert_eq!(snapshot.len(), 9);
    // A status write alone (another implementation's conditions) is no
    // change.
    let generation = snapshot.generation;
    let mut restated = mk_cluster_network_policy("deny-dev", 20, "dev");
    restated["status"]["conditions"][0]["status"] = "False".into();
    server.apply(restated);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rx.borrow().generation,
        generation,
        "a status write woke the consumer"
    );
    server.delete("ClusterNetworkPolicy", "", "deny-ops");
    let snapshot = until(&mut rx, "deleted", |s| {
        !has(s, "ClusterNetworkPolicy/deny-ops")
    })
    .await;
    assert!(has(&snapshot, "ClusterNetworkPolicy/deny-dev"));
    task.abort();
}

/// Without the CRD (404) the rest of the cluster is ready at once; the
/// absence is said in the status, not counted as errors or relists however
/// often it is asked again, and the policies arrive once it is installed.
#[tokio::test]
async fn a_cluster_without_the_cluster_network_policy_crd_is_ready_without_it() {
    let mut objects = small_cluster();
    objects.push(mk_cluster_network_policy("deny-ops", 10, "ops"));
    let (server, client) = ApiServer::start(objects);
    server.unserve("ClusterNetworkPolicy");
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert_eq!(snapshot.len(), 7, "{}", describe(&snapshot));
    assert!(!has(&snapshot, "ClusterNetworkPolicy/deny-ops"));
    assert_eq!(snapshot.not_served(), [("ClusterNetworkPolicy", 404)]);
    // Asked again after the backoff, quietly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.requests("ClusterNetworkPolicy").len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "not asked again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = rx.borrow().status("ClusterNetworkPolicy").cloned().unwrap();
    assert!(status.listed);
    assert_eq!(status.not_served, Some(404));
    assert_eq!((status.errors, status.relists), (0, 0), "{status:?}");
    // The other kinds' watches go on meanwhile.
    server.apply(mk_service("shop", "api", "10.96.0.11"));
    until(&mut rx, "a service while the CRD is absent", |s| {
        has(s, "Service/shop/api")
    })
    .await;

    // The CRD is installed.
    server.serve("ClusterNetworkPolicy");
    let snapshot = until(&mut rx, "the policy once served", |s| {
        has(s, "ClusterNetworkPolicy/deny-ops")
    })
    .await;
    assert!(snapshot.not_served().is_empty());
    assert_eq!(snapshot.status("ClusterNetworkPolicy").unwrap().errors, 0);
    task.abort();
}

/// A ClusterRole without the grant (403) is the same: ready without the
/// policies, and the status names the code.
#[tokio::test]
async fn a_forbidden_cluster_network_policy_list_does_not_hold_the_rest_back() {
    let mut objects = small_cluster();
    objects.push(mk_cluster_network_policy("deny-ops", 10, "ops"));
    let (server, client) = ApiServer::start(objects);
    server.forbid("ClusterNetworkPolicy");
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert_eq!(snapshot.len(), 7, "{}", describe(&snapshot));
    assert_eq!(snapshot.not_served(), [("ClusterNetworkPolicy", 403)]);
    server.serve("ClusterNetworkPolicy");
    until(&mut rx, "the policy once allowed", |s| {
        has(s, "ClusterNetworkPolicy/deny-ops") && s.not_served().is_empty()
    })
    .await;
    task.abort();
}

/// The CRD removed under an open watch: the kind is asked for whole again
/// (not a watch resumed forever), and when it is back the list replaces
/// what was held.
#[tokio::test]
async fn a_crd_removed_under_a_watch_is_listed_again_when_back() {
    let mut objects = small_cluster();
    objects.push(mk_cluster_network_policy("old", 10, "ops"));
    let (server, client) = ApiServer::start(objects);
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert!(has(&snapshot, "ClusterNetworkPolicy/old"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.open_watches("ClusterNetworkPolicy") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no watch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.unserve("ClusterNetworkPolicy");
    server.drop_watches("ClusterNetworkPolicy", false);
    let started = tokio::time::Instant::now();
    while rx.borrow().not_served().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "absence not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Changes the source cannot see while it is not served.
    server.delete("ClusterNetworkPolicy", "", "old");
    server.apply(mk_cluster_network_policy("new", 20, "dev"));
    let lists_before = server
        .requests("ClusterNetworkPolicy")
        .iter()
        .filter(|r| !r.watch)
        .count();
    server.serve("ClusterNetworkPolicy");
    let snapshot = until(&mut rx, "relisted policies", |s| {
        has(s, "ClusterNetworkPolicy/new") && !has(s, "ClusterNetworkPolicy/old")
    })
    .await;
    assert!(snapshot.not_served().is_empty());
    let lists_after = server
        .requests("ClusterNetworkPolicy")
        .iter()
        .filter(|r| !r.watch)
        .count();
    assert!(lists_after > lists_before, "not relisted");
    task.abort();
}

/// A policy that does not decode is left out with its reason and counted;
/// the other policies of the list are kept.
#[tokio::test]
async fn a_cluster_network_policy_that_does_not_decode_is_skipped_and_counted() {
    let mut objects = small_cluster();
    let mut bad = mk_cluster_network_policy("broken", 10, "ops");
    bad["spec"]["priority"] = "high".into();
    objects.push(bad);
    objects.push(mk_cluster_network_policy("fine", 20, "dev"));
    let (server, client) = ApiServer::start(objects);
    let (mut rx, task) = start(client);
    let snapshot = ready(&mut rx).await;
    assert!(has(&snapshot, "ClusterNetworkPolicy/fine"));
    assert!(!has(&snapshot, "ClusterNetworkPolicy/broken"));
    assert_eq!(snapshot.skipped_total, 1);
    let skipped = snapshot.skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].starts_with("ClusterNetworkPolicy/broken: spec.priority: invalid type"),
        "{skipped:?}"
    );
    // Broken by a watch event: dropped, with its reason; fixed: back.
    let mut broken = mk_cluster_network_policy("fine", 20, "dev");
    broken["spec"]["ingress"] = serde_json::json!({"action": "Deny"});
    server.apply(broken);
    let snapshot = until(&mut rx, "fine skipped", |s| {
        !has(s, "ClusterNetworkPolicy/fine")
    })
    .await;
    assert_eq!(snapshot.skipped_total, 2);
    assert!(
        snapshot
            .skipped()
            .iter()
            .any(|s| s.starts_with("ClusterNetworkPolicy/fine: spec.ingress:")),
        "{:?}",
        snapshot.skipped()
    );
    server.apply(mk_cluster_network_policy("fine", 20, "dev"));
    server.delete("ClusterNetworkPolicy", "", "broken");
    let snapshot = until(&mut rx, "fixed", |s| {
        has(s, "ClusterNetworkPolicy/fine") && s.skipped().is_empty()
    })
    .await;
    assert_eq!(snapshot.len(), 8);
    task.abort();
}
