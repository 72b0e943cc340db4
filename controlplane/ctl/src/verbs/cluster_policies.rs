//! `setpointctl cluster-policies`: each ClusterNetworkPolicy's tier and
//! priority, the revision its current spec is in force from, and how many
//! nodes enforce it (the rest named with why, failing first).

use serde_json::{Value, json};
use setpoint_proto::admin::{ClusterPoliciesRequest, ClusterPoliciesResponse};

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::{emit, print_table};

pub async fn cluster_policies(
    client: &mut Client,
    output: Output,
    name: Option<String>,
) -> Result<(), Failure> {
    let r = client
        .cluster_policies(ClusterPoliciesRequest {
            name: name.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if !r.unknown.is_empty() {
        return Err(Failure::failed(format!(
            "ClusterNetworkPolicy realization unknown: {}",
            r.unknown
        )));
    }
    emit(output, || Ok(to_json(&r)), || print_table_of(&r))
}

fn to_json(r: &ClusterPoliciesResponse) -> Value {
    json!({
        "head": r.head,
        "nodes": r.nodes,
        "policies": r.policies.iter().map(|p| json!({
            "name": p.name,
            "tier": p.tier,
            "priority": p.priority,
            "since": p.since,
            "enforced": p.enforced,
            "nodes": p.nodes,
            "complete": p.problem.is_empty() && p.since > 0 && p.enforced == p.nodes,
            "pending": p.pending.iter().map(|n| json!({"node": n.node, "reason": n.reason})).collect::<Vec<_>>(),
            "problem": p.problem,
            "warnings": p.warnings,
        })).collect::<Vec<_>>(),
    })
}

fn print_table_of(r: &ClusterPoliciesResponse) {
    let rows: Vec<Vec<String>> = r
        .policies
        .iter()
        .map(|p| {
            let (since, enforced, pending) = if !p.problem.is_empty() {
                ("-".to_string(), "rejected".to_string(), p.problem.clone())
            } else {
                let since = match p.since {
                    0 => "not committed".to_string(),
                    s => s.to_string(),
                };
                let mut names: Vec<String> = p
                    .pending
                    .iter()
                    .map(|n| format!("{} ({})", n.node, n.reason))
                    .collect();
                let more = (p.nodes - p.enforced.min(p.nodes)).saturating_sub(names.len() as u64);
                if more > 0 {
                    names.push(format!("+{more} more"));
                }
                let pending = if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(", ")
                };
                (since, format!("{}/{}", p.enforced, p.nodes), pending)
            };
            vec![
                p.name.clone(),
                if p.tier.is_empty() {
                    "-".to_string()
                } else {
                    p.tier.clone()
                },
                p.priority.to_string(),
                since,
                enforced,
                pending,
            ]
        })
        .collect();
    print_table(
        &["POLICY", "TIER", "PRIORITY", "SINCE", "ENFORCED", "PENDING"],
        &rows,
    );
    for p in &r.policies {
        for w in &p.warnings {
            println!("warning: {w}");
        }
    }
    let complete = r
        .policies
        .iter()
        .filter(|p| p.problem.is_empty() && p.since > 0 && p.enforced == p.nodes)
        .count();
    println!(
        "head {}: {} ClusterNetworkPolicy(ies), {complete} enforced on all {} node(s)",
        r.head,
        r.policies.len(),
        r.nodes
    );
}
