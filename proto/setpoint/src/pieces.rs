//! Large control messages as a run of small [`Piece`]s, and their
//! reassembly.
//!
//! tonic keeps, per stream and for the stream's whole life, an encode
//! buffer (sender) and a decode buffer (receiver) as large as the largest
//! message the stream ever carried. One 5 MB snapshot per agent thus pins
//! 5 MB on each side for as long as the agent stays connected: 25 GB over
//! 5,000 agents. Splitting bounds both buffers by [`PIECE_BYTES`].

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::v1::control_message::Body;
use crate::v1::{ControlMessage, Piece};
use crate::{MAX_REASSEMBLED_BYTES, PROTOCOL_VERSION};

/// The largest piece's data. Small enough that thousands of streams'
/// buffers stay small, large enough that a 5 MB snapshot is a few hundred
/// messages.
pub const PIECE_BYTES: usize = 16 * 1024;

/// Whether `message` goes out whole (at most `piece_bytes` encoded): what
/// [`into_pieces`] would return alone.
pub fn fits_one_piece(message: &ControlMessage, piece_bytes: usize) -> bool {
    message.encoded_len() <= piece_bytes.max(1)
}

/// `message` as it goes on the wire: itself when its encoding fits in
/// `piece_bytes`, else pieces of its encoding (slices of one buffer).
pub fn into_pieces(message: ControlMessage, piece_bytes: usize) -> Vec<ControlMessage> {
    let len = message.encoded_len();
    let piece_bytes = piece_bytes.max(1);
    if len <= piece_bytes {
        return vec![message];
    }
    let mut buf = BytesMut::with_capacity(len);
    // Cannot fail: the buffer was sized to the encoding.
    if message.encode(&mut buf).is_err() {
        return vec![message];
    }
    let encoded: Bytes = buf.freeze();
    let count = len.div_ceil(piece_bytes);
    let Ok(count32) = u32::try_from(count) else {
        return vec![message];
    };
    (0..count)
        .map(|i| {
            let data = encoded.slice(i * piece_bytes..((i + 1) * piece_bytes).min(len));
            ControlMessage {
                protocol_version: PROTOCOL_VERSION,
                body: Some(Body::Piece(Piece {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    count: count32,
                    data,
                })),
                traceparent: String::new(),
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceError {
    #[error("piece {index} of {count} arrived where piece {expected} was due")]
    OutOfOrder {
        index: u32,
        count: u32,
        expected: u32,
    },
    #[error("piece {index} says the message has {count} pieces, earlier ones said {earlier}")]
    CountChanged {
        index: u32,
        count: u32,
        earlier: u32,
    },
    #[error("a piece says its message has no pieces")]
    NoPieces,
    #[error("reassembled message exceeds {MAX_REASSEMBLED_BYTES} bytes")]
    TooLarge,
    #[error("a whole message arrived while piece {expected} of {count} was due")]
    Interrupted { expected: u32, count: u32 },
    #[error("reassembled message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("reassembled message is itself a piece")]
    Nested,
}

/// Receives messages in stream order and hands back whole ones: a
/// message that is not a piece passes through; pieces are collected until
/// the last, then decoded.
#[derive(Default)]
pub struct Reassembly {
    buf: Vec<u8>,
    /// (next index due, count) while a message is being collected.
    due: Option<(u32, u32)>,
}

impl Reassembly {
    pub fn push(&mut self, message: ControlMessage) -> Result<Option<ControlMessage>, PieceError> {
        let piece = match message.body {
            Some(Body::Piece(piece)) => piece,
            _ => {
                if let Some((expected, count)) = self.due {
                    self.reset();
                    return Err(PieceError::Interrupted { expected, count });
                }
                return Ok(Some(message));
            }
        };
        let (expected, count) = self.due.unwrap_or((0, piece.count));
        if piece.count == 0 {
            self.reset();
            return Err(PieceError::NoPieces);
        }
        if piece.index != expected {
            self.reset();
            return Err(PieceError::OutOfOrder {
                index: piece.index,
                count: piece.count,
                expected,
            });
        }
        if piece.count != count {
            self.reset();
            return Err(PieceError::CountChanged {
                index: piece.index,
                count: piece.count,
                earlier: count,
            });
        }
        if self.buf.len() + piece.data.len() > MAX_REASSEMBLED_BYTES {
            self.reset();
            return Err(PieceError::TooLarge);
        }
        self.buf.extend_from_slice(&piece.data);
        if piece.index + 1 < count {
            self.due = Some((piece.index + 1, count));
            return Ok(None);
        }
        let whole = ControlMessage::decode(self.buf.as_slice());
        self.reset();
        let whole = whole?;
        if matches!(whole.body, Some(Body::Piece(_))) {
            return Err(PieceError::Nested);
        }
        Ok(Some(whole))
    }

    fn reset(&mut self) {
        // Dropped, not cleared: an idle stream keeps no snapshot-sized buffer.
        self.buf = Vec::new();
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Heartbeat, Snapshot};
    use proptest::prelude::*;

    fn snapshot(bytes: usize) -> ControlMessage {
        ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            body: Some(Body::Snapshot(Snapshot {
                revision: 7,
                digest: vec![9; 32],
                state: (0..bytes).map(|i| (i % 251) as u8).collect(),
                encoding: "test".into(),
            })),
            traceparent: "00-abc".into(),
        }
    }

    fn heartbeat() -> ControlMessage {
        ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            body: Some(Body::Heartbeat(Heartbeat { unix_millis: 1 })),
            traceparent: String::new(),
        }
    }

    fn piece(index: u32, count: u32, data: &[u8]) -> ControlMessage {
        ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            body: Some(Body::Piece(Piece {
                index,
                count,
                data: Bytes::copy_from_slice(data),
            })),
            traceparent: String::new(),
        }
    }

    proptest! {
        #[test]
        fn pieces_reassemble_to_the_message(bytes in 0usize..5000, piece_bytes in 1usize..700) {
            let m = snapshot(bytes);
            let pieces = into_pieces(m.clone(), piece_bytes);
            let mut r = Reassembly::default();
            let mut out = Vec::new();
            for p in pieces.iter().cloned() {
                let encoded = p.encoded_len();
                // A piece's data is at most piece_bytes (plus a few bytes of framing).
                prop_assert!(pieces.len() == 1 || encoded <= piece_bytes + 16, "{encoded}");
                out.extend(r.push(p).map_err(|e| TestCaseError::fail(e.to_string()))?);
            }
            prop_assert_eq!(out, vec![m]);
            // A whole message after a reassembled one passes through.
            prop_assert_eq!(r.push(heartbeat()), Ok(Some(heartbeat())));
        }
    }

    #[test]
    fn a_snapshot_of_megabytes_becomes_pieces_of_the_bound() {
        let m = snapshot(5_000_000);
        let pieces = into_pieces(m.clone(), PIECE_BYTES);
        assert_eq!(pieces.len(), m.encoded_len().div_ceil(PIECE_BYTES));
        assert!(pieces.iter().all(|p| p.encoded_len() <= PIECE_BYTES + 16));
        assert_eq!(into_pieces(heartbeat(), PIECE_BYTES), vec![heartbeat()]);
    }

    #[test]
    fn broken_runs_of_pieces_are_errors_and_the_next_run_still_works() {
        let encoded = snapshot(100).encode_to_vec();
        let (a, b) = encoded.split_at(40);
        let cases: Vec<(Vec<ControlMessage>, PieceError)> = vec![
            (
                vec![piece(1, 2, b)],
                PieceError::OutOfOrder {
                    index: 1,
                    count: 2,
                    expected: 0,
                },
            ),
            (
                vec![piece(0, 2, a), piece(0, 2, a)],
                PieceError::OutOfOrder {
                    index: 0,
                    count: 2,
                    expected: 1,
                },
            ),
            (
                vec![piece(0, 2, a), piece(1, 3, b)],
                PieceError::CountChanged {
                    index: 1,
                    count: 3,
                    earlier: 2,
                },
            ),
            (vec![piece(0, 0, a)], PieceError::NoPieces),
            (
                vec![piece(0, 2, a), heartbeat()],
                PieceError::Interrupted {
                    expected: 1,
                    count: 2,
                },
            ),
            (
                vec![piece(0, 1, &piece(0, 1, b"x").encode_to_vec())],
                PieceError::Nested,
            ),
        ];
        for (run, want) in cases {
            let mut r = Reassembly::default();
            let mut got = None;
            for m in run {
                if let Err(e) = r.push(m) {
                    got = Some(e);
                    break;
                }
            }
            assert_eq!(got.as_ref(), Some(&want), "{want}");
            // After an error the next message starts afresh.
            assert_eq!(
                r.push(piece(0, 2, a)).and_then(|_| r.push(piece(1, 2, b))),
                Ok(Some(snapshot(100)))
            );
        }
        let mut r = Reassembly::default();
        let garbage = r.push(piece(0, 1, &[0xff, 0xff, 0xff]));
        assert!(matches!(garbage, Err(PieceError::Decode(_))), "{garbage:?}");
    }
}
