//! What a listener lets a peer hold before it has proven anything:
//! connections per peer address and in total, handshakes in progress, and
//! how long a connection may stay silent. Generic over the handshake
//! (none, TLS), so any gRPC listener can sit behind it.
//!
//! ```text
//!  TCP accept ─▶ slot for this peer IP and in total? ─no─▶ close (counted)
//!             ─▶ a pending-handshake permit? ─no─▶ close (counted)
//!             ─▶ handshake (TLS or none) within `handshake` ─▶ Guarded IO ─▶ tonic
//!  Guarded: reads fail (the connection closes) when the HTTP/2 preface is
//!  not in by `handshake` after accept, or no byte came for `idle`.
//! ```
//!
//! Every live client sends something more often than `idle`: the admin
//! listener's HTTP/2 keepalive pings are answered by every live client (so
//! there `idle` is longer than the interval plus its timeout), and every
//! agent heartbeats on its stream every 10 s. Only a peer that stopped
//! talking is cut off.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The client's first bytes on an HTTP/2 connection.
const HTTP2_PREFACE_LEN: usize = 24;

/// Bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections from one peer IP address.
    pub per_peer: usize,
    /// Open connections in total.
    pub total: usize,
    /// Connections accepted but not through their handshake yet.
    pub pending_handshakes: usize,
    /// From accept to a finished handshake and the HTTP/2 preface.
    pub handshake: Duration,
    /// No byte from the peer for this long closes the connection.
    pub idle: Duration,
}

/// Why a listener dropped a connection (a metric label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    PerPeerLimit,
    TotalLimit,
    PendingHandshakeLimit,
    HandshakeFailed,
    HandshakeTimeout,
    PrefaceTimeout,
    IdleTimeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub listener: &'static str,
    pub reason: DropReason,
}

/// Connections dropped, by listener and reason.
pub type Drops = Family<DropLabels, Counter>;

/// Open connections per peer and in total.
#[derive(Default)]
struct Open {
    per_peer: HashMap<IpAddr, usize>,
    total: usize,
}

/// One open connection's place in [`Open`]; given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Slot {
    fn take(
        open: &Arc<Mutex<Open>>,
        peer: IpAddr,
        limits: &ListenerLimits,
    ) -> Result<Slot, DropReason> {
        let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
        if o.total >= limits.total {
            return Err(DropReason::TotalLimit);
        }
        let mine = o.per_peer.entry(peer).or_default();
        if *mine >= limits.per_peer {
            return Err(DropReason::PerPeerLimit);
        }
        *mine += 1;
        o.total += 1;
        Ok(Slot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.total = o.total.saturating_sub(1);
        if let Some(n) = o.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A connection under the listener's deadlines. Reads fail with
/// `TimedOut` once a deadline passes, which makes the server close it.
pub struct Guarded<IO> {
    io: IO,
    _slot: Slot,
    /// Preface bytes not yet read.
    preface_left: usize,
    preface_by: Pin<Box<Sleep>>,
    idle: Duration,
    /// Armed for `idle` after the last read it knows of; a read only
    /// notes its time (`last_read`), and the timer is moved when it fires
    /// early: no timer-wheel update per message.
    idle_by: Pin<Box<Sleep>>,
    last_read: Instant,
    /// The waker `idle_by` was last polled with: while the connection's
    /// task stays the same, the timer holds its waker and is not polled
    /// again until it has fired (a poll per read showed in profiles).
    idle_waker: Option<std::task::Waker>,
    timed_out: Option<DropReason>,
    drops: Drops,
    listener: &'static str,
}

impl<IO> Guarded<IO> {
    fn time_out(&mut self, reason: DropReason) -> Poll<std::io::Result<()>> {
        if self.timed_out.is_none() {
            self.timed_out = Some(reason);
            self.drops
                .get_or_create(&DropLabels {
                    listener: self.listener,
                    reason,
                })
                .inc();
        }
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{reason:?}"),
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(reason) = this.timed_out {
            return this.time_out(reason);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                if this.preface_left > 0 && this.preface_by.as_mut().poll(cx).is_ready() {
                    return this.time_out(DropReason::PrefaceTimeout);
                }
                let armed = this
                    .idle_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()));
                if !armed || this.idle_by.is_elapsed() {
                    while this.idle_by.as_mut().poll(cx).is_ready() {
                        let due = this.last_read + this.idle;
                        if due <= Instant::now() {
                            return this.time_out(DropReason::IdleTimeout);
                        }
                        this.idle_by.as_mut().reset(due);
                    }
                    this.idle_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.preface_left = this.preface_left.saturating_sub(read);
                    this.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Connections accepted on `listener` within `limits`, each through
/// `handshake` (TLS, or none), for `Server::serve_with_incoming`. What is
/// refused or fails is closed, counted in `drops` under `name`, and never
/// passed on. The tasks end when the returned stream is dropped.
pub fn incoming<IO, H, F>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    drops: Drops,
    handshake: H,
) -> ReceiverStream<std::io::Result<Guarded<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(limits.pending_handshakes.max(1));
    let open = Arc::new(Mutex::new(Open::default()));
    let pending = Arc::new(Semaphore::new(limits.pending_handshakes));
    let count = move |drops: &Drops, reason| {
        drops
            .get_or_create(&DropLabels {
                listener: name,
                reason,
            })
            .inc();
    };
    tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, mostly: let some close.
                        tracing::warn!("accepting a connection on the {name} listener: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let accepted_at = Instant::now();
            let slot = match Slot::take(&open, peer.ip(), &limits) {
                Ok(slot) => slot,
                Err(reason) => {
                    count(&drops, reason);
                    tracing::debug!(%peer, ?reason, "{name} listener: connection refused");
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                count(&drops, DropReason::PendingHandshakeLimit);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let shaking = handshake(socket, peer);
            let (tx, drops) = (tx.clone(), drops.clone());
            tokio::spawn(async move {
                let shaken = tokio::time::timeout_at(accepted_at + limits.handshake, shaking).await;
                drop(permit);
                let io = match shaken {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        count(&drops, DropReason::HandshakeFailed);
                        tracing::warn!(%peer, "{name} listener: handshake refused: {e:#}");
                        return;
                    }
                    Err(_) => {
                        count(&drops, DropReason::HandshakeTimeout);
                        tracing::warn!(%peer, "{name} listener: no handshake in time");
                        return;
                    }
                };
                let guarded = Guarded {
                    io,
                    _slot: slot,
                    preface_left: HTTP2_PREFACE_LEN,
                    preface_by: Box::pin(tokio::time::sleep_until(accepted_at + limits.handshake)),
                    idle: limits.idle,
                    idle_by: Box::pin(tokio::time::sleep(limits.idle)),
                    last_read: Instant::now(),
                    idle_waker: None,
                    timed_out: None,
                    drops,
                    listener: name,
                };
                let _ = tx.send(Ok(guarded)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            per_peer: 2,
            total: 3,
            pending_handshakes: 8,
            handshake: Duration::from_millis(300),
            idle: Duration::from_millis(600),
        }
    }

    fn dropped(drops: &Drops, reason: DropReason) -> u64 {
        drops
            .get_or_create(&DropLabels {
                listener: "test",
                reason,
            })
            .get()
    }

    #[test]
    fn slots_are_bounded_per_peer_and_in_total_and_given_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let l = limits();
        let a1 = Slot::take(&open, a, &l).expect("first");
        let a2 = Slot::take(&open, a, &l).expect("second");
        assert_eq!(
            Slot::take(&open, a, &l).err(),
            Some(DropReason::PerPeerLimit)
        );
        let b1 = Slot::take(&open, b, &l).expect("another peer");
        assert_eq!(Slot::take(&open, b, &l).err(), Some(DropReason::TotalLimit));
        drop(a1);
        let a3 = Slot::take(&open, a, &l).expect("given back");
        drop((a2, a3, b1));
        let o = open.lock().expect("lock");
        assert_eq!((o.total, o.per_peer.len()), (0, 0));
    }

    /// Reads until the server closes (EOF or reset); false if it did not
    /// within `limit` (far above the listener's deadlines).
    async fn closed_by_server(conn: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(limit, conn.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn silent_and_stalled_peers_are_closed_and_extra_connections_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let drops = Drops::default();
        let mut conns = incoming("test", listener, limits(), drops.clone(), |s, _| async {
            Ok(s)
        });
        // The server side: hold what it accepts, read until it fails.
        let served = tokio::spawn(async move {
            use tokio_stream::StreamExt;
            while let Some(Ok(mut conn)) = conns.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        let limit = Duration::from_secs(20);
        // Sends nothing.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        // Sends part of the preface.
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        partial
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        // A third from the same address is over the per-peer limit.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert!(
            closed_by_server(&mut third, limit).await,
            "over the per-peer limit"
        );
        assert!(closed_by_server(&mut silent, limit).await, "silent peer");
        assert!(
            closed_by_server(&mut partial, limit).await,
            "partial preface"
        );
        // One that sends its preface and then stops is closed when idle.
        let mut quiet = TcpStream::connect(addr).await.expect("connect");
        quiet
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        assert!(closed_by_server(&mut quiet, limit).await, "idle peer");
        assert_eq!(dropped(&drops, DropReason::PerPeerLimit), 1);
        assert_eq!(dropped(&drops, DropReason::PrefaceTimeout), 2);
        assert_eq!(dropped(&drops, DropReason::IdleTimeout), 1);
        served.abort();
    }
}
