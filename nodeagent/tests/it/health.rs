//! The health servers on real sockets: health-check ports opening,
//! answering 200/503 as counts and the proxy's health change, closing; the
//! proxy's `/healthz` and `/livez`; the bounds a client meets; and both
//! kinds inside a network namespace, unreachable from outside it.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use setpoint_agent::health::listen::ALL_ADDRESSES;
use setpoint_agent::health::{Limits, ServiceCheck, ServiceServers, Tracker, proxy};
use setpoint_agent::metrics::{HealthMetrics, HealthServer};
use setpoint_integration::{Netns, require_root_and_tools};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Sends `request` raw and reads the answer to the end.
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Reply> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(request)?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    Ok(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: lb\r\n\r\n");
    exchange(addr, request.as_bytes()).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// `get` from inside the network namespace `netns`.
fn get_in(netns: &str, addr: SocketAddr, path: &str) -> Reply {
    let path = path.to_string();
    setpoint_agent::in_netns(Some(netns), move || get(addr, &path)).expect("enter the namespace")
}

fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// Waits (bounded) until a connection to `addr` is refused: a closed
/// listener goes when its task is next polled.
fn becomes_refused(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if refused(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A port nothing on loopback listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

fn check(name: &str, local_endpoints: u32) -> ServiceCheck {
    ServiceCheck {
        namespace: "shop".to_string(),
        name: name.to_string(),
        local_endpoints,
    }
}

fn assert_service(reply: &Reply, status: u16, name: &str, endpoints: u32, healthy: bool) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(
        reply.head.contains("Content-Type: application/json\r\n")
            && reply.head.contains("X-Content-Type-Options: nosniff\r\n"),
        "{reply:?}"
    );
    let v = reply.json();
    assert_eq!(v["service"]["namespace"], "shop", "{reply:?}");
    assert_eq!(v["service"]["name"], name, "{reply:?}");
    assert_eq!(v["localEndpoints"], endpoints, "{reply:?}");
    assert_eq!(v["serviceProxyHealthy"], healthy, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_ports_follow_the_applied_states() {
    let bound = Duration::from_millis(400);
    let tracker = Tracker::new(bound);
    let metrics = HealthMetrics::default();
    let mut servers = ServiceServers::new(
        None,
        LOOPBACK,
        Limits::default(),
        tracker.clone(),
        metrics.clone(),
    );
    let (web, db) = (free_port(), free_port());
    let at = |port| SocketAddr::new(LOOPBACK, port);
    tracker.applied(false);
    let done = servers
        .update(&BTreeMap::from([
            (web, check("web", 1)),
            (db, check("db", 0)),
        ]))
        .await;
    assert_eq!(done.opened.len(), 2, "{done:?}");
    assert!(done.failed.is_empty(), "{done:?}");
    assert_service(&get(at(web), "/"), 200, "web", 1, true);
    assert_service(&get(at(db), "/any/path?x"), 503, "db", 0, true);
    assert_eq!(metrics.service_servers.get(), 2);

    // Counts change in place: nothing opens or closes.
    let next = BTreeMap::from([(web, check("web", 0)), (db, check("db", 3))]);
    let done = servers.update(&next).await;
    assert!(done.opened.is_empty() && done.closed.is_empty(), "{done:?}");
    assert_service(&get(at(web), "/"), 503, "web", 0, true);
    assert_service(&get(at(db), "/"), 200, "db", 3, true);

    // A revision waiting past the bound: the proxy is unhealthy, the port
    // with endpoints answers 503 too (kube-proxy ≥ 1.28); applied, 200.
    tracker.received();
    assert_service(&get(at(db), "/"), 200, "db", 3, true);
    tokio::time::sleep(bound).await;
    assert_service(&get(at(db), "/"), 503, "db", 3, false);
    tracker.applied(false);
    assert_service(&get(at(db), "/"), 200, "db", 3, true);

    // A Service gone: its port closes, the other stays.
    let done = servers
        .update(&BTreeMap::from([(db, check("db", 3))]))
        .await;
    assert_eq!(done.closed, vec![web], "{done:?}");
    assert!(becomes_refused(at(web)), "port {web} closed");
    assert_service(&get(at(db), "/"), 200, "db", 3, true);
    assert_eq!(metrics.service_servers.get(), 1);

    // A port someone else holds: logged and counted, not fatal; bound on
    // the next update once free.
    let holder = TcpListener::bind(at(web)).expect("hold the port");
    let want = BTreeMap::from([(db, check("db", 3)), (web, check("web", 2))]);
    let done = servers.update(&want).await;
    assert_eq!(
        done.failed.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![web]
    );
    assert_eq!(
        metrics
            .bind_failures
            .get_or_create(&setpoint_agent::metrics::HealthServerLabels {
                server: HealthServer::Service
            })
            .get(),
        1
    );
    assert_service(&get(at(db), "/"), 200, "db", 3, true);
    drop(holder);
    let done = servers.update(&want).await;
    assert_eq!(done.opened, vec![web], "{done:?}");
    assert_service(&get(at(web), "/"), 200, "web", 2, true);
    assert!(metrics.requests_with(HealthServer::Service, "200") >= 5);
    assert!(metrics.requests_with(HealthServer::Service, "503") >= 3);

    // Everything gone: every port closes.
    let done = servers.update(&BTreeMap::new()).await;
    assert_eq!(done.closed.len(), 2, "{done:?}");
    assert!(becomes_refused(at(web)) && becomes_refused(at(db)));
    assert_eq!(metrics.service_servers.get(), 0);
}

async fn proxy_server(
    limits: Limits,
    tracker: &Tracker,
    metrics: &HealthMetrics,
) -> (SocketAddr, tokio_util::task::AbortOnDropHandle<()>) {
    let listener = setpoint_agent::health::listen::bind(SocketAddr::new(LOOPBACK, 0))
        .and_then(tokio::net::TcpListener::from_std)
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(proxy::serve(
        listener,
        limits,
        tracker.clone(),
        metrics.clone(),
    ));
    (addr, tokio_util::task::AbortOnDropHandle::new(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_livez_answer_as_kube_proxy() {
    let bound = Duration::from_millis(400);
    let tracker = Tracker::new(bound);
    let metrics = HealthMetrics::default();
    let (addr, _server) = proxy_server(Limits::default(), &tracker, &metrics).await;

    // Starting up, within the bound: healthy.
    let r = get(addr, "/healthz");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.head.contains("X-Content-Type-Options: nosniff"), "{r:?}");
    assert_eq!(r.json()["nodeEligible"], true);
    assert_eq!(r.json()["lastUpdated"], r.json()["currentTime"]);
    assert_eq!(get(addr, "/livez").status, 200);
    assert_eq!(get(addr, "/metrics").status, 404);
    assert_eq!(get(addr, "/healthz/").status, 404);

    // Nothing applied within the bound: stale, Go's zero time.
    tokio::time::sleep(bound).await;
    let r = get(addr, "/healthz");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["lastUpdated"], "0001-01-01T00:00:00Z");
    assert_eq!(get(addr, "/livez").status, 503);

    // Applied, then the node drains: /healthz 503, /livez 200.
    tracker.applied(false);
    assert_eq!(get(addr, "/healthz").status, 200);
    tracker.applied(true);
    let r = get(addr, "/healthz");
    assert_eq!(
        (r.status, r.json()["nodeEligible"].clone()),
        (503, false.into())
    );
    let r = get(addr, "/livez");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json().get("nodeEligible").is_none(), "{r:?}");

    // A revision waits past the bound: both 503, lastUpdated the apply.
    tracker.applied(false);
    tracker.received();
    tokio::time::sleep(bound).await;
    let r = get(addr, "/livez");
    assert_eq!(r.status, 503, "{r:?}");
    assert_ne!(r.json()["lastUpdated"], r.json()["currentTime"]);
    assert_eq!(get(addr, "/healthz").status, 503);

    // HEAD: the head only.
    let r = exchange(addr, b"HEAD /livez HTTP/1.1\r\n\r\n").expect("HEAD");
    assert_eq!((r.status, r.body.as_str()), (503, ""), "{r:?}");
    assert!(r.head.contains("Content-Length: "), "{r:?}");
    assert!(metrics.requests_with(HealthServer::Proxy, "404") == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_bounded_in_size_time_and_number() {
    let tracker = Tracker::new(Duration::from_secs(60));
    tracker.applied(false);
    let metrics = HealthMetrics::default();
    let limits = Limits {
        head_bytes: 1024,
        request_time: Duration::from_millis(600),
        connections: 1,
    };
    let (addr, _server) = proxy_server(limits, &tracker, &metrics).await;

    // A head over the limit: 431, not a growing buffer.
    let mut big = b"GET /healthz HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"X-Filler: abcdefghijklmnop\r\n".as_slice(), 100).flatten());
    let r = exchange(addr, &big).expect("answered");
    assert_eq!(r.status, 431, "{r:?}");
    let r = exchange(addr, b"NOT HTTP\r\n\r\n").expect("answered");
    assert_eq!(r.status, 400, "{r:?}");

    // A client that sends half a head and waits (slowloris) holds the only
    // connection slot; a second client waits in the accept queue and is
    // answered once the first is cut off at the request time.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost:")
        .expect("half a head");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let r = get(addr, "/healthz");
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "the second client waited for the slot: {waited:?}"
    );
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let cut = slow.read_to_end(&mut rest);
    assert!(
        matches!(cut, Ok(0)) || matches!(&cut, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the slow client was cut off without an answer: {cut:?} {rest:?}"
    );
    assert_eq!(metrics.requests_with(HealthServer::Proxy, "timeout"), 1);
    assert_eq!(metrics.requests_with(HealthServer::Proxy, "431"), 1);
}

/// Both kinds of server inside a namespace the agent would apply into,
/// bound on all addresses there (v4 and v6), and not in this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_listen_inside_the_agents_network_namespace() {
    require_root_and_tools();
    let ns = Netns::create("agent-health").expect("netns");
    let tracker = Tracker::new(Duration::from_secs(60));
    tracker.applied(false);
    let metrics = HealthMetrics::default();
    let mut servers = ServiceServers::new(
        Some(ns.name().to_string()),
        ALL_ADDRESSES,
        Limits::default(),
        tracker.clone(),
        metrics.clone(),
    );
    // Free here, so that a refusal here means "not in this namespace".
    let (port, proxy_port) = (free_port(), free_port());
    let done = servers
        .update(&BTreeMap::from([(port, check("web", 1))]))
        .await;
    assert_eq!(done.opened, vec![port], "{done:?}");
    let _proxy = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(proxy::run(
        SocketAddr::new(ALL_ADDRESSES, proxy_port),
        Some(ns.name().to_string()),
        Limits::default(),
        tracker.clone(),
        metrics.clone(),
    )));

    let v4 = SocketAddr::new(LOOPBACK, port);
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    let probe = |addr: SocketAddr, path: &'static str| {
        let name = ns.name().to_string();
        tokio::task::spawn_blocking(move || get_in(&name, addr, path))
    };
    assert_service(&probe(v4, "/").await.expect("probe"), 200, "web", 1, true);
    assert_service(&probe(v6, "/").await.expect("probe"), 200, "web", 1, true);
    assert!(
        refused(v4),
        "the health-check port is not in the root namespace"
    );

    // The proxy server binds on its own task: wait (bounded) for it.
    let healthz = SocketAddr::new(LOOPBACK, proxy_port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let name = ns.name().to_string();
    let reachable = tokio::task::spawn_blocking(move || {
        while Instant::now() < deadline {
            let up = setpoint_agent::in_netns(Some(&name), || !refused(healthz)).unwrap_or(false);
            if up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })
    .await
    .expect("probe");
    assert!(
        reachable,
        "the proxy health server listens in the namespace"
    );
    assert_eq!(probe(healthz, "/healthz").await.expect("probe").status, 200);
    assert!(refused(healthz), "/healthz is not in the root namespace");

    servers.update(&BTreeMap::new()).await;
    let name = ns.name().to_string();
    let closed = tokio::task::spawn_blocking(move || {
        setpoint_agent::in_netns(Some(&name), || becomes_refused(v4)).unwrap_or(false)
    })
    .await
    .expect("probe");
    assert!(closed, "the port closed inside the namespace");
}
