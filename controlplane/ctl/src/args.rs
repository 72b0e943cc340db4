//! The command line: global flags, the verbs and their flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
pub struct Cli {
    /// The control plane's admin API: http://HOST:PORT (loopback), or
    /// https://HOST:PORT with --ca.
    #[arg(long, default_value = "http://127.0.0.1:7444", env = "SETPOINT_SERVER")]
    pub server: String,
    /// File with the bearer token to present.
    #[arg(long, env = "SETPOINT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) the admin API's certificate must chain
    /// to; required with an https:// --server.
    #[arg(long, env = "SETPOINT_CA")]
    pub ca: Option<PathBuf>,
    /// The name the admin API's certificate must carry (default: the host
    /// of --server; set it when reaching the API through a port-forward).
    #[arg(long, env = "SETPOINT_SERVER_NAME", requires = "ca")]
    pub server_name: Option<String>,
    /// Output: human tables or JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
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
    Explain(ExplainArgs),
}

// No doc comment: the `Explain` variant's is the verb's help.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[arg(long)]
    pub node: String,
    /// Default: the head.
    #[arg(long)]
    pub revision: Option<u64>,
    /// tcp, udp or sctp.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// IP or IP:PORT (`[v6]:port`).
    #[arg(long)]
    pub src: String,
    /// IP:PORT (`[v6]:port`).
    #[arg(long)]
    pub dst: String,
    /// Where the packet comes from: pod, outside or node.
    #[arg(long, default_value = "pod")]
    pub from: String,
}
