//! Scenarios as data: a directory per scenario, a directory per step
//! inside it (run in name order) holding manifests and `probes.yaml`.
//!
//! ```text
//! services/
//!   cluster/             Nodes and Pods: the topology, in every step
//!   01-clusterip/
//!     1-base/            services.yaml, endpointslices.yaml, probes.yaml
//!     2-scaled/          files carry over from the step before; a file of
//!                        the same name replaces one, an empty one removes it
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The directory of the topology's manifests, shared by every scenario.
pub const CLUSTER_DIR: &str = "cluster";
pub const PROBES_FILE: &str = "probes.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScenarioError + '_ {
    move |source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    /// One HTTP/1.1 GET over TCP (`path`), e.g. a health-check node port.
    Http,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Http => "http",
        }
    }
}

/// What a probe must see: `{reply: [pods], seen: SOURCE}`, `refused`,
/// `dropped` or, for `protocol: http`, `{status: CODE, body: [TEXT]}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ExpectText")]
pub enum Expect {
    /// A reply from one of these pods, which saw the source `seen`.
    Reply {
        from: Vec<String>,
        /// `client` (the prober's own address), `node:<name>` (that node's
        /// address of the packet's family), `pod:<name>`, or an address.
        seen: String,
    },
    /// Refused at once: a TCP RST, an SCTP ABORT or an ICMP error.
    Refused,
    /// No answer within the probe's timeout.
    Dropped,
    /// An HTTP response (`protocol: http`) with this status code whose body
    /// holds each of these strings (whitespace ignored on both sides).
    Http { status: u16, body: Vec<String> },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ExpectText {
    Word(String),
    #[serde(rename_all = "kebab-case")]
    Reply {
        reply: Vec<String>,
        seen: String,
    },
    Http {
        status: u16,
        #[serde(default)]
        body: Vec<String>,
    },
}

impl TryFrom<ExpectText> for Expect {
    type Error = String;
    fn try_from(e: ExpectText) -> Result<Expect, String> {
        match e {
            ExpectText::Word(w) if w == "refused" => Ok(Expect::Refused),
            ExpectText::Word(w) if w == "dropped" => Ok(Expect::Dropped),
            ExpectText::Word(w) => Err(format!(
                "expect {w:?}: want refused, dropped, {{reply: [pods], seen: client|node:NAME|pod:NAME|ADDRESS}} or {{status: CODE, body: [TEXT]}}"
            )),
            ExpectText::Reply { reply, .. } if reply.is_empty() => {
                Err("expect reply from no pod".into())
            }
            ExpectText::Reply { reply, seen } => Ok(Expect::Reply { from: reply, seen }),
            ExpectText::Http { status, .. } if !(100..=599).contains(&status) => {
                Err(format!("expect status {status}: not an HTTP status code"))
            }
            ExpectText::Http { status, body } => Ok(Expect::Http { status, body }),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    /// `client`, `client2` (off-cluster), `pod:<name>` or `node:<name>`.
    pub from: String,
    /// An address, `node:<name>` / `node6:<name>` (the node's IPv4 / IPv6
    /// address, e.g. for NodePorts) or `pod:<name>` / `pod6:<name>`.
    pub to: String,
    pub protocol: Proto,
    pub port: u16,
    /// For off-cluster clients: the node the router sends `to` through
    /// (default: the node `to` names, else the first node).
    #[serde(default)]
    pub via: Option<String>,
    pub expect: Expect,
    /// Connections (datagrams on fresh sockets) to make; each must meet
    /// `expect`.
    #[serde(default = "one")]
    pub repeat: u32,
    /// Every repetition answered by the same pod.
    #[serde(default)]
    pub same_backend: bool,
    /// Every pod of `expect.reply.from` answers at least once.
    #[serde(default)]
    pub spread: bool,
    /// Keep this TCP/SCTP connection open under this name for a later
    /// step's `over`.
    #[serde(default)]
    pub keep: Option<String>,
    /// Send over the connection a probe of an earlier step kept.
    #[serde(default)]
    pub over: Option<String>,
    /// Not compared with `explain` (say why), e.g. for a kept connection,
    /// which conntrack routes, not the rules.
    #[serde(default)]
    pub no_explain: Option<String>,
    /// `protocol: http` only: the request's path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
}

impl Probe {
    /// What the fields cannot say alone: an HTTP probe expects a response
    /// (or refused / dropped) and is one request per connection; the other
    /// protocols expect no HTTP response and have no path.
    fn check(&self) -> Result<(), String> {
        let http = self.protocol == Proto::Http;
        match (&self.expect, http) {
            (Expect::Http { .. }, false) => {
                return Err("expect {status, body} needs protocol: http".into());
            }
            (Expect::Reply { .. }, true) => {
                return Err("protocol http expects {status, body}, refused or dropped".into());
            }
            _ => {}
        }
        if http {
            if self.keep.is_some() || self.over.is_some() || self.spread || self.same_backend {
                return Err("protocol http takes no keep, over, spread or same-backend".into());
            }
            if let Some(path) = &self.path
                && (!path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()))
            {
                return Err(format!("path {path:?}: want /PATH without spaces"));
            }
        } else if self.path.is_some() {
            return Err("path is for protocol: http".into());
        }
        Ok(())
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbesFile {
    #[serde(default)]
    probes: Vec<Probe>,
}

#[derive(Debug)]
pub struct Step {
    pub name: String,
    /// The scenario's manifests in this step: file name → contents (carried
    /// over from earlier steps unless replaced).
    pub manifests: BTreeMap<String, String>,
    pub probes: Vec<Probe>,
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Step>,
}

/// The matrix: the topology's manifests and the scenarios, in name order.
#[derive(Debug)]
pub struct Matrix {
    pub cluster: BTreeMap<String, String>,
    pub scenarios: Vec<Scenario>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        out.push(entry.map_err(io(dir))?.path());
    }
    out.sort();
    Ok(out)
}

fn yaml_files(dir: &Path) -> Result<BTreeMap<String, String>, ScenarioError> {
    let mut out = BTreeMap::new();
    for path in sorted_entries(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_file()
            && name != PROBES_FILE
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
        {
            out.insert(
                name.to_string(),
                fs::read_to_string(&path).map_err(io(&path))?,
            );
        }
    }
    Ok(out)
}

fn load_scenario(dir: &Path) -> Result<Scenario, ScenarioError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut steps = Vec::new();
    let mut manifests: BTreeMap<String, String> = BTreeMap::new();
    for step_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        for (file, text) in yaml_files(&step_dir)? {
            manifests.insert(file, text);
        }
        let probes_path = step_dir.join(PROBES_FILE);
        let probes = if probes_path.is_file() {
            let text = fs::read_to_string(&probes_path).map_err(io(&probes_path))?;
            let file: ProbesFile =
                serde_yaml_ng::from_str(&text).map_err(|source| ScenarioError::Yaml {
                    path: probes_path.clone(),
                    source,
                })?;
            for probe in &file.probes {
                probe.check().map_err(|why| ScenarioError::Invalid {
                    path: probes_path.clone(),
                    why: format!("probe {}: {why}", probe.name),
                })?;
            }
            file.probes
        } else {
            Vec::new()
        };
        steps.push(Step {
            name: step_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            manifests: manifests.clone(),
            probes,
        });
    }
    if steps.is_empty() {
        return Err(ScenarioError::Invalid {
            path: dir.to_path_buf(),
            why: "no step directories".into(),
        });
    }
    Ok(Scenario { name, steps })
}

/// `root` is the matrix (a `cluster/` and scenario directories) or one
/// scenario inside it (its parent holds `cluster/`).
pub fn load(root: &Path) -> Result<Matrix, ScenarioError> {
    let (matrix_dir, only) = if root.join(CLUSTER_DIR).is_dir() {
        (root.to_path_buf(), None)
    } else {
        match root.parent() {
            Some(parent) if parent.join(CLUSTER_DIR).is_dir() => {
                (parent.to_path_buf(), Some(root.to_path_buf()))
            }
            _ => {
                return Err(ScenarioError::Invalid {
                    path: root.to_path_buf(),
                    why: format!("neither it nor its parent has a {CLUSTER_DIR}/ directory"),
                });
            }
        }
    };
    let cluster = yaml_files(&matrix_dir.join(CLUSTER_DIR))?;
    let mut scenarios = Vec::new();
    let dirs = match only {
        Some(one) => vec![one],
        None => sorted_entries(&matrix_dir)?
            .into_iter()
            .filter(|p| p.is_dir() && !p.ends_with(CLUSTER_DIR))
            .collect(),
    };
    for dir in dirs {
        scenarios.push(load_scenario(&dir)?);
    }
    Ok(Matrix { cluster, scenarios })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_read_as_written() {
        let reply = |pods: &[&str], seen: &str| Expect::Reply {
            from: pods.iter().map(|p| p.to_string()).collect(),
            seen: seen.into(),
        };
        let cases: &[(&str, Result<Expect, &str>)] = &[
            ("refused", Ok(Expect::Refused)),
            ("dropped", Ok(Expect::Dropped)),
            (
                "{reply: [web-a, web-b], seen: client}",
                Ok(reply(&["web-a", "web-b"], "client")),
            ),
            (
                "{reply: [web-a], seen: \"node:node-a\"}",
                Ok(reply(&["web-a"], "node:node-a")),
            ),
            (
                "{status: 200, body: [\"\\\"localEndpoints\\\":1\"]}",
                Ok(Expect::Http {
                    status: 200,
                    body: vec!["\"localEndpoints\":1".into()],
                }),
            ),
            (
                "{status: 503}",
                Ok(Expect::Http {
                    status: 503,
                    body: vec![],
                }),
            ),
            ("{status: 42}", Err("not an HTTP status code")),
            ("accepted", Err("want refused, dropped,")),
            ("{reply: [], seen: client}", Err("expect reply from no pod")),
        ];
        for (text, want) in cases {
            let got: Result<Expect, String> =
                serde_yaml_ng::from_str(text).map_err(|e| e.to_string());
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(&g, w, "{text}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{text}: {g}"),
                (w, g) => panic!("{text}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn probes_fit_their_protocol() {
        let base = "{name: p, from: client, to: node:node-a, port: 32100, ";
        let cases: &[(&str, Result<(), &str>)] = &[
            (
                "protocol: http, path: /healthz, expect: {status: 200}}",
                Ok(()),
            ),
            ("protocol: http, expect: refused}", Ok(())),
            (
                "protocol: tcp, expect: {reply: [web-a], seen: client}}",
                Ok(()),
            ),
            (
                "protocol: tcp, expect: {status: 200}}",
                Err("needs protocol: http"),
            ),
            (
                "protocol: http, expect: {reply: [web-a], seen: client}}",
                Err("protocol http expects"),
            ),
            (
                "protocol: http, keep: k, expect: {status: 200}}",
                Err("takes no keep"),
            ),
            (
                "protocol: http, path: healthz, expect: {status: 200}}",
                Err("want /PATH"),
            ),
            (
                "protocol: udp, path: /, expect: dropped}",
                Err("path is for protocol: http"),
            ),
        ];
        for (rest, want) in cases {
            let text = format!("{base}{rest}");
            let probe: Probe = serde_yaml_ng::from_str(&text).expect(&text);
            match (want, probe.check()) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(g)) => assert!(g.contains(w), "{text}: {g}"),
                (w, g) => panic!("{text}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn steps_carry_files_over_and_replace_them_by_name() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path();
        let write = |path: &str, text: &str| {
            let p = root.join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, text).expect("write");
        };
        write("cluster/nodes.yaml", "# nodes\n");
        write("01-x/1-a/services.yaml", "a\n");
        write("01-x/1-a/slices.yaml", "slices\n");
        write(
            "01-x/1-a/probes.yaml",
            "probes:\n  - {name: p, from: client, to: node:node-a, protocol: tcp, port: 80, expect: refused}\n",
        );
        write("01-x/2-b/services.yaml", "b\n");
        let m = load(root).expect("loads");
        assert_eq!(m.cluster.keys().collect::<Vec<_>>(), ["nodes.yaml"]);
        let s = &m.scenarios[0];
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[0].probes.len(), 1);
        assert_eq!(s.steps[0].probes[0].repeat, 1);
        assert_eq!(s.steps[1].manifests["services.yaml"], "b\n");
        assert_eq!(s.steps[1].manifests["slices.yaml"], "slices\n");
        assert!(s.steps[1].probes.is_empty());
        // One scenario's directory: its parent holds cluster/.
        let one = load(&root.join("01-x")).expect("loads");
        assert_eq!(one.scenarios.len(), 1);
        // A misspelt field is an error, not a silently default probe.
        write(
            "01-x/2-b/probes.yaml",
            "probes:\n  - {name: p, from: client, to: x, protocol: tcp, port: 80, expect: refused, repaet: 3}\n",
        );
        assert!(load(root).is_err());
    }
}
