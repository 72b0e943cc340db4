//! Packets for real: what a pod answers (its name and the peer it saw, over
//! TCP, UDP and SCTP) and what a prober makes of one connection or datagram.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::scenario::Proto;

/// What one connection or datagram got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Reply {
        pod: String,
        seen: IpAddr,
    },
    /// An RST, ABORT or ICMP error, after this long.
    Refused {
        after: Duration,
        errno: String,
    },
    /// An HTTP response (`protocol: http`): its status code and body.
    Http {
        status: u16,
        body: String,
    },
    /// Nothing within the timeout.
    Dropped,
    /// Something else went wrong (a garbled reply, a local error).
    Error(String),
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Reply { pod, seen } => write!(f, "reply from {pod} seen-source {seen}"),
            Observed::Refused { after, errno } => {
                write!(f, "refused ({errno} after {} ms)", after.as_millis())
            }
            Observed::Http { status, body } => write!(f, "HTTP {status} {body:?}"),
            Observed::Dropped => f.write_str("dropped"),
            Observed::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for it.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn family(addr: &SocketAddr) -> libc::c_int {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// An SCTP one-to-one socket (SOCK_STREAM, IPPROTO_SCTP) of `addr`'s family.
fn sctp_socket(addr: &SocketAddr) -> std::io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the fd is checked.
    let fd = unsafe {
        libc::socket(
            family(addr),
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A listening SCTP socket on `addr` (IPv6 ones are IPv6 only).
pub fn sctp_listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let fd = sctp_socket(&addr)?;
    let one: libc::c_int = 1;
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option values point at a live c_int of the given size.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            size,
        ))?;
        if addr.is_ipv6() {
            check(libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &one as *const _ as *const libc::c_void,
                size,
            ))?;
        }
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of length len.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    })?;
    // SAFETY: a bound socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    // accept(2) and read/write work on an SCTP one-to-one socket as on TCP.
    Ok(TcpListener::from(fd))
}

/// Connects an SCTP socket within `timeout`.
fn sctp_connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let fd = sctp_socket(&addr)?;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) })?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid sockaddr of length len.
    let rc = unsafe { libc::connect(raw, &storage as *const _ as *const libc::sockaddr, len) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Err(ErrorKind::TimedOut.into());
        }
        let mut err: libc::c_int = 0;
        let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err and size are live and of the sizes given.
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut size,
            )
        })?;
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    // SAFETY: fcntl on a descriptor we own.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, 0) })?;
    Ok(TcpStream::from(fd))
}

/// Serves one pod's listeners forever on background threads: each line
/// (TCP, SCTP) or datagram (UDP) is answered with `<pod> <peer-ip>`.
pub fn serve_pod(pod: &str, listeners: Vec<TcpListener>, sockets: Vec<UdpSocket>) {
    for listener in listeners {
        let pod = pod.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let pod = pod.clone();
                std::thread::spawn(move || answer_stream(&pod, conn));
            }
        });
    }
    for socket in sockets {
        let pod = pod.to_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                // The request's words come back, so that a flow can match
                // replies to its numbered datagrams.
                let request = String::from_utf8_lossy(&buf[..n]);
                let _ = socket.send_to(
                    format!("{pod} {} {}\n", peer.ip(), request.trim()).as_bytes(),
                    peer,
                );
            }
        });
    }
}

fn answer_stream(pod: &str, conn: TcpStream) {
    let Ok(peer) = conn.peer_addr() else { return };
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        if line.is_err() {
            return;
        }
        if writer
            .write_all(format!("{pod} {}\n", peer.ip()).as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn classify(e: &std::io::Error, started: Instant) -> Observed {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Observed::Dropped,
        _ => match e.raw_os_error() {
            Some(
                code @ (libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ECONNRESET
                | libc::EACCES
                | libc::EPERM),
            ) => Observed::Refused {
                after: started.elapsed(),
                errno: std::io::Error::from_raw_os_error(code)
                    .kind()
                    .to_string()
                    .replace(' ', "-"),
            },
            _ => Observed::Error(e.to_string()),
        },
    }
}

fn parse_reply(line: &str) -> Observed {
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|w| w.parse().ok())) {
        (Some(pod), Some(seen)) => Observed::Reply {
            pod: pod.to_string(),
            seen,
        },
        _ => Observed::Error(format!("garbled reply {line:?}")),
    }
}

/// One request on an open stream: a line out, a line back.
pub fn ask(stream: &mut TcpStream, timeout: Duration) -> Observed {
    let started = Instant::now();
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(b"probe\n"))
    {
        return classify(&e, started);
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Observed::Refused {
                    after: started.elapsed(),
                    errno: "closed".into(),
                };
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return classify(&e, started),
        }
    }
    parse_reply(&String::from_utf8_lossy(&line))
}

/// The most of a response an HTTP probe reads (a health check's is ~150 bytes).
const HTTP_MAX: u64 = 64 * 1024;

/// One `GET path` over a fresh TCP connection to `to`, `Connection: close`,
/// read to the server's close within `timeout` per read. No retries: what
/// the first connection gets is the observation.
pub fn http_get(to: SocketAddr, path: &str, timeout: Duration) -> Observed {
    let started = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e, started),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    let result = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| (&mut stream).take(HTTP_MAX).read_to_end(&mut response));
    match result {
        // A server that answered and then reset is still an answer.
        Err(_) | Ok(_) if !response.is_empty() => parse_http(&response),
        Ok(_) => Observed::Refused {
            after: started.elapsed(),
            errno: "closed".into(),
        },
        Err(e) => classify(&e, started),
    }
}

/// The status code and body of an HTTP/1.x response (the body as sent:
/// a health check's is neither chunked nor compressed).
pub fn parse_http(response: &[u8]) -> Observed {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Observed::Error(format!("HTTP response without a header end: {text:?}"));
    };
    let status_line = head.lines().next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status)))
            if version.starts_with("HTTP/1.") && (100..=599).contains(&status) =>
        {
            Observed::Http {
                status,
                body: body.to_string(),
            }
        }
        _ => Observed::Error(format!("bad HTTP status line {status_line:?}")),
    }
}

/// Whether an HTTP body holds `want`, whitespace ignored on both sides:
/// `"localEndpoints":1,` matches kube-proxy's indented `"localEndpoints": 1,`.
pub fn body_holds(body: &str, want: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    squeeze(body).contains(&squeeze(want))
}

/// Opens a stream (TCP or SCTP) to `to`; the error already classified.
pub fn connect(proto: Proto, to: SocketAddr, timeout: Duration) -> Result<TcpStream, Observed> {
    let started = Instant::now();
    let stream = match proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, timeout),
        Proto::Sctp => sctp_connect(to, timeout),
        Proto::Udp => return Err(Observed::Error("UDP has no stream".into())),
        Proto::Http => return Err(Observed::Error("HTTP probes use http_get".into())),
    };
    stream.map_err(|e| classify(&e, started))
}

/// One connection (TCP, SCTP) or one datagram on a fresh socket (UDP).
/// Call from a thread inside the prober's network namespace.
pub fn once(proto: Proto, to: SocketAddr, timeout: Duration) -> Observed {
    match proto {
        Proto::Udp => {
            let started = Instant::now();
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let result = UdpSocket::bind(bind).and_then(|s| {
                s.connect(to)?;
                s.set_read_timeout(Some(timeout))?;
                s.send(b"probe\n")?;
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            });
            match result {
                Ok(text) => parse_reply(text.trim_end()),
                Err(e) => classify(&e, started),
            }
        }
        Proto::Http => http_get(to, "/", timeout),
        _ => match connect(proto, to, timeout) {
            Ok(mut stream) => ask(&mut stream, timeout),
            Err(observed) => observed,
        },
    }
}

/// A UDP socket connected to `to` (a fixed source port: one conntrack
/// flow) and its first answer.
pub fn udp_flow(to: SocketAddr, timeout: Duration) -> Result<(UdpSocket, Observed), Observed> {
    let started = Instant::now();
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)
        .and_then(|s| s.connect(to).map(|()| s))
        .map_err(|e| classify(&e, started))?;
    let first = ask_udp(&socket, timeout);
    Ok((socket, first))
}

/// One datagram out on a kept flow, its answer back.
pub fn ask_udp(socket: &UdpSocket, timeout: Duration) -> Observed {
    let started = Instant::now();
    let result = socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.send(b"probe\n"))
        .and_then(|_| {
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
    match result {
        Ok(text) => parse_reply(text.trim_end()),
        Err(e) => classify(&e, started),
    }
}

/// Answers left in a kept flow's socket (a flow measurement's stragglers).
pub fn drain_udp(socket: &UdpSocket) {
    let mut buf = [0u8; 512];
    if socket.set_nonblocking(true).is_ok() {
        while socket.recv(&mut buf).is_ok() {}
        let _ = socket.set_nonblocking(false);
    }
}

/// A numbered datagram every `every` on a kept flow until `stop`, with the
/// pod that answered each (by number) and when, from `origin`.
pub fn measure_flow(
    socket: UdpSocket,
    every: Duration,
    origin: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Duration, String)>> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut answers = Vec::new();
        let mut sent: Vec<Duration> = Vec::new();
        let _ = socket.set_read_timeout(Some(Duration::from_millis(5)));
        let mut buf = [0u8; 512];
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let _ = socket.send(format!("flow {}\n", sent.len()).as_bytes());
                sent.push(origin.elapsed());
                next += every;
            }
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                let words: Vec<&str> = text.split_whitespace().collect();
                if let (Some(pod), Some(&"flow"), Some(k)) = (
                    words.first(),
                    words.get(2),
                    words.get(3).and_then(|k| k.parse::<usize>().ok()),
                ) && let Some(at) = sent.get(k)
                {
                    answers.push((*at, pod.to_string()));
                }
            }
        }
        answers
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_parse_to_status_and_body() {
        let http = |status, body: &str| Observed::Http {
            status,
            body: body.into(),
        };
        let cases: &[(&[u8], Result<Observed, &str>)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"localEndpoints\":1}",
                Ok(http(200, "{\"localEndpoints\":1}")),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                Ok(http(503, "")),
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\nno", Ok(http(404, "no"))),
            (b"HTTP/1.1 200 OK\r\nX: y\r\n", Err("without a header end")),
            (b"SSH-2.0-x\r\n\r\n", Err("bad HTTP status line")),
            (b"HTTP/1.1 2000 Huh\r\n\r\n", Err("bad HTTP status line")),
            (b"web-a 10.0.0.1\n", Err("without a header end")),
        ];
        for (raw, want) in cases {
            let got = parse_http(raw);
            match (want, &got) {
                (Ok(w), g) => assert_eq!(g, w, "{raw:?}"),
                (Err(w), Observed::Error(e)) => assert!(e.contains(w), "{raw:?}: {e}"),
                (Err(w), g) => panic!("{raw:?}: want error {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn bodies_match_whitespace_blind() {
        let body = "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 10,\n\t\"serviceProxyHealthy\": true\n}";
        let cases = [
            ("\"localEndpoints\":10,", true),
            ("\"localEndpoints\": 10", true),
            ("\"localEndpoints\":1,", false),
            ("\"name\":\"web\"", true),
            ("\"serviceProxyHealthy\":false", false),
            ("", true),
        ];
        for (want, holds) in cases {
            assert_eq!(body_holds(body, want), holds, "{want:?}");
        }
    }

    /// A real socket: the request as sent, the response as read to close.
    #[test]
    fn http_get_sends_one_request_and_reads_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let at = listener.local_addr().expect("local address");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).expect("request");
                request.push(byte[0]);
            }
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"localEndpoints\":0}")
                .expect("response");
            String::from_utf8_lossy(&request).into_owned()
        });
        let got = http_get(at, "/healthz", Duration::from_secs(5));
        assert_eq!(
            got,
            Observed::Http {
                status: 503,
                body: "{\"localEndpoints\":0}".into()
            }
        );
        assert_eq!(
            server.join().expect("server"),
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        // Nothing listening: refused at once.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            l.local_addr().expect("local address")
        };
        assert!(matches!(
            http_get(closed, "/", Duration::from_secs(5)),
            Observed::Refused { .. }
        ));
    }
}
