//! `render`: manifests → one node's desired state on stdout.

use std::io::Write;

use anyhow::{Context, bail};
use setpoint_compute::Index;

use crate::cli::RenderArgs;

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let report =
        setpoint_source::load_path_with(&args.manifests, &args.manifest_limits.limits())
            .with_context(|| format!("cannot read manifests at {}", args.manifests.display()))?;
    for skipped in &report.skipped {
        eprintln!("skipped: {skipped}");
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let mut index = Index::new(args.compute.config());
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
    let Some(state) = index.node_state(&args.node) else {
        let known: Vec<&str> = index.node_names().map(|n| &**n).collect();
        if known.is_empty() {
            bail!(
                "node {:?} not found: the manifests define no Nodes",
                args.node
            );
        }
        bail!(
            "node {:?} not found; known nodes: {}",
            args.node,
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
            args.node,
            problems.len()
        );
    }
    let text = setpoint_dataplane::render(&state, args.format);
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}
