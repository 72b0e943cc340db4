//! The running system when things fail: the control plane dies and comes
//! back, peers break the protocol, an agent dies mid-apply, PostgreSQL
//! refuses connections. Same setup as `running_system`: a fresh PostgreSQL
//! database per test, a copy of the example manifests, real agents in
//! network namespaces (IPVS in memory: this kernel has none).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_integration::{Netns, readyz, require_root_and_tools};
use setpoint_proto::PROTOCOL_VERSION;
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_client::AgentStreamClient;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{Ack, AgentMessage, ControlMessage, Heartbeat, Hello};
use setpoint_store::{RevisionId, Store};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

use crate::e2e_support::{
    Progress, assert_resumed_by_delta, assert_sets_applied, assert_status_is_head, converge,
    converge_past, copy_examples, edit_manifest, fresh_postgres_database, progress, psql,
    spawn_agent,
};

pub(crate) fn config(manifests: &Path, database: &str, listen: SocketAddr) -> ServeConfig {
    ServeConfig {
        manifests: manifests.to_path_buf(),
        manifest_limits: Default::default(),
        kube: None,
        database: database.to_string(),
        listen,
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
        rollout: None,
        admin: Default::default(),
        tls: None,
        agents: Default::default(),
        election: Default::default(),
    }
}

pub(crate) fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A loopback address nobody listens on right now: bound to port 0, read,
/// released.
pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// Waits for `what` to hold, up to `limit`.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A control plane in a tokio runtime of its own (started on its own
/// thread, since a runtime cannot be started from inside the test's), so
/// that the test can kill it.
pub(crate) struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) running: Running,
}

impl ControlPlane {
    pub(crate) async fn launch(config: ServeConfig) -> anyhow::Result<ControlPlane> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("controlplane".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("controlplane-rt")
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                match runtime.block_on(start(config)) {
                    // The runtime's workers keep serving after this thread ends.
                    Ok(running) => {
                        let _ = tx.send(Ok((runtime, running)));
                    }
                    Err(e) => {
                        runtime.shutdown_background();
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let (runtime, running) = rx.await??;
        Ok(ControlPlane {
            runtime: Some(runtime),
            running,
        })
    }

    /// Our SIGKILL stand-in: the runtime is shut down without waiting, so
    /// every task of the control plane (sessions, listeners, the manifest
    /// watcher, store connections) is dropped at once, mid-whatever; no
    /// graceful shutdown runs, no stream is closed politely beyond what
    /// the kernel does for closed sockets.
    pub(crate) fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store of the test's own, on the test's runtime (the control plane's
/// connections die with its runtime).
pub(crate) async fn open_store(database: &str) -> Store {
    Store::open(database).await.expect("open the store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_mid_rollout_agents_keep_state_and_resume_by_delta() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let database = fresh_postgres_database();
    let listen = free_addr();
    let mut first_cp = ControlPlane::launch(config(manifests.path(), &database, listen))
        .await
        .expect("control plane starts");
    let store = open_store(&database).await;
    let (ns_a, ns_c) = (
        Netns::create("cpk-a").expect("netns"),
        Netns::create("cpk-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_task_a, a) = spawn_agent(&first_cp.running, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent(&first_cp.running, "node-c", &ns_c, dir_c.path());
    let first = converge(&first_cp.running, &[&a, &c]).await;
    assert_eq!(progress(&a).snapshots, 1, "{:?}", progress(&a));

    // A rollout starts: an endpoint moves, and the control plane dies as
    // soon as the revision carrying it is committed — the agents may or
    // may not have it.
    let slices = manifests.path().join("endpointslices-core.yaml");
    let mut head = first_cp.running.head.clone();
    edit_manifest(&slices, "10.244.1.2", "10.244.1.99");
    tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h > first))
        .await
        .expect("the edit is committed")
        .expect("head");
    first_cp.kill();
    // The last revision the dead control plane committed (the edit's).
    let committed = *first_cp.running.head.borrow();
    wait_for(
        "agents notice the control plane is gone",
        Duration::from_secs(10),
        || !progress(&a).connected && !progress(&c).connected,
    )
    .await;

    // The kernels keep what the agents last applied.
    for (node, p, ns) in [("node-a", &a, &ns_a), ("node-c", &c, &ns_c)] {
        let held = progress(p).revision;
        eprintln!(
            "{node} held revision {held} of {first}..={committed} when the control plane died"
        );
        assert!(held >= first, "{node}: {:?}", progress(p));
        assert_sets_applied(&store, node, held, ns).await;
    }

    // Edited while the control plane is down.
    edit_manifest(&slices, "10.244.1.99", "10.244.1.123");

    // A new control plane on the same database and address. The old
    // listener goes away with its runtime's workers, a moment after kill.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second_cp = loop {
        match ControlPlane::launch(config(manifests.path(), &database, listen)).await {
            Ok(cp) => break cp,
            Err(e) => {
                assert!(Instant::now() < deadline, "second control plane: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let before = (progress(&a), progress(&c));
    // Past `committed`: the agents may hold it already, and the new
    // control plane reports it as head until its first commit.
    let last = converge_past(&second_cp.running, &[&a, &c], committed).await;
    let resumed = [
        ("node-a", &a, &ns_a, &before.0),
        ("node-c", &c, &ns_c, &before.1),
    ];
    assert_resumed_by_delta(&store, &resumed, last, "10.244.1.123").await;
    assert_eq!(
        second_cp.running.metrics.snapshots_sent.get(),
        0,
        "the new control plane confirmed the agents' revisions from the store"
    );
}

pub(crate) fn envelope(body: AgentBody) -> AgentMessage {
    AgentMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

pub(crate) fn hello(node: &str) -> AgentBody {
    AgentBody::Hello(Hello {
        node: node.to_string(),
        agent_version: "raw test client".to_string(),
        applied_revision: 0,
        applied_digest: Vec::new(),
        accept_encodings: Vec::new(),
    })
}

/// Opens a stream with the generated client. `first` is queued before
/// the call: the control plane answers the call only once it has the
/// first message (or gives up waiting for it).
pub(crate) async fn open_stream(
    addr: SocketAddr,
    first: Vec<AgentMessage>,
) -> (
    mpsc::Sender<AgentMessage>,
    Result<Streaming<ControlMessage>, Status>,
) {
    let mut client = AgentStreamClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    for m in first {
        tx.send(m).await.expect("queue");
    }
    let call = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let answer = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the control plane answers the call")
        .map(|r| r.into_inner());
    (tx, answer)
}

/// The next snapshot or delta (heartbeats skipped, pieces reassembled).
pub(crate) async fn next_state(inbound: &mut Streaming<ControlMessage>) -> ControlBody {
    let mut reassembly = setpoint_proto::pieces::Reassembly::default();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("a state within 10 s")
            .expect("stream ok")
            .expect("stream open");
        let Some(m) = reassembly.push(m).expect("pieces reassemble") else {
            continue;
        };
        match m.body {
            Some(ControlBody::Heartbeat(_)) | None => continue,
            Some(body) => return body,
        }
    }
}

/// How the stream ends (control messages skipped): `Ok` when it just ends.
async fn stream_end(inbound: &mut Streaming<ControlMessage>) -> Result<(), Status> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("the stream ends within 10 s");
        if m?.is_none() {
            return Ok(());
        }
    }
}

/// Checks a stream's end is `code` with `words` in the message; says
/// what it was instead.
fn expect_status(what: &str, end: Result<(), Status>, code: Code, words: &str) -> Option<String> {
    match end {
        Err(s) if s.code() == code && s.message().contains(words) => None,
        other => Some(format!(
            "{what}: expected {code:?} mentioning {words:?}, got {other:?}"
        )),
    }
}

/// A stream for node-b (no real agent runs for it) that received its
/// snapshot; returns the snapshot's revision and digest.
async fn stream_past_snapshot(
    addr: SocketAddr,
) -> (
    mpsc::Sender<AgentMessage>,
    Streaming<ControlMessage>,
    u64,
    Vec<u8>,
) {
    let (tx, answer) = open_stream(addr, vec![envelope(hello("node-b"))]).await;
    let mut inbound = answer.expect("a valid hello is answered");
    match next_state(&mut inbound).await {
        ControlBody::Snapshot(s) => (tx, inbound, s.revision, s.digest),
        other => panic!("a fresh agent gets a snapshot first, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_refused_with_a_clear_status_and_others_unaffected() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let running = start(config(
        manifests.path(),
        &fresh_postgres_database(),
        any_port(),
    ))
    .await
    .expect("control plane starts");
    let addr = running.agent_addr;
    let ns_a = Netns::create("pv-a").expect("netns");
    let dir_a = tempfile::tempdir().expect("dir");
    let (_task_a, a) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let first = converge(&running, &[&a]).await;

    // (e) No hello at all: the control plane waits 10 s (its fixed hello
    // timeout), so this one runs beside the others.
    let silent = tokio::spawn(async move {
        let started = Instant::now();
        let (_tx, answer) = open_stream(addr, Vec::new()).await;
        (answer.map(|_| ()), started.elapsed())
    });

    // (a) The first message is not a hello: refused before the call is answered.
    let (_tx, answer) = open_stream(
        addr,
        vec![envelope(AgentBody::Heartbeat(Heartbeat { unix_millis: 1 }))],
    )
    .await;
    let status = answer.expect_err("a heartbeat first is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hello"), "{status:?}");

    // (b) A protocol version this control plane does not speak.
    let (_tx, answer) = open_stream(
        addr,
        vec![AgentMessage {
            protocol_version: 99,
            body: Some(hello("node-b")),
        }],
    )
    .await;
    let status = answer.expect_err("protocol 99 is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("99"), "{status:?}");

    // (c), (d), (f), (g) break the protocol on open streams: each session
    // ends (`stream_end` fails the test otherwise). Which status they end
    // with is `open_stream_violations_end_with_a_status`'s check.
    let ended = open_stream_violations(addr).await;
    assert_eq!(ended.len(), 4);

    // The real agent never noticed: same stream, and a new revision
    // reaches it as a delta.
    let before = progress(&a);
    assert!(before.connected, "{before:?}");
    assert_eq!(before.snapshots, 1, "{before:?}");
    edit_manifest(
        &manifests.path().join("endpointslices-core.yaml"),
        "10.244.1.2",
        "10.244.1.99",
    );
    let second = converge_past(&running, &[&a], first).await;
    let after = progress(&a);
    assert!(after.connected, "{after:?}");
    assert_eq!(after.snapshots, 1, "{after:?}");
    assert!(after.deltas > before.deltas, "{before:?} → {after:?}");
    assert_sets_applied(&running.store, "node-a", second, &ns_a).await;
    assert_status_is_head(&running.store, "node-a", second).await;

    let (silent_end, waited) = silent.await.expect("silent client");
    let silent_status = silent_end.expect_err("no hello is refused");
    assert_eq!(
        silent_status.code(),
        Code::DeadlineExceeded,
        "{silent_status:?}"
    );
    assert!(
        silent_status.message().contains("hello"),
        "{silent_status:?}"
    );
    assert!(waited >= Duration::from_secs(9), "{waited:?}");
}

/// Breaks the protocol on open streams of node-b (no real agent runs for
/// it), one way per stream; returns how each stream ended with the
/// status it should have ended with.
async fn open_stream_violations(
    addr: SocketAddr,
) -> Vec<(&'static str, Result<(), Status>, Code, &'static str)> {
    let mut ends = Vec::new();

    // (c) Hello twice on one stream.
    let (tx, mut inbound, _, _) = stream_past_snapshot(addr).await;
    tx.send(envelope(hello("node-b"))).await.expect("send");
    let end = stream_end(&mut inbound).await;
    ends.push(("(c) hello twice", end, Code::InvalidArgument, "hello twice"));

    // (d) An ack for a revision that was never sent.
    let (tx, mut inbound, revision, digest) = stream_past_snapshot(addr).await;
    tx.send(envelope(AgentBody::Ack(Ack {
        revision: revision + 1000,
        digest,
        apply_micros: 1,
    })))
    .await
    .expect("send");
    let end = stream_end(&mut inbound).await;
    ends.push((
        "(d) ack of an unsent revision",
        end,
        Code::InvalidArgument,
        "not sent",
    ));

    // (f) A message without a body.
    let (tx, mut inbound, _, _) = stream_past_snapshot(addr).await;
    tx.send(AgentMessage {
        protocol_version: PROTOCOL_VERSION,
        body: None,
    })
    .await
    .expect("send");
    let end = stream_end(&mut inbound).await;
    ends.push(("(f) empty message", end, Code::InvalidArgument, "empty"));

    // (g) The protocol version changes mid-stream.
    let (tx, mut inbound, _, _) = stream_past_snapshot(addr).await;
    tx.send(AgentMessage {
        protocol_version: 99,
        body: Some(AgentBody::Heartbeat(Heartbeat { unix_millis: 1 })),
    })
    .await
    .expect("send");
    let end = stream_end(&mut inbound).await;
    ends.push((
        "(g) version change mid-stream",
        end,
        Code::FailedPrecondition,
        "protocol version",
    ));
    ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_stream_violations_end_with_a_status() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let running = start(config(
        manifests.path(),
        &fresh_postgres_database(),
        any_port(),
    ))
    .await
    .expect("control plane starts");
    let mut head = running.head.clone();
    tokio::time::timeout(Duration::from_secs(20), head.wait_for(|h| *h > 0))
        .await
        .expect("a first revision")
        .expect("head");
    let wrong: Vec<String> = open_stream_violations(running.agent_addr)
        .await
        .into_iter()
        .filter_map(|(what, end, code, words)| expect_status(what, end, code, words))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_apply_restarts_and_converges_to_the_current_digest() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let running = start(config(
        manifests.path(),
        &fresh_postgres_database(),
        any_port(),
    ))
    .await
    .expect("control plane starts");
    let (ns_a, ns_c) = (
        Netns::create("akill-a").expect("netns"),
        Netns::create("akill-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (task, a) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent(&running, "node-c", &ns_c, dir_c.path());
    let mut head = converge(&running, &[&a, &c]).await;
    let slices = manifests.path().join("endpointslices-core.yaml");

    // Round 1: killed right after the edit is written — most likely
    // before the control plane even committed it. Round 2: killed the
    // moment the revision is committed — the delta is on the wire or
    // being applied (the blocking apply may even finish after the abort).
    // Racy by design; every ordering must end at the head's digest.
    let mut current: (tokio::task::JoinHandle<()>, Progress) = (task, a);
    for (round, (from, to)) in [
        ("10.244.1.2", "10.244.1.99"),
        ("10.244.1.99", "10.244.1.123"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut watch = running.head.clone();
        watch.borrow_and_update();
        edit_manifest(&slices, from, to);
        if round == 1 {
            tokio::time::timeout(Duration::from_secs(10), watch.changed())
                .await
                .expect("the edit is committed")
                .expect("head");
        }
        let (task, old) = current;
        task.abort();
        eprintln!(
            "round {round}: agent aborted at revision {} (head {head}, now {})",
            progress(&old).revision,
            *running.head.borrow()
        );
        let _ = task.await;
        let restarted = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
        let new_head = converge_past(&running, &[&restarted.1, &c], head).await;
        let p = progress(&restarted.1);
        assert!(p.connected, "round {round}: {p:?}");
        assert_sets_applied(&running.store, "node-a", new_head, &ns_a).await;
        assert_status_is_head(&running.store, "node-a", new_head).await;
        assert_status_is_head(&running.store, "node-c", new_head).await;
        head = new_head;
        current = restarted;
    }
}

/// Turns connections to one database off (and its sessions out) for as
/// long as it lives; only this test's database is touched, the server and
/// the other tests' databases are not.
struct Unreachable(String);

impl Unreachable {
    fn cut(database: &str) -> Unreachable {
        psql(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ));
        psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ));
        Unreachable(database.to_string())
    }
}

impl Drop for Unreachable {
    fn drop(&mut self) {
        psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_makes_the_control_plane_unready_agents_keep_state_then_catch_up() {
    require_root_and_tools();
    let manifests = tempfile::tempdir().expect("tempdir");
    copy_examples(manifests.path());
    let database = fresh_postgres_database();
    let name = database
        .rsplit('/')
        .next()
        .expect("database name")
        .to_string();
    let running = start(config(manifests.path(), &database, any_port()))
        .await
        .expect("control plane starts");
    let (ns_a, ns_c) = (
        Netns::create("pgd-a").expect("netns"),
        Netns::create("pgd-c").expect("netns"),
    );
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_task_a, a) = spawn_agent(&running, "node-a", &ns_a, dir_a.path());
    let (_task_c, c) = spawn_agent(&running, "node-c", &ns_c, dir_c.path());
    let first = converge(&running, &[&a, &c]).await;
    let ready = || {
        running
            .metrics
            .ready
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for(
        "ready after the first commit",
        Duration::from_secs(10),
        ready,
    )
    .await;
    assert_eq!(readyz(running.metrics_addr).await, 200);
    let kernel = |ns: &Netns| ns.exec(&["ipset", "save"], None).expect("ipset save");
    let (before_a, before_c) = (kernel(&ns_a), kernel(&ns_c));

    let cut = Unreachable::cut(&name);
    let slices = manifests.path().join("endpointslices-core.yaml");
    edit_manifest(&slices, "10.244.1.2", "10.244.1.99");
    wait_for(
        "not ready while the store refuses the commit",
        Duration::from_secs(15),
        || !ready(),
    )
    .await;
    assert_eq!(readyz(running.metrics_addr).await, 503);
    assert!(running.metrics.store_errors.get() >= 1);
    // A few more failed attempts: nothing moves meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*running.head.borrow(), first);
    for (p, ns, before) in [(&a, &ns_a, &before_a), (&c, &ns_c, &before_c)] {
        let now = progress(p);
        assert!(now.connected, "{now:?}");
        assert_eq!(now.revision, first, "{now:?}");
        assert_eq!(
            &kernel(ns),
            before,
            "{}: the kernel kept its sets",
            ns.name()
        );
    }

    // Back: the retry commits the edit and the agents get it as a delta.
    drop(cut);
    let second = converge_past(&running, &[&a, &c], first).await;
    wait_for("ready again", Duration::from_secs(10), ready).await;
    assert_eq!(readyz(running.metrics_addr).await, 200);
    for (node, p, ns) in [("node-a", &a, &ns_a), ("node-c", &c, &ns_c)] {
        let now = progress(p);
        assert_eq!((now.snapshots, now.nacks), (1, 0), "{node}: {now:?}");
        assert!(now.deltas >= 1, "{node}: {now:?}");
        assert_sets_applied(&running.store, node, second, ns).await;
        assert_status_is_head(&running.store, node, second).await;
    }
    let state = running
        .store
        .node_state("node-a", RevisionId(second))
        .await
        .expect("read")
        .expect("node-a");
    let ipvs = setpoint_dataplane::render(&state, setpoint_dataplane::Format::Ipvs);
    assert!(ipvs.contains("10.244.1.99"), "{ipvs}");
}
