//! The store's vocabulary: revisions, epochs, commit requests and what
//! reads return.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use setpoint_dataplane::{Digest, Fragment, NodeDataplane};

/// A revision number: positive, strictly increasing with each commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionId(pub u64);

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A leader's fencing token from [`crate::Store::acquire_epoch`]. A commit
/// carrying an epoch lower than the highest one the store has seen is
/// refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a revision exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cause {
    /// Keys of the objects that changed (`Kind/namespace/name`).
    pub objects: Vec<String>,
    /// One line for operators.
    pub summary: String,
}

/// The part name prefix of a node's own parts (`node/<n>`) in
/// [`NodeParts::split`]; every other part is taken as shared.
pub const OWN_PART_PREFIX: &str = "node/";

/// One node's composition: which shared parts it uses and its own parts.
#[derive(Clone, Debug, Default)]
pub struct NodeParts {
    /// Names of shared parts, each given in this or an earlier commit.
    pub shared: BTreeSet<String>,
    /// Parts only this node has, by name.
    pub own: BTreeMap<String, Arc<Fragment>>,
}

impl NodeParts {
    /// Splits a computed state by part name: `node/…` parts are the node's
    /// own, every other part is shared (returned separately).
    pub fn split(state: &NodeDataplane) -> (NodeParts, Vec<(String, Arc<Fragment>)>) {
        let mut parts = NodeParts::default();
        let mut shared = Vec::new();
        for (name, fragment) in state.parts() {
            if name.starts_with(OWN_PART_PREFIX) {
                parts.own.insert(name.clone(), fragment.clone());
            } else {
                parts.shared.insert(name.clone());
                shared.push((name.clone(), fragment.clone()));
            }
        }
        (parts, shared)
    }
}

/// Everything one revision records.
///
/// Only what changed needs to be here: shared parts not listed keep their
/// current fragment, nodes not listed keep their composition. Listing an
/// unchanged part or node costs a pointer or digest comparison and writes
/// nothing.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub epoch: Epoch,
    pub cause: Cause,
    /// Shared parts (`base`, `services`, `zone/<z>`) by name.
    pub shared: BTreeMap<String, Arc<Fragment>>,
    /// Shared parts that no longer exist; no node may still use them.
    pub removed_shared: BTreeSet<String>,
    /// Nodes whose composition may have changed, with their parts.
    pub nodes: BTreeMap<String, NodeParts>,
    pub removed_nodes: BTreeSet<String>,
}

impl CommitRequest {
    pub fn new(epoch: Epoch, cause: Cause) -> Self {
        CommitRequest {
            epoch,
            cause,
            ..Default::default()
        }
    }

    /// Adds a node's computed state, split by [`NodeParts::split`]; its
    /// shared parts are added too (the first fragment given for a name
    /// wins: within one computation every node shares the same one).
    pub fn add_node_state(&mut self, node: impl Into<String>, state: &NodeDataplane) {
        let (parts, shared) = NodeParts::split(state);
        for (name, fragment) in shared {
            self.shared.entry(name).or_insert(fragment);
        }
        self.nodes.insert(node.into(), parts);
    }
}

/// A committed revision as listed by [`crate::Store::list_revisions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionInfo {
    pub revision: RevisionId,
    /// Unix milliseconds.
    pub committed_ms: i64,
    pub epoch: Epoch,
    pub cause: Cause,
    /// How many nodes' states changed.
    pub nodes_changed: u64,
    /// Shared parts written at this revision.
    pub shared_changed: Vec<String>,
    /// What wrote it.
    pub action: RevisionAction,
}

/// What wrote a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionAction {
    /// [`crate::Store::commit`]: a computation.
    Commit,
    /// [`crate::Store::rollback`] to `to`; the cause's summary is the reason.
    Rollback { to: RevisionId },
    /// [`crate::Store::resume`]: pins lifted.
    Resume,
}

/// Roll nodes back to the states they had at an earlier revision
/// ([`crate::Store::rollback`]).
#[derive(Clone, Debug)]
pub struct RollbackRequest {
    pub epoch: Epoch,
    /// The revision whose states the nodes get back.
    pub to: RevisionId,
    /// Which nodes; `None` means every node that exists both at `to` and
    /// at the head.
    pub nodes: Option<BTreeSet<String>>,
    /// Why, for operators; recorded as the revision's summary and on the pin.
    pub reason: String,
}

/// A node held at an old state by a rollback, until resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub node: String,
    /// The revision whose state the node is held at.
    pub held_at: RevisionId,
    /// The rollback revision that pinned it.
    pub since: RevisionId,
    pub reason: String,
}

/// How an agent's last apply ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentResult {
    Ack,
    Nack {
        error: String,
        /// What the agent was doing (e.g. `ipset restore`).
        operation: String,
    },
}

/// The last report of a node's agent ([`crate::Store::record_agent_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentStatus {
    pub node: String,
    /// The revision the node's kernel state is known to be at; `None`
    /// before its first successful apply.
    pub applied_revision: Option<RevisionId>,
    /// Digest of the state the agent applied (it hashes what it applied).
    pub applied_digest: Option<Digest>,
    pub result: AgentResult,
    /// Unix milliseconds of the contact this report came from.
    pub contact_ms: i64,
    pub agent_version: String,
}

/// What [`crate::Store::gc`] keeps: a revision survives when it is among
/// the newest `keep_newest` (at least the head is always kept), or younger
/// than `keep_younger_than_ms` at `now_ms`, or a pinned node is held at it.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub keep_newest: usize,
    pub keep_younger_than_ms: i64,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// What one [`crate::Store::gc`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub revisions: u64,
    /// `nodes`, `shared_parts` and `node_pins` rows no kept revision reads.
    pub version_rows: u64,
    pub fragments: u64,
    pub manifests: u64,
    pub chunks: u64,
}

/// Row counts and bytes on disk, from the database itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub revisions: u64,
    pub chunks: u64,
    pub manifests: u64,
    pub fragments: u64,
    pub shared_parts: u64,
    pub nodes: u64,
    /// PostgreSQL: total relation size of the store's tables and indexes;
    /// SQLite: page_count × page_size of the database file.
    pub bytes: u64,
}

/// Places where a test can make a commit fail on purpose
/// ([`crate::Store::fail_commits_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// After chunks, manifests and fragments are written.
    AfterContent,
    /// After every row is written, before COMMIT.
    BeforeCommit,
}

/// Which database a store runs on, chosen by its URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path?mode=rwc`: one file, created on first use.
    Sqlite,
    /// `postgres://…`: shared by control-plane replicas.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}
