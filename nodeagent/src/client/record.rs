//! The state directory's record of what was applied: written after the
//! ack, newest wins; read at start, where it spares a snapshot only if
//! the kernel still holds what it records.

use std::sync::Arc;

use setpoint_dataplane::NodeDataplane;

use super::{Agent, unix_millis};
use crate::apply::ApplyError;
use crate::local_state::{Applied, LocalState};
use crate::metrics::AgentMetrics;

/// Records applied states in the state directory after the ack, the newest
/// one when several arrive during a write. The record only lets a
/// restarted agent skip a snapshot, and the restart checks the kernel
/// against it first, so it need not be on disk before the control plane
/// hears of the apply; writing and syncing a 10,000-Service state takes
/// ~16 ms, ~17× a one-endpoint delta's apply.
pub(super) struct Recorder {
    latest: tokio::sync::watch::Sender<Option<(Applied, NodeDataplane)>>,
}

impl Recorder {
    fn start(local: LocalState, metrics: Arc<AgentMetrics>) -> Recorder {
        let (latest, mut pending) = tokio::sync::watch::channel(None);
        let local = Arc::new(local);
        tokio::spawn(async move {
            // Ends once the agent is gone and its last record written.
            while pending.changed().await.is_ok() {
                let Some((record, state)) = pending.borrow_and_update().clone() else {
                    continue;
                };
                let local = local.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let saved = local
                        .save_with_state(&record, &state)
                        .map(|()| started.elapsed());
                    drop(state);
                    give_back_freed_memory();
                    saved
                })
                .await;
                match saved {
                    Ok(Ok(took)) => metrics.record_seconds.observe(took.as_secs_f64()),
                    Ok(Err(e)) => tracing::warn!("cannot record the applied state: {e}"),
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

/// Returns the heap's free pages to the system. The apply before a record
/// and the record's encoding of the whole state (megabytes) free memory
/// in glibc's per-thread arenas that it keeps unless asked: without this
/// the agent's resident memory grew with every delta (32 → 99 MiB over
/// ten one-endpoint deltas of a 10,000-Service state in the VM benchmark).
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
        let (record, state) = match (local.load(), local.load_state()) {
            (Ok(Some(r)), Ok(Some(s))) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("ignoring the local state: {e}");
                return;
            }
            _ => return,
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

    #[tokio::test]
    async fn applied_states_are_recorded_after_the_ack_newest_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            state_dir: Some(dir.path().to_path_buf()),
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        });
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
