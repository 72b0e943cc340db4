//! `serve`: the manifest source feeding the leader, the agent stream on
//! gRPC, and metrics over HTTP — in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use setpoint_compute::ComputeConfig;
use setpoint_proto::v1::agent_stream_server::AgentStreamServer;
use setpoint_store::{Leadership, Store};
use tokio::sync::{broadcast, watch};

use crate::leader::{Committed, Leader, fingerprint};
use crate::metrics::{Metrics, serve_http};
use crate::stream::AgentService;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub manifests: PathBuf,
    pub database: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// A burst of changes within this interval is one revision.
    pub batch: Duration,
    /// How often the manifests are looked at.
    pub poll: Duration,
    pub compute: ComputeConfig,
}

/// A running control plane.
pub struct Running {
    pub store: Store,
    pub agent_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub service: AgentService,
    pub metrics: Arc<Metrics>,
    pub head: watch::Receiver<u64>,
    /// Every revision this process commits.
    pub commits: broadcast::Sender<Committed>,
    /// Problems with the manifests, as the last load reported them.
    pub problems: watch::Receiver<Vec<String>>,
    pub role: watch::Receiver<Role>,
}

/// Whether this replica computes and commits, or only serves streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Opens the store, binds the listeners and spawns the tasks: every
/// replica serves agent streams from the store; the one holding the
/// leader lock also watches the manifests and commits. Returns once
/// everything listens.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
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
            forward.send_if_modified(|h| {
                let newer = now > *h;
                if newer {
                    *h = now;
                }
                newer
            });
        }
    });
    let service = AgentService::new(store.clone(), head.subscribe(), metrics.clone());

    let agent_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the agent listener {}", config.listen))?;
    let agent_addr = agent_listener.local_addr()?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener {}", config.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AgentStreamServer::new(service.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            agent_listener,
        ));
    tokio::spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!("agent stream server stopped: {e}");
        }
    });
    tokio::spawn(serve_http(metrics.clone(), metrics_listener));

    let (commits, _) = broadcast::channel(64);
    let (problems_tx, problems) = watch::channel(Vec::new());
    let (role_tx, role) = watch::channel(Role::Follower);
    let replica = Replica {
        config,
        store: store.clone(),
        head: head.clone(),
        service: service.clone(),
        metrics: metrics.clone(),
        commits: commits.clone(),
        problems: problems_tx,
        role: role_tx,
    };
    tokio::spawn(replica.run());
    Ok(Running {
        store,
        agent_addr,
        metrics_addr,
        service,
        metrics,
        head: head.subscribe(),
        commits,
        problems,
        role,
    })
}

struct Replica {
    config: ServeConfig,
    store: Store,
    head: watch::Sender<u64>,
    service: AgentService,
    metrics: Arc<Metrics>,
    commits: broadcast::Sender<Committed>,
    problems: watch::Sender<Vec<String>>,
    role: watch::Sender<Role>,
}

impl Replica {
    /// Follows until the leader lock is free, leads until it is lost, and
    /// again. A deposed leader's late commit is refused by the epoch fence.
    async fn run(self) {
        loop {
            match self.store.try_lead().await {
                Ok(Some(mut leadership)) => {
                    match Leader::start(
                        self.store.clone(),
                        self.config.compute.clone(),
                        self.head.clone(),
                    )
                    .await
                    {
                        Ok(leader) => {
                            tracing::info!(epoch = leader.epoch().0, "leading");
                            self.role.send_replace(Role::Leader);
                            self.watch_manifests(leader, &mut leadership).await;
                            tracing::warn!("leadership lost");
                        }
                        Err(e) => tracing::warn!("cannot start leading: {e:#}"),
                    }
                    self.role.send_replace(Role::Follower);
                }
                Ok(None) => self.metrics.set_ready(true),
                Err(e) => {
                    self.metrics.set_ready(false);
                    self.metrics.store_errors.inc();
                    tracing::warn!("store unavailable: {e}");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Polls the manifests; a change is loaded after `batch` more of quiet (so
    /// an editor's burst of writes is one revision) and committed.
    async fn watch_manifests(&self, mut leader: Leader, leadership: &mut Leadership) {
        let (config, service, metrics, commits, problems) = (
            &self.config,
            &self.service,
            &self.metrics,
            &self.commits,
            &self.problems,
        );
        let mut synced = None;
        let mut failing = false;
        loop {
            if !leadership.still_held().await {
                return;
            }
            let seen = fingerprint(&config.manifests);
            if Some(&seen) != synced.as_ref() || failing {
                let seen_at = SystemTime::now();
                tokio::time::sleep(config.batch).await;
                let settled = fingerprint(&config.manifests);
                if settled != seen {
                    continue;
                }
                let path = config.manifests.clone();
                let report =
                    match tokio::task::spawn_blocking(move || setpoint_source::load_path(&path))
                        .await
                    {
                        Ok(Ok(report)) => report,
                        Ok(Err(e)) => {
                            problems.send_replace(vec![format!("cannot read the manifests: {e}")]);
                            tokio::time::sleep(config.poll).await;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("manifest loader panicked: {e}");
                            continue;
                        }
                    };
                let mut listed: Vec<String> = report
                    .skipped
                    .iter()
                    .map(|s| format!("skipped: {s}"))
                    .collect();
                listed.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
                problems.send_replace(listed);
                match leader.sync(report.objects, seen_at).await {
                    Ok(Some(c)) => {
                        failing = false;
                        metrics.set_ready(true);
                        metrics.revisions.inc();
                        metrics.compute_seconds.observe(c.compute.as_secs_f64());
                        metrics.commit_seconds.observe(c.commit.as_secs_f64());
                        if let Ok(mut s) = service.seen.lock() {
                            s.insert(c.revision.0, c.seen_at);
                            // Only recent revisions are ever acked.
                            while s.len() > 1024 {
                                s.pop_first();
                            }
                        }
                        tracing::info!(
                            revision = c.revision.0,
                            nodes = c.nodes_changed,
                            objects = c.objects_changed,
                            "committed"
                        );
                        let _ = commits.send(c);
                    }
                    Ok(None) => {
                        failing = false;
                        metrics.set_ready(true);
                    }
                    Err(e) => {
                        // Keep serving the last state; not ready until the store is back.
                        failing = true;
                        metrics.set_ready(false);
                        metrics.store_errors.inc();
                        tracing::warn!("cannot commit: {e:#}");
                    }
                }
                synced = Some(settled);
            }
            tokio::time::sleep(config.poll).await;
        }
    }
}
