//! `serve`: one control-plane process. [`start`] opens the store, binds
//! the agent stream (gRPC), metrics (HTTP) and admin listeners, and spawns
//! a replica (`serve/replica.rs`) that campaigns for leadership and, while
//! it leads, feeds the source (manifest files or the Kubernetes API) to the
//! leader. A follower serves its agents from the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use setpoint_compute::ComputeConfig;
use setpoint_proto::v1::agent_stream_server::AgentStreamServer;
use setpoint_store::Store;
use tokio::sync::{broadcast, mpsc, watch};

use crate::admin::{AdminConfig, AdminService};
use crate::leader::{AddressProblems, Committed, raise};
use crate::metrics::{Metrics, serve_http};
use crate::rollout::{RolloutConfig, RolloutStatus};
use crate::stream::{AgentLimits, AgentService};
use crate::tls::ServerTls;
use replica::Replica;

mod replica;

// Part of `ServeConfig` and `Running`.
pub use crate::election::{Election, Role};

#[derive(Clone)]
pub struct ServeConfig {
    /// The manifest source: a file or a directory, polled. Ignored when
    /// `kube` is set.
    pub manifests: PathBuf,
    /// What one manifest file may cost to read (size, nesting).
    pub manifest_limits: setpoint_source::Limits,
    /// The Kubernetes API as the source instead of `manifests`: the leader
    /// watches it (`setpoint_kube::KubeSource`), computes only once every
    /// kind has listed, and commits each new snapshot (bursts batched by
    /// `batch`). Followers do not watch.
    pub kube: Option<setpoint_kube::kube::Client>,
    pub database: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// A burst of changes within this interval is one revision.
    pub batch: Duration,
    /// How often the manifests are looked at.
    pub poll: Duration,
    pub compute: ComputeConfig,
    /// The admin API (off when `admin.listen` is `None`).
    pub admin: AdminConfig,
    /// mTLS on the agent listener. Without it the listener must be on
    /// loopback (development only, and said loudly).
    pub tls: Option<ServerTls>,
    /// What the agent listener lets a peer hold, and for how long.
    pub agents: AgentLimits,
    /// Who leads: the store's lock, or a Kubernetes Lease.
    pub election: Election,
    /// Progressive rollout (`--rollout canary`); `None`: every revision
    /// goes to every node at once.
    pub rollout: Option<RolloutConfig>,
}

impl ServeConfig {
    /// Everything on loopback (ephemeral ports, no admin API, no TLS, the
    /// store's election), re-reading `manifests` every 100 ms with 50 ms
    /// batches: tests and demos start from it and change what they need.
    pub fn local(manifests: impl Into<PathBuf>, database: impl Into<String>) -> ServeConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        ServeConfig {
            manifests: manifests.into(),
            manifest_limits: setpoint_source::Limits::default(),
            kube: None,
            database: database.into(),
            listen: any,
            metrics_listen: any,
            batch: Duration::from_millis(50),
            poll: Duration::from_millis(100),
            compute: ComputeConfig::default(),
            admin: AdminConfig::default(),
            tls: None,
            agents: AgentLimits::default(),
            election: Election::Store,
            rollout: None,
        }
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ServeConfig {
            manifests,
            manifest_limits,
            kube,
            database,
            listen,
            metrics_listen,
            batch,
            poll,
            compute,
            admin,
            tls,
            agents,
            election,
            rollout,
        } = self;
        f.debug_struct("ServeConfig")
            .field("manifests", manifests)
            .field("manifest_limits", manifest_limits)
            .field("kube", &kube.as_ref().map(|_| "Client"))
            .field("database", database)
            .field("listen", listen)
            .field("metrics_listen", metrics_listen)
            .field("batch", batch)
            .field("poll", poll)
            .field("compute", compute)
            .field("admin", admin)
            .field("tls", tls)
            .field("agents", agents)
            .field("election", election)
            .field("rollout", rollout)
            .finish()
    }
}

/// A running control plane.
pub struct Running {
    pub store: Store,
    pub agent_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Where the admin API listens, when it does.
    pub admin_addr: Option<SocketAddr>,
    pub service: AgentService,
    pub metrics: Arc<Metrics>,
    pub head: watch::Receiver<u64>,
    /// Every revision this process commits.
    pub commits: broadcast::Sender<Committed>,
    /// Problems with the source: the manifests as the last load reported
    /// them, or the Kubernetes objects left out because they did not decode.
    pub problems: watch::Receiver<Vec<String>>,
    /// What compute refused of the Services' addresses, for the revision
    /// they are labelled with; `None` while this replica does not lead
    /// (or has not computed yet).
    pub address_problems: watch::Receiver<Option<Arc<AddressProblems>>>,
    pub role: watch::Receiver<Role>,
    /// The progressive rollout's phase ("off" when not configured).
    pub rollout: watch::Receiver<RolloutStatus>,
}

/// While this replica follows, publishes each new head's node states, read
/// from the store in a few queries for all nodes, so its sessions serve
/// them from memory as the leader's do — instead of each session reading
/// its node's state (thousands of agents: tens of thousands of queries per
/// revision). Heads that arrive while a read runs coalesce into the newest.
async fn publish_followed_heads(
    store: Store,
    mut head: watch::Receiver<u64>,
    mut role: watch::Receiver<Role>,
    fanout: Arc<crate::fanout::Fanout>,
) {
    loop {
        if *role.borrow_and_update() == Role::Follower {
            let target = *head.borrow_and_update();
            fanout.lead();
            if target > 0 {
                match store
                    .node_states(setpoint_store::RevisionId(target), None)
                    .await
                {
                    // The store's states at `target`, right whoever leads
                    // by now.
                    Ok(states) => fanout.publish(target, states.into_iter().collect()),
                    Err(e) => {
                        // Sessions read the store themselves meanwhile.
                        tracing::warn!(
                            "cannot read revision {target} for this follower's agents: {e}"
                        );
                        fanout.retire();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            changed = role.changed() => if changed.is_err() { return },
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what Kubernetes and systemd
/// send). Create it once, before a loop: a SIGTERM arriving while no
/// listener exists would be lost once the handler is installed.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Pending connections the agent listener queues (the kernel caps it at
/// `net.core.somaxconn`). Every agent of a large cluster reconnects at once
/// when a control plane starts; with the usual 1,024, the rest are reset
/// and retry after a backoff.
const AGENT_BACKLOG: u32 = 8192;

/// What one agent stream may have in flight towards the control plane
/// (its largest message).
const AGENT_STREAM_WINDOW: u32 = setpoint_proto::MAX_UPSTREAM_MESSAGE_BYTES as u32;
/// Request headers of an agent's call.
const AGENT_MAX_HEADERS: u32 = 16 * 1024;

fn bind_agent_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(AGENT_BACKLOG)
}

/// Opens the store, binds the listeners and spawns the tasks: every
/// replica serves agent streams from the store; the one holding the
/// leader lock also watches the manifests and commits. Returns once
/// everything listens.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    if config.tls.is_none() {
        anyhow::ensure!(
            config.listen.ip().is_loopback(),
            "refusing to serve agents in plaintext on {}: give --tls-cert, --tls-key and --client-ca, \
             or listen on a loopback address for development",
            config.listen
        );
        tracing::warn!(
            "DEVELOPMENT MODE: agents connect in plaintext without identities (loopback {} only); \
             never run a cluster like this",
            config.listen
        );
    }
    let store = Store::open(&config.database)
        .await
        .with_context(|| format!("opening the store at {}", config.database))?;
    let metrics = Metrics::new();
    let head = watch::Sender::new(store.head().await?.map(|r| r.0).unwrap_or(0));
    // Revisions another replica commits arrive through the store.
    let mut from_store = store.watch_head(Duration::from_millis(500));
    let forward = head.clone();
    tokio::spawn(async move {
        while from_store.changed().await.is_ok() {
            let now = *from_store.borrow_and_update();
            raise(&forward, now);
        }
    });
    let service = AgentService::new(store.clone(), head.subscribe(), metrics.clone())
        .with_limits(config.agents, config.tls.is_some());

    let agent_listener = bind_agent_listener(config.listen)
        .with_context(|| format!("binding the agent listener {}", config.listen))?;
    let agent_addr = agent_listener.local_addr()?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener {}", config.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let admin_listener = match config.admin.listen {
        Some(_) => Some(crate::admin::Listener::bind(&config.admin, metrics.clone()).await?),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    // Agents send small messages on one stream each; everything they can
    // make this side buffer is bounded (large states go the other way).
    let agent_limits = config.agents;
    // No HTTP/2 keepalive pings: every live agent heartbeats every 10 s
    // on its stream, a session cuts an agent silent for 45 s, and the
    // listener closes a connection that brings no byte for its idle
    // limit. Pings would add a timer poll to every read of 5,000
    // connections and tell nothing more.
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(agent_limits.streams_per_connection)
        .initial_stream_window_size(AGENT_STREAM_WINDOW)
        .initial_connection_window_size(AGENT_STREAM_WINDOW * agent_limits.streams_per_connection)
        .http2_max_header_list_size(AGENT_MAX_HEADERS)
        .add_service(
            AgentStreamServer::new(service.clone())
                .max_decoding_message_size(setpoint_proto::MAX_UPSTREAM_MESSAGE_BYTES),
        )
        .serve_with_incoming(crate::tls::incoming(
            agent_listener,
            config.tls.clone(),
            &agent_limits,
            metrics.clone(),
        )?);
    tokio::spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!("agent stream server stopped: {e}");
        }
    });
    tokio::spawn(serve_http(metrics.clone(), metrics_listener));

    let (commits, _) = broadcast::channel(64);
    let (problems_tx, problems) = watch::channel(Vec::new());
    let (address_problems_tx, address_problems) = watch::channel(None);
    let (cluster_policies_tx, cluster_policies) = watch::channel(None);
    let (role_tx, role) = watch::channel(Role::Follower);
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let (rollout_tx, rollout) = watch::channel(RolloutStatus {
        phase: "off".into(),
        ..RolloutStatus::default()
    });
    if let Some(listener) = admin_listener {
        listener.serve(
            AdminService::new(store.clone(), admin_tx, role.clone())
                .with_rollout(rollout.clone())
                .with_address_problems(address_problems.clone())
                .with_cluster_policies(cluster_policies)
                .with_sli(service.sli.clone()),
        );
    }
    let replica = Replica {
        manifest_cache: tokio::sync::Mutex::new(setpoint_source::ManifestCache::with_limits(
            config.manifest_limits,
        )),
        config,
        store: store.clone(),
        head: head.clone(),
        service: service.clone(),
        metrics: metrics.clone(),
        commits: commits.clone(),
        problems: problems_tx,
        address_problems: address_problems_tx,
        cluster_policies: cluster_policies_tx,
        role: role_tx,
        admin: tokio::sync::Mutex::new(admin_rx),
        rollout: rollout_tx,
    };
    tokio::spawn(replica.run());
    tokio::spawn(publish_followed_heads(
        store.clone(),
        head.subscribe(),
        role.clone(),
        service.fanout.clone(),
    ));
    Ok(Running {
        store,
        agent_addr,
        metrics_addr,
        admin_addr,
        service,
        metrics,
        head: head.subscribe(),
        commits,
        problems,
        address_problems,
        role,
        rollout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve` reads the manifests within `manifest_limits`: a file over
    /// them is a source problem, and the rest is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn manifests_are_read_within_the_configured_limits() {
        let dir = tempfile::tempdir().expect("dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir");
        std::fs::write(
            manifests.join("node.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
        )
        .expect("write");
        std::fs::write(
            manifests.join("big.yaml"),
            format!("# {}\n", "x".repeat(5000)),
        )
        .expect("write");
        let running = start(ServeConfig {
            manifest_limits: setpoint_source::Limits {
                max_file_bytes: 4096,
                ..setpoint_source::Limits::default()
            },
            ..ServeConfig::local(
                &manifests,
                format!("sqlite://{}?mode=rwc", dir.path().join("db").display()),
            )
        })
        .await
        .expect("starts");
        let mut problems = running.problems.clone();
        let listed = tokio::time::timeout(
            Duration::from_secs(20),
            problems.wait_for(|p| !p.is_empty()),
        )
        .await
        .expect("the manifests are loaded")
        .expect("the replica runs")
        .clone();
        assert!(
            listed
                .iter()
                .any(|p| p.contains("big.yaml") && p.contains("over the limit of 4096 bytes")),
            "{listed:?}"
        );
        let mut head = running.head.clone();
        tokio::time::timeout(Duration::from_secs(20), head.wait_for(|h| *h > 0))
            .await
            .expect("node.yaml is committed")
            .expect("the replica runs");
    }
}
