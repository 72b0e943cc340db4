//! The revision store: every committed computation is a numbered,
//! immutable revision, kept content-addressed on SQLite (embedded default)
//! or PostgreSQL (production), chosen by URL. The only crate that knows SQL.
//!
//! ```text
//!  CommitRequest ──commit()──▶ revisions ─ revision_objects      (one row per revision)
//!   shared parts ─────────────▶ shared_parts(name, rev) ──┐       (only when a part changes)
//!   node compositions ────────▶ nodes(node, rev) ─────────┤       (only when a node's own
//!                                                          ▼        parts or part list change)
//!                                 fragments(key) ─▶ manifests(key) ─▶ chunks(key)
//!                                 header            tree of keys      runs of atoms
//!                                 (content-addressed: written once, ON CONFLICT DO NOTHING)
//! ```
//!
//! A node's state at revision R is its newest `nodes` row at or before R,
//! each shared part it names resolved to that part's newest `shared_parts`
//! row at or before R. A one-endpoint change rewrites one chunk of the
//! `services` fragment, a path of small manifests, one fragment header, one
//! `shared_parts` row and the revision row: the write grows with the
//! change, not with the number of nodes that see it.
//!
//! Reads re-hash everything: a chunk, manifest or header whose bytes do not
//! match its key, or a state whose digest differs from the one recorded at
//! commit, is an error naming it, never a wrong state. [`chunk`] is the
//! storage format (content-defined chunks and manifests); the rest of this
//! crate moves it in and out of SQL. A big fragment's chunks are checked and
//! parsed on every core; a handle keeps the fragments it read last decoded
//! (checked, keyed by digest, bounded by [`StoreOptions::decoded_atoms`]),
//! so reads one after the other do not decode the same `services` part
//! again; a row corrupted after that is caught by the next read that
//! decodes it.
//!
//! Rollback ([`Store::rollback`]) writes a new revision and a `node_pins`
//! row per node naming the fragment keys of every part it had at the
//! target (shared parts resolved as of the target); a node's current state
//! is its pin when pinned, its computed track (`nodes` + `shared_parts`)
//! otherwise, which commits keep recording ([`Store::computed_state`]) until
//! [`Store::resume`]. [`Store::gc`] drops revisions outside a
//! [`Retention`], the version rows only they read, then unreferenced
//! content, in short transactions beside commits. `agent_status` holds each
//! node's last agent report.
//!
//! Writers are fenced: [`Store::acquire_epoch`] hands out increasing
//! epochs, and a commit whose epoch is older than the newest one is refused
//! inside its transaction (a deposed leader cannot write).

mod agents;
pub mod chunk;
mod db;
mod decoded;
mod error;
mod gc;
mod pins;
mod store;
mod types;
mod write;

pub use agents::{
    MAX_AGENT_VERSION_BYTES, MAX_NACK_ERROR_BYTES, MAX_NACK_OPERATION_BYTES, MAX_NODE_NAME_BYTES,
    RefusedStatus,
};
pub use db::Leadership;
pub use error::{Result, StoreError};
pub use setpoint_dataplane::text::clean_text;
pub use store::{Store, StoreOptions};
pub use types::{
    AgentResult, AgentStatus, Backend, Cause, CommitRequest, Epoch, FailPoint, GcReport, NodeParts,
    OWN_PART_PREFIX, Pin, Retention, RevisionAction, RevisionId, RevisionInfo, RollbackRequest,
    StoreStats,
};
