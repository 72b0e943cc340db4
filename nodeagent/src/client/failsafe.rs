//! The fail-safe, the one exception to fail static: a revision may cut
//! the node's own path to the control plane, and then no later revision
//! could ever replace it. When the stream is lost within `window` of
//! applying revision R, the state before R was proven good (the control
//! plane was heard from while it was held), and the control plane is not
//! back within `after`, the agent goes back to that state by itself —
//! once: it refuses R's state from then on, until it restarts (a nack
//! naming the fail-safe), and never steps back further.

use std::time::{Duration, Instant};

use setpoint_dataplane::{Digest, NodeDataplane};

/// When the agent returns to the previous state by itself (see the module
/// doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailsafeConfig {
    /// Losing the stream this soon after applying a revision arms the
    /// fail-safe; later, the control plane is simply away.
    pub window: Duration,
    /// How long the control plane may stay unreachable after such a loss
    /// before the agent reverts.
    pub after: Duration,
}

impl Default for FailsafeConfig {
    fn default() -> Self {
        FailsafeConfig {
            window: Duration::from_secs(120),
            after: Duration::from_secs(30),
        }
    }
}

/// A state the kernel held, by revision.
pub type Held = (u64, NodeDataplane);

/// The fail-safe's memory, pure: time is an input.
///
/// Armed by an apply when the state before it was proven good (something
/// arrived from the control plane after that state was applied); a loss
/// of the stream within `window` of the apply starts the clock, anything
/// heard from the control plane stops it; `after` later the revert is
/// due. After a revert nothing is armed until the next apply, and the
/// reverted-from state is refused, so it never loops.
#[derive(Debug)]
pub struct Failsafe {
    config: FailsafeConfig,
    /// The proven state before the latest apply.
    previous: Option<Held>,
    applied_at: Option<Instant>,
    heard_since_apply: bool,
    lost_at: Option<Instant>,
    reverted_from: Option<Digest>,
}

/// Why a state is refused: the fail-safe left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reverted {
    pub from_revision: u64,
    pub to_revision: u64,
}

impl Failsafe {
    pub fn new(config: FailsafeConfig) -> Failsafe {
        Failsafe {
            config,
            previous: None,
            applied_at: None,
            heard_since_apply: false,
            lost_at: None,
            reverted_from: None,
        }
    }

    /// A state was applied at `now`; `before` is what the kernel held.
    pub fn applied(&mut self, before: Option<Held>, now: Instant) {
        self.previous = before.filter(|_| self.heard_since_apply);
        self.applied_at = Some(now);
        self.heard_since_apply = false;
        self.lost_at = None;
    }

    /// Something arrived from the control plane.
    pub fn heard(&mut self) {
        self.heard_since_apply = true;
        self.lost_at = None;
    }

    /// The stream is gone (or could not be opened) at `now`.
    pub fn lost(&mut self, now: Instant) {
        let recent = self
            .applied_at
            .is_some_and(|t| now.saturating_duration_since(t) <= self.config.window);
        if self.lost_at.is_none() && recent && self.previous.is_some() {
            self.lost_at = Some(now);
        }
    }

    /// When the revert is due, if the clock runs.
    pub fn due_at(&self) -> Option<Instant> {
        self.lost_at.map(|t| t + self.config.after)
    }

    /// The state to return to, if the revert is due at `now`; `current`
    /// (the state left) is refused from then on.
    pub fn take_revert(&mut self, now: Instant, current: Option<Digest>) -> Option<Held> {
        if self.due_at().is_none_or(|due| now < due) {
            return None;
        }
        self.lost_at = None;
        self.applied_at = None;
        self.reverted_from = current;
        self.previous.take()
    }

    /// Whether `digest` is the state the fail-safe left.
    pub fn refuses(&self, digest: &Digest) -> bool {
        self.reverted_from.as_ref() == Some(digest)
    }
}

#[cfg(test)]
impl Failsafe {
    /// A fail-safe that has left the state `digest` names.
    pub(super) fn having_left(config: FailsafeConfig, digest: Digest) -> Failsafe {
        Failsafe {
            reverted_from: Some(digest),
            ..Failsafe::new(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::state;

    /// One row of the fail-safe's table: events at seconds since the
    /// start, and whether a revert (to which revision) comes out at the end.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Apply(u64),
        Heard,
        Lost,
    }

    fn failsafe_after(events: &[(u64, Event)], at: u64) -> Option<u64> {
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let mut f = Failsafe::new(FailsafeConfig {
            window: Duration::from_secs(60),
            after: Duration::from_secs(10),
        });
        let mut held: Option<Held> = None;
        for (t, e) in events {
            match e {
                Event::Apply(r) => {
                    let before = held.replace((*r, state(&[])));
                    f.applied(before, secs(*t));
                }
                Event::Heard => f.heard(),
                Event::Lost => f.lost(secs(*t)),
            }
        }
        f.take_revert(secs(at), None).map(|(r, _)| r)
    }

    #[test]
    fn the_failsafe_reverts_only_shortly_after_an_apply_from_a_proven_state() {
        use Event::*;
        let proven = [(0, Apply(1)), (5, Heard), (6, Apply(2))];
        let with = |more: &[(u64, Event)]| -> Vec<(u64, Event)> {
            proven.iter().chain(more).copied().collect()
        };
        // Lost 10 s after applying 2, not back for 10 s: back to 1.
        assert_eq!(failsafe_after(&with(&[(16, Lost)]), 26), Some(1));
        // … not before the bound.
        assert_eq!(failsafe_after(&with(&[(16, Lost)]), 25), None);
        // Reconnect attempts failing again do not restart the clock.
        assert_eq!(
            failsafe_after(&with(&[(16, Lost), (20, Lost), (24, Lost)]), 26),
            Some(1)
        );
        // Heard from the control plane again in time: no revert.
        assert_eq!(failsafe_after(&with(&[(16, Lost), (20, Heard)]), 40), None);
        // Lost after the window: the control plane is simply away.
        assert_eq!(failsafe_after(&with(&[(67, Lost)]), 200), None);
        // At the window's edge it still counts.
        assert_eq!(failsafe_after(&with(&[(66, Lost)]), 76), Some(1));
        // Nothing heard while 1 was held: 1 is not proven, nothing to go
        // back to.
        assert_eq!(
            failsafe_after(&[(0, Apply(1)), (6, Apply(2)), (7, Lost)], 100),
            None
        );
        // The first state has no previous.
        assert_eq!(failsafe_after(&[(0, Apply(1)), (1, Lost)], 100), None);
        // Heartbeats after applying 2 do not disarm it.
        assert_eq!(
            failsafe_after(&with(&[(7, Heard), (8, Heard), (9, Lost)]), 19),
            Some(1)
        );
    }

    #[test]
    fn the_failsafe_steps_back_once_and_refuses_the_state_it_left() {
        let t0 = Instant::now();
        let (one, two) = (state(&["10.0.0.1"]), state(&["10.0.0.2"]));
        let mut f = Failsafe::new(FailsafeConfig {
            window: Duration::from_secs(60),
            after: Duration::from_secs(1),
        });
        f.applied(None, t0);
        f.heard();
        f.applied(Some((1, one.clone())), t0);
        f.lost(t0);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            f.take_revert(later, Some(two.digest())).map(|(r, _)| r),
            Some(1)
        );
        assert!(f.refuses(&two.digest()) && !f.refuses(&one.digest()));
        // Still unreachable: never a second step back.
        f.lost(later);
        assert_eq!(f.due_at(), None);
        assert_eq!(f.take_revert(later + Duration::from_secs(60), None), None);
    }
}
