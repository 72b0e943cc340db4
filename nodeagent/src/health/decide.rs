//! What the health endpoints answer, time as input: the proxy's health
//! (kube-proxy's `ProxyHealthServer`: stale when a received revision has
//! waited longer than the bound), the status codes of `/healthz`, `/livez`
//! and a Service's health-check port, and their bodies, byte for byte the
//! layout kube-proxy writes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The proxy's health as the agent's applies make it. Written by the
/// client (a revision received, a revision applied), read by the servers.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    /// How long a received revision may wait unapplied; also the grace
    /// after start before "nothing applied yet" is stale.
    pub bound: Duration,
    started: Instant,
    /// When the kernel last came to hold what the control plane sent
    /// (monotonic, and the wall clock for the body).
    last_applied: Option<(Instant, SystemTime)>,
    /// The oldest revision received since then, not yet applied.
    oldest_pending: Option<Instant>,
    /// False once the applied state says the node is being deleted or is
    /// tainted `ToBeDeletedByClusterAutoscaler`; true until then, as in
    /// kube-proxy.
    node_eligible: bool,
}

/// The proxy's health at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Nothing has waited past the bound (what `/livez` answers).
    pub healthy: bool,
    pub node_eligible: bool,
    /// kube-proxy's `lastUpdated`: now while healthy (its compatibility
    /// rule), else the last apply, `None` when there was none.
    pub last_updated: Option<SystemTime>,
    pub current: SystemTime,
}

impl ProxyHealth {
    pub fn new(bound: Duration, started: Instant) -> ProxyHealth {
        ProxyHealth {
            bound,
            started,
            last_applied: None,
            oldest_pending: None,
            node_eligible: true,
        }
    }

    /// A revision arrived that is not applied yet; the oldest one counts.
    pub fn received(&mut self, now: Instant) {
        self.oldest_pending.get_or_insert(now);
    }

    /// The kernel holds what was last received; `draining` from that state.
    pub fn applied(&mut self, now: Instant, wall: SystemTime, draining: bool) {
        self.oldest_pending = None;
        self.last_applied = Some((now, wall));
        self.node_eligible = !draining;
    }

    /// Healthy unless a received revision has waited `bound` or longer, or
    /// nothing was applied within `bound` of the start.
    pub fn healthy(&self, now: Instant) -> bool {
        let waited = |since: Instant| now.saturating_duration_since(since) >= self.bound;
        match (self.oldest_pending, self.last_applied) {
            (Some(pending), _) if waited(pending) => false,
            (_, Some(_)) => true,
            (_, None) => !waited(self.started),
        }
    }

    pub fn report(&self, now: Instant, wall: SystemTime) -> Report {
        let healthy = self.healthy(now);
        Report {
            healthy,
            node_eligible: self.node_eligible,
            last_updated: if healthy {
                Some(wall)
            } else {
                self.last_applied.map(|(_, w)| w)
            },
            current: wall,
        }
    }
}

/// The proxy health server's two endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// For load balancers: 503 also while the node drains.
    Healthz,
    /// For liveness probes: the proxy's own health only.
    Livez,
}

impl Endpoint {
    /// kube-proxy's mux: the exact paths, anything else is not found.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/healthz" => Some(Endpoint::Healthz),
            "/livez" => Some(Endpoint::Livez),
            _ => None,
        }
    }

    pub fn status(self, r: &Report) -> u16 {
        let ok = match self {
            Endpoint::Healthz => r.healthy && r.node_eligible,
            Endpoint::Livez => r.healthy,
        };
        if ok { 200 } else { 503 }
    }

    /// kube-proxy's body, spacing included.
    pub fn body(self, r: &Report) -> String {
        let last = r
            .last_updated
            .map_or_else(|| ZERO_TIME.to_string(), rfc3339);
        let now = rfc3339(r.current);
        match self {
            Endpoint::Healthz => format!(
                r#"{{"lastUpdated": "{last}","currentTime": "{now}", "nodeEligible": {}}}"#,
                r.node_eligible
            ),
            Endpoint::Livez => format!(r#"{{"lastUpdated": "{last}","currentTime": "{now}"}}"#),
        }
    }
}

/// Go's zero time, what kube-proxy prints when nothing was ever applied.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A Service's health-check port: 200 when the node has a local endpoint
/// and the proxy is healthy (kube-proxy ≥ 1.28), else 503.
pub fn service_status(local_endpoints: u32, proxy_healthy: bool) -> u16 {
    if local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    }
}

/// kube-proxy's health-check body, its indentation (tabs) included.
pub fn service_body(namespace: &str, name: &str, local_endpoints: u32, healthy: bool) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        quote(namespace),
        quote(name)
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds and milliseconds since the epoch (0 before it).
fn split(t: SystemTime) -> (i64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        d.subsec_millis(),
    )
}

/// `2026-11-03T14:05:09.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, millis) = split(t);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The `Date` header's form: `Tue, 03 Nov 2026 14:05:09 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (secs, _) = split(t);
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil(days);
    let s = secs.rem_euclid(86_400);
    let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[usize::try_from(mo.saturating_sub(1)).unwrap_or(0).min(11)];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    #[derive(Clone, Copy, Debug)]
    enum Event {
        Received(u64),
        Applied(u64, bool),
    }

    /// The statuses of `/healthz` and `/livez` and the proxy's health after
    /// `events` (seconds after the start), asked at `at`.
    fn check(events: &[Event], at: u64, healthz: u16, livez: u16) {
        let start = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let secs = |s: u64| start + Duration::from_secs(s);
        let mut h = ProxyHealth::new(BOUND, start);
        for e in events {
            match *e {
                Event::Received(s) => h.received(secs(s)),
                Event::Applied(s, draining) => {
                    h.applied(secs(s), wall + Duration::from_secs(s), draining)
                }
            }
        }
        let r = h.report(secs(at), wall + Duration::from_secs(at));
        assert_eq!(
            (Endpoint::Healthz.status(&r), Endpoint::Livez.status(&r)),
            (healthz, livez),
            "{events:?} at {at}s"
        );
        assert_eq!(h.healthy(secs(at)), livez == 200, "{events:?} at {at}s");
    }

    #[test]
    fn proxy_health_by_table() {
        use Event::*;
        let table: &[(&[Event], u64, u16, u16)] = &[
            // Starting up: healthy within the bound, stale after it.
            (&[], 0, 200, 200),
            (&[], 59, 200, 200),
            (&[], 60, 503, 503),
            // A revision received at start and never applied.
            (&[Received(0)], 59, 200, 200),
            (&[Received(0)], 60, 503, 503),
            // Applied: healthy for as long as nothing waits.
            (&[Received(0), Applied(1, false)], 1_000, 200, 200),
            (&[Applied(1, false)], 1_000, 200, 200),
            // The oldest waiting revision counts, not the newest.
            (
                &[Applied(1, false), Received(10), Received(65)],
                69,
                200,
                200,
            ),
            (
                &[Applied(1, false), Received(10), Received(65)],
                70,
                503,
                503,
            ),
            // An apply clears what waited.
            (
                &[Applied(1, false), Received(10), Applied(80, false)],
                200,
                200,
                200,
            ),
            // Draining: /healthz refuses, /livez does not.
            (&[Applied(1, true)], 2, 503, 200),
            (&[Applied(1, true), Received(2)], 62, 503, 503),
            // No longer draining once a state says so.
            (&[Applied(1, true), Applied(2, false)], 3, 200, 200),
            // Draining before anything was applied is unknown: eligible.
            (&[Received(0)], 1, 200, 200),
        ];
        for (events, at, healthz, livez) in table {
            check(events, *at, *healthz, *livez);
        }
    }

    #[test]
    fn service_status_by_table() {
        for (endpoints, healthy, want) in [
            (0, true, 503),
            (1, true, 200),
            (7, true, 200),
            (1, false, 503),
            (0, false, 503),
        ] {
            assert_eq!(
                service_status(endpoints, healthy),
                want,
                "{endpoints} {healthy}"
            );
        }
    }

    #[test]
    fn bodies_read_as_kube_proxys() {
        assert_eq!(
            service_body("default", "web", 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&service_body("a\"b", "c", 0, false)).expect("json");
        assert_eq!(parsed["service"]["namespace"], "a\"b");
        assert_eq!(parsed["localEndpoints"], 0);
        assert_eq!(parsed["serviceProxyHealthy"], false);

        let wall = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut h = ProxyHealth::new(BOUND, Instant::now());
        let now = Instant::now();
        h.applied(now, wall, false);
        let r = h.report(now, wall + Duration::from_secs(1));
        assert_eq!(
            Endpoint::Healthz.body(&r),
            r#"{"lastUpdated": "2023-11-14T22:13:21.123Z","currentTime": "2023-11-14T22:13:21.123Z", "nodeEligible": true}"#
        );
        // Stale: the last apply, not now.
        h.received(now);
        let r = h.report(now + BOUND, wall + Duration::from_secs(100));
        assert_eq!(
            Endpoint::Livez.body(&r),
            r#"{"lastUpdated": "2023-11-14T22:13:20.123Z","currentTime": "2023-11-14T22:15:00.123Z"}"#
        );
        // Never applied and stale: Go's zero time.
        let h = ProxyHealth::new(BOUND, now);
        let r = h.report(now + BOUND, wall);
        assert_eq!(r.last_updated, None);
        assert!(Endpoint::Healthz.body(&r).contains(ZERO_TIME));
    }

    #[test]
    fn dates_by_table() {
        for (secs, rfc, http) in [
            (
                0,
                "1970-01-01T00:00:00.000Z",
                "Thu, 01 Jan 1970 00:00:00 GMT",
            ),
            (
                951_782_400,
                "2000-02-29T00:00:00.000Z",
                "Tue, 29 Feb 2000 00:00:00 GMT",
            ),
            (
                1_794_000_309,
                "2026-11-06T21:25:09.000Z",
                "Fri, 06 Nov 2026 21:25:09 GMT",
            ),
            (
                4_107_542_399,
                "2100-02-28T23:59:59.000Z",
                "Sun, 28 Feb 2100 23:59:59 GMT",
            ),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!((rfc3339(t).as_str(), http_date(t).as_str()), (rfc, http));
        }
        assert_eq!(Endpoint::from_path("/healthz"), Some(Endpoint::Healthz));
        assert_eq!(Endpoint::from_path("/livez"), Some(Endpoint::Livez));
        assert_eq!(Endpoint::from_path("/healthz/"), None);
        assert_eq!(Endpoint::from_path("/"), None);
    }
}
