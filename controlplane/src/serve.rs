//! `serve`: a source (manifest files, or the Kubernetes API) feeding the
//! leader, the agent stream on gRPC, and metrics over HTTP — in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use setpoint_compute::ComputeConfig;
use setpoint_kube::lease::{LeaseElector, LeaseHold, LeaseSettings};
use setpoint_proto::v1::agent_stream_server::AgentStreamServer;
use setpoint_store::{Leadership, Store};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use crate::admin::{AdminCommand, AdminConfig, AdminService};

use crate::leader::{AddressProblems, Committed, Leader, raise};
use crate::metrics::{Metrics, serve_http};
use crate::rollout::{Rollout, RolloutConfig, RolloutStatus, node_labels};
use crate::stream::{AgentLimits, AgentService};
use crate::tls::ServerTls;

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

/// How the one committing replica is chosen. Either way the winner then
/// takes a new store epoch, which fences every commit of an older leader.
// One per process, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Default)]
pub enum Election {
    /// The store's leader lock (a PostgreSQL advisory lock; SQLite always
    /// leads).
    #[default]
    Store,
    /// A `coordination.k8s.io/v1` Lease through this client.
    Lease {
        client: setpoint_kube::kube::Client,
        settings: LeaseSettings,
    },
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Election::Store => f.write_str("Store"),
            Election::Lease { settings, .. } => f.debug_tuple("Lease").field(settings).finish(),
        }
    }
}

/// One term of leadership, however it was won.
enum Term {
    Store(Leadership),
    Lease(LeaseHold),
}

impl Term {
    /// Whether this replica still leads; once false, it must step down.
    async fn still_held(&mut self) -> bool {
        match self {
            Term::Store(l) => l.still_held().await,
            Term::Lease(hold) => hold.held(),
        }
    }
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

/// Whether this replica computes and commits, or only serves streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// The manifests, when they changed since `cache` last loaded them (or
/// always, with `force`), read off the async threads.
async fn load_manifests(
    cache: &mut setpoint_source::ManifestCache,
    path: &std::path::Path,
    force: bool,
) -> anyhow::Result<Option<setpoint_source::LoadReport>> {
    let (path, mut taken) = (path.to_path_buf(), std::mem::take(cache));
    let (back, loaded) = tokio::task::spawn_blocking(move || {
        let loaded = if force {
            taken.load(&path).map(Some)
        } else {
            taken.load_if_changed(&path)
        };
        (taken, loaded)
    })
    .await
    .map_err(|e| anyhow::anyhow!("the manifest loader failed: {e}"))?;
    *cache = back;
    Ok(loaded?)
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

/// How often the manifest tree is looked at while inotify watches it
/// (events can be missed: network file systems, a full event queue).
const MANIFEST_RESCAN: Duration = Duration::from_secs(10);

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
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
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
                .with_address_problems(address_problems.clone()),
        );
    }
    let replica = Replica {
        config,
        store: store.clone(),
        head: head.clone(),
        service: service.clone(),
        metrics: metrics.clone(),
        commits: commits.clone(),
        problems: problems_tx,
        address_problems: address_problems_tx,
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

struct Replica {
    config: ServeConfig,
    store: Store,
    head: watch::Sender<u64>,
    service: AgentService,
    metrics: Arc<Metrics>,
    commits: broadcast::Sender<Committed>,
    problems: watch::Sender<Vec<String>>,
    address_problems: watch::Sender<Option<Arc<AddressProblems>>>,
    role: watch::Sender<Role>,
    /// Admin writes, run by whichever term of leadership is current.
    admin: tokio::sync::Mutex<mpsc::Receiver<AdminCommand>>,
    rollout: watch::Sender<RolloutStatus>,
}

impl Replica {
    /// One try at leading: the store's lock, or the Lease.
    async fn campaign(
        &self,
        elector: Option<&Arc<tokio::sync::Mutex<LeaseElector>>>,
    ) -> anyhow::Result<Option<Term>> {
        Ok(match elector {
            None => self.store.try_lead().await?.map(Term::Store),
            Some(elector) => LeaseElector::campaign(elector).await?.map(Term::Lease),
        })
    }

    /// Follows until leadership is free, leads until it is lost, and
    /// again. A deposed leader's late commit is refused by the epoch fence.
    async fn run(self) {
        let (elector, retry) = match &self.config.election {
            Election::Store => (None, Duration::from_secs(2)),
            Election::Lease { client, settings } => (
                Some(Arc::new(tokio::sync::Mutex::new(LeaseElector::new(
                    client.clone(),
                    settings.clone(),
                )))),
                settings.retry_period,
            ),
        };
        loop {
            match self.campaign(elector.as_ref()).await {
                Ok(Some(mut leadership)) => {
                    match Leader::start(
                        self.store.clone(),
                        self.config.compute.clone(),
                        self.head.clone(),
                    )
                    .await
                    {
                        Ok(mut leader) => {
                            leader.publish_to(self.service.fanout.clone()).await;
                            leader.report_to(self.metrics.service_problems.clone());
                            leader.publish_problems_to(self.address_problems.clone());
                            tracing::info!(epoch = leader.epoch().0, "leading");
                            self.role.send_replace(Role::Leader);
                            match self.config.kube.clone() {
                                Some(client) => {
                                    self.watch_kube(client, leader, &mut leadership).await
                                }
                                None => self.watch_manifests(leader, &mut leadership).await,
                            }
                            self.service.fanout.retire();
                            // Another replica's computation may differ.
                            self.address_problems.send_replace(None);
                            tracing::warn!("leadership lost");
                        }
                        Err(e) => tracing::warn!("cannot start leading: {e:#}"),
                    }
                    self.role.send_replace(Role::Follower);
                }
                Ok(None) => self.metrics.set_ready(true),
                Err(e) => {
                    self.metrics.set_ready(false);
                    if elector.is_none() {
                        self.metrics.store_errors.inc();
                    }
                    tracing::warn!("cannot campaign: {e:#}");
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Looks at the manifests when inotify says something changed (every
    /// `poll` without it, every `MANIFEST_RESCAN` anyway); a change is
    /// loaded again after `batch` until nothing newer appears (so an
    /// editor's burst of writes is one revision) and committed.
    async fn watch_manifests(&self, mut leader: Leader, leadership: &mut Term) {
        let (config, problems) = (&self.config, &self.problems);
        // Only files that changed are parsed again.
        let mut cache = setpoint_source::ManifestCache::with_limits(config.manifest_limits);
        let mut failing = false;
        let mut admin = self.admin.lock().await;
        let mut rollout = self.start_rollout().await;
        // With inotify, the tree is looked at when an event says so
        // (and every MANIFEST_RESCAN for what events miss); without, on
        // every poll.
        let woken = Arc::new(AtomicBool::new(true));
        let watch = {
            let woken = woken.clone();
            setpoint_source::ManifestWatch::start(&config.manifests, move || {
                woken.store(true, Ordering::SeqCst);
            })
        };
        let rescan = match &watch {
            Ok(_) => MANIFEST_RESCAN.max(config.poll),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for changes ({e}); polling every {:?}",
                    config.manifests.display(),
                    config.poll
                );
                config.poll
            }
        };
        let mut rescan_at = tokio::time::Instant::now();
        loop {
            if !leadership.still_held().await {
                return;
            }
            let due = woken.swap(false, Ordering::SeqCst)
                || tokio::time::Instant::now() >= rescan_at
                || failing;
            if due {
                rescan_at = tokio::time::Instant::now() + rescan;
                let seen_at = SystemTime::now();
                // After a failed commit the same objects are synced again.
                let mut found = load_manifests(&mut cache, &config.manifests, failing).await;
                // A burst of writes is one revision: load again after
                // `batch` until a look finds nothing newer (with inotify,
                // only when an event came meanwhile).
                while let Ok(Some(_)) = &found {
                    tokio::time::sleep(config.batch).await;
                    if !woken.swap(false, Ordering::SeqCst) && watch.is_ok() {
                        break;
                    }
                    match load_manifests(&mut cache, &config.manifests, false).await {
                        Ok(None) => break,
                        newer => found = newer,
                    }
                }
                match found {
                    Ok(None) => {}
                    Ok(Some(report)) => {
                        let mut listed: Vec<String> = report
                            .skipped
                            .iter()
                            .map(|s| format!("skipped: {s}"))
                            .collect();
                        listed.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
                        problems.send_replace(listed);
                        let outcome = self
                            .sync(&mut leader, rollout.as_mut(), report.objects, seen_at)
                            .await;
                        failing = !self.record(outcome);
                    }
                    Err(e) => {
                        problems.send_replace(vec![format!("cannot read the manifests: {e}")]);
                        // Load everything again next turn, and sync it: a
                        // look that failed after an earlier one of this
                        // burst succeeded leaves the cache ahead of the
                        // leader, so "unchanged" would hide that change.
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(config.poll) => {}
                Some(command) = admin.recv() => self.run_admin(&mut leader, command).await,
            }
            self.rollout_tick(&mut leader, rollout.as_mut()).await;
        }
    }

    /// Watches the Kubernetes API while leading: nothing is computed until
    /// every kind has listed (a half-loaded cluster would withdraw Services
    /// from every node); then each new snapshot generation is synced, a
    /// burst within `batch` as one revision. Admin writes run between syncs.
    async fn watch_kube(
        &self,
        client: setpoint_kube::kube::Client,
        mut leader: Leader,
        leadership: &mut Term,
    ) {
        let config = &self.config;
        let (mut snapshots, task) = setpoint_kube::KubeSource::start(client.clone());
        // The source's watchers end with the leadership that started them.
        let mut _source = AbortOnDropHandle::new(task);
        // The generation last synced (0: none yet).
        let mut synced: u64 = 0;
        let mut failing = false;
        let mut waiting_logged = false;
        let mut admin = self.admin.lock().await;
        let mut rollout = self.start_rollout().await;
        loop {
            if !leadership.still_held().await {
                return;
            }
            let (ready, generation) = {
                let s = snapshots.borrow();
                (s.ready, s.generation)
            };
            if ready && (generation != synced || failing) {
                // Let a burst of events land in one revision.
                tokio::time::sleep(config.batch).await;
                let snapshot = snapshots.borrow_and_update().clone();
                let seen_at = snapshot.seen_since(synced).unwrap_or(snapshot.seen_at);
                self.problems.send_replace(
                    snapshot
                        .skipped()
                        .into_iter()
                        .map(|s| format!("skipped: {s}"))
                        .collect(),
                );
                let outcome = self
                    .sync(&mut leader, rollout.as_mut(), snapshot.objects(), seen_at)
                    .await;
                failing = !self.record(outcome);
                if !failing {
                    synced = snapshot.generation;
                }
            } else if !ready && !waiting_logged {
                waiting_logged = true;
                tracing::info!("waiting for the Kubernetes API's initial lists");
            }
            tokio::select! {
                changed = snapshots.changed(), if !failing => {
                    if changed.is_err() {
                        // The source task ended (it should not): start
                        // another; the leader keeps its view meanwhile.
                        tracing::error!("the Kubernetes source stopped; restarting it");
                        tokio::time::sleep(config.poll).await;
                        let (rx, task) = setpoint_kube::KubeSource::start(client.clone());
                        snapshots = rx;
                        _source = AbortOnDropHandle::new(task);
                        synced = 0;
                    }
                }
                _ = tokio::time::sleep(config.poll) => {}
                Some(command) = admin.recv() => self.run_admin(&mut leader, command).await,
            }
            self.rollout_tick(&mut leader, rollout.as_mut()).await;
        }
    }

    /// Records a sync's outcome in metrics, the seen-at map and the commit
    /// feed; returns whether it succeeded (a failed commit is retried).
    fn record(&self, outcome: anyhow::Result<Option<Committed>>) -> bool {
        let (service, metrics, commits) = (&self.service, &self.metrics, &self.commits);
        match outcome {
            Ok(Some(c)) => {
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
                true
            }
            Ok(None) => {
                metrics.set_ready(true);
                true
            }
            Err(e) => {
                // Keep serving the last state; not ready until the store is back.
                metrics.set_ready(false);
                metrics.store_errors.inc();
                tracing::warn!("cannot commit: {e:#}");
                false
            }
        }
    }

    /// Runs an admin write with the leader's epoch, between its commits.
    async fn run_admin(&self, leader: &mut Leader, command: AdminCommand) {
        if command.reply.is_closed() {
            return;
        }
        let outcome = command.write.execute(&self.store, leader.epoch()).await;
        if let Ok(revision) = &outcome {
            self.wrote(leader, *revision).await;
        }
        let _ = command.reply.send(outcome);
    }

    /// Publishes a revision written outside a sync (admin, rollout): pins
    /// changed, so the leader re-derives the states it serves.
    async fn wrote(&self, leader: &mut Leader, revision: setpoint_store::RevisionId) {
        if let Ok(mut s) = self.service.seen.lock() {
            s.insert(revision.0, SystemTime::now());
        }
        // The head first, so that what reported the write (the rollout's
        // status, say) is not seen ahead of it; sessions it wakes wait for
        // the publication below.
        raise(&self.head, revision.0);
        leader.admin_wrote(revision).await;
        self.metrics.revisions.inc();
    }

    /// The rollout of this term of leadership, when configured.
    async fn start_rollout(&self) -> Option<Rollout> {
        let config = self.config.rollout.clone()?;
        match Rollout::start(config, &self.store, self.rollout.clone()).await {
            Ok(r) => Some(r),
            Err(e) => {
                // Never commit unheld: without a rollout, syncs fail below.
                tracing::error!("cannot start the rollout: {e:#}");
                None
            }
        }
    }

    /// A sync, with the rollout's hold before and its restart after.
    async fn sync(
        &self,
        leader: &mut Leader,
        rollout: Option<&mut Rollout>,
        objects: Vec<setpoint_compute::ClusterObject>,
        seen_at: SystemTime,
    ) -> anyhow::Result<Option<Committed>> {
        if self.config.rollout.is_some() && rollout.is_none() {
            anyhow::bail!("the rollout is configured but not running: not committing");
        }
        let Some(rollout) = rollout else {
            return leader.sync(objects, seen_at).await;
        };
        let labels = node_labels(&objects);
        if let Some(r) = rollout.hold(&self.store, leader.epoch(), &labels).await? {
            self.wrote(leader, r).await;
        }
        let since_ms = crate::rollout::now_ms();
        let outcome = leader.sync(objects, seen_at).await?;
        if let Some(c) = &outcome {
            match rollout
                .committed(&self.store, leader.epoch(), c.revision, since_ms)
                .await
            {
                Ok(Some(r)) => self.wrote(leader, r).await,
                Ok(None) => {}
                Err(e) => tracing::warn!("rollout: cannot release the canaries: {e:#}"),
            }
        }
        Ok(outcome)
    }

    async fn rollout_tick(&self, leader: &mut Leader, rollout: Option<&mut Rollout>) {
        let Some(rollout) = rollout else {
            return;
        };
        match rollout
            .tick(&self.store, leader.epoch(), &self.metrics)
            .await
        {
            Ok(Some(r)) => self.wrote(leader, r).await,
            Ok(None) => {}
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::warn!("rollout: {e:#}");
            }
        }
    }
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
