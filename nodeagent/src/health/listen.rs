//! Listening sockets for the health servers, made in the network
//! namespace the agent applies into (a socket stays in the namespace it
//! was created in, whichever thread uses it later).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use tokio::net::TcpSocket;

/// The address every health-check port listens on when none is given:
/// `[::]` dual-stack, kube-proxy's Go listener on `0.0.0.0` (Go opens a
/// dual-stack socket for a wildcard address with network "tcp").
pub const ALL_ADDRESSES: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// A listening socket bound to `addr` (with `SO_REUSEADDR`, as Go's,
/// so a port closed a moment ago binds again). `[::]` is dual-stack; where
/// IPv6 is off it falls back to `0.0.0.0`. Blocking-free: it only makes
/// the socket.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    match bind_exactly(addr) {
        Err(e)
            if addr.ip() == ALL_ADDRESSES
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
        {
            bind_exactly(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
        }
        other => other,
    }
}

fn bind_exactly(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        set_v6only(&socket, false)?;
    }
    socket.bind(addr)?;
    // SAFETY: into_raw_fd gives up ownership of an open descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
    // SAFETY: listen on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn set_v6only(socket: &TcpSocket, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live
    // c_int; the descriptor is the socket's own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds each of `addrs` in the network namespace `netns` (here when
/// `None`); one result per address. Runs a short-lived thread when a
/// namespace is named: call it off the async threads.
pub fn bind_all(
    netns: Option<&str>,
    addrs: &[SocketAddr],
) -> io::Result<Vec<io::Result<std::net::TcpListener>>> {
    crate::in_netns(netns, || addrs.iter().map(|a| bind(*a)).collect())
}
