//! Node facts — health checks and node conditions — through every part of
//! the contract: digest, diff and apply, JSON, validation, the kernel view
//! and the text render. They are atoms like the others for the digest and
//! the diff, and absent from what a kernel holds.

use std::collections::BTreeMap;

use serde_json::json;
use setpoint_dataplane::digest::{hash_health_check, hash_node_condition};
use setpoint_dataplane::template::{expand, expand_diff};
use setpoint_dataplane::validate::{
    summary, validate_fragment, validate_node_facts, validate_step,
};
use setpoint_dataplane::{
    Change, Family, Format, HealthCheck, Invalid, NodeCondition, NodeDataplane, Protocol,
    Scheduler, SetType, apply, diff, render,
};

use crate::fixtures::{StateBuilder, mk_health_check, state};

/// A node's kernel state, without facts.
fn kernel() -> StateBuilder {
    state()
        .part("services")
        .set("SP-CLUSTER-IP", SetType::HashIpPort, Family::Inet, 1024)
        .entries("SP-CLUSTER-IP", &["10.96.0.10,tcp:80"])
        .vs(
            Protocol::Tcp,
            "10.96.0.10:80",
            Scheduler::Rr,
            None,
            &[("10.244.1.5:8080", 1)],
        )
        .address("10.96.0.10")
}

/// `kernel()` with a health check and the draining condition in the
/// node's own part.
fn with_facts() -> StateBuilder {
    kernel()
        .part("node/a")
        .health_check(30000, "default/web", 2)
        .health_check(30001, "shop/cart", 0)
        .draining()
}

/// Same versioning rule as `golden`: these literals move only with
/// `DIGEST_DOMAIN`. A state without facts keeps the digest it always had
/// (`golden::digest_is_pinned` holds untouched).
#[test]
fn fact_hashes_are_pinned() {
    let got = [
        hex::encode(hash_health_check(30000, &mk_health_check("default/web", 2))),
        hex::encode(hash_node_condition(NodeCondition::Draining)),
    ];
    let want = [
        "9634c3d6d165dd0bcdd6cb29b3b5ec5bbdec3ebc3f2aa3df22397dbff690cfd5".to_string(),
        "81be79cfefa6f7f8bba79fbc34d4acb7de8bcddce93292d86da1ded8dbb131db".to_string(),
    ];
    assert_eq!(got, want);
}

#[test]
fn every_field_of_a_fact_is_in_its_digest() {
    let base = kernel()
        .part("node/a")
        .health_check(30000, "default/web", 2);
    let digests = [
        base.clone().build(),
        kernel().build(),
        kernel()
            .part("node/a")
            .health_check(30001, "default/web", 2)
            .build(),
        kernel()
            .part("node/a")
            .health_check(30000, "other/web", 2)
            .build(),
        kernel()
            .part("node/a")
            .health_check(30000, "default/web2", 2)
            .build(),
        kernel()
            .part("node/a")
            .health_check(30000, "default/web", 3)
            .build(),
        base.clone().draining().build(),
    ]
    .map(|s| s.digest());
    for (i, a) in digests.iter().enumerate() {
        for b in &digests[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // The split does not matter, as for every atom.
    let moved = kernel().part("zone").health_check(30000, "default/web", 2);
    assert_eq!(moved.build().digest(), digests[0]);
}

#[test]
fn health_checks_and_draining_read_across_parts() {
    let s = kernel()
        .part("node/a")
        .health_check(30001, "shop/cart", 0)
        .part("zone")
        .health_check(30000, "default/web", 2)
        .build();
    let want: BTreeMap<u16, HealthCheck> = [
        (30000, mk_health_check("default/web", 2)),
        (30001, mk_health_check("shop/cart", 0)),
    ]
    .into();
    assert_eq!(s.health_checks(), want);
    assert!(!s.node_draining());
    assert!(with_facts().build().node_draining());
    assert!(kernel().build().health_checks().is_empty());
}

/// Each way a fact changes, as a table: before, after, the changes.
#[test]
fn diff_names_each_fact_change_and_apply_reaches_the_target() {
    let hc = |port: u16, service: &str, n: u32| Change::HealthCheckSet {
        port,
        health_check: mk_health_check(service, n),
    };
    let cases: Vec<(&str, StateBuilder, StateBuilder, Vec<Change>)> = vec![
        (
            "added",
            kernel(),
            with_facts(),
            vec![
                hc(30000, "default/web", 2),
                hc(30001, "shop/cart", 0),
                Change::NodeConditionAdded {
                    condition: NodeCondition::Draining,
                },
            ],
        ),
        (
            "count changed",
            with_facts(),
            kernel()
                .part("node/a")
                .health_check(30000, "default/web", 0)
                .health_check(30001, "shop/cart", 0)
                .draining(),
            vec![hc(30000, "default/web", 0)],
        ),
        (
            "removed",
            with_facts(),
            kernel().part("node/a").health_check(30001, "shop/cart", 0),
            vec![
                Change::HealthCheckRemoved { port: 30000 },
                Change::NodeConditionRemoved {
                    condition: NodeCondition::Draining,
                },
            ],
        ),
        ("unchanged", with_facts(), with_facts(), vec![]),
    ];
    for (name, before, after, want) in cases {
        let (a, b) = (before.build(), after.build());
        let d = diff(&a, &b);
        assert_eq!(d.changes, want, "{name}");
        assert!(d.changes.iter().all(|c| !c.is_kernel()), "{name}");
        assert_eq!(apply(&a, &d), Ok(b.clone()), "{name}");
        assert_eq!(a == b, a.digest() == b.digest(), "{name}");
    }
    // Strict like every change: a removal of what is not there fails.
    let d = diff(&with_facts().build(), &kernel().build());
    assert!(apply(&kernel().build(), &d).is_err());
}

#[test]
fn json_carries_facts_and_leaves_them_out_when_there_are_none() {
    let s = with_facts().build();
    let v = serde_json::to_value(&s).expect("serialise");
    assert_eq!(
        v["health_checks"],
        json!([
            {"port": 30000, "namespace": "default", "name": "web", "local_endpoints": 2},
            {"port": 30001, "namespace": "shop", "name": "cart", "local_endpoints": 0},
        ])
    );
    assert_eq!(v["node_conditions"], json!(["draining"]));
    let back: NodeDataplane = serde_json::from_value(v).expect("deserialise");
    assert_eq!(back, s);
    assert_eq!(back.digest(), s.digest());
    assert_eq!(back.health_checks(), s.health_checks());
    assert!(back.node_draining());

    // A state without facts writes neither key: its JSON is what it was.
    let v = serde_json::to_value(kernel().build()).expect("serialise");
    assert!(v.get("health_checks").is_none() && v.get("node_conditions").is_none());

    // A repeated port is refused like any repeated atom; so is a tampered
    // count (the digest says so).
    let mut v = serde_json::to_value(&s).expect("serialise");
    v["health_checks"][1]["port"] = json!(30000);
    assert!(serde_json::from_value::<NodeDataplane>(v).is_err());
    let mut v = serde_json::to_value(&s).expect("serialise");
    v["health_checks"][0]["local_endpoints"] = json!(5);
    assert!(serde_json::from_value::<NodeDataplane>(v).is_err());
    let mut v = serde_json::to_value(&s).expect("serialise");
    v["node_conditions"] = json!(["asleep"]);
    assert!(serde_json::from_value::<NodeDataplane>(v).is_err());
}

#[test]
fn the_kernel_view_holds_no_facts() {
    let (a, b) = (kernel().build(), with_facts().build());
    let view = expand(&a.flatten()).expect("expands");
    assert_eq!(expand(&b.flatten()).expect("expands"), view);
    // The kernel's side of a step that only changes facts is empty.
    let kernel_diff = expand_diff(&view, &diff(&a, &b)).expect("no address change");
    assert!(kernel_diff.is_empty(), "{kernel_diff:?}");
    assert_eq!(
        expand_diff(&view, &diff(&b, &a)).expect("no address change"),
        Default::default()
    );
}

/// Each refusal as a table: the facts added to a valid kernel state and
/// what `validate` reports.
#[test]
fn facts_are_bounded() {
    let long = |n: usize| "a".repeat(n);
    let hc = |port: u16, namespace: &str, name: &str| {
        kernel()
            .part("node/a")
            .health_check(port, &format!("{namespace}/{name}"), 1)
    };
    let cases: Vec<(&str, StateBuilder, Vec<Invalid>)> = vec![
        ("valid", with_facts(), vec![]),
        (
            "longest names",
            hc(30000, &long(63), &format!("{}.{}", long(63), long(189))),
            vec![],
        ),
        (
            "port 0",
            hc(0, "default", "web"),
            vec![Invalid::HealthCheckPortZero],
        ),
        (
            "namespace too long",
            hc(30000, &long(64), "web"),
            vec![Invalid::HealthCheckNamespaceMalformed {
                port: 30000,
                namespace: long(64),
            }],
        ),
        (
            "namespace with a dot",
            hc(30000, "a.b", "web"),
            vec![Invalid::HealthCheckNamespaceMalformed {
                port: 30000,
                namespace: "a.b".into(),
            }],
        ),
        (
            "empty namespace",
            hc(30000, "", "web"),
            vec![Invalid::HealthCheckNamespaceMalformed {
                port: 30000,
                namespace: String::new(),
            }],
        ),
        (
            "name too long",
            hc(30000, "default", &format!("{}.{}", long(63), long(190))),
            vec![Invalid::HealthCheckNameMalformed {
                port: 30000,
                name: format!("{}.{}", long(63), long(190)),
            }],
        ),
        (
            "name with upper case",
            hc(30000, "default", "Web"),
            vec![Invalid::HealthCheckNameMalformed {
                port: 30000,
                name: "Web".into(),
            }],
        ),
        (
            "name with a newline",
            hc(30000, "default", "web\n"),
            vec![Invalid::HealthCheckNameMalformed {
                port: 30000,
                name: "web\n".into(),
            }],
        ),
        (
            "a port in two parts",
            hc(30000, "default", "web")
                .part("zone")
                .health_check(30000, "default/web", 2),
            vec![
                Invalid::DuplicatedAcrossParts { atoms: 1 },
                Invalid::HealthCheckPortRepeated {
                    port: 30000,
                    parts: 2,
                },
            ],
        ),
    ];
    for (name, facts, want) in cases {
        let s = facts.build();
        assert_eq!(s.validate(), want, "{name}");
        // The agent's check of the facts alone says the same (but for
        // disjointness, which is the whole state's).
        let mut alone = want.clone();
        alone.retain(|p| !matches!(p, Invalid::DuplicatedAcrossParts { .. }));
        assert_eq!(validate_node_facts(&s), alone, "{name}");
        // A fragment holding them is checked too, and a step adding them.
        let flat = s.flatten();
        let port_problems: Vec<Invalid> = alone
            .iter()
            .filter(|p| !matches!(p, Invalid::HealthCheckPortRepeated { .. }))
            .cloned()
            .collect();
        assert_eq!(validate_fragment(&flat), port_problems, "{name}");
        let step = diff(&kernel().build(), &s);
        assert_eq!(validate_step(&flat, &step), port_problems, "{name}");
    }
    let problems = hc(0, "default", &"x\n".repeat(200)).build().validate();
    for line in summary(&problems).lines() {
        assert!(line.len() < 400, "{line}");
    }
    assert_eq!(summary(&problems).lines().count(), 1);
}

#[test]
fn text_lists_facts_only_when_there_are_any() {
    let text = render(&with_facts().build(), Format::Text);
    assert!(
        text.ends_with(
            "\n# health checks\n  30000 default/web 2 local endpoints\n  30001 shop/cart 0 local endpoints\n\n# node\n  draining\n"
        ),
        "{text}"
    );
    let plain = render(&kernel().build(), Format::Text);
    assert!(!plain.contains("# health checks") && !plain.contains("# node"));
    // Renders of the kernel's view leave them out.
    for format in [Format::Ipset, Format::Iptables, Format::Ipvs] {
        assert_eq!(
            render(&with_facts().build(), format),
            render(&kernel().build(), format)
        );
    }
}
