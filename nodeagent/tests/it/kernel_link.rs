//! The netlink backends against the real kernel, in network namespaces the
//! tests create: service addresses on `lo`, and the IPVS, dummy-link and
//! sysctl paths as far as this kernel has them. Whether it has IPVS or
//! dummy links is read from the kernel after each attempt, so a kernel
//! with them (the qemu VM) runs the same tests down the other branch.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use setpoint_agent::ipvs::{IpvsClient, IpvsError};
use setpoint_agent::link::{LinkClient, LinkError, RequestError};
use setpoint_agent::sysctl::{SysctlError, ensure_ipvs_sysctls, ensure_sysctls};
use setpoint_dataplane::{
    Forward, Protocol, RealServer, Scheduler, VirtualServer, VirtualServerKey,
};
use setpoint_integration::{Netns, require_root_and_tools};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn sysctl_in(ns: &Netns, key: &str) -> String {
    ns.exec(&["cat", &format!("/proc/sys/{key}")], None)
        .expect("read sysctl")
        .trim()
        .to_string()
}

#[test]
fn a_missing_namespace_is_its_own_error() {
    let missing = Some("sp-no-such-namespace");
    assert!(matches!(
        IpvsClient::connect_in(missing),
        Err(IpvsError::Request(RequestError::Netns { .. }))
    ));
    assert!(matches!(
        LinkClient::connect_in(missing),
        Err(LinkError::Request(RequestError::Netns { .. }))
    ));
    assert!(matches!(
        ensure_ipvs_sysctls(missing),
        Err(SysctlError::Netns { .. })
    ));
}

#[test]
fn host_addresses_on_lo_are_added_listed_and_removed() {
    require_root_and_tools();
    let ns = Netns::create("agent-addr").expect("netns");
    let mut link = LinkClient::connect_in(Some(ns.name())).expect("rtnetlink");
    assert_eq!(link.ifindex("sp-absent0").expect("lookup"), None);
    let lo = link.ifindex("lo").expect("lookup").expect("lo exists");

    let before = link.addresses(lo).expect("list");
    assert!(before.contains(&ip("127.0.0.1")), "{before:?}");
    let ours = [ip("10.96.0.10"), ip("fd00::10")];
    for address in ours {
        link.add_address(lo, address).expect("add");
        link.add_address(lo, address).expect("adding twice is fine");
    }
    let with: BTreeSet<IpAddr> = before.iter().copied().chain(ours).collect();
    assert_eq!(link.addresses(lo).expect("list"), with);
    let shown = ns
        .exec(&["ip", "-o", "addr", "show", "dev", "lo"], None)
        .expect("ip addr");
    assert!(
        shown.contains("10.96.0.10/32") && shown.contains("fd00::10/128"),
        "{shown}"
    );

    for address in ours {
        link.del_address(lo, address).expect("delete");
        link.del_address(lo, address)
            .expect("deleting twice is fine");
    }
    // 127.0.0.1 is there as a /8, not as a host address of ours.
    link.del_address(lo, ip("127.0.0.1"))
        .expect("not ours: nothing to do");
    assert_eq!(link.addresses(lo).expect("list"), before);
}

#[test]
fn a_dummy_link_is_created_up_or_refused_as_unsupported() {
    require_root_and_tools();
    let ns = Netns::create("agent-dummy").expect("netns");
    let mut link = LinkClient::connect_in(Some(ns.name())).expect("rtnetlink");
    let result = link.ensure_dummy("setpoint0");
    let has_dummy = Path::new("/sys/module/dummy").exists();
    match result {
        Err(LinkError::Unsupported { name }) => {
            assert!(
                !has_dummy,
                "the kernel has dummy links but creating one failed"
            );
            assert_eq!(name, "setpoint0");
            assert_eq!(link.ifindex("setpoint0").expect("lookup"), None);
        }
        Ok(index) => {
            assert!(has_dummy);
            assert_eq!(link.ensure_dummy("setpoint0").expect("again"), index);
            let shown = ns
                .exec(&["ip", "-o", "link", "show", "setpoint0"], None)
                .expect("ip link");
            assert!(shown.contains("UP"), "{shown}");
            link.add_address(index, ip("10.96.0.1")).expect("add");
            // Without the IPv6 link-local address the kernel gave the link.
            let addresses = link.addresses(index).expect("list");
            assert_eq!(addresses, BTreeSet::from([ip("10.96.0.1")]));
        }
        Err(other) => panic!("neither a dummy link nor Unsupported: {other}"),
    }
}

#[test]
fn ipvs_is_unsupported_without_the_module_and_round_trips_with_it() {
    require_root_and_tools();
    let ns = Netns::create("agent-ipvs").expect("netns");
    let result = IpvsClient::connect_in(Some(ns.name()));
    let has_ipvs = Path::new("/proc/net/ip_vs").exists();
    let mut ipvs = match result {
        Err(IpvsError::Unsupported) => {
            assert!(
                !has_ipvs,
                "the kernel has IPVS but its family was not found"
            );
            return;
        }
        Ok(client) => {
            assert!(has_ipvs);
            client
        }
        Err(other) => panic!("neither an IPVS client nor Unsupported: {other}"),
    };

    // IPVS refuses real servers until an interface is up (KERNEL-VM.md).
    ns.exec(&["ip", "link", "set", "lo", "up"], None)
        .expect("lo up");
    assert!(
        ipvs.services().expect("dump").is_empty(),
        "a fresh namespace has no IPVS"
    );
    let key = VirtualServerKey {
        address: ip("10.96.0.10"),
        protocol: Protocol::Tcp,
        port: 80,
    };
    let rs = |address: &str, weight| RealServer {
        address: ip(address),
        port: 8080,
        weight,
        forward: Forward::Masq,
    };
    let vs = VirtualServer::new(
        Scheduler::Rr,
        Some(10800),
        vec![rs("10.0.1.1", 1), rs("10.0.1.2", 1)],
    );
    ipvs.add_service(&key, &vs).expect("add service");
    assert_eq!(
        ipvs.add_service(&key, &vs).err().and_then(|e| e.errno()),
        Some(libc::EEXIST)
    );
    for real_server in &vs.real_servers {
        ipvs.add_dest(&key, real_server).expect("add real server");
    }
    assert_eq!(ipvs.services().expect("dump").get(&key), Some(&vs));

    ipvs.edit_service(&key, Scheduler::Wrr, None)
        .expect("edit service");
    ipvs.edit_dest(&key, &rs("10.0.1.1", 0)).expect("drain");
    ipvs.del_dest(&key, ip("10.0.1.2"), 8080)
        .expect("delete real server");
    let want = VirtualServer::new(Scheduler::Wrr, None, vec![rs("10.0.1.1", 0)]);
    assert_eq!(ipvs.services().expect("dump").get(&key), Some(&want));
    assert_eq!(
        ipvs.dest_connections(&key).expect("connections"),
        vec![(ip("10.0.1.1"), 8080, 0, 0)]
    );

    ipvs.del_service(&key).expect("delete service");
    assert!(ipvs.services().expect("dump").is_empty());
}

#[test]
fn ipvs_sysctls_touch_nothing_without_ipvs_and_others_are_set_once() {
    require_root_and_tools();
    let ns = Netns::create("agent-sysctl").expect("netns");
    let keys = [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/arp_ignore", "1"),
        ("net/ipv4/conf/all/arp_announce", "2"),
    ];
    let initial: Vec<String> = keys.iter().map(|(key, _)| sysctl_in(&ns, key)).collect();
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host");

    match ensure_ipvs_sysctls(Some(ns.name())) {
        Err(SysctlError::NoIpvs { .. }) => {
            assert!(!Path::new("/proc/net/ip_vs").exists());
            let now: Vec<String> = keys.iter().map(|(key, _)| sysctl_in(&ns, key)).collect();
            assert_eq!(now, initial, "nothing is touched without IPVS");
        }
        Ok(_) => assert_eq!(sysctl_in(&ns, "net/ipv4/vs/conntrack"), "1"),
        Err(other) => panic!("{other}"),
    }

    let ns2 = Netns::create("agent-sysctl").expect("netns");
    let changed = ensure_sysctls(Some(ns2.name()), &keys).expect("set");
    let expected: Vec<(String, String)> = keys
        .iter()
        .zip(&initial)
        .filter(|((_, want), was)| want != was)
        .map(|((key, _), was)| (key.to_string(), was.clone()))
        .collect();
    assert_eq!(changed, expected);
    for (key, want) in keys {
        assert_eq!(sysctl_in(&ns2, key), want, "{key}");
    }
    assert!(
        ensure_sysctls(Some(ns2.name()), &keys)
            .expect("again")
            .is_empty()
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host"),
        host_forward,
        "the agent's own namespace is untouched"
    );
}
