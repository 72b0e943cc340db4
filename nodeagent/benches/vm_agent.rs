//! The real agent's footprint against a real kernel (issue 18, goal 5): in
//! the Debian kernel under qemu (IPVS; the host kernel has none), the real
//! `setpoint-agent` process streams a 10,000-Service × 5-endpoint node
//! state from a real control plane (`setpoint_controlplane::serve`, the
//! code behind `setpoint-controlplane serve`, on SQLite, reading the
//! synthetic cluster as manifest files), applies it with real IPVS, sets,
//! rules and addresses, and then takes one-endpoint deltas as manifest
//! files change. Measured on the agent's process, from `/proc/<pid>`:
//!
//! - resident memory (VmRSS, and VmHWM: the peak) after the cold apply
//!   and after the deltas, against the 64 MiB budget;
//! - the cold apply: agent started → snapshot acked, and the apply time
//!   the agent reports in its ack;
//! - CPU seconds per one-endpoint delta (the agent's own and its tools',
//!   `ipset` etc., waited for: utime + stime + cutime + cstime), every
//!   delta waited for until acked and recorded, less the idle rate
//!   (heartbeats, the drained-real-server reaper) measured before;
//! - the record write (the applied state written to `--state-dir` after
//!   the ack), from the agent's `setpoint_agent_record_duration_seconds`;
//!
//! beside kube-proxy's way, one process per kernel object: one `ipvsadm`
//! per virtual and real server (the first N virtual servers of the
//! kernel's own table, extrapolated) and one `ipset add` per entry, and
//! what one one-endpoint delta costs that way (the delta's kernel
//! operations, planned on the host, each priced at one process).
//!
//! The control plane runs in this benchmark's own process in the guest
//! (this binary again, `guest` mode), so the agent's figures are its
//! process's alone. Everything under qemu TCG software emulation (one
//! vCPU) runs several times slower than native: CPU seconds and times are
//! emulated ones; the same whole-state check timed on the host and in the
//! guest gives the factor. Memory is not affected.
//!
//! Run as root (the VM's cache is prepared with apt):
//! `cargo bench -p setpoint-agent --bench vm_agent`; sizes from
//! SETPOINT_BENCH_SERVICES (10,000) / _ENDPOINTS (5) / _DELTAS (50) /
//! _BASELINE_VIRTUAL_SERVERS (300) / _BASELINE_ENTRIES (1,000); the guest's
//! deadline from SETPOINT_BENCH_VM_TIMEOUT (seconds), its memory from
//! SETPOINT_BENCH_VM_MIB.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use setpoint_agent::apply::{Applier, Base, Verified, checked_view};
use setpoint_agent::local_state::{Applied, Journal, LocalState, Written};
use setpoint_agent::plan::Op;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_integration::measure::env_or;
use setpoint_integration::vm::{Vm, VmJob};

#[path = "common/describe.rs"]
mod describe;
#[path = "../../integration/synthetic_manifests.rs"]
mod synthetic_manifests;

/// The cluster: three nodes, one zone, as `benches/apply.rs` and
/// `benches/vm_apply.rs` build it.
fn shape() -> ClusterShape {
    let services = env_or("SETPOINT_BENCH_SERVICES", 10_000);
    ClusterShape {
        nodes: 3,
        services,
        endpoints: services * env_or("SETPOINT_BENCH_ENDPOINTS", 5),
        zones: 1,
    }
}

const GUEST_MANIFESTS: &str = "/in/manifests";
const WORK: &str = "/run/bench";
/// The settings the guest takes from the host.
const FORWARDED: &[&str] = &[
    "SETPOINT_BENCH_SERVICES",
    "SETPOINT_BENCH_ENDPOINTS",
    "SETPOINT_BENCH_DELTAS",
    "SETPOINT_BENCH_BASELINE_VIRTUAL_SERVERS",
    "SETPOINT_BENCH_BASELINE_ENTRIES",
];

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("guest") {
        match measure(&Where::guest()) {
            Ok(figures) => {
                if let Err(e) = std::fs::write("/out/figures.txt", figures) {
                    eprintln!("guest: /out/figures.txt: {e}");
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("guest: {e:#}");
                std::process::exit(1);
            }
        }
    } else if std::env::var_os("SETPOINT_BENCH_ON_HOST").is_some() {
        on_host();
    } else {
        host();
    }
}

/// Where the measurement runs: in the VM (the real kernel, the baselines
/// after) or on this host (a dry-run agent: no IPVS here; for profiling
/// its memory, e.g. under heaptrack).
struct Where {
    manifests: PathBuf,
    work: PathBuf,
    /// Where the agent's log goes.
    out: PathBuf,
    agent: PathBuf,
    dry_run: bool,
    /// A program the agent runs under (`heaptrack`), with its arguments.
    wrapper: Vec<String>,
}

impl Where {
    fn guest() -> Where {
        Where {
            manifests: PathBuf::from(GUEST_MANIFESTS),
            work: PathBuf::from(WORK),
            out: PathBuf::from("/out"),
            agent: PathBuf::from("setpoint-agent"),
            dry_run: false,
            wrapper: Vec::new(),
        }
    }
}

/// `SETPOINT_BENCH_ON_HOST=1`: the same measurement on this host with a
/// dry-run agent (the state held, planned from, recorded; no kernel), run
/// under SETPOINT_BENCH_AGENT_WRAPPER when set (e.g. `heaptrack -o
/// /tmp/agent`: where the agent's memory goes).
fn on_host() {
    let shape = shape();
    let dir = tempfile::tempdir().expect("temporary directory");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests directory");
    synthetic_manifests::write_cluster(&manifests, &shape);
    let place = Where {
        manifests,
        work: dir.path().join("work"),
        out: dir.path().to_path_buf(),
        agent: PathBuf::from(env!("CARGO_BIN_EXE_setpoint-agent")),
        dry_run: true,
        wrapper: std::env::var("SETPOINT_BENCH_AGENT_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
    };
    let figures = measure(&place).unwrap_or_else(|e| panic!("{e:#}"));
    let _ = std::fs::copy(
        dir.path().join("agent.log"),
        std::env::temp_dir().join("setpoint-host-agent.log"),
    );
    println!("dry-run agent on this host:\n{figures}");
}

// ---------------------------------------------------------------- host --

/// What one one-endpoint delta changes in the kernel, by kube-proxy's
/// process count: IPVS operations (one `ipvsadm` each), set entries (one
/// `ipset` each), iptables restores.
#[derive(Default)]
struct DeltaOps {
    ipvs: usize,
    entries: usize,
    iptables: usize,
    total: usize,
}

fn delta_ops(ops: &[Op]) -> DeltaOps {
    let mut d = DeltaOps {
        total: ops.len(),
        ..DeltaOps::default()
    };
    for op in ops {
        match op {
            Op::AddEntries { entries, .. } | Op::DelEntries { entries, .. } => {
                d.entries += entries.len()
            }
            Op::RebuildSet { entries, .. } => d.entries += entries.len(),
            Op::CreateSet { .. } | Op::DestroySet { .. } => d.entries += 1,
            Op::Iptables { .. } => d.iptables += 1,
            _ => d.ipvs += 1,
        }
    }
    d
}

fn host() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration/vm/prepare installs qemu and fills /var/cache/setpoint-vm: run as root"
    );
    let shape = shape();
    let deltas = env_or("SETPOINT_BENCH_DELTAS", 50);
    let timeout = Duration::from_secs(env_or("SETPOINT_BENCH_VM_TIMEOUT", 1_800) as u64);
    let memory = u32::try_from(env_or("SETPOINT_BENCH_VM_MIB", 2_048)).unwrap_or(2_048);

    // The node's state and one one-endpoint successor, on the host: what
    // the delta changes in the kernel, and the native time of a check the
    // guest times too.
    let started = Instant::now();
    let node = synthetic::node_name(0);
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(&shape) {
        index.upsert(object);
    }
    index.commit();
    let state = index.node_state(&node).expect("node 0 exists");
    index.upsert(synthetic::slice(7 % shape.services.max(1), &shape, 1));
    index.commit();
    let successor = index.node_state(&node).expect("node 0 exists");
    let held = Verified::check(1, state.clone()).expect("a valid state");
    let plan = Applier::dry_run()
        .plan(Base::Held(&held), &successor)
        .expect("plan of a one-endpoint delta");
    let one = delta_ops(&plan.ops);
    let check_native = min_time(3, || {
        checked_view(&state).expect("valid");
    });
    // The record write natively, on this machine's disk (fsync): the
    // whole state (a new journal's base) and a one-endpoint delta's frame
    // appended to it.
    let dir = tempfile::tempdir().expect("temporary directory");
    let local = LocalState::new(dir.path().join("agent"));
    let applied = |revision: u64, s: &setpoint_dataplane::NodeDataplane| Applied {
        node: node.clone(),
        revision,
        digest: s.digest(),
        applied_at: 0,
    };
    let record_native = min_time(3, || {
        local
            .save_with_state(&applied(1, &state), &state)
            .expect("record");
    });
    let record_bytes = dir_bytes(local.dir());
    let mut journal = Journal::new(local.clone());
    journal.record(&applied(1, &state), &state).expect("base");
    let mut frame_bytes = 0;
    let mut revision = 1;
    let frame_native = min_time(9, || {
        revision += 1;
        // Back and forth between the two states: a frame each time.
        let s = if revision % 2 == 0 {
            &successor
        } else {
            &state
        };
        match journal.record(&applied(revision, s), s).expect("frame") {
            Written::Frame(bytes) => frame_bytes = bytes,
            Written::Base(_) => panic!("a one-endpoint record rewrote the base"),
        }
    });
    drop(journal);
    let summary = describe::describe(&state);
    let entries = summary.entries;
    println!(
        "state of {node} ({} services × {} endpoints): {}",
        shape.services,
        shape.endpoints / shape.services.max(1),
        summary.text,
    );
    println!(
        "one-endpoint delta: {} kernel operations ({} IPVS, {} set entries, {} iptables restores)",
        one.total, one.ipvs, one.entries, one.iptables
    );
    drop(plan);
    drop((held, index));

    // The cluster as manifest files for the guest's control plane.
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests directory");
    synthetic_manifests::write_cluster(&manifests, &shape);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&manifests).expect("manifests") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        files.push((path, format!("{GUEST_MANIFESTS}/{name}")));
    }
    println!(
        "inputs built in {:.1?} ({} manifest files)",
        started.elapsed(),
        files.len()
    );

    let mut binaries = vec![
        std::env::current_exe().expect("this benchmark's binary"),
        PathBuf::from(env!("CARGO_BIN_EXE_setpoint-agent")),
    ];
    // The agent clears removed UDP real servers' conntrack entries.
    if Path::new("/usr/sbin/conntrack").is_file() {
        binaries.push(PathBuf::from("/usr/sbin/conntrack"));
    }
    let name = binaries[0]
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let mut script = String::new();
    for var in FORWARDED {
        if let Ok(v) = std::env::var(var) {
            writeln!(script, "export {var}='{v}'").expect("write");
        }
    }
    writeln!(script, "/usr/local/bin/{name} guest").expect("write");
    let vm = Vm::prepare().unwrap_or_else(|e| panic!("{e}"));
    let job = VmJob {
        files,
        binaries,
        script,
        timeout,
    };
    let started = Instant::now();
    let out = vm
        .run_sized(&job, memory, |line| line.starts_with("# "))
        .unwrap_or_else(|e| panic!("{e}"));
    let boot_to_poweroff = started.elapsed();
    if let Some(log) = out.files.get("agent.log") {
        let path = std::env::temp_dir().join("setpoint-vm-agent.log");
        if std::fs::write(&path, log).is_ok() {
            println!("(the agent's log: {})", path.display());
        }
    }
    assert_eq!(
        out.exit_code, 0,
        "the guest failed; console:\n{}",
        out.console
    );
    let f = Figures::parse(&out.text("figures.txt"));

    let tcg = f.get("check_s") / check_native.as_secs_f64();
    println!();
    println!(
        "== in the VM: qemu TCG software emulation, one vCPU (about {tcg:.0}× slower than this host on the whole-state check: {:.1?} here, {:.2} s there); {boot_to_poweroff:.0?} from qemu start to power-off ==",
        check_native,
        f.get("check_s")
    );
    println!(
        "control plane (in the guest, SQLite): first revision after {:.1} s",
        f.get("first_revision_s")
    );
    println!(
        "cold: agent started → snapshot acked {:.1} s (apply, as the agent reports it: {:.1} s); recorded {:.1} s after the ack",
        f.get("cold_ack_s"),
        f.get("cold_apply_s"),
        f.get("cold_record_s")
    );
    let budget = |mib: f64| {
        if mib <= 64.0 {
            "≤ 64 MiB"
        } else {
            "OVER 64 MiB"
        }
    };
    println!(
        "agent memory after the cold apply: VmRSS {:.1} MiB ({}; anonymous {:.1}, file {:.1}), VmHWM (peak) {:.1} MiB, {} threads",
        f.get("cold_rss_mib"),
        budget(f.get("cold_rss_mib")),
        f.get("cold_anon_mib"),
        f.get("cold_file_mib"),
        f.get("cold_hwm_mib"),
        f.get("cold_threads"),
    );
    println!(
        "agent CPU for the cold apply (snapshot decoded, checked, applied, read back; recorded): {:.1} s, its tools {:.1} s",
        f.get("cold_cpu_s"),
        f.get("cold_children_cpu_s")
    );
    println!(
        "idle agent: {:.1} ms CPU per second (heartbeats, the reaper)",
        f.get("idle_cpu_ms_per_s")
    );
    println!(
        "{deltas} one-endpoint deltas, manifest written → agent acked: p50 {:.0} ms, max {:.0} ms; apply as the agent reports it: p50 {:.0} ms, max {:.0} ms",
        f.get("delta_ack_p50_ms"),
        f.get("delta_ack_max_ms"),
        f.get("delta_apply_p50_ms"),
        f.get("delta_apply_max_ms"),
    );
    println!(
        "agent CPU per one-endpoint delta (received, applied, read back, recorded; idle rate taken off): {:.0} ms ({:.0} ms its own, {:.0} ms its tools)",
        f.get("delta_cpu_ms"),
        f.get("delta_own_cpu_ms"),
        f.get("delta_children_cpu_ms")
    );
    println!(
        "record write (the applied state to --state-dir, after the ack; agent's metric, guest RAM disk): the cold apply's whole state {:.0} ms; per delta mean {:.1} ms over {} writes; natively on this host's disk with fsync: the whole state {:.1?} for {:.1} MiB, a one-endpoint frame {:.2?} for {} bytes",
        f.get("record_cold_ms"),
        f.get("record_mean_ms"),
        f.get("record_count"),
        record_native,
        record_bytes as f64 / (1024.0 * 1024.0),
        frame_native,
        frame_bytes,
    );
    println!(
        "agent memory after the deltas: VmRSS {:.1} MiB ({}; anonymous {:.1}, file {:.1}), VmHWM {:.1} MiB; over the second half of the deltas {:+.0} KiB per delta (VmRSS by delta: {})",
        f.get("after_rss_mib"),
        budget(f.get("after_rss_mib")),
        f.get("after_anon_mib"),
        f.get("after_file_mib"),
        f.get("after_hwm_mib"),
        f.get("growth_kib_per_delta"),
        rss_by_delta(&f, deltas),
    );
    let per_ipvsadm = f.get("ipvsadm_each_ms");
    let per_ipset = f.get("ipset_each_ms");
    println!(
        "baseline, one `ipvsadm` per virtual/real server: {:.1} ms wall, {:.1} ms CPU each ({} processes) → the whole table ({} objects) ≈ {:.0} s (extrapolated); `ipvsadm -R` of the whole table: {:.1} s",
        per_ipvsadm,
        f.get("ipvsadm_cpu_each_ms"),
        f.get("ipvsadm_processes"),
        f.get("table_objects"),
        per_ipvsadm * f.get("table_objects") / 1000.0,
        f.get("restore_s")
    );
    println!(
        "baseline, one `ipset add` per entry: {:.1} ms wall, {:.1} ms CPU each ({} processes) → {entries} entries ≈ {:.0} s (extrapolated)",
        per_ipset,
        f.get("ipset_cpu_each_ms"),
        f.get("ipset_processes"),
        per_ipset * entries as f64 / 1000.0
    );
    let one_wall = per_ipvsadm * one.ipvs as f64 + per_ipset * one.entries as f64;
    let one_cpu = f.get("ipvsadm_cpu_each_ms") * one.ipvs as f64
        + f.get("ipset_cpu_each_ms") * one.entries as f64;
    println!(
        "baseline, the one-endpoint delta as one process per object ({} ipvsadm + {} ipset): ≈ {one_wall:.0} ms wall, {one_cpu:.0} ms CPU (the agent: {:.0} ms CPU with the read-back and the record)",
        one.ipvs,
        one.entries,
        f.get("delta_cpu_ms")
    );
}

/// VmRSS in MiB after a few of the deltas, `k: MiB`.
fn rss_by_delta(f: &Figures, deltas: usize) -> String {
    let mut at: Vec<usize> = [1, deltas / 4, deltas / 2, 3 * deltas / 4, deltas]
        .into_iter()
        .filter(|k| *k >= 1)
        .collect();
    at.dedup();
    at.iter()
        .filter_map(|k| {
            Some(format!(
                "{k}: {:.1}",
                f.0.get(&format!("rss_mib_after_{k}"))?
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fastest of `n` runs of `f`.
fn min_time(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `name value` lines the guest writes.
struct Figures(BTreeMap<String, f64>);

impl Figures {
    fn parse(text: &str) -> Figures {
        Figures(
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> f64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("the guest reported no {name}: {:?}", self.0))
    }
}

// --------------------------------------------------------------- guest --

/// One process's counters from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default)]
struct ProcessSample {
    rss_mib: f64,
    hwm_mib: f64,
    anon_mib: f64,
    file_mib: f64,
    threads: f64,
    /// utime + stime, seconds.
    own_cpu: f64,
    /// cutime + cstime: children waited for (the agent's tools).
    children_cpu: f64,
}

fn sample(pid: u32) -> anyhow::Result<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "pid (comm) ": state is field 3, utime 14 … cstime 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    anyhow::ensure!(ticks.len() == 4, "short /proc/{pid}/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ProcessSample {
        rss_mib: field("VmRSS:") / 1024.0,
        hwm_mib: field("VmHWM:") / 1024.0,
        anon_mib: field("RssAnon:") / 1024.0,
        file_mib: field("RssFile:") / 1024.0,
        threads: field("Threads:"),
        own_cpu: (ticks[0] + ticks[1]) / hz,
        children_cpu: (ticks[2] + ticks[3]) / hz,
    })
}

/// CPU seconds of this process's children waited for so far.
fn children_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// A loopback port nothing listens on now.
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The agent's Prometheus text.
fn agent_metrics(at: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(at)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// A sample's value in Prometheus text (`name value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs a tool, failing with its output.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `done`; how long that took.
fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

fn say(line: &str) {
    println!("# {line}");
}

/// The agent streaming from a control plane in this process: its memory,
/// cold apply, deltas and records; in the VM the baselines after. The
/// figures as `name value` lines.
fn measure(place: &Where) -> anyhow::Result<String> {
    let shape = shape();
    let deltas = env_or("SETPOINT_BENCH_DELTAS", 50);
    let node = synthetic::node_name(0);
    let manifests = place.manifests.clone();
    let work = place.work.clone();
    std::fs::create_dir_all(&work)?;
    let state_dir = work.join("agent");
    let mut figures = String::new();
    let mut put = |name: &str, value: f64| {
        let _ = writeln!(figures, "{name} {value}");
    };

    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let mut config = setpoint_controlplane::serve::ServeConfig::local(
        &manifests,
        format!("sqlite://{}/setpoint.db?mode=rwc", work.display()),
    );
    // Every file is re-read when inotify says so; the poll is a backstop
    // that would otherwise stat 10,000 files every 100 ms of emulated CPU.
    config.poll = Duration::from_secs(2);
    let running = runtime.block_on(setpoint_controlplane::serve::start(config))?;
    let head = || *running.head.borrow();
    while head() == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "no first revision"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    put("first_revision_s", started.elapsed().as_secs_f64());
    say(&format!(
        "control plane: revision {} after {:.1?}",
        head(),
        started.elapsed()
    ));

    // The agent as deployed, but the drift re-read (whole kernel, every
    // 30 s by default) off: it would land among the deltas measured. The
    // cold apply's read-back is the same whole read.
    let log = std::fs::File::create(place.out.join("agent.log"))?;
    let metrics_at = free_port()?;
    let mut args: Vec<String> = [
        "--node",
        &node,
        "--controlplane",
        &format!("http://{}", running.agent_addr),
        "--state-dir",
        &state_dir.display().to_string(),
        "--metrics-listen",
        &metrics_at.to_string(),
        "--drift-interval",
        "3600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if place.dry_run {
        // Not the host's port 10256.
        args.extend(["--dry-run", "--healthz-bind-address", ""].map(String::from));
    }
    let (program, args) = match place.wrapper.split_first() {
        Some((wrapper, first)) => {
            let mut all = first.to_vec();
            all.push(place.agent.display().to_string());
            all.extend(args);
            (PathBuf::from(wrapper), all)
        }
        None => (place.agent.clone(), args),
    };
    let started = Instant::now();
    let agent = Killed(
        Command::new(program)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let pid = agent.0.id();
    let acked = |revision: u64| -> Option<Duration> {
        let fleet = running.service.fleet.lock().ok()?;
        let view = fleet.get(&node)?;
        (view.acked_revision >= revision).then_some(view.last_apply)
    };
    let local = LocalState::new(&state_dir);
    let recorded = |revision: u64| -> bool {
        local
            .load()
            .ok()
            .flatten()
            .is_some_and(|r| r.revision >= revision)
    };

    let first = head();
    let mut cold_apply = Duration::ZERO;
    wait(
        "the cold apply",
        Duration::from_secs(1200),
        || match acked(first) {
            Some(took) => {
                cold_apply = took;
                true
            }
            None => false,
        },
    )?;
    let cold_ack = started.elapsed();
    let record = wait("the record", Duration::from_secs(300), || recorded(first))?;
    put("cold_ack_s", cold_ack.as_secs_f64());
    put("cold_apply_s", cold_apply.as_secs_f64());
    put("cold_record_s", record.as_secs_f64());
    say(&format!(
        "cold: acked after {cold_ack:.1?} (apply {cold_apply:.1?}), recorded {record:.1?} later"
    ));
    // Settle: the blocking pool's threads and the runtime's timers.
    std::thread::sleep(Duration::from_secs(2));
    let cold = sample(pid)?;
    put("cold_rss_mib", cold.rss_mib);
    put("cold_hwm_mib", cold.hwm_mib);
    put("cold_anon_mib", cold.anon_mib);
    put("cold_file_mib", cold.file_mib);
    put("cold_threads", cold.threads);
    put("cold_cpu_s", cold.own_cpu);
    put("cold_children_cpu_s", cold.children_cpu);
    say(&format!("agent after the cold apply: {cold:?}"));

    // The idle rate, to take off the deltas' CPU.
    let idle_for = Duration::from_secs(10);
    let before = sample(pid)?;
    std::thread::sleep(idle_for);
    let after = sample(pid)?;
    let idle_rate = (after.own_cpu + after.children_cpu - before.own_cpu - before.children_cpu)
        / idle_for.as_secs_f64();
    put("idle_cpu_ms_per_s", idle_rate * 1000.0);

    // The cold apply's record (the whole state), apart from the deltas'.
    let text = agent_metrics(metrics_at)?;
    let record_sum =
        |text: &str| metric(text, "setpoint_agent_record_duration_seconds_sum").unwrap_or(f64::NAN);
    let record_count = |text: &str| {
        metric(text, "setpoint_agent_record_duration_seconds_count").unwrap_or(f64::NAN)
    };
    let (cold_sum, cold_count) = (record_sum(&text), record_count(&text));
    put("record_cold_ms", cold_sum / cold_count * 1000.0);

    let mut ack_ms = Vec::with_capacity(deltas);
    let mut apply_ms = Vec::with_capacity(deltas);
    let mut rss_mid = f64::NAN;
    let before = sample(pid)?;
    let phase = Instant::now();
    for k in 0..deltas {
        let was = head();
        let i = (k * 7919 + 7) % shape.services.max(1);
        let t0 = Instant::now();
        // An odd generation marks one endpoint not ready: a real change.
        synthetic_manifests::write_slice(&manifests, i, &shape, 2 * k + 1);
        let mut now = was;
        wait("a delta's revision", Duration::from_secs(300), || {
            now = head();
            now > was
        })?;
        let mut took = Duration::ZERO;
        wait("a delta's ack", Duration::from_secs(300), || {
            match acked(now) {
                Some(t) => {
                    took = t;
                    true
                }
                None => false,
            }
        })?;
        ack_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        apply_ms.push(took.as_secs_f64() * 1000.0);
        // Its record too, so that each delta's CPU includes its write.
        wait("a delta's record", Duration::from_secs(300), || {
            recorded(now)
        })?;
        let done = k + 1;
        if [1, deltas / 4, deltas / 2, 3 * deltas / 4, deltas].contains(&done) {
            let rss = sample(pid)?.rss_mib;
            put(&format!("rss_mib_after_{done}"), rss);
            if done == deltas / 2 {
                rss_mid = rss;
            }
        }
    }
    let phase = phase.elapsed().as_secs_f64();
    let after = sample(pid)?;
    let n = deltas.max(1) as f64;
    let own = after.own_cpu - before.own_cpu;
    let children = after.children_cpu - before.children_cpu;
    let idle = idle_rate * phase;
    put(
        "delta_cpu_ms",
        (own + children - idle).max(0.0) / n * 1000.0,
    );
    put("delta_own_cpu_ms", own / n * 1000.0);
    put("delta_children_cpu_ms", children / n * 1000.0);
    ack_ms.sort_by(f64::total_cmp);
    apply_ms.sort_by(f64::total_cmp);
    put("delta_ack_p50_ms", percentile(&ack_ms, 0.5));
    put("delta_ack_max_ms", percentile(&ack_ms, 1.0));
    put("delta_apply_p50_ms", percentile(&apply_ms, 0.5));
    put("delta_apply_max_ms", percentile(&apply_ms, 1.0));
    say(&format!(
        "{deltas} deltas in {phase:.1} s: agent CPU {own:.2} s own, {children:.2} s tools"
    ));
    std::thread::sleep(Duration::from_secs(2));
    let end = sample(pid)?;
    put("after_rss_mib", end.rss_mib);
    put("after_hwm_mib", end.hwm_mib);
    put("after_anon_mib", end.anon_mib);
    put("after_file_mib", end.file_mib);
    let second_half = (deltas - deltas / 2).max(1) as f64;
    put(
        "growth_kib_per_delta",
        (end.rss_mib - rss_mid) * 1024.0 / second_half,
    );
    say(&format!("agent after the deltas: {end:?}"));
    if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        say(&format!(
            "smaps_rollup: {}",
            rollup.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    let text = agent_metrics(metrics_at)?;
    let count = record_count(&text) - cold_count;
    put(
        "record_mean_ms",
        (record_sum(&text) - cold_sum) / count * 1000.0,
    );
    put("record_count", count);

    // The whole-state check, timed here and on the host: the emulation's
    // factor.
    // The journal as a restart reads it: the newest record, its state.
    let (applied, state) = local
        .load_recorded()?
        .ok_or_else(|| anyhow::anyhow!("no recorded state"))?;
    let newest = local.load()?.map(|r| r.revision);
    anyhow::ensure!(
        Some(applied.revision) == newest && applied.digest == state.digest(),
        "the journal reads back revision {} (digest {}), not the newest recorded, {newest:?}",
        applied.revision,
        applied.digest,
    );
    let check = min_time(3, || {
        let _ = checked_view(&state);
    });
    put("check_s", check.as_secs_f64());
    drop(state);
    drop(agent);
    drop(running);
    drop(runtime);
    if place.dry_run {
        return Ok(figures);
    }

    // Baselines, one process per kernel object, on the table the agent
    // left (fail static: the kernel keeps it).
    let save = run("ipvsadm", &["-S", "-n"])?;
    let objects = save.lines().filter(|l| !l.trim().is_empty()).count();
    put("table_objects", objects as f64);
    run("ipvsadm", &["-C"])?;
    let limit = env_or("SETPOINT_BENCH_BASELINE_VIRTUAL_SERVERS", 300);
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut virtual_servers = 0;
    for line in save.lines() {
        if line.starts_with("-A ") {
            if virtual_servers == limit {
                break;
            }
            virtual_servers += 1;
        }
        commands.push(line.split_whitespace().map(str::to_string).collect());
    }
    let cpu = children_cpu();
    let t0 = Instant::now();
    for c in &commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        run("ipvsadm", &args)?;
    }
    let n = commands.len().max(1) as f64;
    put("ipvsadm_processes", commands.len() as f64);
    put("ipvsadm_each_ms", t0.elapsed().as_secs_f64() * 1000.0 / n);
    put("ipvsadm_cpu_each_ms", (children_cpu() - cpu) * 1000.0 / n);
    run("ipvsadm", &["-C"])?;
    std::fs::write(work.join("restore.txt"), &save)?;
    let t0 = Instant::now();
    let restored = Command::new("sh")
        .args(["-c", &format!("ipvsadm -R < {WORK}/restore.txt")])
        .status()?;
    anyhow::ensure!(restored.success(), "ipvsadm -R failed");
    put("restore_s", t0.elapsed().as_secs_f64());
    run("ipvsadm", &["-C"])?;

    let entries = env_or("SETPOINT_BENCH_BASELINE_ENTRIES", 1_000);
    run(
        "ipset",
        &["create", "SP-BASELINE", "hash:ip", "maxelem", "1000000"],
    )?;
    let cpu = children_cpu();
    let t0 = Instant::now();
    for k in 0..entries {
        let k = u32::try_from(k).unwrap_or(0);
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + k).to_string();
        run("ipset", &["add", "SP-BASELINE", &ip])?;
    }
    let n = entries.max(1) as f64;
    put("ipset_processes", entries as f64);
    put("ipset_each_ms", t0.elapsed().as_secs_f64() * 1000.0 / n);
    put("ipset_cpu_each_ms", (children_cpu() - cpu) * 1000.0 / n);
    run("ipset", &["destroy", "SP-BASELINE"])?;

    say("done");
    Ok(figures)
}
