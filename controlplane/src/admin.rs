//! The admin API (`proto/setpoint/v1/admin.proto`) on its own listener:
//! reads go straight to the store, writes (rollback, pause, resume) go to
//! the leader, which runs them with its fencing epoch between commits.
//!
//! ```text
//!  setpointctl ─TLS─▶ peer_limits (per peer, total, handshake, idle)
//!      ─HTTP/2 headers─▶ Authenticate (token → Access, before any body byte is read)
//!      ─▶ AdminServer (decodes at most MAX_REQUEST_BYTES) ─▶ AdminService ─┬─ reads ─▶ Store
//!                                                                         └─ AdminCommand (mpsc) ─▶ leader loop (serve/replica.rs)
//!                                                                               Store::rollback / resume with the leader's epoch
//! ```
//!
//! `ClusterPolicies` also reads what the leader publishes of its
//! computation (each ClusterNetworkPolicy's `since` revision, see
//! [`policies`]); a follower says it does not know.
//!
//! Tokens: `serve --admin-token-file F`. Each non-empty line not starting
//! with `#` is `<role> <token>` (role `read` or `admin`) or just `<token>`
//! (role `admin`). Tokens are compared in constant time. Without a token
//! file every call is refused. The file is read again when its bytes
//! change (a rotated Secret); a file that does not parse keeps the
//! previous tokens. A file group or others may read is warned about.

mod listener;
pub mod policies;
mod tokens;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use setpoint_dataplane::Format;
use setpoint_proto::admin::admin_server::Admin;
use setpoint_proto::admin::{
    ClusterPoliciesRequest, ClusterPoliciesResponse, ConvergenceRequest, ConvergenceResponse,
    DiffNodeRequest, DiffNodeResponse, ExplainRequest, ExplainResponse, FleetSummary,
    ListRevisionsRequest, ListRevisionsResponse, NodeLatency, NodeStatus, PauseRequest,
    ResumeRequest, Revision, RevisionProgress, RollbackRequest, ShowNodeRequest, ShowNodeResponse,
    StatusRequest, StatusResponse, WriteResponse,
};
use setpoint_store::{
    AgentResult, Epoch, RevisionAction, RevisionId, RollbackRequest as StoreRollback, Store,
    StoreError,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::election::Role;
use crate::leader::AddressProblems;
use crate::peer_limits::ListenerLimits;
use crate::rollout::RolloutStatus;
pub use listener::Listener;
use tokens::require;
pub use tokens::{Access, Authenticate, TokenFileError, Tokens};

/// The largest request message the admin API decodes. Its requests are
/// names, numbers and a reason: a rollback naming about 2,000 nodes fits.
/// (Responses may be large: a fleet's status, a node's state.)
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Where and how the admin API listens.
#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    /// The admin listener; `None`: no admin API at all.
    pub listen: Option<SocketAddr>,
    /// The token file (format in the module doc); `None`: every call is
    /// refused.
    pub token_file: Option<PathBuf>,
    /// TLS on the admin listener. Without it the listener must be on
    /// loopback.
    pub tls: Option<AdminTls>,
    pub limits: AdminLimits,
}

/// The admin listener's certificate and key (PEM files), reloaded when
/// their bytes change. Clients are not asked for certificates: they
/// present bearer tokens.
#[derive(Clone, Debug)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What one admin peer may hold, and how long anything may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    pub listener: ListenerLimits,
    /// Concurrent calls on one connection (HTTP/2 streams).
    pub streams_per_connection: u32,
    /// One call, from its headers to its response.
    pub request_timeout: Duration,
    /// A connection is closed this long plus `request_timeout` after it
    /// opened (clients reconnect), whatever it is doing.
    pub max_connection_age: Duration,
    /// How often the token and TLS files are looked at for a change.
    pub reload_every: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            listener: ListenerLimits {
                per_peer: 16,
                total: 128,
                pending_handshakes: 32,
                handshake: Duration::from_secs(10),
                idle: Duration::from_secs(60),
            },
            streams_per_connection: 16,
            request_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(600),
            reload_every: Duration::from_secs(5),
        }
    }
}

/// A write the admin API asks the leader to run with its epoch.
#[derive(Clone, Debug)]
pub enum AdminWrite {
    Rollback {
        to: RevisionId,
        nodes: Option<BTreeSet<String>>,
        reason: String,
    },
    /// Pins nodes at their states at the head (a rollback to the head).
    Pause {
        nodes: Option<BTreeSet<String>>,
        reason: String,
    },
    Resume {
        nodes: Option<BTreeSet<String>>,
    },
}

impl AdminWrite {
    /// Runs the write; the leader calls it between commits, with its epoch.
    pub async fn execute(&self, store: &Store, epoch: Epoch) -> Result<RevisionId, StoreError> {
        match self {
            AdminWrite::Rollback { to, nodes, reason } => {
                store
                    .rollback(StoreRollback {
                        epoch,
                        to: *to,
                        nodes: nodes.clone(),
                        reason: reason.clone(),
                    })
                    .await
            }
            AdminWrite::Pause { nodes, reason } => {
                let head = store.head().await?.ok_or_else(|| {
                    StoreError::InvalidRequest("no revision yet: nothing to pause".into())
                })?;
                store
                    .rollback(StoreRollback {
                        epoch,
                        to: head,
                        nodes: nodes.clone(),
                        reason: format!("pause: {reason}"),
                    })
                    .await
            }
            AdminWrite::Resume { nodes } => store.resume(epoch, nodes.clone()).await,
        }
    }
}

/// An [`AdminWrite`] in flight to the leader, with where its outcome goes.
/// The leader skips a command whose caller has given up (`reply` closed).
pub struct AdminCommand {
    pub write: AdminWrite,
    pub reply: oneshot::Sender<Result<RevisionId, StoreError>>,
}

/// How long a write waits for the leader.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PAGE: u32 = 1000;
const MAX_NAME: usize = 253;
const MAX_REASON: usize = 1024;

/// The gRPC service. Cheap to clone. Serve it behind [`Authenticate`]
/// (as [`Listener::serve`] does): its methods refuse requests that did not
/// pass it.
#[derive(Clone)]
pub struct AdminService {
    store: Store,
    writes: mpsc::Sender<AdminCommand>,
    role: watch::Receiver<Role>,
    rollout: Option<watch::Receiver<RolloutStatus>>,
    /// The leader's compute problems, for `Explain`.
    address_problems: Option<watch::Receiver<Option<Arc<AddressProblems>>>>,
    /// Revisions' progress through this replica's agents.
    sli: Option<crate::sli::Sli>,
    /// The leader's ClusterNetworkPolicy revisions, for `ClusterPolicies`.
    cluster_policies: Option<watch::Receiver<Option<Arc<policies::PolicyRevisions>>>>,
}

impl AdminService {
    pub fn new(
        store: Store,
        writes: mpsc::Sender<AdminCommand>,
        role: watch::Receiver<Role>,
    ) -> AdminService {
        AdminService {
            store,
            writes,
            role,
            rollout: None,
            address_problems: None,
            sli: None,
            cluster_policies: None,
        }
    }

    /// `ClusterPolicies` answers from what the leader publishes here (a
    /// follower's receiver holds `None`).
    pub fn with_cluster_policies(
        mut self,
        published: watch::Receiver<Option<Arc<policies::PolicyRevisions>>>,
    ) -> AdminService {
        self.cluster_policies = Some(published);
        self
    }

    /// Reports revisions' progress in `Status` and `Convergence`.
    pub fn with_sli(mut self, sli: crate::sli::Sli) -> AdminService {
        self.sli = Some(sli);
        self
    }

    /// The newest `limit` revisions' progress, newest first.
    fn progress(&self, limit: usize) -> Vec<RevisionProgress> {
        self.sli
            .as_ref()
            .map(|s| s.reports(limit).iter().map(progress_message).collect())
            .unwrap_or_default()
    }

    /// `Explain` lists what compute refused about the destination address
    /// (what the leader publishes; a follower's receiver holds `None`).
    pub fn with_address_problems(
        mut self,
        problems: watch::Receiver<Option<Arc<AddressProblems>>>,
    ) -> AdminService {
        self.address_problems = Some(problems);
        self
    }

    /// Reports the progressive rollout's phase in `Status`.
    pub fn with_rollout(mut self, rollout: watch::Receiver<RolloutStatus>) -> AdminService {
        self.rollout = Some(rollout);
        self
    }

    async fn write(&self, write: AdminWrite) -> Result<Response<WriteResponse>, Status> {
        if *self.role.borrow() != Role::Leader {
            return Err(Status::failed_precondition(
                "not the leader: this replica only serves reads; send writes to the replica holding the leader lock",
            ));
        }
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(AdminCommand {
                write: write.clone(),
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("the leader is not running"))?;
        let revision = match tokio::time::timeout(WRITE_TIMEOUT, outcome).await {
            Err(_) => return Err(Status::unavailable("the leader did not answer in time")),
            Ok(Err(_)) => {
                return Err(Status::unavailable(
                    "the leader stopped before running the write",
                ));
            }
            Ok(Ok(result)) => result.map_err(store_status)?,
        };
        tracing::info!(revision = revision.0, ?write, "admin write committed");
        Ok(Response::new(WriteResponse {
            revision: revision.0,
        }))
    }

    async fn head(&self) -> Result<RevisionId, Status> {
        self.store
            .head()
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::failed_precondition("no revision committed yet"))
    }
}

/// Revisions `Status` shows; `Convergence` answers at most the tracker's.
const STATUS_PROGRESS: usize = 5;
const DEFAULT_PROGRESS: usize = 10;

fn progress_message(r: &crate::sli::Report) -> RevisionProgress {
    let ms = r
        .start
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let [p50, p99, p100] = r.reached.map(|d| d.map(|d| d.as_secs_f64()));
    RevisionProgress {
        revision: r.revision,
        started_at_ms: ms,
        started_by: r.start.by.as_str().to_string(),
        total: r.total,
        acked: r.acked,
        pending: r.pending,
        nacks: r.nacks,
        unchanged: r.unchanged,
        left: r.left,
        p50_seconds: p50,
        p99_seconds: p99,
        p100_seconds: p100,
        waiting: r.waiting.clone(),
        failing: r.failing.clone(),
        slowest: r
            .slowest
            .iter()
            .map(|(node, d)| NodeLatency {
                node: node.clone(),
                seconds: d.as_secs_f64(),
            })
            .collect(),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownRevision(_) => Status::not_found(e.to_string()),
        StoreError::InvalidRequest(_) => Status::invalid_argument(e.to_string()),
        StoreError::StaleEpoch { .. } => {
            Status::failed_precondition(format!("not the leader any more: {e}"))
        }
        StoreError::Raced { .. } => Status::aborted(e.to_string()),
        StoreError::Query { .. } | StoreError::Connect { .. } => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{what} must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// `None` (all) for an empty list; duplicates collapse.
fn node_set(nodes: Vec<String>) -> Result<Option<BTreeSet<String>>, Status> {
    if nodes.is_empty() {
        return Ok(None);
    }
    for n in &nodes {
        check_name("a node name", n)?;
    }
    Ok(Some(nodes.into_iter().collect()))
}

fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.trim().is_empty() {
        return Err(Status::invalid_argument("a reason is required"));
    }
    if reason.len() > MAX_REASON {
        return Err(Status::invalid_argument(format!(
            "the reason must be at most {MAX_REASON} bytes"
        )));
    }
    Ok(())
}

fn revision_message(info: setpoint_store::RevisionInfo) -> Revision {
    let (action, target) = match info.action {
        RevisionAction::Commit => ("commit", 0),
        RevisionAction::Rollback { to } => ("rollback", to.0),
        RevisionAction::Resume => ("resume", 0),
    };
    Revision {
        revision: info.revision.0,
        created_at_ms: info.committed_ms,
        cause: info.cause.summary,
        objects: info.cause.objects,
        nodes_changed: info.nodes_changed,
        epoch: info.epoch.0,
        action: action.to_string(),
        target,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_revisions(
        &self,
        request: Request<ListRevisionsRequest>,
    ) -> Result<Response<ListRevisionsResponse>, Status> {
        require(&request, Access::Read)?;
        let ListRevisionsRequest { page_size, before } = request.into_inner();
        let page_size = match page_size {
            0 => 50,
            n => n.min(MAX_PAGE),
        };
        let before = (before > 0).then_some(RevisionId(before));
        let head = self.store.head().await.map_err(store_status)?;
        let infos = self
            .store
            .list_revisions(page_size, before)
            .await
            .map_err(store_status)?;
        let full = infos.len() == page_size as usize;
        let revisions: Vec<Revision> = infos.into_iter().map(revision_message).collect();
        let next_before = match revisions.last() {
            Some(last) if full && last.revision > 1 => last.revision,
            _ => 0,
        };
        Ok(Response::new(ListRevisionsResponse {
            revisions,
            next_before,
            head: head.map(|h| h.0).unwrap_or(0),
        }))
    }

    async fn show_node(
        &self,
        request: Request<ShowNodeRequest>,
    ) -> Result<Response<ShowNodeResponse>, Status> {
        require(&request, Access::Read)?;
        let ShowNodeRequest {
            node,
            revision,
            format,
        } = request.into_inner();
        check_name("the node name", &node)?;
        let format: Format = if format.is_empty() {
            Format::Text
        } else {
            format
                .parse::<Format>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        let revision = match revision {
            0 => self.head().await?,
            r => RevisionId(r),
        };
        let state = self
            .store
            .node_state(&node, revision)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("node {node} has no state at revision {revision}"))
            })?;
        Ok(Response::new(ShowNodeResponse {
            revision: revision.0,
            digest: state.digest().to_string(),
            text: setpoint_dataplane::render(&state, format),
        }))
    }

    async fn diff_node(
        &self,
        request: Request<DiffNodeRequest>,
    ) -> Result<Response<DiffNodeResponse>, Status> {
        require(&request, Access::Read)?;
        let DiffNodeRequest { node, from, to } = request.into_inner();
        check_name("the node name", &node)?;
        if from == 0 || to == 0 {
            return Err(Status::invalid_argument(
                "from and to must be revisions (> 0)",
            ));
        }
        let diff = self
            .store
            .diff(&node, RevisionId(from), RevisionId(to))
            .await
            .map_err(store_status)?;
        let changes = diff
            .changes
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(format!("encoding a change: {e}")))?;
        Ok(Response::new(DiffNodeResponse {
            count: changes.len() as u64,
            changes,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require(&request, Access::Read)?;
        let head = self.store.head().await.map_err(store_status)?;
        let agents = self.store.agent_statuses().await.map_err(store_status)?;
        let pins = self.store.pins().await.map_err(store_status)?;
        // Every node of the head, and any other that reported or is pinned.
        let mut names: BTreeSet<String> = match head {
            Some(h) => self.store.node_names(h).await.map_err(store_status)?,
            None => BTreeSet::new(),
        };
        names.extend(agents.iter().map(|a| a.node.clone()));
        names.extend(pins.iter().map(|p| p.node.clone()));
        let mut nodes = Vec::with_capacity(names.len());
        let mut fleet = FleetSummary::default();
        for name in names {
            let agent = agents.iter().find(|a| a.node == name);
            let pin = pins.iter().find(|p| p.node == name);
            let desired = match head {
                Some(h) => self
                    .store
                    .node_state(&name, h)
                    .await
                    .map_err(store_status)?
                    .map(|s| s.digest()),
                None => None,
            };
            let applied = agent.and_then(|a| a.applied_digest);
            let at_head = desired.is_some() && applied == desired;
            let (result, error, failed_operation) = match agent.map(|a| &a.result) {
                Some(AgentResult::Ack) => ("ack", String::new(), String::new()),
                Some(AgentResult::Nack { error, operation }) => {
                    ("nack", error.clone(), operation.clone())
                }
                None => ("", String::new(), String::new()),
            };
            fleet.nodes += 1;
            fleet.at_head += u64::from(at_head);
            fleet.degraded += u64::from(result == "nack");
            fleet.pinned += u64::from(pin.is_some());
            nodes.push(NodeStatus {
                node: name,
                applied_revision: agent
                    .and_then(|a| a.applied_revision)
                    .map(|r| r.0)
                    .unwrap_or(0),
                digest: applied.map(|d| d.to_string()).unwrap_or_default(),
                desired_digest: desired.map(|d| d.to_string()).unwrap_or_default(),
                at_head,
                result: result.to_string(),
                error,
                failed_operation,
                last_contact_ms: agent.map(|a| a.contact_ms).unwrap_or(0),
                agent_version: agent.map(|a| a.agent_version.clone()).unwrap_or_default(),
                pinned_at: pin.map(|p| p.held_at.0).unwrap_or(0),
                pin_reason: pin.map(|p| p.reason.clone()).unwrap_or_default(),
            });
        }
        let rollout = match &self.rollout {
            Some(r) => r.borrow().clone(),
            None => RolloutStatus {
                phase: "off".into(),
                ..RolloutStatus::default()
            },
        };
        Ok(Response::new(StatusResponse {
            head: head.map(|h| h.0).unwrap_or(0),
            nodes,
            fleet: Some(fleet),
            rollout: Some(rollout),
            progress: self.progress(STATUS_PROGRESS),
        }))
    }

    async fn convergence(
        &self,
        request: Request<ConvergenceRequest>,
    ) -> Result<Response<ConvergenceResponse>, Status> {
        require(&request, Access::Read)?;
        let limit = match request.into_inner().limit {
            0 => DEFAULT_PROGRESS,
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(crate::sli::KEEP),
        };
        Ok(Response::new(ConvergenceResponse {
            revisions: self.progress(limit),
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        require(&request, Access::Admin)?;
        let RollbackRequest { to, nodes, reason } = request.into_inner();
        if to == 0 {
            return Err(Status::invalid_argument("the target revision must be > 0"));
        }
        check_reason(&reason)?;
        self.write(AdminWrite::Rollback {
            to: RevisionId(to),
            nodes: node_set(nodes)?,
            reason,
        })
        .await
    }

    async fn pause(
        &self,
        request: Request<PauseRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        require(&request, Access::Admin)?;
        let PauseRequest { nodes, all, reason } = request.into_inner();
        check_reason(&reason)?;
        let nodes = match (node_set(nodes)?, all) {
            (None, false) => {
                return Err(Status::invalid_argument(
                    "name the nodes to pause, or ask for all",
                ));
            }
            (Some(_), true) => {
                return Err(Status::invalid_argument("either nodes or all, not both"));
            }
            (nodes, _) => nodes,
        };
        self.write(AdminWrite::Pause { nodes, reason }).await
    }

    async fn resume(
        &self,
        request: Request<ResumeRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        require(&request, Access::Admin)?;
        let ResumeRequest { nodes } = request.into_inner();
        self.write(AdminWrite::Resume {
            nodes: node_set(nodes)?,
        })
        .await
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        require(&request, Access::Read)?;
        let request = request.into_inner();
        check_name("the node name", &request.node)?;
        let packet = crate::explain::packet(&request)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let revision = match request.revision {
            0 => self.head().await?,
            r => RevisionId(r),
        };
        let state = self
            .store
            .node_state(&request.node, revision)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} has no state at revision {revision}",
                    request.node
                ))
            })?;
        let mut response = crate::explain::respond(&state, &packet, revision.0)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let published = self
            .address_problems
            .as_ref()
            .and_then(|p| p.borrow().clone());
        match crate::explain::problems(
            *self.role.borrow() == Role::Leader,
            published.as_deref(),
            revision.0,
            packet.dst,
        ) {
            Ok((problems, omitted)) => {
                response.problems = problems;
                response.problems_omitted = omitted;
            }
            Err(why) => response.problems_unknown = why.to_string(),
        }
        Ok(Response::new(response))
    }

    async fn cluster_policies(
        &self,
        request: Request<ClusterPoliciesRequest>,
    ) -> Result<Response<ClusterPoliciesResponse>, Status> {
        require(&request, Access::Read)?;
        let ClusterPoliciesRequest { name } = request.into_inner();
        if !name.is_empty() {
            check_name("the policy name", &name)?;
        }
        let head = self.store.head().await.map_err(store_status)?;
        let head_id = head.map(|h| h.0).unwrap_or(0);
        let published = self
            .cluster_policies
            .as_ref()
            .and_then(|p| p.borrow().clone());
        let unknown = |why: &str| {
            Ok(Response::new(ClusterPoliciesResponse {
                head: head_id,
                unknown: why.to_string(),
                ..ClusterPoliciesResponse::default()
            }))
        };
        if *self.role.borrow() != Role::Leader {
            return unknown(
                "this replica does not lead: ClusterNetworkPolicy revisions are known to the leader",
            );
        }
        let Some(published) = published else {
            return unknown("the leader has not computed yet");
        };
        let names = match head {
            Some(h) => self.store.node_names(h).await.map_err(store_status)?,
            None => BTreeSet::new(),
        };
        let agents = self.store.agent_statuses().await.map_err(store_status)?;
        let agents: std::collections::HashMap<&str, _> =
            agents.iter().map(|a| (a.node.as_str(), a)).collect();
        let pins = self.store.pins().await.map_err(store_status)?;
        let pins: std::collections::HashMap<&str, _> =
            pins.iter().map(|p| (p.node.as_str(), p)).collect();
        // A node's desired state is read only when its ack is older than a
        // policy's `since`: then whether it runs the head's state matters.
        let newest = published
            .policies
            .values()
            .map(|p| p.since)
            .max()
            .unwrap_or(0);
        let mut nodes = std::collections::BTreeMap::new();
        for node in names {
            let agent = agents.get(node.as_str()).copied();
            let at_head = match (head, agent.and_then(|a| a.applied_digest)) {
                (Some(h), Some(applied))
                    if agent
                        .and_then(|a| a.applied_revision)
                        .is_some_and(|r| r.0 < newest) =>
                {
                    self.store
                        .node_state(&node, h)
                        .await
                        .map_err(store_status)?
                        .is_some_and(|s| s.digest() == applied)
                }
                _ => false,
            };
            let reach = policies::reach(
                agent,
                pins.get(node.as_str()).copied(),
                published.held.contains(&node),
                head_id,
                || at_head,
            );
            nodes.insert(node, reach);
        }
        let only = (!name.is_empty()).then_some(name.as_str());
        let policies = policies::realizations(&published, &nodes, only);
        if only.is_some() && policies.is_empty() {
            return Err(Status::not_found(format!(
                "no ClusterNetworkPolicy {name} in the leader's computation"
            )));
        }
        Ok(Response::new(ClusterPoliciesResponse {
            head: head_id,
            nodes: nodes.len() as u64,
            policies,
            unknown: String::new(),
        }))
    }
}
