//! `setpointctl rollback`, `pause` and `resume`: the admin writes that pin
//! nodes to a state and let them follow the computed states again.

use serde_json::json;
use setpoint_proto::admin::{PauseRequest, ResumeRequest, RollbackRequest};

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::emit;

/// The nodes a write names, as its confirmation says them.
fn who(nodes: &[String], everyone: &str) -> String {
    if nodes.is_empty() {
        everyone.to_string()
    } else {
        nodes.join(",")
    }
}

pub async fn rollback(
    client: &mut Client,
    output: Output,
    to: u64,
    nodes: Vec<String>,
    reason: String,
) -> Result<(), Failure> {
    let r = client
        .rollback(RollbackRequest {
            to,
            nodes: nodes.clone(),
            reason,
        })
        .await?
        .into_inner();
    emit(
        output,
        || Ok(json!({ "revision": r.revision, "to": to })),
        || {
            println!(
                "revision {}: {} rolled back to revision {to} and pinned (setpointctl resume to undo)",
                r.revision,
                who(&nodes, "all nodes")
            )
        },
    )
}

pub async fn pause(
    client: &mut Client,
    output: Output,
    nodes: Vec<String>,
    all: bool,
    reason: String,
) -> Result<(), Failure> {
    let r = client
        .pause(PauseRequest {
            nodes: nodes.clone(),
            all,
            reason,
        })
        .await?
        .into_inner();
    // With --all, `nodes` is empty.
    confirm(output, r.revision, who(&nodes, "all nodes"), "paused")
}

/// No `nodes` (`--all`): the server resumes every pinned node.
pub async fn resume(
    client: &mut Client,
    output: Output,
    nodes: Vec<String>,
) -> Result<(), Failure> {
    let r = client
        .resume(ResumeRequest {
            nodes: nodes.clone(),
        })
        .await?
        .into_inner();
    confirm(
        output,
        r.revision,
        who(&nodes, "all pinned nodes"),
        "resumed",
    )
}

/// `revision R: WHO DONE`, or `{"revision": R}` with `-o json`.
fn confirm(output: Output, revision: u64, who: String, done: &str) -> Result<(), Failure> {
    emit(
        output,
        || Ok(json!({ "revision": revision })),
        || println!("revision {revision}: {who} {done}"),
    )
}
