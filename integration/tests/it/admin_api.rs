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
use setpoint_proto::admin::{
    ClusterPoliciesRequest, ExplainRequest, ExplainResponse, ListRevisionsRequest, ResumeRequest,
    RollbackRequest, StatusRequest,
};
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
        manifest_limits: Default::default(),
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
            ..AdminConfig::default()
        },
        tls: None,
        agents: Default::default(),
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

/// `Explain` at the head of a packet from a pod on node-a to `dst`:80.
async fn explain_at_head(admin: &mut AdminClient<Channel>, dst: &str) -> ExplainResponse {
    let request = ExplainRequest {
        node: "node-a".into(),
        protocol: "tcp".into(),
        src_ip: "10.244.1.20".into(),
        dst_ip: dst.into(),
        dst_port: 80,
        ..ExplainRequest::default()
    };
    admin
        .explain(with_token(request, Some(READ_TOKEN)))
        .await
        .expect("explains")
        .into_inner()
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
    // Only the leader knows what compute refused; the follower says so.
    let explained = explain_at_head(&mut client(&follower).await, "10.96.1.21").await;
    assert_eq!(explained.verdict, "dnat");
    assert!(
        explained.problems_unknown.contains("does not lead"),
        "{explained:?}"
    );
    let explained = explain_at_head(&mut admin, "10.96.1.21").await;
    assert_eq!(
        (
            explained.problems_unknown.as_str(),
            explained.problems.len()
        ),
        ("", 0),
        "{explained:?}"
    );
    // The same for ClusterNetworkPolicy realization: the follower does not
    // know; on the leader both example policies are enforced by the two
    // nodes whose agents applied them (node-b has none).
    let asked = || with_token(ClusterPoliciesRequest::default(), Some(READ_TOKEN));
    let on_follower = client(&follower)
        .await
        .cluster_policies(asked())
        .await
        .expect("the follower answers")
        .into_inner();
    assert!(
        on_follower.unknown.contains("does not lead") && on_follower.policies.is_empty(),
        "{on_follower:?}"
    );
    // The agents' reports reach the store shortly after they apply.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on_leader = admin
            .cluster_policies(asked())
            .await
            .expect("the leader answers")
            .into_inner();
        let realized: Vec<(&str, u64, u64, u64, Vec<&str>)> = on_leader
            .policies
            .iter()
            .map(|p| {
                let pending = p.pending.iter().map(|n| n.node.as_str()).collect();
                (p.name.as_str(), p.since, p.enforced, p.nodes, pending)
            })
            .collect();
        let want = [
            ("deny-cloud-metadata", first, 2, 3, vec!["node-b"]),
            ("shop-ingress-guardrail", first, 2, 3, vec!["node-b"]),
        ];
        if realized == want {
            break;
        }
        assert!(Instant::now() < deadline, "{on_leader:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    // The rollback's revision changed no computation: the leader's
    // problems (none) describe it too.
    let explained = explain_at_head(&mut admin, "10.96.1.20").await;
    assert_eq!(
        (explained.revision, explained.problems_unknown.as_str()),
        (third, ""),
        "{explained:?}"
    );
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

/// A `setpoint-controlplane serve` child process with the admin API on a
/// loopback port; its output (logs included) goes to a file the test
/// reads. SIGKILLed when dropped.
struct ServeProcess {
    child: std::process::Child,
    admin: std::net::SocketAddr,
    output: std::path::PathBuf,
}

impl ServeProcess {
    async fn start(dir: &Path, manifests: &Path, tokens: &Path) -> ServeProcess {
        // SETPOINT_IT_CONTROLPLANE: another build to attack (an older one).
        let binary = match std::env::var_os("SETPOINT_IT_CONTROLPLANE") {
            Some(path) => std::path::PathBuf::from(path),
            None => tokio::task::spawn_blocking(crate::sigkill::controlplane_binary)
                .await
                .expect("binary")
                .to_path_buf(),
        };
        let admin = crate::running_failures::free_addr();
        let output_path = dir.join("serve.output");
        let output = std::fs::File::create(&output_path).expect("output file");
        let child = std::process::Command::new(binary)
            .arg("serve")
            .arg("--manifests")
            .arg(manifests)
            .args(["--database", &fresh_postgres_database()])
            .args([
                "--listen",
                &crate::running_failures::free_addr().to_string(),
            ])
            .args([
                "--metrics-listen",
                &crate::running_failures::free_addr().to_string(),
            ])
            .args(["--admin-listen", &admin.to_string()])
            .arg("--admin-token-file")
            .arg(tokens)
            .args(["--batch-ms", "50"])
            .env("RUST_LOG", "warn")
            .stdout(output.try_clone().expect("output file"))
            .stderr(output)
            .spawn()
            .expect("start setpoint-controlplane serve");
        ServeProcess {
            child,
            admin,
            output: output_path,
        }
    }

    /// The example manifests and a token file `dir/tokens` holding `tokens`
    /// with file mode `mode`; a client once the first revision is served,
    /// with the first token.
    async fn with_tokens(
        dir: &Path,
        tokens: &str,
        mode: u32,
    ) -> (ServeProcess, AdminClient<Channel>) {
        let (manifests, file) = manifests_and_tokens(dir, tokens);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
        let serve = ServeProcess::start(dir, &manifests, &file).await;
        let first = tokens
            .split_whitespace()
            .find(|w| w.len() >= 16)
            .expect("a token");
        let client = serve.client(first).await;
        (serve, client)
    }

    /// `VmHWM` (peak resident set) or `VmRSS` of the process, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"));
        kib * 1024
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// A client once the admin API answers, and the head is past revision 0.
    async fn client(&self, token: &str) -> AdminClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = AdminClient::connect(format!("http://{}", self.admin)).await {
                let listed = c
                    .list_revisions(with_token(ListRevisionsRequest::default(), Some(token)))
                    .await;
                if listed.is_ok_and(|l| l.into_inner().head > 0) {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the admin API did not answer: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends its bytes as they are: a gRPC message that is not a valid
/// request (0xff is never valid UTF-8 for a `string` field).
#[derive(Clone, Copy)]
struct RawCodec;

struct RawBytes;

impl tonic::codec::Encoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

/// A Rollback call whose message is `body` verbatim.
async fn raw_rollback(
    addr: std::net::SocketAddr,
    body: bytes::Bytes,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/setpoint.admin.v1.Admin/Rollback");
    grpc.unary(with_token(body, token), path, RawCodec)
        .await
        .map(|_| ())
}

const MIB: usize = 1 << 20;

/// A field-3 (`reason`, a string) of `len` 0xff bytes: a malformed
/// RollbackRequest of about `len` bytes.
fn malformed_rollback(len: usize) -> bytes::Bytes {
    let mut body = Vec::with_capacity(len + 16);
    body.push(0x1a); // field 3, length-delimited
    let mut n = len as u64;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.resize(body.len() + len, 0xff);
    body.into()
}

/// The reported attack: requests of 64 MiB without a token to a real
/// `serve`'s admin port. Each is refused as UNAUTHENTICATED — the token is
/// looked at before the body is read, let alone decoded — and the
/// process's peak memory stays flat. An authenticated request that large
/// is refused by size (OUT_OF_RANGE), also without being buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_64_mib_requests_are_refused_with_memory_flat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serve, mut admin) =
        ServeProcess::with_tokens(dir.path(), &format!("{ADMIN_TOKEN}\n"), 0o600).await;
    // Settle: the first revision is committed and served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = serve.memory("VmHWM");

    let body = malformed_rollback(64 * MIB);
    let attacks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(raw_rollback(serve.admin, body.clone(), None)))
        .collect();
    let mut refusals = Vec::new();
    for attack in attacks {
        refusals.push(attack.await.expect("task"));
    }
    let after_attacks = serve.memory("VmHWM");
    let oversized_raw = raw_rollback(serve.admin, body.clone(), Some(ADMIN_TOKEN)).await;
    let oversized = admin
        .rollback(with_token(
            RollbackRequest {
                to: 1,
                nodes: Vec::new(),
                reason: "x".repeat(64 * MIB),
            },
            Some(ADMIN_TOKEN),
        ))
        .await;
    let after = serve.memory("VmHWM");
    println!(
        "serve peak RSS: {} MiB before, {} MiB after five unauthenticated 64 MiB requests, \
         {} MiB after two authenticated ones",
        before / MIB as u64,
        after_attacks / MIB as u64,
        after / MIB as u64,
    );
    for refused in refusals {
        let refused = refused.expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "refused for the token, not the body: {refused:?}"
        );
    }
    for oversized in [oversized_raw, oversized.map(|_| ())] {
        let oversized = oversized.expect_err("too large");
        assert_eq!(oversized.code(), tonic::Code::OutOfRange, "{oversized:?}");
    }
    let grew = after.saturating_sub(before);
    assert!(
        grew < 32 * MIB as u64,
        "peak RSS grew by {} MiB (from {} to {} MiB)",
        grew / MIB as u64,
        before / MIB as u64,
        after / MIB as u64
    );
    // Still serving, and the file's mode drew no warning.
    admin
        .status(with_token(StatusRequest {}, Some(ADMIN_TOKEN)))
        .await
        .expect("status after the attack");
    assert!(
        !serve.output().contains("readable by"),
        "{}",
        serve.output()
    );
}

/// A token file group and others may read is warned about; rewriting the
/// file (a rotated Secret) takes effect without a restart: the new token
/// works, the old one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_rotation_and_exposure_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serve, mut admin) =
        ServeProcess::with_tokens(dir.path(), &format!("read {READ_TOKEN}\n"), 0o644).await;
    let tokens = dir.path().join("tokens");
    let warned = serve.output();
    assert!(
        warned.contains("readable by group or others") && warned.contains("0644"),
        "{warned}"
    );

    const ROTATED: &str = "e2e-rotated-token-0123456789";
    let rotated = dir.path().join("tokens.new");
    std::fs::write(&rotated, format!("read {ROTATED}\n")).expect("write");
    std::fs::rename(&rotated, &tokens).expect("swap the file");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = admin
            .status(with_token(StatusRequest {}, Some(ROTATED)))
            .await;
        if now.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token never worked: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = admin
        .status(with_token(StatusRequest {}, Some(READ_TOKEN)))
        .await
        .expect_err("the old token is gone");
    assert_eq!(old.code(), tonic::Code::Unauthenticated, "{old:?}");
}

/// Reads until the peer closes (EOF or reset); false when nothing
/// happened for `limit`, far beyond the listener's deadlines.
async fn closed_by_server(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Peers that connect and say nothing, or stop halfway through the HTTP/2
/// preface, are disconnected; a caller over the per-peer connection limit
/// is refused; callers within the limits are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_admin_peers_are_disconnected() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifests, tokens) = manifests_and_tokens(dir.path(), &format!("{ADMIN_TOKEN}\n"));
    let mut config = config(
        &manifests,
        &format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
        &tokens,
    );
    let limits = &mut config.admin.limits.listener;
    limits.handshake = Duration::from_millis(500);
    limits.idle = Duration::from_secs(4);
    limits.per_peer = 3;
    let running = start(config).await.expect("control plane starts");
    let addr = running.admin_addr.expect("the admin API listens");

    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut partial = tokio::net::TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    let mut admin = client(&running).await;
    // A fourth connection from this address is one too many.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let limit = Duration::from_secs(30);
    assert!(closed_by_server(&mut extra, limit).await, "over the limit");
    assert!(closed_by_server(&mut silent, limit).await, "silent peer");
    assert!(
        closed_by_server(&mut partial, limit).await,
        "partial preface"
    );
    // The client answers the server's pings: it is not idle, and served.
    tokio::time::sleep(Duration::from_secs(5)).await;
    admin
        .list_revisions(with_token(
            ListRevisionsRequest::default(),
            Some(ADMIN_TOKEN),
        ))
        .await
        .expect("a well-behaved client is served");
    let metrics = running.metrics.encode();
    let dropped = |reason: &str| {
        metrics.contains(&format!(
            "setpoint_connections_dropped_total{{listener=\"admin\",reason=\"{reason}\"}}"
        ))
    };
    assert!(
        dropped("PerPeerLimit") && dropped("PrefaceTimeout"),
        "{metrics}"
    );
    assert!(
        !dropped("IdleTimeout"),
        "the pinged client was cut: {metrics}"
    );
}

#[tokio::test]
async fn plaintext_admin_api_off_loopback_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifests, tokens) = manifests_and_tokens(dir.path(), &format!("{ADMIN_TOKEN}\n"));
    let mut config = config(
        &manifests,
        &format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
        &tokens,
    );
    config.admin.listen = Some("0.0.0.0:0".parse().expect("addr"));
    let refused = start(config).await.err().expect("refused");
    assert!(
        format!("{refused:#}").contains("refusing to serve the admin API in plaintext"),
        "{refused:#}"
    );
}
