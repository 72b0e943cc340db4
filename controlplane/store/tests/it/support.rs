//! Fresh databases per test and fixture builders.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use setpoint_dataplane::{
    Family, Forward, Fragment, NodeDataplane, Protocol, RealServer, Scheduler, SetEntry, SetSpec,
    SetType, VirtualServer, VirtualServerKey,
};
use setpoint_store::{Backend, Cause, CommitRequest, Epoch, NodeParts, RevisionId, Store};
use sqlx::Connection;

/// A store on a database no other test uses.
pub struct TestDb {
    pub store: Store,
    pub url: String,
}

impl TestDb {
    /// A second, independent handle (another writer) on the same database.
    pub async fn reopen(&self) -> Store {
        Store::open(&self.url).await.expect("reopening the store")
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// A blob literal in this backend's SQL.
    pub fn blob(&self, bytes: &[u8]) -> String {
        match self.backend() {
            Backend::Sqlite => format!("x'{}'", hex::encode(bytes)),
            Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs `body` on a store in a new SQLite file.
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    );
    let store = Store::open(&url).await.expect("opening a SQLite store");
    let outcome = tokio::spawn(body(TestDb { store, url })).await;
    drop(dir);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The server tests create their databases on.
fn postgres_admin_url() -> String {
    std::env::var("SETPOINT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Runs `body` on a store in a new PostgreSQL database, dropped afterwards.
/// Fails (never skips) when PostgreSQL cannot be reached.
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin_url = postgres_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin_url}: {e}\n\
             start it (scripts/test does) or point SETPOINT_TEST_POSTGRES at a server"
            )
        });
    let name = format!(
        "sp_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("dropping a leftover test database");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .expect("admin URL ends in /database");
    let url = format!("{base}/{name}");
    let store = Store::open(&url).await.expect("opening a PostgreSQL store");
    let outcome = tokio::spawn(body(TestDb { store, url })).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("dropping the test database");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

// --- fixtures ---

pub fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub fn set_spec(kind: SetType) -> SetSpec {
    SetSpec {
        kind,
        family: Family::Inet,
        maxelem: 65536,
        comment: "test".into(),
    }
}

pub fn vs_key(i: u32) -> VirtualServerKey {
    VirtualServerKey {
        address: ip(10, 96, (i / 256) as u8, (i % 256) as u8),
        protocol: Protocol::Tcp,
        port: 80,
    }
}

/// A virtual server with `backends` real servers, `flip` marking one.
pub fn vs(i: u32, backends: u32, flip: u32) -> Arc<VirtualServer> {
    let rs = (0..backends)
        .map(|b| RealServer {
            address: ip(10, 128 + (i % 64) as u8, (b / 256) as u8, (b % 256) as u8),
            port: 8080,
            weight: if b == flip { 0 } else { 1 },
            forward: Forward::Masq,
        })
        .collect();
    Arc::new(VirtualServer::new(Scheduler::Rr, None, rs))
}

/// The `services` part: `n` virtual servers and their ClusterIP entries;
/// `generation` changes one real server's weight.
pub fn services(n: u32, generation: u32) -> Fragment {
    let mut f = Fragment::new();
    f.put_set("SP-CLUSTER-IP", set_spec(SetType::HashIpPort));
    for i in 0..n {
        let key = vs_key(i);
        let flip = if i == generation % n.max(1) {
            generation % 7
        } else {
            99
        };
        f.put_virtual_server(key, vs(i, 5 + i % 7, flip));
        f.add_entry(
            "SP-CLUSTER-IP",
            SetEntry::IpPort {
                ip: key.address,
                protocol: Protocol::Tcp,
                port: 80,
            },
        );
        f.add_address(key.address);
    }
    f
}

pub fn base() -> Fragment {
    let mut f = Fragment::new();
    f.put_set("SP-LOOPBACK", set_spec(SetType::HashIpPortIp));
    f.put_set("SP-NODE-PORT", set_spec(SetType::BitmapPort));
    f
}

/// A zone's part: a few entries in a zone-local set.
pub fn zone(z: u8, extra: u32) -> Fragment {
    let mut f = Fragment::new();
    let set = format!("SP-ZONE-{z}");
    f.put_set(set.clone(), set_spec(SetType::HashIp));
    for i in 0..(10 + extra) {
        f.add_entry(
            &set,
            SetEntry::Ip(ip(10, 200 + z, (i / 256) as u8, (i % 256) as u8)),
        );
    }
    f
}

/// A node's own part: its loopback entries; `seed` varies the content.
pub fn own(node: u32, seed: u32) -> Fragment {
    let mut f = Fragment::new();
    for i in 0..(3 + seed % 4) {
        f.add_entry(
            "SP-LOOPBACK",
            SetEntry::IpPortIp {
                ip: ip(10, 1, (node % 256) as u8, (i + seed) as u8),
                protocol: Protocol::Tcp,
                port: 8080,
                ip2: ip(10, 1, (node % 256) as u8, (i + seed) as u8),
            },
        );
    }
    f
}

/// A small cluster as the index shapes it: base, services, two zones,
/// `nodes` nodes with their own parts.
pub struct Cluster {
    pub base: Arc<Fragment>,
    pub services: Arc<Fragment>,
    pub zones: Vec<Arc<Fragment>>,
    pub own: Vec<Arc<Fragment>>,
}

impl Cluster {
    pub fn new(nodes: u32, services_n: u32) -> Cluster {
        Cluster {
            base: Arc::new(base()),
            services: Arc::new(services(services_n, 0)),
            zones: vec![Arc::new(zone(0, 0)), Arc::new(zone(1, 0))],
            own: (0..nodes).map(|n| Arc::new(own(n, 0))).collect(),
        }
    }

    pub fn node_name(n: usize) -> String {
        format!("node-{n:03}")
    }

    pub fn zone_name(n: usize) -> String {
        format!("zone/z{}", n % 2)
    }

    /// Node `n`'s whole state.
    pub fn state(&self, n: usize) -> NodeDataplane {
        NodeDataplane::from_parts([
            ("base".to_string(), self.base.clone()),
            ("services".to_string(), self.services.clone()),
            (Self::zone_name(n), self.zones[n % 2].clone()),
            (format!("node/{}", Self::node_name(n)), self.own[n].clone()),
        ])
    }

    /// A request carrying every node.
    pub fn request(&self, epoch: Epoch, summary: &str) -> CommitRequest {
        let mut req = CommitRequest::new(
            epoch,
            Cause {
                objects: vec![format!("Test/{summary}")],
                summary: summary.to_string(),
            },
        );
        for n in 0..self.own.len() {
            req.add_node_state(Self::node_name(n), &self.state(n));
        }
        req
    }

    /// A request carrying only the shared parts (no node changed).
    pub fn shared_request(&self, epoch: Epoch, summary: &str) -> CommitRequest {
        let mut req = CommitRequest::new(
            epoch,
            Cause {
                objects: vec![format!("Test/{summary}")],
                summary: summary.to_string(),
            },
        );
        req.shared.insert("base".into(), self.base.clone());
        req.shared.insert("services".into(), self.services.clone());
        for (z, f) in self.zones.iter().enumerate() {
            req.shared.insert(Self::zone_name(z), f.clone());
        }
        req
    }
}

/// Asserts the stored state equals `expected`, by value and by digest.
pub async fn assert_state(
    store: &Store,
    node: &str,
    revision: RevisionId,
    expected: &NodeDataplane,
) {
    let got = store
        .node_state(node, revision)
        .await
        .unwrap_or_else(|e| panic!("reading {node} at {revision}: {e}"))
        .unwrap_or_else(|| panic!("{node} missing at {revision}"));
    assert_eq!(
        got.digest(),
        expected.digest(),
        "{node} at {revision}: digest"
    );
    assert!(got == *expected, "{node} at {revision}: state differs");
}

pub fn parts_of(state: &NodeDataplane) -> NodeParts {
    NodeParts::split(state).0
}
