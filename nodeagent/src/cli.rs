//! The one place that owns the command line.
//!
//! `apply` takes the kernel to a state file once and verifies it (tests,
//! and an operator recovering a node by hand); `check` and `diff` work on
//! state files offline. Streaming from the control plane comes with the
//! running-system work.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use setpoint_dataplane::{Diff, NodeDataplane, diff};

use setpoint_agent::apply::{Applier, Base, kernel_view};
use setpoint_agent::node_addresses::NodePortAddresses;
use setpoint_agent::plan::{Op, phase};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;

#[derive(Parser, Debug)]
#[command(name = "setpoint-agent", version, about = "Setpoint node agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// Without a command: stream from the control plane and apply.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// This node's name, as the control plane knows it.
    #[arg(long, env = "SETPOINT_NODE")]
    node: Option<String>,
    /// The control plane's agent endpoint; one per replica when there are
    /// several (repeated, or comma-separated): the agent starts at a
    /// random one and moves to the next whenever its stream ends.
    #[arg(
        long,
        env = "SETPOINT_CONTROLPLANE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7443"
    )]
    controlplane: Vec<String>,
    /// Apply inside this named network namespace (`ip netns`).
    #[arg(long)]
    netns: Option<String>,
    /// Plan and print, touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the last applied revision and state are kept across restarts.
    #[arg(long, env = "SETPOINT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep virtual servers in memory instead of the kernel's IPVS (for
    /// demos on kernels without IPVS: Service traffic is NOT forwarded).
    #[arg(long)]
    simulate_ipvs: bool,
    /// How often the kernel is re-read and drift repaired, in seconds.
    #[arg(long, default_value_t = 30)]
    drift_interval: u64,
    /// Prometheus metrics, /healthz and /readyz.
    #[arg(long, env = "SETPOINT_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// This agent's certificate (PEM), naming the node as a SAN DNS name;
    /// with --tls-key and --ca the stream uses mTLS (an https:// URL).
    /// Read again at every reconnect.
    #[arg(long, env = "SETPOINT_TLS_CERT", requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SETPOINT_TLS_KEY", requires_all = ["tls_cert", "ca"])]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) the control plane's certificate must chain to.
    #[arg(long, env = "SETPOINT_CA", requires_all = ["tls_cert", "tls_key"])]
    ca: Option<PathBuf>,
    /// The name to expect in the control plane's certificate (default: the
    /// URL's host).
    #[arg(long, env = "SETPOINT_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Export trace spans over OTLP/gRPC to this collector (default:
    /// $OTEL_EXPORTER_OTLP_ENDPOINT; none: no export).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Fail-safe: losing the control plane within this many seconds of
    /// applying a revision (having reached it with the state before) and
    /// not getting it back within --failsafe-after returns the node to
    /// that state. 0 turns the fail-safe off (always fail static).
    #[arg(long, env = "SETPOINT_FAILSAFE_WINDOW", default_value_t = 120)]
    failsafe_window: u64,
    /// Fail-safe: seconds without the control plane before the revert.
    #[arg(long, env = "SETPOINT_FAILSAFE_AFTER", default_value_t = 30)]
    failsafe_after: u64,
    /// kube-proxy's proxy health server: `/healthz` (503 also while the
    /// node is being deleted or drained) and `/livez`, on this address
    /// (`[::]:PORT`: dual-stack); empty: not served. Inside --netns.
    #[arg(
        long,
        env = "SETPOINT_HEALTHZ_BIND_ADDRESS",
        default_value = "0.0.0.0:10256"
    )]
    healthz_bind_address: BindAddress,
    /// Seconds a received revision may wait unapplied (or, after start,
    /// for a first one) before /healthz, /livez and the health-check ports
    /// say the proxy is unhealthy (kube-proxy's: twice its 30 s sync).
    #[arg(long, env = "SETPOINT_HEALTHZ_STALE_AFTER", default_value_t = 60)]
    healthz_stale_after: u64,
    /// Serve each `LoadBalancer` + `externalTrafficPolicy: Local`
    /// Service's healthCheckNodePort (on all addresses, inside --netns;
    /// never in a dry run). `false`: leave them to another proxy.
    #[arg(long, env = "SETPOINT_HEALTH_CHECK_PORTS", default_value_t = true, action = clap::ArgAction::Set)]
    health_check_ports: bool,
    /// Which addresses serve NodePorts (kube-proxy's flag): `primary` (the
    /// default) the Node object's, as the control plane sends them; `all`
    /// every address of this node's interfaces but loopback, link-local and
    /// the service interface's; or comma-separated CIDRs, those inside them
    /// (a family no CIDR names: all of it). Followed as addresses change.
    #[arg(long, env = "SETPOINT_NODEPORT_ADDRESSES", default_value = "primary")]
    nodeport_addresses: NodePortAddresses,
}

/// A listen address, or none (the empty string).
#[derive(Clone, Copy, Debug)]
struct BindAddress(Option<std::net::SocketAddr>);

impl std::str::FromStr for BindAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<BindAddress, String> {
        if s.trim().is_empty() {
            return Ok(BindAddress(None));
        }
        s.parse()
            .map(|a| BindAddress(Some(a)))
            .map_err(|_| format!("{s:?} is not IP:PORT (e.g. 0.0.0.0:10256, [::]:10256) nor empty"))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a state file (as `setpoint-controlplane render --format json`
    /// writes it): its digest matches its content and it is publishable.
    Check {
        #[arg(long)]
        state: PathBuf,
    },
    /// Remove everything Setpoint put in the kernel: its sets, chains and
    /// jumps, and (where the kernel has IPVS) every IPVS virtual server —
    /// the IPVS table has no owner marks, Setpoint owns it on its nodes, as
    /// kube-proxy does — and the addresses on its interface.
    Cleanup {
        #[arg(long)]
        netns: Option<String>,
    },
    /// Take the kernel to a state file (as `render --format json` writes
    /// it): diff against what the kernel holds now, apply, read back and
    /// verify. Exits 0 only when the kernel matches.
    Apply {
        #[arg(long)]
        state: PathBuf,
        /// Apply inside this named network namespace (`ip netns`).
        #[arg(long)]
        netns: Option<String>,
        /// Plan and print the operations; touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the typed changes that turn one state file into another.
    Diff {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn read_state(path: &Path) -> anyhow::Result<NodeDataplane> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read state file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid state", path.display()))
}

fn run_check(path: &Path) -> anyhow::Result<bool> {
    let state = read_state(path)?;
    let problems = state.validate();
    println!("{} atoms, digest {}", state.atom_count(), state.digest());
    for p in &problems {
        println!("invalid: {p}");
    }
    Ok(problems.is_empty())
}

fn run_agent(args: RunArgs) -> anyhow::Result<bool> {
    use setpoint_agent::client::{Agent, AgentOptions};
    let otlp = setpoint_runtime::telemetry::endpoint(args.otlp_endpoint.clone());
    let _telemetry = setpoint_runtime::telemetry::init("setpoint-agent", "info", otlp.as_deref())?;
    let Some(node) = args.node else {
        anyhow::bail!("--node is required (or a command: apply, check, diff)");
    };
    if args.simulate_ipvs {
        eprintln!(
            "warning: --simulate-ipvs: virtual servers are kept in memory only; this node will NOT forward Service traffic"
        );
    }
    let options = AgentOptions {
        node,
        controlplanes: args.controlplane,
        target: Target { netns: args.netns },
        dry_run: args.dry_run,
        state_dir: args.state_dir,
        ipvs: if args.simulate_ipvs {
            IpvsMode::Simulated
        } else {
            IpvsMode::Kernel
        },
        drift_interval: std::time::Duration::from_secs(args.drift_interval.max(1)),
        tls: match (args.tls_cert, args.tls_key, args.ca) {
            (Some(cert), Some(key), Some(ca)) => Some(setpoint_agent::client::AgentTls {
                cert,
                key,
                ca,
                server_name: args.tls_server_name,
            }),
            _ => None,
        },
        failsafe: (args.failsafe_window > 0).then(|| setpoint_agent::client::FailsafeConfig {
            window: std::time::Duration::from_secs(args.failsafe_window),
            after: std::time::Duration::from_secs(args.failsafe_after),
        }),
        node_port_addresses: args.nodeport_addresses,
        health: setpoint_agent::health::HealthConfig {
            stale_after: std::time::Duration::from_secs(args.healthz_stale_after.max(1)),
            proxy_listen: args.healthz_bind_address.0,
            service_ip: args
                .health_check_ports
                .then_some(setpoint_agent::health::listen::ALL_ADDRESSES),
            limits: setpoint_agent::health::Limits::default(),
        },
        ..AgentOptions::new(String::new(), String::new())
    };
    setpoint_agent::client::check_transport(&options)?;
    if let Some(tls) = &options.tls {
        // Missing files at start are a mistake, not a rotation under way.
        for path in [&tls.cert, &tls.key, &tls.ca] {
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        }
    }
    if options.tls.is_none() {
        eprintln!(
            "WARNING: no --tls-cert/--tls-key/--ca: plaintext to a loopback control plane, without identity; development only"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let agent = Agent::new(options);
        if let Some(addr) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(setpoint_runtime::http::serve(
                agent.metrics.clone(),
                listener,
            ));
        }
        agent.run().await;
        anyhow::Ok(())
    })?;
    Ok(true)
}

fn run_cleanup(netns: Option<String>) -> anyhow::Result<bool> {
    let target = Target { netns };
    let services = setpoint_agent::services::for_target(&target, IpvsMode::Kernel);
    let mut applier = Applier::new(target, services);
    let (report, _) = applier.apply(Base::Kernel, &NodeDataplane::default())?;
    println!(
        "removed {} kernel objects in {} operations; nothing of Setpoint's is left",
        report.changes, report.operations
    );
    Ok(true)
}

fn run_apply(path: &Path, netns: Option<String>, dry_run: bool) -> anyhow::Result<bool> {
    let state = read_state(path)?;
    let problems = state.validate();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("invalid: {p}");
        }
        anyhow::bail!("{} is not publishable; nothing applied", path.display());
    }
    let target = Target { netns };
    let services = setpoint_agent::services::for_target(&target, IpvsMode::Kernel);
    let mut applier = Applier::new(target, services);
    if dry_run {
        if let Err(e) = kernel_view(&state).and_then(|goal| applier.refuse_unsupported(&goal)) {
            println!("note: a real apply here would fail: {e}");
        }
        let ops = applier.plan(Base::Kernel, &state)?.ops;
        for op in &ops {
            println!("phase {} {}", phase(op), describe_op(op));
        }
        println!("dry run: {} operations, nothing applied", ops.len());
        return Ok(true);
    }
    let (report, _) = applier.apply(Base::Kernel, &state)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "applied {} changes in {} operations in {:.1?}; the kernel holds digest {}",
        report.changes, report.operations, report.duration, report.digest
    );
    Ok(true)
}

/// One line per operation, short enough to read (set entries counted).
fn describe_op(op: &Op) -> String {
    match op {
        Op::AddEntries { set, entries } => format!("add {} entries to {set}", entries.len()),
        Op::DelEntries { set, entries } => format!("delete {} entries from {set}", entries.len()),
        Op::RebuildSet { name, entries, .. } => {
            format!(
                "rebuild {name} with {} entries and swap it in",
                entries.len()
            )
        }
        Op::Iptables {
            family,
            table,
            replace,
            delete,
            add_jumps,
            del_jumps,
        } => format!(
            "{} {}: replace {} chains, delete {}, jumps +{} -{}",
            setpoint_agent::iptables::restore_tool(*family),
            table.as_str(),
            replace.len(),
            delete.len(),
            add_jumps.len(),
            del_jumps.len()
        ),
        other => format!("{other:?}"),
    }
}

fn print_diff(d: &Diff, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(d)?),
        Output::Text => {
            for change in &d.changes {
                println!("{}", serde_json::to_string(change)?);
            }
            println!("{} changes, {} atoms", d.changes.len(), d.size());
        }
    }
    Ok(())
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_agent(cli.run),
        Some(Command::Check { state }) => run_check(&state),
        Some(Command::Cleanup { netns }) => run_cleanup(netns),
        Some(Command::Apply {
            state,
            netns,
            dry_run,
        }) => run_apply(&state, netns, dry_run),
        Some(Command::Diff { from, to, output }) => (|| {
            let (a, b) = (read_state(&from)?, read_state(&to)?);
            print_diff(&diff(&a, &b), output)?;
            Ok(true)
        })(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_endpoints_are_repeated_or_comma_separated() {
        let endpoints = |args: &[&str]| -> Vec<String> {
            let mut argv = vec!["setpoint-agent", "--node", "n1"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).expect("parses").run.controlplane
        };
        assert_eq!(endpoints(&[]), ["http://127.0.0.1:7443"]);
        let two = ["https://cp-a:7443", "https://cp-b:7443"];
        assert_eq!(
            endpoints(&["--controlplane", "https://cp-a:7443,https://cp-b:7443"]),
            two
        );
        assert_eq!(
            endpoints(&[
                "--controlplane",
                "https://cp-a:7443",
                "--controlplane",
                "https://cp-b:7443"
            ]),
            two
        );
    }
}
