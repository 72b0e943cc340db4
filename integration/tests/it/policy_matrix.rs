//! NetworkPolicy on real packets: the upstream e2e layout (namespaces x, y,
//! z; pods a, b, c; labels `pod=<name>`, `ns=<name>`), one node namespace,
//! every (source, destination, port) probed, the whole matrix asserted,
//! and every cell's verdict also asked of `explain` on the same state.
//! The helpers here serve `cluster_policy_matrix` too.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use setpoint_compute::{ClusterObject, ComputeConfig, Index};
use setpoint_dataplane::explain::{Origin, Packet, Verdict, explain};
use setpoint_dataplane::{Format, NodeDataplane, Protocol, render};
use setpoint_integration::cluster::{
    Matrix, NodeNet, OUTSIDE_DESTINATIONS, OUTSIDE_IP, PORTS, Proto,
};
use setpoint_integration::require_root_and_tools;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

pub(super) fn pod_ip(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, (10 + ns * 3 + pod) as u8)
}

pub(super) fn pod_id(ns: usize, pod: usize) -> String {
    format!("{}/{}", NAMESPACES[ns], PODS[pod])
}

/// The cluster without policies, as manifests: node-1 (the node under
/// test) and its pods.
pub(super) fn cluster_yaml() -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Node
metadata: {{name: node-1, labels: {{kubernetes.io/os: linux, zone: core}}}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: {}}}]}}
",
        setpoint_integration::cluster::NODE_IP
    );
    for (n, ns) in NAMESPACES.iter().enumerate() {
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{ns: {ns}, kubernetes.io/metadata.name: {ns}}}}}
"
        ));
        for (p, pod) in PODS.iter().enumerate() {
            out.push_str(&format!(
                "---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}, ns: {ns}}}}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports:
    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
",
                ip = pod_ip(n, p)
            ));
        }
    }
    out
}

pub(super) fn objects(yaml: &str) -> Vec<ClusterObject> {
    let report = setpoint_source::parse_str(yaml, Path::new("scenario.yaml"));
    assert!(
        report.skipped.is_empty(),
        "scenario manifests: {:?}",
        report.skipped
    );
    report.objects
}

pub(super) fn pods() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    for n in 0..3 {
        for p in 0..3 {
            out.push((pod_id(n, p), pod_ip(n, p)));
        }
    }
    out
}

/// Expected reachability, built by rules over (source, destination, port).
pub(super) struct Expect(Matrix);

impl Expect {
    pub(super) fn all(allowed: bool) -> Expect {
        let mut m = Matrix::default();
        let mut sources: Vec<String> = pods().into_iter().map(|p| p.0).collect();
        sources.push("outside".to_string());
        for src in &sources {
            for (dst, _) in pods() {
                for (proto, port) in PORTS {
                    m.0.insert(
                        (src.clone(), dst.clone(), proto, port),
                        allowed || *src == dst,
                    );
                }
            }
        }
        Expect(m)
    }

    /// [`Expect::all`] with the pods' connections to the outside host's
    /// addresses too (destinations `outside` and `world`, see
    /// `cluster::OUTSIDE_DESTINATIONS`); the outside host is not probed
    /// from itself.
    pub(super) fn all_with_outside(allowed: bool) -> Expect {
        let mut m = Expect::all(allowed).0;
        for (src, _) in pods() {
            for (dst, _) in OUTSIDE_DESTINATIONS {
                for (proto, port) in PORTS {
                    m.0.insert((src.clone(), dst.to_string(), proto, port), allowed);
                }
            }
        }
        Expect(m)
    }

    /// Sets every cell that all three filters accept; a pod reaching itself
    /// never leaves its namespace and stays allowed.
    pub(super) fn set(
        mut self,
        src: impl Fn(&str) -> bool,
        dst: impl Fn(&str) -> bool,
        port: impl Fn(Proto, u16) -> bool,
        allowed: bool,
    ) -> Expect {
        for ((s, d, proto, p), cell) in self.0.0.iter_mut() {
            if src(s) && dst(d) && port(*proto, *p) && s != d {
                *cell = allowed;
            }
        }
        self
    }
}

pub(super) fn any(_: &str) -> bool {
    true
}
pub(super) fn any_port(_: Proto, _: u16) -> bool {
    true
}
pub(super) fn in_ns(ns: &'static str) -> impl Fn(&str) -> bool {
    move |id| id.starts_with(&format!("{ns}/"))
}
pub(super) fn is(id: &'static str) -> impl Fn(&str) -> bool {
    move |x| x == id
}

/// Applies `policies` (YAML) on the node and compares the probed matrix.
pub(super) fn check(net: &NodeNet, policies: &str, expected: &Expect) {
    check_full(net, policies, expected, &[], &[]);
}

/// A cell and what its `explain` must name: a rule comment (such as
/// `cnp:Admin/p/ingress rule 0: Deny`) or any text of the reason.
pub(super) struct Decided {
    pub(super) src: &'static str,
    pub(super) dst: &'static str,
    pub(super) proto: Proto,
    pub(super) port: u16,
    pub(super) names: &'static str,
}

/// [`check`], where the manifests' problems must be exactly one per
/// entry of `warnings` (each containing it), and each of `decided` must be
/// explained by a rule naming what it says.
pub(super) fn check_full(
    net: &NodeNet,
    policies: &str,
    expected: &Expect,
    warnings: &[&str],
    decided: &[Decided],
) {
    let mut index = Index::new(ComputeConfig::default());
    for o in objects(&cluster_yaml()) {
        index.upsert(o);
    }
    if !policies.trim().is_empty() {
        for o in objects(policies) {
            index.upsert(o);
        }
    }
    index.commit();
    let problems: Vec<String> = index.problems().map(|p| p.rejection.to_string()).collect();
    assert!(
        problems.len() == warnings.len()
            && warnings
                .iter()
                .all(|w| problems.iter().any(|p| p.contains(w))),
        "problems {problems:?}, expected {warnings:?}"
    );
    let state = index.node_state("node-1").expect("node-1");
    assert!(state.validate().is_empty(), "{:?}", state.validate());
    let rules = || {
        render(&state, Format::Iptables)
            .lines()
            .filter(|l| l.contains("SP-I-") || l.contains("SP-E-") || l.contains("SP-POLICY"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // What `explain` says of each cell must be what the packets will show.
    let explained = explain_disagrees(&state, expected);
    assert!(
        explained.is_empty(),
        "explain disagrees with the expected matrix:\n{}\nrules:\n{}",
        explained.join("\n"),
        rules()
    );
    for d in decided {
        let e = explain(&state, &packet(d.src, d.dst, d.proto, d.port)).expect("explains");
        let named = e.reason.contains(d.names)
            || e.steps
                .iter()
                .any(|s| s.outcome == "match" && s.text.contains(d.names));
        assert!(
            named,
            "{} -> {} {}/{}: explain does not name {:?}:\n{}",
            d.src,
            d.dst,
            d.proto,
            d.port,
            d.names,
            setpoint_dataplane::explain::render_text(&e)
        );
    }
    net.apply(
        &render(&state, Format::Ipset),
        &render(&state, Format::Iptables),
    )
    .expect("rendered state applies");
    let to_outside = expected.0.0.keys().any(|k| k.1 == "outside");
    let observed = if to_outside {
        net.probe_with_outside()
    } else {
        net.probe_all()
    }
    .expect("probes run");
    if observed != expected.0 {
        panic!(
            "reachability differs\nexpected:\n{}\nobserved:\n{}\nrules:\n{}",
            expected.0.render(),
            observed.render(),
            rules()
        );
    }
}

/// A probe's end by its matrix name.
fn address(id: &str) -> IpAddr {
    if id == "outside" {
        return IpAddr::V4(OUTSIDE_IP);
    }
    if let Some((_, ip)) = OUTSIDE_DESTINATIONS.iter().find(|(name, _)| *name == id) {
        return IpAddr::V4(*ip);
    }
    pods()
        .into_iter()
        .find(|(p, _)| p == id)
        .map(|(_, ip)| IpAddr::V4(ip))
        .unwrap_or_else(|| panic!("no endpoint {id}"))
}

fn packet(src: &str, dst: &str, proto: Proto, port: u16) -> Packet {
    Packet {
        protocol: match proto {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
        },
        src: address(src),
        src_port: None,
        dst: address(dst),
        dst_port: port,
        from: if src == "outside" {
            Origin::Outside
        } else {
            Origin::Pod
        },
    }
}

/// The cells (a pod to itself aside: it never reaches the node) whose
/// `explain` verdict is not the expected one, or that it could not fully
/// evaluate.
fn explain_disagrees(state: &NodeDataplane, expected: &Expect) -> Vec<String> {
    let mut out = Vec::new();
    for ((src, dst, proto, port), allowed) in &expected.0.0 {
        if src == dst {
            continue;
        }
        let e = match explain(state, &packet(src, dst, *proto, *port)) {
            Ok(e) => e,
            Err(e) => {
                out.push(format!("{src} -> {dst} {proto}/{port}: {e}"));
                continue;
            }
        };
        let passes = !matches!(e.verdict, Verdict::Drop | Verdict::Reject);
        if passes != *allowed || !e.not_evaluated.is_empty() {
            out.push(format!(
                "{src} -> {dst} {proto}/{port}: expected {}, explain: {} ({}) {:?}",
                if *allowed { "allowed" } else { "blocked" },
                e.verdict.as_str(),
                e.reason,
                e.not_evaluated
            ));
        }
    }
    out
}

pub(super) fn net() -> NodeNet {
    require_root_and_tools();
    NodeNet::build(&pods()).expect("namespaces build")
}

#[test]
fn no_policy_allows_everything() {
    let net = net();
    check(&net, "", &Expect::all(true));
}

#[test]
fn default_deny_ingress() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
",
        &Expect::all(true).set(any, in_ns("x"), any_port, false),
    );
}

#[test]
fn default_deny_egress() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
",
        &Expect::all(true).set(in_ns("x"), any, any_port, false),
    );
}

#[test]
fn allow_from_same_namespace() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
",
        &Expect::all(true).set(any, in_ns("x"), any_port, false).set(
            in_ns("x"),
            in_ns("x"),
            any_port,
            true,
        ),
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
",
        &Expect::all(true).set(any, is("x/a"), any_port, false).set(
            is("y/b"),
            is("x/a"),
            any_port,
            true,
        ),
    );
}

#[test]
fn namespace_and_pod_selector_in_two_peers_is_or() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]
",
        &Expect::all(true)
            .set(any, is("x/a"), any_port, false)
            .set(in_ns("y"), is("x/a"), any_port, true)
            .set(is("x/b"), is("x/a"), any_port, true),
    );
}

#[test]
fn match_expressions_select_namespaces() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x, y]}]
",
        &Expect::all(true).set(any, is("x/a"), any_port, false).set(
            in_ns("z"),
            is("x/a"),
            any_port,
            true,
        ),
    );
}

#[test]
fn ip_block_with_except() {
    let net = net();
    // x/b is 10.244.1.11: the only pod carved out of the allowed block.
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.11/32]}}]
",
        &Expect::all(true)
            .set(is("x/b"), is("x/a"), any_port, false)
            .set(is("outside"), is("x/a"), any_port, false),
    );
}

#[test]
fn ip_block_everything_admits_the_outside() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: world, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.1.0/24]}}]
",
        &Expect::all(true).set(any, is("x/a"), any_port, false).set(
            is("outside"),
            is("x/a"),
            any_port,
            true,
        ),
    );
}

#[test]
fn named_port_ingress() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-tcp, protocol: TCP}]}]
",
        &Expect::all(true).set(any, is("x/a"), |p, n| !(p == Proto::Tcp && n == 81), false),
    );
}

#[test]
fn end_port_range_and_protocol() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, endPort: 81, protocol: TCP}]}]
",
        &Expect::all(true).set(any, in_ns("x"), |p, _| p == Proto::Udp, false),
    );
}

#[test]
fn udp_port_only() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{ports: [{port: 81, protocol: UDP}]}]
",
        &Expect::all(true).set(any, is("y/c"), |p, n| !(p == Proto::Udp && n == 81), false),
    );
}

#[test]
fn policies_on_one_pod_are_a_union() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, protocol: TCP}]}]
",
        &Expect::all(true)
            .set(any, is("x/a"), any_port, false)
            .set(in_ns("y"), is("x/a"), any_port, true)
            .set(any, is("x/a"), |p, n| p == Proto::Tcp && n == 80, true),
    );
}

#[test]
fn egress_to_a_namespace_on_a_named_port() {
    let net = net();
    check(
        &net,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: serve-80-udp, protocol: UDP}]
",
        &Expect::all(true).set(is("x/a"), any, any_port, false).set(
            is("x/a"),
            in_ns("y"),
            |p, n| p == Proto::Udp && n == 80,
            true,
        ),
    );
}

#[test]
fn a_label_change_flips_a_row() {
    let net = net();
    let policy = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]
";
    let denied = Expect::all(true).set(any, is("x/a"), any_port, false);
    check(&net, policy, &denied);
    let relabel = format!(
        "{policy}---
apiVersion: v1
kind: Pod
metadata: {{name: c, namespace: z, labels: {{pod: c, ns: z, role: client}}}}
spec: {{nodeName: node-1, containers: [{{name: c}}]}}
status: {{phase: Running, podIP: {ip}}}
",
        ip = pod_ip(2, 2)
    );
    check(
        &net,
        &relabel,
        &denied.set(is("z/c"), is("x/a"), any_port, true),
    );
}

pub(super) fn policy(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

#[test]
fn an_empty_rule_allows_everything_despite_a_deny() {
    let net = net();
    let deny = policy("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n");
    let allow = policy("allow", "x", "  podSelector: {}\n  ingress: [{}]\n");
    check(&net, &format!("{deny}{allow}"), &Expect::all(true));
}

#[test]
fn ingress_from_every_namespace_keeps_the_outside_out() {
    let net = net();
    check(
        &net,
        &policy(
            "all-ns",
            "y",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n",
        ),
        &Expect::all(true).set(is("outside"), in_ns("y"), any_port, false),
    );
}

#[test]
fn pod_selector_expressions_exists_and_not_in() {
    let net = net();
    check(
        &net,
        &policy(
            "expr",
            "x",
            "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: pod, operator: NotIn, values: [b]}]}}]
",
        ),
        &Expect::all(true)
            .set(any, is("x/a"), any_port, false)
            .set(is("x/c"), is("x/a"), any_port, true),
    );
}

#[test]
fn does_not_exist_selects_unlabelled_pods_only() {
    let net = net();
    check(
        &net,
        &policy(
            "dne",
            "z",
            "  podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}\n  policyTypes: [Ingress]\n",
        ),
        &Expect::all(true).set(any, in_ns("z"), any_port, false),
    );
}

#[test]
fn pod_selector_in_isolates_only_those_pods() {
    let net = net();
    check(
        &net,
        &policy(
            "in",
            "y",
            "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\n  policyTypes: [Ingress]\n",
        ),
        &Expect::all(true).set(any, is("y/a"), any_port, false).set(
            any,
            is("y/b"),
            any_port,
            false,
        ),
    );
}

#[test]
fn egress_to_an_ip_block() {
    let net = net();
    // 10.244.1.12/30 holds x/c, y/a, y/b and y/c.
    check(
        &net,
        &policy(
            "egress-block",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.244.1.12/30}}]}]\n",
        ),
        &Expect::all(true)
            .set(is("x/a"), any, any_port, false)
            .set(is("x/a"), is("x/c"), any_port, true)
            .set(is("x/a"), in_ns("y"), any_port, true),
    );
}

#[test]
fn ingress_and_egress_on_one_pod() {
    let net = net();
    check(
        &net,
        &policy(
            "both",
            "x",
            "  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
",
        ),
        &Expect::all(true)
            .set(any, is("x/a"), any_port, false)
            .set(in_ns("y"), is("x/a"), any_port, true)
            .set(is("x/a"), any, any_port, false)
            .set(is("x/a"), in_ns("z"), any_port, true),
    );
}

#[test]
fn deleting_a_policy_opens_again() {
    let net = net();
    let deny = policy(
        "deny",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    );
    check(
        &net,
        &deny,
        &Expect::all(true).set(any, in_ns("x"), any_port, false).set(
            in_ns("x"),
            any,
            any_port,
            false,
        ),
    );
    check(&net, "", &Expect::all(true));
}

#[test]
fn egress_deny_everywhere_leaves_only_loopback() {
    let net = net();
    let spec = "  podSelector: {}\n  policyTypes: [Egress]\n";
    let all = format!(
        "{}{}{}",
        policy("d", "x", spec),
        policy("d", "y", spec),
        policy("d", "z", spec)
    );
    check(
        &net,
        &all,
        &Expect::all(false).set(is("outside"), any, any_port, true),
    );
}

#[test]
fn several_ports_in_one_rule() {
    let net = net();
    check(
        &net,
        &policy(
            "ports",
            "z",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{ports: [{port: 80, protocol: TCP}, {port: 81, protocol: UDP}]}]\n",
        ),
        &Expect::all(true).set(
            any,
            is("z/b"),
            |p, n| !((p == Proto::Tcp && n == 80) || (p == Proto::Udp && n == 81)),
            false,
        ),
    );
}

#[test]
fn egress_to_a_services_backing_pods() {
    let net = net();
    // The Service selects pod=b in y; the policy lets x/a reach exactly
    // those pods, on the service's target port.
    let service = "---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: y}
spec: {clusterIP: 10.96.0.20, selector: {pod: b}, ports: [{port: 80, targetPort: 80}]}
";
    let egress = policy(
        "to-backend",
        "x",
        "  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80, protocol: TCP}]
",
    );
    check(
        &net,
        &format!("{service}{egress}"),
        &Expect::all(true).set(is("x/a"), any, any_port, false).set(
            is("x/a"),
            is("y/b"),
            |p, n| p == Proto::Tcp && n == 80,
            true,
        ),
    );
}

#[test]
fn egress_on_a_named_port_to_everyone() {
    let net = net();
    check(
        &net,
        &policy(
            "named-any",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-81-tcp, protocol: TCP}]}]\n",
        ),
        &Expect::all(true).set(is("x/a"), any, |p, n| !(p == Proto::Tcp && n == 81), false),
    );
}
