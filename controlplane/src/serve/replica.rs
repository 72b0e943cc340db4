//! One replica's life: campaign for leadership, and while leading watch
//! the source (manifest files or the Kubernetes API), commit a revision per
//! change, run the admin writes and the rollout between commits; step down
//! when the term ends, and campaign again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use setpoint_source::Look;
use setpoint_store::Store;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use super::ServeConfig;
use crate::admin::AdminCommand;
use crate::election::{Campaign, Role, Term};
use crate::leader::{AddressProblems, Committed, Leader, raise};
use crate::metrics::Metrics;
use crate::rollout::{Rollout, RolloutStatus, node_labels};
use crate::stream::AgentService;

/// How often the manifest tree is looked at while inotify watches it
/// (events can be missed: network file systems, a full event queue).
const MANIFEST_RESCAN: Duration = Duration::from_secs(10);

/// How much of the manifest tree a look reads.
enum Reach {
    /// Everything, changed or not (a term's first look, after a failure).
    Force,
    /// Every file's size and modification time; changed files parsed.
    Changed,
    /// Only these files (what inotify named).
    Files(Vec<PathBuf>),
}

/// The manifests, when a look as far as `reach` found them changed since
/// `cache` last loaded them, read off the async threads.
async fn load_manifests(
    cache: &mut setpoint_source::ManifestCache,
    path: &std::path::Path,
    reach: Reach,
) -> anyhow::Result<Option<setpoint_source::ManifestView>> {
    let (path, mut taken) = (path.to_path_buf(), std::mem::take(cache));
    let (back, loaded) = tokio::task::spawn_blocking(move || {
        let loaded = match reach {
            Reach::Force => taken.view_if_changed(&path, true),
            Reach::Changed => taken.view_if_changed(&path, false),
            Reach::Files(files) => taken.view_of_files(&path, &files),
        };
        (taken, loaded)
    })
    .await
    .map_err(|e| anyhow::anyhow!("the manifest loader failed: {e}"))?;
    *cache = back;
    Ok(loaded?)
}

/// What inotify asked to look at since the last look.
#[derive(Default)]
struct Asked {
    everything: bool,
    files: BTreeSet<PathBuf>,
}

impl Asked {
    fn add(&mut self, look: Look) {
        match look {
            Look::Everything => self.everything = true,
            Look::Files(files) => self.files.extend(files),
        }
    }

    /// How far the next look must reach; `None` when nothing was asked.
    fn take(&mut self) -> Option<Reach> {
        let taken = std::mem::take(self);
        if taken.everything {
            Some(Reach::Changed)
        } else if taken.files.is_empty() {
            None
        } else {
            Some(Reach::Files(taken.files.into_iter().collect()))
        }
    }
}

fn take_asked(asked: &Mutex<Asked>) -> Option<Reach> {
    asked
        .lock()
        .map(|mut a| a.take())
        .unwrap_or(Some(Reach::Changed))
}

pub(super) struct Replica {
    pub(super) config: ServeConfig,
    pub(super) store: Store,
    pub(super) head: watch::Sender<u64>,
    pub(super) service: AgentService,
    pub(super) metrics: Arc<Metrics>,
    pub(super) commits: broadcast::Sender<Committed>,
    pub(super) problems: watch::Sender<Vec<String>>,
    pub(super) address_problems: watch::Sender<Option<Arc<AddressProblems>>>,
    pub(super) cluster_policies:
        watch::Sender<Option<Arc<crate::admin::policies::PolicyRevisions>>>,
    pub(super) role: watch::Sender<Role>,
    /// Admin writes, run by whichever term of leadership is current.
    pub(super) admin: tokio::sync::Mutex<mpsc::Receiver<AdminCommand>>,
    pub(super) rollout: watch::Sender<RolloutStatus>,
    /// The parsed manifests, kept up to date while following too: a
    /// follower that takes over parses only the files changed since.
    pub(super) manifest_cache: tokio::sync::Mutex<setpoint_source::ManifestCache>,
}

impl Replica {
    /// Follows until leadership is free, leads until it is lost, and
    /// again. A deposed leader's late commit is refused by the epoch fence.
    pub(super) async fn run(self) {
        let campaign = Campaign::new(&self.config.election, self.store.clone());
        let mut warmed = None;
        loop {
            match campaign.try_lead().await {
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
                            leader.publish_cluster_policies_to(self.cluster_policies.clone());
                            leader.measure_with(self.service.sli.clone());
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
                            self.cluster_policies.send_replace(None);
                            tracing::warn!("leadership lost");
                        }
                        Err(e) => tracing::warn!("cannot start leading: {e:#}"),
                    }
                    self.role.send_replace(Role::Follower);
                }
                Ok(None) => {
                    self.metrics.set_ready(true);
                    self.keep_warm(&mut warmed).await;
                }
                Err(e) => {
                    self.metrics.set_ready(false);
                    if campaign.by_store() {
                        self.metrics.store_errors.inc();
                    }
                    tracing::warn!("cannot campaign: {e:#}");
                }
            }
            tokio::time::sleep(campaign.retry).await;
        }
    }

    /// While following, parses the manifest files that changed (when the
    /// head moved, and every `MANIFEST_RESCAN`), so that taking over after
    /// the leader's death loads only what changed since, not the whole
    /// tree (seconds at 10,000 Services, while every agent waits).
    /// `warmed`: the head and time of the last look.
    async fn keep_warm(&self, warmed: &mut Option<(u64, tokio::time::Instant)>) {
        if self.config.kube.is_some() {
            return;
        }
        let head = *self.head.borrow();
        if warmed.is_some_and(|(h, at)| h == head && at.elapsed() < MANIFEST_RESCAN) {
            return;
        }
        *warmed = Some((head, tokio::time::Instant::now()));
        let mut cache = self.manifest_cache.lock().await;
        if let Err(e) = load_manifests(&mut cache, &self.config.manifests, Reach::Changed).await {
            // The leader reports the manifests' problems; a follower only
            // prepares.
            tracing::debug!("following: cannot read the manifests: {e:#}");
        }
    }

    /// Looks at the manifests when inotify says something changed (every
    /// `poll` without it, every `MANIFEST_RESCAN` anyway); a change is
    /// loaded again after `batch` until nothing newer appears (so an
    /// editor's burst of writes is one revision) and committed.
    async fn watch_manifests(&self, mut leader: Leader, leadership: &mut Term) {
        let (config, problems) = (&self.config, &self.problems);
        // Only files that changed are parsed again (since the last look
        // while following, too).
        let mut cache = self.manifest_cache.lock().await;
        // The term's first look loads everything, changed or not: this
        // leader has synced nothing yet.
        let mut first = true;
        let mut failing = false;
        let mut admin = self.admin.lock().await;
        let mut rollout = self.start_rollout().await;
        // With inotify, the tree is looked at when an event says so
        // (and every MANIFEST_RESCAN for what events miss); without, on
        // every poll.
        let asked = Arc::new(Mutex::new(Asked {
            everything: true,
            ..Asked::default()
        }));
        let watch = {
            let asked = asked.clone();
            setpoint_source::ManifestWatch::start(&config.manifests, move |look| {
                if let Ok(mut a) = asked.lock() {
                    a.add(look);
                }
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
            let rescan_due = tokio::time::Instant::now() >= rescan_at;
            let reach = match take_asked(&asked) {
                // After a failed commit the same objects are synced again.
                _ if failing || first => Some(Reach::Force),
                _ if rescan_due => Some(Reach::Changed),
                reach => reach,
            };
            if let Some(reach) = reach {
                if !matches!(reach, Reach::Files(_)) {
                    rescan_at = tokio::time::Instant::now() + rescan;
                }
                let seen_at = SystemTime::now();
                let mut found = load_manifests(&mut cache, &config.manifests, reach).await;
                first = false;
                // A burst of writes is one revision: load again after
                // `batch` until a look finds nothing newer (with inotify,
                // only when an event came meanwhile).
                while let Ok(Some(_)) = &found {
                    tokio::time::sleep(config.batch).await;
                    let reach = match take_asked(&asked) {
                        None if watch.is_err() => Reach::Changed,
                        None => break,
                        Some(reach) => reach,
                    };
                    match load_manifests(&mut cache, &config.manifests, reach).await {
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
                let not_served = snapshot.not_served();
                for kind in setpoint_kube::KINDS {
                    let absent = not_served.iter().any(|(k, _)| *k == kind);
                    self.metrics
                        .kube_kinds_not_served
                        .get_or_create(&crate::metrics::KindLabel { kind })
                        .set(i64::from(absent));
                }
                self.problems.send_replace(
                    snapshot
                        .skipped()
                        .into_iter()
                        .map(|s| format!("skipped: {s}"))
                        .collect(),
                );
                let outcome = self
                    .sync(
                        &mut leader,
                        rollout.as_mut(),
                        snapshot.object_map(),
                        seen_at,
                    )
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

    /// Records a sync's outcome in metrics and the commit feed; returns
    /// whether it succeeded (a failed commit is retried).
    fn record(&self, outcome: anyhow::Result<Option<Committed>>) -> bool {
        let (metrics, commits) = (&self.metrics, &self.commits);
        match outcome {
            Ok(Some(c)) => {
                metrics.set_ready(true);
                metrics.revisions.inc();
                metrics.compute_seconds.observe(c.compute.as_secs_f64());
                metrics.commit_seconds.observe(c.commit.as_secs_f64());
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
        self.service.sli.started(
            revision.0,
            crate::sli::Start {
                at: SystemTime::now(),
                by: crate::sli::StartedBy::Write,
            },
        );
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
        objects: setpoint_compute::ObjectMap,
        seen_at: SystemTime,
    ) -> anyhow::Result<Option<Committed>> {
        if self.config.rollout.is_some() && rollout.is_none() {
            anyhow::bail!("the rollout is configured but not running: not committing");
        }
        let Some(rollout) = rollout else {
            return leader.sync_view(objects, seen_at).await;
        };
        let labels = node_labels(objects.values().map(|o| &**o));
        if let Some(r) = rollout.hold(&self.store, leader.epoch(), &labels).await? {
            self.wrote(leader, r).await;
        }
        let since_ms = crate::rollout::now_ms();
        let outcome = leader.sync_view(objects, seen_at).await?;
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
