//! The sysctls that IPVS service proxying needs, set through `/proc/sys`
//! in this or a named network namespace (every one of them is per
//! namespace).

use std::io;
use std::path::Path;

use crate::netlink::in_netns;

/// What kube-proxy's IPVS mode sets, from `NewProxier` in kubernetes'
/// `pkg/proxy/ipvs/proxier.go`: `vs/conntrack` (conntrack keeps tracking
/// IPVS connections, so SNAT and policy rules see them),
/// `expire_nodest_conn` and `expire_quiescent_template` (connections to a
/// removed or weight-0 real server end instead of hanging), `ip_forward`,
/// and with `strictARP` `arp_ignore=1`, `arp_announce=2` (the node does not
/// answer ARP for the service addresses on its dummy interface). Unlike
/// kube-proxy, strict ARP is not optional here: those addresses are never
/// the node's to announce. kube-proxy's `conn_reuse_mode=0` applies only
/// to kernels before 5.9 and is left alone.
pub const IPVS_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
];

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("no /proc/sys/net/ipv4/vs in {netns}: the kernel has no IPVS (modprobe ip_vs)")]
    NoIpvs { netns: String },
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: io::Error,
    },
}

fn namespace_name(netns: Option<&str>) -> String {
    netns.map_or_else(
        || "the agent's network namespace".into(),
        |n| format!("network namespace {n}"),
    )
}

/// Sets [`IPVS_SYSCTLS`] in `netns` (`None`: the agent's own namespace);
/// returns those that changed, with their previous values. Touches nothing
/// when the kernel has no IPVS.
pub fn ensure_ipvs_sysctls(netns: Option<&str>) -> Result<Vec<(String, String)>, SysctlError> {
    run_in(netns, || {
        if !Path::new("/proc/sys/net/ipv4/vs").is_dir() {
            return Err(SysctlError::NoIpvs {
                netns: namespace_name(netns),
            });
        }
        ensure_here(IPVS_SYSCTLS)
    })
}

/// Sets each `(key, value)` (a path under `/proc/sys`) in `netns` unless
/// it holds that value already; returns the changed keys with their
/// previous values.
pub fn ensure_sysctls(
    netns: Option<&str>,
    settings: &[(&str, &str)],
) -> Result<Vec<(String, String)>, SysctlError> {
    run_in(netns, || ensure_here(settings))
}

fn run_in<T: Send>(
    netns: Option<&str>,
    work: impl FnOnce() -> Result<T, SysctlError> + Send,
) -> Result<T, SysctlError> {
    in_netns(netns, work).map_err(|source| SysctlError::Netns {
        netns: netns.unwrap_or_default().into(),
        source,
    })?
}

/// Reads and writes in the calling thread's namespace: `/proc/sys/net`
/// shows the namespace of the thread that opens a file there.
fn ensure_here(settings: &[(&str, &str)]) -> Result<Vec<(String, String)>, SysctlError> {
    let mut changed = Vec::new();
    for (key, value) in settings {
        let path = Path::new("/proc/sys").join(key);
        let failed = |source| SysctlError::Io {
            key: (*key).into(),
            source,
        };
        let current = std::fs::read_to_string(&path).map_err(failed)?;
        let current = current.trim();
        if current != *value {
            std::fs::write(&path, value).map_err(failed)?;
            changed.push(((*key).to_string(), current.to_string()));
        }
    }
    Ok(changed)
}
