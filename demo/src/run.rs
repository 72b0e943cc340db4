//! The whole system on one machine. The control plane serves the
//! example manifests from an SQLite file; one real agent per example node
//! connects over gRPC on loopback and applies into its own network
//! namespace (as root) or plans only (dry run). Edits to the manifests
//! flow through as new revisions, and the changed lines are shown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use setpoint_agent::client::{Agent, AgentOptions, AgentProgress};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;
use setpoint_compute::{ClusterObject, ComputeConfig};
use setpoint_store::RevisionId;

use setpoint_controlplane::serve::{ServeConfig, start};

pub struct DemoConfig {
    pub manifests: PathBuf,
    pub database: String,
    pub compute: ComputeConfig,
    /// Exit 0 once every agent acked the newest revision (for scripts),
    /// 1 if that takes longer than this.
    pub exit_when_converged: Option<Duration>,
}

/// A network namespace for one demo node, removed on drop.
struct DemoNetns(String);

impl DemoNetns {
    fn create(node: &str) -> anyhow::Result<DemoNetns> {
        let name = format!("sp-demo-{node}");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add")?;
        anyhow::ensure!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(DemoNetns(name))
    }
}

impl Drop for DemoNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub async fn run(config: DemoConfig) -> anyhow::Result<bool> {
    let report = setpoint_source::load_path(&config.manifests)
        .with_context(|| format!("reading {}", config.manifests.display()))?;
    let nodes: Vec<String> = report
        .objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::Node(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "the manifests define no Node");
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let running = start(ServeConfig {
        manifests: config.manifests.clone(),
        manifest_limits: Default::default(),
        kube: None,
        database: config.database.clone(),
        listen: localhost(0),
        metrics_listen: localhost(0),
        batch: Duration::from_millis(100),
        poll: Duration::from_millis(250),
        compute: config.compute,
        rollout: None,
        admin: Default::default(),
        tls: None,
        agents: Default::default(),
        election: Default::default(),
    })
    .await?;
    println!(
        "control plane: store {}, agents on {}, metrics on http://{}/metrics",
        config.database, running.agent_addr, running.metrics_addr
    );
    let root = is_root();
    let ipvs_here = setpoint_agent::ipvs::IpvsClient::connect().is_ok();
    if !root {
        println!("not root: agents run in DRY-RUN (they plan and ack, and touch no kernel)");
    } else if !ipvs_here {
        println!(
            "this kernel has no IPVS: agents apply ipsets and iptables for real in their namespaces, and keep virtual servers IN MEMORY only (no Service traffic is forwarded)"
        );
    }
    let mut namespaces = Vec::new();
    let mut progress: BTreeMap<String, std::sync::Arc<std::sync::Mutex<AgentProgress>>> =
        BTreeMap::new();
    for node in &nodes {
        let netns = if root {
            let ns = DemoNetns::create(node)?;
            let name = ns.0.clone();
            namespaces.push(ns);
            Some(name)
        } else {
            None
        };
        println!(
            "agent {node}: {}",
            netns
                .as_deref()
                .map(|n| format!(
                    "network namespace {n} (inspect: ip netns exec {n} ipset list -n)"
                ))
                .unwrap_or_else(|| "dry run".into())
        );
        let agent = Agent::new(AgentOptions {
            target: Target { netns },
            dry_run: !root,
            ipvs: if ipvs_here {
                IpvsMode::Kernel
            } else {
                IpvsMode::Simulated
            },
            ..AgentOptions::new(node.clone(), format!("http://{}", running.agent_addr))
        });
        progress.insert(node.clone(), agent.progress.clone());
        tokio::spawn(agent.run());
    }
    println!(
        "edit, add or remove files under {} to see a new revision flow (Ctrl-C or SIGTERM to stop)",
        config.manifests.display()
    );
    let mut commits = running.commits.subscribe();
    let mut head = running.head.clone();
    let started = Instant::now();
    let mut shown = (0u64, 0usize);
    let mut previous_head = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut committed_at = Instant::now();
    // Ctrl-C or SIGTERM: either way the namespaces are removed.
    let stop = setpoint_controlplane::serve::terminated();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            c = commits.recv() => {
                if let Ok(c) = c {
                    committed_at = Instant::now();
                    println!(
                        "revision {}: {} objects changed, {} nodes changed (compute {:.1?}, commit {:.1?})",
                        c.revision.0, c.objects_changed, c.nodes_changed, c.compute, c.commit
                    );
                    if previous_head > 0 {
                        show_changes(&running.store, &nodes, previous_head, c.revision.0).await;
                    }
                    previous_head = c.revision.0;
                }
            }
            _ = head.changed() => {}
            _ = tick.tick() => {}
            _ = &mut stop => {
                println!("stopping; the namespaces are removed");
                return Ok(true);
            }
        }
        let now = *head.borrow();
        let acked = progress
            .values()
            .filter(|p| {
                p.lock()
                    .map(|p| p.revision >= now && now > 0)
                    .unwrap_or(false)
            })
            .count();
        if (now, acked) != shown {
            shown = (now, acked);
            let applies: Vec<String> = progress
                .iter()
                .map(|(n, p)| {
                    let p = p.lock().map(|p| p.clone()).unwrap_or_default();
                    format!("{n}@{} {:.1?}", p.revision, p.last_apply)
                })
                .collect();
            println!(
                "  revision {now}: {acked}/{} agents acked after {:.1?} [{}]",
                nodes.len(),
                committed_at.elapsed(),
                applies.join(", ")
            );
            for (n, p) in &progress {
                if let Ok(p) = p.lock()
                    && let Some(e) = &p.last_error
                {
                    println!("  {n}: {e}");
                }
            }
        }
        if let Some(limit) = config.exit_when_converged {
            if now > 0 && acked == nodes.len() {
                println!("converged: every agent holds revision {now}");
                return Ok(true);
            }
            if started.elapsed() > limit {
                println!("not converged after {limit:?}");
                return Ok(false);
            }
        }
    }
}

/// Prints each node's changes between two revisions, one line each.
async fn show_changes(store: &setpoint_store::Store, nodes: &[String], from: u64, to: u64) {
    for node in nodes {
        match store.diff(node, RevisionId(from), RevisionId(to)).await {
            Ok(d) if d.changes.is_empty() => {}
            Ok(d) => {
                println!("  {node}: {} changes", d.changes.len());
                for c in d.changes.iter().take(12) {
                    println!("    {}", setpoint_agent::apply::describe(c));
                }
                if d.changes.len() > 12 {
                    println!("    … and {} more", d.changes.len() - 12);
                }
            }
            Err(e) => println!("  {node}: cannot diff: {e}"),
        }
    }
}
