//! The cluster inside the VM, read from the `cluster/` manifests (Nodes
//! with their zone, InternalIPs and podCIDRs; Pods with their node, IPs and
//! container ports) and built from network namespaces:
//!
//! ```text
//!  client (192.168.100.2) ─┐                 ┌─ eth0 node-a (10.0.1.2) ─ pN ─ eth0 pod-…
//!  client2 (192.168.101.2) ┴─ router (.1 on ─┼─ eth0 node-b (10.0.2.2) ─ …
//!                              each link)    └─ eth0 node-c (10.0.3.2) ─ …
//! ```
//!
//! Each node's link to the router is its own /24 (/64); the router routes
//! each node's pod CIDRs via that node; nodes route everything else via the
//! router. Pods are routed as Calico does: the pod's /32 (/128) on a veth,
//! a default route via 169.254.1.1 (fe80::1) that the node answers for.
//! The node also holds its own address on each pod link, so that a
//! masquerade towards a local pod takes the node's address as source.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use setpoint_compute::ClusterObject;

use super::scenario::Proto;

pub const ROUTER: &str = "router";
/// Off-cluster clients behind the router: name, IPv4, IPv6.
pub const CLIENTS: &[(&str, Ipv4Addr, Ipv6Addr)] = &[
    (
        "client",
        Ipv4Addr::new(192, 168, 100, 2),
        Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2),
    ),
    (
        "client2",
        Ipv4Addr::new(192, 168, 101, 2),
        Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 2),
    ),
];

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub zone: String,
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
    pub pod_cidrs: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub ports: Vec<(Proto, u16)>,
}

impl PodInfo {
    pub fn netns(&self) -> String {
        format!("pod-{}", self.name)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{command}: {why}")]
    Command { command: String, why: String },
}

impl Topology {
    pub fn from_objects(objects: &[ClusterObject]) -> Result<Topology, TopologyError> {
        let bad = |s: String| TopologyError::Invalid(s);
        let mut t = Topology::default();
        for o in objects {
            match o {
                ClusterObject::Node(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let zone = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("topology.kubernetes.io/zone"))
                        .cloned()
                        .unwrap_or_default();
                    let mut v4 = None;
                    let mut v6 = None;
                    for a in n
                        .status
                        .as_ref()
                        .and_then(|s| s.addresses.as_ref())
                        .into_iter()
                        .flatten()
                    {
                        if a.type_ != "InternalIP" {
                            continue;
                        }
                        match a.address.parse::<IpAddr>() {
                            Ok(IpAddr::V4(x)) if v4.is_none() => v4 = Some(x),
                            Ok(IpAddr::V6(x)) if v6.is_none() => v6 = Some(x),
                            _ => {}
                        }
                    }
                    let v4 =
                        v4.ok_or_else(|| bad(format!("node {name} has no IPv4 InternalIP")))?;
                    let pod_cidrs = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_cidrs.clone())
                        .unwrap_or_default();
                    t.nodes.push(NodeInfo {
                        name,
                        zone,
                        v4,
                        v6,
                        pod_cidrs,
                    });
                }
                ClusterObject::Pod(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let spec = p.spec.as_ref();
                    let node = spec
                        .and_then(|s| s.node_name.clone())
                        .ok_or_else(|| bad(format!("pod {name} has no spec.nodeName")))?;
                    let mut v4 = None;
                    let mut v6 = None;
                    for ip in p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ips.as_ref())
                        .into_iter()
                        .flatten()
                    {
                        match ip.ip.parse::<IpAddr>() {
                            Ok(IpAddr::V4(x)) => v4 = Some(x),
                            Ok(IpAddr::V6(x)) => v6 = Some(x),
                            Err(_) => return Err(bad(format!("pod {name}: bad IP {}", ip.ip))),
                        }
                    }
                    let mut ports = Vec::new();
                    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
                        for port in c.ports.iter().flatten() {
                            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                                "TCP" => Proto::Tcp,
                                "UDP" => Proto::Udp,
                                "SCTP" => Proto::Sctp,
                                other => {
                                    return Err(bad(format!("pod {name}: protocol {other}")));
                                }
                            };
                            let number = u16::try_from(port.container_port).map_err(|_| {
                                bad(format!("pod {name}: port {}", port.container_port))
                            })?;
                            ports.push((proto, number));
                        }
                    }
                    t.pods.push(PodInfo {
                        name,
                        node,
                        v4,
                        v6,
                        ports,
                    });
                }
                _ => {}
            }
        }
        if t.nodes.is_empty() {
            return Err(bad("the cluster manifests define no Node".into()));
        }
        for p in &t.pods {
            if t.node(&p.node).is_none() {
                return Err(bad(format!("pod {} is on unknown node {}", p.name, p.node)));
            }
        }
        Ok(t)
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The pod holding `ip`.
    pub fn pod_of(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.v4.map(IpAddr::V4) == Some(ip) || p.v6.map(IpAddr::V6) == Some(ip))
    }

    /// The node holding `ip` as its InternalIP.
    pub fn node_of(&self, ip: IpAddr) -> Option<&NodeInfo> {
        self.nodes
            .iter()
            .find(|n| IpAddr::V4(n.v4) == ip || n.v6.map(IpAddr::V6) == Some(ip))
    }

    /// Creates every namespace, link, address and route: one `ip -batch`
    /// for the root namespace's part, then one per namespace (under one
    /// emulated CPU each `ip` process costs a noticeable fraction of a
    /// second).
    pub fn build(&self) -> Result<(), TopologyError> {
        let mut spaces = vec![ROUTER.to_string()];
        spaces.extend(CLIENTS.iter().map(|c| c.0.to_string()));
        spaces.extend(self.nodes.iter().map(|n| n.name.clone()));
        spaces.extend(self.pods.iter().map(|p| p.netns()));
        let mut root = Batch::default();
        for ns in &spaces {
            root.add(format!("netns add {ns}"));
        }
        batch(None, &root)?;
        let mut root = Batch::default();
        let mut inside: BTreeMap<String, Batch> = BTreeMap::new();
        let mut sysctls: Vec<(String, String)> = Vec::new();
        for ns in &spaces {
            inside
                .entry(ns.clone())
                .or_default()
                .add("link set lo up".into());
        }
        let mut veth = |a: &str, a_ns: &str, b: &str, b_ns: &str| {
            root.add(format!(
                "link add {a} netns {a_ns} type veth peer name {b} netns {b_ns}"
            ));
        };
        for (i, (name, _, _)) in CLIENTS.iter().enumerate() {
            veth(&format!("c{i}"), ROUTER, "eth0", name);
        }
        for (i, n) in self.nodes.iter().enumerate() {
            veth(&format!("n{i}"), ROUTER, "eth0", &n.name);
        }
        for (i, p) in self.pods.iter().enumerate() {
            veth(&format!("p{i}"), &p.node, "eth0", &p.netns());
        }
        let mut at = |ns: &str, line: String| inside.entry(ns.to_string()).or_default().add(line);
        sysctls.push((ROUTER.into(), String::new()));
        for (i, (name, v4, v6)) in CLIENTS.iter().enumerate() {
            let r = format!("c{i}");
            let (r4, r6) = (router_side_v4(*v4), router_side_v6(*v6));
            at(ROUTER, format!("link set {r} up"));
            at(ROUTER, format!("addr add {r4}/24 dev {r}"));
            at(ROUTER, format!("addr add {r6}/64 dev {r} nodad"));
            at(name, "link set eth0 up".into());
            at(name, format!("addr add {v4}/24 dev eth0"));
            at(name, format!("addr add {v6}/64 dev eth0 nodad"));
            at(name, format!("route add default via {r4}"));
            at(name, format!("route add default via {r6}"));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let r = format!("n{i}");
            sysctls.push((n.name.clone(), String::new()));
            let r4 = router_side_v4(n.v4);
            at(ROUTER, format!("link set {r} up"));
            at(ROUTER, format!("addr add {r4}/24 dev {r}"));
            at(&n.name, "link set eth0 up".into());
            at(&n.name, format!("addr add {}/24 dev eth0", n.v4));
            at(&n.name, format!("route add default via {r4}"));
            if let Some(v6) = n.v6 {
                let r6 = router_side_v6(v6);
                at(ROUTER, format!("addr add {r6}/64 dev {r} nodad"));
                at(&n.name, format!("addr add {v6}/64 dev eth0 nodad"));
                at(&n.name, format!("route add default via {r6}"));
            }
            for cidr in &n.pod_cidrs {
                let via = if cidr.contains(':') {
                    n.v6.map(|a| a.to_string())
                } else {
                    Some(n.v4.to_string())
                };
                if let Some(via) = via {
                    at(ROUTER, format!("route add {cidr} via {via}"));
                }
            }
        }
        for (i, p) in self.pods.iter().enumerate() {
            let node = self
                .node(&p.node)
                .ok_or_else(|| TopologyError::Invalid(format!("no node {}", p.node)))?;
            let ns = p.netns();
            let host = format!("p{i}");
            sysctls.push((node.name.clone(), host.clone()));
            at(&node.name, format!("link set {host} up"));
            at(
                &node.name,
                format!("addr add {}/32 dev {host} noprefixroute", node.v4),
            );
            at(&node.name, format!("addr add fe80::1/64 dev {host} nodad"));
            at(&ns, "link set eth0 up".into());
            if let Some(v4) = p.v4 {
                at(&ns, format!("addr add {v4}/32 dev eth0"));
                at(&ns, "route add 169.254.1.1 dev eth0 scope link".into());
                at(&ns, "route add default via 169.254.1.1 dev eth0".into());
                at(&node.name, format!("route add {v4}/32 dev {host}"));
            }
            if let Some(v6) = p.v6 {
                at(&ns, format!("addr add {v6}/128 dev eth0 nodad"));
                at(&ns, "route add default via fe80::1 dev eth0".into());
                at(&node.name, format!("route add {v6}/128 dev {host}"));
            }
        }
        batch(None, &root)?;
        // Forwarding (and proxy ARP on pod links) before addresses and
        // routes: a route via 169.254.1.1 needs the node to answer for it.
        for (ns, dev) in &sysctls {
            if dev.is_empty() {
                forwarding(ns)?;
            } else {
                write_sysctl(ns, &format!("net/ipv4/conf/{dev}/proxy_arp"), "1")?;
            }
        }
        // Nodes before pods: a pod's default route needs its link up on both ends.
        for ns in &spaces {
            if let Some(b) = inside.get(ns) {
                batch(Some(ns), b)?;
            }
        }
        Ok(())
    }

    /// Sends `dst` from the router through `node` (for external and
    /// load-balancer addresses, which no interface holds).
    pub fn route_via(&self, dst: IpAddr, node: &NodeInfo) -> Result<(), TopologyError> {
        let (prefix, via) = match dst {
            IpAddr::V4(_) => (32, Some(IpAddr::V4(node.v4))),
            IpAddr::V6(_) => (128, node.v6.map(IpAddr::V6)),
        };
        let via = via.ok_or_else(|| {
            TopologyError::Invalid(format!(
                "node {} has no address of {dst}'s family",
                node.name
            ))
        })?;
        ip(&[
            "-n",
            ROUTER,
            "route",
            "replace",
            &format!("{dst}/{prefix}"),
            "via",
            &via.to_string(),
        ])
    }
}

/// The router's end of a /24 (/64) link: the network's first host.
fn router_side_v4(a: Ipv4Addr) -> Ipv4Addr {
    let o = a.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

fn router_side_v6(a: Ipv6Addr) -> Ipv6Addr {
    let s = a.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1)
}

fn forwarding(ns: &str) -> Result<(), TopologyError> {
    write_sysctl(ns, "net/ipv4/ip_forward", "1")?;
    write_sysctl(ns, "net/ipv6/conf/all/forwarding", "1")
}

/// Writes `/proc/sys/<key>` as seen from inside `ns`.
pub fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<(), TopologyError> {
    let path = format!("/proc/sys/{key}");
    let result = setpoint_agent::in_netns(Some(ns), || std::fs::write(&path, value));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) | Err(e) => Err(TopologyError::Command {
            command: format!("sysctl {key}={value} in {ns}"),
            why: e.to_string(),
        }),
    }
}

/// Lines for `ip -batch`.
#[derive(Default)]
struct Batch(String);

impl Batch {
    fn add(&mut self, line: String) {
        self.0.push_str(&line);
        self.0.push('\n');
    }
}

/// Runs `lines` with one `ip [-n NS] -batch -`.
fn batch(ns: Option<&str>, lines: &Batch) -> Result<(), TopologyError> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let command = format!(
        "ip {}-batch",
        ns.map(|n| format!("-n {n} ")).unwrap_or_default()
    );
    let fail = |why: String| TopologyError::Command {
        command: command.clone(),
        why,
    };
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.0.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.0
        )))
    }
}

pub fn ip(args: &[&str]) -> Result<(), TopologyError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TopologyError::Command {
            command: command.clone(),
            why: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TopologyError::Command {
            command,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
