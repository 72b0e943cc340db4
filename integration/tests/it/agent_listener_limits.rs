//! What the agent listener lets a peer hold: a peer that connects and
//! says nothing, or speaks HTTP/2 but never opens an agent session, is
//! disconnected; a peer address over its connection limit is closed at
//! once; a message over the upstream limit is refused; agents that take a
//! snapshot and never answer give their snapshot slot back after the
//! deadline, so another node still gets its snapshot.

use std::path::Path;
use std::time::Duration;

use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_controlplane::stream::AgentLimits;
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{AgentMessage, Heartbeat, Hello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::agent_identity::metric;
use crate::e2e_support::{Progress, copy_examples, progress};
use crate::running_failures::{envelope, hello, next_state, open_stream, wait_for};

/// How long a test waits for what the listener should do within its
/// (much shorter) limits.
const PATIENCE: Duration = Duration::from_secs(20);

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("db").display())
}

/// Short limits, so that the tests are quick.
fn quick_limits() -> AgentLimits {
    let mut limits = AgentLimits::default();
    limits.listener.per_peer = 4;
    limits.listener.handshake = Duration::from_secs(1);
    limits.hello_timeout = Duration::from_millis(500);
    limits
}

struct Fixture {
    _manifests: tempfile::TempDir,
    _data: tempfile::TempDir,
    running: Running,
}

async fn serve(limits: AgentLimits) -> Fixture {
    let (manifests, data) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    copy_examples(manifests.path());
    let running = start(ServeConfig {
        agents: limits,
        ..ServeConfig::local(manifests.path(), sqlite(data.path()))
    })
    .await
    .expect("control plane starts");
    Fixture {
        _manifests: manifests,
        _data: data,
        running,
    }
}

/// A dry-run agent for `node`.
fn dry_run_agent(running: &Running, node: &str) -> (tokio::task::JoinHandle<()>, Progress) {
    let agent = Agent::new(AgentOptions {
        dry_run: true,
        ipvs: IpvsMode::Simulated,
        drift_interval: Duration::from_secs(3600),
        ..AgentOptions::new(node, format!("http://{}", running.agent_addr))
    });
    let progress = agent.progress.clone();
    (tokio::spawn(agent.run()), progress)
}

/// Reads until the server closes the connection (EOF or reset); false
/// when it is still open after `PATIENCE`.
async fn closed_by_server(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A PING frame (8 bytes of opaque data on stream 0).
const PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_and_peers_that_never_say_hello_are_disconnected() {
    let fixture = serve(quick_limits()).await;
    let addr = fixture.running.agent_addr;

    // Connects and sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_by_server(&mut silent).await,
        "a peer that sends nothing is disconnected"
    );

    // Speaks HTTP/2 and keeps talking (pings) but opens no agent stream:
    // never idle, yet no session, so it is closed too.
    let mut chatty = TcpStream::connect(addr).await.expect("connect");
    chatty.write_all(PREFACE).await.expect("preface");
    let pinging = tokio::spawn({
        let (mut reader, mut writer) = chatty.into_split();
        async move {
            let pings = async {
                loop {
                    if writer.write_all(PING).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            let closed = async {
                let mut buf = [0u8; 256];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                _ = pings => false,
                _ = closed => true,
            }
        }
    });
    let closed = tokio::time::timeout(PATIENCE, pinging).await;
    assert!(
        matches!(closed, Ok(Ok(true))),
        "a peer that speaks HTTP/2 but never says hello is disconnected: {closed:?}"
    );
    assert!(
        metric(&fixture.running, "setpoint_agent_idle_closes_total") >= 1.0,
        "closed for carrying no agent session"
    );

    // A stream without a hello is refused after the (configured) timeout.
    let (_tx, answer) = open_stream(addr, Vec::new()).await;
    let status = answer.expect_err("no hello is refused");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("hello within 500ms"),
        "{status:?}"
    );

    // An agent that does say hello keeps its connection.
    let (_a, a) = dry_run_agent(&fixture.running, "node-a");
    wait_for("node-a to ack", PATIENCE, || {
        let head = *fixture.running.head.borrow();
        head > 0 && progress(&a).revision == head
    })
    .await;
    let closes = metric(&fixture.running, "setpoint_agent_idle_closes_total");
    tokio::time::sleep(quick_limits().hello_timeout * 4).await;
    let now = progress(&a);
    assert!(now.connected, "{now:?}");
    assert_eq!(
        metric(&fixture.running, "setpoint_agent_idle_closes_total"),
        closes,
        "the agent's connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_address_over_its_connection_limit_is_closed_at_once() {
    let mut limits = quick_limits();
    limits.listener.per_peer = 2;
    limits.listener.handshake = Duration::from_secs(30);
    let fixture = serve(limits).await;
    let addr = fixture.running.agent_addr;
    let held = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_by_server(&mut third).await,
        "the third connection from one address is closed"
    );
    assert!(
        metric(
            &fixture.running,
            "setpoint_connections_dropped_total{listener=\"agent\",reason=\"PerPeerLimit\"}"
        ) >= 1.0,
        "{}",
        fixture.running.metrics.encode()
    );
    // The slots come back with the connections: an agent gets in.
    drop(held);
    let (_a, a) = dry_run_agent(&fixture.running, "node-a");
    wait_for("node-a to ack", PATIENCE, || {
        let head = *fixture.running.head.borrow();
        head > 0 && progress(&a).revision == head
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_message_is_refused() {
    let fixture = serve(quick_limits()).await;
    let addr = fixture.running.agent_addr;
    wait_for("a first revision", PATIENCE, || {
        *fixture.running.head.borrow() > 0
    })
    .await;
    let big = setpoint_proto::MAX_UPSTREAM_MESSAGE_BYTES + 1;
    let oversized = |node: &str| {
        envelope(AgentBody::Hello(Hello {
            node: node.to_string(),
            agent_version: "v".repeat(big),
            applied_revision: 0,
            applied_digest: Vec::new(),
            accept_encodings: Vec::new(),
        }))
    };
    let (_tx, answer) = open_stream(addr, vec![oversized("node-b")]).await;
    let status = answer.expect_err("an oversized hello is refused");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );

    // After a hello, an oversized heartbeat ends the stream.
    let (tx, answer) = open_stream(addr, vec![envelope(hello("node-b"))]).await;
    let mut inbound = answer.expect("a valid hello is answered");
    assert!(matches!(
        next_state(&mut inbound).await,
        ControlBody::Snapshot(_)
    ));
    tx.send(AgentMessage {
        protocol_version: setpoint_proto::PROTOCOL_VERSION,
        body: Some(AgentBody::Heartbeat(Heartbeat { unix_millis: 1 })),
    })
    .await
    .expect("send");
    tx.send(oversized("node-b")).await.expect("send");
    let end = loop {
        match tokio::time::timeout(PATIENCE, inbound.message()).await {
            Err(_) => panic!("the stream did not end"),
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
        }
    };
    let status = end.expect_err("the stream ends with an error");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
}

/// A Node manifest for `name`, its addresses from `index`.
fn node_manifest(name: &str, index: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n\
         spec:\n  podCIDR: 10.250.{index}.0/24\n  podCIDRs:\n    - 10.250.{index}.0/24\n\
         status:\n  addresses:\n    - type: InternalIP\n      address: 192.168.30.{host}\n",
        host = index + 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_take_a_snapshot_and_never_answer_do_not_stop_another_nodes_snapshot() {
    let hung = setpoint_controlplane::fanout::SNAPSHOTS_IN_FLIGHT + 2;
    let mut limits = AgentLimits::default().with_connections_per_peer(hung + 8);
    limits.snapshot_answer = Duration::from_millis(500);
    let (manifests, data) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    copy_examples(manifests.path());
    let names: Vec<String> = (0..hung).map(|i| format!("node-hung-{i:02}")).collect();
    let nodes: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| node_manifest(n, i))
        .collect();
    std::fs::write(
        manifests.path().join("nodes-hung.yaml"),
        nodes.join("---\n"),
    )
    .expect("write nodes");
    let running = start(ServeConfig {
        agents: limits,
        ..ServeConfig::local(manifests.path(), sqlite(data.path()))
    })
    .await
    .expect("control plane starts");
    wait_for("a first revision", PATIENCE, || *running.head.borrow() > 0).await;

    // Each takes its snapshot, heartbeats, and never acks.
    let addr = running.agent_addr;
    let mut streams = Vec::new();
    for name in &names {
        let (tx, answer) = open_stream(addr, vec![envelope(hello(name))]).await;
        let inbound = answer.expect("hello answered");
        let beats = tx.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                let beat = envelope(AgentBody::Heartbeat(Heartbeat { unix_millis: 1 }));
                if beats.send(beat).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        streams.push((tx, inbound, heartbeats));
    }
    for (name, (_, inbound, _)) in names.iter().zip(streams.iter_mut()) {
        match tokio::time::timeout(PATIENCE, next_state(inbound)).await {
            Ok(ControlBody::Snapshot(_)) => {}
            Ok(other) => panic!("{name}: a snapshot first, got {other:?}"),
            Err(_) => panic!("{name} never got its snapshot"),
        }
    }
    // Another node's agent still gets its snapshot, and acks it.
    let (_a, a) = dry_run_agent(&running, "node-a");
    wait_for("node-a to ack", PATIENCE, || {
        progress(&a).revision == *running.head.borrow()
    })
    .await;
    assert!(
        metric(&running, "setpoint_snapshot_slot_expiries_total") >= 2.0,
        "{}",
        running.metrics.encode()
    );
    for (_, _, heartbeats) in streams {
        heartbeats.abort();
    }
    drop(manifests);
}
