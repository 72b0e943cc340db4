//! `setpointctl`: revisions, node states, diffs, rollout status, rollback,
//! pause, resume, explain and ClusterNetworkPolicy realization over the control plane's admin API
//! (`proto/setpoint/v1/admin.proto`). Human tables by default, `-o json`
//! for scripts; exit codes in `setpointctl --help`.
//!
//! ```text
//!  args (flags) ──▶ connect (TLS, token) ──▶ verbs::<verb> (one admin call) ──▶ output (table | JSON)
//!                                                      └─ failure ──▶ exit status
//! ```

mod args;
mod connect;
mod failure;
mod output;
mod verbs;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Verb};
use crate::failure::Failure;

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut client = connect::connect(&cli).await?;
    let (client, output) = (&mut client, cli.output);
    match cli.verb {
        Verb::Revisions { limit, before } => verbs::revisions(client, output, limit, before).await,
        Verb::Show {
            node,
            revision,
            format,
        } => verbs::show(client, output, node, revision, format).await,
        Verb::Diff { node, from, to } => verbs::diff(client, output, node, from, to).await,
        Verb::Status {
            watch: false,
            interval_ms: _,
        } => verbs::status(client, output).await,
        Verb::Status {
            watch: true,
            interval_ms,
        } => verbs::watch(client, output, interval_ms).await,
        Verb::Rollback { to, nodes, reason } => {
            verbs::rollback(client, output, to, nodes, reason).await
        }
        Verb::Pause { nodes, all, reason } => {
            verbs::pause(client, output, nodes, all, reason).await
        }
        // With --all, `nodes` is empty.
        Verb::Resume { nodes, all: _ } => verbs::resume(client, output, nodes).await,
        Verb::Explain(args) => verbs::explain(client, output, args).await,
        Verb::ClusterPolicies { name } => verbs::cluster_policies(client, output, name).await,
    }
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
