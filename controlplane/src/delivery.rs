//! What one agent's session sends next, as a pure state machine: the
//! session (`stream`) feeds it head changes, acks, nacks and the clock, and
//! does what it answers — read a state, encode a delta or a snapshot, wait.
//!
//! ```text
//!              toward(head): agent holds an older state     ack, same digest
//!  acked: A  ───────────────────────────────────────▶ A→H in flight ──────────▶ acked: H
//!  (or none: snapshot instead of delta)                    │ ack, other digest: acked none (next is a snapshot)
//!                                                          │ nack: acked none, retry after a backoff
//! ```
//!
//! At most one revision is in flight. When the head moves while the agent
//! applies, the next send is one delta from what the agent acked to the
//! newest head: revisions coalesce, nothing queues. A node whose state did
//! not change is confirmed at the new head without a message.

use std::time::{Duration, Instant};

use setpoint_dataplane::{Digest, NodeDataplane};

/// The first retry after a nack; each further nack doubles it.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// A state of the node at a revision: what the agent holds, or was sent.
#[derive(Clone, Debug)]
pub struct Held {
    pub revision: u64,
    pub state: NodeDataplane,
}

/// What to put on the stream.
#[derive(Debug)]
pub enum Outgoing {
    /// The change from what the agent acked.
    Delta { from: Held, to: Held },
    /// The whole state: the agent holds nothing this session trusts.
    Snapshot { to: Held },
}

/// The answer to [`Delivery::toward`].
#[derive(Debug)]
pub enum Next {
    Send(Outgoing),
    /// The node's state is the one the agent holds: it is at `revision`
    /// without a message.
    Unchanged {
        revision: u64,
        digest: Digest,
    },
    /// Not a node of the cluster at this revision: nothing to program (an
    /// empty state would wipe a working node).
    NotANode,
}

/// The answer to an ack of what was sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// The agent holds the revision sent; `round_trip` since it was sent.
    Holds {
        revision: u64,
        round_trip: Option<Duration>,
    },
    /// The agent holds another state than the one sent: start over from a
    /// snapshot.
    HoldsOther,
}

/// An agent's answer to a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nack,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Ack => "ack",
            Answer::Nack => "nack",
        })
    }
}

/// An answer about something this session did not send: the stream ends.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{answer} for revision {revision} which was not sent")]
pub struct NotSent {
    pub answer: Answer,
    pub revision: u64,
}

/// An ack the session cannot take: the stream ends.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckRefused<E: std::fmt::Display> {
    #[error(transparent)]
    NotSent(#[from] NotSent),
    #[error("ack: {0}")]
    Digest(E),
}

#[derive(Debug)]
pub struct Delivery {
    acked: Option<Held>,
    /// The last state sent (the agent holds it once it acks).
    sent: Option<Held>,
    in_flight: Option<(u64, Instant)>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
}

impl Delivery {
    /// A session whose agent holds `confirmed` (its claim, checked against
    /// the store), or nothing this session can trust.
    pub fn new(confirmed: Option<Held>) -> Delivery {
        Delivery {
            acked: confirmed,
            sent: None,
            in_flight: None,
            retry_at: None,
            retry_delay: RETRY_FIRST,
        }
    }

    pub fn acked(&self) -> Option<&Held> {
        self.acked.as_ref()
    }

    /// When the retry after a nack is due.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether something may go out toward `head` now: nothing in flight,
    /// no retry pending, and the agent is not already there. Only then is
    /// the node's state at `head` worth reading.
    pub fn wants(&self, head: u64, now: Instant) -> bool {
        head != 0
            && self.in_flight.is_none()
            && self.retry_at.is_none_or(|t| t <= now)
            && self.acked.as_ref().is_none_or(|a| a.revision < head)
    }

    /// What to do about `head`, whose state for this node is `state`
    /// (`None`: not a node at `head`). What it returns to send counts as
    /// sent at `now`.
    pub fn toward(&mut self, head: u64, state: Option<NodeDataplane>, now: Instant) -> Next {
        let Some(state) = state else {
            if let Some(acked) = self.acked.as_mut() {
                acked.revision = head;
            }
            return Next::NotANode;
        };
        let to = Held {
            revision: head,
            state,
        };
        let send = match &self.acked {
            Some(acked) if acked.state.digest() == to.state.digest() => {
                let digest = to.state.digest();
                self.acked = Some(to);
                return Next::Unchanged {
                    revision: head,
                    digest,
                };
            }
            Some(acked) => Outgoing::Delta {
                from: acked.clone(),
                to: to.clone(),
            },
            None => Outgoing::Snapshot { to: to.clone() },
        };
        self.sent = Some(to);
        self.in_flight = Some((head, now));
        Next::Send(send)
    }

    /// The agent acked `revision` holding a state with `digest` (as it
    /// decoded off the wire).
    pub fn on_ack<E: std::fmt::Display>(
        &mut self,
        revision: u64,
        digest: Result<Digest, E>,
        now: Instant,
    ) -> Result<Acked, AckRefused<E>> {
        let Some(sent) = self.sent.clone().filter(|s| s.revision == revision) else {
            return Err(NotSent {
                answer: Answer::Ack,
                revision,
            }
            .into());
        };
        if digest.map_err(AckRefused::Digest)? != sent.state.digest() {
            self.acked = None;
            self.in_flight = None;
            return Ok(Acked::HoldsOther);
        }
        let round_trip = self
            .in_flight
            .take()
            .map(|(_, since)| now.saturating_duration_since(since));
        self.retry_delay = RETRY_FIRST;
        self.retry_at = None;
        self.acked = Some(sent);
        Ok(Acked::Holds {
            revision,
            round_trip,
        })
    }

    /// The agent could not apply `revision`. The kernel may be anywhere
    /// now: the retry, at the instant returned, is a snapshot.
    pub fn on_nack(&mut self, revision: u64, now: Instant) -> Result<Instant, NotSent> {
        if self.sent.as_ref().is_none_or(|s| s.revision != revision) {
            return Err(NotSent {
                answer: Answer::Nack,
                revision,
            });
        }
        self.in_flight = None;
        self.acked = None;
        let retry_at = now + self.retry_delay;
        self.retry_at = Some(retry_at);
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
        Ok(retry_at)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use setpoint_dataplane::Fragment;

    use super::*;

    /// A distinct state per `n`.
    fn state(n: u8) -> NodeDataplane {
        let mut f = Fragment::new();
        f.add_address(IpAddr::V4(Ipv4Addr::new(10, 96, 0, n)));
        NodeDataplane::from_fragment(f)
    }

    fn held(revision: u64, n: u8) -> Held {
        Held {
            revision,
            state: state(n),
        }
    }

    /// One event of a session and what the machine must answer.
    enum Step {
        /// `toward(head, state n)`; expect the kind of answer.
        Toward(u64, Option<u8>, &'static str),
        Ack(u64, u8, Result<Acked, AckRefused<&'static str>>),
        Nack(u64, Result<Duration, NotSent>),
        /// `wants(head)` after `ms` milliseconds from the start.
        Wants(u64, u64, bool),
        /// The revision the agent holds, as far as the session knows.
        Holds(Option<u64>),
    }
    use Step::*;

    fn kind(next: &Next) -> String {
        match next {
            Next::Send(Outgoing::Delta { from, to }) => {
                format!("delta {}→{}", from.revision, to.revision)
            }
            Next::Send(Outgoing::Snapshot { to }) => format!("snapshot {}", to.revision),
            Next::Unchanged { revision, .. } => format!("unchanged {revision}"),
            Next::NotANode => "not a node".into(),
        }
    }

    fn run(confirmed: Option<Held>, steps: Vec<Step>) {
        let start = Instant::now();
        let mut d = Delivery::new(confirmed);
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Toward(head, n, want) => {
                    let next = d.toward(head, n.map(state), start);
                    assert_eq!(kind(&next), want, "step {i}");
                }
                Ack(revision, n, want) => {
                    let got = d.on_ack::<&str>(revision, Ok(state(n).digest()), start);
                    assert_eq!(got, want, "step {i}");
                }
                Nack(revision, want) => {
                    let got = d.on_nack(revision, start).map(|at| at - start);
                    assert_eq!(got, want, "step {i}");
                }
                Wants(head, ms, want) => {
                    let now = start + Duration::from_millis(ms);
                    assert_eq!(d.wants(head, now), want, "step {i}");
                }
                Holds(want) => assert_eq!(d.acked().map(|a| a.revision), want, "step {i}"),
            }
        }
    }

    fn holds(revision: u64) -> Result<Acked, AckRefused<&'static str>> {
        Ok(Acked::Holds {
            revision,
            round_trip: Some(Duration::ZERO),
        })
    }

    fn not_sent(answer: Answer, revision: u64) -> NotSent {
        NotSent { answer, revision }
    }

    #[test]
    fn sessions_in_tables() {
        let cases: Vec<(&str, Option<Held>, Vec<Step>)> = vec![
            (
                "a new agent gets a snapshot, then deltas",
                None,
                vec![
                    Wants(0, 0, false),
                    Wants(1, 0, true),
                    Toward(1, Some(1), "snapshot 1"),
                    Wants(2, 0, false),
                    Ack(1, 1, holds(1)),
                    Holds(Some(1)),
                    Wants(1, 0, false),
                    Wants(2, 0, true),
                    Toward(2, Some(2), "delta 1→2"),
                    Ack(2, 2, holds(2)),
                    Holds(Some(2)),
                ],
            ),
            (
                "a confirmed reconnect gets a delta",
                Some(held(5, 5)),
                vec![
                    Wants(5, 0, false),
                    Toward(7, Some(7), "delta 5→7"),
                    Ack(7, 7, holds(7)),
                ],
            ),
            (
                "a failover: the survivor trusts the hello, its first commit (the same state) \
                 needs no message, the change after it is one delta from what the agent holds",
                Some(held(5, 5)),
                vec![
                    Wants(5, 0, false),
                    Toward(6, Some(5), "unchanged 6"),
                    Holds(Some(6)),
                    Toward(7, Some(7), "delta 6→7"),
                    Ack(7, 7, holds(7)),
                    Holds(Some(7)),
                ],
            ),
            (
                "revisions coalesce: the head moved twice while one was in flight",
                Some(held(1, 1)),
                vec![
                    Toward(2, Some(2), "delta 1→2"),
                    Wants(3, 0, false),
                    Wants(4, 0, false),
                    Ack(2, 2, holds(2)),
                    Toward(4, Some(4), "delta 2→4"),
                ],
            ),
            (
                "an unchanged node is at the head without a message",
                Some(held(1, 1)),
                vec![
                    Toward(2, Some(1), "unchanged 2"),
                    Holds(Some(2)),
                    Wants(2, 0, false),
                ],
            ),
            (
                "not a node: nothing sent, the held revision follows the head",
                Some(held(1, 1)),
                vec![
                    Toward(3, None, "not a node"),
                    Holds(Some(3)),
                    Wants(3, 0, false),
                ],
            ),
            (
                "not a node and holding nothing: still nothing",
                None,
                vec![
                    Toward(3, None, "not a node"),
                    Holds(None),
                    Wants(3, 0, true),
                ],
            ),
            (
                "an ack with another digest: the next is a snapshot",
                Some(held(1, 1)),
                vec![
                    Toward(2, Some(2), "delta 1→2"),
                    Ack(2, 9, Ok(Acked::HoldsOther)),
                    Holds(None),
                    Wants(2, 0, true),
                    Toward(2, Some(2), "snapshot 2"),
                ],
            ),
            (
                "nacks back off as snapshots, doubling to a cap; an ack resets",
                Some(held(1, 1)),
                vec![
                    Toward(2, Some(2), "delta 1→2"),
                    Nack(2, Ok(RETRY_FIRST)),
                    Holds(None),
                    Wants(2, 499, false),
                    Wants(2, 500, true),
                    Toward(2, Some(2), "snapshot 2"),
                    Nack(2, Ok(RETRY_FIRST * 2)),
                    Toward(2, Some(2), "snapshot 2"),
                    Nack(2, Ok(RETRY_FIRST * 4)),
                    Toward(2, Some(2), "snapshot 2"),
                    Ack(2, 2, holds(2)),
                    Toward(3, Some(3), "delta 2→3"),
                    Nack(3, Ok(RETRY_FIRST)),
                ],
            ),
            (
                "answers about what was not sent end the stream",
                Some(held(1, 1)),
                vec![
                    Ack(1, 1, Err(not_sent(Answer::Ack, 1).into())),
                    Nack(1, Err(not_sent(Answer::Nack, 1))),
                    Toward(2, Some(2), "delta 1→2"),
                    Ack(3, 3, Err(not_sent(Answer::Ack, 3).into())),
                    Nack(3, Err(not_sent(Answer::Nack, 3))),
                    Ack(2, 2, holds(2)),
                ],
            ),
        ];
        for (name, confirmed, steps) in cases {
            eprintln!("case: {name}");
            run(confirmed, steps);
        }
    }

    #[test]
    fn the_retry_delay_is_capped() {
        let start = Instant::now();
        let mut d = Delivery::new(None);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            d.toward(1, Some(state(1)), start);
            last = d.on_nack(1, start).map(|at| at - start).unwrap_or_default();
        }
        assert_eq!(last, RETRY_MAX);
    }

    #[test]
    fn an_unreadable_ack_digest_is_refused_after_the_revision_check() {
        let start = Instant::now();
        let mut d = Delivery::new(None);
        d.toward(1, Some(state(1)), start);
        assert_eq!(
            d.on_ack(2, Err("bad"), start),
            Err(not_sent(Answer::Ack, 2).into()),
            "the revision is checked first"
        );
        assert_eq!(
            d.on_ack(1, Err("bad"), start),
            Err(AckRefused::Digest("bad"))
        );
        assert_eq!(
            AckRefused::<&str>::from(not_sent(Answer::Nack, 4)).to_string(),
            "nack for revision 4 which was not sent"
        );
        let later = start + Duration::from_millis(30);
        assert_eq!(
            d.on_ack::<&str>(1, Ok(state(1).digest()), later),
            Ok(Acked::Holds {
                revision: 1,
                round_trip: Some(Duration::from_millis(30))
            })
        );
    }
}
