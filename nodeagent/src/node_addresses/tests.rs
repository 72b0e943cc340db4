use std::sync::Arc;

use setpoint_dataplane::{
    Protocol, RealServer, Scheduler, SetSpec, SetType, VirtualServer, VirtualServerKey,
};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn ips(texts: &[&str]) -> BTreeSet<IpAddr> {
    texts.iter().map(|t| ip(t)).collect()
}

#[test]
fn flag_values_parse_as_kube_proxy_reads_them() {
    use NodePortAddresses::*;
    use Selector::*;
    let net = |t: &str| t.parse::<IpNet>().expect("net");
    let local = |inet, inet6| Local { inet, inet6 };
    let table: [(&str, Result<NodePortAddresses, FlagError>); 14] = [
        ("primary", Ok(Primary)),
        ("all", Ok(local(All, All))),
        (" all ", Ok(local(All, All))),
        ("0.0.0.0/0,::/0", Ok(local(All, All))),
        (
            "10.0.0.0/8,fd00::/64",
            Ok(local(
                Within(vec![net("10.0.0.0/8")]),
                Within(vec![net("fd00::/64")]),
            )),
        ),
        // A family no CIDR names is all of that family (kube-proxy).
        (
            "10.0.0.0/8, 192.168.0.0/16",
            Ok(local(
                Within(vec![net("10.0.0.0/8"), net("192.168.0.0/16")]),
                All,
            )),
        ),
        ("fd00::/64", Ok(local(All, Within(vec![net("fd00::/64")])))),
        // A zero CIDR among others is all of its family.
        ("10.0.0.0/8,0.0.0.0/0", Ok(local(All, All))),
        // Host bits are dropped, as kube-proxy's sloppy parse does.
        (
            "10.1.2.3/8",
            Ok(local(Within(vec![net("10.0.0.0/8")]), All)),
        ),
        ("", Err(FlagError::Empty)),
        (
            "10.0.0.0/8,",
            Err(FlagError::EmptyItem {
                value: "10.0.0.0/8,".into(),
            }),
        ),
        (
            "primary,10.0.0.0/8",
            Err(FlagError::KeywordInList {
                word: "primary".into(),
            }),
        ),
        (
            "10.0.0.1",
            Err(FlagError::NotCidr {
                item: "10.0.0.1".into(),
                hint: ": an address needs its prefix length, /32 or /128",
            }),
        ),
        (
            "eth0",
            Err(FlagError::NotCidr {
                item: "eth0".into(),
                hint: "",
            }),
        ),
    ];
    for (value, expected) in table {
        assert_eq!(value.parse::<NodePortAddresses>(), expected, "{value:?}");
    }
    // Errors read as an operator needs them.
    let error = "10.0.0.1".parse::<NodePortAddresses>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "`10.0.0.1` is not a CIDR (such as 10.0.0.0/8 or fd00::/64): an address needs its prefix length, /32 or /128"
    );
    // Display gives back a value that parses to the same.
    for value in ["primary", "all", "10.0.0.0/8", "10.0.0.0/8,fd00::/64"] {
        let flag: NodePortAddresses = value.parse().expect("parses");
        assert_eq!(flag.to_string().parse::<NodePortAddresses>(), Ok(flag));
    }
}

const ETH0: u32 = 2;
const ETH1: u32 = 3;
const SERVICE: u32 = 9;

/// A node: eth0 with a public and a private address and an IPv6 global
/// and link-local one, eth1 with another private one, lo, and the service
/// interface holding a ClusterIP and an address eth1 holds too.
fn node() -> Interfaces {
    let on = |ifindex, address: &str| InterfaceAddress {
        ifindex,
        address: ip(address),
    };
    Interfaces {
        addresses: vec![
            on(1, "127.0.0.1"),
            on(1, "::1"),
            on(ETH0, "203.0.113.7"),
            on(ETH0, "10.0.0.11"),
            on(ETH0, "2001:db8::11"),
            on(ETH0, "fe80::1"),
            on(ETH0, "169.254.3.4"),
            on(ETH1, "192.168.10.11"),
            on(ETH1, "fd00::11"),
            on(SERVICE, "10.96.0.10"),
            on(SERVICE, "fd00:96::10"),
            on(SERVICE, "192.168.10.11"),
        ],
        service_ifindex: Some(SERVICE),
    }
}

#[test]
fn selection_by_flag_and_family() {
    let check = |flag: &str, inet: Option<&[&str]>, inet6: Option<&[&str]>| {
        let flag: NodePortAddresses = flag.parse().expect("flag");
        assert_eq!(
            select(&flag, &node()),
            NodeAddresses::new(inet.map(ips), inet6.map(ips)),
            "{flag}"
        );
    };
    // primary: the control plane's list stays in both families.
    check("primary", None, None);
    // all: loopback, link-local (both families) and the service
    // interface's addresses left out; an address another interface also
    // holds stays.
    check(
        "all",
        Some(&["10.0.0.11", "192.168.10.11", "203.0.113.7"]),
        Some(&["2001:db8::11", "fd00::11"]),
    );
    check(
        "10.0.0.0/8,192.168.0.0/16",
        Some(&["10.0.0.11", "192.168.10.11"]),
        Some(&["2001:db8::11", "fd00::11"]),
    );
    check(
        "10.0.0.0/8,fd00::/8",
        Some(&["10.0.0.11"]),
        Some(&["fd00::11"]),
    );
    // A CIDR that holds only the service interface's addresses, or only
    // loopback: nothing, not the control plane's list.
    check("10.96.0.0/12,::1/128", Some(&[]), Some(&[]));
    check("127.0.0.0/8,fe80::/10", Some(&[]), Some(&[]));
    // Without a service interface, its addresses are local addresses.
    let mut bare = node();
    bare.service_ifindex = None;
    let all: NodePortAddresses = "10.96.0.0/12".parse().expect("flag");
    assert_eq!(
        select(&all, &bare).family(Family::Inet),
        Some(&ips(&["10.96.0.10"]))
    );
}

#[test]
fn unusable_addresses_are_what_the_contract_refuses_as_virtual_servers() {
    for (address, why) in [
        ("0.0.0.0", Some("unspecified")),
        ("127.0.0.53", Some("loopback")),
        ("169.254.1.1", Some("link-local")),
        ("224.0.0.1", Some("multicast")),
        ("255.255.255.255", Some("broadcast")),
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("fe80::1", Some("link-local")),
        ("ff02::1", Some("multicast")),
        ("10.0.0.1", None),
        ("100.64.0.1", None),
        ("fd00::1", None),
        ("2001:db8::1", None),
    ] {
        assert_eq!(unusable(&ip(address)), why, "{address}");
    }
}

fn set_spec(family: Family, maxelem: u32) -> SetSpec {
    SetSpec {
        kind: SetType::HashIp,
        family,
        maxelem,
        comment: String::new(),
    }
}

fn vs(backend: &str) -> Arc<VirtualServer> {
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
}

/// A node's state: its own part with the node-port address sets
/// (`maxelem` each, the control plane's entries), a shared part with a
/// NodePort template per family and a Service on `vip`, bound on the
/// service interface.
fn state(maxelem: u32, control_plane: &[&str], vip: &str) -> NodeDataplane {
    let mut own = Fragment::new();
    for family in Family::ALL {
        own.put_set(node_port_address_set(family), set_spec(family, maxelem));
    }
    for address in control_plane {
        let address = ip(address);
        own.add_entry(
            node_port_address_set(Family::of(&address)),
            SetEntry::Ip(address),
        );
    }
    let mut services = Fragment::new();
    let key = |address: &str, port| VirtualServerKey {
        address: ip(address),
        protocol: Protocol::Tcp,
        port,
    };
    services.put_virtual_server(key("0.0.0.0", 30080), vs("10.244.1.5"));
    services.put_virtual_server(key("::", 30080), vs("fd00:244::5"));
    services.put_virtual_server(key(vip, 80), vs("10.244.1.5"));
    services.add_address(ip(vip));
    NodeDataplane::from_parts([
        ("services".to_string(), Arc::new(services)),
        ("node/a".to_string(), Arc::new(own)),
    ])
}

#[test]
fn the_overlay_replaces_the_sets_bounded_and_without_service_addresses() {
    struct Row<'a> {
        local: NodeAddresses,
        maxelem: u32,
        vip: &'static str,
        inet: &'a [&'a str],
        inet6: &'a [&'a str],
        left_out: LeftOut,
    }
    let both = |v4: &[&str], v6: &[&str]| NodeAddresses::new(Some(ips(v4)), Some(ips(v6)));
    let many: Vec<String> = (0..300)
        .map(|i| format!("10.1.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let rows = [
        // Nothing chosen: the control plane's list stays.
        Row {
            local: NodeAddresses::default(),
            maxelem: 1024,
            vip: "10.96.0.10",
            inet: &["192.168.10.11"],
            inet6: &["fd00::11"],
            left_out: LeftOut::default(),
        },
        // Chosen per family; an empty choice empties the set.
        Row {
            local: NodeAddresses::new(Some(ips(&["10.0.0.11", "10.0.0.12"])), None),
            maxelem: 1024,
            vip: "10.96.0.10",
            inet: &["10.0.0.11", "10.0.0.12"],
            inet6: &["fd00::11"],
            left_out: LeftOut::default(),
        },
        Row {
            local: both(&[], &["2001:db8::11"]),
            maxelem: 1024,
            vip: "10.96.0.10",
            inet: &[],
            inet6: &["2001:db8::11"],
            left_out: LeftOut::default(),
        },
        // A local address that is a Service's (an external IP on a node
        // address) is left out.
        Row {
            local: both(&["10.0.0.11", "203.0.113.7"], &[]),
            maxelem: 1024,
            vip: "203.0.113.7",
            inet: &["10.0.0.11"],
            inet6: &[],
            left_out: LeftOut {
                service_addresses: 1,
                over_limit: 0,
            },
        },
        // The set's maxelem bounds it: the lowest addresses stay.
        Row {
            local: both(&["10.0.0.13", "10.0.0.11", "10.0.0.12"], &[]),
            maxelem: 2,
            vip: "10.96.0.10",
            inet: &["10.0.0.11", "10.0.0.12"],
            inet6: &[],
            left_out: LeftOut {
                service_addresses: 0,
                over_limit: 1,
            },
        },
        // So does the agent's own limit.
        Row {
            local: both(&many, &[]),
            maxelem: 65536,
            vip: "10.96.0.10",
            inet: &many[..NODE_PORT_ADDRESS_LIMIT],
            inet6: &[],
            left_out: LeftOut {
                service_addresses: 0,
                over_limit: 300 - NODE_PORT_ADDRESS_LIMIT,
            },
        },
    ];
    for (i, row) in rows.iter().enumerate() {
        let state = state(row.maxelem, &["192.168.10.11", "fd00::11"], row.vip);
        let mut flat = state.flatten();
        let left_out = row.local.overlay(&state, &mut flat);
        assert_eq!(left_out, row.left_out, "row {i}");
        for (family, want) in [(Family::Inet, row.inet), (Family::Inet6, row.inet6)] {
            let got: BTreeSet<IpAddr> =
                setpoint_dataplane::template::node_port_addresses(&flat, family)
                    .into_iter()
                    .collect();
            assert_eq!(got, ips(want), "row {i}, {family:?}");
        }
        // The overlaid state is still valid, and its templates expand over
        // the overlaid addresses.
        let view = setpoint_dataplane::template::expand(&flat).expect("expands");
        let problems = setpoint_dataplane::validate::validate_fragment(&view);
        assert!(problems.is_empty(), "row {i}: {problems:?}");
        let on_30080 = view
            .virtual_servers()
            .filter(|(k, _)| k.port == 30080)
            .count();
        assert_eq!(on_30080, row.inet.len() + row.inet6.len(), "row {i}");
    }
}

#[test]
fn a_state_without_the_set_gets_none() {
    let mut own = Fragment::new();
    own.put_set("SP-OTHER", set_spec(Family::Inet, 1024));
    let state = NodeDataplane::from_fragment(own);
    let local = NodeAddresses::new(Some(ips(&["10.0.0.11"])), Some(ips(&["fd00::11"])));
    assert_eq!(local.entries(&state, Family::Inet), None);
    let mut flat = state.flatten();
    assert_eq!(local.overlay(&state, &mut flat), LeftOut::default());
    assert_eq!(flat, state.flatten());
}
