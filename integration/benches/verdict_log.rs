//! What the policy verdict log costs: a flood of datagrams that a
//! ClusterNetworkPolicy Deny drops, sent from a pod namespace through a
//! node namespace, with logging off, on at the default rate limit, and on
//! with a limit high enough to log nearly all of them.
//!
//! Per datagram: the kernel's system and softirq CPU (from /proc/stat, so
//! other work on the machine adds noise: run it on a quiet machine), the
//! sender's wall time, and the agent's reader thread CPU per logged packet.
//!
//! `cargo bench -p setpoint-integration --bench verdict_log`
//! (`SETPOINT_BENCH_DATAGRAMS`, default 200,000).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use setpoint_agent::metrics::AgentMetrics;
use setpoint_agent::verdicts::VerdictLog;
use setpoint_compute::ComputeConfig;
use setpoint_compute::layout::VerdictLog as VerdictLogConfig;
use setpoint_dataplane::{Format, NodeDataplane, render};
use setpoint_integration::cluster::{NodeNet, in_netns, node_1_state, one_node_manifests};
use setpoint_integration::require_root_and_tools;

const DENIED: &str = "cnp:Admin/guard/ingress rule 0: Deny";

fn pods() -> Vec<(String, Ipv4Addr)> {
    vec![
        ("x/a".into(), Ipv4Addr::new(10, 244, 1, 10)),
        ("y/a".into(), Ipv4Addr::new(10, 244, 1, 12)),
    ]
}

fn state(log: Option<VerdictLogConfig>) -> NodeDataplane {
    let mut yaml = one_node_manifests(&pods());
    yaml.push_str(
        "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  ingress:
  - name: no-81-from-x
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}]
    protocols: [{udp: {destinationPort: {number: 81}}}]
",
    );
    node_1_state(
        &yaml,
        ComputeConfig {
            verdict_log: log,
            ..ComputeConfig::default()
        },
    )
}

/// System, irq and softirq jiffies of the whole machine.
fn kernel_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    [2, 5, 6].iter().filter_map(|i| fields.get(*i)).sum()
}

/// CPU jiffies of this process's thread named `name`.
fn thread_jiffies(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th,
        // stime 15th of the whole line.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        // Some fields are signed (tpgid is -1 without a terminal).
        let f: Vec<i64> = after
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let cpu = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        total += u64::try_from(cpu).unwrap_or(0);
    }
    total
}

fn jiffy_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / (if hz > 0 { hz as f64 } else { 100.0 })
}

struct Run {
    label: &'static str,
    sender_ns: f64,
    kernel_ns: f64,
    logged: u64,
    reader_us_per_logged: Option<f64>,
}

fn flood(net: &NodeNet, label: &'static str, log: Option<VerdictLogConfig>, datagrams: u32) -> Run {
    let state = state(log);
    net.apply(
        &render(&state, Format::Ipset),
        &render(&state, Format::Iptables),
    )
    .expect("state applies");
    let metrics = AgentMetrics::new();
    let mut reader = VerdictLog::new(Some(net.node.name().to_string()), metrics.verdicts.clone());
    reader.applied(&state);
    let bound = Instant::now();
    while log.is_some() && metrics.verdicts.groups_read.get() < 1 {
        assert!(bound.elapsed() < Duration::from_secs(10), "NFLOG not bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    let x_a = net.pods.iter().find(|p| p.id == "x/a").expect("pod");
    let target = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 12), 81));
    let reader_before = thread_jiffies("nflog-1800");
    let kernel_before = kernel_jiffies();
    let started = Instant::now();
    in_netns(&x_a.netns_name(), move || -> std::io::Result<()> {
        // A dropped datagram's flow is never confirmed: each one is NEW and
        // goes through the policy chain.
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..datagrams {
            socket.send_to(&i.to_be_bytes(), target)?;
        }
        Ok(())
    })
    .expect("in the pod")
    .expect("datagrams sent");
    let sent_in = started.elapsed();
    // Let the softirq backlog and the last batch drain.
    std::thread::sleep(Duration::from_millis(400));
    let kernel = (kernel_jiffies() - kernel_before) as f64 * jiffy_seconds();
    let reader_cpu = (thread_jiffies("nflog-1800") - reader_before) as f64 * jiffy_seconds();
    let logged = metrics.verdicts.count(DENIED, "drop");
    drop(reader);
    let n = f64::from(datagrams);
    Run {
        label,
        sender_ns: sent_in.as_secs_f64() * 1e9 / n,
        kernel_ns: kernel * 1e9 / n,
        logged,
        reader_us_per_logged: (logged > 0).then(|| reader_cpu * 1e6 / logged as f64),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root_and_tools();
    let datagrams: u32 = std::env::var("SETPOINT_BENCH_DATAGRAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let net = NodeNet::build(&pods()).expect("namespaces build");
    let runs = [
        flood(&net, "logging off", None, datagrams),
        flood(
            &net,
            "on, default limit (10/s, burst 20)",
            Some(VerdictLogConfig::default()),
            datagrams,
        ),
        flood(
            &net,
            "on, limit 10000/s burst 10000",
            Some(VerdictLogConfig {
                per_second: 10_000,
                burst: 10_000,
                ..VerdictLogConfig::default()
            }),
            datagrams,
        ),
    ];
    println!("verdict log cost, {datagrams} denied UDP datagrams (each a new flow)");
    println!(
        "{:<38} {:>12} {:>16} {:>10} {:>22}",
        "", "sender ns/dg", "kernel ns/dg", "logged", "reader µs/logged"
    );
    for r in &runs {
        println!(
            "{:<38} {:>12.0} {:>16.0} {:>10} {:>22}",
            r.label,
            r.sender_ns,
            r.kernel_ns,
            r.logged,
            r.reader_us_per_logged
                .map_or("-".to_string(), |v| format!("{v:.1}"))
        );
    }
}
