//! `setpoint-controlplane`: see `cli.rs` for the commands.

mod cli;
mod render;

fn main() -> std::process::ExitCode {
    cli::run()
}
