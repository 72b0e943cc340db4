//! The IPVS half of the apply benchmark: `setpoint-agent apply --state` in a
//! stock Debian kernel under qemu (the host kernel has no IPVS), on the node
//! state of the synthetic cluster `benches/apply.rs` builds (10,000 Services
//! × 5 endpoints), with real IPVS over netlink, ipsets and iptables. One boot:
//!
//! 1. cold apply of a 1,000-Service state, then back to empty;
//! 2. cold apply of the 10,000-Service state (peak RSS from busybox
//!    `time -v`, i.e. wait4's ru_maxrss), `ipvsadm -Ln | wc -l`;
//! 3. a one-endpoint successor state (the one-shot CLI reads the whole
//!    kernel back, before and after: the full-read-back figure; the
//!    streaming agent's path from the held state (`Base::Held`) is
//!    measured on the host by `benches/apply.rs`), then back to empty;
//! 4. baselines for the IPVS table alone: one `ipvsadm` process per virtual
//!    and per real server (the first N virtual servers, extrapolated), and
//!    `ipvsadm -R` of the whole table (one process).
//!
//! Figures are under qemu TCG software emulation, several times slower
//! than native. Run as root (the VM's cache is prepared with apt):
//! `cargo bench -p setpoint-agent --bench vm_apply`; sizes from
//! SETPOINT_BENCH_SERVICES / _SMALL_SERVICES / _ENDPOINTS /
//! _BASELINE_VIRTUAL_SERVERS, guest deadline from SETPOINT_BENCH_VM_TIMEOUT
//! (seconds).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::{NodeDataplane, render};
use setpoint_integration::measure::env_or;
use setpoint_integration::vm::{Vm, VmJob, VmOutput};

#[path = "common/describe.rs"]
mod describe;
use describe::describe;

struct Cluster {
    shape: ClusterShape,
    state: NodeDataplane,
    /// `state` with one endpoint's readiness flipped (generation 1 of
    /// benches/apply.rs's delta rounds).
    successor: NodeDataplane,
}

/// The node state exactly as benches/apply.rs builds it.
fn cluster(services: usize, endpoints_per_service: usize) -> Cluster {
    let shape = ClusterShape {
        nodes: 3,
        services,
        endpoints: services * endpoints_per_service,
        zones: 1,
    };
    let node = synthetic::node_name(0);
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(&shape) {
        index.upsert(object);
    }
    index.commit();
    let Some(state) = index.node_state(&node) else {
        panic!("node {node} exists");
    };
    let generation = 1;
    index.upsert(synthetic::slice(
        (generation * 7) % shape.services.max(1),
        &shape,
        generation,
    ));
    index.commit();
    let Some(successor) = index.node_state(&node) else {
        panic!("node {node} exists");
    };
    Cluster {
        shape,
        state,
        successor,
    }
}

/// `ipvsadm-save -n` lines of the first `n` virtual servers and their real
/// servers, as one `ipvsadm` command each.
fn per_object_commands(save: &str, n: usize) -> (String, usize, usize) {
    let mut script = String::new();
    let (mut vs, mut rs) = (0, 0);
    for line in save.lines() {
        if line.starts_with("-A ") {
            if vs == n {
                break;
            }
            vs += 1;
        } else {
            rs += 1;
        }
        writeln!(script, "ipvsadm {line} || exit 1").expect("write");
    }
    (script, vs, rs)
}

/// A host binary the guest needs, or a clear failure.
fn host_binary(candidates: &[&str], why: &str) -> PathBuf {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("none of {candidates:?} exists: needed for {why}"))
        .to_path_buf()
}

/// Guest shell: `step NAME ARGS…` runs `setpoint-agent apply ARGS…` under
/// busybox `time -v` (for the peak RSS, from wait4), records exit code and
/// wall time in nanoseconds; `timed NAME CMD…` does the same for any command.
const PRELUDE: &str = r#"
now() { /usr/local/bin/date +%s%N; }
finish() {
    name=$1; rc=$2; start=$3; end=$4
    echo "$rc" > "/out/$name/rc"
    echo $((end - start)) > "/out/$name/ns"
    echo "$name: exit $rc in $(( (end - start) / 1000000 )) ms"
}
step() {
    name=$1; shift
    mkdir -p "/out/$name"
    start=$(now)
    busybox time -v setpoint-agent apply "$@" > "/out/$name/log" 2>&1
    rc=$?
    end=$(now)
    finish "$name" "$rc" "$start" "$end"
    grep -E '^(applied|warning|Error|error)|Maximum resident' "/out/$name/log"
}
timed() {
    name=$1; shift
    mkdir -p "/out/$name"
    start=$(now)
    "$@" > "/out/$name/log" 2>&1
    rc=$?
    end=$(now)
    finish "$name" "$rc" "$start" "$end"
    tail -n 5 "/out/$name/log"
}
count() {
    ipvsadm -Ln > /tmp/ipvs.txt 2>&1
    wc -l < /tmp/ipvs.txt > "/out/$1"
    rm -f /tmp/ipvs.txt
    echo "$1: $(cat "/out/$1") lines of ipvsadm -Ln"
}
free > /out/free-start.txt
"#;

const SCRIPT: &str = r#"
step cold-small --state /in/small.json
count small.lines
step empty-small --state /in/empty.json
step cold --state /in/large.json
count cold.lines
free > /out/free-cold.txt
ipset list -n | wc -l > /out/cold.sets
iptables-save | wc -l > /out/cold.iptables
step successor --state /in/successor.json
step empty --state /in/empty.json
count empty.lines
timed baseline-per-object sh /in/per-object.sh
count baseline-per-object.lines
ipvsadm -C
timed baseline-restore sh -c 'ipvsadm -R < /in/restore.txt'
count baseline-restore.lines
ipvsadm -C
exit 0
"#;

struct Out<'a>(&'a VmOutput);

impl Out<'_> {
    fn text(&self, name: &str) -> String {
        self.0.text(name)
    }

    /// The step's wall time; panics with its log when it failed.
    fn ok(&self, step: &str) -> Duration {
        let rc = self.text(&format!("{step}/rc"));
        assert_eq!(
            rc.trim(),
            "0",
            "{step} failed:\n{}",
            self.text(&format!("{step}/log"))
        );
        let ns: u64 = self
            .text(&format!("{step}/ns"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{step}/ns: {e}"));
        Duration::from_nanos(ns)
    }

    fn number(&self, name: &str) -> usize {
        self.text(name)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("/out/{name}: {e}"))
    }

    /// The agent's "applied N changes in M operations …" line.
    fn applied(&self, step: &str) -> String {
        self.text(&format!("{step}/log"))
            .lines()
            .find(|l| l.starts_with("applied "))
            .unwrap_or("(no \"applied\" line)")
            .to_string()
    }

    /// busybox `time -v`'s "Maximum resident set size (kbytes): N", in MiB.
    fn peak_rss_mib(&self, step: &str) -> f64 {
        self.text(&format!("{step}/log"))
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration/vm/prepare installs qemu and fills /var/cache/setpoint-vm: run as root"
    );
    let services = env_or("SETPOINT_BENCH_SERVICES", 10_000);
    let small_services = env_or("SETPOINT_BENCH_SMALL_SERVICES", 1_000);
    let per_service = env_or("SETPOINT_BENCH_ENDPOINTS", 5);
    let baseline_vs = env_or("SETPOINT_BENCH_BASELINE_VIRTUAL_SERVERS", 500);
    let timeout = Duration::from_secs(env_or("SETPOINT_BENCH_VM_TIMEOUT", 3_600) as u64);

    let started = Instant::now();
    let large = cluster(services, per_service);
    let small = cluster(small_services, per_service);
    let large_summary = describe(&large.state);
    let small_summary = describe(&small.state);
    let (vs, rs, large_text) = (
        large_summary.virtual_servers,
        large_summary.real_servers,
        large_summary.text,
    );
    let (small_vs, small_rs, small_text) = (
        small_summary.virtual_servers,
        small_summary.real_servers,
        small_summary.text,
    );
    println!(
        "state of {} ({} services × {} endpoints): {large_text}",
        synthetic::node_name(0),
        large.shape.services,
        per_service
    );
    println!(
        "smaller state ({} services × {per_service} endpoints): {small_text}",
        small.shape.services
    );
    let one = setpoint_dataplane::diff(&large.state, &large.successor);
    let changes: Vec<String> = one
        .changes
        .iter()
        .map(setpoint_agent::apply::describe)
        .collect();
    println!(
        "one-endpoint successor: {} atoms in the diff: {changes:?}",
        one.size()
    );

    // Inputs for the guest.
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    let mut input = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        files.push((path, format!("/in/{name}")));
        text.len()
    };
    let json = |s: &NodeDataplane| serde_json::to_string(s).expect("serialise");
    let large_bytes = input("large.json", &json(&large.state));
    input("successor.json", &json(&large.successor));
    input("small.json", &json(&small.state));
    input("empty.json", &json(&NodeDataplane::default()));
    let save = render::ipvsadm_save(&large.state.flatten());
    let (per_object, baseline_vs, baseline_rs) = per_object_commands(&save, baseline_vs);
    input("per-object.sh", &per_object);
    input("restore.txt", &save);
    println!(
        "inputs built in {:.1?}; the large state is {:.1} MiB of JSON",
        started.elapsed(),
        large_bytes as f64 / (1024.0 * 1024.0)
    );

    let agent = PathBuf::from(env!("CARGO_BIN_EXE_setpoint-agent"));
    // busybox's date has no %N: the host's (coreutils) times the steps.
    let date = host_binary(&["/usr/bin/date", "/bin/date"], "`date +%s%N` in the guest");
    let mut binaries = vec![agent, date];
    if Path::new("/usr/sbin/conntrack").is_file() {
        binaries.push(PathBuf::from("/usr/sbin/conntrack"));
    }
    let vm = Vm::prepare().unwrap_or_else(|e| panic!("{e}"));
    let job = VmJob {
        files,
        binaries,
        script: format!("{PRELUDE}{SCRIPT}"),
        timeout,
    };
    let started = Instant::now();
    let out = vm.run(&job).unwrap_or_else(|e| panic!("{e}"));
    let boot_to_poweroff = started.elapsed();
    assert_eq!(
        out.exit_code, 0,
        "the guest script failed; console:\n{}",
        out.console
    );
    let out = Out(&out);

    // ipvsadm -Ln: three header lines, then one per virtual and real server.
    let lines = |vs: usize, rs: usize| 3 + vs + rs;
    let check = |name: &str, want: usize| {
        let got = out.number(name);
        assert_eq!(got, want, "{name}: ipvsadm -Ln lines");
        got
    };
    let cold_small = out.ok("cold-small");
    let empty_small = out.ok("empty-small");
    let cold = out.ok("cold");
    let successor = out.ok("successor");
    let empty = out.ok("empty");
    let per_object_time = out.ok("baseline-per-object");
    let restore = out.ok("baseline-restore");
    check("small.lines", lines(small_vs, small_rs));
    let cold_lines = check("cold.lines", lines(vs, rs));
    check("empty.lines", lines(0, 0));
    check("baseline-per-object.lines", lines(baseline_vs, baseline_rs));
    check("baseline-restore.lines", lines(vs, rs));

    let processes = baseline_vs + baseline_rs;
    let per_process = per_object_time / u32::try_from(processes.max(1)).unwrap_or(1);
    let extrapolated = per_process * u32::try_from(vs + rs).unwrap_or(u32::MAX);

    println!();
    println!(
        "== in the VM: qemu TCG software emulation (one vCPU), several times slower than native =="
    );
    println!("(one boot, {boot_to_poweroff:.1?} from qemu start to power-off)");
    println!(
        "cold apply, {} services ({small_vs} VS / {small_rs} RS + sets, iptables): {cold_small:.2?}; peak RSS {:.0} MiB; {}",
        small.shape.services,
        out.peak_rss_mib("cold-small"),
        out.applied("cold-small")
    );
    println!("  back to empty: {empty_small:.2?}");
    println!(
        "cold apply, {} services ({vs} VS / {rs} RS + sets, iptables): {cold:.2?} ({:.0} VS/s); peak RSS {:.0} MiB; {}",
        large.shape.services,
        vs as f64 / cold.as_secs_f64(),
        out.peak_rss_mib("cold"),
        out.applied("cold")
    );
    println!(
        "  kernel afterwards: ipvsadm -Ln {cold_lines} lines (3 + {vs} + {rs}), {} ipsets, iptables-save {} lines",
        out.number("cold.sets"),
        out.number("cold.iptables")
    );
    println!(
        "one-endpoint successor, one-shot CLI (reads the whole kernel before and after): {successor:.2?}; peak RSS {:.0} MiB; {}",
        out.peak_rss_mib("successor"),
        out.applied("successor")
    );
    println!(
        "  (the streaming agent's path from the held state is measured on the host: benches/apply.rs)"
    );
    println!(
        "tear-down of the {} services to empty: {empty:.2?}",
        large.shape.services
    );
    println!(
        "baseline, one `ipvsadm` process per VS and per RS: {per_object_time:.2?} for {baseline_vs} VS + {baseline_rs} RS ({processes} processes, {per_process:.2?} each) → {vs} VS + {rs} RS ≈ {extrapolated:.1?} (extrapolated), {:.1}× Setpoint's whole cold apply",
        extrapolated.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "baseline, `ipvsadm -R` of the whole table (one process, IPVS only: no addresses, sets, iptables or read-back): {restore:.2?}"
    );
    let free = out.text("free-cold.txt");
    let mut free = free
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    println!(
        "guest memory after the cold apply (busybox free, KiB): {} / {}",
        free.next().unwrap_or_default(),
        free.next().unwrap_or_default()
    );
}
