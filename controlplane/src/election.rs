//! Who commits when several replicas run: the store's leader lock or a
//! Kubernetes Lease ([`Election`]), one won term of it ([`Term`]), and the
//! [`Role`] the rest of the process sees.
//!
//! **Architecture invariant:** winning an election is not enough to commit:
//! the leader then takes a new store epoch, which fences every commit of an
//! older leader. Nothing here talks to agents or operators.

use std::sync::Arc;
use std::time::Duration;

use setpoint_kube::lease::{LeaseElector, LeaseHold, LeaseSettings};
use setpoint_store::{Leadership, Store};

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

/// How often a follower tries the store's leader lock: a try is one
/// query on a pooled connection, and the survivor of a leader's crash
/// leads at most this long after PostgreSQL released the lock.
pub(crate) const STORE_RETRY: Duration = Duration::from_millis(250);

/// Whether this replica computes and commits, or only serves streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// One term of leadership, however it was won.
pub(crate) enum Term {
    Store(Leadership),
    Lease(LeaseHold),
}

impl Term {
    /// Whether this replica still leads; once false, it must step down.
    pub(crate) async fn still_held(&mut self) -> bool {
        match self {
            Term::Store(l) => l.still_held().await,
            Term::Lease(hold) => hold.held(),
        }
    }
}

/// Tries to win a [`Term`] the way an [`Election`] says, as often as the
/// caller asks (every [`Campaign::retry`]).
pub(crate) struct Campaign {
    store: Store,
    /// The Lease's elector; `None`: the store's lock.
    elector: Option<Arc<tokio::sync::Mutex<LeaseElector>>>,
    /// How long to wait between tries.
    pub(crate) retry: Duration,
}

impl Campaign {
    pub(crate) fn new(election: &Election, store: Store) -> Campaign {
        let (elector, retry) = match election {
            // A lock held by a dead process is free as soon as PostgreSQL
            // sees its connection close: a follower notices within this.
            Election::Store => (None, STORE_RETRY),
            Election::Lease { client, settings } => (
                Some(Arc::new(tokio::sync::Mutex::new(LeaseElector::new(
                    client.clone(),
                    settings.clone(),
                )))),
                settings.retry_period,
            ),
        };
        Campaign {
            store,
            elector,
            retry,
        }
    }

    /// One try at leading: the store's lock, or the Lease.
    pub(crate) async fn try_lead(&self) -> anyhow::Result<Option<Term>> {
        Ok(match &self.elector {
            None => self.store.try_lead().await?.map(Term::Store),
            Some(elector) => LeaseElector::campaign(elector).await?.map(Term::Lease),
        })
    }

    /// Whether a failed try is the store's failure (a metric counts those).
    pub(crate) fn by_store(&self) -> bool {
        self.elector.is_none()
    }
}
