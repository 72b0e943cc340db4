//! `setpointctl explain`: how a node's state treats one packet, and what
//! compute refused about its destination address.

use serde_json::{Value, json};
use setpoint_proto::admin::{ExplainRequest, ExplainResponse};

use crate::args::{ExplainArgs, Output};
use crate::connect::Client;
use crate::failure::Failure;
use crate::output::emit;

pub async fn explain(
    client: &mut Client,
    output: Output,
    args: ExplainArgs,
) -> Result<(), Failure> {
    let ExplainArgs {
        node,
        revision,
        proto,
        src,
        dst,
        from,
    } = args;
    let (src_ip, src_port) = endpoint(&src)?;
    let (dst_ip, dst_port) = endpoint(&dst)?;
    if dst_port == 0 {
        return Err(Failure::usage("--dst needs a port: IP:PORT"));
    }
    let r = client
        .explain(ExplainRequest {
            node,
            revision: revision.unwrap_or(0),
            protocol: proto,
            src_ip,
            src_port,
            dst_ip: dst_ip.clone(),
            dst_port,
            from,
        })
        .await?
        .into_inner();
    emit(
        output,
        || to_json(&r),
        || {
            println!("node state at revision {}", r.revision);
            print!("{}", r.text);
            print!("{}", problems_text(&dst_ip, &r));
        },
    )
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`: the address and the port (0 if none).
fn endpoint(text: &str) -> Result<(String, u32), Failure> {
    let bad = || Failure::usage(format!("{text:?}: expected IP, IP:PORT or [IPv6]:PORT"));
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 0));
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|_| bad())?;
    Ok((addr.ip().to_string(), u32::from(addr.port())))
}

fn to_json(r: &ExplainResponse) -> Result<Value, Failure> {
    let explanation: Value = serde_json::from_str(&r.json).map_err(|e| {
        Failure::failed(format!(
            "the server sent an explanation that is not JSON: {e}"
        ))
    })?;
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| {
            json!({
                "service": p.service,
                "addresses": p.addresses,
                "reason": p.reason,
                "text": p.text,
            })
        })
        .collect();
    let unknown = (!r.problems_unknown.is_empty()).then_some(&r.problems_unknown);
    Ok(json!({
        "revision": r.revision,
        "explanation": explanation,
        "problems": problems,
        "problems_unknown": unknown,
        "problems_omitted": r.problems_omitted,
    }))
}

/// What compute refused about the destination address, after the walk:
/// one line a problem, as `render` prints it on stderr.
fn problems_text(dst: &str, r: &ExplainResponse) -> String {
    if !r.problems_unknown.is_empty() {
        return format!(
            "compute problems about {dst}: unknown ({})\n",
            r.problems_unknown
        );
    }
    if r.problems.is_empty() {
        return format!("compute problems about {dst}: none\n");
    }
    let mut text = format!("compute problems about {dst}:\n");
    for p in &r.problems {
        text.push_str(&format!("  {}\n", p.text));
    }
    if r.problems_omitted > 0 {
        text.push_str(&format!("  … and {} more\n", r.problems_omitted));
    }
    text
}
