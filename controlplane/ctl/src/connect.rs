//! The admin API client: endpoint, TLS against `--ca`, and the bearer
//! token from `--token-file` on every call.

use std::path::Path;
use std::time::Duration;

use setpoint_proto::admin::admin_client::AdminClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::args::Cli;
use crate::failure::Failure;

pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(auth) = &self.0 {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        Ok(request)
    }
}

/// The token on the first non-comment line: `<token>` or `<role> <token>`.
fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| Failure::usage(format!("{} holds no token", path.display())))?;
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [token] | [_, token] => Ok(token.to_string()),
        _ => Err(Failure::usage(format!(
            "{}: expected `<token>` or `<role> <token>`",
            path.display()
        ))),
    }
}

pub async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let auth = match &cli.token_file {
        Some(path) => {
            let token = read_token(path)?;
            Some(
                MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    Failure::usage("the token has characters a header cannot carry")
                })?,
            )
        }
        None => None,
    };
    let endpoint = Endpoint::from_shared(cli.server.clone())
        .map_err(|e| Failure::usage(format!("--server {:?}: {e}", cli.server)))?
        .connect_timeout(Duration::from_secs(cli.timeout.clamp(1, 10)))
        .timeout(Duration::from_secs(cli.timeout.max(1)));
    let endpoint = secure(endpoint, cli, auth.is_some())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::unreachable(format!("cannot reach {}: {e}", cli.server)))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(auth))
        .max_decoding_message_size(setpoint_proto::MAX_MESSAGE_BYTES))
}

/// Whether a URI's host is this machine (`localhost`, 127.0.0.0/8, `[::1]`).
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// TLS for an https:// server, verified against `--ca`; a warning when a
/// token would cross the network in plaintext.
fn secure(endpoint: Endpoint, cli: &Cli, with_token: bool) -> Result<Endpoint, Failure> {
    let uri = endpoint.uri();
    let https = uri.scheme_str() == Some("https");
    if cli.server_name.is_some() && cli.ca.is_none() {
        return Err(Failure::usage(
            "--server-name is the name in an https:// server's certificate; it needs --ca FILE",
        ));
    }
    match (&cli.ca, https) {
        (Some(ca), true) => {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::usage(format!("cannot read --ca {}: {e}", ca.display())))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(name) = &cli.server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint
                .tls_config(tls)
                .map_err(|e| Failure::usage(format!("TLS settings: {e}")))
        }
        (None, true) => Err(Failure::usage(
            "an https:// server needs --ca FILE: the CA certificate its certificate chains to",
        )),
        (Some(_), false) => Err(Failure::usage(
            "--ca is for an https:// server; this one is plaintext",
        )),
        (None, false) => {
            if with_token && !uri.host().is_some_and(is_loopback) {
                eprintln!(
                    "warning: sending the token to {} in plaintext; use https:// and --ca",
                    cli.server
                );
            }
            Ok(endpoint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_quiet_only_on_loopback() {
        for (host, loopback) in [
            ("localhost", true),
            ("127.0.0.1", true),
            ("127.3.2.1", true),
            ("[::1]", true),
            ("10.0.0.1", false),
            ("[fd00::1]", false),
            ("setpoint.example", false),
            ("localhost.example", false),
        ] {
            assert_eq!(is_loopback(host), loopback, "{host}");
        }
    }

    #[test]
    fn token_files_hold_a_token_or_a_role_and_token() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t");
        for (text, want) in [
            ("abc\n", Some("abc")),
            ("# c\n\nadmin xyz\n", Some("xyz")),
            ("a b c\n", None),
            ("# only\n", None),
        ] {
            std::fs::write(&path, text).expect("write");
            assert_eq!(read_token(&path).ok().as_deref(), want, "{text:?}");
        }
    }
}
