//! Policy verdicts the kernel logs: when the control plane runs with
//! `--log-policy-verdicts`, a rate-limited NFLOG rule stands before each
//! policy rule that denies (and each Accept or Pass of a policy annotated
//! `setpoint.io/log-accepted`). This reads those packets from the NFLOG
//! group(s) the applied state names, counts them per policy and rule, and
//! writes one structured line per verdict, itself rate-limited.
//!
//! ```text
//!  applied state ─▶ RuleTable: prefix "sp:<verdict>:<hash>" ─▶ rule comment
//!  kernel ─NFLOG group─▶ reader thread (in --netns) ─▶ parse ─▶ counter + line
//! ```
//!
//! The prefix carries a hash, not the rule's name (63 bytes against a
//! comment's 255): the rule is found through the comment of the NFLOG rule
//! in the state this agent applied, the same comment `explain` quotes.
//! With no NFLOG rule in the state, no socket is opened and no thread runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use neli::consts::netfilter::NetfilterMsg;
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::types::Buffer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use setpoint_dataplane::NodeDataplane;

use crate::netlink::{Netlink, NetlinkError};

/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET`.
const LOG_PACKET: u16 = (libc::NFNL_SUBSYS_ULOG as u16) << 8 | libc::NFULNL_MSG_PACKET as u16;
const NLMSG_HEADER: usize = 16;
const NFGENMSG: usize = 4;
/// Enough of each packet for its IPv4 or IPv6 header and ports.
const COPY_RANGE: u32 = 80;
/// The socket's queue: about 2,000 logged packets before the kernel drops.
const RECEIVE_BUFFER: usize = 1 << 20;
/// Logged packets per batch the kernel sends, and its longest wait
/// (hundredths of a second) before sending a smaller one.
const QUEUE_THRESHOLD: u32 = 32;
const FLUSH_HUNDREDTHS: u32 = 10;
/// How often a reader looks whether it should stop.
const WAKE: Duration = Duration::from_millis(500);
/// After a failure to open or bind, the reader tries again this much later.
const RETRY: Duration = Duration::from_secs(5);
/// Log lines per second (and the burst) over all rules; the counters count
/// every verdict the kernel sent, the lines beyond this are counted as
/// suppressed.
pub const LINES_PER_SECOND: f64 = 50.0;
const LINE_BURST: f64 = 100.0;

/// A rule whose verdicts are logged, as its comment names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LoggedRule {
    /// `cnp:<tier>/<policy>` or `np:<namespace>`.
    pub policy: String,
    /// The rest of the comment: `<direction> rule <i>: <action>`, or a
    /// NetworkPolicy's `<direction>: no NetworkPolicy rule allows`.
    pub rule: String,
    /// `drop`, `accept` or `pass`, from the prefix.
    pub verdict: String,
}

impl LoggedRule {
    /// The comment the rule had (what `explain` quotes).
    pub fn comment(&self) -> String {
        format!("{}/{}", self.policy, self.rule)
    }

    fn of(comment: &str, verdict: &str) -> LoggedRule {
        // "cnp:Admin/guard/egress rule 0: Deny": the policy is what comes
        // before the direction's '/', in the first word.
        let head = comment.split(' ').next().unwrap_or(comment);
        let (policy, rule) = match head.rfind('/') {
            Some(i) => (&comment[..i], &comment[i + 1..]),
            None => (comment, ""),
        };
        LoggedRule {
            policy: policy.to_string(),
            rule: rule.to_string(),
            verdict: verdict.to_string(),
        }
    }
}

/// What the applied state logs: the NFLOG groups, and each prefix's rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleTable {
    pub groups: BTreeSet<u16>,
    pub by_prefix: HashMap<String, Arc<LoggedRule>>,
}

impl RuleTable {
    /// The NFLOG rules of `state` with a Setpoint prefix and a comment.
    pub fn of(state: &NodeDataplane) -> RuleTable {
        let mut table = RuleTable::default();
        for (_, fragment) in state.parts() {
            for (_, chain) in fragment.chains() {
                for rule in &chain.rules {
                    let args = &rule.0;
                    let value = |flag: &str| {
                        args.iter()
                            .position(|a| a == flag)
                            .and_then(|i| args.get(i + 1))
                            .map(String::as_str)
                    };
                    if rule.target() != Some("NFLOG") {
                        continue;
                    }
                    let (Some(group), Some(prefix), Some(comment)) = (
                        value("--nflog-group").and_then(|g| g.parse::<u16>().ok()),
                        value("--nflog-prefix"),
                        value("--comment"),
                    ) else {
                        continue;
                    };
                    let Some(verdict) = prefix
                        .strip_prefix("sp:")
                        .and_then(|rest| rest.split(':').next())
                    else {
                        continue;
                    };
                    table.groups.insert(group);
                    table.by_prefix.insert(
                        prefix.to_string(),
                        Arc::new(LoggedRule::of(comment, verdict)),
                    );
                }
            }
        }
        table
    }
}

/// The addresses and ports of a logged packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, …).
    pub protocol: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

impl PacketSummary {
    fn protocol_name(&self) -> String {
        match self.protocol {
            6 => "TCP".into(),
            17 => "UDP".into(),
            132 => "SCTP".into(),
            1 => "ICMP".into(),
            58 => "ICMPv6".into(),
            n => n.to_string(),
        }
    }
}

/// One packet the kernel logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedPacket {
    pub group: u16,
    pub prefix: String,
    /// `None` when the copied bytes are not an IP header this reads.
    pub packet: Option<PacketSummary>,
}

/// The logged packets in one datagram from an NFLOG socket; messages that
/// are not logged packets are skipped, unreadable ones reported.
pub fn parse_datagram(datagram: &[u8]) -> Vec<Result<LoggedPacket, String>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HEADER || len > rest.len() {
            out.push(Err(format!(
                "message of {len} bytes in {} left",
                rest.len()
            )));
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind == LOG_PACKET {
            out.push(parse_packet(&rest[NLMSG_HEADER..len]));
        }
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

fn align(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn parse_packet(body: &[u8]) -> Result<LoggedPacket, String> {
    let Some((genmsg, mut attrs)) = body.split_at_checked(NFGENMSG) else {
        return Err(format!("{} bytes: no nfgenmsg", body.len()));
    };
    let group = u16::from_be_bytes([genmsg[2], genmsg[3]]);
    let mut prefix = None;
    let mut packet = None;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER are flags, not the type.
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(format!("attribute of {len} bytes in {} left", attrs.len()));
        }
        let value = &attrs[4..len];
        if kind == libc::NFULA_PREFIX as u16 {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            prefix = Some(String::from_utf8_lossy(text).into_owned());
        } else if kind == libc::NFULA_PAYLOAD as u16 {
            packet = summarize(value);
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Ok(LoggedPacket {
        group,
        prefix: prefix.unwrap_or_default(),
        packet,
    })
}

/// Addresses, protocol and ports of an IP packet's first bytes.
pub fn summarize(ip: &[u8]) -> Option<PacketSummary> {
    let ports = |l4: &[u8], protocol: u8| -> (Option<u16>, Option<u16>) {
        match (protocol, l4.get(..4)) {
            (6 | 17 | 132, Some(p)) => (
                Some(u16::from_be_bytes([p[0], p[1]])),
                Some(u16::from_be_bytes([p[2], p[3]])),
            ),
            _ => (None, None),
        }
    };
    match ip.first()? >> 4 {
        4 => {
            let header = ip.get(..20)?;
            let ihl = usize::from(header[0] & 0x0f) * 4;
            let protocol = header[9];
            let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            let (src_port, dst_port) = ports(ip.get(ihl..).unwrap_or_default(), protocol);
            Some(PacketSummary {
                src: src.into(),
                dst: dst.into(),
                protocol,
                src_port,
                dst_port,
            })
        }
        6 => {
            let header = ip.get(..40)?;
            let protocol = header[6];
            let addr = |at: usize| -> Option<Ipv6Addr> {
                let bytes: [u8; 16] = header.get(at..at + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(bytes))
            };
            // Ports only right after the fixed header: extension headers
            // are not walked.
            let (src_port, dst_port) = ports(&ip[40..], protocol);
            Some(PacketSummary {
                src: addr(8)?.into(),
                dst: addr(24)?.into(),
                protocol,
                src_port,
                dst_port,
            })
        }
        _ => None,
    }
}

/// The verdict log's metrics; clones count into the same series.
#[derive(Clone, Debug, Default)]
pub struct VerdictMetrics {
    /// Verdicts the kernel logged, by policy, rule and verdict.
    pub verdicts: Family<LoggedRule, Counter>,
    /// Logged packets whose prefix no rule of the applied state has (the
    /// state changed in between), or that could not be read.
    pub unmatched: Counter,
    /// Logged packets the kernel dropped because the agent's queue was
    /// full.
    pub lost: Counter,
    /// Lines not written because of the line rate limit.
    pub lines_suppressed: Counter,
    /// Failures to open or bind an NFLOG group (retried).
    pub errors: Counter,
    /// NFLOG groups bound and read now.
    pub groups_read: Gauge,
}

impl VerdictMetrics {
    /// Verdicts counted for `comment` (as the rule's comment reads) and
    /// `verdict` so far.
    pub fn count(&self, comment: &str, verdict: &str) -> u64 {
        self.verdicts
            .get_or_create(&LoggedRule::of(comment, verdict))
            .get()
    }
}

/// A token bucket for log lines.
struct Lines {
    tokens: f64,
    at: Instant,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            tokens: LINE_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SECOND).min(LINE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts and writes one logged packet.
fn record(
    table: &RwLock<RuleTable>,
    metrics: &VerdictMetrics,
    lines: &mut Lines,
    logged: &LoggedPacket,
) {
    let rule = table
        .read()
        .ok()
        .and_then(|t| t.by_prefix.get(&logged.prefix).cloned());
    let Some(rule) = rule else {
        metrics.unmatched.inc();
        return;
    };
    metrics.verdicts.get_or_create(&rule).inc();
    if !lines.take(Instant::now()) {
        metrics.lines_suppressed.inc();
        return;
    }
    match &logged.packet {
        Some(p) => tracing::info!(
            target: "setpoint_agent::verdict",
            verdict = %rule.verdict,
            policy = %rule.policy,
            rule = %rule.rule,
            src = %p.src,
            dst = %p.dst,
            protocol = %p.protocol_name(),
            src_port = p.src_port.unwrap_or(0),
            dst_port = p.dst_port.unwrap_or(0),
            "policy verdict: {} by {}",
            rule.verdict,
            rule.comment(),
        ),
        None => tracing::info!(
            target: "setpoint_agent::verdict",
            verdict = %rule.verdict,
            policy = %rule.policy,
            rule = %rule.rule,
            "policy verdict: {} by {}",
            rule.verdict,
            rule.comment(),
        ),
    }
}

/// Binds this socket to NFLOG `group`, copying the first [`COPY_RANGE`]
/// bytes of each packet: one config message with both attributes.
fn bind(netlink: &mut Netlink, group: u16) -> Result<(), NetlinkError> {
    let mut body = vec![libc::AF_UNSPEC as u8, libc::NFNETLINK_V0 as u8];
    body.extend(group.to_be_bytes());
    // NFULA_CFG_CMD: one byte, padded.
    body.extend(5u16.to_ne_bytes());
    body.extend((libc::NFULA_CFG_CMD as u16).to_ne_bytes());
    body.extend([libc::NFULNL_CFG_CMD_BIND as u8, 0, 0, 0]);
    // NFULA_CFG_MODE: struct nfulnl_msg_config_mode { __be32 copy_range;
    // __u8 copy_mode; __u8 _pad; }, padded.
    body.extend(10u16.to_ne_bytes());
    body.extend((libc::NFULA_CFG_MODE as u16).to_ne_bytes());
    body.extend(COPY_RANGE.to_be_bytes());
    body.extend([libc::NFULNL_COPY_PACKET as u8, 0, 0, 0]);
    // Packets reach the socket in batches of up to QUEUE_THRESHOLD, or
    // after FLUSH_HUNDREDTHS (the kernel's default waits a second).
    for (attribute, value) in [
        (libc::NFULA_CFG_QTHRESH, QUEUE_THRESHOLD),
        (libc::NFULA_CFG_TIMEOUT, FLUSH_HUNDREDTHS),
    ] {
        body.extend(8u16.to_ne_bytes());
        body.extend((attribute as u16).to_ne_bytes());
        body.extend(value.to_be_bytes());
    }
    netlink.request(NetfilterMsg::LogConfig, NlmF::empty(), Buffer::from(body))?;
    Ok(())
}

/// Reads one group until `stop`, reopening after failures.
fn read_group(
    netns: Option<String>,
    group: u16,
    table: Arc<RwLock<RuleTable>>,
    metrics: VerdictMetrics,
    stop: Arc<AtomicBool>,
) {
    let mut lines = Lines::new();
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let opened = Netlink::open(NlFamily::Netfilter, netns.as_deref()).and_then(|mut n| {
            n.set_receive_buffer(RECEIVE_BUFFER)?;
            bind(&mut n, group)?;
            Ok(n)
        });
        let mut netlink = match opened {
            Ok(n) => n,
            Err(e) => {
                metrics.errors.inc();
                if !warned {
                    let e = e.named("bind", format!("NFLOG group {group}"), netns.as_deref());
                    tracing::warn!("policy verdict log: {e}; trying again every {RETRY:?}");
                    warned = true;
                }
                sleep_unless(&stop, RETRY);
                continue;
            }
        };
        tracing::info!(group, "policy verdict log: reading NFLOG group {group}");
        warned = false;
        metrics.groups_read.inc();
        while !stop.load(Ordering::Relaxed) {
            match netlink.receive(WAKE) {
                Ok(None) => {}
                Ok(Some(datagram)) => {
                    for logged in parse_datagram(datagram) {
                        match logged {
                            Ok(l) => record(&table, &metrics, &mut lines, &l),
                            Err(e) => {
                                metrics.unmatched.inc();
                                tracing::debug!("policy verdict log: unreadable message: {e}");
                            }
                        }
                    }
                }
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                    metrics.lost.inc();
                }
                Err(e) => {
                    metrics.errors.inc();
                    let e = e.named("read", format!("NFLOG group {group}"), netns.as_deref());
                    tracing::warn!("policy verdict log: {e}; reopening");
                    sleep_unless(&stop, RETRY);
                    break;
                }
            }
        }
        metrics.groups_read.dec();
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(WAKE.min(until.saturating_duration_since(Instant::now())));
    }
}

/// A reader thread; it ends within [`WAKE`] of being dropped.
struct Reader {
    stop: Arc<AtomicBool>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Follows the applied state: which groups to read, which rule each
/// prefix names.
pub struct VerdictLog {
    netns: Option<String>,
    metrics: VerdictMetrics,
    table: Arc<RwLock<RuleTable>>,
    readers: BTreeMap<u16, Reader>,
}

impl VerdictLog {
    pub fn new(netns: Option<String>, metrics: VerdictMetrics) -> VerdictLog {
        VerdictLog {
            netns,
            metrics,
            table: Arc::default(),
            readers: BTreeMap::new(),
        }
    }

    /// The NFLOG groups read now.
    pub fn groups(&self) -> BTreeSet<u16> {
        self.readers.keys().copied().collect()
    }

    /// Takes the rules of `state`, the state now applied: starts a reader
    /// for each new group and stops those no rule uses any more.
    pub fn applied(&mut self, state: &NodeDataplane) {
        let table = RuleTable::of(state);
        let groups = table.groups.clone();
        if let Ok(mut t) = self.table.write() {
            *t = table;
        }
        self.readers.retain(|g, _| groups.contains(g));
        for group in groups {
            if self.readers.contains_key(&group) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (netns, table, metrics) =
                (self.netns.clone(), self.table.clone(), self.metrics.clone());
            let reader_stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("nflog-{group}"))
                .spawn(move || read_group(netns, group, table, metrics, reader_stop));
            match spawned {
                Ok(_) => {
                    self.readers.insert(group, Reader { stop });
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(
                        "policy verdict log: cannot start a reader for group {group}: {e}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HEADER + body.len()) as u32;
        let mut out = Vec::new();
        out.extend(len.to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(body);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((4 + value.len()) as u16).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn tcp_syn_v4() -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend([10, 244, 1, 10, 10, 244, 1, 13]);
        ip.extend(40000u16.to_be_bytes());
        ip.extend(80u16.to_be_bytes());
        ip.extend([0u8; 16]);
        ip
    }

    fn logged(group: u16, prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![2, 0];
        body.extend(group.to_be_bytes());
        body.extend(attr(libc::NFULA_PACKET_HDR as u16, &[8, 0, 3, 0]));
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        body.extend(attr(libc::NFULA_PREFIX as u16, &p));
        body.extend(attr(libc::NFULA_PAYLOAD as u16, payload));
        message(LOG_PACKET, &body)
    }

    #[test]
    fn a_logged_tcp_syn_reads_as_its_group_prefix_addresses_and_ports() {
        let mut datagram = logged(1800, "sp:drop:0123456789ABCDEF", &tcp_syn_v4());
        // A second message in the same datagram, of another kind, skipped.
        datagram.extend(message(0x0401, &[0, 0, 0, 0]));
        datagram.extend(logged(7, "sp:accept:FF", &tcp_syn_v4()[..20]));
        let parsed = parse_datagram(&datagram);
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        let first = parsed[0].as_ref().expect("first reads");
        assert_eq!(first.group, 1800);
        assert_eq!(first.prefix, "sp:drop:0123456789ABCDEF");
        let p = first.packet.as_ref().expect("an IPv4 header");
        assert_eq!(p.src, IpAddr::from([10, 244, 1, 10]));
        assert_eq!(p.dst, IpAddr::from([10, 244, 1, 13]));
        assert_eq!(
            (p.protocol, p.src_port, p.dst_port),
            (6, Some(40000), Some(80))
        );
        // Cut after the IP header: addresses without ports.
        let second = parsed[1].as_ref().expect("second reads");
        assert_eq!(second.group, 7);
        let p = second.packet.as_ref().expect("an IPv4 header");
        assert_eq!((p.src_port, p.dst_port), (None, None));
    }

    #[test]
    fn an_ipv6_udp_packet_reads_with_its_ports() {
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip.extend("fd00::1".parse::<Ipv6Addr>().expect("v6").octets());
        ip.extend("fd00::2".parse::<Ipv6Addr>().expect("v6").octets());
        ip.extend(5353u16.to_be_bytes());
        ip.extend(53u16.to_be_bytes());
        let p = summarize(&ip).expect("an IPv6 header");
        assert_eq!(p.dst, "fd00::2".parse::<IpAddr>().expect("v6"));
        assert_eq!(
            (p.protocol, p.src_port, p.dst_port),
            (17, Some(5353), Some(53))
        );
    }

    #[test]
    fn comments_split_into_policy_and_rule() {
        let cnp = LoggedRule::of("cnp:Admin/guard/egress rule 0: Deny", "drop");
        assert_eq!(cnp.policy, "cnp:Admin/guard");
        assert_eq!(cnp.rule, "egress rule 0: Deny");
        assert_eq!(cnp.comment(), "cnp:Admin/guard/egress rule 0: Deny");
        let np = LoggedRule::of("np:shop/ingress: no NetworkPolicy rule allows", "drop");
        assert_eq!(np.policy, "np:shop");
        assert_eq!(np.rule, "ingress: no NetworkPolicy rule allows");
    }

    #[test]
    fn the_line_bucket_refills_at_its_rate() {
        let mut lines = Lines::new();
        let start = lines.at;
        let taken = (0..1000).filter(|_| lines.take(start)).count();
        assert_eq!(taken, LINE_BURST as usize);
        assert!(!lines.take(start));
        assert!(lines.take(start + Duration::from_millis(100)));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_datagram(&bytes);
            let _ = summarize(&bytes);
        }

        #[test]
        fn a_logged_packet_cut_anywhere_never_panics(cut in 0usize..200) {
            let datagram = logged(1800, "sp:drop:AB", &tcp_syn_v4());
            let _ = parse_datagram(&datagram[..cut.min(datagram.len())]);
        }
    }
}
