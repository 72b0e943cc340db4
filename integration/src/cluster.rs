//! A one-node cluster made of network namespaces, routed like Calico:
//!
//! ```text
//!   pod netns (eth0 10.244.1.N/32, default via 169.254.1.1)
//!        │ veth
//!   node netns (route 10.244.1.N/32 dev vhN, proxy_arp, ip_forward) ── veth ── outside netns (192.168.250.2,
//!                                                                                          and 203.0.113.10 on lo)
//! ```
//!
//! Each pod, and the outside host on both its addresses, runs TCP and UDP
//! echo listeners in-process (sockets created in its namespace); probes
//! connect from inside a source namespace. The
//! node namespace gets Setpoint's rendered state via the real `ipset` and
//! `iptables-restore`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::anyhow;

use crate::Netns;

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 1);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);
/// A second address of the outside host, off the node's subnet: a host
/// somewhere beyond the cluster (TEST-NET-3), reached by the node's
/// default route.
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The destinations beyond the pods that [`NodeNet::probe_with_outside`]
/// adds to the matrix, by the name their column gets.
pub const OUTSIDE_DESTINATIONS: [(&str, Ipv4Addr); 2] =
    [("outside", OUTSIDE_IP), ("world", WORLD_IP)];

/// node-1 (at [`NODE_IP`], podCIDR 10.244.1.0/24) holding `pods`
/// (`namespace/name`, IP), each labelled `pod: <name>`, and their
/// namespaces (labelled `kubernetes.io/metadata.name`), as manifests.
pub fn one_node_manifests(pods: &[(String, Ipv4Addr)]) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.244.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: {NODE_IP}}}]}}
"
    );
    let namespaces: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|(id, _)| id.split_once('/').map(|(ns, _)| ns))
        .collect();
    for ns in namespaces {
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{kubernetes.io/metadata.name: {ns}}}}}
"
        ));
    }
    for (id, ip) in pods {
        let (ns, name) = id.split_once('/').unwrap_or_default();
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}
spec: {{nodeName: node-1, containers: [{{name: c}}]}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        ));
    }
    out
}

/// node-1's state as compute makes it of `manifests` with `config`;
/// panics when a manifest is skipped, an object has a problem or the
/// state is invalid (test support).
pub fn node_1_state(
    manifests: &str,
    config: setpoint_compute::ComputeConfig,
) -> setpoint_dataplane::NodeDataplane {
    let report = setpoint_source::parse_str(manifests, std::path::Path::new("node-1.yaml"));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let mut index = setpoint_compute::Index::new(config);
    for o in report.objects {
        index.upsert(o);
    }
    index.commit();
    let problems: Vec<String> = index.problems().map(|p| p.rejection.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    let state = index.node_state("node-1").expect("node-1 is a node");
    assert!(state.validate().is_empty(), "{:?}", state.validate());
    state
}

/// Runs `f` on a fresh thread that has entered the named network namespace;
/// sockets made there stay in that namespace wherever they are used later.
pub fn in_netns<T, F>(netns: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    Ok(setpoint_agent::in_netns(Some(netns), f)?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// The ports every pod listens on.
pub const PORTS: [(Proto, u16); 4] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Udp, 80),
    (Proto::Udp, 81),
];

pub struct PodNet {
    /// `namespace/name`.
    pub id: String,
    pub ip: Ipv4Addr,
    netns: Netns,
}

impl PodNet {
    pub fn netns_name(&self) -> String {
        self.netns.name().to_string()
    }
}

/// The node, its pods, and a host outside the cluster.
pub struct NodeNet {
    pub node: Netns,
    pub outside: Netns,
    pub pods: Vec<PodNet>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl NodeNet {
    /// Builds the topology for `pods` (`namespace/name`, IP) and starts
    /// their listeners.
    pub fn build(pods: &[(String, Ipv4Addr)]) -> anyhow::Result<NodeNet> {
        let node = Netns::create("node")?;
        let outside = Netns::create("ext")?;
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"], None)?;
        link(
            &node,
            "vext",
            &outside,
            &format!("{NODE_IP}/24"),
            &format!("{OUTSIDE_IP}/24"),
        )?;
        outside.exec(
            &["ip", "route", "add", "default", "via", &NODE_IP.to_string()],
            None,
        )?;
        outside.exec(
            &["ip", "addr", "add", &format!("{WORLD_IP}/32"), "dev", "lo"],
            None,
        )?;
        // Proxy ARP answers for 169.254.1.1 only if the node can route it.
        node.exec(
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &OUTSIDE_IP.to_string(),
            ],
            None,
        )?;
        let mut nets = Vec::new();
        for (i, (id, ip)) in pods.iter().enumerate() {
            let pod = Netns::create("pod")?;
            let host_if = format!("vh{i}");
            let tmp_if = format!("vp{i}-{}", std::process::id() % 100_000);
            node.exec(
                &[
                    "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &tmp_if,
                ],
                None,
            )?;
            node.exec(&["ip", "link", "set", &tmp_if, "netns", pod.name()], None)?;
            pod.exec(&["ip", "link", "set", &tmp_if, "name", "eth0"], None)?;
            pod.exec(
                &["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
                None,
            )?;
            pod.exec(&["ip", "link", "set", "eth0", "up"], None)?;
            pod.exec(
                &[
                    "ip",
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ],
                None,
            )?;
            pod.exec(
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                ],
                None,
            )?;
            node.exec(&["ip", "link", "set", &host_if, "up"], None)?;
            node.exec(
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{host_if}.proxy_arp=1"),
                ],
                None,
            )?;
            // Proxy ARP replies wait up to 0.8 s by default: longer than a probe.
            node.exec(
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.neigh.{host_if}.proxy_delay=0"),
                ],
                None,
            )?;
            node.exec(
                &["ip", "route", "add", &format!("{ip}/32"), "dev", &host_if],
                None,
            )?;
            nets.push(PodNet {
                id: id.clone(),
                ip: *ip,
                netns: pod,
            });
        }
        let mut net = NodeNet {
            node,
            outside,
            pods: nets,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        net.start_listeners()?;
        Ok(net)
    }

    fn start_listeners(&mut self) -> anyhow::Result<()> {
        let mut hosts: Vec<(String, Ipv4Addr)> = self
            .pods
            .iter()
            .map(|p| (p.netns.name().to_string(), p.ip))
            .collect();
        for (_, ip) in OUTSIDE_DESTINATIONS {
            hosts.push((self.outside.name().to_string(), ip));
        }
        for (netns, ip) in hosts {
            let sockets = in_netns(&netns, move || -> anyhow::Result<Vec<Socket>> {
                let mut out = Vec::new();
                for (proto, port) in PORTS {
                    let addr = SocketAddr::from((ip, port));
                    out.push(match proto {
                        Proto::Tcp => {
                            let listener = TcpListener::bind(addr)?;
                            // A deeper accept queue than std's default, so a
                            // listener thread that is briefly descheduled
                            // does not make the kernel drop SYNs.
                            // SAFETY: listen on a bound socket we own.
                            unsafe { libc::listen(listener.as_raw_fd(), 4096) };
                            Socket::Tcp(listener)
                        }
                        Proto::Udp => Socket::Udp(UdpSocket::bind(addr)?),
                    });
                }
                Ok(out)
            })??;
            for socket in sockets {
                let stop = self.stop.clone();
                self.servers
                    .push(std::thread::spawn(move || serve(socket, &stop)));
            }
        }
        Ok(())
    }

    /// Runs a command inside a pod's namespace.
    pub fn pod_exec(&self, pod: &PodNet, argv: &[&str]) -> anyhow::Result<String> {
        pod.netns.exec(argv, None)
    }

    /// Replaces whatever the node namespace holds by `ipset` and
    /// `iptables` texts (as `setpoint-controlplane render` prints them).
    pub fn apply(&self, ipset: &str, iptables: &str) -> anyhow::Result<()> {
        // Without --noflush the named tables are replaced whole: the node
        // namespace belongs to the test.
        let empty = "*filter\nCOMMIT\n*nat\nCOMMIT\n";
        self.node.exec(&["iptables-restore", "-w"], Some(empty))?;
        self.node.exec(&["ipset", "destroy"], None)?;
        self.node.exec(&["ipset", "restore"], Some(ipset))?;
        self.node
            .exec(&["iptables-restore", "-w"], Some(iptables))?;
        Ok(())
    }

    /// Probes every (source, destination pod, port) at once; sources are
    /// the pods and `outside`. Returns reachability by (source, dest, port).
    pub fn probe_all(&self) -> anyhow::Result<Matrix> {
        self.probe(false)
    }

    /// [`NodeNet::probe_all`], and from every pod to the outside host's
    /// addresses too: destinations `outside` ([`OUTSIDE_IP`]) and `world`
    /// ([`WORLD_IP`]).
    pub fn probe_with_outside(&self) -> anyhow::Result<Matrix> {
        self.probe(true)
    }

    fn probe(&self, to_outside: bool) -> anyhow::Result<Matrix> {
        let mut sources: Vec<(String, String)> = self
            .pods
            .iter()
            .map(|p| (p.id.clone(), p.netns.name().to_string()))
            .collect();
        sources.push(("outside".to_string(), self.outside.name().to_string()));
        let mut targets: Vec<(String, Ipv4Addr)> =
            self.pods.iter().map(|p| (p.id.clone(), p.ip)).collect();
        if to_outside {
            targets.extend(OUTSIDE_DESTINATIONS.map(|(id, ip)| (id.to_string(), ip)));
        }
        let outside_ids = OUTSIDE_DESTINATIONS.map(|(id, _)| id);
        let mut handles = Vec::new();
        for (src, netns) in &sources {
            for (dst_id, ip) in &targets {
                // The outside host is not probed from itself.
                if src == "outside" && outside_ids.contains(&dst_id.as_str()) {
                    continue;
                }
                for (proto, port) in PORTS {
                    let (src, netns, dst_id, ip) =
                        (src.clone(), netns.clone(), dst_id.clone(), *ip);
                    handles.push(std::thread::spawn(move || {
                        let ok =
                            in_netns(&netns, move || probe(proto, SocketAddr::from((ip, port))));
                        ((src, dst_id, proto, port), ok)
                    }));
                }
            }
        }
        let mut matrix = Matrix::default();
        for h in handles {
            let (key, ok) = h.join().map_err(|_| anyhow!("probe thread panicked"))?;
            matrix.0.insert(key, ok?);
        }
        Ok(matrix)
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
    }
}

fn link(a: &Netns, a_if: &str, b: &Netns, a_addr: &str, b_addr: &str) -> anyhow::Result<()> {
    let b_if = format!("{a_if}-p");
    a.exec(
        &[
            "ip", "link", "add", a_if, "type", "veth", "peer", "name", &b_if,
        ],
        None,
    )?;
    a.exec(&["ip", "link", "set", &b_if, "netns", b.name()], None)?;
    a.exec(&["ip", "addr", "add", a_addr, "dev", a_if], None)?;
    a.exec(&["ip", "link", "set", a_if, "up"], None)?;
    b.exec(&["ip", "addr", "add", b_addr, "dev", &b_if], None)?;
    b.exec(&["ip", "link", "set", &b_if, "up"], None)?;
    Ok(())
}

/// Closes with a reset rather than a FIN, so that closed connections leave
/// no TIME_WAIT behind (probes and benchmarks open many).
pub fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger
    // value; failure only means a normal close.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn serve(socket: Socket, stop: &AtomicBool) {
    match socket {
        Socket::Tcp(listener) => {
            if listener.set_nonblocking(true).is_err() {
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => reset(conn),
                    // Wait for the next connection, waking now and then to
                    // see the stop flag; sleeping instead would let the
                    // backlog fill and new SYNs be dropped.
                    Err(_) => {
                        let mut fd = libc::pollfd {
                            fd: listener.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd for an open socket.
                        unsafe { libc::poll(&mut fd, 1, 50) };
                    }
                }
            }
        }
        Socket::Udp(udp) => {
            if udp
                .set_read_timeout(Some(Duration::from_millis(50)))
                .is_err()
            {
                return;
            }
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_millis(600);

/// Whether a TCP handshake with `target` completes. The listeners reset
/// every connection at once, so a reset seen before `connect` returns
/// still means the handshake went through.
pub fn connected(target: &SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(target, timeout) {
        Ok(conn) => {
            reset(conn);
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn probe(proto: Proto, dst: SocketAddr) -> bool {
    match proto {
        Proto::Tcp => connected(&dst, PROBE_TIMEOUT),
        Proto::Udp => {
            let Ok(udp) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            if udp.set_read_timeout(Some(PROBE_TIMEOUT)).is_err()
                || udp.send_to(b"ping", dst).is_err()
            {
                return false;
            }
            let mut buf = [0u8; 16];
            matches!(udp.recv_from(&mut buf), Ok((4, from)) if from == dst)
        }
    }
}

/// Observed or expected reachability: (source, destination pod or outside
/// address, protocol, port) → allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matrix(pub BTreeMap<(String, String, Proto, u16), bool>);

impl Matrix {
    /// A table per (protocol, port): rows are sources, columns destinations;
    /// `.` reachable, `X` blocked.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let dsts: Vec<&String> = {
            let mut d: Vec<&String> = self.0.keys().map(|k| &k.1).collect();
            d.sort();
            d.dedup();
            d
        };
        let srcs: Vec<&String> = {
            let mut s: Vec<&String> = self.0.keys().map(|k| &k.0).collect();
            s.sort();
            s.dedup();
            s
        };
        for (proto, port) in PORTS {
            out.push_str(&format!("{proto}/{port}\n{:>9}", ""));
            for d in &dsts {
                out.push_str(&format!(" {:>5}", short(d)));
            }
            out.push('\n');
            for s in &srcs {
                out.push_str(&format!("{:>9}", short(s)));
                for d in &dsts {
                    let cell = match self.0.get(&((*s).clone(), (*d).clone(), proto, port)) {
                        Some(true) => ".",
                        Some(false) => "X",
                        None => "?",
                    };
                    out.push_str(&format!(" {cell:>5}"));
                }
                out.push('\n');
            }
        }
        out
    }
}

fn short(id: &str) -> String {
    id.to_string()
}
