//! The state directory's record of what was applied: written after the
//! ack, newest wins; read at start, where it spares a snapshot only if
//! the kernel still holds what it records.

use std::sync::Arc;

use setpoint_dataplane::NodeDataplane;

use super::{Agent, unix_millis};
use crate::apply::ApplyError;
use crate::local_state::{Applied, Journal, LocalState, Written};
use crate::metrics::AgentMetrics;

/// Records applied states in the state directory after the ack, the newest
/// one when several arrive during a write. The record only lets a
/// restarted agent skip a snapshot, and the restart checks the kernel
/// against it first, so it need not be on disk before the control plane
/// hears of the apply. Each state is appended to the journal as the diff
/// from the one recorded before it (a one-endpoint change: a few hundred
/// bytes), and the whole state is written only when the journal starts
/// over (see [`Journal`]): a 10,000-Service state is 4.8 MiB.
pub(super) struct Recorder {
    latest: tokio::sync::watch::Sender<Option<(Applied, NodeDataplane)>>,
}

impl Recorder {
    fn start(local: LocalState, metrics: Arc<AgentMetrics>) -> Recorder {
        let (latest, mut pending) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let mut journal = Some(Journal::new(local.clone()));
            // Ends once the agent is gone and its last record written.
            while pending.changed().await.is_ok() {
                let Some((record, state)) = pending.borrow_and_update().clone() else {
                    continue;
                };
                // A writer lost with a failed task starts a new journal.
                let mut writer = journal
                    .take()
                    .unwrap_or_else(|| Journal::new(local.clone()));
                let saved = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let saved = writer
                        .record(&record, &state)
                        .map(|written| (written, started.elapsed()));
                    drop(state);
                    if matches!(saved, Ok((Written::Base(_), _))) {
                        give_back_freed_memory();
                    }
                    (writer, saved)
                })
                .await;
                match saved {
                    Ok((writer, saved)) => {
                        journal = Some(writer);
                        match saved {
                            Ok((_, took)) => metrics.record_seconds.observe(took.as_secs_f64()),
                            Err(e) => tracing::warn!("cannot record the applied state: {e}"),
                        }
                    }
                    Err(e) => tracing::warn!("the state recorder failed: {e}"),
                }
            }
        });
        Recorder { latest }
    }

    fn record(&self, applied: Applied, state: NodeDataplane) {
        self.latest.send_replace(Some((applied, state)));
    }
}

/// Returns the heap's free pages to the system. Encoding the whole state
/// (megabytes, when the journal starts over) frees memory in glibc's
/// per-thread arenas that it keeps unless asked: before the journal, when
/// every record encoded the whole state, the agent's resident memory grew
/// with every delta without this (32 → 99 MiB over ten one-endpoint
/// deltas of a 10,000-Service state in the VM benchmark).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Agent {
    fn local(&self) -> Option<LocalState> {
        self.options.state_dir.as_ref().map(LocalState::new)
    }

    /// Resumes from the state directory when the kernel still holds what
    /// it records: no re-apply, and the hello lets the control plane send
    /// a delta.
    pub async fn resume(&mut self) {
        let Some(local) = self.local() else { return };
        let (record, state) = match local.load_recorded() {
            Ok(Some(recorded)) => recorded,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("ignoring the local state: {e}");
                return;
            }
        };
        if record.node != self.options.node || record.digest != state.digest() {
            tracing::warn!("the local state is for another node or inconsistent; ignoring it");
            return;
        }
        let revision = record.revision;
        let verified = self
            .with_applier(move |a| {
                // Over the node's own addresses, when they are followed.
                let held = a.check(revision, state)?;
                a.verify(&held)?;
                Ok::<_, ApplyError>(held)
            })
            .await;
        match verified {
            Some(Ok(held)) => {
                tracing::info!(revision, "the kernel still holds the recorded state");
                self.note(|p| p.revision = revision);
                self.health_applied(&held.state).await;
                self.held = Some(held);
            }
            Some(Err(e)) => {
                tracing::info!("the kernel moved since the last run ({e}); asking for a snapshot")
            }
            None => {}
        }
    }

    /// Has the state directory record `state` as applied at `revision`.
    pub(super) fn record_applied(&mut self, revision: u64, state: &NodeDataplane) {
        if let Some(local) = self.local() {
            let record = Applied {
                node: self.options.node.clone(),
                revision,
                digest: state.digest(),
                applied_at: unix_millis() / 1000,
            };
            let metrics = &self.metrics;
            self.recorder
                .get_or_insert_with(|| Recorder::start(local, metrics.clone()))
                .record(record, state.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use setpoint_proto::v1::agent_message::Body as AgentBody;

    use super::*;
    use crate::apply::tests::state;
    use crate::client::AgentOptions;
    use crate::services::IpvsMode;

    fn dry_run_agent(node: &str, dir: &std::path::Path) -> Agent {
        Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            state_dir: Some(dir.to_path_buf()),
            ..AgentOptions::new(node, "http://127.0.0.1:1")
        })
    }

    /// Waits until `local` has recorded `revision`.
    async fn recorded(local: &LocalState, revision: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let record = local.load().expect("readable record");
            if record.as_ref().is_some_and(|r| r.revision == revision) {
                return;
            }
            assert!(Instant::now() < deadline, "newest record: {record:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A restarted agent holds what the journal's last good frame records:
    /// the newest state, or after damage to the last frame the one before
    /// it; a journal of another node's is ignored.
    #[tokio::test]
    async fn a_restarted_agent_resumes_from_the_journals_last_good_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalState::new(dir.path());
        let states = [
            state(&["10.0.0.1"]),
            state(&["10.0.0.1", "10.0.0.2"]),
            state(&["10.0.0.2", "10.0.0.3"]),
        ];
        let mut a = dry_run_agent("n", dir.path());
        for (revision, s) in (1u64..).zip(states.iter()) {
            let reply = a.apply(revision, s.clone()).await;
            assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
            // Each one recorded before the next: a base, then two frames.
            recorded(&local, revision).await;
        }
        drop(a);
        let held = |agent: &Agent| agent.held.as_ref().map(|h| (h.revision, h.state.digest()));

        let mut b = dry_run_agent("n", dir.path());
        b.resume().await;
        assert_eq!(held(&b), Some((3, states[2].digest())));

        let journal = dir.path().join("state.journal");
        let mut bytes = std::fs::read(&journal).expect("a journal");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&journal, &bytes).expect("write");
        let mut c = dry_run_agent("n", dir.path());
        c.resume().await;
        assert_eq!(held(&c), Some((2, states[1].digest())));

        let mut other = dry_run_agent("m", dir.path());
        other.resume().await;
        assert_eq!(held(&other), None);
    }

    #[tokio::test]
    async fn applied_states_are_recorded_after_the_ack_newest_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = dry_run_agent("n", dir.path());
        let states = [
            state(&["10.0.0.1"]),
            state(&["10.0.0.1", "10.0.0.2"]),
            state(&["10.0.0.2"]),
        ];
        for (revision, s) in (1u64..).zip(states.iter()) {
            let reply = a.apply(revision, s.clone()).await;
            assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
        }
        // Written in the background: wait for the newest, then check the
        // record and the state agree.
        let local = LocalState::new(dir.path());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let record = local.load().expect("readable record");
            if record.as_ref().is_some_and(|r| r.revision == 3) {
                break;
            }
            assert!(Instant::now() < deadline, "newest record: {record:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let record = local.load().expect("record").expect("present");
        assert_eq!(record.digest, states[2].digest());
        assert_eq!(local.load_state().expect("state"), Some(states[2].clone()));
    }
}
