//! mTLS on the agent listener.
//!
//! ```text
//!  TCP accept ─▶ TLS handshake (the current ServerConfig: our cert, client
//!               certs must chain to --client-ca) ─▶ tonic (peer certs in the
//!               request) ─▶ stream: hello's node must be a SAN DNS name of
//!               the client cert, else PERMISSION_DENIED
//!  files ──poll──▶ content changed ─▶ new ServerConfig for new connections
//! ```
//!
//! An agent's certificate names its node as a SAN DNS name (`node-a`), as
//! cert-manager's `dnsNames` writes it; the subject CN is not read. The
//! files are read again whenever their bytes change (a Secret update
//! swaps a symlink), and a set that does not load keeps the old config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;

/// How long a client has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A digest of the three files' bytes; `None` while one cannot be read.
fn fingerprint(tls: &ServerTls) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    for path in [&tls.cert, &tls.key, &tls.client_ca] {
        let bytes = std::fs::read(path).ok()?;
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Some(hash.finalize().into())
}

/// The server config new connections get; swapped when the files change.
struct Current(RwLock<Arc<ServerConfig>>);

impl Current {
    fn get(&self) -> Arc<ServerConfig> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, config: ServerConfig) {
        let mut slot = match self.0.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(config);
    }
}

/// TLS connections accepted on `listener`, for `Server::serve_with_incoming`.
/// Fails only when the files do not load at start; later a broken set of
/// files is logged and the previous config kept. Handshake failures are
/// counted and logged, never passed on. The tasks end when the returned
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ReceiverStream<std::io::Result<TlsStream<TcpStream>>>> {
    let mut seen = fingerprint(&tls);
    let current = Arc::new(Current(RwLock::new(Arc::new(server_config(&tls)?))));
    let (tx, rx) = tokio::sync::mpsc::channel(64);

    let reloading = current.clone();
    let closed = tx.clone();
    let reload_metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tls.reload_every) => {}
                _ = closed.closed() => return,
            }
            let now = fingerprint(&tls);
            if now.is_none() || now == seen {
                continue;
            }
            match server_config(&tls) {
                Ok(config) => {
                    reloading.set(config);
                    seen = now;
                    reload_metrics.tls_reloads.inc();
                    tracing::info!(cert = %tls.cert.display(), "reloaded the agent listener's TLS files");
                }
                // Half-written files load next time round; keep the old.
                Err(e) => tracing::warn!("keeping the previous TLS config: {e:#}"),
            }
        }
    });

    tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accepting an agent connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(current.get());
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                match handshake(acceptor, socket, peer).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => {
                        metrics.tls_handshake_failures.inc();
                        tracing::warn!(%peer, "TLS handshake refused: {e:#}");
                    }
                }
            });
        }
    });
    Ok(ReceiverStream::new(rx))
}

async fn handshake(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let _ = socket.set_nodelay(true);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
        .await
        .with_context(|| format!("{peer} did not finish the handshake in time"))?
        .context("handshake")
}

/// Whether `cert` (already verified against the client CA) names `node`
/// as a SAN DNS name.
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}
