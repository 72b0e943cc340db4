//! The agent ⇄ control plane protocol (`v1/agent.proto`), and how its
//! payloads carry the contract: states and diffs in the contract's JSON
//! encoding (snapshot parts deflated for agents that accept it, see
//! [`parts`]), digests as their 32 bytes. Also the operators' admin API
//! (`v1/admin.proto`, module [`admin`]).

pub mod v1 {
    tonic::include_proto!("setpoint.v1");
}

/// The admin API (`v1/admin.proto`): revisions, show, diff, status,
/// rollback, pause, resume.
pub mod admin {
    tonic::include_proto!("setpoint.admin.v1");
}

pub mod parts;
pub mod pieces;
pub mod traceparent;

use setpoint_dataplane::{Diff, Digest, NodeDataplane};

/// Major version of the protocol; a peer speaking another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest message the control plane decodes from an agent. Agents
/// send only hello, acks, nacks and heartbeats; anything larger is
/// refused before it is decoded (the store keeps a nack's text shorter
/// still).
pub const MAX_UPSTREAM_MESSAGE_BYTES: usize = 64 * 1024;
/// The most an agent puts in a nack's error text (cut at a character,
/// control characters blanked): a nack listing many problems must still
/// fit [`MAX_UPSTREAM_MESSAGE_BYTES`], or the control plane would end the
/// stream without recording why, and the agent would be sent the same
/// state again forever.
pub const MAX_NACK_TEXT_BYTES: usize = 4 * 1024;
/// The largest message an agent decodes off the wire: gRPC's usual
/// 4 MiB. States and deltas over [`pieces::PIECE_BYTES`] travel as pieces,
/// bounded as a whole by [`MAX_REASSEMBLED_BYTES`].
pub const MAX_DOWNSTREAM_MESSAGE_BYTES: usize = 4 << 20;
/// The largest message reassembled from pieces. gRPC's usual 4 MiB is
/// below a snapshot of a 10,000-Service cluster; an agent refusing its
/// snapshot would reconnect and be sent it again forever.
pub const MAX_REASSEMBLED_BYTES: usize = 1 << 30;
/// The most a compact payload's parts inflate to, all parts together
/// (each part is also held to the length it declares). The same bound as a
/// JSON payload's, so both encodings carry the same states; a part that
/// declares more, or inflates past what it declares, is refused before
/// more is inflated (a decompression bomb costs its declared length at
/// most, never more than this).
pub const MAX_INFLATED_BYTES: usize = MAX_REASSEMBLED_BYTES;
/// The old single limit, kept for the admin client until it takes a limit
/// of its own.
pub const MAX_MESSAGE_BYTES: usize = MAX_REASSEMBLED_BYTES;
pub const STATE_ENCODING: &str = "setpoint.state.v1+json";
pub const DIFF_ENCODING: &str = "setpoint.diff.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown payload encoding {0:?}")]
    Encoding(String),
    #[error("payload does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("digest is {0} bytes, not 32")]
    DigestLength(usize),
    #[error("the state's content has digest {content}, the message says {claimed}")]
    DigestMismatch { content: Digest, claimed: Digest },
    #[error("compact payload does not decode: {0}")]
    Frame(#[from] prost::DecodeError),
    #[error(
        "part {part:?} declares {declared} bytes once inflated, over the {left} bytes left of the payload's limit ({MAX_INFLATED_BYTES}); not inflated"
    )]
    InflatedTooLarge {
        part: String,
        declared: u64,
        left: usize,
    },
    #[error("part {part:?} inflates past the {declared} bytes it declares; refused")]
    InflatesPastDeclared { part: String, declared: usize },
    #[error("part {part:?} inflates to {got} bytes, it declares {declared}")]
    InflatedShort {
        part: String,
        got: usize,
        declared: usize,
    },
    #[error("part {part:?} does not inflate: {reason}")]
    Inflate { part: String, reason: String },
}

pub fn digest_bytes(d: &Digest) -> Vec<u8> {
    d.0.to_vec()
}

pub fn digest_from(bytes: &[u8]) -> Result<Digest, PayloadError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| PayloadError::DigestLength(bytes.len()))?;
    Ok(Digest(array))
}

pub fn snapshot(revision: u64, state: &NodeDataplane) -> Result<v1::Snapshot, PayloadError> {
    Ok(v1::Snapshot {
        revision,
        digest: digest_bytes(&state.digest()),
        state: serde_json::to_vec(state)?,
        encoding: STATE_ENCODING.to_string(),
    })
}

/// The state a snapshot carries, checked against the digest it claims.
pub fn snapshot_state(s: &v1::Snapshot) -> Result<NodeDataplane, PayloadError> {
    if s.encoding != STATE_ENCODING {
        return Err(PayloadError::Encoding(s.encoding.clone()));
    }
    let state: NodeDataplane = serde_json::from_slice(&s.state)?;
    let claimed = digest_from(&s.digest)?;
    let content = state.digest();
    if content != claimed {
        return Err(PayloadError::DigestMismatch { content, claimed });
    }
    Ok(state)
}

pub fn delta(from: u64, to: u64, diff: &Diff, digest: &Digest) -> Result<v1::Delta, PayloadError> {
    Ok(v1::Delta {
        from_revision: from,
        to_revision: to,
        digest: digest_bytes(digest),
        changes: serde_json::to_vec(diff)?,
        encoding: DIFF_ENCODING.to_string(),
    })
}

pub fn delta_changes(d: &v1::Delta) -> Result<(Diff, Digest), PayloadError> {
    if d.encoding != DIFF_ENCODING {
        return Err(PayloadError::Encoding(d.encoding.clone()));
    }
    Ok((serde_json::from_slice(&d.changes)?, digest_from(&d.digest)?))
}

/// A fragment with one `hash:ip` set named `set` holding `ips` (those that
/// parse). For tests, here and in the crates that speak the protocol.
#[doc(hidden)]
pub fn example_fragment(set: &str, ips: &[&str]) -> setpoint_dataplane::Fragment {
    use setpoint_dataplane::{Family, SetEntry, SetSpec, SetType};
    let mut f = setpoint_dataplane::Fragment::new();
    f.put_set(
        set,
        SetSpec {
            kind: SetType::HashIp,
            family: Family::Inet,
            maxelem: 1024,
            comment: String::new(),
        },
    );
    for ip in ips.iter().filter_map(|ip| ip.parse().ok()) {
        f.add_entry(set, SetEntry::Ip(ip));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use setpoint_dataplane::diff;

    fn state(ips: &[&str]) -> NodeDataplane {
        NodeDataplane::from_fragment(example_fragment("SP-X", ips))
    }

    #[test]
    fn snapshots_and_deltas_round_trip() {
        let (a, b) = (state(&["10.0.0.1"]), state(&["10.0.0.1", "10.0.0.2"]));
        let s = snapshot(7, &b).expect("encodes");
        assert_eq!(snapshot_state(&s).expect("decodes"), b);
        let d = delta(6, 7, &diff(&a, &b), &b.digest()).expect("encodes");
        let (changes, digest) = delta_changes(&d).expect("decodes");
        assert_eq!(digest, b.digest());
        assert_eq!(setpoint_dataplane::apply(&a, &changes).expect("applies"), b);
        assert!(
            d.changes.len() < 200,
            "one entry is a small delta: {}",
            d.changes.len()
        );
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut s = snapshot(1, &state(&["10.0.0.1"])).expect("encodes");
        s.digest = digest_bytes(&state(&[]).digest());
        assert!(matches!(
            snapshot_state(&s),
            Err(PayloadError::DigestMismatch { .. })
        ));
        s.digest = vec![1, 2, 3];
        assert!(matches!(
            snapshot_state(&s),
            Err(PayloadError::DigestLength(3))
        ));
        s.encoding = "xml".into();
        assert!(matches!(snapshot_state(&s), Err(PayloadError::Encoding(_))));
        let mut d = delta(1, 2, &Diff::default(), &state(&[]).digest()).expect("encodes");
        d.changes = b"{not json".to_vec();
        assert!(matches!(delta_changes(&d), Err(PayloadError::Decode(_))));
    }
}
