//! [`StoreError`]: what failed, naming the object (node, revision, digest).

use crate::chunk::ChunkError;
use setpoint_dataplane::Digest;

use crate::types::{Epoch, FailPoint, RevisionId};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?} names no supported backend (expected sqlite://… or postgres://…)")]
    UnsupportedUrl { url: String },
    #[error("opening the {backend} store: {source}")]
    Connect {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the {backend} store: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed; `what` says which step.
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A deposed leader tried to commit.
    #[error(
        "commit refused: writer epoch {ours} is older than epoch {current} of the current leader"
    )]
    StaleEpoch { ours: Epoch, current: Epoch },
    #[error("invalid commit request: {0}")]
    InvalidRequest(String),
    #[error("revision {0} does not exist")]
    UnknownRevision(RevisionId),
    /// Stored bytes that do not hash to their key or do not parse.
    #[error("node {node} at revision {revision}: {source}")]
    Corrupt {
        node: String,
        revision: RevisionId,
        /// Boxed: the error names up to three digests, and every `Result`
        /// of this crate carries the variant's size.
        #[source]
        source: Box<ChunkError>,
    },
    /// A row a node state refers to is missing.
    #[error("node {node} at revision {revision}: {what} {key} is missing")]
    Missing {
        node: String,
        revision: RevisionId,
        what: &'static str,
        key: String,
    },
    /// A row whose columns cannot be what this crate wrote.
    #[error("malformed row in {table}: {reason}")]
    BadRow { table: &'static str, reason: String },
    #[error(
        "node {node} at revision {revision}: assembled state hashes to {actual}, the commit recorded {expected}"
    )]
    StateDigest {
        node: String,
        revision: RevisionId,
        expected: Digest,
        actual: Digest,
    },
    /// Another writer committed since this store last looked, twice in a
    /// row; the caller may retry.
    #[error(
        "the store moved on under this writer (revision {found} exists, expected {expected} next)"
    )]
    Raced { expected: i64, found: i64 },
    #[error("injected failure at {0:?}")]
    Injected(FailPoint),
    #[error("preparing the commit: {0}")]
    Task(String),
}

/// Attaches the step name to a sqlx error.
pub(crate) trait Context<T> {
    fn what(self, what: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn what(self, what: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Query { what, source })
    }
}
