//! Every Service behaviour on real packets: `setpoint-service-matrix` over
//! `integration/scenarios/services` in the Debian kernel VM, with the real
//! control plane streaming to one real agent per node. Every probe must
//! pass; the message holds every printed line.

use std::path::{Path, PathBuf};
use std::process::Command;

use setpoint_integration::binaries::workspace_binary;

#[test]
fn every_service_behaviour_on_real_packets() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the matrix boots qemu through integration/vm/prepare: run as root (scripts/test)"
    );
    let matrix = PathBuf::from(env!("CARGO_BIN_EXE_setpoint-service-matrix"));
    // The control plane and the agent are other packages' binaries.
    let bin_dir = workspace_binary("setpoint-controlplane")
        .parent()
        .expect("binaries in target/<profile>")
        .to_path_buf();
    assert!(
        bin_dir.join("setpoint-agent").exists(),
        "setpoint-agent built"
    );

    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/services");
    let keep = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(&matrix)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--keep")
        .arg(keep.path())
        .arg(&scenarios)
        .output()
        .expect("run setpoint-service-matrix");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.contains(" passed, ") && l.contains(" failed"))
        .unwrap_or_else(|| panic!("no `N passed, M failed` line:\n{stdout}\n{stderr}"));
    let logs = |name: &str| std::fs::read_to_string(keep.path().join(name)).unwrap_or_default();
    assert!(
        summary.contains(" 0 failed") && out.status.success(),
        "{summary}\n{stdout}\n{stderr}\ncontrol plane log (tail):\n{}",
        logs("logs/controlplane.log")
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let passed: usize = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 0, "no probe ran: {summary}");
}
