//! `setpoint-controlplane render` as an operator runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn render(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_setpoint-controlplane"))
        .arg("render")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_format_renders_the_examples() {
    let manifests = examples();
    let manifests = manifests.to_str().expect("utf-8 path");
    let expectations = [
        ("text", "# IPVS"),
        ("json", "\"digest\""),
        ("ipset", "create SP-CLUSTER-IP hash:ip,port family inet"),
        ("iptables", "-A SP-SERVICES"),
        ("ip6tables", "*nat"),
        ("ipvs", "-A -t 10.96.0.10:53 -s rr"),
    ];
    for (format, needle) in expectations {
        let out = render(&[
            "--manifests",
            manifests,
            "--node",
            "node-a",
            "--format",
            format,
        ]);
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(needle),
            "{format} lacks {needle:?}:\n{}",
            stdout(&out)
        );
    }
}

#[test]
fn ip6tables_only_holds_ipv6_addresses() {
    let manifests = examples();
    let out = render(&[
        "--manifests",
        manifests.to_str().expect("utf-8"),
        "--node",
        "node-b",
        "--format",
        "ip6tables",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("::1/128"), "{text}");
    assert!(!text.contains("127.0.0.0/8"), "{text}");
}

#[test]
fn json_is_the_state_with_its_digest() {
    let manifests = examples();
    let out = render(&[
        "--manifests",
        manifests.to_str().expect("utf-8"),
        "--node",
        "node-c",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let state: setpoint_dataplane::NodeDataplane = serde_json::from_slice(&out.stdout)
        .expect("render --format json parses back, digest checked");
    assert!(state.validate().is_empty());
    assert!(state.atom_count() > 100);
}

#[test]
fn a_missing_node_fails_with_the_known_ones() {
    let manifests = examples();
    let out = render(&[
        "--manifests",
        manifests.to_str().expect("utf-8"),
        "--node",
        "node-z",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("node \"node-z\" not found"), "{err}");
    assert!(err.contains("node-a, node-b, node-c"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unreadable_path_fails_naming_it() {
    let out = render(&["--manifests", "/nonexistent/manifests", "--node", "node-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/manifests"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_format_is_refused() {
    let out = render(&["--node", "node-a", "--format", "yaml"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown format"), "{}", stderr(&out));
}

#[test]
fn bad_objects_are_reported_and_the_rest_rendered() {
    let dir = std::env::temp_dir().join(format!("setpoint-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("cluster.yaml"),
        "apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: default}
spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: worse, namespace: default}
spec: {ports: [{port: banana}]}
",
    )
    .expect("write");
    let out = render(&[
        "--manifests",
        dir.to_str().expect("utf-8"),
        "--node",
        "n1",
        "--format",
        "ipvs",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "-A -t 10.96.0.5:80 -s rr\n");
    let err = stderr(&out);
    assert!(
        err.contains("Service default/bad: cluster IP \"10.96.0.999\" is not an IP address"),
        "{err}"
    );
    assert!(
        err.contains("cluster.yaml doc 4 (Service default/worse)"),
        "{err}"
    );
}

/// `--manifest-max-file-mib` and `SETPOINT_MANIFEST_MAX_DEPTH` lower the
/// manifest source's limits: a file over them is skipped with its reason,
/// the other files still render (with the defaults, all of them do).
#[test]
fn manifest_limits_given_on_the_command_line_refuse_files() {
    let dir = tempfile::tempdir().expect("dir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write(
        "a-node.yaml",
        "apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
",
    );
    // 1.5 MiB: a Service and a long comment.
    write(
        "big.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: big, namespace: default}}
spec: {{clusterIP: 10.96.0.6, ports: [{{port: 80}}]}}
{}",
            "# padding\n".repeat(150_000)
        ),
    );
    // Nested 10 deep (an unknown field, ignored once parsed).
    write(
        "deep.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: deep, namespace: default}
spec: {clusterIP: 10.96.0.7, ports: [{port: 80}], x: [[[[[[[1]]]]]]]}
",
    );
    let manifests = dir.path().to_str().expect("utf-8");
    let run = |flags: &[&str], env: Option<(&str, &str)>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_setpoint-controlplane"));
        command.args([
            "render",
            "--manifests",
            manifests,
            "--node",
            "n1",
            "--format",
            "ipvs",
        ]);
        command
            .args(flags)
            .env_remove("SETPOINT_MANIFEST_MAX_FILE_MIB");
        command.env_remove("SETPOINT_MANIFEST_MAX_DEPTH");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let out = command.output().expect("the binary runs");
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        out
    };
    let both = "-A -t 10.96.0.6:80 -s rr\n-A -t 10.96.0.7:80 -s rr\n";
    assert_eq!(stdout(&run(&[], None)), both);

    let out = run(&["--manifest-max-file-mib", "1"], None);
    assert_eq!(stdout(&out), "-A -t 10.96.0.7:80 -s rr\n");
    let err = stderr(&out);
    assert!(
        err.contains("big.yaml") && err.contains("over the limit of 1048576 bytes"),
        "{err}"
    );

    let out = run(&[], Some(("SETPOINT_MANIFEST_MAX_DEPTH", "8")));
    assert_eq!(stdout(&out), "-A -t 10.96.0.6:80 -s rr\n");
    let err = stderr(&out);
    assert!(
        err.contains("deep.yaml") && err.contains("nested deeper than 8"),
        "{err}"
    );

    // Out of range: refused before anything is read.
    let out = render(&[
        "--manifests",
        manifests,
        "--node",
        "n1",
        "--manifest-max-depth",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--manifest-max-depth"),
        "{}",
        stderr(&out)
    );
}
