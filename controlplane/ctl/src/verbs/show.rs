//! `setpointctl show`: a node's desired state, in the format asked for.

use serde_json::json;
use setpoint_proto::admin::ShowNodeRequest;

use crate::args::Output;
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::emit;

pub async fn show(
    client: &mut Client,
    output: Output,
    node: String,
    revision: Option<u64>,
    format: String,
) -> Result<(), Failure> {
    let r = client
        .show_node(ShowNodeRequest {
            node: node.clone(),
            revision: revision.unwrap_or(0),
            format: format.clone(),
        })
        .await?
        .into_inner();
    let json = || {
        Ok(json!({
            "node": node,
            "revision": r.revision,
            "digest": r.digest,
            "format": format,
            "text": r.text,
        }))
    };
    emit(output, json, || {
        print!("{}", r.text);
        if !r.text.ends_with('\n') {
            println!();
        }
    })
}
