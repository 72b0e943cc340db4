//! `setpointctl status`: per node, what it applied and when it was last
//! heard from; the fleet's summary and the rollout's phase.

use serde_json::{Value, json};
use setpoint_proto::admin::{RolloutStatus, StatusRequest, StatusResponse};

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::{ago, emit, print_table, short};

pub async fn status(client: &mut Client, output: Output) -> Result<(), Failure> {
    let r = client.status(StatusRequest {}).await?.into_inner();
    emit(output, || Ok(to_json(&r)), || print_table_of(&r))
}

fn to_json(s: &StatusResponse) -> Value {
    let fleet = s.fleet.unwrap_or_default();
    let rollout = s.rollout.clone().unwrap_or_default();
    json!({
        "head": s.head,
        "rollout": {
            "phase": rollout.phase,
            "target": rollout.target,
            "good": rollout.good,
            "canaries": rollout.canaries,
            "failed": rollout.failed,
            "reason": rollout.reason,
        },
        "fleet": {
            "nodes": fleet.nodes,
            "at_head": fleet.at_head,
            "degraded": fleet.degraded,
            "pinned": fleet.pinned,
        },
        "nodes": s.nodes.iter().map(|n| json!({
            "node": n.node,
            "applied_revision": n.applied_revision,
            "digest": n.digest,
            "desired_digest": n.desired_digest,
            "at_head": n.at_head,
            "result": n.result,
            "error": n.error,
            "failed_operation": n.failed_operation,
            "last_contact": n.last_contact_ms,
            "agent_version": n.agent_version,
            "pinned_at": n.pinned_at,
            "pin_reason": n.pin_reason,
        })).collect::<Vec<_>>(),
    })
}

fn print_table_of(r: &StatusResponse) {
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let result = match (n.result.as_str(), n.error.is_empty()) {
                ("", _) => "-".to_string(),
                ("nack", false) => {
                    format!("nack: {} ({})", n.error, n.failed_operation)
                }
                (other, _) => other.to_string(),
            };
            let pinned = match n.pinned_at {
                0 => "-".to_string(),
                p => format!("at {p}: {}", n.pin_reason),
            };
            vec![
                n.node.clone(),
                n.applied_revision.to_string(),
                short(&n.digest),
                if n.at_head { "yes" } else { "no" }.to_string(),
                result,
                ago(n.last_contact_ms),
                n.agent_version.clone(),
                pinned,
            ]
        })
        .collect();
    print_table(
        &[
            "NODE", "APPLIED", "DIGEST", "AT HEAD", "LAST", "CONTACT", "AGENT", "PINNED",
        ],
        &rows,
    );
    let f = r.fleet.unwrap_or_default();
    println!(
        "head {}: {} node(s), {} at head, {} degraded, {} pinned",
        r.head, f.nodes, f.at_head, f.degraded, f.pinned
    );
    if let Some(ro) = r.rollout.as_ref().filter(|ro| ro.phase != "off") {
        println!("{}", rollout_line(ro));
    }
}

/// The rollout's phase in one line (not shown while it is off).
fn rollout_line(ro: &RolloutStatus) -> String {
    let canaries = ro.canaries.join(", ");
    match ro.phase.as_str() {
        "canary" => format!(
            "rollout: revision {} on the canaries ({canaries}), the rest held at {}",
            ro.target, ro.good
        ),
        "halted" => format!(
            "rollout: HALTED at revision {}; rolled back {} to {}; the rest held. {}",
            ro.target,
            ro.failed.join(", "),
            ro.good,
            ro.reason
        ),
        _ => format!(
            "rollout: idle at revision {} (canaries: {canaries})",
            ro.good
        ),
    }
}
