//! `setpointctl revisions`: the revision log, newest first.

use serde_json::{Value, json};
use setpoint_proto::admin::{ListRevisionsRequest, ListRevisionsResponse};

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::{emit, print_table, utc};

pub async fn revisions(
    client: &mut Client,
    output: Output,
    limit: u32,
    before: Option<u64>,
) -> Result<(), Failure> {
    let r = client
        .list_revisions(ListRevisionsRequest {
            page_size: limit.max(1),
            before: before.unwrap_or(0),
        })
        .await?
        .into_inner();
    emit(output, || Ok(to_json(&r)), || print_table_of(&r))
}

fn to_json(r: &ListRevisionsResponse) -> Value {
    let list = r
        .revisions
        .iter()
        .map(|v| {
            json!({
                "revision": v.revision,
                "created_at": v.created_at_ms,
                "cause": v.cause,
                "objects": v.objects,
                "nodes_changed": v.nodes_changed,
                "epoch": v.epoch,
                "action": v.action,
                "target": (v.target > 0).then_some(v.target),
            })
        })
        .collect();
    Value::Array(list)
}

fn print_table_of(r: &ListRevisionsResponse) {
    let rows: Vec<Vec<String>> = r
        .revisions
        .iter()
        .map(|v| {
            let action = match v.target {
                0 => v.action.clone(),
                t => format!("{} to {t}", v.action),
            };
            vec![
                v.revision.to_string(),
                utc(v.created_at_ms),
                action,
                v.nodes_changed.to_string(),
                v.cause.clone(),
            ]
        })
        .collect();
    print_table(&["REVISION", "CREATED", "ACTION", "NODES", "CAUSE"], &rows);
    if r.next_before > 0 {
        println!("(more: --before {})", r.next_before);
    }
}
