//! The agent's IPVS path on a real kernel: `setpoint-agent apply` in a
//! stock Debian kernel under qemu (the host kernel has no IPVS and no dummy
//! links), driven through a sequence of example-cluster states in one boot,
//! with the kernel read back by the operator's own tools (`ipvsadm-save`,
//! `ip addr`, `ipset`, `iptables-save`) and compared with the contract.
//!
//! Steps (one guest script, outputs per step under /out/<step>/):
//! 1. `a`: the full state of node-a, from nothing (timed);
//! 2. `b`: a variation (a Service gone, a DNS endpoint gone, a scheduler and
//!    an affinity changed): removed TCP real servers drain at weight 0,
//!    removed UDP ones are deleted;
//! 3. `b-again`: B once more, a no-op;
//! 4. `drift`: a virtual server and a service address removed behind the
//!    agent's back, B applied again repairs both;
//! 5. `empty`: nothing of Setpoint's is left;
//! 6. `ns-a`, `ns-d`: A in a named network namespace (`--netns`), then a
//!    one-endpoint delta there (both timed), the root namespace untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use setpoint_agent::apply::kernel_view;
use setpoint_compute::ClusterObject;
use setpoint_dataplane::{Forward, NodeDataplane, Protocol, Scheduler, VirtualServerKey};
use setpoint_integration::vm::{Vm, VmJob, VmOutput};

use super::{example_objects, state};

const NODE: &str = "node-a";

/// One virtual server as `ipvsadm-save -n` shows it: scheduler,
/// persistence, and (real server address, port) → (weight, forward).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ipvs {
    scheduler: String,
    persistence: Option<u32>,
    real_servers: BTreeMap<(IpAddr, u16), (u32, String)>,
}

type IpvsTable = BTreeMap<(String, String), Ipvs>;

fn proto_flag(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    }
}

fn forward_flag(f: Forward) -> String {
    f.ipvsadm_flag().to_string()
}

fn scheduler_name(s: Scheduler) -> String {
    s.as_str().to_string()
}

/// `10.0.0.1:80` or `[fd00::1]:80` → (address, port).
fn socket(text: &str) -> (IpAddr, u16) {
    let addr: std::net::SocketAddr = text
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not address:port: {e}"));
    (addr.ip(), addr.port())
}

/// Parses `ipvsadm-save -n`:
/// `-A -t 10.96.0.10:53 -s rr [-p 10800 [-M mask]]` and
/// `-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1`.
fn parse_ipvsadm_save(text: &str) -> IpvsTable {
    let mut table = IpvsTable::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let (proto, service) = ["-t", "-u", "--sctp-service"]
            .iter()
            .find_map(|f| value(f).map(|v| (f.to_string(), v.to_string())))
            .unwrap_or_else(|| panic!("no service in {line:?}"));
        let key = (proto, service);
        match words[0] {
            "-A" => {
                let previous = table.insert(
                    key,
                    Ipvs {
                        scheduler: value("-s")
                            .unwrap_or_else(|| panic!("no scheduler in {line:?}"))
                            .to_string(),
                        persistence: value("-p").map(|p| p.parse().expect("persistence")),
                        real_servers: BTreeMap::new(),
                    },
                );
                assert!(previous.is_none(), "service listed twice: {line:?}");
            }
            "-a" => {
                let real = socket(value("-r").unwrap_or_else(|| panic!("no -r in {line:?}")));
                let weight = value("-w")
                    .unwrap_or_else(|| panic!("no weight in {line:?}"))
                    .parse()
                    .expect("weight");
                let forward = ["-m", "-g", "-i"]
                    .iter()
                    .find(|f| words.contains(f))
                    .unwrap_or_else(|| panic!("no forwarding method in {line:?}"))
                    .to_string();
                table
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("real server before its service: {line:?}"))
                    .real_servers
                    .insert(real, (weight, forward));
            }
            _ => panic!("unexpected ipvsadm-save line {line:?}"),
        }
    }
    table
}

/// What `ipvsadm-save -n` must show for `state`, plus `draining` real
/// servers at weight 0 (on virtual servers the state still has).
fn expected_ipvs(
    state: &NodeDataplane,
    draining: &BTreeSet<(VirtualServerKey, IpAddr, u16)>,
) -> IpvsTable {
    // NodePort templates stand for one virtual server per node address.
    let flat = kernel_view(state).expect("the state expands");
    let mut table = IpvsTable::new();
    for (key, vs) in flat.virtual_servers() {
        let mut real_servers: BTreeMap<(IpAddr, u16), (u32, String)> = vs
            .real_servers
            .iter()
            .map(|rs| ((rs.address, rs.port), (rs.weight, forward_flag(rs.forward))))
            .collect();
        for (k, address, port) in draining {
            if k == key {
                let previous = real_servers.insert((*address, *port), (0, "-m".to_string()));
                assert!(
                    previous.is_none(),
                    "{address}:{port} of {key} both live and draining"
                );
            }
        }
        table.insert(
            (proto_flag(key.protocol).to_string(), key.to_string()),
            Ipvs {
                scheduler: scheduler_name(vs.scheduler),
                persistence: vs.persistence_timeout,
                real_servers,
            },
        );
    }
    table
}

/// Real servers of `from` whose virtual server `to` keeps but without them.
fn removed_real_servers(
    from: &NodeDataplane,
    to: &NodeDataplane,
    protocol: Protocol,
) -> BTreeSet<(VirtualServerKey, IpAddr, u16)> {
    let (from, to) = (
        kernel_view(from).expect("expands"),
        kernel_view(to).expect("expands"),
    );
    let mut removed = BTreeSet::new();
    for (key, vs) in from.virtual_servers() {
        if key.protocol != protocol {
            continue;
        }
        let Some(kept) = to.virtual_server(key) else {
            continue;
        };
        for rs in &vs.real_servers {
            if kept.real_server(rs.address, rs.port).is_none() {
                removed.insert((*key, rs.address, rs.port));
            }
        }
    }
    removed
}

/// Describes how two ipvsadm tables differ, one line per virtual server.
fn table_differences(kernel: &IpvsTable, want: &IpvsTable) -> String {
    let mut out = String::new();
    for (key, w) in want {
        match kernel.get(key) {
            None => writeln!(out, "missing {key:?}: {w:?}").expect("write"),
            Some(k) if k != w => writeln!(out, "{key:?}: kernel {k:?}, want {w:?}").expect("write"),
            Some(_) => {}
        }
    }
    for (key, k) in kernel {
        if !want.contains_key(key) {
            writeln!(out, "unexpected {key:?}: {k:?}").expect("write");
        }
    }
    out
}

/// Service addresses on setpoint0 from `ip -o addr show dev setpoint0`,
/// without link-local ones.
fn parse_addresses(text: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if (*w == "inet" || *w == "inet6")
                && let Some(cidr) = words.get(i + 1)
            {
                let (addr, prefix) = cidr.split_once('/').expect("address/prefix");
                let addr: IpAddr = addr.parse().expect("address");
                let link_local =
                    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
                if !link_local {
                    let host = if addr.is_ipv4() { "32" } else { "128" };
                    assert_eq!(prefix, host, "a service address is a host address: {line}");
                    out.insert(addr);
                }
            }
        }
    }
    out
}

/// Objects selected by `kind` and name, edited in place.
fn edit(objects: &mut [ClusterObject], kind: &str, name: &str, f: impl Fn(&mut ClusterObject)) {
    let mut found = false;
    for o in objects.iter_mut() {
        if o.kind() == kind && o.key().name == name {
            f(o);
            found = true;
        }
    }
    assert!(found, "the examples have no {kind} {name}");
}

fn drop_last_endpoint(o: &mut ClusterObject) {
    if let ClusterObject::EndpointSlice(slice) = o {
        assert!(slice.endpoints.len() >= 2, "{:?}", slice.metadata.name);
        slice.endpoints.pop();
    }
}

/// Guest shell: one apply per step, its log, exit code and wall time in
/// nanoseconds, then the kernel as the tools show it.
const PRELUDE: &str = r#"
snap() {
    d=/out/$1; ns=$2; mkdir -p "$d"
    if [ -n "$ns" ]; then x="/usr/local/bin/ip netns exec $ns"; else x=""; fi
    $x ipvsadm -S -n > "$d/ipvsadm-save.txt" 2>&1
    $x ipvsadm -Ln > "$d/ipvsadm.txt" 2>&1
    $x /usr/local/bin/ip -o addr show dev setpoint0 > "$d/addr.txt" 2>&1
    $x ipset list -n > "$d/sets.txt" 2>&1
    $x iptables-save > "$d/iptables.txt" 2>&1
    $x ip6tables-save > "$d/ip6tables.txt" 2>&1
}
step() {
    name=$1; shift
    mkdir -p "/out/$name"
    start=$(/usr/local/bin/date +%s%N)
    setpoint-agent apply "$@" > "/out/$name/apply.log" 2>&1
    rc=$?
    end=$(/usr/local/bin/date +%s%N)
    echo "$rc" > "/out/$name/rc"
    echo $((end - start)) > "/out/$name/ns"
    echo "step $name: exit $rc in $(( (end - start) / 1000000 )) ms"
    cat "/out/$name/apply.log"
}
"#;

fn job_script(drift_vs: &str, drift_addr: &str) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(
        r#"
step a --state /in/a.json; snap a
step b --state /in/b.json; snap b
step b-again --state /in/b.json; snap b-again
"#,
    );
    writeln!(
        s,
        "ipvsadm -D {drift_vs} > /out/drift-ipvsadm.log 2>&1; echo $? > /out/drift-ipvsadm.rc"
    )
    .expect("write");
    writeln!(
        s,
        "/usr/local/bin/ip addr del {drift_addr} dev setpoint0 > /out/drift-ip.log 2>&1; echo $? > /out/drift-ip.rc"
    )
    .expect("write");
    s.push_str(
        r#"snap drifted
step drift --state /in/b.json; snap drift
step empty --state /in/empty.json; snap empty
/usr/local/bin/ip netns add t1 > /out/netns-add.log 2>&1; echo $? > /out/netns-add.rc
step ns-a --state /in/a.json --netns t1; snap ns-a t1
step ns-d --state /in/d.json --netns t1; snap ns-d t1
snap root-after-ns
exit 0
"#,
    );
    s
}

struct Out<'a>(&'a VmOutput);

impl Out<'_> {
    fn text(&self, name: &str) -> String {
        self.0.text(name)
    }

    /// The step's apply exited 0; its log.
    fn applied(&self, step: &str) -> String {
        let log = self.text(&format!("{step}/apply.log"));
        let rc = self.text(&format!("{step}/rc"));
        assert_eq!(rc.trim(), "0", "step {step}: apply failed:\n{log}");
        log
    }

    fn millis(&self, step: &str) -> f64 {
        let ns: f64 = self
            .text(&format!("{step}/ns"))
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        ns / 1e6
    }

    fn ipvs(&self, step: &str) -> IpvsTable {
        parse_ipvsadm_save(&self.text(&format!("{step}/ipvsadm-save.txt")))
    }

    fn assert_ipvs(&self, step: &str, want: &IpvsTable) {
        let kernel = self.ipvs(step);
        assert!(
            &kernel == want,
            "step {step}: ipvsadm-save -n differs from the state:\n{}\nipvsadm -Ln:\n{}",
            table_differences(&kernel, want),
            self.text(&format!("{step}/ipvsadm.txt"))
        );
    }

    fn assert_addresses(&self, step: &str, state: &NodeDataplane) {
        let text = self.text(&format!("{step}/addr.txt"));
        let want: BTreeSet<IpAddr> = state.flatten().addresses().copied().collect();
        assert_eq!(
            parse_addresses(&text),
            want,
            "step {step}: setpoint0:\n{text}"
        );
    }

    fn assert_sets(&self, step: &str, state: &NodeDataplane) {
        let text = self.text(&format!("{step}/sets.txt"));
        let kernel: BTreeSet<&str> = text.lines().filter(|l| l.starts_with("SP")).collect();
        let flat = state.flatten();
        let want: BTreeSet<&str> = flat.sets().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kernel, want, "step {step}: ipset list -n");
    }

    /// The kernel as the tools show it is `state` (+ draining servers).
    fn assert_holds(
        &self,
        step: &str,
        state: &NodeDataplane,
        draining: &BTreeSet<(VirtualServerKey, IpAddr, u16)>,
    ) {
        self.assert_ipvs(step, &expected_ipvs(state, draining));
        self.assert_addresses(step, state);
        self.assert_sets(step, state);
    }
}

/// "applied N changes in M operations …" → N.
fn changes_applied(log: &str) -> usize {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("applied ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no \"applied N changes\" line in:\n{log}"))
}

#[test]
fn the_agent_applies_ipvs_states_in_a_debian_kernel() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration/vm/prepare installs qemu and fills /var/cache/setpoint-vm: run as root (scripts/test)"
    );
    let vm = Vm::prepare().unwrap_or_else(|e| panic!("{e}"));

    let objects = example_objects();
    let all = vec![true; objects.len()];
    let a = state(&objects, &all, NODE);

    // B: shop/reviews gone (its virtual servers and its address), the last
    // DNS endpoint gone (a UDP and two TCP real servers), kube-dns on `sh`,
    // checkout without ClientIP affinity.
    let mut varied = objects.clone();
    edit(
        &mut varied,
        "EndpointSlice",
        "kube-dns-5lprd",
        drop_last_endpoint,
    );
    edit(&mut varied, "Service", "kube-dns", |o| {
        if let ClusterObject::Service(s) = o {
            s.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    setpoint_compute::convert::SCHEDULER_ANNOTATION.to_string(),
                    "sh".to_string(),
                );
        }
    });
    edit(&mut varied, "Service", "checkout", |o| {
        if let ClusterObject::Service(s) = o {
            let spec = s.spec.as_mut().expect("spec");
            spec.session_affinity = Some("None".to_string());
            spec.session_affinity_config = None;
        }
    });
    let keep_b: Vec<bool> = varied
        .iter()
        .map(|o| {
            let key = o.key();
            !(key.namespace == "shop"
                && (key.name == "reviews"
                    || (o.kind() == "EndpointSlice" && key.name.starts_with("reviews-"))))
        })
        .collect();
    let b = state(&varied, &keep_b, NODE);

    // D: A less one payments endpoint (one TCP real server).
    let mut delta = objects.clone();
    edit(
        &mut delta,
        "EndpointSlice",
        "payments-zzddb",
        drop_last_endpoint,
    );
    let d = state(&delta, &all, NODE);
    let empty = NodeDataplane::default();

    // The variation must exercise what the test claims.
    let (fa, fb) = (
        kernel_view(&a).expect("expands"),
        kernel_view(&b).expect("expands"),
    );
    let tcp_draining = removed_real_servers(&a, &b, Protocol::Tcp);
    let udp_removed = removed_real_servers(&a, &b, Protocol::Udp);
    assert!(
        fa.virtual_server_count() >= 20,
        "{}",
        fa.virtual_server_count()
    );
    assert!(!tcp_draining.is_empty() && !udp_removed.is_empty());
    assert!(
        !setpoint_dataplane::template::templates(&a.flatten()).is_empty(),
        "A has NodePort templates for the agent to expand"
    );
    assert!(
        fb.virtual_server_count() < fa.virtual_server_count(),
        "B drops virtual servers"
    );
    assert!(
        fb.addresses().count() < fa.addresses().count(),
        "B drops an address"
    );
    let changed_settings = fa
        .virtual_servers()
        .filter(|(k, vs)| fb.virtual_server(k).is_some_and(|w| !w.same_settings(vs)))
        .count();
    assert!(
        changed_settings >= 2,
        "B changes schedulers and persistence"
    );
    let d_draining = removed_real_servers(&a, &d, Protocol::Tcp);
    assert!(!d_draining.is_empty(), "D removes a TCP real server");

    // Drift: a TCP virtual server of B without draining servers, and an
    // address other than its own.
    let (drift_key, _) = fb
        .virtual_servers()
        .find(|(k, _)| {
            k.protocol == Protocol::Tcp
                && k.address.is_ipv4()
                && !tcp_draining.iter().any(|(d, _, _)| d == *k)
        })
        .expect("a TCP virtual server to delete");
    let drift_address = fb
        .addresses()
        .find(|a| a.is_ipv4() && **a != drift_key.address)
        .expect("another address");
    let drift_vs = format!("-t {drift_key}");
    let drift_addr = format!("{drift_address}/32");

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for (name, s) in [("a", &a), ("b", &b), ("d", &d), ("empty", &empty)] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string(s).expect("serialise")).expect("write");
        files.push((path, format!("/in/{name}.json")));
    }
    let ip = ["/usr/bin/ip", "/sbin/ip", "/usr/sbin/ip", "/bin/ip"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("the host's iproute2 `ip` (for `ip netns` in the guest)");
    let mut binaries = vec![
        PathBuf::from(env!("CARGO_BIN_EXE_setpoint-agent")),
        ip.to_path_buf(),
    ];
    // busybox's date has no %N: the host's (coreutils) times the steps.
    let date = ["/usr/bin/date", "/bin/date"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("the host's coreutils `date` (for `date +%s%N` in the guest)");
    binaries.push(date.to_path_buf());
    // For clearing UDP conntrack entries; without it the agent only warns.
    if Path::new("/usr/sbin/conntrack").is_file() {
        binaries.push(PathBuf::from("/usr/sbin/conntrack"));
    }
    let job = VmJob {
        files,
        binaries,
        script: job_script(&drift_vs, &drift_addr),
        timeout: Duration::from_secs(600),
    };
    let out = vm.run(&job).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.exit_code, 0,
        "the script failed; console:\n{}",
        out.console
    );
    let out = Out(&out);
    let none = BTreeSet::new();

    // 1. From nothing to A.
    let log = out.applied("a");
    assert!(changes_applied(&log) > 0, "{log}");
    out.assert_holds("a", &a, &none);
    let iptables = out.text("a/iptables.txt");
    assert!(
        iptables.contains("setpoint:"),
        "our rules are in:\n{iptables}"
    );

    // 2. A → B: TCP real servers drain at weight 0, UDP ones are gone.
    let log = out.applied("b");
    assert!(changes_applied(&log) > 0, "{log}");
    out.assert_holds("b", &b, &tcp_draining);
    let kernel_b = out.ipvs("b");
    for (key, address, port) in &udp_removed {
        let vs = &kernel_b[&(proto_flag(key.protocol).to_string(), key.to_string())];
        assert!(
            !vs.real_servers.contains_key(&(*address, *port)),
            "UDP real server {address}:{port} of {key} is deleted at once"
        );
    }

    // 3. B again: nothing to do (the draining servers are still there: the
    // one-shot CLI exits before they are reaped).
    let log = out.applied("b-again");
    out.assert_holds("b-again", &b, &tcp_draining);
    // Checked last, so that a failure here still lets the later steps be
    // checked.
    let b_again_changes = changes_applied(&log);

    // 4. Drift repaired.
    assert_eq!(
        out.text("drift-ipvsadm.rc").trim(),
        "0",
        "{}",
        out.text("drift-ipvsadm.log")
    );
    assert_eq!(
        out.text("drift-ip.rc").trim(),
        "0",
        "{}",
        out.text("drift-ip.log")
    );
    let drifted = out.ipvs("drifted");
    assert!(!drifted.contains_key(&("-t".to_string(), drift_key.to_string())));
    assert!(!out.text("drifted/addr.txt").contains(&drift_addr));
    let log = out.applied("drift");
    assert!(changes_applied(&log) >= 2, "{log}");
    out.assert_holds("drift", &b, &tcp_draining);

    // 5. Nothing of Setpoint's left.
    out.applied("empty");
    out.assert_holds("empty", &empty, &none);
    for table in ["empty/iptables.txt", "empty/ip6tables.txt"] {
        let text = out.text(table);
        assert!(
            !text.contains("setpoint:") && !text.contains(":SP-") && !text.contains(":SP6-"),
            "{table} still holds Setpoint's chains or rules:\n{text}"
        );
    }

    // 6. In a named network namespace; the root namespace stays empty.
    assert_eq!(
        out.text("netns-add.rc").trim(),
        "0",
        "{}",
        out.text("netns-add.log")
    );
    out.applied("ns-a");
    out.assert_holds("ns-a", &a, &none);
    out.applied("ns-d");
    out.assert_holds("ns-d", &d, &d_draining);
    out.assert_ipvs("root-after-ns", &IpvsTable::new());

    eprintln!(
        "under qemu TCG emulation (not native speed): cold apply of A ({} virtual servers, {} addresses, {} sets): {:.0} ms; A again in a netns: {:.0} ms; A → B: {:.0} ms; B again: {:.0} ms; drift repair: {:.0} ms; one-endpoint delta (netns): {:.0} ms; to empty: {:.0} ms",
        fa.virtual_server_count(),
        fa.addresses().count(),
        fa.sets().count(),
        out.millis("a"),
        out.millis("ns-a"),
        out.millis("b"),
        out.millis("b-again"),
        out.millis("drift"),
        out.millis("ns-d"),
        out.millis("empty"),
    );

    for step in ["a", "b", "b-again", "drift", "empty", "ns-a", "ns-d"] {
        for line in out.text(&format!("{step}/apply.log")).lines() {
            if line.starts_with("warning") || line.starts_with("applied") {
                eprintln!("step {step}: {line}");
            }
        }
    }
    assert_eq!(
        b_again_changes,
        0,
        "re-applying B must be a no-op, but a new agent process counts the \
         {} real servers draining at weight 0 (left by the previous process) \
         as changes:\n{}",
        tcp_draining.len(),
        out.text("b-again/apply.log")
    );
}
