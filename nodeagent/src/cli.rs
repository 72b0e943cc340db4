//! The one place that owns the command line.
//!
//! Today the agent reads and compares states offline; applying them to the
//! kernel and streaming from the control plane come with the agent and
//! running-system work.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use setpoint_dataplane::{Diff, NodeDataplane, diff};

#[derive(Parser, Debug)]
#[command(name = "setpoint-agent", version, about = "Setpoint node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a state file (as `setpoint-controlplane render --format json`
    /// writes it): its digest matches its content and it is publishable.
    Check {
        #[arg(long)]
        state: PathBuf,
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
        Command::Check { state } => run_check(&state),
        Command::Diff { from, to, output } => (|| {
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
