//! Which control plane endpoint to try next, and after how long: pure,
//! the random draws are inputs, table-tested.
//!
//! An agent may name one endpoint per replica. It starts at a random one
//! (a fleet spreads over the replicas, as behind a Service) and moves to
//! the next whenever a stream ends or a connection fails, so a replica
//! that died is left at the first reconnect, whichever it was. The wait
//! before a reconnect doubles only once every endpoint failed in a row: a
//! dead replica in the list costs one quick try, not a longer backoff.

use std::time::Duration;

/// The wait before the first reconnect (before jitter).
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between reconnects (before jitter).
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A stream that lasted this long counts as having been up even if it
/// never answered (the backoff starts over).
const LASTED: Duration = Duration::from_secs(30);

/// The reconnect state of one agent: how many tries in a row found no
/// stream.
#[derive(Debug, Default)]
pub struct Endpoints {
    failures: u32,
}

impl Endpoints {
    /// Puts the endpoint at `draw` (any number; taken modulo the list's
    /// length) first: where an agent starts.
    pub fn start(urls: &mut [String], draw: usize) {
        if !urls.is_empty() {
            urls.rotate_left(draw % urls.len());
        }
    }

    /// A session ended (`was_up`: its stream was established; `lasted`:
    /// how long it ran). Moves the next endpoint to the front of `urls`
    /// and returns the wait before trying it, scaled by `jitter` (drawn
    /// from 0.5..1.5, so a fleet cut off at once does not come back at
    /// once).
    pub fn ended(
        &mut self,
        urls: &mut [String],
        was_up: bool,
        lasted: Duration,
        jitter: f64,
    ) -> Duration {
        if was_up || lasted > LASTED {
            self.failures = 0;
        }
        let rounds = self.failures / u32::try_from(urls.len().max(1)).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        if !urls.is_empty() {
            urls.rotate_left(1);
        }
        let wait = RECONNECT_FIRST
            .checked_mul(1u32 << rounds.min(16))
            .unwrap_or(RECONNECT_MAX)
            .min(RECONNECT_MAX);
        wait.mul_f64(jitter.clamp(0.0, 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("https://cp-{i}:7443")).collect()
    }

    #[test]
    fn the_start_is_drawn_over_the_list() {
        for (n, draw, first) in [(1, 7, 0), (2, 0, 0), (2, 1, 1), (2, 5, 1), (3, 4, 1)] {
            let mut list = urls(n);
            Endpoints::start(&mut list, draw);
            assert_eq!(list[0], format!("https://cp-{first}:7443"), "{n} {draw}");
            assert_eq!(list.len(), n);
        }
        Endpoints::start(&mut [], 3);
    }

    /// (was the stream up, how long it lasted in s, the wait in ms, the
    /// endpoint tried next) for each session end in turn; jitter 1.
    type Row = (bool, u64, u64, usize);

    fn run(n: usize, rows: &[Row]) {
        let mut list = urls(n);
        let mut e = Endpoints::default();
        for (i, &(up, lasted, wait_ms, next)) in rows.iter().enumerate() {
            let wait = e.ended(&mut list, up, Duration::from_secs(lasted), 1.0);
            assert_eq!(
                wait,
                Duration::from_millis(wait_ms),
                "{n} endpoints, row {i}"
            );
            assert_eq!(
                list[0],
                format!("https://cp-{next}:7443"),
                "{n} endpoints, row {i}"
            );
        }
    }

    #[test]
    fn reconnects_in_tables() {
        // One endpoint: the backoff doubles per failure, to the cap; a
        // stream that was up starts it over.
        run(
            1,
            &[
                (true, 1, 200, 0),
                (false, 0, 400, 0),
                (false, 0, 800, 0),
                (true, 0, 200, 0),
                (false, 0, 400, 0),
                // A stream that lasted, even if it never answered.
                (false, 31, 200, 0),
            ],
        );
        // Two replicas: a lost stream moves to the other at once; the
        // backoff doubles once both failed in a row.
        run(
            2,
            &[
                (true, 100, 200, 1),
                (false, 0, 200, 0),
                (false, 0, 400, 1),
                (false, 0, 400, 0),
                (false, 0, 800, 1),
                (true, 5, 200, 0),
            ],
        );
        // Three: each failure moves on, round after round.
        run(
            3,
            &[
                (false, 0, 200, 1),
                (false, 0, 200, 2),
                (false, 0, 200, 0),
                (false, 0, 400, 1),
            ],
        );
    }

    #[test]
    fn the_wait_is_capped_and_jittered() {
        let mut list = urls(1);
        let mut e = Endpoints::default();
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            last = e.ended(&mut list, false, Duration::ZERO, 1.0);
        }
        assert_eq!(last, RECONNECT_MAX);
        let mut e = Endpoints::default();
        assert_eq!(
            e.ended(&mut list, true, Duration::ZERO, 0.5),
            RECONNECT_FIRST / 2
        );
        let mut e = Endpoints::default();
        assert_eq!(
            e.ended(&mut list, true, Duration::ZERO, 1.5),
            RECONNECT_FIRST * 3 / 2
        );
    }
}
