//! `setpointctl`: revisions, node states, diffs, rollout status, rollback,
//! pause and resume over the control plane's admin API
//! (`proto/setpoint/v1/admin.proto`). Human tables by default, `-o json`
//! for scripts; exit codes in [`EXIT_CODES`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use setpoint_proto::admin::admin_client::AdminClient;
use setpoint_proto::admin::{
    DiffNodeRequest, ExplainRequest, ListRevisionsRequest, PauseRequest, ResumeRequest,
    RollbackRequest, ShowNodeRequest, StatusRequest, StatusResponse,
};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const EXIT_CODES: &str = "\
Exit status:
  0  the command succeeded
  1  the command failed (unknown revision or node, nothing to resume, …)
  2  usage: bad arguments, or the token file cannot be read
  3  refused: missing or unknown token (UNAUTHENTICATED), or a read-only
     token asked for rollback, pause or resume (PERMISSION_DENIED)
  4  the server is unreachable or unavailable (try again later)

The token file holds the token on its first line that is not a `#` comment,
either alone or as `<role> <token>` (the control plane's own file works).";

#[derive(Parser, Debug)]
#[command(
    name = "setpointctl",
    version,
    about = "Operate a Setpoint control plane: revisions, show, diff, status, rollback, pause, resume, explain",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The control plane's admin API: http://HOST:PORT (loopback), or
    /// https://HOST:PORT with --ca.
    #[arg(long, default_value = "http://127.0.0.1:7444", env = "SETPOINT_SERVER")]
    server: String,
    /// File with the bearer token to present.
    #[arg(long, env = "SETPOINT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificate (PEM) the admin API's certificate must chain
    /// to; required with an https:// --server.
    #[arg(long, env = "SETPOINT_CA")]
    ca: Option<PathBuf>,
    /// The name the admin API's certificate must carry (default: the host
    /// of --server; set it when reaching the API through a port-forward).
    #[arg(long, env = "SETPOINT_SERVER_NAME", requires = "ca")]
    server_name: Option<String>,
    /// Output: human tables or JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Revisions, newest first.
    Revisions {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only revisions older than this one.
        #[arg(long)]
        before: Option<u64>,
    },
    /// A node's desired state at a revision (default: the head).
    Show {
        #[arg(long)]
        node: String,
        #[arg(long)]
        revision: Option<u64>,
        /// json, ipset, iptables, ip6tables, ipvs or text.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// The typed changes that take a node from revision FROM to TO.
    Diff {
        #[arg(long)]
        node: String,
        from: u64,
        to: u64,
    },
    /// Per node: applied revision, digest, last result, last contact; fleet summary.
    Status,
    /// Give nodes (default: all) their states of revision R back, pinned
    /// there until `resume`.
    Rollback {
        #[arg(long)]
        to: u64,
        /// Comma-separated node names; all nodes when absent.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[arg(long)]
        reason: String,
    },
    /// Hold nodes at their current states while computation continues.
    Pause {
        /// Comma-separated node names.
        #[arg(long, value_delimiter = ',', required_unless_present = "all")]
        nodes: Vec<String>,
        /// Every node.
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        #[arg(long)]
        reason: String,
    },
    /// Let pinned nodes follow the computed states again.
    Resume {
        /// Comma-separated node names.
        #[arg(long, value_delimiter = ',', required_unless_present = "all")]
        nodes: Vec<String>,
        /// Every pinned node.
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
    },
    /// How a node's state treats one packet: set entries, chains and rules,
    /// IPVS virtual server, verdict.
    Explain {
        #[arg(long)]
        node: String,
        /// Default: the head.
        #[arg(long)]
        revision: Option<u64>,
        /// tcp, udp or sctp.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// IP or IP:PORT (`[v6]:port`).
        #[arg(long)]
        src: String,
        /// IP:PORT (`[v6]:port`).
        #[arg(long)]
        dst: String,
        /// Where the packet comes from: pod, outside or node.
        #[arg(long, default_value = "pod")]
        from: String,
    },
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`: the address and the port (0 if none).
fn endpoint(text: &str) -> Result<(String, u32), Failure> {
    let bad = || Failure::usage(format!("{text:?}: expected IP, IP:PORT or [IPv6]:PORT"));
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 0));
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|_| bad())?;
    Ok((addr.ip().to_string(), u32::from(addr.port())))
}

/// What compute refused about the destination address, after the walk:
/// one line a problem, as `render` prints it on stderr.
fn problems_text(dst: &str, r: &setpoint_proto::admin::ExplainResponse) -> String {
    if !r.problems_unknown.is_empty() {
        return format!(
            "compute problems about {dst}: unknown ({})\n",
            r.problems_unknown
        );
    }
    if r.problems.is_empty() {
        return format!("compute problems about {dst}: none\n");
    }
    let mut text = format!("compute problems about {dst}:\n");
    for p in &r.problems {
        text.push_str(&format!("  {}\n", p.text));
    }
    if r.problems_omitted > 0 {
        text.push_str(&format!("  … and {} more\n", r.problems_omitted));
    }
    text
}

/// A failure with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        let code = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::Unavailable | Code::DeadlineExceeded => 4,
            _ => 1,
        };
        let message = match s.code() {
            Code::Unauthenticated => format!("refused (unauthenticated): {}", s.message()),
            Code::PermissionDenied => format!("refused (permission denied): {}", s.message()),
            _ => s.message().to_string(),
        };
        Failure { code, message }
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

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

type Client = AdminClient<InterceptedService<Channel, Bearer>>;

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

async fn connect(cli: &Cli) -> Result<Client, Failure> {
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
    let channel = endpoint.connect().await.map_err(|e| Failure {
        code: 4,
        message: format!("cannot reach {}: {e}", cli.server),
    })?;
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

fn print_json(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: 1,
        message: format!("encoding JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

/// Columns padded to their widest cell; the last column is not padded.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ago(ms: i64) -> String {
    let now = UNIX_EPOCH
        .elapsed()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if ms <= 0 {
        return "never".into();
    }
    let secs = (now - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

fn short(digest: &str) -> String {
    if digest.is_empty() {
        "-".into()
    } else {
        digest.chars().take(12).collect()
    }
}

fn status_json(s: &StatusResponse) -> Value {
    let fleet = s.fleet.unwrap_or_default();
    let rollout = s.rollout.clone().unwrap_or_default();
    json!({
        "head": s.head,
        "rollout": {
            "phase": rollout.phase,
            "target": rollout.target,
            "good": rollout.good,
            "canaries": rollout.canaries,
            "failed": rollout.failed,
            "reason": rollout.reason,
        },
        "fleet": {
            "nodes": fleet.nodes,
            "at_head": fleet.at_head,
            "degraded": fleet.degraded,
            "pinned": fleet.pinned,
        },
        "nodes": s.nodes.iter().map(|n| json!({
            "node": n.node,
            "applied_revision": n.applied_revision,
            "digest": n.digest,
            "desired_digest": n.desired_digest,
            "at_head": n.at_head,
            "result": n.result,
            "error": n.error,
            "failed_operation": n.failed_operation,
            "last_contact": n.last_contact_ms,
            "agent_version": n.agent_version,
            "pinned_at": n.pinned_at,
            "pin_reason": n.pin_reason,
        })).collect::<Vec<_>>(),
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.output == Output::Json;
    let mut client = connect(&cli).await?;
    match cli.verb {
        Verb::Revisions { limit, before } => {
            let r = client
                .list_revisions(ListRevisionsRequest {
                    page_size: limit.max(1),
                    before: before.unwrap_or(0),
                })
                .await?
                .into_inner();
            if json {
                let list: Vec<Value> = r
                    .revisions
                    .iter()
                    .map(|v| {
                        json!({
                            "revision": v.revision,
                            "created_at": v.created_at_ms,
                            "cause": v.cause,
                            "objects": v.objects,
                            "nodes_changed": v.nodes_changed,
                            "epoch": v.epoch,
                            "action": v.action,
                            "target": (v.target > 0).then_some(v.target),
                        })
                    })
                    .collect();
                print_json(&Value::Array(list))?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .revisions
                    .iter()
                    .map(|v| {
                        let action = match v.target {
                            0 => v.action.clone(),
                            t => format!("{} to {t}", v.action),
                        };
                        vec![
                            v.revision.to_string(),
                            utc(v.created_at_ms),
                            action,
                            v.nodes_changed.to_string(),
                            v.cause.clone(),
                        ]
                    })
                    .collect();
                print_table(&["REVISION", "CREATED", "ACTION", "NODES", "CAUSE"], &rows);
                if r.next_before > 0 {
                    println!("(more: --before {})", r.next_before);
                }
            }
        }
        Verb::Show {
            node,
            revision,
            format,
        } => {
            let r = client
                .show_node(ShowNodeRequest {
                    node: node.clone(),
                    revision: revision.unwrap_or(0),
                    format: format.clone(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({
                    "node": node,
                    "revision": r.revision,
                    "digest": r.digest,
                    "format": format,
                    "text": r.text,
                }))?;
            } else {
                print!("{}", r.text);
                if !r.text.ends_with('\n') {
                    println!();
                }
            }
        }
        Verb::Explain {
            node,
            revision,
            proto,
            src,
            dst,
            from,
        } => {
            let (src_ip, src_port) = endpoint(&src)?;
            let (dst_ip, dst_port) = endpoint(&dst)?;
            if dst_port == 0 {
                return Err(Failure::usage("--dst needs a port: IP:PORT"));
            }
            let r = client
                .explain(ExplainRequest {
                    node,
                    revision: revision.unwrap_or(0),
                    protocol: proto,
                    src_ip,
                    src_port,
                    dst_ip: dst_ip.clone(),
                    dst_port,
                    from,
                })
                .await?
                .into_inner();
            if json {
                let explanation: Value = serde_json::from_str(&r.json).map_err(|e| Failure {
                    code: 1,
                    message: format!("the server sent an explanation that is not JSON: {e}"),
                })?;
                let problems: Vec<Value> = r
                    .problems
                    .iter()
                    .map(|p| {
                        json!({
                            "service": p.service,
                            "addresses": p.addresses,
                            "reason": p.reason,
                            "text": p.text,
                        })
                    })
                    .collect();
                let unknown = (!r.problems_unknown.is_empty()).then_some(&r.problems_unknown);
                print_json(&json!({
                    "revision": r.revision,
                    "explanation": explanation,
                    "problems": problems,
                    "problems_unknown": unknown,
                    "problems_omitted": r.problems_omitted,
                }))?;
            } else {
                println!("node state at revision {}", r.revision);
                print!("{}", r.text);
                print!("{}", problems_text(&dst_ip, &r));
            }
        }
        Verb::Diff { node, from, to } => {
            let r = client
                .diff_node(DiffNodeRequest {
                    node: node.clone(),
                    from,
                    to,
                })
                .await?
                .into_inner();
            if json {
                let changes: Vec<Value> = r
                    .changes
                    .iter()
                    .map(|c| serde_json::from_str(c).unwrap_or_else(|_| Value::String(c.clone())))
                    .collect();
                print_json(&json!({
                    "node": node, "from": from, "to": to,
                    "count": r.count, "changes": changes,
                }))?;
            } else {
                for c in &r.changes {
                    println!("{c}");
                }
                println!(
                    "{} change(s) to {node} from revision {from} to {to}",
                    r.count
                );
            }
        }
        Verb::Status => {
            let r = client.status(StatusRequest {}).await?.into_inner();
            if json {
                print_json(&status_json(&r))?;
            } else {
                let rows: Vec<Vec<String>> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        let result = match (n.result.as_str(), n.error.is_empty()) {
                            ("", _) => "-".to_string(),
                            ("nack", false) => {
                                format!("nack: {} ({})", n.error, n.failed_operation)
                            }
                            (other, _) => other.to_string(),
                        };
                        let pinned = match n.pinned_at {
                            0 => "-".to_string(),
                            p => format!("at {p}: {}", n.pin_reason),
                        };
                        vec![
                            n.node.clone(),
                            n.applied_revision.to_string(),
                            short(&n.digest),
                            if n.at_head { "yes" } else { "no" }.to_string(),
                            result,
                            ago(n.last_contact_ms),
                            n.agent_version.clone(),
                            pinned,
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NODE", "APPLIED", "DIGEST", "AT HEAD", "LAST", "CONTACT", "AGENT",
                        "PINNED",
                    ],
                    &rows,
                );
                let f = r.fleet.unwrap_or_default();
                println!(
                    "head {}: {} node(s), {} at head, {} degraded, {} pinned",
                    r.head, f.nodes, f.at_head, f.degraded, f.pinned
                );
                if let Some(ro) = r.rollout.as_ref().filter(|ro| ro.phase != "off") {
                    let canaries = ro.canaries.join(", ");
                    match ro.phase.as_str() {
                        "canary" => println!(
                            "rollout: revision {} on the canaries ({canaries}), the rest held at {}",
                            ro.target, ro.good
                        ),
                        "halted" => println!(
                            "rollout: HALTED at revision {}; rolled back {} to {}; the rest held. {}",
                            ro.target,
                            ro.failed.join(", "),
                            ro.good,
                            ro.reason
                        ),
                        _ => println!(
                            "rollout: idle at revision {} (canaries: {canaries})",
                            ro.good
                        ),
                    }
                }
            }
        }
        Verb::Rollback { to, nodes, reason } => {
            let all = nodes.is_empty();
            let r = client
                .rollback(RollbackRequest {
                    to,
                    nodes: nodes.clone(),
                    reason,
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({ "revision": r.revision, "to": to }))?;
            } else {
                let who = if all {
                    "all nodes".to_string()
                } else {
                    nodes.join(",")
                };
                println!(
                    "revision {}: {who} rolled back to revision {to} and pinned (setpointctl resume to undo)",
                    r.revision
                );
            }
        }
        Verb::Pause { nodes, all, reason } => {
            let r = client
                .pause(PauseRequest {
                    nodes: nodes.clone(),
                    all,
                    reason,
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({ "revision": r.revision }))?;
            } else {
                let who = if all {
                    "all nodes".into()
                } else {
                    nodes.join(",")
                };
                println!("revision {}: {who} paused", r.revision);
            }
        }
        // With --all, `nodes` is empty: the server resumes every pinned node.
        Verb::Resume { nodes, all: _ } => {
            let r = client
                .resume(ResumeRequest {
                    nodes: nodes.clone(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({ "revision": r.revision }))?;
            } else {
                let who = if nodes.is_empty() {
                    "all pinned nodes".into()
                } else {
                    nodes.join(",")
                };
                println!("revision {}: {who} resumed", r.revision);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_millis() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31T23:59:59Z");
    }

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
