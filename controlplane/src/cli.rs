//! The one place that owns the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use setpoint_compute::ComputeConfig;
use setpoint_dataplane::{Format, Scheduler};

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Print one node's desired state computed from manifest files.
    Render(RenderArgs),
    /// Watch the source (manifest files or the Kubernetes API), commit a
    /// revision per change, stream states to agents.
    Serve(ServeArgs),
    /// The whole system on this machine: serve the example manifests from an
    /// SQLite file, with one real agent per example node over loopback gRPC.
    Demo(DemoArgs),
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
    /// The revision store: sqlite://FILE or postgres://….
    #[arg(
        long,
        default_value = "sqlite://setpoint.db?mode=rwc",
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
    /// Export trace spans over OTLP/gRPC to this collector (default:
    /// $OTEL_EXPORTER_OTLP_ENDPOINT; none: no export).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value = "deploy/examples", env = "SETPOINT_MANIFESTS")]
    pub manifests: PathBuf,
    #[arg(long, default_value = "sqlite://setpoint-demo.db?mode=rwc")]
    pub database: String,
    /// Exit 0 once every agent acked the newest revision, 1 after this many
    /// seconds without.
    #[arg(long)]
    pub exit_when_converged: Option<u64>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Settings of the computation shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// IPVS scheduler for Services without the setpoint.io/ipvs-scheduler annotation.
    #[arg(long, default_value = "rr", env = "SETPOINT_IPVS_SCHEDULER")]
    pub ipvs_scheduler: Scheduler,
    /// Serve NodePorts only on node addresses inside these CIDRs (repeatable; default: all).
    #[arg(
        long = "nodeport-addresses",
        value_delimiter = ',',
        env = "SETPOINT_NODEPORT_ADDRESSES"
    )]
    pub nodeport_addresses: Vec<IpNet>,
    /// Pod CIDRs of the cluster (repeatable; default: the Nodes' podCIDRs).
    #[arg(
        long = "cluster-cidr",
        value_delimiter = ',',
        env = "SETPOINT_CLUSTER_CIDR"
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs.
    #[arg(long, env = "SETPOINT_MASQUERADE_ALL")]
    pub masquerade_all: bool,
    /// fwmark bit used to request masquerading (kube-proxy uses 14).
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(0..=31), env = "SETPOINT_MASQUERADE_BIT")]
    pub masquerade_bit: u8,
    /// Apply NetworkPolicy also to traffic from a node to its own pods
    /// (Kubernetes allows it always, for kubelet probes).
    #[arg(long, env = "SETPOINT_POLICE_NODE_TRAFFIC")]
    pub police_node_traffic: bool,
}

impl ComputeArgs {
    pub fn config(&self) -> ComputeConfig {
        let ComputeArgs {
            ipvs_scheduler,
            nodeport_addresses,
            cluster_cidrs,
            masquerade_all,
            masquerade_bit,
            police_node_traffic,
        } = self.clone();
        ComputeConfig {
            default_scheduler: ipvs_scheduler,
            nodeport_addresses,
            cluster_cidrs,
            masquerade_all,
            masquerade_bit,
            police_node_traffic,
            ..ComputeConfig::default()
        }
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
    pub compute: ComputeArgs,
}

/// Logs, and span export when an OTLP endpoint is given; keep the result
/// alive while the command runs (dropping it flushes the export).
fn init_logs(otlp: Option<String>) -> anyhow::Result<setpoint_agent::telemetry::Telemetry> {
    let otlp = setpoint_agent::telemetry::endpoint(otlp);
    setpoint_agent::telemetry::init("setpoint-controlplane", "warn", otlp.as_deref())
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
        let source = match args.source {
            SourceKind::Manifests => format!("manifests {}", args.manifests.display()),
            SourceKind::Kube => "the Kubernetes API".to_string(),
        };
        let running = setpoint_controlplane::serve::start(setpoint_controlplane::serve::ServeConfig {
            manifests: args.manifests,
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
            },
        })
        .await?;
        println!(
            "serving {source}: store {}, agents on {}, metrics on http://{}/metrics",
            args.database, running.agent_addr, running.metrics_addr
        );
        if let Some(admin) = running.admin_addr {
            match &args.admin_token_file {
                Some(_) => println!("admin API on {admin}"),
                None => println!(
                    "admin API on {admin}, refusing every call: no --admin-token-file"
                ),
            }
        }
        let mut commits = running.commits.subscribe();
        loop {
            tokio::select! {
                c = commits.recv() => if let Ok(c) = c {
                    println!("revision {}: {} objects, {} nodes changed", c.revision.0, c.objects_changed, c.nodes_changed);
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let _telemetry = init_logs(None)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let converged = runtime.block_on(setpoint_controlplane::demo::run(
        setpoint_controlplane::demo::DemoConfig {
            manifests: args.manifests,
            database: args.database,
            compute: args.compute.config(),
            exit_when_converged: args.exit_when_converged.map(std::time::Duration::from_secs),
        },
    ))?;
    anyhow::ensure!(converged, "the agents did not converge");
    Ok(())
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => crate::render::run(&args),
        Command::Serve(args) => serve(args),
        Command::Demo(args) => demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
