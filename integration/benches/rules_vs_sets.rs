//! The dataplane claim behind Setpoint, measured: allowing N source IPs as N
//! iptables rules versus one rule matching an N-entry ipset.
//!
//! `cargo bench -p setpoint-integration --bench rules_vs_sets` (as root).
//! A client and a server namespace route through a node namespace; the
//! node's FORWARD chain accepts established traffic, then lets the client
//! in either through N `-s IP -j ACCEPT` rules (the client's rule last: the
//! worst case, every new connection walks all N) or through one
//! `-m set --match-set` rule over a `hash:ip` set of N entries; everything
//! else is dropped. The client opens TCP connections one after another for
//! SETPOINT_BENCH_SECONDS (default 1) per case, each in a fresh topology, and the figure is
//! connections per second.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use setpoint_integration::cluster::{NodeNet, connected, in_netns};
use setpoint_integration::require_root_and_tools;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// N distinct addresses outside the cluster, then the client's.
fn sources(n: usize) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = (0..n.saturating_sub(1))
        .map(|i| {
            Ipv4Addr::new(
                172,
                20 + (i / 65536) as u8,
                ((i / 256) % 256) as u8,
                (i % 256) as u8,
            )
        })
        .collect();
    out.push(CLIENT);
    out
}

fn rules_ruleset(n: usize) -> String {
    let mut out = String::from(
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    for ip in sources(n) {
        out.push_str(&format!("-A FORWARD -s {ip}/32 -j ACCEPT\n"));
    }
    out.push_str("COMMIT\n");
    out
}

fn set_ruleset() -> String {
    "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD -m set --match-set BENCH-SRC src -j ACCEPT\nCOMMIT\n"
        .to_string()
}

fn set_restore(n: usize) -> String {
    let mut out = format!(
        "create BENCH-SRC hash:ip family inet hashsize 1024 maxelem {}\n",
        n.max(1024)
    );
    for ip in sources(n) {
        out.push_str(&format!("add BENCH-SRC {ip}\n"));
    }
    out
}

/// Connections per second from the client to the server for `seconds`.
fn connections_per_second(net: &NodeNet, seconds: f64) -> anyhow::Result<f64> {
    let client = net
        .pods
        .iter()
        .find(|p| p.ip == CLIENT)
        .ok_or_else(|| anyhow::anyhow!("no client"))?;
    let target = SocketAddr::from((SERVER, 80));
    let budget = Duration::from_secs_f64(seconds);
    let (count, elapsed) = in_netns(&client.netns_name(), move || {
        // The first packets of a fresh topology wait for neighbour
        // resolution: warm up until a connection gets through.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_secs(5) && !connected(&target, Duration::from_secs(1))
        {
        }
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed() < budget {
            if connected(&target, Duration::from_secs(1)) {
                count += 1;
            }
        }
        (count, started.elapsed())
    })?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// A fresh topology per case: no conntrack entries or used ports carry
/// over from one case to the next.
fn fresh() -> anyhow::Result<NodeNet> {
    let net = NodeNet::build(&[
        ("bench/client".to_string(), CLIENT),
        ("bench/server".to_string(), SERVER),
    ])?;
    for pod in &net.pods {
        net.pod_exec(
            pod,
            &["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        )?;
    }
    Ok(net)
}

fn main() -> anyhow::Result<()> {
    require_root_and_tools();
    // 55,000 client ports: a case must not run out of them.
    let seconds: f64 = std::env::var("SETPOINT_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let baseline = connections_per_second(&fresh()?, seconds)?;
    println!("no filtering: {baseline:.0} connections/s");
    println!(
        "{:>7} {:>16} {:>16} {:>8}",
        "N", "N rules conn/s", "1 set conn/s", "set/rules"
    );
    for n in [10usize, 1_000, 10_000] {
        let net = fresh()?;
        net.node
            .exec(&["iptables-restore", "-w"], Some(&rules_ruleset(n)))?;
        let rules = connections_per_second(&net, seconds)?;
        drop(net);
        let net = fresh()?;
        net.node
            .exec(&["ipset", "restore"], Some(&set_restore(n)))?;
        net.node
            .exec(&["iptables-restore", "-w"], Some(&set_ruleset()))?;
        let set = connections_per_second(&net, seconds)?;
        println!(
            "{n:>7} {rules:>16.0} {set:>16.0} {:>8.2}",
            set / rules.max(1.0)
        );
    }
    Ok(())
}
