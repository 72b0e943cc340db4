//! The one place that owns the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use setpoint_controlplane::args::ComputeArgs;
use setpoint_dataplane::Format;

#[derive(Parser, Debug)]
#[command(
    name = "setpoint-controlplane",
    version,
    about = "Setpoint control plane: computes every node's ipset / IPVS / iptables state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Print one node's desired state computed from manifest files.
    Render(RenderArgs),
    /// Watch the source (manifest files or the Kubernetes API), commit a
    /// revision per change, stream states to agents.
    Serve(ServeArgs),
}

/// How `serve` picks the one replica that commits.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionKind {
    /// The store's leader lock.
    Store,
    /// A coordination.k8s.io/v1 Lease (`--lease-name`, `--lease-namespace`).
    Lease,
}

/// Where `serve` reads the cluster from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Manifest files (`--manifests`), polled.
    Manifests,
    /// The Kubernetes API: in-cluster, `--kubeconfig`, or `$KUBECONFIG` /
    /// `~/.kube/config`.
    Kube,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where the cluster's objects come from.
    #[arg(long, value_enum, default_value = "manifests", env = "SETPOINT_SOURCE")]
    pub source: SourceKind,
    /// A manifest file or a directory of them (re-read when it changes);
    /// with `--source manifests`.
    #[arg(long, default_value = "deploy/examples", env = "SETPOINT_MANIFESTS")]
    pub manifests: PathBuf,
    /// A kubeconfig file for `--source kube` (default: the in-cluster
    /// service account, else `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long, env = "SETPOINT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The revision store: sqlite://FILE (created when missing, unless
    /// the URL sets `?mode=` itself) or postgres://….
    #[arg(
        long,
        default_value = "sqlite://setpoint.db",
        env = "SETPOINT_DATABASE"
    )]
    pub database: String,
    /// Where agents connect (gRPC).
    #[arg(long, default_value = "127.0.0.1:7443", env = "SETPOINT_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// Prometheus metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "SETPOINT_METRICS_LISTEN"
    )]
    pub metrics_listen: std::net::SocketAddr,
    /// A burst of changes within this many milliseconds is one revision.
    #[arg(long, default_value_t = 100)]
    pub batch_ms: u64,
    /// The admin API (gRPC; setpointctl talks to it).
    #[arg(long, default_value = "127.0.0.1:7444", env = "SETPOINT_ADMIN_LISTEN")]
    pub admin_listen: std::net::SocketAddr,
    /// Admin API tokens: lines `<role> <token>` (role `read` or `admin`) or
    /// just `<token>` (admin); `#` comments. Without it every admin call is
    /// refused.
    #[arg(long, env = "SETPOINT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin listener's certificate (PEM, chain first); with
    /// --admin-tls-key the admin API is TLS (required off loopback).
    /// Reloaded when the files change.
    #[arg(long, env = "SETPOINT_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, env = "SETPOINT_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Who commits when several replicas run: the store's leader lock
    /// (PostgreSQL advisory lock) or a coordination.k8s.io/v1 Lease. Either
    /// way the winner takes a new store epoch that fences older leaders.
    #[arg(long, value_enum, default_value = "store", env = "SETPOINT_ELECTION")]
    pub election: ElectionKind,
    /// The Lease's name (with --election lease).
    #[arg(
        long,
        default_value = "setpoint-controlplane",
        env = "SETPOINT_LEASE_NAME"
    )]
    pub lease_name: String,
    /// The Lease's namespace (with --election lease; default: this pod's,
    /// from the service account, else `default`).
    #[arg(long, env = "SETPOINT_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a holder's renewal keeps others out; the leader steps down
    /// after two thirds of it without renewing, and retries every
    /// 2/15 of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600), env = "SETPOINT_LEASE_DURATION")]
    pub lease_duration: u64,
    /// The agent listener's certificate (PEM, chain first); with --tls-key
    /// and --client-ca it requires mTLS. Reloaded when the files change.
    #[arg(long, env = "SETPOINT_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SETPOINT_TLS_KEY", requires_all = ["tls_cert", "client_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that agents' certificates must chain to; an agent's
    /// certificate names its node as a SAN DNS name.
    #[arg(long, env = "SETPOINT_CLIENT_CA", requires_all = ["tls_cert", "tls_key"])]
    pub client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub agent_limits: AgentLimitArgs,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    /// Export trace spans over OTLP/gRPC to this collector (default:
    /// $OTEL_EXPORTER_OTLP_ENDPOINT; none: no export).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub manifest_limits: ManifestLimitArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// What one manifest file may cost to read; a file or document over a
/// limit is skipped with a problem, the others still load.
#[derive(Args, Debug, Clone, Copy)]
pub struct ManifestLimitArgs {
    /// A manifest file larger than this many MiB is skipped unread.
    #[arg(long, default_value_t = setpoint_source::Limits::DEFAULT_MAX_FILE_MIB, value_parser = clap::value_parser!(u64).range(1..=1024), env = "SETPOINT_MANIFEST_MAX_FILE_MIB")]
    pub manifest_max_file_mib: u64,
    /// A document whose mappings and sequences nest deeper than this is
    /// skipped (128 is the YAML and JSON parsers' own bound).
    #[arg(long, default_value_t = setpoint_source::Limits::DEFAULT_MAX_DEPTH as u64, value_parser = clap::value_parser!(u64).range(1..=128), env = "SETPOINT_MANIFEST_MAX_DEPTH")]
    pub manifest_max_depth: u64,
}

impl ManifestLimitArgs {
    pub fn limits(&self) -> setpoint_source::Limits {
        let ManifestLimitArgs {
            manifest_max_file_mib,
            manifest_max_depth,
        } = *self;
        setpoint_source::Limits {
            max_file_bytes: manifest_max_file_mib << 20,
            max_depth: usize::try_from(manifest_max_depth).unwrap_or(usize::MAX),
        }
    }
}

/// How a new revision reaches the nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutMode {
    /// Every node at once.
    All,
    /// The canaries first; the rest after they ack and soak.
    Canary,
}

/// Progressive rollout: off unless `--rollout canary`.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    #[arg(long, value_enum, default_value = "all", env = "SETPOINT_ROLLOUT")]
    pub rollout: RolloutMode,
    /// How many nodes are canaries: a percentage (`5%`) or a count (`3`)
    /// of the candidates. Default: every selected node with
    /// `--canary-selector`, else 5%. Chosen by a hash of the node name.
    #[arg(long, env = "SETPOINT_CANARY_SHARE")]
    pub canary_share: Option<setpoint_controlplane::rollout::Share>,
    /// Candidates are the Nodes with this label (`key=value`; repeatable,
    /// all must match).
    #[arg(long, env = "SETPOINT_CANARY_SELECTOR")]
    pub canary_selector: Vec<setpoint_controlplane::rollout::LabelSelector>,
    /// How long the canaries must hold a revision, acked and without
    /// failures, before the rest get it (e.g. `30s`, `2m`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "SETPOINT_SOAK")]
    pub soak: std::time::Duration,
    /// Failing canaries (a nack after the revision reached them) that halt
    /// the rollout and roll them back.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), env = "SETPOINT_FAILURE_THRESHOLD")]
    pub failure_threshold: u64,
    /// A canary that acked and is then not heard from (no heartbeat, no
    /// stream) for this long has failed (agents heartbeat every 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "SETPOINT_CANARY_SILENCE")]
    pub canary_silence: std::time::Duration,
}

impl RolloutArgs {
    pub fn config(&self) -> Option<setpoint_controlplane::rollout::RolloutConfig> {
        let RolloutArgs {
            rollout,
            canary_share,
            canary_selector,
            soak,
            failure_threshold,
            canary_silence,
        } = self.clone();
        (rollout == RolloutMode::Canary).then(|| setpoint_controlplane::rollout::RolloutConfig {
            share: canary_share,
            selector: canary_selector,
            soak,
            failure_threshold: usize::try_from(failure_threshold).unwrap_or(usize::MAX),
            canary_silence,
        })
    }
}

/// What the agent listener lets a peer hold, and for how long.
#[derive(clap::Args, Debug)]
pub struct AgentLimitArgs {
    /// Open agent connections from one peer address (an agent needs one;
    /// raise it when agents reach the control plane through a proxy or
    /// NAT that shares an address).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..), env = "SETPOINT_AGENT_CONNECTIONS_PER_PEER")]
    pub agent_connections_per_peer: u64,
    /// Open agent connections in total.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..), env = "SETPOINT_AGENT_MAX_CONNECTIONS")]
    pub agent_max_connections: u64,
    /// Agent TLS handshakes in progress at once; connections beyond are
    /// closed (agents retry with backoff).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..), env = "SETPOINT_AGENT_PENDING_HANDSHAKES")]
    pub agent_pending_handshakes: u64,
    /// A new agent stream must say hello within this; a connection
    /// without an agent session for twice as long is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "SETPOINT_AGENT_HELLO_TIMEOUT")]
    pub agent_hello_timeout: std::time::Duration,
    /// How long a snapshot holds one of the 32 snapshot slots without an
    /// answer from its agent before another node gets the slot.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "SETPOINT_SNAPSHOT_ANSWER_TIMEOUT")]
    pub snapshot_answer_timeout: std::time::Duration,
}

impl AgentLimitArgs {
    pub fn limits(&self) -> setpoint_controlplane::stream::AgentLimits {
        let defaults = setpoint_controlplane::stream::AgentLimits::default();
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        setpoint_controlplane::stream::AgentLimits {
            listener: setpoint_controlplane::peer_limits::ListenerLimits {
                per_peer: count(self.agent_connections_per_peer),
                total: count(self.agent_max_connections),
                pending_handshakes: count(self.agent_pending_handshakes),
                ..defaults.listener
            },
            hello_timeout: self.agent_hello_timeout,
            snapshot_answer: self.snapshot_answer_timeout,
            ..defaults
        }
    }
}

/// A duration flag that does not parse (clap shows the text).
#[derive(Debug, PartialEq, thiserror::Error)]
enum DurationError {
    #[error("{0:?}: expected a duration like 30s, 2m or 500ms")]
    NotANumber(String),
    #[error("{0:?}: the unit must be ms, s or m")]
    UnknownUnit(String),
}

/// `500ms`, `30s`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_string()))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n.saturating_mul(60))),
        _ => Err(DurationError::UnknownUnit(s.to_string())),
    }
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// A manifest file or a directory of them.
    #[arg(long, default_value = "deploy/examples", env = "SETPOINT_MANIFESTS")]
    pub manifests: PathBuf,
    /// The node whose state to print.
    #[arg(long)]
    pub node: String,
    /// Output format: json, ipset, iptables, ip6tables, ipvs or text.
    #[arg(long, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub manifest_limits: ManifestLimitArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Logs, and span export when an OTLP endpoint is given; keep the result
/// alive while the command runs (dropping it flushes the export).
fn init_logs(otlp: Option<String>) -> anyhow::Result<setpoint_runtime::telemetry::Telemetry> {
    let otlp = setpoint_runtime::telemetry::endpoint(otlp);
    setpoint_runtime::telemetry::init("setpoint-controlplane", "warn", otlp.as_deref())
}

/// A client for `--source kube`.
async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<setpoint_kube::kube::Client> {
    use anyhow::Context;
    use setpoint_kube::kube;
    // kube's TLS is rustls; pin its crypto provider so that another crate
    // enabling a second one cannot make the choice ambiguous (a panic).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = init_logs(args.otlp_endpoint.clone())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kube = match args.source {
            SourceKind::Manifests => None,
            SourceKind::Kube => Some(kube_client(args.kubeconfig.as_deref()).await?),
        };
        let election = match args.election {
            ElectionKind::Store => setpoint_controlplane::serve::Election::Store,
            ElectionKind::Lease => {
                let client = match &kube {
                    Some(client) => client.clone(),
                    None => kube_client(args.kubeconfig.as_deref()).await?,
                };
                let namespace = args.lease_namespace.clone().unwrap_or_else(|| {
                    std::fs::read_to_string(
                        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                    )
                    .map(|n| n.trim().to_string())
                    .unwrap_or_else(|_| "default".to_string())
                });
                let identity = setpoint_kube::lease::default_identity();
                let duration = std::time::Duration::from_secs(args.lease_duration);
                println!(
                    "electing by the Lease {namespace}/{} as {identity}",
                    args.lease_name
                );
                setpoint_controlplane::serve::Election::Lease {
                    client,
                    settings: setpoint_kube::lease::LeaseSettings {
                        lease_duration: duration,
                        renew_deadline: duration * 2 / 3,
                        retry_period: duration * 2 / 15,
                        ..setpoint_kube::lease::LeaseSettings::new(&namespace, &args.lease_name, identity)
                    },
                }
            }
        };
        let source = match args.source {
            SourceKind::Manifests => format!("manifests {}", args.manifests.display()),
            SourceKind::Kube => "the Kubernetes API".to_string(),
        };
        let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(setpoint_controlplane::tls::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
                reload_every: std::time::Duration::from_secs(5),
            }),
            _ => None,
        };
        if tls.is_none() {
            eprintln!(
                "WARNING: no --tls-cert/--tls-key/--client-ca: agents connect in plaintext without identities; \
                 development only (loopback only)"
            );
        }
        let running = setpoint_controlplane::serve::start(setpoint_controlplane::serve::ServeConfig {
            manifests: args.manifests,
            manifest_limits: args.manifest_limits.limits(),
            kube,
            database: args.database.clone(),
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            batch: std::time::Duration::from_millis(args.batch_ms),
            poll: std::time::Duration::from_millis(250),
            compute: args.compute.config(),
            admin: setpoint_controlplane::admin::AdminConfig {
                listen: Some(args.admin_listen),
                token_file: args.admin_token_file.clone(),
                tls: match (&args.admin_tls_cert, &args.admin_tls_key) {
                    (Some(cert), Some(key)) => Some(setpoint_controlplane::admin::AdminTls {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
                limits: Default::default(),
            },
            tls,
            agents: args.agent_limits.limits(),
            election,
            rollout: args.rollout.config(),
        })
        .await?;
        println!(
            "serving {source}: store {}, agents on {}, metrics on http://{}/metrics",
            args.database, running.agent_addr, running.metrics_addr
        );
        if let Some(admin) = running.admin_addr {
            let scheme = if args.admin_tls_cert.is_some() { "https" } else { "http" };
            match &args.admin_token_file {
                Some(_) => println!("admin API on {scheme}://{admin}"),
                None => println!(
                    "admin API on {scheme}://{admin}, refusing every call: no --admin-token-file"
                ),
            }
        }
        let mut commits = running.commits.subscribe();
        let stop = setpoint_controlplane::serve::terminated();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                c = commits.recv() => if let Ok(c) = c {
                    println!("revision {}: {} objects, {} nodes changed", c.revision.0, c.objects_changed, c.nodes_changed);
                },
                _ = &mut stop => return Ok(()),
            }
        }
    })
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(RenderArgs {
            manifests,
            node,
            format,
            manifest_limits,
            compute,
        }) => crate::render::run(
            &manifests,
            &manifest_limits.limits(),
            compute.config(),
            &node,
            format,
        ),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use setpoint_controlplane::rollout::{RolloutConfig, Share};

    use super::*;

    fn rollout(args: &[&str]) -> Result<Option<RolloutConfig>, clap::Error> {
        let mut argv = vec!["setpoint-controlplane", "serve"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(s) => Ok(s.rollout.config()),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn rollout_flags() {
        assert_eq!(rollout(&[]).expect("parses"), None, "off by default");
        assert_eq!(
            rollout(&["--rollout", "canary"]).expect("parses"),
            Some(RolloutConfig::default())
        );
        let c = rollout(&[
            "--rollout",
            "canary",
            "--canary-share",
            "10%",
            "--canary-selector",
            "zone=a",
            "--soak",
            "500ms",
            "--failure-threshold",
            "2",
        ])
        .expect("parses")
        .expect("on");
        assert_eq!(c.share, Some(Share::Percent(10.0)));
        assert_eq!(c.selector, vec!["zone=a".parse().expect("selector")]);
        assert_eq!(
            (c.soak, c.failure_threshold),
            (Duration::from_millis(500), 2)
        );
        for bad in [
            &["--rollout", "canary", "--canary-share", "0%"][..],
            &["--rollout", "canary", "--failure-threshold", "0"],
            &["--rollout", "canary", "--soak", "5h"],
            &["--rollout", "canary", "--canary-selector", "novalue"],
            &["--rollout", "sometimes"],
        ] {
            assert!(rollout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_limit_flags() {
        let limits = |args: &[&str]| -> Result<
            (setpoint_source::Limits, setpoint_source::Limits),
            clap::Error,
        > {
            let mut serve = vec!["setpoint-controlplane", "serve"];
            serve.extend(args);
            let mut render = vec!["setpoint-controlplane", "render", "--node", "n1"];
            render.extend(args);
            match (
                Cli::try_parse_from(serve)?.command,
                Cli::try_parse_from(render)?.command,
            ) {
                (Command::Serve(s), Command::Render(r)) => {
                    Ok((s.manifest_limits.limits(), r.manifest_limits.limits()))
                }
                other => panic!("parsed {other:?}"),
            }
        };
        let defaults = setpoint_source::Limits::default();
        assert_eq!(limits(&[]).expect("parses"), (defaults, defaults));
        let lower = setpoint_source::Limits {
            max_file_bytes: 2 << 20,
            max_depth: 10,
        };
        assert_eq!(
            limits(&["--manifest-max-file-mib", "2", "--manifest-max-depth", "10"])
                .expect("parses"),
            (lower, lower)
        );
        for bad in [
            &["--manifest-max-file-mib", "0"][..],
            &["--manifest-max-file-mib", "1025"],
            &["--manifest-max-depth", "0"],
            &["--manifest-max-depth", "129"],
        ] {
            assert!(limits(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("250ms", Duration::from_millis(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for (bad, says) in [
            ("", r#""": expected a duration like 30s, 2m or 500ms"#),
            ("s", r#""s": expected a duration like 30s, 2m or 500ms"#),
            ("-1s", r#""-1s": expected a duration like 30s, 2m or 500ms"#),
            ("1.5s", r#""1.5s": the unit must be ms, s or m"#),
            ("3d", r#""3d": the unit must be ms, s or m"#),
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert_eq!(e.to_string(), says, "{bad}");
        }
    }
}
