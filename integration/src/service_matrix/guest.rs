//! The guest side: builds the topology, starts the pods' responders, the
//! real `setpoint-controlplane serve` and one real `setpoint-agent` per
//! node (in the root namespace, applying with `--netns <node>`), then runs
//! every scenario's steps: manifests written, every agent at the new head
//! (bounded wait), each probe sent for real and checked against its
//! expectation and against `explain` on the node's state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use setpoint_dataplane::NodeDataplane;
use setpoint_dataplane::explain::{Origin, Packet, Verdict, explain};

use super::probe::{self, Observed};
use super::scenario::{self, Expect, Probe, Proto};
use super::topology::{CLIENTS, NodeInfo, Topology};

/// One attempt's wait for an answer; a `dropped` expectation costs this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// A step's manifests reach every node's kernel within this.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A kept UDP flow's datagram interval while a step's change lands, and how
/// long it goes on after every agent acked.
const FLOW_EVERY: Duration = Duration::from_millis(50);
const FLOW_AFTER: Duration = Duration::from_millis(500);

const WORK: &str = "/run/service-matrix";
const ADMIN: &str = "http://127.0.0.1:7444";
const ADMIN_TOKEN: &str = "service-matrix-admin-token";

struct Processes(Vec<(String, Child)>);

impl Processes {
    /// Fails naming the first process that exited, with its log's tail.
    fn alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("{name} exited ({status}); see its log");
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(name: &str, logs: &Path, program: &str, args: &[String]) -> anyhow::Result<Child> {
    let log = fs::File::create(logs.join(format!("{name}.log")))?;
    let err = log.try_clone()?;
    Command::new(program)
        .args(args)
        // Logs with timings, for the step times the run prints.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {program}: {e}"))
}

/// Milliseconds spent asking the admin API (reported per step).
static ADMIN_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The control plane's admin API, as setpointctl asks it (a bearer token
/// over plaintext loopback), in-process: under one emulated CPU a
/// setpointctl process costs seconds the agents need.
struct Admin {
    runtime: tokio::runtime::Runtime,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    fn new(token: &str) -> anyhow::Result<Admin> {
        Ok(Admin {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            token: format!("Bearer {token}").parse()?,
        })
    }

    fn call<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(
            &mut setpoint_proto::admin::admin_client::AdminClient<tonic::transport::Channel>,
        ) -> Result<T, tonic::Status>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let result = self.runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_static(ADMIN)
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .connect()
                .await?;
            let mut client = setpoint_proto::admin::admin_client::AdminClient::new(channel)
                .max_decoding_message_size(setpoint_proto::MAX_MESSAGE_BYTES);
            Ok::<_, anyhow::Error>(f(&mut client).await?)
        });
        let ms = started.elapsed().as_millis() as u64;
        ADMIN_MS.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
        eprintln!("admin {what}: {ms} ms");
        result
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    fn status(&self) -> anyhow::Result<setpoint_proto::admin::StatusResponse> {
        let request = self.request(setpoint_proto::admin::StatusRequest {});
        self.call("status", async move |c| {
            Ok(c.status(request).await?.into_inner())
        })
    }

    fn node_state(&self, node: &str) -> anyhow::Result<NodeDataplane> {
        let request = self.request(setpoint_proto::admin::ShowNodeRequest {
            node: node.to_string(),
            revision: 0,
            format: "json".into(),
        });
        let text = self.call("show", async move |c| {
            Ok(c.show_node(request).await?.into_inner().text)
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The head revision, once every node's agent holds it, else why not.
fn converged(admin: &Admin, nodes: usize, after: u64) -> anyhow::Result<Result<u64, String>> {
    let status = admin.status()?;
    let head = status.head;
    if head <= after {
        return Ok(Err(format!(
            "head {head}, waiting for a revision after {after}"
        )));
    }
    let behind: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| !n.at_head)
        .map(|n| {
            format!(
                "{} at {} ({} {})",
                n.node, n.applied_revision, n.result, n.error
            )
        })
        .collect();
    if status.nodes.len() < nodes || !behind.is_empty() {
        return Ok(Err(format!(
            "head {head}: {} of {nodes} nodes listed, behind: {}",
            status.nodes.len(),
            behind.join(", ")
        )));
    }
    Ok(Ok(head))
}

/// `setpoint_agent_revision` from an agent's metrics listener.
fn agent_revision(port: u16) -> Option<u64> {
    use std::io::Read;
    let mut conn = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("setpoint_agent_revision "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until every agent's kernel holds a revision after `after` and the
/// head (the agents' own metric, `setpoint_agent_revision`, polled cheaply;
/// the admin API's status, which costs the emulated CPU a second or more,
/// asked only once they moved, or every 15 seconds in case a revision
/// leaves some node alone); returns the head.
fn wait_converged(
    admin: &Admin,
    procs: &mut Processes,
    ports: &[u16],
    after: u64,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut want = after + 1;
    let mut last_status = Instant::now();
    loop {
        procs.alive()?;
        let held: Vec<Option<u64>> = ports.iter().map(|p| agent_revision(*p)).collect();
        let lowest = held.iter().map(|r| r.unwrap_or(0)).min().unwrap_or(0);
        if lowest >= want || last_status.elapsed() > Duration::from_secs(15) {
            last_status = Instant::now();
            let status = admin.status()?;
            if status.head > after && lowest >= status.head {
                return Ok(status.head);
            }
            if status.head > after
                && status.nodes.len() >= ports.len()
                && status.nodes.iter().all(|n| n.at_head)
            {
                // The head changed no state of some node's: that agent
                // stays at an older revision whose state's digest is the
                // head's (`at_head` compares digests), so the agents'
                // lowest revision never reaches the head.
                return Ok(status.head);
            }
            want = want.max(status.head);
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            let why = match converged(admin, ports.len(), after) {
                Ok(Err(why)) => why,
                Ok(Ok(head)) => format!("head {head}"),
                Err(e) => e.to_string(),
            };
            anyhow::bail!(
                "not converged after {CONVERGE_TIMEOUT:?}: agents hold revisions {held:?}, waiting for {want}; {why}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The manifests the control plane reads: the cluster's and one scenario
/// step's, written whole (each to a temporary name, then renamed).
fn write_manifests(
    dir: &Path,
    cluster: &BTreeMap<String, String>,
    step: &BTreeMap<String, String>,
) -> anyhow::Result<bool> {
    let mut want: BTreeMap<String, &String> = BTreeMap::new();
    for (name, text) in cluster {
        want.insert(format!("00-cluster-{name}"), text);
    }
    for (name, text) in step {
        want.insert(format!("10-step-{name}"), text);
    }
    let mut changed = false;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !want.contains_key(&name) {
            fs::remove_file(&path)?;
            changed = true;
        }
    }
    let staging = Path::new(WORK).join("staging");
    fs::create_dir_all(&staging)?;
    for (name, text) in want {
        let path = dir.join(&name);
        if fs::read_to_string(&path).ok().as_ref() == Some(text) {
            continue;
        }
        let tmp = staging.join(&name);
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        changed = true;
    }
    Ok(changed)
}

fn start_pods(topology: &Topology) -> anyhow::Result<()> {
    for pod in &topology.pods {
        let ports = if pod.ports.is_empty() {
            vec![(Proto::Tcp, 8080), (Proto::Udp, 8080), (Proto::Sctp, 8080)]
        } else {
            pod.ports.clone()
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        addrs.extend(pod.v4.map(IpAddr::V4));
        addrs.extend(pod.v6.map(IpAddr::V6));
        let made = setpoint_agent::in_netns(Some(&pod.netns()), || {
            let mut listeners = Vec::new();
            let mut sockets = Vec::new();
            for &(proto, port) in &ports {
                for &a in &addrs {
                    let at = SocketAddr::new(a, port);
                    match proto {
                        // containerPorts are TCP, UDP or SCTP; never http.
                        Proto::Tcp | Proto::Http => listeners.push(TcpListener::bind(at)?),
                        Proto::Sctp => listeners.push(probe::sctp_listen(at)?),
                        Proto::Udp => sockets.push(UdpSocket::bind(at)?),
                    }
                }
            }
            Ok::<_, std::io::Error>((listeners, sockets))
        });
        let (listeners, sockets) = made
            .and_then(|r| r)
            .map_err(|e| anyhow::anyhow!("pod {}: listening: {e}", pod.name))?;
        probe::serve_pod(&pod.name, listeners, sockets);
    }
    Ok(())
}

/// Where a probe starts: its namespace, the node whose rules see it first
/// (None for an off-cluster client until the destination is known), its
/// origin for `explain`, and its own addresses.
struct Source {
    netns: String,
    node: Option<String>,
    origin: Origin,
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Source {
    fn address(&self, family_of: IpAddr) -> Option<IpAddr> {
        if family_of.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

struct Ctx<'a> {
    topology: &'a Topology,
    states: BTreeMap<String, NodeDataplane>,
    /// Connections kept by `keep`, for a later step's `over`.
    kept: HashMap<String, TcpStream>,
    /// UDP flows kept by `keep` (one socket, one source port).
    flows: HashMap<String, std::net::UdpSocket>,
}

fn source(t: &Topology, from: &str) -> Result<Source, String> {
    if let Some((name, v4, v6)) = CLIENTS.iter().find(|c| c.0 == from) {
        return Ok(Source {
            netns: name.to_string(),
            node: None,
            origin: Origin::Outside,
            v4: Some(IpAddr::V4(*v4)),
            v6: Some(IpAddr::V6(*v6)),
        });
    }
    if let Some(name) = from.strip_prefix("pod:") {
        let p = t.pod(name).ok_or(format!("no pod {name}"))?;
        return Ok(Source {
            netns: p.netns(),
            node: Some(p.node.clone()),
            origin: Origin::Pod,
            v4: p.v4.map(IpAddr::V4),
            v6: p.v6.map(IpAddr::V6),
        });
    }
    if let Some(name) = from.strip_prefix("node:") {
        let n = t.node(name).ok_or(format!("no node {name}"))?;
        return Ok(Source {
            netns: n.name.clone(),
            node: Some(n.name.clone()),
            origin: Origin::Node,
            v4: Some(IpAddr::V4(n.v4)),
            v6: n.v6.map(IpAddr::V6),
        });
    }
    Err(format!(
        "unknown source {from:?} (client, client2, pod:NAME, node:NAME)"
    ))
}

fn destination(t: &Topology, to: &str) -> Result<IpAddr, String> {
    let node = |name: &str| t.node(name).ok_or(format!("no node {name}"));
    let pod = |name: &str| t.pod(name).ok_or(format!("no pod {name}"));
    if let Some(n) = to.strip_prefix("node:") {
        return Ok(IpAddr::V4(node(n)?.v4));
    }
    if let Some(n) = to.strip_prefix("node6:") {
        return node(n)?
            .v6
            .map(IpAddr::V6)
            .ok_or(format!("node {n} has no IPv6 address"));
    }
    if let Some(n) = to.strip_prefix("pod:") {
        return pod(n)?
            .v4
            .map(IpAddr::V4)
            .ok_or(format!("pod {n} has no IPv4"));
    }
    if let Some(n) = to.strip_prefix("pod6:") {
        return pod(n)?
            .v6
            .map(IpAddr::V6)
            .ok_or(format!("pod {n} has no IPv6"));
    }
    to.parse().map_err(|_| format!("bad destination {to:?}"))
}

/// The address `seen` names for a probe from `src`.
fn seen_address(t: &Topology, seen: &str, src: IpAddr) -> Result<IpAddr, String> {
    let v6 = src.is_ipv6();
    if seen == "client" {
        return Ok(src);
    }
    if let Some(n) = seen.strip_prefix("node:") {
        let n = t.node(n).ok_or(format!("no node {n}"))?;
        return if v6 {
            n.v6.map(IpAddr::V6)
                .ok_or(format!("node {} has no IPv6", n.name))
        } else {
            Ok(IpAddr::V4(n.v4))
        };
    }
    if let Some(p) = seen.strip_prefix("pod:") {
        let p = t.pod(p).ok_or(format!("no pod {p}"))?;
        let a = if v6 {
            p.v6.map(IpAddr::V6)
        } else {
            p.v4.map(IpAddr::V4)
        };
        return a.ok_or(format!("pod {} has no address of the family", p.name));
    }
    seen.parse()
        .map_err(|_| format!("bad seen-source {seen:?}"))
}

/// What `explain` makes of the packet, in the expectation's terms.
#[derive(Debug, PartialEq, Eq)]
enum Explained {
    Reply(BTreeSet<String>),
    Refused,
    Dropped,
    /// Accepted to the node's own address: a socket of the node answers
    /// (an `http` probe of a health-check node port or the proxy health).
    NodeSocket,
    Other(String),
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Explained::Reply(pods) => write!(
                f,
                "reply from {}",
                pods.iter().cloned().collect::<Vec<_>>().join("|")
            ),
            Explained::Refused => f.write_str("refused"),
            Explained::Dropped => f.write_str("dropped"),
            Explained::NodeSocket => f.write_str("accepted to the node's own socket"),
            Explained::Other(why) => f.write_str(why),
        }
    }
}

fn show_expect(e: &Expect) -> String {
    match e {
        Expect::Reply { from, seen } => format!("reply from {} seen-source {seen}", from.join("|")),
        Expect::Refused => "refused".into(),
        Expect::Dropped => "dropped".into(),
        Expect::Http { status, body } if body.is_empty() => format!("HTTP {status}"),
        Expect::Http { status, body } => format!("HTTP {status} with {body:?}"),
    }
}

impl Ctx<'_> {
    fn explain_at(
        &self,
        node: &str,
        packet: &Packet,
    ) -> Result<setpoint_dataplane::explain::Explanation, String> {
        let state = self
            .states
            .get(node)
            .ok_or(format!("no state of node {node}"))?;
        explain(state, packet).map_err(|e| e.to_string())
    }

    /// The packet walked through Setpoint's rules: at the entry node, then,
    /// for each backend on another node, at that node (ingress policy).
    fn explained(
        &self,
        entry: &str,
        origin: Origin,
        src: IpAddr,
        dst: IpAddr,
        probe: &Probe,
        leg2_src: IpAddr,
    ) -> Result<Explained, String> {
        let protocol = match probe.protocol {
            Proto::Tcp | Proto::Http => setpoint_dataplane::Protocol::Tcp,
            Proto::Udp => setpoint_dataplane::Protocol::Udp,
            Proto::Sctp => setpoint_dataplane::Protocol::Sctp,
        };
        let packet = Packet {
            protocol,
            src,
            src_port: None,
            dst,
            dst_port: probe.port,
            from: origin,
        };
        let first = self.explain_at(entry, &packet)?;
        let mut backends: Vec<(IpAddr, u16)> = Vec::new();
        match first.verdict {
            Verdict::Drop => return Ok(Explained::Dropped),
            Verdict::Reject => return Ok(Explained::Refused),
            Verdict::Dnat => {
                let vs = first
                    .virtual_server
                    .as_ref()
                    .ok_or("dnat without a virtual server")?;
                let mut blocked = Vec::new();
                for b in &vs.real_servers {
                    let at: SocketAddr = b
                        .address
                        .parse()
                        .map_err(|_| format!("real server {:?}", b.address))?;
                    if b.weight == 0 {
                        continue;
                    }
                    match b.verdict {
                        Verdict::Drop | Verdict::Reject => blocked.push(b.verdict),
                        _ => backends.push((at.ip(), at.port())),
                    }
                }
                if backends.is_empty() {
                    return Ok(if blocked.contains(&Verdict::Drop) {
                        Explained::Dropped
                    } else {
                        // Rejected on the way to every real server, or
                        // none: IPVS answers ICMP port unreachable.
                        Explained::Refused
                    });
                }
            }
            Verdict::Accept | Verdict::NotSetpoint => {
                if self.topology.pod_of(dst).is_some() {
                    backends.push((dst, probe.port));
                } else if let Some(other) = self.topology.node_of(dst).filter(|n| n.name != entry) {
                    // Routed to that node, whose rules see it from outside.
                    let other = other.name.clone();
                    return self.explained(&other, Origin::Outside, src, dst, probe, leg2_src);
                } else if self.topology.node_of(dst).is_some()
                    || self
                        .states
                        .get(entry)
                        .is_some_and(|s| s.flatten().addresses().any(|a| *a == dst))
                {
                    // An `http` probe asks a socket of the node's own (a
                    // health-check node port, the proxy health): accepted
                    // to it, the node answers.
                    if probe.protocol == Proto::Http {
                        return Ok(Explained::NodeSocket);
                    }
                    // A node address, or a service address on the node's
                    // interface: nothing of the node's own listens there.
                    return Ok(Explained::Refused);
                } else {
                    return Ok(Explained::Other(format!(
                        "{} ({})",
                        first.verdict.as_str(),
                        first.reason
                    )));
                }
            }
        }
        let mut pods = BTreeSet::new();
        for (ip, port) in backends {
            let Some(pod) = self.topology.pod_of(ip) else {
                pods.insert(ip.to_string());
                continue;
            };
            if pod.node != entry {
                let second = Packet {
                    protocol,
                    src: leg2_src,
                    src_port: None,
                    dst: ip,
                    dst_port: port,
                    from: Origin::Outside,
                };
                let e = self.explain_at(&pod.node, &second)?;
                if matches!(e.verdict, Verdict::Drop | Verdict::Reject) {
                    continue;
                }
            }
            pods.insert(pod.name.clone());
        }
        Ok(if pods.is_empty() {
            Explained::Dropped
        } else {
            Explained::Reply(pods)
        })
    }

    /// Runs one probe; `Ok(detail)` passes, `Err(detail)` fails.
    fn run(&mut self, probe: &Probe) -> Result<String, String> {
        let t = self.topology;
        let src = source(t, &probe.from)?;
        let dst = destination(t, &probe.to)?;
        let to = SocketAddr::new(dst, probe.port);
        let src_ip = src
            .address(dst)
            .ok_or(format!("{} has no address of {dst}'s family", probe.from))?;
        // The node whose rules see the packet first.
        let entry: NodeInfo = match (&src.node, &probe.via) {
            (Some(n), _) => t.node(n).cloned().ok_or(format!("no node {n}"))?,
            (None, Some(via)) => t.node(via).cloned().ok_or(format!("no node {via}"))?,
            (None, None) => match t.node_of(dst) {
                Some(n) => n.clone(),
                None => match t.pod_of(dst) {
                    Some(p) => t.node(&p.node).cloned().ok_or("pod without node")?,
                    None => t.nodes[0].clone(),
                },
            },
        };
        if src.node.is_none() && t.node_of(dst).is_none() && t.pod_of(dst).is_none() {
            t.route_via(dst, &entry).map_err(|e| e.to_string())?;
        }
        let want_seen = match &probe.expect {
            Expect::Reply { seen, .. } => Some(seen_address(t, seen, src_ip)?),
            _ => None,
        };

        // The packets, for real.
        let repeat = probe.repeat.max(1);
        let observed: Vec<Observed> =
            if let Some(name) = probe.over.as_ref().filter(|_| probe.protocol == Proto::Udp) {
                let socket = self
                    .flows
                    .get(name)
                    .ok_or(format!("no UDP flow kept as {name:?}"))?;
                probe::drain_udp(socket);
                (0..repeat)
                    .map(|_| probe::ask_udp(socket, PROBE_TIMEOUT))
                    .collect()
            } else if let (Some(name), Proto::Udp) = (&probe.keep, probe.protocol) {
                let made = setpoint_agent::in_netns(Some(&src.netns), move || {
                    probe::udp_flow(to, PROBE_TIMEOUT)
                })
                .map_err(|e| format!("entering {}: {e}", src.netns))?;
                match made {
                    Ok((socket, first)) => {
                        self.flows.insert(name.clone(), socket);
                        vec![first]
                    }
                    Err(o) => vec![o],
                }
            } else if probe.protocol == Proto::Http {
                let path = probe.path.clone().unwrap_or_else(|| "/".into());
                setpoint_agent::in_netns(Some(&src.netns), move || {
                    (0..repeat)
                        .map(|_| probe::http_get(to, &path, PROBE_TIMEOUT))
                        .collect()
                })
                .map_err(|e| format!("entering {}: {e}", src.netns))?
            } else if let Some(name) = &probe.over {
                let stream = self
                    .kept
                    .get_mut(name)
                    .ok_or(format!("no connection kept as {name:?}"))?;
                (0..repeat)
                    .map(|_| probe::ask(stream, PROBE_TIMEOUT))
                    .collect()
            } else {
                let proto = probe.protocol;
                let keep = probe.keep.is_some();
                let result = setpoint_agent::in_netns(Some(&src.netns), move || {
                    let mut seen = Vec::new();
                    let mut kept = None;
                    for i in 0..repeat {
                        if keep && i == 0 {
                            match probe::connect(proto, to, PROBE_TIMEOUT) {
                                Ok(mut s) => {
                                    seen.push(probe::ask(&mut s, PROBE_TIMEOUT));
                                    kept = Some(s);
                                }
                                Err(o) => seen.push(o),
                            }
                        } else {
                            seen.push(probe::once(proto, to, PROBE_TIMEOUT));
                        }
                    }
                    (seen, kept)
                })
                .map_err(|e| format!("entering {}: {e}", src.netns))?;
                if let (Some(name), Some(stream)) = (&probe.keep, result.1) {
                    self.kept.insert(name.clone(), stream);
                }
                result.0
            };

        // Against the expectation.
        let mut problems = Vec::new();
        match &probe.expect {
            Expect::Reply { from, .. } => {
                let mut pods = BTreeSet::new();
                for o in &observed {
                    match o {
                        Observed::Reply { pod, seen } => {
                            if !from.contains(pod) || Some(*seen) != want_seen {
                                problems.push(o.to_string());
                            }
                            pods.insert(pod.clone());
                        }
                        other => problems.push(other.to_string()),
                    }
                }
                if probe.same_backend && pods.len() > 1 {
                    problems.push(format!("{} different backends", pods.len()));
                }
                if probe.spread {
                    let missing: Vec<&String> =
                        from.iter().filter(|p| !pods.contains(*p)).collect();
                    if !missing.is_empty() {
                        problems.push(format!("never answered: {missing:?}"));
                    }
                }
            }
            Expect::Refused => {
                for o in &observed {
                    if !matches!(o, Observed::Refused { .. }) {
                        problems.push(o.to_string());
                    }
                }
            }
            Expect::Dropped => {
                for o in &observed {
                    if *o != Observed::Dropped {
                        problems.push(o.to_string());
                    }
                }
            }
            Expect::Http { status, body } => {
                for o in &observed {
                    match o {
                        Observed::Http {
                            status: got,
                            body: text,
                        } if got == status && body.iter().all(|b| probe::body_holds(text, b)) => {}
                        other => problems.push(other.to_string()),
                    }
                }
            }
        }
        let got = summarize(&observed);

        // Against explain, for the same packet.
        let explained = if let Some(why) = &probe.no_explain {
            format!("explain not asked: {why}")
        } else if probe.over.is_some() {
            "explain not asked: a kept connection".into()
        } else {
            let leg2_src = want_seen.unwrap_or(src_ip);
            let e = self.explained(&entry.name, src.origin, src_ip, dst, probe, leg2_src)?;
            let agrees = match (&probe.expect, &e) {
                (Expect::Reply { from, .. }, Explained::Reply(pods)) => {
                    pods == &from.iter().cloned().collect::<BTreeSet<_>>()
                }
                (Expect::Refused, Explained::Refused)
                | (Expect::Dropped, Explained::Dropped)
                | (Expect::Http { .. }, Explained::NodeSocket) => true,
                _ => false,
            };
            if !agrees {
                problems.push(format!("explain on {} says {e}", entry.name));
            }
            format!("explain on {}: {e}", entry.name)
        };
        let line = format!(
            "expected {}, got {got}; {explained}",
            show_expect(&probe.expect)
        );
        if problems.is_empty() {
            Ok(line)
        } else {
            Err(format!("{line} [{}]", problems.join("; ")))
        }
    }
}

/// The nodes' kernels as the operator's tools show them, for a failed
/// probe: `dumps/<scenario>-<step>-<probe>.txt` under `out`.
fn dump(out: &Path, name: &str, topology: &Topology) {
    let dir = out.join("dumps");
    let _ = fs::create_dir_all(&dir);
    let mut text = String::new();
    for n in &topology.nodes {
        for tool in [
            &["ipvsadm", "-Ln"][..],
            &["iptables-save"][..],
            &["ip6tables-save"][..],
            &["ipset", "list"][..],
            &["ip", "-o", "addr"][..],
            &["conntrack", "-L"][..],
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", &n.name])
                .args(tool)
                .output();
            let _ = writeln!(text, "==== {} {}", n.name, tool.join(" "));
            match out {
                Ok(o) => {
                    text.push_str(&String::from_utf8_lossy(&o.stdout));
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                }
                Err(e) => {
                    let _ = writeln!(text, "{e}");
                }
            }
        }
    }
    let _ = fs::write(dir.join(format!("{name}.txt")), text);
}

/// Which pods answered a measured flow, when each took over, and the gap
/// between the last answer of one and the first of the next.
fn flow_summary(answers: &[(Duration, String)], acked_ms: u128) -> String {
    let mut runs: Vec<(String, Duration, Duration)> = Vec::new();
    for (at, pod) in answers {
        match runs.last_mut() {
            Some((p, _, last)) if p == pod => *last = *at,
            _ => runs.push((pod.clone(), *at, *at)),
        }
    }
    let mut text = runs
        .iter()
        .map(|(p, first, last)| format!("{p} +{}..+{} ms", first.as_millis(), last.as_millis()))
        .collect::<Vec<_>>()
        .join(", ");
    for pair in runs.windows(2) {
        let gap = pair[1].1.saturating_sub(pair[0].2);
        let _ = write!(
            text,
            "; moved {} -> {} with a gap of {} ms ({} datagrams every {} ms)",
            pair[0].0,
            pair[1].0,
            gap.as_millis(),
            answers.len(),
            FLOW_EVERY.as_millis()
        );
    }
    let _ = write!(text, "; every agent acked at +{acked_ms} ms");
    text
}

/// `reply from a seen-source X` ×N, joined, counted.
fn summarize(observed: &[Observed]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in observed {
        let key = match o {
            Observed::Refused { errno, .. } => format!("refused ({errno})"),
            other => other.to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| if n > 1 { format!("{k} ×{n}") } else { k })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the matrix in `scenarios`, writing `results.txt` and the logs to
/// `out`; returns whether every probe passed.
pub fn run(scenarios: &Path, out: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let matrix = scenario::load(scenarios)?;
    let logs = out.join("logs");
    fs::create_dir_all(&logs)?;
    let mut results = fs::File::create(out.join("results.txt"))?;
    let mut say = |line: &str| {
        println!("{line}");
        let _ = writeln!(results, "{line}");
    };

    let work = PathBuf::from(WORK);
    let manifests = work.join("manifests");
    fs::create_dir_all(&manifests)?;
    let token = work.join("token");
    fs::write(&token, format!("admin {ADMIN_TOKEN}\n"))?;
    let admin = Admin::new(ADMIN_TOKEN)?;
    fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    write_manifests(&manifests, &matrix.cluster, &BTreeMap::new())?;
    let report = setpoint_source::load_path(&manifests)?;
    let topology = Topology::from_objects(&report.objects)?;
    let t0 = Instant::now();
    topology.build()?;
    start_pods(&topology)?;
    say(&format!(
        "# cluster: {} nodes, {} pods, namespaces and links in {} ms",
        topology.nodes.len(),
        topology.pods.len(),
        t0.elapsed().as_millis()
    ));

    let mut procs = Processes(Vec::new());
    let serve_args: Vec<String> = [
        "serve",
        "--manifests",
        &manifests.display().to_string(),
        "--database",
        &format!("sqlite://{WORK}/setpoint.db?mode=rwc"),
        "--listen",
        "127.0.0.1:7443",
        "--metrics-listen",
        "127.0.0.1:9464",
        "--admin-listen",
        "127.0.0.1:7444",
        "--admin-token-file",
        &format!("{WORK}/token"),
        "--batch-ms",
        "50",
        "--cluster-cidr",
        "10.244.0.0/16,fd00:244::/32",
        "--service-cidr",
        "10.96.0.0/16,fd00:96::/112",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    procs.0.push((
        "serve".into(),
        spawn("controlplane", &logs, "setpoint-controlplane", &serve_args)?,
    ));
    // Agents started before the listener would back off for longer.
    let t0 = Instant::now();
    while TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], 7443)),
        Duration::from_secs(1),
    )
    .is_err()
    {
        procs.alive()?;
        anyhow::ensure!(
            t0.elapsed() < CONVERGE_TIMEOUT,
            "the control plane does not listen on 127.0.0.1:7443"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_ports: Vec<u16> = (0..topology.nodes.len()).map(|i| 9500 + i as u16).collect();
    for (i, node) in topology.nodes.iter().enumerate() {
        let args: Vec<String> = [
            "--node",
            &node.name,
            "--controlplane",
            "http://127.0.0.1:7443",
            "--netns",
            &node.name,
            "--state-dir",
            &format!("{WORK}/agent-{}", node.name),
            "--metrics-listen",
            &format!("127.0.0.1:{}", agent_ports[i]),
            // The drift check re-reads the whole kernel with the tools:
            // every 30 s in three agents it would take the emulated CPU
            // from the applies under test (drift repair has its own tests).
            "--drift-interval",
            "3600",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        procs.0.push((
            format!("agent {}", node.name),
            spawn(
                &format!("agent-{}", node.name),
                &logs,
                "setpoint-agent",
                &args,
            )?,
        ));
    }
    let t0 = Instant::now();
    let mut head = wait_converged(&admin, &mut procs, &agent_ports, 0)?;
    say(&format!(
        "# control plane and {} agents at revision {head} in {} ms",
        topology.nodes.len(),
        t0.elapsed().as_millis()
    ));

    let (mut passed, mut failed) = (0usize, 0usize);
    for sc in &matrix.scenarios {
        let mut ctx = Ctx {
            topology: &topology,
            states: BTreeMap::new(),
            kept: HashMap::new(),
            flows: HashMap::new(),
        };
        for step in &sc.steps {
            ADMIN_MS.store(0, std::sync::atomic::Ordering::Relaxed);
            let t0 = Instant::now();
            // Kept UDP flows keep sending while the step's change lands.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut measuring = Vec::new();
            for (name, socket) in &ctx.flows {
                measuring.push((
                    name.clone(),
                    probe::measure_flow(socket.try_clone()?, FLOW_EVERY, t0, stop.clone()),
                ));
            }
            let changed = write_manifests(&manifests, &matrix.cluster, &step.manifests)?;
            let converge = if changed {
                match wait_converged(&admin, &mut procs, &agent_ports, head) {
                    Ok(h) => {
                        head = h;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            let converge_ms = t0.elapsed().as_millis();
            if !measuring.is_empty() {
                std::thread::sleep(FLOW_AFTER);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            for (name, handle) in measuring {
                let answers = handle.join().unwrap_or_default();
                say(&format!(
                    "# {}/{} flow {name}: {}",
                    sc.name,
                    step.name,
                    flow_summary(&answers, converge_ms)
                ));
            }
            if let Err(e) = converge {
                for p in &step.probes {
                    failed += 1;
                    say(&format!("FAIL {}/{} {}: {e}", sc.name, step.name, p.name));
                }
                continue;
            }
            ctx.states.clear();
            for n in &topology.nodes {
                ctx.states
                    .insert(n.name.clone(), admin.node_state(&n.name)?);
            }
            let t1 = Instant::now();
            for p in &step.probes {
                match ctx.run(p) {
                    Ok(line) => {
                        passed += 1;
                        say(&format!(
                            "PASS {}/{} {}: {line}",
                            sc.name, step.name, p.name
                        ));
                    }
                    Err(line) => {
                        failed += 1;
                        dump(
                            out,
                            &format!("{}-{}-{}", sc.name, step.name, p.name),
                            &topology,
                        );
                        say(&format!(
                            "FAIL {}/{} {}: {line}",
                            sc.name, step.name, p.name
                        ));
                    }
                }
            }
            say(&format!(
                "# {}/{}: revision {head}, converged in {converge_ms} ms (admin API {} ms, with the states), {} probes in {} ms",
                sc.name,
                step.name,
                ADMIN_MS.load(std::sync::atomic::Ordering::Relaxed),
                step.probes.len(),
                t1.elapsed().as_millis()
            ));
        }
    }
    let mut summary = String::new();
    let _ = write!(
        summary,
        "{passed} passed, {failed} failed (in the VM: {} s)",
        started.elapsed().as_secs()
    );
    say(&summary);
    for (name, child) in &mut procs.0 {
        if let Ok(Some(status)) = child.try_wait() {
            say(&format!("# {name} exited early: {status}"));
        }
    }
    Ok(failed == 0)
}
