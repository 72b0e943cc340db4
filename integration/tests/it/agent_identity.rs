//! mTLS between agents and the control plane, with certificates made here:
//! an agent acks over TLS with its node's certificate; a certificate for
//! node-b saying hello as node-a is refused with PERMISSION_DENIED while
//! node-a's and node-b's own agents keep working; a client without a
//! certificate, or in plaintext, is refused at the handshake; rotated
//! files are used without a restart; plaintext off loopback is refused.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use setpoint_agent::client::{Agent, AgentOptions, AgentTls, check_transport};
use setpoint_agent::services::IpvsMode;
use setpoint_controlplane::serve::{Running, ServeConfig, start};
use setpoint_controlplane::tls::ServerTls;
use setpoint_proto::v1::agent_stream_client::AgentStreamClient;
use tokio_rustls::rustls;

use crate::e2e_support::{Progress, copy_examples, progress};

pub(crate) use setpoint_integration::pki::Pki;
use setpoint_integration::pki::{Ca, write_pair};

/// The control plane's TLS settings from `pki`'s server certificate.
pub(crate) fn server_tls(pki: &Pki) -> ServerTls {
    let (cert, key) = pki.server_files();
    ServerTls {
        cert,
        key,
        client_ca: pki.ca_file.clone(),
        reload_every: Duration::from_millis(100),
    }
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("db").display())
}

/// A CA, and `serve` on the examples requiring certificates from it.
struct Fixture {
    manifests: tempfile::TempDir,
    _data: tempfile::TempDir,
    pki: Pki,
    server: ServerTls,
    running: Running,
}

async fn serve_tls() -> Fixture {
    let (manifests, data) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    copy_examples(manifests.path());
    let pki = Pki::new();
    let server = server_tls(&pki);
    let running = start(ServeConfig {
        tls: Some(server.clone()),
        ..ServeConfig::local(manifests.path(), sqlite(data.path()))
    })
    .await
    .expect("control plane starts with TLS");
    Fixture {
        manifests,
        _data: data,
        pki,
        server,
        running,
    }
}

/// A dry-run agent saying hello as `node` with `tls`.
fn agent(running: &Running, node: &str, tls: AgentTls) -> (tokio::task::JoinHandle<()>, Progress) {
    let options = AgentOptions {
        dry_run: true,
        ipvs: IpvsMode::Simulated,
        drift_interval: Duration::from_secs(3600),
        tls: Some(tls),
        ..AgentOptions::new(
            node,
            format!("https://localhost:{}", running.agent_addr.port()),
        )
    };
    check_transport(&options).expect("an https URL with TLS files is accepted");
    let agent = Agent::new(options);
    let progress = agent.progress.clone();
    (tokio::spawn(agent.run()), progress)
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn metric(running: &Running, name: &str) -> f64 {
    running
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ack_over_mtls_and_a_certificate_for_another_node_is_refused() {
    let Fixture {
        manifests,
        _data,
        pki,
        server: _,
        running,
    } = serve_tls().await;
    wait_for("a first revision", || *running.head.borrow() > 0).await;

    let (_a, a) = agent(&running, "node-a", pki.node("node-a", "node-a"));
    let (_b, b) = agent(&running, "node-b", pki.node("node-b", "node-b"));
    // node-b's certificate, saying hello as node-a.
    let (_imp, impostor) = agent(&running, "node-a", pki.node("node-b-again", "node-b"));
    let head = *running.head.borrow();
    wait_for("node-a and node-b to ack over mTLS", || {
        progress(&a).revision == head && progress(&b).revision == head
    })
    .await;
    wait_for("the impostor to be refused", || {
        progress(&impostor).last_error.is_some()
    })
    .await;
    let refused = progress(&impostor);
    let why = refused.last_error.unwrap_or_default();
    assert!(
        why.contains("does not have permission") && why.contains("does not name node 'node-a'"),
        "refused with PERMISSION_DENIED and a clear message: {why}"
    );
    assert_eq!(refused.revision, 0, "the impostor never got a state");
    assert!(metric(&running, "setpoint_identity_refusals_total") >= 1.0);

    // The genuine agents are unaffected: a new revision reaches both.
    let slices = manifests.path().join("endpointslices-core.yaml");
    crate::e2e_support::edit_manifest(&slices, "10.244.1.2", "10.244.1.98");
    wait_for("a second revision", || *running.head.borrow() > head).await;
    let second = *running.head.borrow();
    wait_for("node-a and node-b to ack the second revision", || {
        progress(&a).revision == second && progress(&b).revision == second
    })
    .await;
    assert!(progress(&a).connected && progress(&b).connected);
    let status = running
        .store
        .agent_statuses()
        .await
        .expect("agent statuses");
    assert!(
        status.iter().any(|s| s.node == "node-a"),
        "node-a reported its ack: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_or_in_plaintext_is_refused_at_the_handshake() {
    let Fixture {
        manifests: _manifests,
        _data,
        pki,
        server: _,
        running,
    } = serve_tls().await;
    let port = running.agent_addr.port();

    // TLS with the right CA but no client certificate.
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca_file).expect("read CA"));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca))
        .expect("tls config");
    let outcome = match endpoint.connect().await {
        Ok(channel) => AgentStreamClient::new(channel)
            .stream(tokio_stream::iter(
                Vec::<setpoint_proto::v1::AgentMessage>::new(),
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(
        outcome.is_err(),
        "a client without a certificate is refused"
    );

    // Plaintext HTTP/2 to the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await;
    let outcome = match plain {
        Ok(channel) => AgentStreamClient::new(channel)
            .stream(tokio_stream::iter(
                Vec::<setpoint_proto::v1::AgentMessage>::new(),
            ))
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(outcome.is_err(), "plaintext is refused");
    wait_for("both handshakes counted as refused", || {
        metric(&running, "setpoint_tls_handshake_failures_total") >= 2.0
    })
    .await;
}

/// The certificate the server presents to a fresh connection.
async fn served_certificate(pki: &Pki, client: &AgentTls, port: u16) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in setpoint_controlplane::tls::read_certs(&pki.ca_file).expect("CA") {
        roots.add(ca).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            setpoint_controlplane::tls::read_certs(&client.cert).expect("cert"),
            setpoint_controlplane::tls::read_key(&client.key).expect("key"),
        )
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("the server presents a certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_without_a_restart() {
    let Fixture {
        manifests: _manifests,
        _data,
        pki,
        server,
        running,
    } = serve_tls().await;
    let port = running.agent_addr.port();
    let probe = pki.node("probe", "node-c");

    // The server: new files are served to new connections.
    let before = served_certificate(&pki, &probe, port).await;
    assert_eq!(
        before,
        setpoint_controlplane::tls::read_certs(&server.cert).expect("cert")[0].to_vec()
    );
    let (cert, key, rotated) = pki
        .ca
        .issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    write_pair(pki.dir.path(), "server", &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = served_certificate(&pki, &probe, port).await;
        if now == rotated {
            break;
        }
        assert_eq!(now, before, "only the old or the new certificate is served");
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&running, "setpoint_tls_reloads_total") >= 1.0);

    // The agent: a certificate from a CA the server does not trust is
    // refused; once its files are replaced by a good one it connects.
    wait_for("a first revision", || *running.head.borrow() > 0).await;
    let stranger = Ca::new("another CA");
    let (cert, key, _) = stranger.issue(&["node-c"], ExtendedKeyUsagePurpose::ClientAuth);
    let (cert_file, key_file) = write_pair(pki.dir.path(), "agent-c", &cert, &key);
    let tls = AgentTls {
        cert: cert_file,
        key: key_file,
        ca: pki.ca_file.clone(),
        server_name: None,
    };
    let (_c, c) = agent(&running, "node-c", tls);
    wait_for("the untrusted certificate to be refused", || {
        progress(&c).last_error.is_some()
    })
    .await;
    assert_eq!(progress(&c).revision, 0);
    let (cert, key, _) = pki
        .ca
        .issue(&["node-c"], ExtendedKeyUsagePurpose::ClientAuth);
    write_pair(pki.dir.path(), "agent-c", &cert, &key);
    let head = *running.head.borrow();
    wait_for("the agent to ack with its rotated certificate", || {
        progress(&c).revision == head
    })
    .await;
}

#[tokio::test]
async fn plaintext_off_loopback_is_refused() {
    let (manifests, data) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let refused = start(ServeConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        ..ServeConfig::local(manifests.path(), sqlite(data.path()))
    })
    .await;
    let why = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        why.contains("refusing to serve agents in plaintext on 0.0.0.0:0"),
        "a plaintext listener off loopback is refused: {why}"
    );
    assert!(
        !data.path().join("db").exists(),
        "refused before anything was opened"
    );

    let options = |url: &str, tls: Option<AgentTls>| AgentOptions {
        dry_run: true,
        ipvs: IpvsMode::Simulated,
        tls,
        ..AgentOptions::new("node-a", url)
    };
    let files = AgentTls {
        cert: "c".into(),
        key: "k".into(),
        ca: "ca".into(),
        server_name: None,
    };
    for url in [
        "http://127.0.0.1:7443",
        "http://localhost:7443",
        "http://[::1]:7443",
    ] {
        assert!(check_transport(&options(url, None)).is_ok(), "{url}");
    }
    for url in [
        "http://10.0.0.1:7443",
        "http://setpoint.kube-system.svc:7443",
        "https://setpoint:7443",
    ] {
        let why = check_transport(&options(url, None))
            .expect_err(url)
            .to_string();
        assert!(why.contains("without TLS"), "{url}: {why}");
    }
    let why = check_transport(&options("http://setpoint:7443", Some(files.clone())))
        .expect_err("TLS needs https")
        .to_string();
    assert!(why.contains("must be https://"), "{why}");
    assert!(check_transport(&options("https://setpoint:7443", Some(files))).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_or_case_folded_certificate_names_no_node() {
    let fixture = serve_tls().await;
    let (pki, running) = (&fixture.pki, &fixture.running);
    wait_for("a first revision", || *running.head.borrow() > 0).await;
    // A wildcard certificate would name every node under it; a name that
    // differs in case is another name.
    let (_w, wildcard) = agent(
        running,
        "node-a.nodes.test",
        pki.node("wildcard", "*.nodes.test"),
    );
    let (_u, upper) = agent(running, "node-a", pki.node("upper", "NODE-A"));
    let (_b, b) = agent(running, "node-b", pki.node("node-b", "node-b"));
    wait_for(
        "the wildcard and the upper-case certificate refused",
        || progress(&wildcard).last_error.is_some() && progress(&upper).last_error.is_some(),
    )
    .await;
    for (node, p) in [("node-a.nodes.test", &wildcard), ("node-a", &upper)] {
        let refused = progress(p);
        let why = refused.last_error.unwrap_or_default();
        assert!(
            why.contains(&format!("does not name node '{node}'")),
            "{node}: refused with PERMISSION_DENIED: {why}"
        );
        assert_eq!(refused.revision, 0, "{node} never got a state");
    }
    assert!(metric(running, "setpoint_identity_refusals_total") >= 2.0);
    // The exact name is served.
    let head = *running.head.borrow();
    wait_for("node-b to ack", || progress(&b).revision == head).await;
}
