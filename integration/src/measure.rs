//! What the benchmarks measure a process by: CPU time, resident memory,
//! percentiles, and the open-file limit a fleet of connections needs.

use std::time::Duration;

use setpoint_compute::synthetic::ClusterShape;

/// What a benchmark process with a fleet does first: an open-file limit
/// for one socket per agent, and logs only when asked (`RUST_LOG`), on
/// stderr, since the children's stdout is the parent's pipe.
pub fn start_bench_process() {
    raise_nofile();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// A number from the environment, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benchmarks' synthetic cluster: `SETPOINT_BENCH_AGENTS` nodes (one
/// agent each), `_SERVICES` Services with `_ENDPOINTS` (5) endpoints each,
/// in 3 zones.
pub fn cluster_shape_from_env(agents: usize, services: usize) -> ClusterShape {
    let services = env_or("SETPOINT_BENCH_SERVICES", services);
    ClusterShape {
        nodes: env_or("SETPOINT_BENCH_AGENTS", agents),
        services,
        endpoints: services * env_or("SETPOINT_BENCH_ENDPOINTS", 5),
        zones: 3,
    }
}

/// Lifts the open-file limit to its hard maximum (one socket per agent).
pub fn raise_nofile() {
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::zeroed();
    // SAFETY: getrlimit fills the struct; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) == 0 {
            let mut limit = limit.assume_init();
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// User plus system CPU time of this process so far.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// This process's peak resident memory, in MiB.
pub fn peak_rss_mib() -> f64 {
    rss_mib("VmHWM:")
}

/// A memory line of /proc/self/status (`VmHWM:` peak, `VmRSS:` now), in MiB.
pub fn rss_mib(line: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(line))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// The `p` quantile (0..=1) of `sorted`, by nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
