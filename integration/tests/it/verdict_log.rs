//! Policy verdicts on real packets: the state compiled with verdict logging
//! on, applied in a node namespace; the agent's verdict log reads NFLOG in
//! that namespace and counts each verdict under the rule `explain` names.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use setpoint_agent::apply::{Applier, Base};
use setpoint_agent::kernel_model::ModelServices;
use setpoint_agent::metrics::AgentMetrics;
use setpoint_agent::target::Target;
use setpoint_agent::verdicts::VerdictLog;
use setpoint_compute::ComputeConfig;
use setpoint_compute::layout::VerdictLog as VerdictLogConfig;
use setpoint_dataplane::NodeDataplane;
use setpoint_dataplane::explain::{Origin, Packet, explain};
use setpoint_dataplane::model::Protocol;
use setpoint_integration::cluster::{
    NodeNet, connected, in_netns, node_1_state, one_node_manifests,
};
use setpoint_integration::require_root_and_tools;

const RATE: u32 = 5;
const BURST: u32 = 9;

fn pods() -> Vec<(String, Ipv4Addr)> {
    vec![
        ("x/a".into(), Ipv4Addr::new(10, 244, 1, 10)),
        ("x/b".into(), Ipv4Addr::new(10, 244, 1, 11)),
        ("y/a".into(), Ipv4Addr::new(10, 244, 1, 12)),
    ]
}

fn manifests() -> String {
    let mut out = one_node_manifests(&pods());
    // y's pods refuse port 81 from x (Admin, not annotated: only the Deny
    // is logged); x's pods accept y in Baseline (annotated: the Accept is
    // logged too); x/b is isolated by a NetworkPolicy that allows nothing.
    out.push_str(
        "---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  ingress:
  - name: no-81-from-x
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}]
    protocols: [{tcp: {destinationPort: {number: 81}}}, {udp: {destinationPort: {number: 81}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: floor
  annotations: {setpoint.io/log-accepted: 'true'}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - {name: from-y, action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-b, namespace: x}
spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}
",
    );
    out
}

fn state() -> NodeDataplane {
    node_1_state(
        &manifests(),
        ComputeConfig {
            verdict_log: Some(VerdictLogConfig {
                group: 1800,
                per_second: RATE,
                burst: BURST,
            }),
            ..ComputeConfig::default()
        },
    )
}

fn ip_of(id: &str) -> Ipv4Addr {
    pods()
        .into_iter()
        .find(|(p, _)| p == id)
        .map(|(_, ip)| ip)
        .expect("a pod of the test")
}

/// The comment of the rule explain says decided `from` → `to`:`port`.
fn explained_rule(state: &NodeDataplane, from: &str, to: &str, port: u16) -> String {
    let e = explain(
        state,
        &Packet {
            protocol: Protocol::Tcp,
            src: ip_of(from).into(),
            src_port: Some(40000),
            dst: ip_of(to).into(),
            dst_port: port,
            from: Origin::Pod,
        },
    )
    .expect("explains");
    let (_, named) = e
        .reason
        .split_once(" (")
        .unwrap_or_else(|| panic!("no rule named: {}", e.reason));
    named
        .trim_start_matches("policy: ")
        .trim_end_matches(')')
        .to_string()
}

fn tcp_from(net: &NodeNet, from: &str, to: &str, port: u16) -> bool {
    let pod = net.pods.iter().find(|p| p.id == from).expect("pod");
    let target = SocketAddr::from((ip_of(to), port));
    in_netns(&pod.netns_name(), move || {
        connected(&target, Duration::from_millis(700))
    })
    .expect("in the pod's namespace")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn denied_and_annotated_accepted_connections_are_counted_under_the_rule_explain_names() {
    require_root_and_tools();
    let net = NodeNet::build(&pods()).expect("namespaces build");
    let state = state();
    // Applied as the agent applies (read back and verified, the NFLOG
    // rules as iptables-save prints them), then once more from the kernel:
    // nothing to change.
    let mut applier = Applier::new(
        Target {
            netns: Some(net.node.name().to_string()),
        },
        Box::new(ModelServices::default()),
    );
    applier
        .apply(Base::Kernel, &state)
        .expect("the agent applies the state");
    let (again, _) = applier
        .apply(Base::Kernel, &state)
        .expect("the agent applies the state again");
    assert_eq!(again.operations, 0, "{:?}", again.changes);
    let metrics = AgentMetrics::new();
    let verdicts = &metrics.verdicts;
    let mut log = VerdictLog::new(Some(net.node.name().to_string()), verdicts.clone());
    log.applied(&state);
    assert_eq!(log.groups().into_iter().collect::<Vec<_>>(), vec![1800]);
    wait_for("the NFLOG group bound", || verdicts.groups_read.get() == 1);

    let deny = explained_rule(&state, "x/a", "y/a", 81);
    let accept = explained_rule(&state, "y/a", "x/a", 80);
    let np_drop = explained_rule(&state, "y/a", "x/b", 80);
    assert_eq!(deny, "cnp:Admin/guard/ingress rule 0: Deny");
    assert_eq!(accept, "cnp:Baseline/floor/ingress rule 0: Accept");
    assert_eq!(np_drop, "np:x/ingress: no NetworkPolicy rule allows");

    // Not logged: allowed by nothing that logs (guard's subject, port 80).
    assert!(tcp_from(&net, "x/a", "y/a", 80));
    assert!(!tcp_from(&net, "x/a", "y/a", 81));
    assert!(tcp_from(&net, "y/a", "x/a", 80));
    assert!(!tcp_from(&net, "y/a", "x/b", 80));
    wait_for("the three verdicts counted", || {
        verdicts.count(&deny, "drop") >= 1
            && verdicts.count(&accept, "accept") >= 1
            && verdicts.count(&np_drop, "drop") >= 1
    });
    assert_eq!(verdicts.unmatched.get(), 0);
    let exported = metrics.encode();
    assert!(
        exported.contains(
            "setpoint_agent_policy_verdicts_total{policy=\"cnp:Admin/guard\",rule=\"ingress rule 0: Deny\",verdict=\"drop\"}"
        ),
        "{exported}"
    );

    // A flood is rate-limited in the kernel: at most the burst and the
    // rate's worth reach the agent.
    let before = verdicts.count(&deny, "drop");
    let x_a = net.pods.iter().find(|p| p.id == "x/a").expect("pod");
    let target = SocketAddr::from((ip_of("y/a"), 81));
    let started = Instant::now();
    let sent = in_netns(&x_a.netns_name(), move || -> std::io::Result<u32> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let mut sent = 0;
        for port_of_sender in 0..2000u32 {
            // A new source port each time: every datagram is a new flow.
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(&port_of_sender.to_be_bytes(), target)?;
            sent += 1;
        }
        drop(socket);
        Ok(sent)
    })
    .expect("in the pod's namespace")
    .expect("datagrams sent");
    wait_for("the flood counted", || {
        verdicts.count(&deny, "drop") > before
    });
    // Stragglers: the kernel sends a batch within 100 ms.
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = started.elapsed().as_secs_f64();
    let logged = verdicts.count(&deny, "drop") - before;
    let allowed = f64::from(BURST) + f64::from(RATE) * elapsed + 2.0;
    assert!(
        logged >= 1,
        "none of {sent} datagrams logged:\n{}",
        net.node
            .exec(&["iptables-save", "-c"], None)
            .unwrap_or_default()
    );
    assert!(
        (logged as f64) <= allowed,
        "{logged} of {sent} datagrams logged in {elapsed:.2} s; the limit allows {allowed:.0}"
    );

    // A state without log rules stops the reader.
    log.applied(&NodeDataplane::new());
    assert!(log.groups().is_empty());
    wait_for("the reader gone", || verdicts.groups_read.get() == 0);
}
