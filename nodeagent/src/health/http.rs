//! A small HTTP/1.x server for the health endpoints: one request per
//! connection, answered from memory and closed (`Connection: close`), with
//! every resource a client could hold bounded — the request head's size,
//! the time from accept to the last byte written (a slow client, or one
//! that never reads, is cut off), and the connections served at once
//! (further ones wait in the kernel's accept queue).
//!
//! The endpoints read a few bytes of state and never look at a body or a
//! header, so the request line is all that is parsed; a head that is not
//! HTTP/1.x is a 400.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::decide::http_date;

/// What one server allows a client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The request line and headers together (kube-proxy's Go server
    /// allows 1 MiB; a load balancer's probe sends a few hundred bytes).
    pub head_bytes: usize,
    /// From accept to the answer written.
    pub request_time: Duration,
    /// Connections served at once by one listener.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_bytes: 8 * 1024,
            request_time: Duration::from_secs(5),
            connections: 64,
        }
    }
}

/// The parts of a request the endpoints look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without query or fragment.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `application/json` when true, else `text/plain; charset=utf-8`.
    pub json: bool,
    pub body: String,
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            json: true,
            body,
        }
    }

    /// Go's `http.NotFound`.
    pub fn not_found() -> Response {
        Response {
            status: 404,
            json: false,
            body: "404 page not found\n".to_string(),
        }
    }

    fn text(status: u16) -> Response {
        Response {
            status,
            json: false,
            body: format!("{status} {}", reason(status)),
        }
    }

    /// The whole answer on the wire; a HEAD gets the headers only.
    pub fn to_bytes(&self, head_only: bool, now: SystemTime) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nDate: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            if self.json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
            http_date(now),
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// How one connection ended, for the request counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with this status was written.
    Answered(u16),
    /// The client took longer than `request_time`.
    TimedOut,
    /// The client closed or reset before a whole request head.
    Gone,
}

/// What a server answers, and where it counts what happened.
pub trait Answer: Send + Sync + 'static {
    fn answer(&self, request: &Request) -> Response;
    fn count(&self, outcome: Outcome);
}

/// A request head read so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// No blank line yet.
    Incomplete,
    Complete(Request),
    /// Not an HTTP/1.x request.
    Bad,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head (request line and headers up to the blank line).
pub fn parse_head(buf: &[u8]) -> Head {
    // Empty lines before the request line are ignored (RFC 9112 2.2).
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let end = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 2)
        .into_iter()
        .chain(buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4))
        .min();
    let Some(end) = end else {
        return Head::Incomplete;
    };
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Head::Bad;
    };
    let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(line) = lines.next() else {
        return Head::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Bad;
    };
    if method.is_empty()
        || !method.bytes().all(is_tchar)
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || target.is_empty()
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Head::Bad;
    }
    for header in lines.filter(|l| !l.is_empty()) {
        match header.split_once(':') {
            Some((name, _)) if !name.is_empty() && name.bytes().all(is_tchar) => {}
            _ => return Head::Bad,
        }
    }
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else if target == "*" {
        target
    } else {
        return Head::Bad;
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    Head::Complete(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// Serves `listener` until the task is dropped (which closes it).
pub async fn serve<A: Answer>(listener: TcpListener, limits: Limits, answer: Arc<A>) {
    let permits = Arc::new(Semaphore::new(limits.connections.max(1)));
    loop {
        // A permit first: beyond the limit, connections wait in the
        // kernel's accept queue instead of in memory here.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause, not spin.
                tracing::warn!("health server accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(
                limits.request_time,
                connection(stream, limits.head_bytes, answer.as_ref()),
            )
            .await
            .unwrap_or(Outcome::TimedOut);
            answer.count(outcome);
            drop(permit);
        });
    }
}

async fn connection<A: Answer>(mut stream: TcpStream, head_bytes: usize, answer: &A) -> Outcome {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let (response, head_only) = loop {
        match parse_head(&buf) {
            Head::Complete(request) => {
                break (answer.answer(&request), request.method == "HEAD");
            }
            Head::Bad => break (Response::text(400), false),
            Head::Incomplete if buf.len() >= head_bytes => break (Response::text(431), false),
            Head::Incomplete => {}
        }
        let room = (head_bytes - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Outcome::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let bytes = response.to_bytes(head_only, SystemTime::now());
    if stream.write_all(&bytes).await.is_err() {
        return Outcome::Gone;
    }
    let _ = stream.shutdown().await;
    Outcome::Answered(response.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Head {
        Head::Complete(Request {
            method: method.to_string(),
            path: path.to_string(),
        })
    }

    #[test]
    fn request_heads_by_table() {
        let table: &[(&[u8], Head)] = &[
            (
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                req("GET", "/healthz"),
            ),
            (b"GET /healthz?x=1 HTTP/1.0\r\n\r\n", req("GET", "/healthz")),
            (b"\r\nHEAD / HTTP/1.1\r\n\r\n", req("HEAD", "/")),
            (b"GET /livez HTTP/1.1\n\n", req("GET", "/livez")),
            (
                b"GET http://10.0.0.1:10256/livez#f HTTP/1.1\r\n\r\n",
                req("GET", "/livez"),
            ),
            (
                b"GET http://10.0.0.1:10256 HTTP/1.1\r\n\r\n",
                req("GET", "/"),
            ),
            (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", Head::Incomplete),
            (b"", Head::Incomplete),
            (b"GET /healthz HTTP/2.0\r\n\r\n", Head::Bad),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Head::Bad),
            (b"GET  /healthz HTTP/1.1\r\n\r\n", Head::Bad),
            (b"GET healthz HTTP/1.1\r\n\r\n", Head::Bad),
            (b"G(T / HTTP/1.1\r\n\r\n", Head::Bad),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", Head::Bad),
            (b"GET / HTTP/1.1\r\n: empty\r\n\r\n", Head::Bad),
            (b"GET /\xff HTTP/1.1\r\n\r\n", Head::Bad),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
                Head::Bad,
            ),
        ];
        for (bytes, want) in table {
            assert_eq!(
                &parse_head(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn answers_on_the_wire() {
        let now = std::time::UNIX_EPOCH;
        let r = Response::json(503, "{}".to_string());
        assert_eq!(
            String::from_utf8(r.to_bytes(false, now)).expect("text"),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        let head = String::from_utf8(r.to_bytes(true, now)).expect("text");
        assert!(head.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"));
        let nf = String::from_utf8(Response::not_found().to_bytes(false, now)).expect("text");
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain"));
        assert!(nf.ends_with("\r\n\r\n404 page not found\n"));
    }
}
