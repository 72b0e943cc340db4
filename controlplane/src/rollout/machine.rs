//! The rollout's pure state machine: phases, the canaries' reports in,
//! the step to take out; time is an input (milliseconds).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{REASON_PREFIX, RolloutConfig};

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing in flight; `good` is the newest revision every node may have
    /// (`None` before the first).
    Idle { good: Option<u64> },
    /// `target` is on the canaries; the rest are held at `good`.
    Canary {
        target: u64,
        good: Option<u64>,
        started_ms: i64,
        /// Since when every canary has acked `target`.
        acked_ms: Option<i64>,
    },
    /// `target` failed on `failed` (rolled back to `good`); the rest stay
    /// held until a newer revision.
    Halted {
        target: u64,
        good: Option<u64>,
        failed: BTreeSet<String>,
        reason: String,
    },
}

/// One canary as the store reports it for the rollout's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryReport {
    pub node: String,
    /// Its agent applied the target's state (digest equal).
    pub acked: bool,
    /// Its agent nacked since the rollout started: the error.
    pub failure: Option<String>,
    /// When its agent was last heard from (Unix ms; `None`: never).
    pub contact_ms: Option<i64>,
}

/// What the driver must do after an observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Move the rest to `target`.
    Promote {
        target: u64,
    },
    /// Roll `nodes` back to `to` (nothing to roll back to when `None`).
    Halt {
        target: u64,
        to: Option<u64>,
        nodes: BTreeSet<String>,
        reason: String,
    },
}

/// The pure state machine: no I/O, time as an input.
///
/// A canary fails by a nack, or by silence: once it acked the target it
/// must be heard from (ack, heartbeat) at least every `silence_ms`, and
/// the soak ends only when every canary was heard from after it — so a
/// canary stays connected and heartbeating through the whole soak, or
/// the rollout halts. (Silence is judged when observed: the leader ticks
/// about once a second.)
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub phase: Phase,
    pub soak_ms: i64,
    pub failure_threshold: usize,
    pub silence_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Machine {
    pub fn new(good: Option<u64>, config: &RolloutConfig) -> Machine {
        Machine {
            phase: Phase::Idle { good },
            soak_ms: millis(config.soak),
            failure_threshold: config.failure_threshold.max(1),
            silence_ms: millis(config.canary_silence),
        }
    }

    /// Why `r` failed, if it did: its nack, or its silence since acking.
    fn failure(&self, r: &CanaryReport, now_ms: i64) -> Option<String> {
        if let Some(error) = &r.failure {
            return Some(error.clone());
        }
        if !r.acked {
            return None;
        }
        match r.contact_ms {
            None => Some("acked but never heard from".to_string()),
            Some(heard) if now_ms.saturating_sub(heard) > self.silence_ms => Some(format!(
                "silent for {} ms after acking (bound {} ms): disconnected or not heartbeating",
                now_ms.saturating_sub(heard),
                self.silence_ms
            )),
            Some(_) => None,
        }
    }

    fn good(&self) -> Option<u64> {
        match &self.phase {
            Phase::Idle { good } | Phase::Canary { good, .. } | Phase::Halted { good, .. } => *good,
        }
    }

    /// A revision was committed: the rollout (re)starts with it — a newer
    /// revision replaces an unfinished target, never skipping the canary.
    /// Returns the canaries a halted rollout had rolled back, to release.
    pub fn committed(&mut self, revision: u64, now_ms: i64) -> BTreeSet<String> {
        let released = match &mut self.phase {
            Phase::Halted { failed, .. } => std::mem::take(failed),
            _ => BTreeSet::new(),
        };
        self.phase = Phase::Canary {
            target: revision,
            good: self.good(),
            started_ms: now_ms,
            acked_ms: None,
        };
        released
    }

    /// Looks at the canaries' reports.
    pub fn observe(&mut self, reports: &[CanaryReport], now_ms: i64) -> Step {
        let Phase::Canary { target, good, .. } = self.phase else {
            return Step::Wait;
        };
        let failures: Vec<(&str, String)> = reports
            .iter()
            .filter_map(|r| {
                self.failure(r, now_ms)
                    .map(|reason| (r.node.as_str(), reason))
            })
            .collect();
        let failed: BTreeSet<String> = failures.iter().map(|(n, _)| n.to_string()).collect();
        let Phase::Canary { acked_ms, .. } = &mut self.phase else {
            return Step::Wait;
        };
        if failed.len() >= self.failure_threshold {
            let mut reason = format!(
                "{REASON_PREFIX}revision {target} failed on {} canary node(s) (threshold {}):",
                failed.len(),
                self.failure_threshold
            );
            for (node, why) in failures.iter().take(3) {
                reason.push_str(&format!(" {node}: {why};"));
            }
            match good {
                Some(g) => reason.push_str(&format!(" rolled back to {g}")),
                None => reason.push_str(" no earlier revision to roll back to"),
            }
            self.phase = Phase::Halted {
                target,
                good,
                failed: failed.clone(),
                reason: reason.clone(),
            };
            return Step::Halt {
                target,
                to: good,
                nodes: failed,
                reason,
            };
        }
        if !reports.iter().all(|r| r.acked) {
            *acked_ms = None;
            return Step::Wait;
        }
        let since = *acked_ms.get_or_insert(now_ms);
        let soaked = since.saturating_add(self.soak_ms);
        if now_ms < soaked
            || !reports
                .iter()
                .all(|r| r.contact_ms.is_some_and(|heard| heard >= soaked))
        {
            return Step::Wait;
        }
        self.phase = Phase::Idle { good: Some(target) };
        Step::Promote { target }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A canary's report, its agent last heard from at `heard`.
    fn report_heard(node: &str, acked: bool, failure: Option<&str>, heard: i64) -> CanaryReport {
        CanaryReport {
            node: node.into(),
            acked,
            failure: failure.map(String::from),
            contact_ms: Some(heard),
        }
    }

    /// A canary's report, its agent heard from just now (every row's time
    /// is below `NOW`).
    fn report(node: &str, acked: bool, failure: Option<&str>) -> CanaryReport {
        report_heard(node, acked, failure, NOW)
    }

    const NOW: i64 = 1_000_000;

    /// One row: a machine in a phase, the reports at a time, the step and
    /// the phase after.
    fn check(mut m: Machine, reports: &[CanaryReport], now: i64, step: Step, phase: Phase) {
        let got = m.observe(reports, now);
        assert_eq!(got, step);
        assert_eq!(m.phase, phase);
    }

    fn canary(target: u64, good: Option<u64>, acked_ms: Option<i64>) -> Machine {
        Machine {
            phase: Phase::Canary {
                target,
                good,
                started_ms: 0,
                acked_ms,
            },
            soak_ms: 1000,
            failure_threshold: 1,
            silence_ms: 500,
        }
    }

    /// The nodes and reason of a halt of revision 5 back to 4.
    fn halt_of_5_to_4(step: Step) -> (BTreeSet<String>, String) {
        match step {
            Step::Halt {
                target: 5,
                to: Some(4),
                nodes,
                reason,
            } => (nodes, reason),
            other => panic!("expected a halt of 5 back to 4, got {other:?}"),
        }
    }

    /// Revision 5 on the canaries, 4 good.
    fn waiting(acked_ms: Option<i64>) -> Phase {
        Phase::Canary {
            target: 5,
            good: Some(4),
            started_ms: 0,
            acked_ms,
        }
    }

    #[test]
    fn transitions_table() {
        let ok = [report("a", true, None), report("b", true, None)];
        // Not all acked: wait, and the soak clock is reset.
        check(
            canary(5, Some(4), Some(10)),
            &[report("a", true, None), report("b", false, None)],
            2000,
            Step::Wait,
            waiting(None),
        );
        // All acked: the soak starts now.
        check(
            canary(5, Some(4), None),
            &ok,
            100,
            Step::Wait,
            waiting(Some(100)),
        );
        // Soak not over yet.
        check(
            canary(5, Some(4), Some(100)),
            &ok,
            1099,
            Step::Wait,
            waiting(Some(100)),
        );
        // Soak over: promote.
        check(
            canary(5, Some(4), Some(100)),
            &ok,
            1100,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // A failure halts even during the soak, and rolls back to good.
        let mut halted = canary(5, Some(4), Some(100));
        let (nodes, reason) = halt_of_5_to_4(halted.observe(
            &[report("a", true, None), report("b", false, Some("boom"))],
            500,
        ));
        assert_eq!(nodes, BTreeSet::from(["b".to_string()]));
        assert!(reason.starts_with(REASON_PREFIX) && reason.contains("b: boom"));
        // Halted: nothing happens on observation, even if all ack later.
        check(
            halted.clone(),
            &ok,
            10_000,
            Step::Wait,
            halted.phase.clone(),
        );
        // Idle: nothing to do.
        check(
            Machine::new(Some(3), &RolloutConfig::default()),
            &ok,
            0,
            Step::Wait,
            Phase::Idle { good: Some(3) },
        );
        // Below the threshold: no halt.
        let mut two = canary(5, Some(4), None);
        two.failure_threshold = 2;
        assert_eq!(
            two.observe(&[report("a", false, Some("x")), report("b", true, None)], 5),
            Step::Wait
        );
        // No canary at all (none exists at the target): promote after soak.
        check(
            canary(5, Some(4), Some(0)),
            &[],
            1000,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // Every canary acked and the soak is over, but one was last heard
        // before its end: wait for it.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 1099)],
            1500,
            Step::Wait,
            waiting(Some(100)),
        );
        // … heard after it: promote.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 1100)],
            1500,
            Step::Promote { target: 5 },
            Phase::Idle { good: Some(5) },
        );
        // An acked canary silent for longer than the bound during the soak
        // has failed: halt and roll it back, though it never nacked.
        let mut silent = canary(5, Some(4), Some(100));
        let (nodes, reason) = halt_of_5_to_4(silent.observe(
            &[report("a", true, None), report_heard("b", true, None, 200)],
            701,
        ));
        assert_eq!(nodes, BTreeSet::from(["b".to_string()]));
        assert!(reason.contains("b: silent for 501 ms"), "{reason}");
        // At the bound exactly it is still live.
        check(
            canary(5, Some(4), Some(100)),
            &[report("a", true, None), report_heard("b", true, None, 200)],
            700,
            Step::Wait,
            waiting(Some(100)),
        );
        // Acked but never heard from at all: failed.
        let never = CanaryReport {
            contact_ms: None,
            ..report("b", true, None)
        };
        assert!(matches!(
            canary(5, Some(4), None).observe(&[never], 10),
            Step::Halt { .. }
        ));
        // Not acked yet (waiting for its revision): silence is not judged.
        check(
            canary(5, Some(4), None),
            &[report_heard("b", false, None, 0)],
            10_000,
            Step::Wait,
            waiting(None),
        );
        // No good revision: halt without a rollback target.
        assert!(matches!(
            canary(1, None, None).observe(&[report("a", false, Some("x"))], 0),
            Step::Halt { to: None, .. }
        ));
    }

    #[test]
    fn a_newer_revision_restarts_and_releases_the_failed() {
        let mut m = canary(5, Some(4), None);
        let step = m.observe(&[report("a", false, Some("boom"))], 10);
        assert!(matches!(step, Step::Halt { .. }));
        let released = m.committed(6, 20);
        assert_eq!(released, BTreeSet::from(["a".to_string()]));
        // Good stays the last promoted revision, never the failed one.
        assert_eq!(
            m.phase,
            Phase::Canary {
                target: 6,
                good: Some(4),
                started_ms: 20,
                acked_ms: None
            }
        );
        // During a canary phase, a newer revision replaces the target.
        assert!(m.committed(7, 30).is_empty());
        assert!(matches!(
            m.phase,
            Phase::Canary {
                target: 7,
                good: Some(4),
                ..
            }
        ));
    }

    #[derive(Clone, Debug)]
    enum Event {
        Commit,
        Observe {
            acked: Vec<bool>,
            failed: Vec<bool>,
            heard: Vec<bool>,
            dt: i64,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::Commit),
            4 => (
                proptest::collection::vec(any::<bool>(), 3),
                proptest::collection::vec(proptest::bool::weighted(0.1), 3),
                proptest::collection::vec(proptest::bool::weighted(0.8), 3),
                0i64..800
            )
                .prop_map(|(acked, failed, heard, dt)| Event::Observe { acked, failed, heard, dt }),
        ]
    }

    proptest! {
        /// Whatever happens: a promotion is of the newest commit, only after
        /// every canary acked it continuously for the soak with no failure
        /// under the threshold and was heard from after the soak; a halt
        /// names exactly the failing canaries (a nack, or acked and silent
        /// past the bound) and rolls back to the last promoted revision; a
        /// failed revision never becomes good.
        #[test]
        fn transitions_keep_the_invariants(
            threshold in 1usize..3,
            events in proptest::collection::vec(event(), 1..60),
        ) {
            let (soak, silence) = (1000, 600);
            let mut m = Machine::new(Some(1), &RolloutConfig {
                soak: Duration::from_millis(soak as u64),
                failure_threshold: threshold,
                canary_silence: Duration::from_millis(silence as u64),
                ..RolloutConfig::default()
            });
            let mut contacts: [Option<i64>; 3] = [None; 3];
            let (mut now, mut newest, mut promoted) = (0i64, 1u64, 1u64);
            let mut all_acked_since: Option<i64> = None;
            let mut halted = false;
            let mut rolled_back = BTreeSet::new();
            for e in events {
                match e {
                    Event::Commit => {
                        newest += 1;
                        let released = m.committed(newest, now);
                        prop_assert_eq!(&released, &std::mem::take(&mut rolled_back));
                        all_acked_since = None;
                        halted = false;
                    }
                    Event::Observe { acked, failed, heard, dt } => {
                        now += dt;
                        for (contact, heard) in contacts.iter_mut().zip(&heard) {
                            if *heard {
                                *contact = Some(now);
                            }
                        }
                        let reports: Vec<CanaryReport> = (0..3)
                            .map(|i| CanaryReport {
                                node: format!("c{i}"),
                                acked: acked[i],
                                failure: failed[i].then(|| "err".to_string()),
                                contact_ms: contacts[i],
                            })
                            .collect();
                        let failing: BTreeSet<String> = reports
                            .iter()
                            .filter(|r| {
                                r.failure.is_some()
                                    || (r.acked
                                        && r.contact_ms.is_none_or(|c| now - c > silence))
                            })
                            .map(|r| r.node.clone())
                            .collect();
                        let in_canary = matches!(m.phase, Phase::Canary { .. });
                        if in_canary && failing.len() < threshold && acked.iter().all(|a| *a) {
                            all_acked_since.get_or_insert(now);
                        } else if in_canary {
                            all_acked_since = None;
                        }
                        match m.observe(&reports, now) {
                            Step::Wait => {}
                            Step::Promote { target } => {
                                prop_assert!(in_canary && !halted);
                                prop_assert_eq!(target, newest);
                                prop_assert!(failing.len() < threshold);
                                let since = all_acked_since.take();
                                prop_assert!(since.is_some_and(|s| now - s >= soak));
                                let soaked = since.unwrap_or_default() + soak;
                                prop_assert!(contacts.iter().all(|c| c.is_some_and(|c| c >= soaked)));
                                promoted = target;
                                prop_assert_eq!(&m.phase, &Phase::Idle { good: Some(target) });
                            }
                            Step::Halt { target, to, nodes, .. } => {
                                prop_assert!(in_canary);
                                prop_assert_eq!(target, newest);
                                prop_assert_eq!(to, Some(promoted));
                                prop_assert!(failing.len() >= threshold);
                                prop_assert_eq!(&nodes, &failing);
                                rolled_back = nodes;
                                halted = true;
                            }
                        }
                    }
                }
                prop_assert_ne!(m.good(), Some(newest).filter(|_| halted));
            }
        }
    }
}
