use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use setpoint_agent::client::{Agent, AgentOptions};
use setpoint_agent::services::IpvsMode;
use setpoint_controlplane::admin::{AdminConfig, AdminLimits, AdminTls};
use setpoint_controlplane::serve::{Running, ServeConfig, start};

const READ_TOKEN: &str = "read-token-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

struct Fixture {
    dir: tempfile::TempDir,
    running: Running,
    server: String,
}

impl Fixture {
    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn token(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

async fn control_plane(with_tokens: bool) -> Fixture {
    control_plane_with(with_tokens, None).await
}

/// A control plane whose admin API is TLS with a certificate for
/// `localhost` and 127.0.0.1, issued by a CA of its own.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    tls: AdminTls,
    /// A certificate and key for the same names from the other CA (PEM).
    rotated: (String, String),
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().expect("key");
            CertifiedIssuer::self_signed(params, key).expect("CA")
        };
        let (issuer, other) = (ca("admin CA"), ca("another CA"));
        let leaf = |issuer: &CertifiedIssuer<'static, KeyPair>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("params")
                .signed_by(&key, issuer)
                .expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let ((cert, key), rotated) = (leaf(&issuer), leaf(&other));
        let path = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Pki {
            ca: path("ca.pem", issuer.pem()),
            other_ca: path("other-ca.pem", other.pem()),
            tls: AdminTls {
                cert: path("admin.crt", cert),
                key: path("admin.key", key),
            },
            rotated,
        }
    }
}

async fn control_plane_with(with_tokens: bool, tls: Option<AdminTls>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), manifests.join(entry.file_name())).expect("copy");
    }
    std::fs::write(
        dir.path().join("tokens"),
        format!("# roles\nread {READ_TOKEN}\nadmin {ADMIN_TOKEN}\n"),
    )
    .expect("tokens");
    std::fs::write(dir.path().join("read"), format!("{READ_TOKEN}\n")).expect("token");
    std::fs::write(dir.path().join("admin"), format!("{ADMIN_TOKEN}\n")).expect("token");
    std::fs::write(dir.path().join("wrong"), "not-a-token-of-this-server\n").expect("token");
    let localhost = "127.0.0.1:0".parse().expect("addr");
    let running = start(ServeConfig {
        manifests: manifests.clone(),
        manifest_limits: Default::default(),
        kube: None,
        database: format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
        listen: localhost,
        metrics_listen: localhost,
        batch: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        compute: Default::default(),
        rollout: None,
        admin: AdminConfig {
            listen: Some(localhost),
            token_file: with_tokens.then(|| dir.path().join("tokens")),
            tls: tls.clone(),
            limits: AdminLimits {
                reload_every: Duration::from_millis(100),
                ..AdminLimits::default()
            },
        },
        tls: None,
        agents: Default::default(),
        election: Default::default(),
    })
    .await
    .expect("control plane starts");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = format!("{scheme}://{}", running.admin_addr.expect("admin listens"));
    Fixture {
        dir,
        running,
        server,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts stdout holds every one of `wants`.
    fn says(&self, wants: &[&str]) {
        for want in wants {
            assert!(self.stdout.contains(want), "{want:?} in {}", self.stdout);
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", self.stdout))
    }
}

async fn ctl(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_setpointctl"))
        .args(args)
        .env_remove("SETPOINT_SERVER")
        .env_remove("SETPOINT_TOKEN_FILE")
        .output()
        .await
        .expect("setpointctl runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `setpointctl --server S --token-file T <args>`; asserts the exit code.
async fn ctl_as(f: &Fixture, token: Option<&str>, args: &[&str], code: i32) -> Out {
    let token = token.map(|t| f.token(t));
    let mut all = vec!["--server", f.server.as_str()];
    if let Some(t) = &token {
        all.extend(["--token-file", t.as_str()]);
    }
    all.extend(args);
    let out = ctl(&all).await;
    assert_eq!(
        out.code, code,
        "setpointctl {all:?}: stdout {} stderr {}",
        out.stdout, out.stderr
    );
    out
}

async fn wait_head(running: &Running, past: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let head = *running.head.borrow();
        if head > past {
            return head;
        }
        assert!(Instant::now() < deadline, "no revision after {past}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `status -o json` until every listed node is at the head.
async fn wait_all_at_head(f: &Fixture, nodes: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ctl_as(f, Some("read"), &["-o", "json", "status"], 0)
            .await
            .json();
        let fleet = &status["fleet"];
        if fleet["nodes"].as_u64() == Some(nodes as u64)
            && fleet["at_head"].as_u64() == Some(nodes as u64)
        {
            return status;
        }
        assert!(Instant::now() < deadline, "not converged: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_dry_run_agent(running: &Running, node: &str) {
    let agent = Agent::new(AgentOptions {
        dry_run: true,
        ipvs: IpvsMode::Simulated,
        ..AgentOptions::new(node, format!("http://{}", running.agent_addr))
    });
    tokio::spawn(agent.run());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_diff_rollback_and_resume_through_the_binary() {
    let f = control_plane(true).await;
    let first = wait_head(&f.running, 0).await;
    let nodes = ["node-a", "node-b", "node-c"];
    for node in nodes {
        spawn_dry_run_agent(&f.running, node);
    }
    wait_all_at_head(&f, nodes.len()).await;

    // Revisions as JSON: a list of objects with revision, created_at, cause.
    let revisions = ctl_as(&f, Some("read"), &["-o", "json", "revisions"], 0)
        .await
        .json();
    let list = revisions.as_array().expect("a list");
    assert_eq!(list[0]["revision"].as_u64(), Some(first), "{revisions}");
    assert!(list[0]["created_at"].as_i64().is_some_and(|t| t > 0));
    assert!(list[0]["cause"].is_string());

    // An endpoint moves: revision 2.
    let slices = f.manifests().join("endpointslices-core.yaml");
    let text = std::fs::read_to_string(&slices).expect("read");
    std::fs::write(&slices, text.replacen("10.244.1.2", "10.244.1.99", 1)).expect("edit");
    let second = wait_head(&f.running, first).await;
    wait_all_at_head(&f, nodes.len()).await;

    let table = ctl_as(&f, Some("read"), &["revisions"], 0).await;
    assert!(table.stdout.starts_with("REVISION"), "{}", table.stdout);
    assert!(
        table.stdout.contains("EndpointSlice"),
        "the cause names the object: {}",
        table.stdout
    );

    let (a, b) = (first.to_string(), second.to_string());
    let diff = ctl_as(
        &f,
        Some("read"),
        &["-o", "json", "diff", "--node", "node-a", &a, &b],
        0,
    )
    .await
    .json();
    assert!(diff["count"].as_u64().is_some_and(|c| c > 0), "{diff}");
    assert!(
        diff["changes"].to_string().contains("10.244.1.99"),
        "{diff}"
    );
    let human = ctl_as(&f, Some("read"), &["diff", "--node", "node-a", &a, &b], 0).await;
    assert!(human.stdout.contains("change(s)"), "{}", human.stdout);

    let shown = ctl_as(
        &f,
        Some("read"),
        &[
            "show",
            "--node",
            "node-a",
            "--revision",
            &a,
            "--format",
            "ipset",
        ],
        0,
    )
    .await;
    assert!(shown.stdout.contains("create SP-"), "{}", shown.stdout);
    assert!(!shown.stdout.contains("10.244.1.99"), "{}", shown.stdout);
    let first_state = ctl_as(
        &f,
        Some("read"),
        &["-o", "json", "show", "--node", "node-a", "--revision", &a],
        0,
    )
    .await
    .json();

    // Refusals: no token, a wrong one, a read-only one.
    let rollback = ["rollback", "--to", a.as_str(), "--reason", "bad endpoint"];
    let none = ctl_as(&f, None, &rollback, 3).await;
    assert!(none.stderr.contains("unauthenticated"), "{}", none.stderr);
    ctl_as(&f, Some("wrong"), &rollback, 3).await;
    let read = ctl_as(&f, Some("read"), &rollback, 3).await;
    assert!(read.stderr.contains("permission denied"), "{}", read.stderr);
    assert_eq!(*f.running.head.borrow(), second, "nothing was written");

    // Failures: an unknown revision, a node that does not exist.
    ctl_as(
        &f,
        Some("admin"),
        &["rollback", "--to", "999", "--reason", "x"],
        1,
    )
    .await;
    ctl_as(&f, Some("read"), &["show", "--node", "nope"], 1).await;

    // The rollback: node-a gets revision 1's state back, pinned.
    let done = ctl_as(
        &f,
        Some("admin"),
        &[
            "-o",
            "json",
            "rollback",
            "--to",
            &a,
            "--nodes",
            "node-a",
            "--reason",
            "bad endpoint",
        ],
        0,
    )
    .await
    .json();
    let third = done["revision"].as_u64().expect("revision");
    assert!(third > second);
    let status = wait_all_at_head(&f, nodes.len()).await;
    let node_a = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == "node-a"))
        .expect("node-a listed")
        .clone();
    assert_eq!(node_a["digest"], first_state["digest"], "{status}");
    assert_eq!(node_a["applied_revision"].as_u64(), Some(third));
    assert_eq!(node_a["pinned_at"].as_u64(), Some(first));
    let listed = ctl_as(
        &f,
        Some("read"),
        &["-o", "json", "revisions", "--limit", "1"],
        0,
    )
    .await
    .json();
    assert_eq!(listed[0]["action"], "rollback", "{listed}");
    assert_eq!(listed[0]["cause"], "bad endpoint", "{listed}");
    let table = ctl_as(&f, Some("read"), &["status"], 0).await;
    assert!(table.stdout.contains("1 pinned"), "{}", table.stdout);

    // Pause holds node-b; resume lets both go.
    ctl_as(
        &f,
        Some("admin"),
        &["pause", "--nodes", "node-b", "--reason", "investigating"],
        0,
    )
    .await;
    let status = wait_all_at_head(&f, nodes.len()).await;
    assert_eq!(status["fleet"]["pinned"].as_u64(), Some(2), "{status}");
    ctl_as(&f, Some("admin"), &["resume", "--all"], 0).await;
    let status = wait_all_at_head(&f, nodes.len()).await;
    assert_eq!(status["fleet"]["pinned"].as_u64(), Some(0), "{status}");
    let node_a = status["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == "node-a"))
        .expect("node-a listed")
        .clone();
    assert_ne!(node_a["digest"], first_state["digest"], "{status}");
    ctl_as(&f, Some("admin"), &["resume", "--all"], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_unreachable_and_disabled_have_their_exit_codes() {
    let help = ctl(&["--help"]).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit status"), "{}", help.stdout);
    assert_eq!(ctl(&[]).await.code, 2);
    assert_eq!(ctl(&["rollback", "--to", "1"]).await.code, 2, "no reason");
    assert_eq!(ctl(&["frobnicate"]).await.code, 2);
    let missing = ctl(&["--token-file", "/nonexistent/token", "status"]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    // Global flags after the verb are read as before it.
    let missing = ctl(&["status", "-o", "json", "--token-file", "/nonexistent/token"]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/nonexistent/token"),
        "{}",
        missing.stderr
    );
    let no_ca = ctl(&["status", "--server-name", "cp"]).await;
    assert_eq!(no_ca.code, 2, "{}", no_ca.stderr);
    assert!(no_ca.stderr.contains("--ca"), "{}", no_ca.stderr);

    // Nobody listens on this port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let unreachable = ctl(&["--server", &format!("http://{addr}"), "status"]).await;
    assert_eq!(unreachable.code, 4, "{}", unreachable.stderr);

    // Without a token file the admin API refuses everything, and says why.
    let f = control_plane(false).await;
    let refused = ctl_as(&f, Some("admin"), &["status"], 3).await;
    assert!(
        refused.stderr.contains("--admin-token-file"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_through_the_binary() {
    let f = control_plane(true).await;
    let head = wait_head(&f.running, 0).await;
    // A cluster IP with endpoints, in a table: the walk, the virtual server,
    // the verdict.
    let out = ctl_as(
        &f,
        Some("read"),
        &[
            "explain",
            "--node",
            "node-a",
            "--proto",
            "tcp",
            "--src",
            "10.244.1.20:40000",
            "--dst",
            "10.96.1.20:80",
        ],
        0,
    )
    .await;
    out.says(&[
        &format!("node state at revision {head}"),
        "packet: tcp 10.244.1.20:40000 -> 10.96.1.20:80 from a pod",
        "SP-CLUSTER-IP 10.96.1.20,tcp:80",
        "virtual server: 10.96.1.20:80/tcp scheduler rr",
        "verdict: dnat",
    ]);
    // JSON: a Service without endpoints is rejected, at a given revision.
    let out = ctl_as(
        &f,
        Some("read"),
        &[
            "-o",
            "json",
            "explain",
            "--node",
            "node-a",
            "--revision",
            &head.to_string(),
            "--src",
            "10.244.1.20",
            "--dst",
            "10.96.10.70:80",
        ],
        0,
    )
    .await
    .json();
    assert_eq!(out["revision"], head);
    assert_eq!(out["explanation"]["verdict"], "reject");
    assert_eq!(out["explanation"]["packet"]["src_port"], Value::Null);
    assert!(
        out["explanation"]["sets"]
            .as_array()
            .expect("sets")
            .iter()
            .any(|s| s["set"] == "SP-NO-ENDPOINTS" && s["entry"] == "10.96.10.70,tcp:80"),
        "{out}"
    );
    // Bad input: usage (2) before the call; the server's refusal (1) with
    // its reason; no token (3).
    for (token, node, proto, src, dst, code, says) in [
        (
            Some("read"),
            "node-a",
            "tcp",
            "x",
            "10.96.1.20:80",
            2,
            "expected IP",
        ),
        (
            Some("read"),
            "node-a",
            "tcp",
            "10.0.0.1",
            "10.96.1.20",
            2,
            "needs a port",
        ),
        (
            Some("read"),
            "node-a",
            "icmp",
            "10.0.0.1",
            "10.96.1.20:80",
            1,
            "unknown protocol",
        ),
        (
            Some("read"),
            "no-such-node",
            "tcp",
            "10.0.0.1",
            "10.96.1.20:80",
            1,
            "no state",
        ),
        (
            None,
            "node-a",
            "tcp",
            "10.0.0.1",
            "10.96.1.20:80",
            3,
            "refused",
        ),
    ] {
        let args = [
            "explain", "--node", node, "--proto", proto, "--src", src, "--dst", dst,
        ];
        let out = ctl_as(&f, token, &args, code).await;
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

/// A tenant's Service that lists `default/kubernetes`'s ClusterIP as an
/// external IP.
const HIJACK: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: hijack, namespace: aaa}
spec:
  clusterIP: 10.96.5.5
  externalIPs: [10.96.0.1]
  ports: [{name: https, port: 443, protocol: TCP}]
"#;

/// `setpointctl [-o json] explain` on node-a from a pod to `dst`, with the
/// read token.
async fn explain_to(f: &Fixture, json: bool, revision: Option<u64>, dst: &str) -> Out {
    let revision = revision.map(|r| r.to_string());
    let mut args = Vec::new();
    if json {
        args.extend(["-o", "json"]);
    }
    args.extend([
        "explain",
        "--node",
        "node-a",
        "--src",
        "10.244.1.20",
        "--dst",
        dst,
    ]);
    if let Some(r) = &revision {
        args.extend(["--revision", r.as_str()]);
    }
    ctl_as(f, Some("read"), &args, 0).await
}

/// `explain` says why an address is not served: the refusal, naming the
/// Service, the address and the reason, beside the verdict (text and
/// JSON); an unrelated address lists none, and a revision the leader's
/// problems do not describe says so instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_refusals_of_the_destination_address() {
    let f = control_plane(true).await;
    let before = wait_head(&f.running, 0).await;
    std::fs::write(f.manifests().join("hijack.yaml"), HIJACK).expect("write");
    let head = wait_head(&f.running, before).await;
    let out = explain_to(&f, false, None, "10.96.0.1:443").await;
    out.says(&[
        &format!("node state at revision {head}"),
        // The ClusterIP still goes to the API server.
        "verdict: dnat",
        "compute problems about 10.96.0.1:\n",
        "Service aaa/hijack: external IP 10.96.0.1 is not served",
        "(reason ClusterIp)",
    ]);
    let out = explain_to(&f, true, None, "10.96.0.1:443").await.json();
    assert_eq!(out["revision"], head);
    assert_eq!(out["explanation"]["verdict"], "dnat");
    assert_eq!(out["problems_unknown"], Value::Null, "{out}");
    let problems = out["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{out}");
    assert_eq!(problems[0]["service"], "aaa/hijack");
    assert_eq!(problems[0]["addresses"], serde_json::json!(["10.96.0.1"]));
    assert_eq!(problems[0]["reason"], "ClusterIp");
    assert_eq!(out["problems_omitted"], 0);

    // The hijacker's own ClusterIP, and another Service's: nothing refused.
    for dst in ["10.96.5.5:443", "10.96.1.20:80"] {
        let out = explain_to(&f, true, None, dst).await.json();
        assert_eq!(out["problems"], serde_json::json!([]), "{dst}: {out}");
        assert_eq!(out["problems_unknown"], Value::Null, "{dst}: {out}");
        let out = explain_to(&f, false, None, dst).await;
        let ip = dst.split(':').next().expect("ip");
        let none = format!("compute problems about {ip}: none");
        assert!(out.stdout.contains(&none), "{dst}: {}", out.stdout);
    }

    // The revision before the hijack: compute's problems then are not kept.
    let out = explain_to(&f, true, Some(before), "10.96.0.1:443")
        .await
        .json();
    assert_eq!(out["problems"], serde_json::json!([]), "{out}");
    let unknown = out["problems_unknown"].as_str().expect("a reason");
    assert!(unknown.contains(&format!("revision {head}")), "{unknown}");
    let out = explain_to(&f, false, Some(before), "10.96.0.1:443").await;
    assert!(
        out.stdout
            .contains("compute problems about 10.96.0.1: unknown ("),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_admin_api_with_https_and_ca() {
    let certs = tempfile::tempdir().expect("dir");
    let pki = Pki::new(certs.path());
    let f = control_plane_with(true, Some(pki.tls.clone())).await;
    wait_head(&f.running, 0).await;
    let ca = pki.ca.display().to_string();
    let status = ctl_as(&f, Some("read"), &["--ca", &ca, "-o", "json", "status"], 0).await;
    assert!(
        status.json()["head"].as_u64().is_some_and(|h| h > 0),
        "{}",
        status.stdout
    );
    // Through a port-forward the host is not the certificate's: name it.
    for (name, code) in [("localhost", 0), ("elsewhere", 4)] {
        let args = ["--ca", &ca, "--server-name", name, "status"];
        let out = ctl_as(&f, Some("read"), &args, code).await;
        assert!(
            code == 0 || out.stderr.contains("cannot reach"),
            "{}",
            out.stderr
        );
    }

    // A CA that did not issue the certificate: no connection, no token sent.
    let other = pki.other_ca.display().to_string();
    let untrusted = ctl_as(&f, Some("read"), &["--ca", &other, "status"], 4).await;
    assert!(
        untrusted.stderr.contains("cannot reach"),
        "{}",
        untrusted.stderr
    );
    // https:// without --ca, --ca with http://: usage errors.
    let no_ca = ctl_as(&f, Some("read"), &["status"], 2).await;
    assert!(no_ca.stderr.contains("--ca"), "{}", no_ca.stderr);
    let plain = f.server.replace("https://", "http://");
    let token = f.token("read");
    let out = ctl(&[
        "--server",
        &plain,
        "--ca",
        &ca,
        "--token-file",
        &token,
        "status",
    ])
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    // Plaintext to the TLS port gets nothing.
    let out = ctl(&["--server", &plain, "--token-file", &token, "status"]).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // Rotated files (swapped as kubelet swaps a Secret) serve new
    // connections without a restart.
    let (cert, key) = &pki.rotated;
    for (path, text) in [(&pki.tls.key, key), (&pki.tls.cert, cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("swap");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctl(&[
        "--server",
        &f.server,
        "--ca",
        &other,
        "--token-file",
        &token,
        "status",
    ])
    .await
    .code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctl_as(&f, Some("read"), &["--ca", &ca, "status"], 4).await;
}

/// `t` as RFC 3339 with milliseconds, as the EndpointSlice controller
/// writes its trigger annotation.
fn rfc3339(t: std::time::SystemTime) -> String {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// A Service and its EndpointSlice whose trigger annotation says the
/// change happened at `trigger`.
fn watched_service(trigger: std::time::SystemTime) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: watched, namespace: default}}
spec: {{clusterIP: 10.96.7.7, ports: [{{port: 80, protocol: TCP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: watched-abc
  namespace: default
  labels: {{kubernetes.io/service-name: watched}}
  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{}\"}}
addressType: IPv4
ports: [{{port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [10.244.1.77], conditions: {{ready: true}}}}]
",
        rfc3339(trigger)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_revision_timed_from_its_trigger() {
    assert_eq!(
        rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(1_796_663_997_250)),
        "2026-12-07T17:19:57.250Z"
    );
    let f = control_plane(true).await;
    let first = wait_head(&f.running, 0).await;
    let nodes = ["node-a", "node-b", "node-c"];
    for node in nodes {
        spawn_dry_run_agent(&f.running, node);
    }
    wait_all_at_head(&f, nodes.len()).await;
    // Trigger times from before the leader started are ignored (as
    // kube-proxy ignores those from before it started).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let trigger = std::time::SystemTime::now() - Duration::from_secs(1);
    std::fs::write(f.manifests().join("watched.yaml"), watched_service(trigger)).expect("write");
    let second = wait_head(&f.running, first).await;

    // Not a terminal: a JSON object per change, the last one complete.
    let watched = ctl_as(
        &f,
        Some("read"),
        &["status", "--watch", "--interval-ms", "100", "-o", "json"],
        0,
    )
    .await;
    let last: Value = watched
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("JSON lines: {}", watched.stdout));
    assert_eq!(last["revision"].as_u64(), Some(second), "{last}");
    assert_eq!(last["complete"], true, "{last}");
    assert_eq!(last["started_by"], "trigger", "{last}");
    assert_eq!(last["total"].as_u64(), Some(3), "{last}");
    assert_eq!(last["acked"].as_u64(), Some(3), "{last}");
    let p100 = last["p100_seconds"].as_f64().expect("100% reached");
    let p50 = last["p50_seconds"].as_f64().expect("50% reached");
    // Measured from the trigger, a second before the file was written.
    assert!((1.0..30.0).contains(&p100) && p50 <= p100, "{last}");
    assert_eq!(last["slowest"].as_array().map(Vec::len), Some(3), "{last}");

    // Plain lines: the summary names the slowest nodes.
    let plain = ctl_as(&f, Some("read"), &["status", "--watch"], 0).await;
    plain.says(&[
        &format!("revision {second}: all 3 node(s) acked in"),
        "timed from the trigger annotation",
        "slowest: node-",
    ]);
    // `status` shows the newest revisions' convergence.
    let table = ctl_as(&f, Some("read"), &["status"], 0).await;
    table.says(&[
        "REVISION", "FROM", "ACKED", "50%", "99%", "100%", "trigger", "3/3",
    ]);
    let status = ctl_as(&f, Some("read"), &["-o", "json", "status"], 0).await;
    assert_eq!(
        status.json()["progress"][0]["revision"].as_u64(),
        Some(second),
        "{}",
        status.stdout
    );
    // The control plane's metrics say the same.
    let metrics = f.running.metrics.encode();
    for line in [
        "setpoint_revision_convergence_seconds_count{share=\"1\"}",
        "setpoint_network_programming_duration_seconds_count",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// Polls `cluster-policies -o json` until `done` holds of it.
async fn policies_until(f: &Fixture, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl_as(f, Some("read"), &["-o", "json", "cluster-policies"], 0)
            .await
            .json();
        if done(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn policy<'a>(out: &'a Value, name: &str) -> &'a Value {
    out["policies"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{name} listed: {out}"))
}

/// (enforced, nodes, pending node names) of one policy.
fn realized(out: &Value, name: &str) -> (u64, u64, Vec<String>) {
    let p = policy(out, name);
    let pending = p["pending"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|n| {
                    format!(
                        "{} ({})",
                        n["node"].as_str().unwrap_or("?"),
                        n["reason"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        p["enforced"].as_u64().unwrap_or(u64::MAX),
        p["nodes"].as_u64().unwrap_or(u64::MAX),
        pending,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policies_count_the_nodes_enforcing_them_as_agents_ack() {
    const DENY: &str = "deny-cloud-metadata";
    const GUARD: &str = "shop-ingress-guardrail";
    let f = control_plane(true).await;
    let first = wait_head(&f.running, 0).await;

    // No agent yet: both example policies are in force from the first
    // revision and enforced nowhere.
    let out = policies_until(&f, "the leader computed", |o| {
        o["policies"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    assert_eq!(out["nodes"].as_u64(), Some(3), "{out}");
    for name in [DENY, GUARD] {
        assert_eq!(policy(&out, name)["since"].as_u64(), Some(first), "{out}");
        let no_report = ["node-a", "node-b", "node-c"].map(|n| format!("{n} (no report)"));
        assert_eq!(realized(&out, name), (0, 3, no_report.to_vec()), "{out}");
    }
    assert_eq!(policy(&out, DENY)["tier"], "Admin");
    assert_eq!(policy(&out, GUARD)["priority"].as_u64(), Some(100));

    // One agent acks: one node of three.
    spawn_dry_run_agent(&f.running, "node-a");
    let out = policies_until(&f, "node-a enforces", |o| realized(o, DENY).0 == 1).await;
    assert_eq!(
        realized(&out, DENY),
        (
            1,
            3,
            vec!["node-b (no report)".into(), "node-c (no report)".into()]
        ),
        "{out}"
    );
    spawn_dry_run_agent(&f.running, "node-b");
    spawn_dry_run_agent(&f.running, "node-c");
    let out = policies_until(&f, "all enforce", |o| {
        realized(o, DENY).0 == 3 && realized(o, GUARD).0 == 3
    })
    .await;
    assert_eq!(policy(&out, DENY)["complete"], true, "{out}");
    let table = ctl_as(&f, Some("read"), &["cluster-policies"], 0).await;
    table.says(&[
        "POLICY",
        "SINCE",
        "ENFORCED",
        DENY,
        "Admin",
        GUARD,
        "Baseline",
        "3/3",
        "2 ClusterNetworkPolicy(ies), 2 enforced on all 3 node(s)",
    ]);

    // node-b is paused (pinned at the head), then one policy changes: its
    // new spec is in force from the new revision, which node-b does not
    // get; the other policy's spec is older than the pin and still holds.
    let paused = ctl_as(
        &f,
        Some("admin"),
        &[
            "-o",
            "json",
            "pause",
            "--nodes",
            "node-b",
            "--reason",
            "investigating",
        ],
        0,
    )
    .await
    .json()["revision"]
        .as_u64()
        .expect("the pause's revision");
    wait_all_at_head(&f, 3).await;
    let path = f.manifests().join("clusternetworkpolicies.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let edited = text.replacen(
        "- 169.254.169.254/32",
        "- 169.254.169.254/32\n            - 100.100.100.200/32",
        1,
    );
    assert_ne!(edited, text, "the example policy has the metadata CIDR");
    std::fs::write(&path, edited).expect("edit");
    let changed = wait_head(&f.running, paused).await;
    let out = policies_until(&f, "node-a and node-c enforce the new spec", |o| {
        policy(o, DENY)["since"].as_u64() >= Some(changed) && realized(o, DENY).0 == 2
    })
    .await;
    assert_eq!(
        realized(&out, DENY),
        (2, 3, vec![format!("node-b (pinned at {first})")]),
        "{out}"
    );
    assert_eq!(policy(&out, GUARD)["since"].as_u64(), Some(first), "{out}");
    assert_eq!(realized(&out, GUARD), (3, 3, vec![]), "{out}");
    let one = ctl_as(
        &f,
        Some("read"),
        &["-o", "json", "cluster-policies", "--name", DENY],
        0,
    )
    .await
    .json();
    assert_eq!(one["policies"].as_array().map(Vec::len), Some(1), "{one}");
    ctl_as(&f, Some("read"), &["cluster-policies", "--name", "nope"], 1).await;
    let table = ctl_as(&f, Some("read"), &["cnp"], 0).await;
    table.says(&["2/3", &format!("node-b (pinned at {first})")]);

    // Resumed, node-b gets the head's state and acks it.
    ctl_as(&f, Some("admin"), &["resume", "--all"], 0).await;
    policies_until(&f, "node-b enforces once resumed", |o| {
        realized(o, DENY).0 == 3
    })
    .await;
}
