//! The W3C `traceparent` a snapshot or delta carries: the control plane's
//! rollout span for that node, which the agent's apply span takes as its
//! remote parent. Only the text format lives here; attaching it to spans
//! is the runtime crate's business.

use std::fmt;

/// `00-<trace id>-<span id>-<flags>`, the only version defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl Traceparent {
    pub const SAMPLED: u8 = 0x01;

    /// A well-formed version-00 value with non-zero ids, else `None`:
    /// the field comes from the other side of the stream, so anything else
    /// is ignored rather than trusted.
    pub fn parse(text: &str) -> Option<Traceparent> {
        let mut fields = text.split('-');
        let (version, trace, span, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if version != "00" || fields.next().is_some() || flags.len() != 2 {
            return None;
        }
        let mut parsed = Traceparent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        hex::decode_to_slice(trace, &mut parsed.trace_id).ok()?;
        hex::decode_to_slice(span, &mut parsed.span_id).ok()?;
        (parsed.trace_id != [0; 16] && parsed.span_id != [0; 8]).then_some(parsed)
    }

    /// The rollout of `revision` to `node`: every node's span of one
    /// revision shares the trace id (derived from the revision, so any
    /// replica derives the same one), each node has its own span id.
    pub fn of_rollout(revision: u64, node: &str) -> Traceparent {
        use sha2::{Digest as _, Sha256};
        let trace = Sha256::digest(format!("setpoint/revision/{revision}"));
        let span = Sha256::digest(format!("setpoint/revision/{revision}/{node}"));
        let mut derived = Traceparent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: Traceparent::SAMPLED,
        };
        derived.trace_id.copy_from_slice(&trace[..16]);
        derived.span_id.copy_from_slice(&span[..8]);
        derived
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn traceparents_parse_or_are_ignored() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parsed = Traceparent::parse(good).expect("valid");
        assert_eq!(
            hex::encode(parsed.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(hex::encode(parsed.span_id), "b7ad6b7169203331");
        assert_eq!(parsed.flags, Traceparent::SAMPLED);
        assert_eq!(parsed.to_string(), good);
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-zz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        ] {
            assert!(Traceparent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_rollout_shares_its_trace_across_nodes() {
        let a = Traceparent::of_rollout(7, "node-a");
        let b = Traceparent::of_rollout(7, "node-b");
        assert_eq!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_ne!(a.trace_id, Traceparent::of_rollout(8, "node-a").trace_id);
        assert_eq!(Traceparent::parse(&a.to_string()), Some(a));
        // The text the control plane has always sent.
        let trace = sha2::Sha256::digest("setpoint/revision/7");
        let span = sha2::Sha256::digest("setpoint/revision/7/node-a");
        let sent = format!(
            "00-{}-{}-01",
            hex::encode(&trace[..16]),
            hex::encode(&span[..8])
        );
        assert_eq!(a.to_string(), sent);
    }
}
