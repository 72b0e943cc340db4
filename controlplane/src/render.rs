//! `render`: manifests → one node's desired state on stdout.

use std::io::Write;

use std::path::Path;

use anyhow::{Context, bail};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::Format;

/// Prints `node`'s desired state in `format`, computed with `config` from
/// the manifests at `manifests` (each file read within `limits`); what was
/// skipped or refused on the way goes to stderr.
pub fn run(
    manifests: &Path,
    limits: &setpoint_source::Limits,
    config: ComputeConfig,
    node: &str,
    format: Format,
) -> anyhow::Result<()> {
    let report = setpoint_source::load_path_with(manifests, limits)
        .with_context(|| format!("cannot read manifests at {}", manifests.display()))?;
    for skipped in &report.skipped {
        eprintln!("skipped: {skipped}");
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let mut index = Index::new(config);
    for object in report.objects {
        index.upsert(object);
    }
    index.commit();
    for problem in index.problems() {
        let what = if problem.skipped {
            "skipped"
        } else {
            "warning"
        };
        eprintln!("{what}: {}", problem.rejection);
    }
    let Some(state) = index.node_state(node) else {
        let known: Vec<&str> = index.node_names().map(|n| &**n).collect();
        if known.is_empty() {
            bail!("node {:?} not found: the manifests define no Nodes", node);
        }
        bail!(
            "node {:?} not found; known nodes: {}",
            node,
            known.join(", ")
        );
    };
    let problems = state.validate();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("invalid: {p}");
        }
        bail!(
            "the computed state of node {} is not valid ({} problems)",
            node,
            problems.len()
        );
    }
    let text = setpoint_dataplane::render(&state, format);
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}
