//! Netlink sockets opened inside a chosen network namespace, and one
//! request/answer exchange on them. Shared by the IPVS and link clients;
//! the namespace hop alone serves the sysctl writer.
//!
//! Answers are split into messages here, every length checked, before neli
//! parses a payload: neli's own message parser subtracts header sizes
//! unchecked, and a kernel answer must never be able to panic the agent.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Cursor};
use std::os::fd::AsRawFd;
use std::time::Duration;

use neli::consts::genl::{CtrlAttr, CtrlCmd, NlAttrType};
use neli::consts::nl::{GenlId, NlType, NlmF};
use neli::consts::socket::{Msg, NlFamily};
use neli::genl::{AttrType, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use neli::{FromBytesWithInput, Size, ToBytes};

/// Large enough for any one datagram of a dump: the kernel caps those at
/// 32 KiB. A longer one is reported, not silently cut.
const RECEIVE_BUFFER: usize = 64 * 1024;
const HEADER_LEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_DUMP_INTR: u16 = 0x10;

/// Why a netlink exchange failed; each client turns it into its own error
/// naming the operation.
#[derive(Debug)]
pub(crate) enum NetlinkError {
    /// The named network namespace could not be entered.
    Netns(io::Error),
    /// The socket failed, or the kernel answered with this errno.
    Io(io::Error),
    /// An answer no kernel sends, or a request neli could not encode.
    Malformed(String),
}

impl NetlinkError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// This failure as a client reports it: `operation` on `target`, in
    /// network namespace `netns`.
    pub(crate) fn named(
        self,
        operation: &'static str,
        target: String,
        netns: Option<&str>,
    ) -> RequestError {
        match self {
            NetlinkError::Netns(source) => RequestError::Netns {
                netns: netns.unwrap_or_default().to_string(),
                source,
            },
            NetlinkError::Io(source) => RequestError::Kernel {
                operation,
                target,
                source,
            },
            NetlinkError::Malformed(reason) => RequestError::Malformed {
                operation,
                target,
                reason,
            },
        }
    }
}

/// A netlink request that failed, naming what was asked of what: the
/// failures the IPVS and link clients share.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused (see [`RequestError::errno`]) or the socket
    /// failed.
    #[error("{operation} {target}: {source}")]
    Kernel {
        operation: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    /// The kernel answered something the client cannot read.
    #[error("{operation} {target}: unreadable answer: {reason}")]
    Malformed {
        operation: &'static str,
        target: String,
        reason: String,
    },
}

impl RequestError {
    /// The errno the kernel answered with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RequestError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Runs `work` in the network namespace `/var/run/netns/<netns>`, or right
/// here when `netns` is `None`. Sockets opened by `work` stay in that
/// namespace after the short-lived thread that opened them is gone.
pub fn in_netns<T: Send>(netns: Option<&str>, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    let Some(name) = netns else {
        return Ok(work());
    };
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
                // SAFETY: setns on a namespace fd we hold open changes only
                // this thread's network namespace; the thread ends after `work`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(io::Error::new(e.kind(), format!("setns {path}: {e}")));
                }
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other(format!("the thread working in {path} panicked")))?
    })
}

/// A netlink socket of one protocol, bound to one network namespace.
pub(crate) struct Netlink {
    socket: NlSocket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub(crate) fn open(protocol: NlFamily, netns: Option<&str>) -> Result<Netlink, NetlinkError> {
        let socket = in_netns(netns, || NlSocket::connect(protocol, None, Groups::empty()))
            .map_err(NetlinkError::Netns)?
            .map_err(NetlinkError::Io)?;
        Ok(Netlink {
            socket,
            seq: 0,
            buffer: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Waits up to `timeout` for one datagram the kernel sends unasked (an
    /// NFLOG instance's packets): `Ok(None)` when none came. A datagram
    /// lost to a full receive buffer is `ENOBUFS`, for the caller to count.
    pub(crate) fn receive(&mut self, timeout: Duration) -> Result<Option<&[u8]>, NetlinkError> {
        let micros = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let tv = libc::timeval {
            tv_sec: micros / 1_000_000,
            tv_usec: micros % 1_000_000,
        };
        // SAFETY: setsockopt on our open socket with a timeval it copies.
        let set = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(NetlinkError::Io(io::Error::last_os_error()));
        }
        let len = loop {
            match self.socket.recv(&mut self.buffer[..], Msg::empty()) {
                Ok((len, _)) => break len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(NetlinkError::Io(e)),
            }
        };
        Ok(self.buffer.get(..len))
    }

    /// Asks the kernel to queue up to `bytes` for this socket.
    pub(crate) fn set_receive_buffer(&self, bytes: usize) -> Result<(), NetlinkError> {
        self.socket
            .set_recv_buffer_size(bytes)
            .map_err(NetlinkError::Io)
    }

    /// Sends one request and returns the payloads of the data messages that
    /// answer it, once the kernel has acknowledged it (or ended the dump,
    /// with `NlmF::DUMP`). A dump is always read to its end, so the socket
    /// is ready for the next request whatever the caller makes of it.
    pub(crate) fn request<T, P>(
        &mut self,
        kind: T,
        flags: NlmF,
        payload: P,
    ) -> Result<Vec<Vec<u8>>, NetlinkError>
    where
        T: NlType + Debug,
        P: Size + ToBytes + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let acked = if flags.contains(NlmF::DUMP) {
            NlmF::empty()
        } else {
            NlmF::ACK
        };
        let message = NlmsghdrBuilder::default()
            .nl_type(kind)
            .nl_flags(flags | NlmF::REQUEST | acked)
            .nl_seq(self.seq)
            .nl_pid(0)
            .nl_payload(NlPayload::Payload(payload))
            .build()
            .map_err(|e| NetlinkError::Malformed(format!("cannot encode request: {e}")))?;
        let mut bytes = Cursor::new(vec![0; message.padded_size()]);
        message
            .to_bytes(&mut bytes)
            .map_err(|e| NetlinkError::Malformed(format!("cannot encode request: {e}")))?;
        self.socket
            .send(bytes.get_ref(), Msg::empty())
            .map_err(NetlinkError::Io)?;

        let mut answer = Answer::default();
        while !answer.complete {
            let len = loop {
                match self.socket.recv(&mut self.buffer[..], Msg::TRUNC) {
                    Ok((len, _)) => break len,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(NetlinkError::Io(e)),
                }
            };
            let datagram = self.buffer.get(..len).ok_or_else(|| {
                NetlinkError::Malformed(format!(
                    "a {len}-byte answer does not fit the {RECEIVE_BUFFER}-byte buffer"
                ))
            })?;
            if len == 0 {
                return Err(NetlinkError::Malformed("empty answer".into()));
            }
            answer.take(datagram, self.seq)?;
        }
        if answer.interrupted {
            return Err(NetlinkError::Io(io::Error::new(
                io::ErrorKind::Interrupted,
                "the dump was interrupted by a concurrent change; read again",
            )));
        }
        Ok(answer.replies)
    }

    /// The id of generic netlink family `name`, `None` when the kernel has
    /// no such family.
    pub(crate) fn resolve_family(&mut self, name: &str) -> Result<Option<u16>, NetlinkError> {
        let request = GenlmsghdrBuilder::<CtrlCmd, CtrlAttr>::default()
            .cmd(CtrlCmd::Getfamily)
            .version(2)
            .attrs(GenlBuffer::from_iter([genl_attr(
                CtrlAttr::FamilyName,
                nul_terminated(name),
            )?]))
            .build()
            .map_err(|e| NetlinkError::Malformed(format!("cannot encode request: {e}")))?;
        let replies = match self.request(GenlId::Ctrl, NlmF::empty(), request) {
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            other => other?,
        };
        for reply in &replies {
            let message: Genlmsghdr<CtrlCmd, CtrlAttr> = parse(reply)?;
            let handle = message.attrs().get_attr_handle();
            if let Some(id) = handle.get_attribute(CtrlAttr::FamilyId) {
                let id: &[u8] = id.nla_payload().as_ref();
                let id = <[u8; 2]>::try_from(id).map_err(|_| {
                    NetlinkError::Malformed(format!("family id of {} bytes", id.len()))
                })?;
                return Ok(Some(u16::from_ne_bytes(id)));
            }
        }
        Err(NetlinkError::Malformed(format!(
            "the answer for family {name} has no id"
        )))
    }
}

/// What the answer to one request has brought so far.
#[derive(Default)]
struct Answer {
    replies: Vec<Vec<u8>>,
    complete: bool,
    interrupted: bool,
}

impl Answer {
    /// Takes the messages of one datagram that answer request `seq`; others
    /// are late answers to an earlier request and are skipped.
    fn take(&mut self, datagram: &[u8], seq: u32) -> Result<(), NetlinkError> {
        let malformed = |why: String| NetlinkError::Malformed(why);
        let mut rest = datagram;
        while !rest.is_empty() && !self.complete {
            let header = rest
                .get(..HEADER_LEN)
                .ok_or_else(|| malformed(format!("{} bytes left, not a header", rest.len())))?;
            let field = |at: usize| [header[at], header[at + 1]];
            let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let kind = u16::from_ne_bytes(field(4));
            let flags = u16::from_ne_bytes(field(6));
            let msg_seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
            let payload = rest.get(HEADER_LEN..len).ok_or_else(|| {
                malformed(format!("message of length {len} in {} bytes", rest.len()))
            })?;
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            if msg_seq != seq {
                continue;
            }
            match kind {
                NLMSG_ERROR | NLMSG_DONE => {
                    let code = payload
                        .get(..4)
                        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    self.complete = true;
                    match code {
                        Some(0) => {}
                        Some(code) if code < 0 => {
                            return Err(NetlinkError::Io(io::Error::from_raw_os_error(-code)));
                        }
                        // A dump's end may carry no code at all.
                        None if kind == NLMSG_DONE => {}
                        _ => return Err(malformed(format!("error message {payload:?}"))),
                    }
                }
                NLMSG_NOOP => {}
                NLMSG_OVERRUN => return Err(malformed("overrun".into())),
                _ => {
                    self.interrupted |= flags & NLM_F_DUMP_INTR != 0;
                    self.replies.push(payload.to_vec());
                }
            }
        }
        Ok(())
    }
}

/// Parses a message payload (a neli header type with its attributes).
pub(crate) fn parse<P: FromBytesWithInput<Input = usize>>(bytes: &[u8]) -> Result<P, NetlinkError> {
    P::from_bytes_with_input(&mut Cursor::new(bytes), bytes.len())
        .map_err(|e| NetlinkError::Malformed(e.to_string()))
}

/// A generic netlink attribute holding `payload` as is.
pub(crate) fn genl_attr<T: NlAttrType>(
    kind: T,
    payload: impl Into<Vec<u8>>,
) -> Result<Nlattr<T, Buffer>, NetlinkError> {
    NlattrBuilder::default()
        .nla_type(AttrType::from(kind.into()))
        .nla_payload(Buffer::from(payload.into()))
        .build()
        .map_err(|e| NetlinkError::Malformed(format!("cannot encode attribute: {e}")))
}

pub(crate) fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend(len.to_ne_bytes());
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(flags.to_ne_bytes());
        bytes.extend(seq.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    fn take(datagrams: &[Vec<u8>], seq: u32) -> Result<Answer, NetlinkError> {
        let mut answer = Answer::default();
        for datagram in datagrams {
            answer.take(datagram, seq)?;
        }
        Ok(answer)
    }

    #[test]
    fn data_then_ack_completes_and_late_answers_are_skipped() {
        let datagram = [
            message(30, 0, 6, b"stale"),
            message(30, 0, 7, b"one"),
            message(NLMSG_ERROR, 0, 7, &0i32.to_ne_bytes()),
        ]
        .concat();
        let answer = take(&[datagram], 7).expect("answer");
        assert!(answer.complete);
        assert_eq!(answer.replies, vec![b"one".to_vec()]);
    }

    #[test]
    fn a_dump_spans_datagrams_until_done() {
        let first = message(30, 2, 1, b"a");
        let second = [
            message(30, 2, 1, b"b"),
            message(NLMSG_DONE, 2, 1, &0i32.to_ne_bytes()),
        ]
        .concat();
        let mut answer = Answer::default();
        answer.take(&first, 1).expect("first");
        assert!(!answer.complete);
        answer.take(&second, 1).expect("second");
        assert!(answer.complete);
        assert_eq!(answer.replies.len(), 2);
    }

    #[test]
    fn an_errno_is_returned_as_is() {
        let datagram = message(NLMSG_ERROR, 0, 3, &(-libc::EEXIST).to_ne_bytes());
        let error = take(&[datagram], 3).err().expect("error");
        assert_eq!(error.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn truncated_or_lying_lengths_are_errors_not_panics() {
        let good = [
            message(30, 0, 1, b"payload"),
            message(NLMSG_ERROR, 0, 1, &0i32.to_ne_bytes()),
        ]
        .concat();
        for cut in 1..good.len() {
            let _ = take(&[good[..cut].to_vec()], 1);
        }
        let mut lying = good.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(take(&[lying], 1), Err(NetlinkError::Malformed(_))));
        let mut short = good;
        short[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(take(&[short], 1), Err(NetlinkError::Malformed(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary datagrams, and arbitrary headers in front of
        /// arbitrary payloads: errors or answers, never a panic, and
        /// never more reply bytes than were received.
        #[test]
        fn arbitrary_datagrams_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            framed in proptest::collection::vec(
                (
                    proptest::prelude::any::<u16>(),
                    proptest::prelude::any::<u16>(),
                    0u32..3,
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                    proptest::prelude::any::<u32>(),
                ),
                0..6,
            ),
            seq in 0u32..3,
        ) {
            let mut answer = Answer::default();
            let _ = answer.take(&raw, seq);
            let mut datagram = Vec::new();
            for (kind, flags, msg_seq, payload, lie) in &framed {
                let mut m = message(*kind, *flags, *msg_seq, payload);
                // Sometimes a length that lies.
                if lie % 4 == 0 {
                    m[..4].copy_from_slice(&lie.to_ne_bytes());
                }
                datagram.extend(m);
            }
            let mut answer = Answer::default();
            let _ = answer.take(&datagram, seq);
            let kept: usize = answer.replies.iter().map(Vec::len).sum();
            proptest::prop_assert!(kept <= datagram.len());
        }
    }
}
