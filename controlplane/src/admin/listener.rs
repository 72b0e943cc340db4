//! The admin API's listener: bound with its token file and TLS files
//! loaded (a bad file fails `serve` at start), then served behind the
//! peer limits, TLS and [`Authenticate`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use setpoint_proto::admin::admin_server::AdminServer;
use tonic::service::interceptor::InterceptedService;

use super::tokens::{Authenticate, TokenSource, Tokens};
use super::{AdminConfig, AdminLimits, AdminService, AdminTls, MAX_REQUEST_BYTES};
use crate::metrics::Metrics;
use crate::reload::Reloading;

/// Request headers (the token among them) of one call.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// The admin listener, bound, with its tokens and TLS config loaded (so
/// that a bad file fails `serve` at start), not yet serving.
pub struct Listener {
    listener: tokio::net::TcpListener,
    tokens: TokenSource,
    tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
}

/// The admin listener's TLS config: its certificate, no client
/// certificates (callers present tokens), HTTP/2.
fn server_config(tls: &AdminTls) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            crate::tls::read_certs(&tls.cert)?,
            crate::tls::read_key(&tls.key)?,
        )
        .with_context(|| {
            format!(
                "the admin certificate {} with the key {}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Listener {
    /// Binds `config.listen` (which must be set) after loading the token
    /// file and the TLS files. Refuses plaintext off loopback.
    pub async fn bind(config: &AdminConfig, metrics: Arc<Metrics>) -> anyhow::Result<Listener> {
        let AdminConfig {
            listen,
            token_file,
            tls,
            limits,
        } = config;
        let addr = listen.context("no admin listen address")?;
        if tls.is_none() {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "refusing to serve the admin API in plaintext on {addr}: give --admin-tls-cert and \
                 --admin-tls-key, or listen on a loopback address"
            );
        }
        let tokens = match token_file {
            Some(path) => {
                let (path, reloads) = (path.clone(), metrics.admin_token_reloads.clone());
                let reloading = Reloading::start(
                    "the admin token file",
                    vec![path.clone()],
                    limits.reload_every,
                    move || Tokens::load(&path),
                    move || {
                        reloads.inc();
                    },
                )?;
                Some(Arc::new(reloading))
            }
            None => {
                tracing::warn!("admin API without --admin-token-file: every call is refused");
                None
            }
        };
        let tls = match tls {
            Some(tls) => {
                let (files, reloads) = (
                    vec![tls.cert.clone(), tls.key.clone()],
                    metrics.admin_tls_reloads.clone(),
                );
                let tls = tls.clone();
                let reloading = Reloading::start(
                    "the admin listener's TLS files",
                    files,
                    limits.reload_every,
                    move || server_config(&tls),
                    move || {
                        reloads.inc();
                    },
                )?;
                Some(Arc::new(reloading))
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener {addr}"))?;
        Ok(Listener {
            listener,
            tokens,
            tls,
            limits: *limits,
            metrics,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` behind the listener's limits and [`Authenticate`]
    /// until the process ends.
    pub fn serve(self, service: AdminService) {
        let Listener {
            listener,
            tokens,
            tls,
            limits,
            metrics,
        } = self;
        // Pings well within the idle timeout: every live client answers
        // them, so only a silent one reaches it.
        let keepalive = limits.listener.idle / 4;
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .max_concurrent_streams(Some(limits.streams_per_connection))
            .concurrency_limit_per_connection(limits.streams_per_connection as usize)
            .timeout(limits.request_timeout)
            .max_connection_age(limits.max_connection_age)
            .max_connection_age_grace(limits.request_timeout)
            // Flow control holds what a peer sends ahead of the server to
            // about one request per stream.
            .initial_stream_window_size(Some(2 * MAX_REQUEST_BYTES as u32))
            .initial_connection_window_size(Some(4 * MAX_REQUEST_BYTES as u32))
            .http2_max_header_list_size(Some(MAX_HEADER_BYTES))
            .add_service(InterceptedService::new(
                AdminServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
                Authenticate { tokens },
            ));
        let drops = metrics.connections_dropped.clone();
        let serving: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
            match tls {
                Some(tls) => Box::pin(server.serve_with_incoming(crate::peer_limits::incoming(
                    "admin",
                    listener,
                    limits.listener,
                    drops,
                    move |socket, _peer| {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
                        async move { acceptor.accept(socket).await.context("TLS handshake") }
                    },
                ))),
                None => Box::pin(server.serve_with_incoming(crate::peer_limits::incoming(
                    "admin",
                    listener,
                    limits.listener,
                    drops,
                    |socket, _peer| async move { Ok(socket) },
                ))),
            };
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!("admin server stopped: {e}");
            }
        });
    }
}
