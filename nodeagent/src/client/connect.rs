//! The channel to the control plane: plaintext to a loopback control
//! plane only, otherwise mTLS from the certificate files as they are at
//! each connection. With several endpoints (one per replica), the run
//! loop keeps the one to try first at the front of the list: each
//! connection goes to `controlplanes[0]`.

use std::path::PathBuf;

use super::AgentOptions;

/// The agent's certificate (naming its node as a SAN DNS name), its key,
/// and the CA the control plane's certificate must chain to; PEM files,
/// read again at every connection, so a rotated Secret is used from the
/// next reconnect on.
#[derive(Clone, Debug)]
pub struct AgentTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The name the control plane's certificate must carry (default: the
    /// host of the endpoint's URL).
    pub server_name: Option<String>,
}

/// Refuses a transport that would carry the node's state unauthenticated
/// over a network: plaintext is for a loopback control plane only, and TLS
/// needs an `https://` URL.
pub fn check_transport(options: &AgentOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.controlplanes.is_empty(),
        "no control plane endpoint given"
    );
    anyhow::ensure!(
        options.controlplanes.len() <= MAX_ENDPOINTS,
        "{} control plane endpoints given; at most {MAX_ENDPOINTS} (one per replica)",
        options.controlplanes.len()
    );
    options
        .controlplanes
        .iter()
        .try_for_each(|url| check_endpoint(url, options.tls.is_some()))
}

/// Control plane endpoints an agent takes (one per replica; a handful).
pub const MAX_ENDPOINTS: usize = 16;

fn check_endpoint(url: &str, tls: bool) -> anyhow::Result<()> {
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("the control plane URL {url:?}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match (tls, uri.scheme_str()) {
        (true, Some("https")) => Ok(()),
        (true, _) => {
            anyhow::bail!("with --tls-cert the control plane URL must be https://, not {url}")
        }
        (false, Some("http")) if is_loopback_host(host) => Ok(()),
        (false, _) => anyhow::bail!(
            "refusing to talk to the control plane at {url} without TLS: give --tls-cert, --tls-key and --ca \
             (plaintext is for a loopback control plane only, in development)"
        ),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (as a URL writes it, in brackets).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A channel to the control plane endpoint first in the list: plaintext,
/// or mTLS from the files as they are now.
pub(super) async fn connect(options: &AgentOptions) -> anyhow::Result<tonic::transport::Channel> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let url = options
        .controlplanes
        .first()
        .context("no control plane endpoint given")?;
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("the control plane URL {url}"))?;
    let endpoint = match &options.tls {
        None => endpoint,
        Some(tls) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
                .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint.tls_config(config).context("the TLS settings")?
        }
    };
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}
