//! One stream: the hello with what the kernel holds, heartbeats from
//! their own task, the control plane's messages reassembled from pieces
//! and handled in order, the stream given up when the control plane falls
//! silent. Between messages it drains removed TCP real servers and
//! repairs drift.

use std::time::Duration;

use setpoint_proto::pieces::Reassembly;
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_client::AgentStreamClient;
use setpoint_proto::v1::{AgentMessage, Heartbeat, Hello};
use setpoint_proto::{PROTOCOL_VERSION, digest_bytes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use super::connect::connect;
use super::{Agent, unix_millis};
use crate::apply::{ApplyError, Base};

pub(super) fn envelope(body: AgentBody) -> AgentMessage {
    AgentMessage {
        protocol_version: PROTOCOL_VERSION,
        body: Some(body),
    }
}

impl Agent {
    /// Serves one stream until it ends: `Ok` when the control plane closed it.
    pub(super) async fn session(&mut self) -> anyhow::Result<()> {
        let mut client = AgentStreamClient::new(connect(&self.options).await?)
            .max_decoding_message_size(setpoint_proto::MAX_DOWNSTREAM_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(8);
        let (revision, digest) = match &self.held {
            Some(held) => (held.revision, digest_bytes(&held.state.digest())),
            None => (0, Vec::new()),
        };
        tx.send(envelope(AgentBody::Hello(Hello {
            node: self.options.node.clone(),
            agent_version: format!(
                "setpoint-agent {}{}",
                env!("CARGO_PKG_VERSION"),
                if self.options.dry_run {
                    " (dry-run)"
                } else {
                    ""
                }
            ),
            applied_revision: revision,
            applied_digest: digest,
            // Snapshots deflated: about a seventeenth of the bytes.
            accept_encodings: setpoint_proto::parts::accepted_encodings(),
        })))
        .await?;
        let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        self.was_connected = true;
        self.metrics.connected.set(1);
        self.note(|p| {
            p.connected = true;
            p.last_error = None;
        });
        // Heartbeats go out from their own task: an apply (or a decode)
        // that takes longer than the control plane's silence limit must
        // not get the stream cut under it.
        let beats = tx.clone();
        let every = self.options.heartbeat;
        let _heartbeats = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(every);
            loop {
                heartbeat.tick().await;
                let beat = envelope(AgentBody::Heartbeat(Heartbeat {
                    unix_millis: unix_millis(),
                }));
                if beats.send(beat).await.is_err() {
                    return;
                }
            }
        }));
        let mut drift = tokio::time::interval(self.options.drift_interval);
        drift.tick().await;
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        let mut reassembly = Reassembly::default();
        let mut addresses = self.addresses.clone();
        // A control plane whose packets stop arriving (a blackholed path)
        // leaves the stream open; its heartbeats tell.
        let silence = tokio::time::sleep(self.options.silence_limit);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                biased;
                message = inbound.message() => match message? {
                    None => return Ok(()),
                    Some(m) => {
                        silence
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.options.silence_limit);
                        if let Some(f) = &mut self.failsafe {
                            f.heard();
                        }
                        let Some(m) = reassembly
                            .push(m)
                            .map_err(|e| anyhow::anyhow!("the control plane's message pieces: {e}"))?
                        else {
                            continue;
                        };
                        if let Some(reply) = self.handle(m).await? {
                            tx.send(reply).await?;
                        }
                    }
                },
                _ = &mut silence => anyhow::bail!(
                    "nothing heard from the control plane for {:?}",
                    self.options.silence_limit
                ),
                next = super::addresses::changed(&mut addresses) => {
                    self.addresses_changed(next).await;
                }
                _ = drift.tick() => self.repair_drift().await,
                _ = reap.tick() => {
                    if !self.options.dry_run {
                        match self.with_applier(|a| a.reap_drained()).await {
                            Some(Ok(n)) => {
                                self.metrics.drained.inc_by(u64::try_from(n).unwrap_or(0));
                            }
                            Some(Err(e)) => tracing::warn!("draining real servers: {e}"),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    /// Re-reads the kernel; puts back what someone changed.
    async fn repair_drift(&mut self) {
        let Some(held) = self.held.clone() else {
            return;
        };
        if self.options.dry_run {
            return;
        }
        let (revision, state) = (held.revision, held.state.clone());
        self.metrics.drift_checks.inc();
        match self.with_applier(move |a| a.verify(&held)).await {
            Some(Err(ApplyError::Mismatch { differences, .. })) => {
                tracing::warn!(revision, "drift: {}", differences.join("; "));
                match self
                    .with_applier(move |a| a.apply(Base::Kernel, &state))
                    .await
                {
                    Some(Ok(_)) => {
                        self.note(|p| p.drift_repairs += 1);
                        self.metrics.drift_repairs.inc();
                    }
                    Some(Err(e)) => tracing::warn!("drift repair failed: {e}"),
                    None => {}
                }
            }
            Some(Err(e)) => tracing::warn!("drift check failed: {e}"),
            _ => {}
        }
    }
}
