//! Crash safety: a child process committing in a loop is SIGKILLed at
//! random moments; each time the newest revision reads back intact and
//! the next commit succeeds.
//!
//! The child is this test binary itself, running only `crash::crash_child`
//! with `SETPOINT_CRASH_URL` set. Revision r's content is a function of r,
//! so the parent knows what every revision must read back as.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use setpoint_store::{RevisionId, Store};

use crate::support::{Cluster, TestDb, assert_state, own, services, zone};

both!(killed_committer_leaves_the_store_intact);

const CHILD_ENV: &str = "SETPOINT_CRASH_URL";
const NODES: usize = 3;

/// What revision `r` holds.
fn cluster_at(r: u64) -> Cluster {
    let mut c = Cluster::new(NODES as u32, 60);
    let g = r as u32;
    c.services = Arc::new(services(60, g));
    c.zones[(g % 2) as usize] = Arc::new(zone((g % 2) as u8, g % 5));
    c.own[g as usize % NODES] = Arc::new(own(g % NODES as u32, g));
    c
}

/// Commits revision head+1 with its content, forever (until killed).
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let epoch = store.acquire_epoch().await.unwrap();
        loop {
            let next = store.head().await.unwrap().map_or(1, |r| r.0 + 1);
            let r = store
                .commit(cluster_at(next).request(epoch, "child"))
                .await
                .unwrap();
            assert_eq!(r, RevisionId(next));
        }
    });
}

async fn check(store: &Store, r: RevisionId) {
    let c = cluster_at(r.0);
    for n in 0..NODES {
        assert_state(store, &Cluster::node_name(n), r, &c.state(n)).await;
    }
}

async fn killed_committer_leaves_the_store_intact(db: TestDb) {
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let started = Instant::now();
    let mut kills = 0;
    let mut progressed = 0;
    while kills < 12 && started.elapsed() < Duration::from_secs(25) {
        let before = db.store.head().await.unwrap();
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40 + random(360))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        // A fresh handle, as a restarted process would open.
        let store = Store::open(&db.url).await.unwrap();
        let head = store.head().await.unwrap();
        if head > before {
            progressed += 1;
        }
        if let Some(head) = head {
            check(&store, head).await;
            if head.0 > 1 {
                check(&store, RevisionId(head.0 - 1)).await;
            }
        }
        let next = head.map_or(1, |r| r.0 + 1);
        let epoch = store.acquire_epoch().await.unwrap();
        let r = store
            .commit(cluster_at(next).request(epoch, "after kill"))
            .await
            .unwrap();
        assert_eq!(r, RevisionId(next));
        check(&store, r).await;
        store.close().await;
    }
    assert!(kills >= 8, "only {kills} kills in the time allowed");
    assert!(
        progressed > 0,
        "the child never committed before being killed"
    );
}
