//! `setpoint-demo`: the control plane serves the example manifests from an
//! SQLite file, with one real agent per example node over loopback gRPC.
//! It lives apart from both binaries because it is the one program that
//! runs both sides.

mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use setpoint_controlplane::args::ComputeArgs;

#[derive(Parser, Debug)]
#[command(
    name = "setpoint-demo",
    version,
    about = "The whole Setpoint system on this machine: the example manifests served from SQLite, one real agent per example node"
)]
struct DemoArgs {
    #[arg(long, default_value = "deploy/examples", env = "SETPOINT_MANIFESTS")]
    manifests: PathBuf,
    #[arg(long, default_value = "sqlite://setpoint-demo.db?mode=rwc")]
    database: String,
    /// Exit 0 once every agent acked the newest revision, 1 after this many
    /// seconds without.
    #[arg(long)]
    exit_when_converged: Option<u64>,
    #[command(flatten)]
    compute: ComputeArgs,
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let _telemetry = setpoint_runtime::telemetry::init("setpoint-demo", "warn", None)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let converged = runtime.block_on(run::run(run::DemoConfig {
        manifests: args.manifests,
        database: args.database,
        compute: args.compute.config(),
        exit_when_converged: args.exit_when_converged.map(std::time::Duration::from_secs),
    }))?;
    anyhow::ensure!(converged, "the agents did not converge");
    Ok(())
}

fn main() -> ExitCode {
    match demo(DemoArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
