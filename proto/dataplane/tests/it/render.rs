//! The renderings: `ipset restore`, `iptables-restore`, `ipvsadm-save`,
//! JSON (with its corruption checks), and `SetEntry` text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use setpoint_dataplane::{
    Diff, Family, Format, Forward, NodeDataplane, Protocol, RealServer, Scheduler, SetEntry,
    SetType, Table, VirtualServer, apply, render,
};

use crate::fixtures::{StateBuilder, entry, ip, mk_vs_key, state};

/// Compares line by line so that a failure shows the first differing line.
fn assert_text(got: &str, want: &str) {
    let (g, w): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(g, w, "got:\n{got}");
    assert_eq!(got, want, "trailing newline differs");
}

// --- ipset -----------------------------------------------------------------

#[test]
fn ipset_creates_then_adds_per_set() {
    let state = state()
        .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries(
            "KUBE-CLUSTER-IP",
            &["10.96.0.10,tcp:80", "10.96.0.1,tcp:443"],
        )
        .set(
            "KUBE-NODE-PORT-TCP",
            SetType::BitmapPort,
            Family::Inet,
            65536,
        )
        .entries("KUBE-NODE-PORT-TCP", &["30080"])
        .set(
            "KUBE6-LOOP-BACK",
            SetType::HashIpPortIp,
            Family::Inet6,
            1024,
        )
        .entries("KUBE6-LOOP-BACK", &["fd00:10::5,udp:53,fd00:10::5"])
        .set("KUBE-EMPTY", SetType::HashIp, Family::Inet, 16)
        .build();
    assert_text(
        &render(&state, Format::Ipset),
        "\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
create KUBE-EMPTY hash:ip family inet hashsize 1024 maxelem 16
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE6-LOOP-BACK hash:ip,port,ip family inet6 hashsize 1024 maxelem 1024
add KUBE6-LOOP-BACK fd00:10::5,udp:53,fd00:10::5
",
    );
}

#[test]
fn ipset_prints_host_nets_without_prefix() {
    let state = state()
        .set("KUBE-LB-SOURCE", SetType::HashNet, Family::Inet, 1024)
        .entries(
            "KUBE-LB-SOURCE",
            &["10.0.0.1/32", "10.0.0.2/32 nomatch", "10.244.0.0/16"],
        )
        .set("KUBE6-LB-SOURCE", SetType::HashNet, Family::Inet6, 1024)
        .entries("KUBE6-LB-SOURCE", &["fd00::1/128", "fd00:10::/64 nomatch"])
        .build();
    assert_text(
        &render(&state, Format::Ipset),
        "\
create KUBE-LB-SOURCE hash:net family inet hashsize 1024 maxelem 1024
add KUBE-LB-SOURCE 10.0.0.1
add KUBE-LB-SOURCE 10.0.0.2 nomatch
add KUBE-LB-SOURCE 10.244.0.0/16
create KUBE6-LB-SOURCE hash:net family inet6 hashsize 1024 maxelem 1024
add KUBE6-LB-SOURCE fd00::1
add KUBE6-LB-SOURCE fd00:10::/64 nomatch
",
    );
}

// --- iptables ------------------------------------------------------------------

const SVC: &str = "SETPOINT-SERVICES";
const SVC_WEB: &str = "SETPOINT-SVC-WEB";

fn dual_stack_rules() -> StateBuilder {
    state()
        .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .chain(
            Family::Inet,
            Table::Nat,
            SVC,
            &[&[
                "-m",
                "comment",
                "--comment",
                "default/web:http cluster IP",
                "-m",
                "set",
                "--match-set",
                "KUBE-CLUSTER-IP",
                "dst,dst",
                "-j",
                SVC_WEB,
            ]],
        )
        .chain(
            Family::Inet,
            Table::Nat,
            SVC_WEB,
            &[
                &[
                    "-m",
                    "comment",
                    "--comment",
                    "say \"hi\" \\ bye",
                    "-j",
                    "MARK",
                    "--or-mark",
                    "0x4000",
                ],
                &[
                    "-p",
                    "tcp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "10.244.1.5:8080",
                ],
            ],
        )
        .chain(
            Family::Inet,
            Table::Filter,
            "SETPOINT-FW",
            &[
                &["-m", "comment", "--comment", "x\"y\\z", "-j", "RETURN"],
                &["-m", "comment", "--comment", "", "-j", "RETURN"],
                &["-j", "ACCEPT"],
            ],
        )
        .chain(Family::Inet, Table::Raw, "SETPOINT-NOTRACK", &[])
        .jump(
            Family::Inet,
            Table::Nat,
            "PREROUTING",
            0,
            &[
                "-m",
                "comment",
                "--comment",
                "setpoint service portals",
                "-j",
                SVC,
            ],
        )
        .jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-j", SVC])
        .jump(Family::Inet, Table::Nat, "PREROUTING", 7, &["-j", SVC_WEB])
        .jump(
            Family::Inet,
            Table::Filter,
            "INPUT",
            0,
            &["-j", "SETPOINT-FW"],
        )
        .chain(
            Family::Inet6,
            Table::Nat,
            "SETPOINT6-SERVICES",
            &[&["-d", "fd00::10/128", "-j", "ACCEPT"]],
        )
        .jump(
            Family::Inet6,
            Table::Nat,
            "PREROUTING",
            0,
            &["-j", "SETPOINT6-SERVICES"],
        )
}

#[test]
fn iptables_restore_declares_fills_and_jumps() {
    assert_text(
        &render(&dual_stack_rules().build(), Format::Iptables),
        r#"*raw
:SETPOINT-NOTRACK - [0:0]
COMMIT
*nat
:SETPOINT-SERVICES - [0:0]
:SETPOINT-SVC-WEB - [0:0]
-A SETPOINT-SERVICES -m comment --comment "default/web:http cluster IP" -m set --match-set KUBE-CLUSTER-IP dst,dst -j SETPOINT-SVC-WEB
-A SETPOINT-SVC-WEB -m comment --comment "say \"hi\" \\ bye" -j MARK --or-mark 0x4000
-A SETPOINT-SVC-WEB -p tcp -j DNAT --to-destination 10.244.1.5:8080
-I OUTPUT 1 -j SETPOINT-SERVICES
-I PREROUTING 1 -m comment --comment "setpoint service portals" -j SETPOINT-SERVICES
-I PREROUTING 2 -j SETPOINT-SVC-WEB
COMMIT
*filter
:SETPOINT-FW - [0:0]
-A SETPOINT-FW -m comment --comment "x\"y\\z" -j RETURN
-A SETPOINT-FW -m comment --comment "" -j RETURN
-A SETPOINT-FW -j ACCEPT
-I INPUT 1 -j SETPOINT-FW
COMMIT
"#,
    );
}

#[test]
fn ip6tables_restore_has_only_inet6_chains() {
    let state = dual_stack_rules().build();
    let v6 = render(&state, Format::Ip6tables);
    assert_text(
        &v6,
        "\
*nat
:SETPOINT6-SERVICES - [0:0]
-A SETPOINT6-SERVICES -d fd00::10/128 -j ACCEPT
-I PREROUTING 1 -j SETPOINT6-SERVICES
COMMIT
",
    );
    let v4 = render(&state, Format::Iptables);
    assert!(!v4.contains("SETPOINT6"), "{v4}");
    for name in [SVC, SVC_WEB, "SETPOINT-FW", "SETPOINT-NOTRACK"] {
        assert!(!v6.contains(name), "{name} in\n{v6}");
    }
    assert_eq!(render(&NodeDataplane::new(), Format::Ip6tables), "");
}

// --- IPVS --------------------------------------------------------------------

#[test]
fn ipvsadm_save_lines() {
    let routed = RealServer {
        address: ip("10.244.1.7"),
        port: 9000,
        weight: 0,
        forward: Forward::Route,
    };
    let tunnelled = RealServer {
        address: ip("10.244.2.7"),
        port: 9000,
        weight: 3,
        forward: Forward::Tunnel,
    };
    let state = state()
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            None,
            &[("10.244.2.7:8080", 1), ("10.244.1.5:8080", 1)],
        )
        .vs(
            Protocol::Udp,
            "10.96.0.10:53",
            Scheduler::Rr,
            Some(1800),
            &[("10.244.1.6:53", 1)],
        )
        .put_vs(
            mk_vs_key(Protocol::Sctp, "10.96.0.10:9000"),
            Arc::new(VirtualServer::new(
                Scheduler::Sh,
                None,
                vec![tunnelled, routed],
            )),
        )
        .vs(
            Protocol::Tcp,
            "[fd00::10]:80",
            Scheduler::Wrr,
            None,
            &[("[fd00:10::5]:8080", 2)],
        )
        .vs(Protocol::Tcp, "192.168.1.1:30080", Scheduler::Mh, None, &[])
        .build();
    assert_text(
        &render(&state, Format::Ipvs),
        "\
-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.2.7:8080 -m -w 1
-A -u 10.96.0.10:53 -s rr -p 1800
-a -u 10.96.0.10:53 -r 10.244.1.6:53 -m -w 1
-A --sctp-service 10.96.0.10:9000 -s sh
-a --sctp-service 10.96.0.10:9000 -r 10.244.1.7:9000 -g -w 0
-a --sctp-service 10.96.0.10:9000 -r 10.244.2.7:9000 -i -w 3
-A -t 192.168.1.1:30080 -s mh
-A -t [fd00::10]:80 -s wrr
-a -t [fd00::10]:80 -r [fd00:10::5]:8080 -m -w 2
",
    );
}

// --- JSON --------------------------------------------------------------------

fn sample() -> NodeDataplane {
    state()
        .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries(
            "KUBE-CLUSTER-IP",
            &["10.96.0.10,tcp:80", "10.96.0.1,tcp:443"],
        )
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            Some(10800),
            &[("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1)],
        )
        .address("10.96.0.10")
        .address("fd00::10")
        .chain(Family::Inet, Table::Nat, SVC, &[&["-j", "ACCEPT"]])
        .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC])
        .build()
}

fn to_value(state: &NodeDataplane) -> Value {
    serde_json::to_value(state).expect("serialise state")
}

fn from_value(value: Value) -> Result<NodeDataplane, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[test]
fn json_round_trips() {
    let state = sample();
    let text = render(&state, Format::Json);
    let back: NodeDataplane = serde_json::from_str(&text).expect("parse rendered JSON");
    assert_eq!(back, state);
    assert_eq!(back.digest(), state.digest());
    assert_eq!(render(&back, Format::Json), text);

    let v = to_value(&state);
    assert_eq!(v["digest"], json!(state.digest().to_string()));
    assert_eq!(
        v["sets"][0]["entries"],
        json!(["10.96.0.1,tcp:443", "10.96.0.10,tcp:80"])
    );
    assert_eq!(v["sets"][0]["type"], json!("hash:ip,port"));
    assert_eq!(v["addresses"], json!(["10.96.0.10", "fd00::10"]));
    assert_eq!(v["virtual_servers"][0]["persistence_timeout"], json!(10800));
    assert!(v.get("foreign_entries").is_none(), "{v:#}");
}

#[test]
fn json_of_a_split_state_is_the_json_of_its_union() {
    let split = state()
        .part("cluster")
        .set("KUBE-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 65536)
        .entries("KUBE-CLUSTER-IP", &["10.96.0.1,tcp:443"])
        .chain(Family::Inet, Table::Nat, SVC, &[&["-j", "ACCEPT"]])
        .address("fd00::10")
        .part("node")
        .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC])
        .entries("KUBE-CLUSTER-IP", &["10.96.0.10,tcp:80"])
        .address("10.96.0.10")
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            Some(10800),
            &[("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1)],
        )
        .build();
    assert_eq!(to_value(&split), to_value(&sample()));
}

#[test]
fn json_keeps_entries_of_sets_defined_elsewhere() {
    // A partial state (one fragment's worth) may hold entries whose set is
    // defined in another fragment.
    let partial = state()
        .entries("KUBE-CLUSTER-IP", &["10.96.0.10,tcp:80"])
        .build();
    let v = to_value(&partial);
    assert_eq!(
        v["foreign_entries"],
        json!({"KUBE-CLUSTER-IP": ["10.96.0.10,tcp:80"]})
    );
    let back = from_value(v).expect("partial state");
    assert_eq!(back, partial);
    assert_eq!(back.digest(), partial.digest());
}

#[test]
fn json_with_a_tampered_digest_is_refused() {
    let state = sample();
    let mut v = to_value(&state);
    let good = state.digest().to_string();
    let flipped = if good.starts_with('0') { "1" } else { "0" };
    let bad = format!("{flipped}{}", &good[1..]);
    v["digest"] = json!(bad);
    let err = from_value(v).unwrap_err();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(err.contains(&good) && err.contains(&bad), "{err}");

    let mut v = to_value(&state);
    v["digest"] = json!("not hex");
    let err = from_value(v).unwrap_err();
    assert!(err.contains("digest \"not hex\""), "{err}");
}

#[test]
fn json_with_tampered_content_is_refused() {
    let mut v = to_value(&sample());
    v["addresses"][0] = json!("10.96.0.99");
    let err = from_value(v).unwrap_err();
    assert!(err.contains("digest mismatch"), "{err}");

    let mut v = to_value(&sample());
    v["virtual_servers"][0]["real_servers"][0]["weight"] = json!(100);
    let err = from_value(v).unwrap_err();
    assert!(err.contains("digest mismatch"), "{err}");
}

#[test]
fn json_with_a_duplicated_atom_is_refused() {
    let state = sample();
    let n = state.atom_count();
    let distinct = format!("state lists {} atoms but only {n} are distinct", n + 1);

    let mut v = to_value(&state);
    let first = v["sets"][0]["entries"][0].clone();
    v["sets"][0]["entries"]
        .as_array_mut()
        .expect("entries")
        .push(first);
    assert_eq!(from_value(v).unwrap_err(), distinct);

    let mut v = to_value(&state);
    let first = v["addresses"][0].clone();
    v["addresses"]
        .as_array_mut()
        .expect("addresses")
        .push(first);
    assert_eq!(from_value(v).unwrap_err(), distinct);

    let mut v = to_value(&state);
    let first = v["virtual_servers"][0].clone();
    v["virtual_servers"]
        .as_array_mut()
        .expect("virtual servers")
        .push(first);
    assert_eq!(from_value(v).unwrap_err(), distinct);
}

#[test]
fn json_with_a_bad_entry_names_it() {
    let mut v = to_value(&sample());
    v["sets"][0]["entries"][0] = json!("10.96.0.1,tcp");
    let err = from_value(v).unwrap_err();
    assert!(err.contains("set entry \"10.96.0.1,tcp\""), "{err}");
}

/// A `Diff` read from the wire must hold canonical virtual servers (real
/// servers sorted, no duplicates), as `VirtualServer::new` builds them.
#[test]
fn diff_from_the_wire_holds_canonical_virtual_servers() {
    let change = json!([{
        "change": "virtual_server_added",
        "key": {"address": "10.96.0.10", "protocol": "tcp", "port": 80},
        "virtual_server": {
            "scheduler": "rr",
            "real_servers": [
                {"address": "10.244.2.7", "port": 8080, "weight": 1},
                {"address": "10.244.1.5", "port": 8080, "weight": 1},
                {"address": "10.244.1.5", "port": 8080, "weight": 5},
            ],
        },
    }]);
    let diff: Diff = serde_json::from_value(change).expect("diff");
    let applied = apply(&NodeDataplane::new(), &diff).expect("apply");
    let expected = state()
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1)],
        )
        .build();
    let key = mk_vs_key(Protocol::Tcp, "10.96.0.10:80");
    let vs = applied.flatten().virtual_server(&key).cloned().expect("vs");
    assert!(vs.real_server(ip("10.244.1.5"), 8080).is_some());
    assert_eq!(applied, expected);
    assert_eq!(applied.digest(), expected.digest());
}

// --- text --------------------------------------------------------------------

#[test]
fn text_overview_leads_with_the_digest() {
    let state = sample();
    let text = render(&state, Format::Text);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("digest {}", state.digest()).as_str())
    );
    assert_eq!(
        lines.next(),
        Some("1 sets, 1 virtual servers, 2 addresses, 1 chains, 1 jumps")
    );
}

#[test]
fn format_names_parse() {
    for (name, format) in [
        ("json", Format::Json),
        ("ipset", Format::Ipset),
        ("iptables", Format::Iptables),
        ("ip6tables", Format::Ip6tables),
        ("ipvs", Format::Ipvs),
        ("text", Format::Text),
    ] {
        assert_eq!(name.parse::<Format>(), Ok(format));
        assert!(Format::NAMES.contains(name));
    }
    let err = "yaml".parse::<Format>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown format \"yaml\" (expected json, ipset, iptables, ip6tables, ipvs or text)"
    );
    assert!(
        err.contains("\"yaml\"")
            && err.contains(Format::NAMES.split(',').next().unwrap_or_default())
    );
}

// --- SetEntry text -------------------------------------------------------------

#[test]
fn set_entries_print_as_ipset_does() {
    let cases = [
        (SetEntry::Ip(ip("10.96.0.10")), "10.96.0.10"),
        (
            SetEntry::IpPort {
                ip: ip("fd00::10"),
                protocol: Protocol::Udp,
                port: 53,
            },
            "fd00::10,udp:53",
        ),
        (
            SetEntry::IpPortIp {
                ip: ip("10.244.1.5"),
                protocol: Protocol::Sctp,
                port: 9000,
                ip2: ip("10.244.1.5"),
            },
            "10.244.1.5,sctp:9000,10.244.1.5",
        ),
        (
            SetEntry::IpPortNet {
                ip: ip("10.96.0.10"),
                protocol: Protocol::Tcp,
                port: 80,
                net: "10.244.0.0/16".parse().expect("net"),
            },
            "10.96.0.10,tcp:80,10.244.0.0/16",
        ),
        (
            SetEntry::Net {
                net: "10.0.0.1/32".parse().expect("net"),
                nomatch: true,
            },
            "10.0.0.1/32 nomatch",
        ),
        (SetEntry::Port(30080), "30080"),
    ];
    for (value, text) in cases {
        assert_eq!(value.to_string(), text);
        assert_eq!(text.parse::<SetEntry>(), Ok(value));
    }
    // Upper-case protocols as some tools print them.
    assert_eq!(entry("10.96.0.10,TCP:80"), entry("10.96.0.10,tcp:80"));
}

#[test]
fn malformed_set_entries_are_refused_with_the_text() {
    for bad in [
        "",
        "10.96.0.10,tcp",
        "10.96.0.10,icmp:0",
        "10.96.0.10,tcp:65536",
        "10.96.0.10,tcp:80,10.0.0.1,x",
        "10.0.0.0/33",
        "10.0.0.1 nomatch",
        "99999",
        "host.example",
    ] {
        let err = bad
            .parse::<SetEntry>()
            .expect_err(&format!("{bad:?} parsed"));
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "{bad:?} gave error {err:?}"
        );
    }
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    any::<IpAddr>()
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<Ipv4Addr>(), 0..=32u8)
            .prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).expect("prefix in range"))),
        (any::<Ipv6Addr>(), 0..=128u8)
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).expect("prefix in range"))),
    ]
}

fn arb_entry() -> impl Strategy<Value = SetEntry> {
    let proto = || select(Protocol::ALL.to_vec());
    prop_oneof![
        arb_ip().prop_map(SetEntry::Ip),
        (arb_ip(), proto(), any::<u16>()).prop_map(|(ip, protocol, port)| SetEntry::IpPort {
            ip,
            protocol,
            port
        }),
        (arb_ip(), proto(), any::<u16>(), arb_ip()).prop_map(|(ip, protocol, port, ip2)| {
            SetEntry::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            }
        }),
        (arb_ip(), proto(), any::<u16>(), arb_net()).prop_map(|(ip, protocol, port, net)| {
            SetEntry::IpPortNet {
                ip,
                protocol,
                port,
                net,
            }
        }),
        (arb_net(), any::<bool>()).prop_map(|(net, nomatch)| SetEntry::Net { net, nomatch }),
        any::<u16>().prop_map(SetEntry::Port),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn set_entry_text_round_trips(e in arb_entry()) {
        let text = e.to_string();
        prop_assert_eq!(text.parse::<SetEntry>(), Ok(e.clone()), "{}", text);
        let json = serde_json::to_string(&e).expect("serialise entry");
        prop_assert_eq!(json.clone(), serde_json::to_string(&text).expect("string"));
        let back: SetEntry = serde_json::from_str(&json).expect("deserialise entry");
        prop_assert_eq!(back, e);
    }
}
