//! One control message through to its reply: a snapshot decoded on the
//! blocking pool or a delta applied to the held state, the wanted state
//! refused if the fail-safe left it, else applied from the held state (or
//! the whole kernel) and acked; any failure a nack that fits the control
//! plane's upstream limit.

use std::time::Instant;

use setpoint_dataplane::NodeDataplane;
use setpoint_dataplane::text::clean_text;
use setpoint_proto::parts::{FragmentCache, apply_delta, snapshot_state_cached};
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{Ack, AgentMessage, ControlMessage, Nack};
use setpoint_proto::{PROTOCOL_VERSION, digest_bytes};

use super::Agent;
use super::session::envelope;
use crate::apply::{Applier, ApplyError, Base, Verified};

/// A nack that always fits the control plane's upstream limit, whatever
/// the failing tool printed: the error is cut and cleaned, or the control
/// plane would end the stream without recording why.
fn nack_message(revision: u64, error: &str, operation: &str) -> AgentMessage {
    envelope(AgentBody::Nack(Nack {
        revision,
        error: clean_text(error, setpoint_proto::MAX_NACK_TEXT_BYTES),
        failed_operation: clean_text(operation, 256),
    }))
}

/// Which step failed, for the nack.
fn failed_operation(e: &ApplyError) -> String {
    match e {
        ApplyError::Ipset(_) => "ipset restore".into(),
        ApplyError::Iptables(_) => "iptables-restore".into(),
        ApplyError::Plan(_) => "plan".into(),
        ApplyError::Template(_) => "NodePort expansion".into(),
        ApplyError::Refused { .. } => "validate".into(),
        ApplyError::Unsupported { .. } => "kernel capability check".into(),
        ApplyError::Service { operation, .. } => operation.clone(),
        ApplyError::Mismatch { .. } => "verify read-back".into(),
    }
}

impl Agent {
    pub(super) async fn handle(
        &mut self,
        m: ControlMessage,
    ) -> anyhow::Result<Option<AgentMessage>> {
        if m.protocol_version != PROTOCOL_VERSION {
            anyhow::bail!(
                "the control plane speaks protocol {}, this agent {PROTOCOL_VERSION}",
                m.protocol_version
            );
        }
        let (revision, wanted) = match m.body {
            Some(ControlBody::Heartbeat(_)) | None => return Ok(None),
            Some(ControlBody::Piece(_)) => {
                anyhow::bail!("a message piece outside reassembly (a bug on this side)")
            }
            Some(ControlBody::Snapshot(s)) => {
                self.note(|p| p.snapshots += 1);
                self.metrics.snapshots.inc();
                self.metrics.proxy_health.received();
                // Parts are decoded through the process's cache: a part
                // this process already holds (another revision's, or in
                // the fleet benchmark another node's) is not decoded again.
                // Megabytes of JSON (inflated first when the parts come
                // deflated): decoded off the async threads.
                let revision = s.revision;
                let decoded = tokio::task::spawn_blocking(move || {
                    snapshot_state_cached(&s, FragmentCache::process()).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the decoder failed: {e}")));
                match decoded {
                    Ok(state) => (revision, state),
                    Err(e) => {
                        return Ok(Some(self.nack(revision, e, "decode snapshot")));
                    }
                }
            }
            Some(ControlBody::Delta(d)) => {
                self.note(|p| p.deltas += 1);
                self.metrics.deltas.inc();
                self.metrics.proxy_health.received();
                // The control plane acknowledges a revision that leaves this
                // node's state unchanged on the agent's behalf, so a delta's
                // base may be a newer revision of the very state held: the
                // parts' and the result's digests decide, not the revision
                // number (`apply_delta` checks both).
                let Some(held) = &self.held else {
                    return Ok(Some(self.nack(
                        d.to_revision,
                        format!(
                            "delta from revision {} but this agent holds no state",
                            d.from_revision
                        ),
                        "apply delta",
                    )));
                };
                match apply_delta(&held.state, &d, FragmentCache::process()) {
                    Ok(next) => (d.to_revision, next),
                    Err(e) => {
                        return Ok(Some(self.nack(d.to_revision, e.to_string(), "apply delta")));
                    }
                }
            }
        };
        if let Some(reverted) = self
            .failsafe
            .as_ref()
            .filter(|f| f.refuses(&wanted.digest()))
            .and(self.reverted.as_ref())
        {
            // The kernel is untouched and still holds what it held.
            let error = format!(
                "refused: the fail-safe left this state (revision {}) after it cut this node off \
                 from the control plane, and returned to revision {}",
                reverted.from_revision, reverted.to_revision
            );
            tracing::warn!(revision, "nack: {error}");
            self.metrics.nacks.inc();
            self.note(|p| p.nacks += 1);
            return Ok(Some(envelope(AgentBody::Nack(Nack {
                revision,
                error,
                failed_operation: "fail-safe".to_string(),
            }))));
        }
        // The control plane's trace id for this revision, so the agent's
        // logs of the apply join the rollout's trace.
        let trace_id = m
            .traceparent
            .split('-')
            .nth(1)
            .filter(|t| t.len() == 32)
            .unwrap_or("")
            .to_string();
        let span = tracing::info_span!("apply", revision, trace_id = %trace_id);
        // A child of the control plane's rollout span, when exported.
        setpoint_runtime::telemetry::set_remote_parent(&span, &m.traceparent);
        use tracing::Instrument as _;
        Ok(Some(self.apply(revision, wanted).instrument(span).await))
    }

    fn nack(&mut self, revision: u64, error: String, operation: &str) -> AgentMessage {
        tracing::warn!(revision, "nack: {error} ({operation})");
        self.metrics.nacks.inc();
        let message = nack_message(revision, &error, operation);
        self.note(|p| {
            p.nacks += 1;
            p.last_error = Some(error);
        });
        // What the kernel holds is no longer known for sure.
        self.held = None;
        message
    }

    pub(super) async fn apply(&mut self, revision: u64, state: NodeDataplane) -> AgentMessage {
        let started = Instant::now();
        // From a state this agent verified, only the difference is applied
        // and read back; otherwise the whole kernel is.
        let held = self.held.clone();
        let target = state.clone();
        let apply = move |a: &mut Applier| {
            let base = held.as_ref().map_or(Base::Kernel, Base::Held);
            a.apply(base, &target).map(|(_, view)| view)
        };
        let result = if self.options.dry_run && self.held.is_some() {
            // Plans from the held view and touches nothing: time grows
            // with the change, and a thread hand-off would cost more than
            // the plan.
            self.applier.lock().ok().map(|mut a| apply(&mut a))
        } else {
            // Kernel tools, or a whole state expanded: off the async
            // threads.
            self.with_applier(apply).await
        };
        match result {
            Some(Ok(view)) => {
                let took = started.elapsed();
                let digest = state.digest();
                self.record_applied(revision, &state);
                self.health_applied(&state).await;
                let before = self.held.replace(Verified {
                    revision,
                    state,
                    view,
                });
                if let Some(f) = &mut self.failsafe {
                    f.applied(before.map(|h| (h.revision, h.state)), Instant::now());
                }
                self.metrics
                    .revision
                    .set(i64::try_from(revision).unwrap_or(i64::MAX));
                self.metrics.apply_seconds.observe(took.as_secs_f64());
                self.metrics
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.note(|p| {
                    p.revision = revision;
                    p.last_apply = took;
                    p.last_error = None;
                });
                envelope(AgentBody::Ack(Ack {
                    revision,
                    digest: digest_bytes(&digest),
                    apply_micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                }))
            }
            Some(Err(e)) => {
                let operation = failed_operation(&e);
                self.nack(revision, e.to_string(), &operation)
            }
            None => self.nack(revision, "the apply worker failed".into(), "apply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::apply::tests::state;
    use crate::client::AgentOptions;
    use crate::client::failsafe::{Failsafe, FailsafeConfig, Reverted};
    use crate::services::IpvsMode;

    #[test]
    fn a_nack_fits_the_upstream_limit_whatever_the_tool_printed() {
        let printed = "iptables-restore: line 1 failed\n\0".repeat(100_000);
        let message = nack_message(7, &printed, "iptables-restore");
        assert!(message.encoded_len() <= setpoint_proto::MAX_UPSTREAM_MESSAGE_BYTES);
        let Some(AgentBody::Nack(nack)) = message.body else {
            panic!("not a nack: {message:?}");
        };
        assert!(nack.error.starts_with("iptables-restore: line 1 failed"));
        assert!(!nack.error.chars().any(char::is_control));
        assert_eq!(nack.failed_operation, "iptables-restore");
    }

    fn delta_message(
        from: u64,
        to: u64,
        base: &NodeDataplane,
        want: &NodeDataplane,
    ) -> ControlMessage {
        let changes = setpoint_dataplane::diff(base, want);
        let d = setpoint_proto::delta(from, to, &changes, &want.digest()).expect("delta");
        ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            traceparent: String::new(),
            body: Some(ControlBody::Delta(d)),
        }
    }

    fn agent() -> Agent {
        Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        })
    }

    #[tokio::test]
    async fn a_delta_from_a_newer_revision_of_the_held_state_applies() {
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let mut a = agent();
        a.held = Some(Verified::check(1, one.clone()).expect("valid"));
        // Revision 2 left this node unchanged: the control plane acked it on
        // the agent's behalf and sends revision 3 as a delta from 2.
        let reply = a
            .handle(delta_message(2, 3, &one, &two))
            .await
            .expect("handled")
            .expect("a reply");
        assert!(
            matches!(reply.body, Some(AgentBody::Ack(Ack { revision: 3, .. }))),
            "{reply:?}"
        );
        assert_eq!(
            a.held.as_ref().map(|h| (h.revision, h.state.digest())),
            Some((3, two.digest()))
        );
        // A delta that does not fit the held state is refused by its digest.
        let other = state(&["10.0.0.9"]);
        let reply = a
            .handle(delta_message(
                3,
                4,
                &other,
                &state(&["10.0.0.9", "10.0.0.8"]),
            ))
            .await
            .expect("handled")
            .expect("a reply");
        let Some(AgentBody::Nack(nack)) = reply.body else {
            panic!("expected a nack: {reply:?}");
        };
        assert_eq!(nack.failed_operation, "apply delta");
        assert!(a.held.is_none(), "after a nack nothing is held");
    }

    #[tokio::test]
    async fn a_state_the_failsafe_left_is_refused_with_the_kernel_untouched() {
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let mut a = agent();
        a.failsafe = Some(Failsafe::having_left(
            FailsafeConfig::default(),
            two.digest(),
        ));
        a.reverted = Some(Reverted {
            from_revision: 2,
            to_revision: 1,
        });
        a.held = Some(Verified::check(1, one.clone()).expect("valid"));
        let reply = a
            .handle(delta_message(1, 2, &one, &two))
            .await
            .expect("handled")
            .expect("a reply");
        let Some(AgentBody::Nack(nack)) = reply.body else {
            panic!("expected a nack: {reply:?}");
        };
        assert_eq!(nack.failed_operation, "fail-safe");
        assert!(nack.error.contains("returned to revision 1"), "{nack:?}");
        assert_eq!(
            a.held.as_ref().map(|h| (h.revision, h.state.digest())),
            Some((1, one.digest())),
            "still holding what the kernel holds"
        );
        // Another state is applied as usual.
        let three = state(&["10.0.0.3"]);
        let reply = a
            .handle(delta_message(1, 3, &one, &three))
            .await
            .expect("handled")
            .expect("a reply");
        assert!(matches!(reply.body, Some(AgentBody::Ack(_))), "{reply:?}");
    }
}
