//! `setpointctl status`: per node, what it applied and when it was last
//! heard from; the fleet's summary, the rollout's phase and the newest
//! revisions' way through the fleet. `status --watch` follows the newest
//! revision until every counted node acked it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use setpoint_proto::admin::{
    ConvergenceRequest, RevisionProgress, RolloutStatus, StatusRequest, StatusResponse,
};

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
        "progress": s.progress.iter().map(progress_json).collect::<Vec<_>>(),
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
    if !r.progress.is_empty() {
        println!();
        print_progress_table(&r.progress);
    }
}

/// Per revision: what started its clock, how many counted nodes acked, the
/// time until 50%, 99% and 100% had, nacks, and who is still waited for.
fn print_progress_table(progress: &[RevisionProgress]) {
    let rows: Vec<Vec<String>> = progress
        .iter()
        .map(|p| {
            vec![
                p.revision.to_string(),
                p.started_by.clone(),
                format!("{}/{}", p.acked, p.total),
                secs(p.p50_seconds),
                secs(p.p99_seconds),
                secs(p.p100_seconds),
                p.nacks.to_string(),
                waiting(p),
            ]
        })
        .collect();
    print_table(
        &[
            "REVISION", "FROM", "ACKED", "50%", "99%", "100%", "NACKS", "WAITING",
        ],
        &rows,
    );
}

fn progress_json(p: &RevisionProgress) -> Value {
    json!({
        "revision": p.revision,
        "started_at": p.started_at_ms,
        "started_by": p.started_by,
        "total": p.total,
        "acked": p.acked,
        "pending": p.pending,
        "nacks": p.nacks,
        "unchanged": p.unchanged,
        "left": p.left,
        "p50_seconds": p.p50_seconds,
        "p99_seconds": p.p99_seconds,
        "p100_seconds": p.p100_seconds,
        "waiting": p.waiting,
        "failing": p.failing,
        "slowest": p.slowest.iter().map(|n| json!({"node": n.node, "seconds": n.seconds})).collect::<Vec<_>>(),
        "complete": p.pending == 0,
    })
}

/// Seconds with millisecond precision, `-` when not reached.
fn secs(s: Option<f64>) -> String {
    match s {
        Some(s) => format!("{s:.3}s"),
        None => "-".into(),
    }
}

/// The pending nodes named, and how many more (`-` when none).
fn waiting(p: &RevisionProgress) -> String {
    if p.pending == 0 {
        return "-".into();
    }
    let mut names: Vec<String> = p
        .waiting
        .iter()
        .map(|n| {
            if p.failing.contains(n) {
                format!("{n} (nack)")
            } else {
                n.clone()
            }
        })
        .collect();
    let more = p.pending.saturating_sub(names.len() as u64);
    if more > 0 {
        names.push(format!("+{more} more"));
    }
    names.join(", ")
}

/// `[#####-----]`: `done` of `total` in `width` characters.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = match total {
        0 => width,
        t => ((done.min(t) as f64 / t as f64) * width as f64).floor() as usize,
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn now_ms() -> i64 {
    UNIX_EPOCH
        .elapsed()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A revision under way, in one line (the bar on a terminal).
fn progress_line(p: &RevisionProgress, now_ms: i64, with_bar: bool) -> String {
    let elapsed = (now_ms - p.started_at_ms).max(0) as f64 / 1000.0;
    let mut line = format!("revision {}", p.revision);
    if with_bar {
        line.push(' ');
        line.push_str(&bar(p.acked, p.total, 30));
    }
    line.push_str(&format!(
        " {}/{} acked, {} nack(s), {elapsed:.1}s since {}",
        p.acked,
        p.total,
        p.nacks,
        match p.started_by.as_str() {
            "trigger" => "the trigger",
            "write" => "the write",
            _ => "the change was seen",
        }
    ));
    if p.pending > 0 {
        line.push_str(&format!("; waiting: {}", waiting(p)));
    }
    line
}

/// What the clock started at, for a finished revision's line.
fn timed_from(by: &str) -> &'static str {
    match by {
        "trigger" => "the trigger annotation",
        "write" => "the write",
        _ => "when the change was seen",
    }
}

/// A revision every counted node acked, in one line.
fn done_line(p: &RevisionProgress) -> String {
    if p.total == 0 {
        return format!(
            "revision {}: no node to wait for (none connected to this replica, or none changed)",
            p.revision
        );
    }
    let slowest: Vec<String> = p
        .slowest
        .iter()
        .map(|n| format!("{} {:.3}s", n.node, n.seconds))
        .collect();
    format!(
        "revision {}: all {} node(s) acked in {} (50% {}, 99% {}; timed from {}), {} nack(s); slowest: {}",
        p.revision,
        p.total,
        secs(p.p100_seconds),
        secs(p.p50_seconds),
        secs(p.p99_seconds),
        timed_from(&p.started_by),
        p.nacks,
        slowest.join(", ")
    )
}

/// What a line without the clock says: printed again only when it changes.
fn state_of(p: &RevisionProgress) -> (u64, u64, u64, u64, Vec<String>) {
    (p.revision, p.acked, p.pending, p.nacks, p.waiting.clone())
}

/// Follows the newest revision until every counted node acked it, or
/// Ctrl-C. On a terminal one line is redrawn with a progress bar; else a
/// plain line (or, with `-o json`, a JSON object) is printed per change.
pub async fn watch(client: &mut Client, output: Output, interval_ms: u64) -> Result<(), Failure> {
    let json = output == Output::Json;
    let tty = !json && std::io::stdout().is_terminal();
    let interval = Duration::from_millis(interval_ms.clamp(50, 60_000));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut following: Option<u64> = None;
    let mut printed: Option<(u64, u64, u64, u64, Vec<String>)> = None;
    let mut said_waiting = false;
    let mut out = std::io::stdout();
    loop {
        let r = client
            .convergence(ConvergenceRequest { limit: 1 })
            .await?
            .into_inner();
        match r.revisions.first() {
            None if !said_waiting => {
                said_waiting = true;
                println!("no revision tracked by this replica yet; waiting for one");
            }
            None => {}
            Some(p) => {
                if let Some(old) = following.filter(|f| *f != p.revision) {
                    let note = format!("revision {old} superseded by {}", p.revision);
                    if tty {
                        println!("\r\x1b[2K{note}");
                    } else if !json {
                        println!("{note}");
                    }
                }
                following = Some(p.revision);
                let complete = p.pending == 0;
                if json {
                    if printed.as_ref() != Some(&state_of(p)) || complete {
                        let value = progress_json(p);
                        println!("{value}");
                    }
                } else if tty {
                    let line = if complete {
                        done_line(p)
                    } else {
                        progress_line(p, now_ms(), true)
                    };
                    print!("\r\x1b[2K{line}");
                    if complete {
                        println!();
                    }
                } else if complete {
                    println!("{}", done_line(p));
                } else if printed.as_ref() != Some(&state_of(p)) {
                    println!("{}", progress_line(p, now_ms(), false));
                }
                let _ = out.flush();
                printed = Some(state_of(p));
                if complete {
                    return Ok(());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => {
                if tty {
                    println!();
                }
                return Ok(());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_proto::admin::NodeLatency;

    fn progress(acked: u64, pending: u64) -> RevisionProgress {
        RevisionProgress {
            revision: 12,
            started_at_ms: 10_000,
            started_by: "trigger".into(),
            total: acked + pending,
            acked,
            pending,
            nacks: 1,
            waiting: vec!["node-x".into(), "node-y".into()],
            failing: vec!["node-x".into()],
            ..RevisionProgress::default()
        }
    }

    #[test]
    fn bars_fill_with_the_acked_share() {
        assert_eq!(bar(0, 4, 8), "[--------]");
        assert_eq!(bar(2, 4, 8), "[####----]");
        assert_eq!(bar(4, 4, 8), "[########]");
        assert_eq!(bar(9, 4, 8), "[########]");
        assert_eq!(bar(0, 0, 4), "[####]");
    }

    #[test]
    fn lines_name_what_is_waited_for() {
        let p = progress(4998, 7);
        assert_eq!(
            progress_line(&p, 11_500, false),
            "revision 12 4998/5005 acked, 1 nack(s), 1.5s since the trigger; waiting: node-x (nack), node-y, +5 more"
        );
        assert!(
            progress_line(&p, 11_500, true)
                .starts_with("revision 12 [#############################-] ")
        );
        let mut done = progress(3, 0);
        done.p50_seconds = Some(0.1);
        done.p99_seconds = Some(0.25);
        done.p100_seconds = Some(0.25);
        done.slowest = vec![NodeLatency {
            node: "node-y".into(),
            seconds: 0.25,
        }];
        assert_eq!(
            done_line(&done),
            "revision 12: all 3 node(s) acked in 0.250s (50% 0.100s, 99% 0.250s; timed from the trigger annotation), 1 nack(s); slowest: node-y 0.250s"
        );
        assert_eq!(waiting(&done), "-");
        assert!(done_line(&progress(0, 0)).contains("no node to wait for"));
    }
}
