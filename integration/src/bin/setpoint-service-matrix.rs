//! Every Service behaviour on real packets: see
//! `setpoint_integration::service_matrix`.
//!
//! ```text
//! cargo build -p setpoint-controlplane -p setpoint-agent -p setpoint-integration --bins
//! target/debug/setpoint-service-matrix integration/scenarios/services        # the whole matrix
//! target/debug/setpoint-service-matrix integration/scenarios/services/01-clusterip   # one scenario
//! ```
//!
//! Runs as root (it boots qemu through `integration/vm/prepare`); prints one
//! line per probe and `N passed, M failed`; exits 1 on any failure, 2 when
//! the run itself could not happen. The guest's logs are kept in
//! `--keep DIR` (default `$TMPDIR/setpoint-service-matrix`).

use std::path::PathBuf;
use std::process::ExitCode;

use setpoint_integration::service_matrix;

const USAGE: &str = "usage: setpoint-service-matrix [--keep DIR] [--bin-dir DIR] SCENARIO_DIR
       setpoint-service-matrix guest SCENARIO_DIR OUT_DIR   (inside the VM)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("guest") {
        let (Some(scenarios), Some(out)) = (args.get(1), args.get(2)) else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        return match service_matrix::guest::run(&PathBuf::from(scenarios), &PathBuf::from(out)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("setpoint-service-matrix guest: {e:#}");
                let _ = std::fs::write(PathBuf::from(out).join("error.txt"), format!("{e:#}\n"));
                ExitCode::from(2)
            }
        };
    }
    let mut keep = std::env::temp_dir().join("setpoint-service-matrix");
    let mut bin_dir = None;
    let mut scenarios = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keep" => keep = it.next().map(PathBuf::from).unwrap_or(keep),
            "--bin-dir" => bin_dir = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if scenarios.is_none() => scenarios = Some(PathBuf::from(a)),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(scenarios) = scenarios else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("setpoint-service-matrix: cannot find myself: {e}");
            return ExitCode::from(2);
        }
    };
    // The Setpoint binaries are built beside this one.
    let bin_dir = bin_dir.unwrap_or_else(|| me.parent().map(PathBuf::from).unwrap_or_default());
    let binaries = match service_matrix::binaries_in(&bin_dir) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("setpoint-service-matrix: {e}");
            return ExitCode::from(2);
        }
    };
    match service_matrix::run_in_vm(&scenarios, &me, &binaries, &keep) {
        Ok(run) => {
            // The probe lines were printed as the guest wrote them; the
            // failures again, and the summary, last.
            let failures: Vec<&str> = run
                .results
                .lines()
                .filter(|l| l.starts_with("FAIL "))
                .collect();
            if !failures.is_empty() {
                println!("failures:");
                for line in &failures {
                    println!("{line}");
                }
            }
            for line in run.results.lines().filter(|l| {
                !l.starts_with("PASS ") && !l.starts_with("FAIL ") && !l.starts_with("# ")
            }) {
                println!("{line}");
            }
            println!("guest logs and /out: {}", run.logs.display());
            if run.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("setpoint-service-matrix: {e:#}");
            ExitCode::from(2)
        }
    }
}
