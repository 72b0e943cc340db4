//! The Grafana dashboard (`deploy/grafana/setpoint.json`) asks only for
//! metrics the binaries export: every metric name in every panel's query
//! is looked for in what a running `setpoint-controlplane serve` and a
//! running `setpoint-agent` (dry run) serve on `/metrics` after a revision
//! went through — not in the source, where a name can be registered under
//! another spelling or never served.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use setpoint_integration::binaries::workspace_binary;

use crate::running_failures::free_addr;
use crate::sigkill::{Serve, controlplane_binary};

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/setpoint.json")
}

/// The agent binary of this build.
fn agent_binary() -> PathBuf {
    workspace_binary("setpoint-agent")
}

/// Every query (`expr`) of every panel, rows' nested panels included.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// PromQL words that are not metric names.
const KEYWORDS: [&str; 14] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers (`{…}`), ranges (`[…]`) and grouping lists
/// (`by (…)`), that are not functions (followed by `(`) or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, matchers and ranges out (none nests in these dashboards'
    // queries; a subquery's `[5m:1m]` is one range).
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    let mut closing: Option<char> = None;
    while let Some(c) = chars.next() {
        match closing {
            Some(end) => {
                if c == '\\' {
                    chars.next();
                } else if c == end {
                    closing = None;
                    plain.push(' ');
                }
            }
            None => match c {
                '"' => closing = Some('"'),
                '\'' => closing = Some('\''),
                '`' => closing = Some('`'),
                '{' => closing = Some('}'),
                '[' => closing = Some(']'),
                _ => plain.push(c),
            },
        }
    }
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let bytes: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let c = bytes[i];
        if skip_group {
            // A grouping list: up to its closing parenthesis.
            if c == ')' {
                skip_group = false;
            }
            i += 1;
            continue;
        }
        // A number's exponent or a duration's unit is not a name.
        let after_digit = i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == '.');
        if is_start(c) && !after_digit {
            let start = i;
            while i < bytes.len() && is_part(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let rest: String = bytes[i..].iter().collect();
            let rest = rest.trim_start();
            let next = rest.chars().next();
            // `sum by (le) (…)`: an aggregation with its grouping first.
            let grouped_next = ["by", "without"].iter().any(|g| {
                rest.strip_prefix(g)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                skip_group = next == Some('(');
            } else if next != Some('(') && !grouped_next && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// The sample names a `/metrics` text offers: every sample line's, and
/// per `# TYPE` line the names its type produces (a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`), so a family that has no
/// sample yet still counts as exported.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// `GET /metrics` on `addr`, the body; `None` while nothing answers.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Kills the agent process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metric_names_are_what_queries_select() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, share) (rate(a_seconds_bucket{job=~"x|y", le="1.0"}[$__rate_interval])))"#
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) / on (instance) group_left (node) b_info > 1e3 and c"),
        ["a_total", "b_info", "c"]
    );
    assert_eq!(names("max without (pod) (up offset 5m) > bool 0"), ["up"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_the_binaries_export() {
    let text = std::fs::read_to_string(dashboard_path()).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("dir");
    crate::e2e_support::copy_examples(&manifests);
    let (listen, controlplane_metrics, agent_metrics) = (free_addr(), free_addr(), free_addr());
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
    let _serve = Serve(
        Command::new(controlplane_binary())
            .arg("serve")
            .arg("--manifests")
            .arg(&manifests)
            .args(["--database", &database])
            .args(["--listen", &listen.to_string()])
            .args(["--metrics-listen", &controlplane_metrics.to_string()])
            .args(["--admin-listen", &free_addr().to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start setpoint-controlplane serve"),
    );
    let _agent = Child(
        Command::new(agent_binary())
            .args(["--node", "node-a"])
            .args(["--controlplane", &format!("http://{listen}")])
            .arg("--dry-run")
            .arg("--simulate-ipvs")
            .arg("--state-dir")
            .arg(dir.path().join("agent"))
            .args(["--metrics-listen", &agent_metrics.to_string()])
            .args(["--healthz-bind-address", ""])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start setpoint-agent"),
    );

    // A revision went through: the agent acked it, so the SLI's
    // histograms (and the per-share family) have samples. The first
    // revision counts no node when the agent connected after it was
    // committed (the SLI counts the nodes connected when a revision
    // became the head), so once the agent holds it, one more Service
    // makes a revision that counts it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut changed = false;
    let (controlplane, agent) = loop {
        let c = scrape(controlplane_metrics).await.unwrap_or_default();
        let a = scrape(agent_metrics).await.unwrap_or_default();
        // The histogram prints its count from the start: at least one.
        let applied = a.lines().any(|l| {
            l.strip_prefix("setpoint_agent_apply_duration_seconds_count ")
                .and_then(|n| n.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
        });
        if c.contains("setpoint_revision_convergence_seconds_count{share=\"1\"}") && applied {
            break (c, a);
        }
        if applied && !changed {
            changed = true;
            std::fs::write(
                manifests.join("zz-dashboard.yaml"),
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: dashboard-probe\n  namespace: default\nspec:\n  clusterIP: 10.96.0.250\n  clusterIPs: [10.96.0.250]\n  ports:\n  - port: 80\n    protocol: TCP\n",
            )
            .expect("write a Service");
        }
        assert!(
            Instant::now() < deadline,
            "no revision acked within 60 s:\n{c}\n---\n{a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (from_controlplane, from_agent) = (exported(&controlplane), exported(&agent));

    let mut missing = Vec::new();
    let mut asked = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {panel:?}: no metric in {expr}");
        for name in names {
            if !from_controlplane.contains(&name) && !from_agent.contains(&name) {
                missing.push(format!("panel {panel:?}: {name} (in {expr})"));
            }
            asked.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "queries name metrics neither binary exports:\n{}",
        missing.join("\n")
    );
    // What the dashboard is for: programming latency, fleet convergence,
    // nacks, drift repairs, agents connected and apply times.
    for needed in [
        "setpoint_network_programming_duration_seconds_bucket",
        "setpoint_revision_convergence_seconds_bucket",
        "setpoint_nacks_total",
        "setpoint_agent_drift_repairs_total",
        "setpoint_agents_connected",
        "setpoint_agent_apply_duration_seconds_bucket",
    ] {
        assert!(asked.contains(needed), "the dashboard shows no {needed}");
    }
    // The 1 s threshold's bucket is spelt as the control plane spells it.
    assert!(
        controlplane.contains("setpoint_network_programming_duration_seconds_bucket{le=\"1.0\"}"),
        "{controlplane}"
    );
}
