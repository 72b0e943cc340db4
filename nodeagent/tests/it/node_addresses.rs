//! `--nodeport-addresses` against a real kernel: a namespace with veth
//! interfaces whose addresses come and go, the follower reading them over
//! rtnetlink, and the executor keeping the namespace's real
//! `SP-NODEPORT-IPS` / `SP6-NODEPORT-IPS` sets and the expanded NodePort
//! virtual servers (IPVS in the model: this kernel has none) in step.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use setpoint_agent::apply::{Applier, Base, Verified};
use setpoint_agent::kernel_model::ModelServices;
use setpoint_agent::node_addresses::watch::{Follower, follow, read};
use setpoint_agent::node_addresses::{LeftOut, NodeAddresses, NodePortAddresses, select};
use setpoint_agent::target::Target;
use setpoint_dataplane::template::node_port_address_set;
use setpoint_dataplane::{
    Family, Fragment, NodeDataplane, Protocol, RealServer, Scheduler, SetEntry, SetSpec, SetType,
    VirtualServer, VirtualServerKey,
};
use setpoint_integration::{Netns, require_root_and_tools};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn ips(texts: &[&str]) -> BTreeSet<IpAddr> {
    texts.iter().map(|t| ip(t)).collect()
}

const VIP: &str = "10.96.0.10";

/// A node's state: the node-port address sets with the control plane's
/// list (the Node object's address), NodePort templates on port 30080 in
/// both families, and a ClusterIP bound on the service interface.
fn state() -> NodeDataplane {
    let mut own = Fragment::new();
    for family in Family::ALL {
        own.put_set(
            node_port_address_set(family),
            SetSpec {
                kind: SetType::HashIp,
                family,
                maxelem: 1024,
                comment: String::new(),
            },
        );
    }
    own.add_entry("SP-NODEPORT-IPS", SetEntry::Ip(ip("192.168.50.1")));
    let vs = |backend: &str| {
        Arc::new(VirtualServer::new(
            Scheduler::Rr,
            None,
            vec![RealServer {
                address: ip(backend),
                port: 8080,
                weight: 1,
                forward: Default::default(),
            }],
        ))
    };
    let key = |address: &str, port| VirtualServerKey {
        address: ip(address),
        protocol: Protocol::Tcp,
        port,
    };
    let mut services = Fragment::new();
    services.put_virtual_server(key("0.0.0.0", 30080), vs("10.244.1.5"));
    services.put_virtual_server(key("::", 30080), vs("fd00:244::5"));
    services.put_virtual_server(key(VIP, 80), vs("10.244.1.5"));
    services.add_address(ip(VIP));
    NodeDataplane::from_parts([
        ("services".to_string(), Arc::new(services)),
        ("node/a".to_string(), Arc::new(own)),
    ])
}

/// The addresses the kernel's set `name` holds in `ns`.
fn kernel_set(ns: &Netns, name: &str) -> BTreeSet<IpAddr> {
    let listed = ns.exec(&["ipset", "list", name], None).expect("ipset list");
    listed
        .split("Members:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The addresses the view has a NodePort virtual server on.
fn expanded(view: &Fragment) -> BTreeSet<IpAddr> {
    view.virtual_servers()
        .filter(|(k, _)| k.port == 30080)
        .map(|(k, _)| k.address)
        .collect()
}

/// Waits (bounded) for the follower to publish a choice that `done`
/// accepts.
fn next_choice(follower: &mut Follower, done: impl Fn(&NodeAddresses) -> bool) -> NodeAddresses {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = follower.addresses.borrow_and_update().clone();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not see the change: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn both(v4: &[&str], v6: &[&str]) -> NodeAddresses {
    NodeAddresses::new(Some(ips(v4)), Some(ips(v6)))
}

#[test]
fn the_node_port_sets_follow_the_namespaces_addresses() {
    require_root_and_tools();
    let ns = Netns::create("agent-npaddr").expect("netns");
    let sh = |argv: &[&str]| {
        ns.exec(argv, None)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    };
    // Two veth pairs inside the namespace (the host kernel has no dummy
    // links): eth-a/eth-b are the node's interfaces, setpoint0 stands for
    // the service interface.
    sh(&[
        "ip", "link", "add", "eth-a", "type", "veth", "peer", "name", "eth-b",
    ]);
    sh(&[
        "ip",
        "link",
        "add",
        "setpoint0",
        "type",
        "veth",
        "peer",
        "name",
        "sp-peer",
    ]);
    for link in ["eth-a", "eth-b", "setpoint0", "sp-peer"] {
        sh(&["ip", "link", "set", link, "up"]);
    }
    sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "eth-a"]);
    sh(&["ip", "addr", "add", "fd00:1::1/64", "dev", "eth-a", "nodad"]);
    sh(&["ip", "addr", "add", "192.168.50.1/24", "dev", "eth-b"]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{VIP}/32"),
        "dev",
        "setpoint0",
    ]);

    let netns = Some(ns.name().to_string());
    let flag: NodePortAddresses = "10.0.0.0/8,fd00:1::/64".parse().expect("flag");
    // One read: the CIDRs choose, the service interface's address (inside
    // 10.0.0.0/8) and loopback are left out.
    let interfaces = read(netns.as_deref()).expect("read");
    assert_eq!(
        select(&flag, &interfaces),
        both(&["10.1.0.1"], &["fd00:1::1"])
    );
    let all = select(&"all".parse().expect("flag"), &interfaces);
    assert_eq!(all, both(&["10.1.0.1", "192.168.50.1"], &["fd00:1::1"]));

    let mut follower = follow(netns.clone(), flag, Counter::default());
    assert_eq!(
        *follower.addresses.borrow_and_update(),
        both(&["10.1.0.1"], &["fd00:1::1"]),
        "the follower starts with its first read"
    );
    let mut applier = Applier::new(
        Target {
            netns: netns.clone(),
        },
        Box::new(ModelServices::default()),
    );
    let want = state();
    applier.set_node_addresses(follower.addresses.borrow().clone());
    let (report, view) = applier.apply(Base::Kernel, &want).expect("apply");
    assert_eq!(
        report.digest,
        want.digest(),
        "the contract's digest, as sent"
    );
    assert_eq!(kernel_set(&ns, "SP-NODEPORT-IPS"), ips(&["10.1.0.1"]));
    assert_eq!(kernel_set(&ns, "SP6-NODEPORT-IPS"), ips(&["fd00:1::1"]));
    assert_eq!(expanded(&view), ips(&["10.1.0.1", "fd00:1::1"]));
    let mut held = Verified {
        revision: 1,
        state: want.clone(),
        view,
    };

    // Each address change: the follower sees it, the held state is
    // re-applied over it from its view, and the kernel follows.
    let steps: [(&[&str], NodeAddresses); 4] = [
        // A /32: a second address in 10.1.0.0/24 would be a secondary,
        // which the kernel removes with the primary.
        (
            &["ip", "addr", "add", "10.1.0.2/32", "dev", "eth-a"],
            both(&["10.1.0.1", "10.1.0.2"], &["fd00:1::1"]),
        ),
        (
            &["ip", "addr", "del", "10.1.0.1/24", "dev", "eth-a"],
            both(&["10.1.0.2"], &["fd00:1::1"]),
        ),
        (
            &["ip", "addr", "add", "fd00:1::2/64", "dev", "eth-b", "nodad"],
            both(&["10.1.0.2"], &["fd00:1::1", "fd00:1::2"]),
        ),
        // The ClusterIP on a node interface too: chosen by the CIDR, but a
        // Service's address never serves NodePorts.
        (
            &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "eth-b"],
            both(&["10.1.0.2", VIP], &["fd00:1::1", "fd00:1::2"]),
        ),
    ];
    for (n, (change, chosen)) in steps.into_iter().enumerate() {
        sh(change);
        let changed = Instant::now();
        let next = next_choice(&mut follower, |now| *now == chosen);
        eprintln!(
            "step {n}: seen by the follower after {:?}",
            changed.elapsed()
        );
        assert!(applier.set_node_addresses(next), "step {n}: a change");
        let (report, view) = applier
            .apply(Base::Held(&held), &held.state)
            .unwrap_or_else(|e| panic!("step {n}: {e}"));
        assert_eq!(report.digest, want.digest(), "step {n}");
        let served: BTreeSet<IpAddr> = chosen
            .family(Family::Inet)
            .into_iter()
            .chain(chosen.family(Family::Inet6))
            .flatten()
            .copied()
            .filter(|a| *a != ip(VIP))
            .collect();
        let in_kernel: BTreeSet<IpAddr> = kernel_set(&ns, "SP-NODEPORT-IPS")
            .into_iter()
            .chain(kernel_set(&ns, "SP6-NODEPORT-IPS"))
            .collect();
        assert_eq!(in_kernel, served, "step {n}: the kernel's sets");
        assert_eq!(
            expanded(&view),
            served,
            "step {n}: the NodePort virtual servers"
        );
        held.view = view;
        // The whole kernel read back agrees.
        assert_eq!(applier.verify(&held).expect("verify"), want.digest());
    }
    assert_eq!(
        applier.left_out(),
        LeftOut {
            service_addresses: 1,
            over_limit: 0
        }
    );

    // Nothing changes without a change.
    assert!(!applier.set_node_addresses(follower.addresses.borrow().clone()));
    // Dropping the receiver ends the follower's thread; the namespace can
    // go.
    drop(follower);
}

#[test]
fn a_missing_namespace_is_a_read_error_and_the_follower_starts_empty_handed() {
    let missing = Some("sp-no-such-namespace");
    assert!(read(missing).is_err());
    let failures = Counter::default();
    let follower = follow(
        missing.map(str::to_string),
        "all".parse().expect("flag"),
        failures.clone(),
    );
    assert!(
        follower.addresses.borrow().is_none(),
        "the control plane's list"
    );
    assert!(failures.get() >= 1);
}
