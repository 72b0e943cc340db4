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

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => crate::render::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
