//! The node's interface addresses over rtnetlink, read once or followed.
//!
//! [`follow`] subscribes to the kernel's address notifications
//! (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`) in the target network
//! namespace, reads every address (one `RTM_GETADDR` dump), and leaves a
//! thread that reads again after each burst of notifications (and every
//! [`RESYNC`] in case one was lost), publishing the chosen addresses on a
//! `watch` channel only when they change. The notifications are only a
//! wake-up: what counts is always a whole dump, so a lost or overflowing
//! notification queue (`ENOBUFS`) costs a read, never a wrong set.
//!
//! ```text
//!  kernel ─notification─▶ thread: debounce ─dump─▶ select(flag) ─changed?─▶ watch::Sender<NodeAddresses>
//! ```

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use tokio::sync::watch;

use super::{InterfaceAddress, Interfaces, NodeAddresses, NodePortAddresses, select};
use crate::link::{LinkClient, LinkError};
use crate::netlink::in_netns;
use crate::services::SERVICE_INTERFACE;

/// Read again this often even without a notification.
pub const RESYNC: Duration = Duration::from_secs(60);
/// A burst of notifications (an interface coming up with several
/// addresses) ends after this much quiet, and is read once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait for a burst to end: a read comes at least this often
/// while notifications keep arriving.
const DEBOUNCE_LIMIT: Duration = Duration::from_secs(1);
/// Pause after a failed read or subscription before the next try.
const RETRY: Duration = Duration::from_secs(5);
/// How often the thread looks whether anyone still listens.
const TICK: Duration = Duration::from_secs(1);

/// Reading or following the node's addresses failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("reading the node's addresses: {0}")]
    Read(#[from] LinkError),
    #[error("subscribing to address changes in {}: {source}", netns.as_deref().unwrap_or("this network namespace"))]
    Subscribe {
        netns: Option<String>,
        #[source]
        source: io::Error,
    },
}

/// Every address of every interface in `netns` (`None`: this network
/// namespace), and which interface is the service interface.
pub fn read(netns: Option<&str>) -> Result<Interfaces, WatchError> {
    let mut link = LinkClient::connect_in(netns)?;
    read_with(&mut link)
}

fn read_with(link: &mut LinkClient) -> Result<Interfaces, WatchError> {
    // A dump interrupted by a concurrent change is read again.
    let mut tries = 0;
    let addresses = loop {
        match link.all_addresses() {
            Err(e) if e.errno() == Some(libc::EINTR) && tries < 3 => tries += 1,
            other => break other?,
        }
    };
    Ok(Interfaces {
        service_ifindex: link.ifindex(SERVICE_INTERFACE)?,
        addresses: addresses
            .into_iter()
            .map(|(ifindex, address)| InterfaceAddress { ifindex, address })
            .collect(),
    })
}

/// A socket that receives the kernel's address notifications.
struct Subscription {
    socket: NlSocket,
    buffer: Vec<u8>,
}

impl Subscription {
    fn open(netns: Option<&str>) -> Result<Subscription, WatchError> {
        let failed = |source| WatchError::Subscribe {
            netns: netns.map(str::to_string),
            source,
        };
        let groups = Groups::new_groups(&[libc::RTNLGRP_IPV4_IFADDR, libc::RTNLGRP_IPV6_IFADDR]);
        let socket = in_netns(netns, || NlSocket::connect(NlFamily::Route, None, groups))
            .map_err(failed)?
            .map_err(failed)?;
        Ok(Subscription {
            socket,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Waits up to `timeout` for a notification; whether one (or an
    /// overflow, which means some were lost) arrived. Everything queued is
    /// taken: the caller reads whole, whatever they said.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut poll = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the length of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        if ready == 0 {
            return Ok(false);
        }
        loop {
            match self.socket.recv(&mut self.buffer[..], Msg::DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The queue overflowed: notifications were lost, so read.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a follower thread is told to do and reports.
pub struct Follower {
    /// The chosen addresses, newest first; changes only when they do.
    pub addresses: watch::Receiver<NodeAddresses>,
}

/// Follows the addresses of `netns` as `flag` chooses them. Subscribes,
/// reads once before returning (the receiver starts with that choice), and
/// leaves a thread that follows changes until every receiver is dropped.
/// A failed first read is logged and counted; the receiver then starts
/// with [`NodeAddresses::default`] — the control plane's list — until a
/// read succeeds. Failed reads and subscriptions count in `failures` (the
/// thread retries).
pub fn follow(
    netns: Option<String>,
    flag: NodePortAddresses,
    failures: prometheus_client::metrics::counter::Counter,
) -> Follower {
    let mut state = Reader {
        netns,
        flag,
        subscription: None,
        link: None,
        failures: failures.clone(),
    };
    let first = state.read().unwrap_or_default();
    let (tx, addresses) = watch::channel(first);
    let spawned = std::thread::Builder::new()
        .name("node-addresses".into())
        .spawn(move || state.run(&tx));
    if let Err(e) = spawned {
        tracing::error!("cannot start following the node's addresses: {e}");
        failures.inc();
    }
    Follower { addresses }
}

struct Reader {
    netns: Option<String>,
    flag: NodePortAddresses,
    subscription: Option<Subscription>,
    link: Option<LinkClient>,
    failures: prometheus_client::metrics::counter::Counter,
}

impl Reader {
    /// Subscribes if not yet, then reads whole; `None` (logged, counted)
    /// when either fails.
    fn read(&mut self) -> Option<NodeAddresses> {
        let netns = self.netns.as_deref();
        let read = (|| {
            if self.subscription.is_none() {
                self.subscription = Some(Subscription::open(netns)?);
            }
            let link = match &mut self.link {
                Some(link) => link,
                None => self.link.insert(LinkClient::connect_in(netns)?),
            };
            read_with(link)
        })();
        match read {
            Ok(interfaces) => Some(select(&self.flag, &interfaces)),
            Err(e) => {
                tracing::warn!("NodePort addresses: {e}; trying again in {RETRY:?}");
                self.failures.inc();
                // Both reopened on the next try.
                self.link = None;
                if matches!(e, WatchError::Subscribe { .. }) {
                    self.subscription = None;
                }
                None
            }
        }
    }

    fn run(mut self, tx: &watch::Sender<NodeAddresses>) {
        let mut last_read = Instant::now();
        let mut due = self.link.is_none();
        let mut retry_at: Option<Instant> = None;
        while !tx.is_closed() {
            if last_read.elapsed() >= RESYNC {
                due = true;
            }
            if due && retry_at.is_none_or(|at| Instant::now() >= at) {
                match self.read() {
                    Some(next) => {
                        last_read = Instant::now();
                        (due, retry_at) = (false, None);
                        tx.send_if_modified(|current| {
                            let changed = *current != next;
                            if changed {
                                tracing::info!(?next, "the node's NodePort addresses changed");
                                *current = next;
                            }
                            changed
                        });
                    }
                    None => retry_at = Some(Instant::now() + RETRY),
                }
            }
            let Some(subscription) = &mut self.subscription else {
                std::thread::sleep(TICK);
                continue;
            };
            match subscription.wait(TICK) {
                Ok(false) => {}
                Ok(true) => {
                    // Let the burst end (bounded), then read once.
                    let started = Instant::now();
                    while started.elapsed() < DEBOUNCE_LIMIT
                        && matches!(subscription.wait(DEBOUNCE), Ok(true))
                    {}
                    due = true;
                }
                Err(e) => {
                    tracing::warn!("NodePort addresses: the notification socket failed: {e}");
                    self.failures.inc();
                    self.subscription = None;
                    due = true;
                }
            }
        }
    }
}
