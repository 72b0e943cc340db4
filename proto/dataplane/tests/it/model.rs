//! Canonical forms of the atoms that the digest and diff rely on.

use setpoint_dataplane::{Forward, RealServer, Scheduler, VirtualServer};

use crate::fixtures::{ip, mk_rs, mk_rule};

fn addrs(vs: &VirtualServer) -> Vec<(String, u16, u32)> {
    vs.real_servers
        .iter()
        .map(|r| (r.address.to_string(), r.port, r.weight))
        .collect()
}

#[test]
fn virtual_server_sorts_real_servers_by_address_and_port() {
    let vs = VirtualServer::new(
        Scheduler::Rr,
        None,
        vec![
            mk_rs("[fd00:10::5]:80", 1),
            mk_rs("10.244.2.7:8080", 1),
            mk_rs("10.244.1.5:8443", 1),
            mk_rs("10.244.1.5:8080", 1),
        ],
    );
    assert_eq!(
        addrs(&vs),
        [
            ("10.244.1.5".to_string(), 8080, 1),
            ("10.244.1.5".to_string(), 8443, 1),
            ("10.244.2.7".to_string(), 8080, 1),
            ("fd00:10::5".to_string(), 80, 1),
        ]
    );
    assert_eq!(
        vs.real_server(ip("10.244.2.7"), 8080).map(|r| r.weight),
        Some(1)
    );
    assert!(vs.real_server(ip("10.244.2.7"), 8443).is_none());
    assert!(vs.settings_only().real_servers.is_empty());
    assert!(vs.settings_only().same_settings(&vs));
}

#[test]
fn virtual_server_keeps_one_real_server_per_address_and_port() {
    let vs = VirtualServer::new(
        Scheduler::Rr,
        None,
        vec![
            mk_rs("10.244.1.5:8080", 1),
            mk_rs("10.244.1.5:8080", 1),
            mk_rs("10.244.1.5:8080", 1),
        ],
    );
    assert_eq!(vs.real_servers.len(), 1);
}

/// `VirtualServer::new` documents that "of two real servers with the same
/// address and port the first is kept".
#[test]
fn virtual_server_keeps_the_first_of_duplicate_real_servers() {
    let heavy = RealServer {
        address: ip("10.244.1.5"),
        port: 8080,
        weight: 5,
        forward: Forward::Masq,
    };
    let light = RealServer { weight: 1, ..heavy };
    let routed = RealServer {
        forward: Forward::Route,
        weight: 0,
        ..heavy
    };
    let vs = VirtualServer::new(Scheduler::Rr, None, vec![heavy, light, routed]);
    assert_eq!(vs.real_servers, [heavy]);
    let vs = VirtualServer::new(Scheduler::Rr, None, vec![light, heavy]);
    assert_eq!(vs.real_servers, [light]);
}

#[test]
fn rules_name_their_sets_and_target() {
    let cases: &[(&[&str], &[&str], Option<&str>)] = &[
        (&["-j", "ACCEPT"], &[], Some("ACCEPT")),
        (&["-g", "SETPOINT-SVC-WEB"], &[], Some("SETPOINT-SVC-WEB")),
        (
            &[
                "-m",
                "set",
                "--match-set",
                "A",
                "dst,dst",
                "-m",
                "set",
                "!",
                "--match-set",
                "B",
                "src",
                "-j",
                "SETPOINT-FW",
            ],
            &["A", "B"],
            Some("SETPOINT-FW"),
        ),
        // A comment is one token, however it reads.
        (
            &[
                "-m",
                "comment",
                "--comment",
                "-j X --match-set Y",
                "-j",
                "DROP",
            ],
            &[],
            Some("DROP"),
        ),
        (&["-p", "tcp", "--dport", "80"], &[], None),
    ];
    for (args, sets, target) in cases {
        let rule = mk_rule(args);
        let got: Vec<&str> = rule.referenced_sets().collect();
        assert_eq!(got, *sets, "{args:?}");
        assert_eq!(rule.target(), *target, "{args:?}");
    }
}

/// The hand-written key order is the derived order of (address, protocol, port).
#[test]
fn virtual_server_keys_order_like_their_fields() {
    use proptest::prelude::*;
    use setpoint_dataplane::{Protocol, VirtualServerKey};
    use std::net::IpAddr;
    let ip = prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::from(std::net::Ipv6Addr::from(v))),
        Just(IpAddr::from([10, 0, 0, 1])),
    ];
    let proto = prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ];
    let key = (ip, proto, any::<u16>()).prop_map(|(address, protocol, port)| VirtualServerKey {
        address,
        protocol,
        port,
    });
    proptest!(|(a in key.clone(), b in key)| {
        prop_assert_eq!(a.cmp(&b), (a.address, a.protocol, a.port).cmp(&(b.address, b.protocol, b.port)));
    });
}
