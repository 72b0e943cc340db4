//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) on real
//! packets, in `policy_matrix`'s cluster (namespaces x, y, z with labels
//! `ns` and `kubernetes.io/metadata.name`; pods a, b, c with `pod`, `ns`
//! and named ports `serve-{80,81}-{tcp,udp}`; node-1 labelled
//! `kubernetes.io/os: linux, zone: core`), plus node-2 (`zone: edge`)
//! whose InternalIP is the outside host's, so that a `nodes` peer has an
//! address off node-1 to reach. Each scenario asserts the whole matrix —
//! every pod and the outside host to every pod, and where egress beyond
//! the pods is at stake every pod to the outside host (`outside`, node-2's
//! address) and to a host beyond it (`world`, 203.0.113.10) — on TCP and
//! UDP ports 80 and 81, and asks `explain` the same cells and, for a few,
//! which rule decided. Scenarios follow the upstream conformance suite
//! (kubernetes-sigs/network-policy-api `conformance/tests`, named in each
//! test's comment) with its houses mapped onto x, y and z; SCTP is not
//! probed.
//!
//! Not here: a pod's traffic to its own node's address enters the node's
//! INPUT chain, which the policy chains do not police, so `nodes` peers are
//! only probed through node-2.

use setpoint_integration::cluster::Proto;

use super::policy_matrix::{
    Decided, Expect, any, any_port, check_full, in_ns, is, net, pod_ip, policy,
};

/// node-2: the outside host, as a Node of the cluster.
fn node_2() -> String {
    format!(
        "---
apiVersion: v1
kind: Node
metadata: {{name: node-2, labels: {{kubernetes.io/os: linux, zone: edge}}}}
spec: {{podCIDR: 10.244.2.0/24}}
status: {{addresses: [{{type: InternalIP, address: {}}}]}}
",
        setpoint_integration::cluster::OUTSIDE_IP
    )
}

fn cnp(name: &str, tier: &str, priority: u32, body: &str) -> String {
    format!(
        "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: {name}}}
spec:
  tier: {tier}
  priority: {priority}
{body}"
    )
}

/// Applies node-2 and `policies`, checks the matrix and what `explain`
/// names for `decided`.
fn check(policies: &str, expected: &Expect, decided: &[Decided]) {
    let net = net();
    check_on(&net, policies, expected, decided);
}

fn check_on(
    net: &setpoint_integration::cluster::NodeNet,
    policies: &str,
    expected: &Expect,
    decided: &[Decided],
) {
    check_full(
        net,
        &format!("{}{policies}", node_2()),
        expected,
        &[],
        decided,
    );
}

fn decided(
    src: &'static str,
    dst: &'static str,
    proto: Proto,
    port: u16,
    names: &'static str,
) -> Decided {
    Decided {
        src,
        dst,
        proto,
        port,
        names,
    }
}

fn port(proto: Proto, number: u16) -> impl Fn(Proto, u16) -> bool {
    move |p, n| p == proto && n == number
}
fn protocol(proto: Proto) -> impl Fn(Proto, u16) -> bool {
    move |p, _| p == proto
}
fn one_of(ids: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |x| ids.contains(&x)
}
/// The pods named `name` in every namespace.
fn pod_named(name: &'static str) -> impl Fn(&str) -> bool {
    move |id| id.ends_with(&format!("/{name}"))
}

use Proto::{Tcp, Udp};

/// CNPAdminTierIngressTCP: Accept, Deny and Pass from one namespace in
/// that order (the first wins), then per-pod peers on a port: a Deny
/// before a Pass, an Accept before a Deny of the rest.
#[test]
fn admin_ingress_rule_order_and_port() {
    check(
        &cnp(
            "ingress-tcp",
            "Admin",
            3,
            "  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}
  ingress:
  - {name: allow-from-y-everything, action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: deny-from-y-everything, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: pass-from-y-everything, action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - name: deny-from-z-a-at-port-80
    action: Deny
    from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: pass-from-z-a-at-port-80
    action: Pass
    from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: allow-from-z-b-at-port-80
    action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: deny-from-z-b-everything-else
    action: Deny
    from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}}]
",
        ),
        &Expect::all(true)
            .set(is("z/a"), in_ns("x"), port(Tcp, 80), false)
            .set(is("z/b"), in_ns("x"), any_port, false)
            .set(is("z/b"), in_ns("x"), port(Tcp, 80), true),
        &[
            decided(
                "y/a",
                "x/a",
                Udp,
                81,
                "cnp:Admin/ingress-tcp/ingress rule 0: Accept",
            ),
            decided(
                "z/a",
                "x/b",
                Tcp,
                80,
                "cnp:Admin/ingress-tcp/ingress rule 3: Deny",
            ),
            decided(
                "z/b",
                "x/c",
                Udp,
                80,
                "cnp:Admin/ingress-tcp/ingress rule 6: Deny",
            ),
        ],
    );
}

/// CNPAdminTierIngressUDP ("pass-ingress ... at the specified port"): a
/// Pass with no NetworkPolicy and no Baseline below it allows; the Deny of
/// every UDP port (a protocol without a port) after it takes the rest.
/// The subject is one pod (namespace and pod selector).
#[test]
fn admin_ingress_pass_with_nothing_below_allows() {
    check(
        &cnp(
            "ingress-udp",
            "Admin",
            4,
            "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}
  ingress:
  - name: pass-from-y-at-udp-80
    action: Pass
    from: [{namespaces: {matchLabels: {ns: y}}}]
    protocols: [{udp: {destinationPort: {number: 80}}}]
  - name: deny-from-y-udp
    action: Deny
    from: [{namespaces: {matchLabels: {ns: y}}}]
    protocols: [{udp: {}}]
",
        ),
        &Expect::all(true)
            .set(in_ns("y"), is("x/a"), protocol(Udp), false)
            .set(in_ns("y"), is("x/a"), port(Udp, 80), true),
        &[decided(
            "y/b",
            "x/a",
            Udp,
            80,
            "cnp:Admin/ingress-udp/ingress rule 0: Pass",
        )],
    );
}

/// CNPAdminTierEgressTCP: the egress mirror of the ingress rule order.
#[test]
fn admin_egress_rule_order_and_port() {
    check(
        &cnp(
            "egress-tcp",
            "Admin",
            5,
            "  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}
  egress:
  - {name: allow-to-y-everything, action: Accept, to: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: deny-to-y-everything, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: pass-to-y-everything, action: Pass, to: [{namespaces: {matchLabels: {ns: y}}}]}
  - name: deny-to-z-a-at-port-80
    action: Deny
    to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: pass-to-z-a-at-port-80
    action: Pass
    to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: allow-to-z-b-at-port-80
    action: Accept
    to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: deny-to-z-b-everything-else
    action: Deny
    to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}}]
",
        ),
        &Expect::all(true)
            .set(in_ns("x"), is("z/a"), port(Tcp, 80), false)
            .set(in_ns("x"), is("z/b"), any_port, false)
            .set(in_ns("x"), is("z/b"), port(Tcp, 80), true),
        &[
            decided(
                "x/a",
                "z/a",
                Tcp,
                80,
                "cnp:Admin/egress-tcp/egress rule 3: Deny",
            ),
            decided(
                "x/c",
                "z/b",
                Tcp,
                80,
                "cnp:Admin/egress-tcp/egress rule 5: Accept",
            ),
        ],
    );
}

/// CNPAdminTierEgressUDP ("pass-egress") with CNPAdminTierIntegration's
/// NetworkPolicy below: UDP (a port range) to y passes to x's
/// NetworkPolicy, which allows y/a only; the rest to y is denied by the
/// Admin rule after it; everything else from x is the NetworkPolicy's
/// egress isolation.
#[test]
fn admin_egress_pass_to_network_policy() {
    let admin = cnp(
        "egress-udp",
        "Admin",
        6,
        "  subject:
    namespaces: {matchLabels: {ns: x}}
  egress:
  - name: pass-udp-to-y
    action: Pass
    to: [{namespaces: {matchLabels: {ns: y}}}]
    protocols: [{udp: {destinationPort: {range: {start: 80, end: 81}}}}]
  - {name: deny-to-y, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}
",
    );
    let np = policy(
        "to-y-a",
        "x",
        "  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]
",
    );
    check(
        &format!("{admin}{np}"),
        &Expect::all(true).set(in_ns("x"), any, any_port, false).set(
            in_ns("x"),
            is("y/a"),
            protocol(Udp),
            true,
        ),
        &[
            decided(
                "x/a",
                "y/a",
                Udp,
                81,
                "cnp:Admin/egress-udp/egress rule 0: Pass",
            ),
            decided(
                "x/b",
                "y/a",
                Tcp,
                80,
                "cnp:Admin/egress-udp/egress rule 1: Deny",
            ),
        ],
    );
}

/// CNPAdminTierGress ("allow-gress"): Admin Accept in both directions
/// wins over a NetworkPolicy denying all of x's traffic.
#[test]
fn admin_accept_overrides_network_policy() {
    let admin = cnp(
        "gress-accept",
        "Admin",
        7,
        "  subject:
    namespaces: {matchLabels: {ns: x}}
  ingress: [{name: from-y, action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}]
  egress: [{name: to-y, action: Accept, to: [{namespaces: {matchLabels: {ns: y}}}]}]
",
    );
    let np = policy(
        "deny-all",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    );
    check(
        &format!("{admin}{np}"),
        &Expect::all(true)
            .set(any, in_ns("x"), any_port, false)
            .set(in_ns("x"), any, any_port, false)
            .set(in_ns("y"), in_ns("x"), any_port, true)
            .set(in_ns("x"), in_ns("y"), any_port, true),
        &[decided(
            "y/c",
            "x/b",
            Tcp,
            81,
            "cnp:Admin/gress-accept/ingress rule 0: Accept",
        )],
    );
}

/// CNPAdminTierIntegration's manifest (standard-anp-np-banp): an Admin
/// policy between x and y, x's NetworkPolicy allowing y both ways, and a
/// Baseline policy denying y both ways; `action` is the Admin rules'.
fn integration(action: &str, with_network_policy: bool) -> String {
    let admin = cnp(
        "pass-example",
        "Admin",
        10,
        &format!(
            "  subject:
    namespaces: {{matchLabels: {{ns: x}}}}
  ingress: [{{name: all-ingress-from-y, action: {action}, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]
  egress: [{{name: all-egress-to-y, action: {action}, to: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]
"
        ),
    );
    let np = policy(
        "allow-gress-from-to-y",
        "x",
        "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
",
    );
    let baseline = cnp(
        "default",
        "Baseline",
        10,
        "  subject:
    namespaces: {matchLabels: {ns: x}}
  ingress: [{name: deny-all-ingress-from-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]
  egress: [{name: deny-all-egress-to-y, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}]
",
    );
    if with_network_policy {
        format!("{admin}{np}{baseline}")
    } else {
        format!("{admin}{baseline}")
    }
}

/// CNPAdminTierIntegration ("Should Deny traffic ... respecting admin
/// CNP"): Admin Deny wins over the NetworkPolicy allowing y; x's
/// NetworkPolicy isolates it from everything else.
#[test]
fn admin_deny_overrides_network_policy() {
    check(
        &integration("Deny", true),
        &Expect::all(true).set(any, in_ns("x"), any_port, false).set(
            in_ns("x"),
            any,
            any_port,
            false,
        ),
        &[
            decided(
                "y/a",
                "x/a",
                Tcp,
                80,
                "cnp:Admin/pass-example/ingress rule 0: Deny",
            ),
            decided(
                "x/a",
                "y/a",
                Udp,
                80,
                "cnp:Admin/pass-example/egress rule 0: Deny",
            ),
        ],
    );
}

/// CNPAdminTierIntegration ("pass-ingress/egress ... respect the match for
/// network policy"): Admin Pass hands x↔y to the NetworkPolicy, which
/// allows it; the Baseline Deny is never reached, since the NetworkPolicy
/// isolates x in both directions.
#[test]
fn admin_pass_lets_network_policy_decide() {
    check(
        &integration("Pass", true),
        &Expect::all(true)
            .set(any, in_ns("x"), any_port, false)
            .set(in_ns("x"), any, any_port, false)
            .set(in_ns("y"), in_ns("x"), any_port, true)
            .set(in_ns("x"), in_ns("y"), any_port, true),
        &[decided(
            "y/b",
            "x/c",
            Udp,
            81,
            "cnp:Admin/pass-example/ingress rule 0: Pass",
        )],
    );
}

/// CNPAdminTierIntegration ("pass-ingress/egress ... respect the match for
/// baseline cluster network policy", the NetworkPolicy deleted): Admin
/// Pass reaches the Baseline Deny.
#[test]
fn admin_pass_falls_to_baseline() {
    check(
        &integration("Pass", false),
        &Expect::all(true)
            .set(in_ns("y"), in_ns("x"), any_port, false)
            .set(in_ns("x"), in_ns("y"), any_port, false),
        &[
            decided(
                "y/a",
                "x/b",
                Tcp,
                81,
                "cnp:Baseline/default/ingress rule 0: Deny",
            ),
            decided(
                "x/b",
                "y/c",
                Tcp,
                80,
                "cnp:Baseline/default/egress rule 0: Deny",
            ),
        ],
    );
}

/// CNPAdminTierPriorityField: the lower priority value is evaluated
/// first. At 50 a Deny of y/a and y/b beats the Pass at 60; lowered to
/// 40, the Pass hands x/a↔y to the Baseline tier, which accepts y/a and
/// denies the rest of y. Subject and peers by namespace and pod selectors.
#[test]
fn priority_lower_value_first() {
    let net = net();
    let subject = "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}
";
    let deny = cnp(
        "priority-50",
        "Admin",
        50,
        &format!(
            "{subject}  ingress:
  - name: deny-from-y-a-b
    action: Deny
    from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [a, b]}}]}}}}}}]
  egress:
  - name: deny-to-y-a-b
    action: Deny
    to: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [a, b]}}]}}}}}}]
"
        ),
    );
    let pass = |priority: u32| {
        cnp(
            "old-60-new-40",
            "Admin",
            priority,
            &format!(
                "{subject}  ingress:
  - {{name: pass-from-y, action: Pass, from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{}}}}}}]}}
  egress:
  - {{name: pass-to-y, action: Pass, to: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{}}}}}}]}}
"
            ),
        )
    };
    let baseline = cnp(
        "default",
        "Baseline",
        10,
        &format!(
            "{subject}  ingress:
  - name: allow-from-y-a
    action: Accept
    from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}]
  - {{name: deny-from-y, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}
  egress:
  - name: allow-to-y-a
    action: Accept
    to: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}]
  - {{name: deny-to-y, action: Deny, to: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}
"
        ),
    );
    let closed = Expect::all(true)
        .set(in_ns("y"), is("x/a"), any_port, false)
        .set(is("x/a"), in_ns("y"), any_port, false);
    check_on(
        &net,
        &format!("{deny}{}{baseline}", pass(60)),
        &closed,
        &[
            decided(
                "y/a",
                "x/a",
                Tcp,
                80,
                "cnp:Admin/priority-50/ingress rule 0: Deny",
            ),
            decided(
                "y/c",
                "x/a",
                Tcp,
                80,
                "cnp:Baseline/default/ingress rule 1: Deny",
            ),
        ],
    );
    check_on(
        &net,
        &format!("{deny}{}{baseline}", pass(40)),
        &closed
            .set(is("y/a"), is("x/a"), any_port, true)
            .set(is("x/a"), is("y/a"), any_port, true),
        &[
            decided(
                "x/a",
                "y/a",
                Udp,
                81,
                "cnp:Admin/old-60-new-40/egress rule 0: Pass",
            ),
            decided(
                "y/b",
                "x/a",
                Tcp,
                80,
                "cnp:Baseline/default/ingress rule 1: Deny",
            ),
        ],
    );
}

/// The tiers' order is not the priorities': a Baseline Deny at priority 0
/// comes after an Admin Accept at 1000.
#[test]
fn admin_tier_before_baseline_whatever_the_priority() {
    let baseline = cnp(
        "baseline-first-priority",
        "Baseline",
        0,
        "  subject:
    namespaces: {matchLabels: {ns: z}}
  ingress: [{name: deny-from-x, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]
",
    );
    let admin = cnp(
        "admin-last-priority",
        "Admin",
        1000,
        "  subject:
    namespaces: {matchLabels: {ns: z}}
  ingress:
  - name: allow-from-x-a
    action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}]
",
    );
    check(
        &format!("{baseline}{admin}"),
        &Expect::all(true)
            .set(in_ns("x"), in_ns("z"), any_port, false)
            .set(is("x/a"), in_ns("z"), any_port, true),
        &[decided(
            "x/a",
            "z/c",
            Tcp,
            81,
            "cnp:Admin/admin-last-priority/ingress rule 0: Accept",
        )],
    );
}

/// CNPBaselineTierIngressTCP and -UDP: Baseline rule order — Accept
/// before Deny, a Pass (which skips the rest of the Baseline tier: allowed)
/// before a Deny, a pod's Accept on a port before its namespace's Deny.
#[test]
fn baseline_ingress_rule_order_and_pass() {
    check(
        &cnp(
            "ingress-rules",
            "Baseline",
            10,
            "  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: z}}
  ingress:
  - {name: allow-from-y-everything, action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - {name: deny-from-y-everything, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - name: pass-from-x-at-udp-81
    action: Pass
    from: [{namespaces: {matchLabels: {ns: x}}}]
    protocols: [{udp: {destinationPort: {number: 81}}}]
  - name: deny-from-x-udp
    action: Deny
    from: [{namespaces: {matchLabels: {ns: x}}}]
    protocols: [{udp: {}}]
  - name: allow-from-x-b-at-tcp-80
    action: Accept
    from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: deny-from-x-everything-else
    action: Deny
    from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {}}}]
",
        ),
        &Expect::all(true)
            .set(in_ns("x"), in_ns("z"), any_port, false)
            .set(in_ns("x"), in_ns("z"), port(Udp, 81), true)
            .set(is("x/b"), in_ns("z"), port(Tcp, 80), true),
        &[
            decided(
                "x/a",
                "z/a",
                Udp,
                81,
                "cnp:Baseline/ingress-rules/ingress rule 2: Pass",
            ),
            decided(
                "x/c",
                "z/b",
                Tcp,
                80,
                "cnp:Baseline/ingress-rules/ingress rule 5: Deny",
            ),
        ],
    );
}

/// CNPBaselineTierGress with a NetworkPolicy beside it: Baseline applies
/// per pod and per direction only where no NetworkPolicy isolates the pod.
/// x/a is isolated for ingress only (allowing y), so y reaches x/a while
/// the Baseline Deny keeps y from x/b and x/c, and x/a's egress to y is
/// still the Baseline's.
#[test]
fn baseline_applies_only_where_no_network_policy_isolates() {
    let baseline = cnp(
        "default",
        "Baseline",
        10,
        "  subject:
    namespaces: {matchLabels: {ns: x}}
  ingress: [{name: deny-from-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]
  egress: [{name: deny-to-y, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}]
",
    );
    let np = policy(
        "a-from-y",
        "x",
        "  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
",
    );
    check(
        &format!("{baseline}{np}"),
        &Expect::all(true)
            .set(any, is("x/a"), any_port, false)
            .set(in_ns("y"), in_ns("x"), any_port, false)
            .set(in_ns("y"), is("x/a"), any_port, true)
            .set(in_ns("x"), in_ns("y"), any_port, false),
        &[
            decided(
                "y/a",
                "x/b",
                Tcp,
                80,
                "cnp:Baseline/default/ingress rule 0: Deny",
            ),
            decided(
                "x/a",
                "y/b",
                Tcp,
                80,
                "cnp:Baseline/default/egress rule 0: Deny",
            ),
        ],
    );
}

/// CNPBaselineTierEgressNamedPort and -UDP: a `destinationNamedPort`
/// resolved on each destination pod, a UDP port range, and a subject of
/// two pods by a matchExpressions pod selector.
#[test]
fn baseline_egress_named_port_and_range() {
    check(
        &cnp(
            "egress-named",
            "Baseline",
            20,
            "  subject:
    pods:
      namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}
  egress:
  - name: allow-to-z-serve-81-udp
    action: Accept
    to: [{namespaces: {matchLabels: {ns: z}}}]
    protocols: [{destinationNamedPort: serve-81-udp}]
  - name: deny-to-z-udp-80-81
    action: Deny
    to: [{namespaces: {matchLabels: {ns: z}}}]
    protocols: [{udp: {destinationPort: {range: {start: 80, end: 81}}}}]
  - name: deny-to-x-serve-80-tcp
    action: Deny
    to: [{namespaces: {matchLabels: {ns: x}}}]
    protocols: [{destinationNamedPort: serve-80-tcp}]
",
        ),
        &Expect::all(true)
            .set(one_of(&["y/b", "y/c"]), in_ns("z"), port(Udp, 80), false)
            .set(one_of(&["y/b", "y/c"]), in_ns("x"), port(Tcp, 80), false),
        &[decided(
            "y/c",
            "z/a",
            Udp,
            81,
            "cnp:Baseline/egress-named/egress rule 0: Accept",
        )],
    );
}

/// CNPAdminTierIngressNamedPort: an Accept on a named port (resolved on
/// the subject pod) before a Deny of the rest from x; a name no container
/// port has matches nothing.
#[test]
fn admin_ingress_named_port() {
    check(
        &cnp(
            "ingress-named",
            "Admin",
            8,
            "  subject:
    namespaces: {matchLabels: {ns: z}}
  ingress:
  - name: allow-from-x-at-named-ports
    action: Accept
    from: [{namespaces: {matchLabels: {ns: x}}}]
    protocols: [{destinationNamedPort: serve-80-tcp}, {destinationNamedPort: web}]
  - {name: deny-from-x, action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}
",
        ),
        &Expect::all(true)
            .set(in_ns("x"), in_ns("z"), any_port, false)
            .set(in_ns("x"), in_ns("z"), port(Tcp, 80), true),
        &[decided(
            "x/b",
            "z/b",
            Tcp,
            80,
            "cnp:Admin/ingress-named/ingress rule 0: Accept",
        )],
    );
}

/// CNPAdminTierEgressNamedPort: egress on a named port to a namespace,
/// the rest to it denied; one pod's egress only.
#[test]
fn admin_egress_named_port() {
    check(
        &cnp(
            "egress-named",
            "Admin",
            9,
            "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: c}}}
  egress:
  - name: allow-to-y-serve-81-tcp
    action: Accept
    to: [{namespaces: {matchLabels: {ns: y}}}]
    protocols: [{destinationNamedPort: serve-81-tcp}]
  - {name: deny-to-y, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}
",
        ),
        &Expect::all(true)
            .set(is("x/c"), in_ns("y"), any_port, false)
            .set(is("x/c"), in_ns("y"), port(Tcp, 81), true),
        &[decided(
            "x/c",
            "y/a",
            Udp,
            81,
            "cnp:Admin/egress-named/egress rule 1: Deny",
        )],
    );
}

/// CNPAdminTierGress ("deny-gress ... at the specified ports"): Deny in
/// both directions with several protocols, a TCP range and single ports;
/// the subject is every namespace's pod b.
#[test]
fn admin_deny_ports_and_ranges_both_directions() {
    check(
        &cnp(
            "gress-ports",
            "Admin",
            11,
            "  subject:
    pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}
  ingress:
  - name: deny-from-z-tcp-80-81-udp-81
    action: Deny
    from: [{namespaces: {matchLabels: {ns: z}}}]
    protocols:
    - tcp: {destinationPort: {range: {start: 80, end: 81}}}
    - udp: {destinationPort: {number: 81}}
  egress:
  - name: deny-to-x-tcp-81-udp-80-81
    action: Deny
    to: [{namespaces: {matchLabels: {ns: x}}}]
    protocols:
    - tcp: {destinationPort: {number: 81}}
    - udp: {destinationPort: {range: {start: 80, end: 81}}}
",
        ),
        &Expect::all(true)
            .set(
                in_ns("z"),
                pod_named("b"),
                |p, n| p == Tcp || n == 81,
                false,
            )
            .set(
                pod_named("b"),
                in_ns("x"),
                |p, n| p == Udp || n == 81,
                false,
            ),
        &[
            decided(
                "z/a",
                "y/b",
                Tcp,
                80,
                "cnp:Admin/gress-ports/ingress rule 0: Deny",
            ),
            decided(
                "z/b",
                "x/c",
                Udp,
                80,
                "cnp:Admin/gress-ports/egress rule 0: Deny",
            ),
        ],
    );
}

/// CNPAdminTierEgressInlineCIDRPeers: Accept to y's pods, then Deny to
/// 0.0.0.0/0 and ::/0 — which covers pods as well as the outside; then the
/// policy updated with an Accept of two pods' IPs (/32 networks) first.
#[test]
fn admin_egress_networks() {
    let net = net();
    let with = |first: &str| {
        cnp(
            "inline-cidr-as-peers-example",
            "Admin",
            85,
            &format!(
                "  subject:
    pods: {{namespaceSelector: {{matchLabels: {{ns: x}}}}, podSelector: {{}}}}
  egress:
{first}  - name: allow-egress-to-y
    action: Accept
    to: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{}}}}}}]
  - name: deny-egress-to-internet
    action: Deny
    to: [{{networks: [0.0.0.0/0, '::/0']}}]
"
            ),
        )
    };
    let closed = Expect::all_with_outside(true)
        .set(in_ns("x"), any, any_port, false)
        .set(in_ns("x"), in_ns("y"), any_port, true);
    check_on(
        &net,
        &with(""),
        &closed,
        &[decided(
            "x/a",
            "world",
            Tcp,
            80,
            "cnp:Admin/inline-cidr-as-peers-example/egress rule 1: Deny",
        )],
    );
    let first = format!(
        "  - name: allow-egress-to-specific-pod-ips
    action: Accept
    to: [{{networks: [{}/32, {}/32]}}]
",
        pod_ip(2, 0),
        pod_ip(2, 1)
    );
    check_on(
        &net,
        &with(&first),
        &closed.set(in_ns("x"), one_of(&["z/a", "z/b"]), any_port, true),
        &[decided(
            "x/b",
            "z/b",
            Udp,
            81,
            "cnp:Admin/inline-cidr-as-peers-example/egress rule 0: Accept",
        )],
    );
}

/// CNPBaselineTierEgressInlineCIDRPeers: Baseline egress from y: Accept to
/// z's pods, Accept to the outside host's subnet, Deny to everything else
/// (0.0.0.0/0: pods, the outside and the world); y/a is isolated by its
/// own NetworkPolicy allowing 0.0.0.0/0, so the Baseline is not its. Then
/// z's namespace label changes and its pods no longer match the Accept.
#[test]
fn baseline_egress_networks_and_a_namespace_label_change() {
    let net = net();
    let baseline = cnp(
        "default",
        "Baseline",
        10,
        "  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}
  egress:
  - name: allow-egress-to-z
    action: Accept
    to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {}}}]
  - name: allow-egress-to-the-outside-subnet
    action: Accept
    to: [{networks: [192.168.250.0/24]}]
  - name: deny-egress-to-internet
    action: Deny
    to: [{networks: [0.0.0.0/0, '::/0']}]
",
    );
    let np = policy(
        "a-anywhere",
        "y",
        "  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
",
    );
    let open = Expect::all_with_outside(true)
        .set(one_of(&["y/b", "y/c"]), any, any_port, false)
        .set(one_of(&["y/b", "y/c"]), in_ns("z"), any_port, true)
        .set(one_of(&["y/b", "y/c"]), is("outside"), any_port, true);
    check_on(
        &net,
        &format!("{baseline}{np}"),
        &open,
        &[decided(
            "y/b",
            "world",
            Udp,
            80,
            "cnp:Baseline/default/egress rule 2: Deny",
        )],
    );
    let relabel = "---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z-denied, kubernetes.io/metadata.name: z}}
";
    check_on(
        &net,
        &format!("{baseline}{np}{relabel}"),
        &open.set(one_of(&["y/b", "y/c"]), in_ns("z"), any_port, false),
        &[decided(
            "y/c",
            "z/a",
            Tcp,
            80,
            "cnp:Baseline/default/egress rule 2: Deny",
        )],
    );
}

/// CNPAdminTierEgressNodePeers: to the nodes (node-2 is the outside host)
/// TCP 80 is accepted and UDP 80 passed (allowed: nothing below); then one
/// Deny rule with three peers — y's pods, the nodes, and a network beyond
/// the cluster — takes the rest of them. z and x's own pods stay reachable.
#[test]
fn admin_egress_node_peers() {
    check(
        &cnp(
            "node-and-cidr-as-peers-example",
            "Admin",
            75,
            "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {}}
  egress:
  - name: allow-egress-to-tcp-80-on-nodes
    action: Accept
    to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: pass-egress-to-udp-80-on-nodes
    action: Pass
    to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]
    protocols: [{udp: {destinationPort: {number: 80}}}]
  - name: deny-egress-to-y-and-nodes-and-internet
    action: Deny
    to:
    - pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}}
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [203.0.113.0/24]
",
        ),
        &Expect::all_with_outside(true)
            .set(in_ns("x"), in_ns("y"), any_port, false)
            .set(in_ns("x"), is("world"), any_port, false)
            .set(in_ns("x"), is("outside"), |_, n| n == 81, false),
        &[
            decided(
                "x/a",
                "outside",
                Tcp,
                80,
                "cnp:Admin/node-and-cidr-as-peers-example/egress rule 0: Accept",
            ),
            decided(
                "x/b",
                "outside",
                Udp,
                80,
                "cnp:Admin/node-and-cidr-as-peers-example/egress rule 1: Pass",
            ),
            decided(
                "x/c",
                "outside",
                Tcp,
                81,
                "cnp:Admin/node-and-cidr-as-peers-example/egress rule 2: Deny",
            ),
        ],
    );
}

/// CNPBaselineTierEgressNodePeers: nodes chosen by their labels — an
/// Accept to `zone: core` (node-1 only) does not cover node-2; a Baseline
/// egress Pass of TCP 81 to `zone In [edge]` skips the rest of the tier
/// (allowed), and the Deny of TCP after it takes z's TCP 80 to the outside
/// host; z/c is isolated by a NetworkPolicy allowing all its egress, which
/// the Baseline does not override.
#[test]
fn baseline_egress_node_peers_by_label() {
    let baseline = cnp(
        "nodes-by-label",
        "Baseline",
        30,
        "  subject:
    namespaces: {matchLabels: {ns: z}}
  egress:
  - {name: allow-to-core-nodes, action: Accept, to: [{nodes: {matchLabels: {zone: core}}}]}
  - name: pass-tcp-81-to-edge-nodes
    action: Pass
    to: [{nodes: {matchExpressions: [{key: zone, operator: In, values: [edge]}]}}]
    protocols: [{tcp: {destinationPort: {number: 81}}}]
  - name: deny-tcp-to-edge-nodes
    action: Deny
    to: [{nodes: {matchExpressions: [{key: zone, operator: In, values: [edge]}]}}]
    protocols: [{tcp: {}}]
",
    );
    let np = policy(
        "c-anywhere",
        "z",
        "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  egress: [{}]\n",
    );
    check(
        &format!("{baseline}{np}"),
        &Expect::all_with_outside(true).set(
            one_of(&["z/a", "z/b"]),
            is("outside"),
            port(Tcp, 80),
            false,
        ),
        &[
            decided(
                "z/a",
                "outside",
                Tcp,
                81,
                "cnp:Baseline/nodes-by-label/egress rule 1: Pass",
            ),
            decided(
                "z/b",
                "outside",
                Tcp,
                80,
                "cnp:Baseline/nodes-by-label/egress rule 2: Deny",
            ),
        ],
    );
}

/// The API's Accept: "No further egress ... rules will be processed but
/// any ingress rules at the destination do apply" — and the reverse. An
/// egress Accept from x does not get x into y, whose NetworkPolicy denies
/// all ingress; an ingress Accept into y from z gets z in, except z/c,
/// whose own egress is denied to y.
#[test]
fn both_directions_must_allow() {
    let from_x = cnp(
        "x-egress",
        "Admin",
        20,
        "  subject:
    namespaces: {matchLabels: {ns: x}}
  egress: [{name: to-y, action: Accept, to: [{namespaces: {matchLabels: {ns: y}}}]}]
",
    );
    let into_y = cnp(
        "y-ingress",
        "Admin",
        21,
        "  subject:
    namespaces: {matchLabels: {ns: y}}
  ingress: [{name: from-z, action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}]
",
    );
    let from_z_c = cnp(
        "z-c-egress",
        "Admin",
        22,
        "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}
  egress: [{name: not-to-y, action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}]
",
    );
    let np = policy(
        "deny-ingress",
        "y",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    );
    check(
        &format!("{from_x}{into_y}{from_z_c}{np}"),
        &Expect::all(true)
            .set(any, in_ns("y"), any_port, false)
            .set(in_ns("z"), in_ns("y"), any_port, true)
            .set(is("z/c"), in_ns("y"), any_port, false),
        &[
            decided(
                "z/c",
                "y/a",
                Tcp,
                80,
                "cnp:Admin/z-c-egress/egress rule 0: Deny",
            ),
            decided(
                "z/a",
                "y/a",
                Tcp,
                80,
                "cnp:Admin/y-ingress/ingress rule 0: Accept",
            ),
        ],
    );
}

/// The API's fail-closed rule for what cannot be read: an Accept whose
/// peer is `domainNames` (Setpoint does not resolve names) matches nothing,
/// a Pass whose only peer sets no field denies all traffic — to pods, the
/// outside host and the world alike.
#[test]
fn unreadable_rules_fail_closed() {
    let net = net();
    check_full(
        &net,
        &format!(
            "{}{}",
            node_2(),
            cnp(
                "fail-closed",
                "Admin",
                40,
                "  subject:
    pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: c}}}
  egress:
  - {name: allow-by-name, action: Accept, to: [{domainNames: [example.com]}]}
  - {name: pass-nothing-set, action: Pass, to: [{}], protocols: [{udp: {}}]}
",
            )
        ),
        &Expect::all_with_outside(true).set(is("x/c"), any, any_port, false),
        &["domainNames", "egress rule 1"],
        &[decided(
            "x/c",
            "world",
            Tcp,
            81,
            "cnp:Admin/fail-closed/egress rule 1: Deny",
        )],
    );
}
