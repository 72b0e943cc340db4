//! Leader election through a `coordination.k8s.io/v1` Lease, with
//! client-go's leaderelection semantics.
//!
//! ```text
//!  try_acquire_or_renew: GET ─▶ absent: POST (holder = us, transitions 0)
//!                            └▶ held by another, renewed within
//!                               leaseDuration (by our clock): not ours
//!                            └▶ ours, or expired: PUT with the read
//!                               resourceVersion (transitions + 1 on a
//!                               takeover); 409 Conflict: someone else won
//!  LeaseHold: renews every retry period; lost once another holder is seen
//!             or no renewal succeeded for the renew deadline
//! ```
//!
//! Expiry is judged by when *this* process last saw the record change, not
//! by the timestamps in it, so clocks need not agree. The Lease only picks
//! the writer: the winner still takes a new store epoch, and the store
//! refuses commits of an older one, so a deposed leader that has not
//! noticed yet cannot write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::{Mutex, watch};

/// What a Lease election is about and how fast it moves. client-go's
/// defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Who we are in `holderIdentity`: unique per process.
    pub identity: String,
    /// How long a holder's last renewal keeps others out.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; shorter
    /// than `lease_duration`, so it is gone before anyone may take over.
    pub renew_deadline: Duration,
    /// Between tries to acquire, and between renewals.
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, name: &str, identity: String) -> LeaseSettings {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `<pod or host name>-<random suffix>`: two processes on one host (or a
/// restarted pod reusing its name) never share an identity.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "setpoint".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The result of one try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We took the Lease (created it, or took it over after expiry).
    Acquired,
    /// We held it and renewed it.
    Renewed,
    /// Another holder's Lease has not expired.
    HeldBy(String),
    /// Our write lost a race (409 Conflict / AlreadyExists).
    Conflict,
}

impl Attempt {
    pub fn leads(&self) -> bool {
        matches!(self, Attempt::Acquired | Attempt::Renewed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Lease {namespace}/{name}: {source}")]
pub struct LeaseError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// One replica's view of the Lease.
pub struct LeaseElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The spec last read or written, and when we saw it change.
    observed: Option<(LeaseSpec, Instant)>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaseElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> LeaseElector {
        LeaseElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = now();
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let name = self.settings.name.clone();
        let current = self.api.get_opt(&name).await.map_err(|e| self.error(e))?;
        let Some(mut lease) = current else {
            let spec = self.spec(None, 0);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = Some((spec, Instant::now()));
                    Ok(Attempt::Acquired)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(self.error(e)),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != old) {
            self.observed = Some((old.clone(), Instant::now()));
        }
        let holder = old.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.settings.identity;
        if !holder.is_empty() && !ours {
            // The holder's own duration rules (it may differ from ours).
            let duration = old
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.settings.lease_duration, Duration::from_secs);
            let seen_at = self
                .observed
                .as_ref()
                .map_or_else(Instant::now, |(_, at)| *at);
            if seen_at.elapsed() < duration {
                return Ok(Attempt::HeldBy(holder));
            }
        }
        let transitions = old.lease_transitions.unwrap_or(0);
        let spec = if ours {
            self.spec(old.acquire_time.clone(), transitions)
        } else {
            self.spec(None, transitions.saturating_add(1))
        };
        // The read resourceVersion stays in the metadata: a write by anyone
        // since then makes this PUT a 409.
        lease.spec = Some(spec.clone());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = Some((spec, Instant::now()));
                Ok(if ours {
                    Attempt::Renewed
                } else {
                    Attempt::Acquired
                })
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Tries once; when we lead, returns a hold that keeps renewing.
    pub async fn campaign(
        elector: &Arc<Mutex<LeaseElector>>,
    ) -> Result<Option<LeaseHold>, LeaseError> {
        let attempt = elector.lock().await.try_acquire_or_renew().await?;
        Ok(attempt
            .leads()
            .then(|| LeaseHold::renewing(elector.clone())))
    }
}

/// Leadership by Lease while it lasts: a task renews it every retry period.
/// Dropping the hold stops renewing (the Lease then expires for others).
pub struct LeaseHold {
    held: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseHold {
    fn renewing(elector: Arc<Mutex<LeaseElector>>) -> LeaseHold {
        let (tx, held) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                let (retry, deadline, identity) = {
                    let e = elector.lock().await;
                    let s = e.settings();
                    (s.retry_period, s.renew_deadline, s.identity.clone())
                };
                tokio::time::sleep(retry).await;
                let left = deadline.saturating_sub(renewed.elapsed());
                let outcome = tokio::time::timeout(left, async {
                    elector.lock().await.try_acquire_or_renew().await
                })
                .await;
                match outcome {
                    Ok(Ok(Attempt::Renewed)) => renewed = Instant::now(),
                    Ok(Ok(Attempt::HeldBy(other))) => {
                        tracing::warn!(%identity, holder = %other, "the Lease has another holder");
                        break;
                    }
                    // Someone held it meanwhile (or deleted it): this term
                    // is over even though we could take it again; the next
                    // term takes a new epoch.
                    Ok(Ok(Attempt::Acquired)) => {
                        tracing::warn!(%identity, "the Lease changed hands meanwhile");
                        break;
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        tracing::info!(%identity, "renewing the Lease lost a race; retrying")
                    }
                    Ok(Err(e)) => tracing::warn!(%identity, "renewing the Lease: {e}"),
                    Err(_) => {}
                }
                if renewed.elapsed() >= deadline {
                    tracing::warn!(%identity, "the Lease was not renewed within the renew deadline");
                    break;
                }
            }
            tx.send_replace(false);
        });
        LeaseHold { held, task }
    }

    /// Whether we still lead: false for good once the Lease is lost.
    pub fn held(&self) -> bool {
        *self.held.borrow()
    }
}
