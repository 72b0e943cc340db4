//! The Service matrix: every Service behaviour on real packets, in a
//! cluster of network namespaces inside the Debian kernel VM
//! ([`crate::vm`]), with the real `setpoint-controlplane serve` streaming to
//! one real `setpoint-agent` per node.
//!
//! The host side ([`run_in_vm`]) boots ONE VM for the whole run with the
//! scenario files, this binary, the control plane and the agent; the same binary in guest mode ([`guest::run`]) builds the
//! cluster and runs the steps, writing one line per probe
//! (`PASS|FAIL scenario/step probe: expected X, got Y; explain on NODE: Z`)
//! and `N passed, M failed` to `/out/results.txt`, which the host prints.
//! Scenario data: [`scenario`].

pub mod guest;
pub mod probe;
pub mod scenario;
pub mod topology;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vm::{Vm, VmJob};

/// Where the guest finds the scenarios.
const GUEST_SCENARIOS: &str = "/scenarios";
/// Under one emulated CPU the whole matrix takes a few minutes; this bounds
/// a run that hangs.
pub const VM_TIMEOUT: Duration = Duration::from_secs(900);
/// The guest runs three agents, the control plane and its SQLite store.
pub const VM_MEMORY_MIB: u32 = 1024;

/// What a run printed and whether every probe passed.
pub struct MatrixRun {
    pub passed: bool,
    /// `results.txt`: the probe lines, the step timings, the summary.
    pub results: String,
    /// Where the guest's logs (control plane, agents) were saved.
    pub logs: PathBuf,
}

/// The binaries the guest needs, from `dir` (the cargo target directory's
/// `debug/`): the control plane and the agent.
pub fn binaries_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for name in ["setpoint-controlplane", "setpoint-agent"] {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(format!(
                "no {} (build it first: cargo build -p setpoint-controlplane -p setpoint-agent -p setpoint-integration --bins)",
                path.display()
            ));
        }
        found.push(path);
    }
    Ok(found)
}

fn host_tool(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Boots the VM and runs the matrix at `scenarios` with `matrix_binary`
/// (this program, for guest mode) and the Setpoint `binaries`; the guest's
/// `/out` is saved under `keep`.
pub fn run_in_vm(
    scenarios: &Path,
    matrix_binary: &Path,
    binaries: &[PathBuf],
    keep: &Path,
) -> anyhow::Result<MatrixRun> {
    // Parse on the host first: a broken scenario fails before the boot.
    let matrix = scenario::load(scenarios)?;
    anyhow::ensure!(
        !matrix.scenarios.is_empty(),
        "no scenarios under {}",
        scenarios.display()
    );
    let vm = Vm::prepare()?;
    let (root, only) = if scenarios.join(scenario::CLUSTER_DIR).is_dir() {
        (scenarios.to_path_buf(), None)
    } else {
        let parent = scenarios
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no parent", scenarios.display()))?;
        (
            parent.to_path_buf(),
            scenarios
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        )
    };
    let mut files = Vec::new();
    collect_files(&root, &root, &mut files, only.as_deref())?;
    let mut all = vec![matrix_binary.to_path_buf()];
    all.extend(binaries.iter().cloned());
    // `ip netns` (busybox's ip has none); conntrack for the agent's UDP cleanup.
    all.push(
        host_tool(&["/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"])
            .ok_or_else(|| anyhow::anyhow!("the host has no iproute2 `ip`"))?,
    );
    all.extend(host_tool(&["/usr/sbin/conntrack", "/sbin/conntrack"]));
    let name = matrix_binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = match &only {
        Some(one) => format!("{GUEST_SCENARIOS}/{one}"),
        None => GUEST_SCENARIOS.to_string(),
    };
    let job = VmJob {
        files,
        binaries: all,
        script: format!("/usr/local/bin/{name} guest {target} /out\n"),
        timeout: VM_TIMEOUT,
    };
    // The guest's probe lines as they come; results.txt has them all.
    let out = vm.run_sized(&job, VM_MEMORY_MIB, |line| {
        line.starts_with("PASS ") || line.starts_with("FAIL ") || line.starts_with("# ")
    })?;
    std::fs::create_dir_all(keep)?;
    for (path, bytes) in &out.files {
        let to = keep.join(path);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&to, bytes)?;
    }
    std::fs::write(keep.join("console.txt"), &out.console)?;
    let results = out
        .files
        .get("results.txt")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| format!("the guest wrote no results.txt; console:\n{}", out.console));
    let mut results = results;
    if out.exit_code != 0 && !results.lines().any(|l| l.contains(" passed, ")) {
        results.push_str(&format!(
            "the guest stopped (exit {}) before the end; console tail:\n{}\n",
            out.exit_code,
            out.console
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    Ok(MatrixRun {
        passed: out.exit_code == 0,
        results,
        logs: keep.to_path_buf(),
    })
}

fn collect_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(PathBuf, String)>,
    only: Option<&str>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        if dir == root
            && let Some(one) = only
            && rel != one
            && rel != scenario::CLUSTER_DIR
        {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out, only)?;
        } else if path.is_file() {
            out.push((path.clone(), format!("{GUEST_SCENARIOS}/{rel}")));
        }
    }
    Ok(())
}
