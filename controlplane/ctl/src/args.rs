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
    about = "Operate a Setpoint control plane: revisions, show, diff, status, rollback, pause, resume, explain, cluster-policies",
    after_help = EXIT_CODES
)]
/// Global flags may come before or after the verb, as with kubectl
/// (`setpointctl status -o json`).
pub struct Cli {
    /// The control plane's admin API: http://HOST:PORT (loopback), or
    /// https://HOST:PORT with --ca.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:7444",
        env = "SETPOINT_SERVER"
    )]
    pub server: String,
    /// File with the bearer token to present.
    #[arg(long, global = true, env = "SETPOINT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) the admin API's certificate must chain
    /// to; required with an https:// --server.
    #[arg(long, global = true, env = "SETPOINT_CA")]
    pub ca: Option<PathBuf>,
    /// The name the admin API's certificate must carry (default: the host
    /// of --server; set it when reaching the API through a port-forward).
    // Not `requires = "ca"`: clap checks that per command level, so
    // `--ca F status --server-name N` would be refused; `connect` checks it.
    #[arg(long, global = true, env = "SETPOINT_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Output: human tables or JSON for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a call after this many seconds.
    #[arg(long, global = true, default_value_t = 30)]
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
    /// Per node: applied revision, digest, last result, last contact; fleet
    /// summary; the newest revisions' time until 50%, 99% and 100% of the
    /// nodes acked.
    Status {
        /// Follow the newest revision live until every counted node acked
        /// it (or Ctrl-C): a progress bar on a terminal, a line per change
        /// otherwise (a JSON object per line with -o json).
        #[arg(long)]
        watch: bool,
        /// How often --watch asks, in milliseconds.
        #[arg(long, default_value_t = 500, requires = "watch")]
        interval_ms: u64,
    },
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
    /// Per ClusterNetworkPolicy: tier, priority, the revision its current
    /// spec is in force from, and how many nodes enforce it (an ack of that
    /// revision or newer, not pinned older, no nack); the others named.
    #[command(visible_alias = "cnp")]
    ClusterPolicies {
        /// Only this policy.
        #[arg(long)]
        name: Option<String>,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("setpointctl").chain(argv.iter().copied()))
    }

    #[test]
    fn global_flags_are_accepted_before_and_after_the_verb() {
        let cases: &[(&[&str], Output, &str, u64)] = &[
            (&["status"], Output::Table, "http://127.0.0.1:7444", 30),
            (
                &["-o", "json", "status"],
                Output::Json,
                "http://127.0.0.1:7444",
                30,
            ),
            (
                &["status", "-o", "json"],
                Output::Json,
                "http://127.0.0.1:7444",
                30,
            ),
            (
                &[
                    "status",
                    "--output=json",
                    "--server",
                    "http://127.0.0.1:9",
                    "--timeout",
                    "5",
                ],
                Output::Json,
                "http://127.0.0.1:9",
                5,
            ),
            (
                &["--timeout", "7", "revisions", "--limit", "3", "-o", "json"],
                Output::Json,
                "http://127.0.0.1:7444",
                7,
            ),
        ];
        for (argv, output, server, timeout) in cases {
            let cli = parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.output, *output, "{argv:?}");
            assert_eq!(cli.server, *server, "{argv:?}");
            assert_eq!(cli.timeout, *timeout, "{argv:?}");
        }
    }

    #[test]
    fn status_watches_only_when_asked() {
        let cli = parse(&["status", "--watch", "-o", "json"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            cli.verb,
            Verb::Status {
                watch: true,
                interval_ms: 500
            }
        ));
        assert!(matches!(
            parse(&["status"]).map(|c| c.verb),
            Ok(Verb::Status { watch: false, .. })
        ));
        assert!(parse(&["status", "--interval-ms", "100"]).is_err());
    }

    #[test]
    fn verb_flags_stay_with_their_verb() {
        let cli = parse(&[
            "explain",
            "--node",
            "a",
            "--src",
            "10.0.0.1",
            "--dst",
            "10.96.0.1:80",
            "-o",
            "json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.output, Output::Json);
        assert!(
            matches!(cli.verb, Verb::Explain(ref a) if a.node == "a" && a.dst == "10.96.0.1:80")
        );
        // A verb's own flag before the verb is still a usage error.
        assert!(parse(&["--limit", "3", "revisions"]).is_err());
        let cli = parse(&["--ca", "/tmp/ca.pem", "status", "--server-name", "cp"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.server_name.as_deref(), Some("cp"));
        assert_eq!(cli.ca, Some(PathBuf::from("/tmp/ca.pem")));
    }
}
