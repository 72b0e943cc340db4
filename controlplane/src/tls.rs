//! The agent listener's connections, and mTLS on them.
//!
//! ```text
//!  TCP accept ─▶ peer_limits (per peer, total, pending handshakes, handshake
//!               and preface deadline, idle) ─▶ TLS handshake (the current
//!               ServerConfig: our cert, client certs must chain to
//!               --client-ca) ─▶ AgentConnection (closed after 2 × the hello
//!               timeout without an agent session) ─▶ tonic (AgentPeer in
//!               the request) ─▶ stream: hello's node must be exactly a SAN
//!               DNS name of the client cert, else PERMISSION_DENIED
//!  files ──poll──▶ content changed ─▶ new ServerConfig for new connections
//! ```
//!
//! An agent's certificate names its node as a SAN DNS name (`node-a`), as
//! cert-manager's `dnsNames` writes it; the subject CN is not read, and a
//! wildcard or a name differing in case names no node. The files are read
//! again whenever their bytes change (a Secret update swaps a symlink),
//! and a set that does not load keeps the old config.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use futures::task::AtomicWaker;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;
use crate::peer_limits::Guarded;
use crate::reload::Reloading;
use crate::stream::AgentLimits;

/// The agent listener's certificate, key, and the CA its clients' certs
/// must chain to (PEM files).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// How often the files are looked at for a change.
    pub reload_every: Duration,
}

/// Every certificate in a PEM file; none is an error.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

fn server_config(tls: &ServerTls) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .with_context(|| format!("a client CA in {}", tls.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&tls.cert)?, read_key(&tls.key)?)
        .with_context(|| {
            format!(
                "the certificate {} with the key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    // gRPC is HTTP/2; tonic's client insists on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Who is on an agent connection, as its streams see it (a request
/// extension): the peer's address, its verified client certificates (with
/// mTLS), and the connection's live agent sessions.
#[derive(Clone)]
pub struct AgentPeer {
    pub addr: SocketAddr,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    sessions: Arc<Sessions>,
}

/// The agent sessions on one connection.
struct Sessions {
    live: AtomicUsize,
    /// When the last session ended (or the connection opened).
    idle_since: Mutex<Instant>,
    /// The connection's reader, woken when its last session ends.
    reader: AtomicWaker,
}

impl AgentPeer {
    /// Marks a session live on this connection until the guard drops.
    pub fn session(&self) -> SessionOnConnection {
        self.sessions.live.fetch_add(1, Ordering::SeqCst);
        SessionOnConnection(self.sessions.clone())
    }
}

/// A live agent session on a connection; see [`AgentPeer::session`].
pub struct SessionOnConnection(Arc<Sessions>);

impl Drop for SessionOnConnection {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            self.0.reader.wake();
        }
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An agent connection: closed once it has carried no agent session for
/// `sessionless` (a peer that connects, even speaks HTTP/2 and answers
/// pings, but never says hello, or stays after its stream ended).
pub struct AgentConnection {
    transport: Transport,
    peer: AgentPeer,
    sessionless: Duration,
    closes_at: Pin<Box<Sleep>>,
    closed: bool,
    metrics: Arc<Metrics>,
}

impl AgentConnection {
    fn new(
        transport: Transport,
        addr: SocketAddr,
        sessionless: Duration,
        metrics: Arc<Metrics>,
    ) -> AgentConnection {
        let certs = match &transport {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
        };
        let now = Instant::now();
        AgentConnection {
            transport,
            peer: AgentPeer {
                addr,
                certs,
                sessions: Arc::new(Sessions {
                    live: AtomicUsize::new(0),
                    idle_since: Mutex::new(now),
                    reader: AtomicWaker::new(),
                }),
            },
            sessionless,
            closes_at: Box::pin(tokio::time::sleep_until(now + sessionless)),
            closed: false,
            metrics,
        }
    }

    /// Whether the connection went without a session for too long (then
    /// reads fail and the server closes it). Registers the reader to be
    /// woken when the deadline passes or the last session ends.
    fn sessionless_too_long(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.closed {
            return true;
        }
        let sessions = &self.peer.sessions;
        sessions.reader.register(cx.waker());
        if sessions.live.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let due = *sessions
            .idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            + self.sessionless;
        if self.closes_at.deadline() != due {
            self.closes_at.as_mut().reset(due);
        }
        if self.closes_at.as_mut().poll(cx).is_ready() {
            self.closed = true;
            self.metrics.agent_idle_closes.inc();
            tracing::info!(peer = %self.peer.addr, "closing an agent connection without a session for {:?}", self.sessionless);
            return true;
        }
        false
    }
}

impl AsyncRead for AgentConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.sessionless_too_long(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no agent session on this connection",
            )));
        }
        match &mut self.transport {
            Transport::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.transport {
            Transport::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(t) => Pin::new(t).poll_flush(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for AgentConnection {
    type ConnectInfo = AgentPeer;

    fn connect_info(&self) -> AgentPeer {
        self.peer.clone()
    }
}

/// Agent connections accepted on `listener` within `limits` (see
/// [`crate::peer_limits`]), through the TLS handshake when `tls` is given,
/// for `Server::serve_with_incoming`. Fails only when the TLS files do not
/// load at start; later a broken set of files is logged and the previous
/// config kept. Handshake failures are counted and logged, never passed
/// on. The tasks end when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    limits: &AgentLimits,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ReceiverStream<std::io::Result<Guarded<AgentConnection>>>> {
    let current = match tls {
        Some(tls) => Some(Arc::new(reloading(tls, metrics.clone())?)),
        None => None,
    };
    let sessionless = limits.hello_timeout.saturating_mul(2);
    let drops = metrics.connections_dropped.clone();
    let handshake = move |socket: TcpStream, addr: SocketAddr| {
        let (current, metrics) = (current.clone(), metrics.clone());
        async move {
            let transport = match current {
                Some(current) => match TlsAcceptor::from(current.get()).accept(socket).await {
                    Ok(tls) => Transport::Tls(Box::new(tls)),
                    Err(e) => {
                        metrics.tls_handshake_failures.inc();
                        return Err(anyhow::Error::from(e).context("TLS handshake"));
                    }
                },
                None => Transport::Plain(socket),
            };
            Ok(AgentConnection::new(transport, addr, sessionless, metrics))
        }
    };
    Ok(crate::peer_limits::incoming(
        "agent",
        listener,
        limits.listener,
        drops,
        handshake,
    ))
}

/// The current TLS config, loaded now and again whenever the files'
/// bytes change, until nothing holds it any more.
fn reloading(tls: ServerTls, metrics: Arc<Metrics>) -> anyhow::Result<Reloading<ServerConfig>> {
    let files = vec![tls.cert.clone(), tls.key.clone(), tls.client_ca.clone()];
    let every = tls.reload_every;
    Reloading::start(
        "the agent listener's TLS files",
        files,
        every,
        move || server_config(&tls),
        move || {
            metrics.tls_reloads.inc();
        },
    )
}

/// Whether `cert` (already verified against the client CA) names `node`
/// exactly as one of its SAN DNS names: byte for byte, no wildcard
/// (`*.nodes.example` names no node), no case folding (`Node-A` is not
/// `node-a`), and only valid node names are ever compared.
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    crate::stream::valid_node_name(node) && cert.valid_dns_names().any(|name| name == node)
}
