//! The house's floor plan, checked: arrows between the workspace's crates
//! point only toward the contract, the two sides of the wire never link
//! each other, and the pure crates stay pure. Read from `cargo metadata`
//! (declared dependencies; no network).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate's normal (non-dev, non-build) dependencies.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("package name").to_string();
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("dependency name").to_string())
                .collect();
            (name, deps)
        })
        .collect()
}

const CONTROL_PLANE_SIDE: [&str; 6] = [
    "setpoint-compute",
    "setpoint-source",
    "setpoint-store",
    "setpoint-kube",
    "setpoint-controlplane",
    "setpoint-ctl",
];
const AGENT_SIDE: [&str; 1] = ["setpoint-agent"];
/// What may link both sides: the demo and these tests.
const BOTH_SIDES: [&str; 2] = ["setpoint-demo", "setpoint-integration"];
/// No runtime, database, cluster client or RPC in the pure crates.
const IMPURE: [&str; 4] = ["tokio", "sqlx", "kube", "tonic"];

fn ours(deps: &BTreeSet<String>) -> BTreeSet<&str> {
    deps.iter()
        .map(String::as_str)
        .filter(|d| d.starts_with("setpoint-"))
        .collect()
}

#[test]
fn arrows_point_toward_the_contract_and_the_sides_stay_apart() {
    let graph = normal_dependencies();
    for name in CONTROL_PLANE_SIDE
        .iter()
        .chain(&AGENT_SIDE)
        .chain(&BOTH_SIDES)
        .chain(&["setpoint-dataplane", "setpoint-proto", "setpoint-runtime"])
    {
        assert!(graph.contains_key(*name), "{name} is not in the workspace");
    }
    let mut wrong = Vec::new();
    for (name, deps) in &graph {
        let ours = ours(deps);
        let allowed: Option<BTreeSet<&str>> = match name.as_str() {
            "setpoint-dataplane" => Some(BTreeSet::new()),
            "setpoint-proto" => Some(["setpoint-dataplane"].into()),
            "setpoint-runtime" => Some(["setpoint-proto"].into()),
            "setpoint-compute" => Some(["setpoint-dataplane"].into()),
            _ => None,
        };
        if let Some(allowed) = allowed {
            for dep in ours.difference(&allowed) {
                wrong.push(format!("{name} → {dep}"));
            }
        }
        let other_side = if CONTROL_PLANE_SIDE.contains(&name.as_str()) {
            &AGENT_SIDE[..]
        } else if AGENT_SIDE.contains(&name.as_str()) {
            &CONTROL_PLANE_SIDE[..]
        } else {
            continue;
        };
        for dep in &ours {
            if other_side.contains(dep) || BOTH_SIDES.contains(dep) {
                wrong.push(format!("{name} → {dep} (the other side)"));
            }
        }
    }
    for pure in ["setpoint-dataplane", "setpoint-compute"] {
        for dep in &graph[pure] {
            if IMPURE.contains(&dep.as_str()) {
                wrong.push(format!("{pure} → {dep} (a pure crate)"));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows that must not exist: {wrong:#?}");
}
