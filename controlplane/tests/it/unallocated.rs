//! An unallocated service address on a real kernel: `render` of a node
//! whose service CIDRs come from `--service-cidr` and a ServiceCIDR
//! object, restored into a network namespace standing for the node, with
//! a pod namespace behind a veth and the route for the service CIDRs
//! pointing off the node (to a namespace that drops everything). Before
//! the state, a connect to an unallocated address hangs; after, it is
//! refused at once, from the pod (FORWARD) and from the node (OUTPUT),
//! while a held address and an address outside the CIDRs are not touched
//! by the rule. The host has iptables and ipset but no IPVS: the held
//! address is bound on the node's loopback, as the agent binds it on the
//! service interface.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.31.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.5], nodeName: node-a}]
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
"#;

fn run(argv: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// Runs `argv`, which must succeed; its stdout.
fn ok(argv: &[&str], stdin: Option<&str>) -> String {
    let out = run(argv, stdin);
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("sp-unalloc-{tag}-{}", std::process::id());
        ok(&["ip", "netns", "add", &name], None);
        let ns = Ns(name);
        ns.ok(&["ip", "link", "set", "lo", "up"], None);
        ns
    }

    fn ok(&self, argv: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(argv);
        ok(&full, stdin)
    }

    /// A TCP connect to `ip:port` from this namespace, given `limit`:
    /// `Some(elapsed)` when refused, `None` when it did not finish.
    fn connect(&self, ip: &str, port: u16, limit: Duration) -> Option<Duration> {
        let script = format!("echo > /dev/tcp/{ip}/{port}");
        let limit = format!("{}", limit.as_secs_f64());
        let started = Instant::now();
        let out = run(
            &[
                "ip", "netns", "exec", &self.0, "timeout", &limit, "bash", "-c", &script,
            ],
            None,
        );
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(124) => None,
            _ if stderr.contains("Connection refused") => Some(elapsed),
            other => panic!("connect to {ip}:{port} ended with {other:?}: {stderr}"),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0], None);
    }
}

fn render(dir: &Path, format: &str) -> String {
    ok(
        &[
            env!("CARGO_BIN_EXE_setpoint-controlplane"),
            "render",
            "--manifests",
            dir.to_str().expect("utf-8 path"),
            "--node",
            "node-a",
            "--service-cidr",
            "10.100.0.0/16",
            "--format",
            format,
        ],
        None,
    )
}

/// Packets the unallocated-address rules of the node's filter
/// `SP-SERVICES` have matched.
fn rejected(node: &Ns) -> u64 {
    node.ok(
        &["iptables", "-w", "-L", "SP-SERVICES", "-v", "-n", "-x"],
        None,
    )
    .lines()
    .filter(|l| l.contains("unallocated service address"))
    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
    .sum()
}

#[test]
fn a_connect_to_an_unallocated_service_address_is_refused_at_once() {
    assert_eq!(
        ok(&["id", "-u"], None).trim(),
        "0",
        "this test creates network namespaces and needs root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.yaml"), MANIFESTS).expect("manifests");
    let ipset = render(dir.path(), "ipset");
    let iptables = render(dir.path(), "iptables");
    assert!(
        ipset.contains("add SP-SERVICE-CIDR 10.96.0.0/16")
            && ipset.contains("add SP-SERVICE-CIDR 10.100.0.0/16"),
        "the object's and the flag's CIDRs:\n{ipset}"
    );

    // pod (10.244.1.9) ── node (10.244.1.1 | 172.31.0.1) ── away (172.31.0.2)
    let pod = Ns::new("pod");
    let node = Ns::new("node");
    let away = Ns::new("away");
    node.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"], None);
    node.ok(
        &[
            "ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
        ],
        None,
    );
    node.ok(
        &[
            "ip", "link", "add", "vaway", "type", "veth", "peer", "name", "eth0", "netns", &away.0,
        ],
        None,
    );
    node.ok(&["ip", "addr", "add", "10.244.1.1/24", "dev", "vpod"], None);
    node.ok(
        &["ip", "addr", "add", "172.31.0.1/30", "dev", "vaway"],
        None,
    );
    node.ok(&["ip", "link", "set", "vpod", "up"], None);
    node.ok(&["ip", "link", "set", "vaway", "up"], None);
    pod.ok(&["ip", "addr", "add", "10.244.1.9/24", "dev", "eth0"], None);
    pod.ok(&["ip", "link", "set", "eth0", "up"], None);
    pod.ok(
        &["ip", "route", "add", "default", "via", "10.244.1.1"],
        None,
    );
    away.ok(&["ip", "addr", "add", "172.31.0.2/30", "dev", "eth0"], None);
    away.ok(&["ip", "link", "set", "eth0", "up"], None);
    // The service CIDRs and the rest are routed off the node; `away` does
    // not forward, so what it gets is dropped without a word.
    for net in ["10.96.0.0/12", "10.100.0.0/16"] {
        node.ok(&["ip", "route", "add", net, "via", "172.31.0.2"], None);
    }
    // The held ClusterIP is the node's own, as on the service interface.
    node.ok(&["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"], None);

    let short = Duration::from_millis(1500);
    assert_eq!(
        pod.connect("10.96.0.99", 80, short),
        None,
        "without Setpoint's state the connect hangs: routed off the node"
    );

    node.ok(&["ipset", "restore"], Some(&ipset));
    node.ok(&["iptables-restore", "-w"], Some(&iptables));
    assert_eq!(rejected(&node), 0);

    // Refused at once (well under the 1 s an ICMP error would take to end
    // a connect: see layout's SERVICE_CIDR_LINES), from a pod and from the
    // node, in the object's CIDR and in the flag's.
    let at_once = Duration::from_millis(500);
    let cases = [
        (&pod, "10.96.0.99", "a pod, the ServiceCIDR object's range"),
        (&pod, "10.100.0.7", "a pod, --service-cidr's range"),
        (&node, "10.96.0.98", "the node itself"),
    ];
    for (i, (from, ip, what)) in cases.iter().enumerate() {
        let refused = from.connect(ip, 80, short);
        assert!(
            refused.is_some_and(|t| t < at_once),
            "{what}: {ip} refused after {refused:?}"
        );
        assert_eq!(rejected(&node), i as u64 + 1, "{what}: by Setpoint's rule");
    }
    let before = rejected(&node);
    // The held address: the node's own socket layer answers (no listener
    // on it here; IPVS would serve it), not the rule.
    assert!(pod.connect("10.96.0.10", 80, short).is_some());
    // Outside the service CIDRs: routed off the node as before.
    assert_eq!(pod.connect("10.98.0.1", 80, short), None);
    assert_eq!(rejected(&node), before, "neither is the rule's");
}
