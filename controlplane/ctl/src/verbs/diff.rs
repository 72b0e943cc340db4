//! `setpointctl diff`: the typed changes between two revisions of a node.

use serde_json::{Value, json};
use setpoint_proto::admin::DiffNodeRequest;

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::emit;

pub async fn diff(
    client: &mut Client,
    output: Output,
    node: String,
    from: u64,
    to: u64,
) -> Result<(), Failure> {
    let r = client
        .diff_node(DiffNodeRequest {
            node: node.clone(),
            from,
            to,
        })
        .await?
        .into_inner();
    let json = || {
        // Each change is JSON from the server; one that is not is kept as text.
        let changes: Vec<Value> = r
            .changes
            .iter()
            .map(|c| serde_json::from_str(c).unwrap_or_else(|_| Value::String(c.clone())))
            .collect();
        Ok(json!({
            "node": node, "from": from, "to": to,
            "count": r.count, "changes": changes,
        }))
    };
    emit(output, json, || {
        for c in &r.changes {
            println!("{c}");
        }
        println!(
            "{} change(s) to {node} from revision {from} to {to}",
            r.count
        );
    })
}
