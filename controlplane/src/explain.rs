//! The admin API's `Explain`: a request's 5-tuple checked and turned into
//! a [`Packet`], the node's state read from the store, and
//! [`setpoint_dataplane::explain::explain`] (pure) rendered as text and
//! JSON; beside it, what compute refused about the destination address
//! ([`problems`]), which only the leader knows.

use std::net::IpAddr;
use std::str::FromStr;

use setpoint_dataplane::explain::{Explanation, Origin, Packet, explain, render_text};
use setpoint_dataplane::{NodeDataplane, Protocol};
use setpoint_proto::admin::{AddressProblem, ExplainRequest, ExplainResponse};

use crate::leader::AddressProblems;

/// Why a request does not describe a packet; the text names the field.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PacketError {
    #[error("{what} {text:?} is not an IP address")]
    NotAnAddress { what: &'static str, text: String },
    #[error("{what} {value} is not a port (0 to 65535)")]
    NotAPort { what: &'static str, value: u32 },
    #[error("a destination port is required")]
    NoDestinationPort,
    #[error("{0}")]
    Protocol(<Protocol as FromStr>::Err),
    #[error("{0}")]
    Origin(<Origin as FromStr>::Err),
}

/// The packet a request describes; a bad field is an error naming it.
pub fn packet(request: &ExplainRequest) -> Result<Packet, PacketError> {
    let ip = |what: &'static str, text: &str| {
        text.trim()
            .parse::<IpAddr>()
            .map_err(|_| PacketError::NotAnAddress {
                what,
                text: text.to_string(),
            })
    };
    let port = |what: &'static str, value: u32| {
        u16::try_from(value).map_err(|_| PacketError::NotAPort { what, value })
    };
    let protocol = match request.protocol.as_str() {
        "" => Protocol::Tcp,
        p => p.parse().map_err(PacketError::Protocol)?,
    };
    let dst_port = port("the destination port", request.dst_port)?;
    if dst_port == 0 {
        return Err(PacketError::NoDestinationPort);
    }
    Ok(Packet {
        protocol,
        src: ip("the source", &request.src_ip)?,
        src_port: match port("the source port", request.src_port)? {
            0 => None,
            p => Some(p),
        },
        dst: ip("the destination", &request.dst_ip)?,
        dst_port,
        from: request
            .from
            .parse::<Origin>()
            .map_err(PacketError::Origin)?,
    })
}

/// Why a packet cannot be explained on a state.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The walk refused the packet (its addresses are of different
    /// families, say): the explainer's own words.
    #[error("{0}")]
    Unexplainable(String),
    #[error("encoding the explanation: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// Explains `packet` on `state`, as the RPC answers.
pub fn respond(
    state: &NodeDataplane,
    packet: &Packet,
    revision: u64,
) -> Result<ExplainResponse, RespondError> {
    let explanation: Explanation =
        explain(state, packet).map_err(|e| RespondError::Unexplainable(e.to_string()))?;
    let json = serde_json::to_string_pretty(&explanation)?;
    Ok(ExplainResponse {
        revision,
        text: render_text(&explanation),
        json,
        verdict: explanation.verdict.as_str().to_string(),
        problems: Vec::new(),
        problems_unknown: String::new(),
        problems_omitted: 0,
    })
}

/// At most this many problems are listed for one address; the rest are
/// counted.
pub const MAX_PROBLEMS: usize = 100;

/// Why the compute problems about an address cannot be listed: only the
/// leader knows them, for its latest computation. The text is what
/// `problems_unknown` in the RPC's answer says.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProblemsUnknown {
    #[error(
        "this replica does not lead: only the leader knows what compute refused; \
         ask the replica holding the leader lock"
    )]
    NotLeading,
    #[error("the leader has not computed a revision yet")]
    NotComputed,
    #[error(
        "the leader knows what compute refused for revision {latest} (its latest) only, \
         not for revision {asked}"
    )]
    OtherRevision { latest: u64, asked: u64 },
}

/// The compute problems about `dst` when explaining `revision` (at most
/// [`MAX_PROBLEMS`], and how many more there are), or why they cannot be
/// listed. The leader keeps them for its latest computation
/// only (in memory, not in the store): a follower, a leader that has not
/// computed yet and any other revision get a reason instead.
pub fn problems(
    leading: bool,
    published: Option<&AddressProblems>,
    revision: u64,
    dst: IpAddr,
) -> Result<(Vec<AddressProblem>, u64), ProblemsUnknown> {
    if !leading {
        return Err(ProblemsUnknown::NotLeading);
    }
    let Some(published) = published else {
        return Err(ProblemsUnknown::NotComputed);
    };
    if published.revision != revision {
        return Err(ProblemsUnknown::OtherRevision {
            latest: published.revision,
            asked: revision,
        });
    }
    let mut concerning = published.concerning(dst);
    let listed = concerning
        .by_ref()
        .take(MAX_PROBLEMS)
        .map(|p| AddressProblem {
            service: p.service.clone(),
            addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
            reason: p.reason.to_string(),
            text: p.text.clone(),
        })
        .collect();
    Ok((listed, concerning.count() as u64))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use setpoint_compute::Index;
    use setpoint_dataplane::explain::Verdict;

    use super::*;

    fn example_state(node: &str) -> NodeDataplane {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let report = setpoint_source::load_path(&examples).expect("the examples load");
        let mut index = Index::new(Default::default());
        for object in report.objects {
            index.upsert(object);
        }
        index.commit();
        index.node_state(node).expect("the node is computed")
    }

    fn request(from: &str, proto: &str, src: &str, dst: &str, port: u32) -> ExplainRequest {
        ExplainRequest {
            node: "node-a".into(),
            revision: 0,
            protocol: proto.into(),
            src_ip: src.into(),
            src_port: 40000,
            dst_ip: dst.into(),
            dst_port: port,
            from: from.into(),
        }
    }

    /// One row: a packet on node-a, the verdict, set entries that must be
    /// among the hits, and words the reason or a matched rule must hold.
    struct Row {
        name: &'static str,
        packet: ExplainRequest,
        verdict: Verdict,
        sets: &'static [(&'static str, &'static str)],
        words: &'static [&'static str],
    }

    fn check(state: &NodeDataplane, row: &Row) {
        let packet = packet(&row.packet).expect("the packet parses");
        let e = explain(state, &packet).expect("explains");
        let text = render_text(&e);
        assert_eq!(e.verdict, row.verdict, "{}:\n{text}", row.name);
        for (set, entry) in row.sets {
            assert!(
                e.sets.iter().any(|h| h.set == *set && h.entry == *entry),
                "{}: no hit {set} {entry}:\n{text}",
                row.name
            );
        }
        for word in row.words {
            assert!(text.contains(word), "{}: no {word:?} in:\n{text}", row.name);
        }
        // The JSON carries the same.
        let json = respond(state, &packet, 7).expect("responds");
        assert_eq!(json.verdict, row.verdict.as_str());
        let value: serde_json::Value = serde_json::from_str(&json.json).expect("json");
        assert_eq!(value["verdict"], row.verdict.as_str(), "{}", row.name);
    }

    #[test]
    fn explains_the_example_cluster() {
        let state = example_state("node-a");
        let rows = [
            Row {
                name: "a cluster IP with endpoints: IPVS to both echo pods",
                packet: request("pod", "tcp", "10.244.1.20", "10.96.1.20", 80),
                verdict: Verdict::Dnat,
                sets: &[("SP-CLUSTER-IP", "10.96.1.20,tcp:80")],
                words: &[
                    "virtual server: 10.96.1.20:80/tcp scheduler rr",
                    "10.244.1.21:8080",
                    "10.244.3.21:8080",
                    "SP-SERVICES#8  -m set --match-set SP-CLUSTER-IP dst,dst -j ACCEPT  [match]",
                    "filter INPUT:",
                ],
            },
            Row {
                name: "a NodePort on the node's address: its template's virtual server",
                packet: request("outside", "tcp", "198.51.100.7", "192.168.10.11", 30080),
                verdict: Verdict::Dnat,
                sets: &[],
                words: &[
                    "virtual server: 192.168.10.11:30080/tcp",
                    "10.244.1.21:8080",
                ],
            },
            Row {
                name: "a Service without endpoints: rejected",
                packet: request("pod", "tcp", "10.244.1.20", "10.96.10.70", 80),
                verdict: Verdict::Reject,
                sets: &[("SP-NO-ENDPOINTS", "10.96.10.70,tcp:80")],
                words: &["service has no endpoints"],
            },
            Row {
                name: "a service address on a port that is no service: filtered",
                packet: request("pod", "tcp", "10.244.1.20", "10.96.1.20", 81),
                verdict: Verdict::Reject,
                sets: &[("SP-IPVS-IPS", "10.96.1.20")],
                words: &[
                    "SP-IPVS-FILTER",
                    "service addresses answer on service ports only",
                ],
            },
            Row {
                name: "a pod in default to a shop pod: default-deny drops it",
                packet: request("outside", "tcp", "10.244.3.21", "10.244.1.11", 8080),
                verdict: Verdict::Drop,
                sets: &[],
                words: &["SP-POLICY", "SP-I-", "DROP"],
            },
            Row {
                name: "a shop pod to a shop pod: allowed by allow-same-namespace",
                packet: request("outside", "tcp", "10.244.3.10", "10.244.1.11", 8080),
                verdict: Verdict::NotSetpoint,
                sets: &[],
                words: &["SP-I-", "RETURN  [match]"],
            },
            Row {
                name: "the node's own traffic to its pods is always allowed",
                packet: request("node", "tcp", "192.168.10.11", "10.244.1.11", 8080),
                verdict: Verdict::NotSetpoint,
                sets: &[],
                words: &["--src-type LOCAL -j RETURN  [match]"],
            },
        ];
        for row in &rows {
            check(&state, row);
        }
    }

    #[test]
    fn problems_are_listed_only_for_the_leaders_revision() {
        use crate::leader::{AddressProblem, AddressProblems};
        let hijack = AddressProblem {
            service: "aaa/hijack".into(),
            addresses: vec!["10.96.0.1".parse().expect("ip")],
            reason: "ClusterIp",
            text: "Service aaa/hijack: external IP 10.96.0.1 is not served".into(),
        };
        let published = AddressProblems {
            revision: 7,
            problems: std::sync::Arc::new(vec![hijack.clone()]),
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let (listed, omitted) =
            problems(true, Some(&published), 7, ip("10.96.0.1")).expect("listed");
        assert_eq!(omitted, 0);
        assert_eq!(
            listed
                .iter()
                .map(|p| (p.service.as_str(), p.addresses.clone(), p.reason.as_str()))
                .collect::<Vec<_>>(),
            [("aaa/hijack", vec!["10.96.0.1".to_string()], "ClusterIp")]
        );
        assert_eq!(
            problems(true, Some(&published), 7, ip("10.96.0.2")),
            Ok((vec![], 0))
        );
        // Many Services claiming one address: a bounded answer, counted.
        let many = AddressProblems {
            revision: 7,
            problems: std::sync::Arc::new(vec![hijack; MAX_PROBLEMS + 5]),
        };
        let (listed, omitted) = problems(true, Some(&many), 7, ip("10.96.0.1")).expect("listed");
        assert_eq!((listed.len(), omitted), (MAX_PROBLEMS, 5));
        for (leading, published, revision, says) in [
            (false, Some(&published), 7, "does not lead"),
            (true, None, 7, "not computed"),
            (true, Some(&published), 6, "revision 7 (its latest) only"),
        ] {
            let why = problems(leading, published, revision, ip("10.96.0.1"))
                .expect_err("unknown")
                .to_string();
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn a_source_port_rule_is_not_guessed() {
        let state = example_state("node-a");
        let mut r = request("pod", "tcp", "10.244.1.20", "10.96.1.20", 80);
        r.src_port = 0;
        let e = explain(&state, &packet(&r).expect("parses")).expect("explains");
        // Setpoint's rules never match source ports: nothing is unknown.
        assert_eq!(e.verdict, Verdict::Dnat);
        assert_eq!(e.not_evaluated, Vec::<String>::new());
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let good = request("pod", "tcp", "10.244.1.20", "10.96.1.20", 80);
        for (mutate, why) in [
            (
                Box::new(|r: &mut ExplainRequest| r.src_ip = "nope".into())
                    as Box<dyn Fn(&mut ExplainRequest)>,
                "not an IP address",
            ),
            (Box::new(|r| r.dst_port = 70000), "not a port"),
            (Box::new(|r| r.dst_port = 0), "destination port is required"),
            (Box::new(|r| r.protocol = "icmp".into()), "unknown protocol"),
            (Box::new(|r| r.from = "mars".into()), "unknown origin"),
        ] {
            let mut r = good.clone();
            mutate(&mut r);
            let e = packet(&r).expect_err("refused").to_string();
            assert!(e.contains(why), "{e}");
        }
        let mixed = request("pod", "tcp", "fd00::1", "10.96.1.20", 80);
        let p = packet(&mixed).expect("parses");
        assert!(explain(&example_state("node-a"), &p).is_err());
    }
}
