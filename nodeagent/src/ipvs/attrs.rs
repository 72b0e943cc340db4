//! The IPVS generic netlink vocabulary, from the kernel's
//! `include/uapi/linux/ip_vs.h`, and the translation between its
//! attributes and the dataplane contract. Pure: no socket here.
//!
//! Encoding follows the kernel's parser (`ip_vs_genl_parse_service`,
//! `ip_vs_genl_parse_dest` in `net/netfilter/ipvs/ip_vs_ctl.c`): integers
//! in host order, ports in network order, addresses as the 16-byte
//! `union nf_inet_addr` (IPv4 in the first four bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::genl::{Genlmsghdr, GenlmsghdrBuilder, Nlattr};
use neli::types::{Buffer, GenlBuffer};
use setpoint_dataplane::{Forward, Protocol, RealServer, Scheduler, VirtualServerKey};

use crate::netlink::{NetlinkError, genl_attr, nul_terminated, parse};

pub(super) const GENL_NAME: &str = "IPVS";
const GENL_VERSION: u8 = 1;

// enum { IPVS_CMD_UNSPEC = 0, ... }: daemon, config, info, zero and flush
// commands (9..=17) are not used.
pub(super) const CMD_NEW_SERVICE: u8 = 1;
pub(super) const CMD_SET_SERVICE: u8 = 2;
pub(super) const CMD_DEL_SERVICE: u8 = 3;
pub(super) const CMD_GET_SERVICE: u8 = 4;
pub(super) const CMD_NEW_DEST: u8 = 5;
pub(super) const CMD_SET_DEST: u8 = 6;
pub(super) const CMD_DEL_DEST: u8 = 7;
pub(super) const CMD_GET_DEST: u8 = 8;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

// Service attributes; STATS (10), PE_NAME (11) and STATS64 (12) are not read.
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

// Destination attributes; PERSIST_CONNS (9), STATS (10), STATS64 (12) and
// the tunnel settings TUN_TYPE, TUN_PORT, TUN_FLAGS (13..=15) are not used.
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

const SVC_F_PERSISTENT: u32 = 0x0001;
const CONN_F_FWD_MASK: u32 = 0x0007;
const CONN_F_MASQ: u32 = 0;
const CONN_F_LOCALNODE: u32 = 1;
const CONN_F_TUNNEL: u32 = 2;
const CONN_F_DROUTE: u32 = 3;

pub(super) type Attr = Nlattr<u16, Buffer>;
pub(super) type IpvsMessage = Genlmsghdr<u8, u16>;

pub(super) fn message(cmd: u8, attrs: Vec<Attr>) -> Result<IpvsMessage, NetlinkError> {
    GenlmsghdrBuilder::default()
        .cmd(cmd)
        .version(GENL_VERSION)
        .attrs(attrs.into_iter().collect::<GenlBuffer<u16, Buffer>>())
        .build()
        .map_err(|e| NetlinkError::Malformed(format!("cannot encode request: {e}")))
}

fn nest(kind: u16, children: Vec<Result<Attr, NetlinkError>>) -> Result<Attr, NetlinkError> {
    children
        .into_iter()
        .try_fold(genl_attr(kind, Vec::new())?, |nest, child| {
            nest.nest(&child?)
                .map_err(|e| NetlinkError::Malformed(format!("cannot nest attribute: {e}")))
        })
}

fn family(address: &IpAddr) -> u16 {
    match address {
        IpAddr::V4(_) => libc::AF_INET as u16,
        IpAddr::V6(_) => libc::AF_INET6 as u16,
    }
}

/// `union nf_inet_addr`.
fn inet_addr(address: &IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            bytes
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn protocol_number(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP as u16,
        Protocol::Udp => libc::IPPROTO_UDP as u16,
        Protocol::Sctp => libc::IPPROTO_SCTP as u16,
    }
}

fn service_identity(key: &VirtualServerKey) -> Vec<Result<Attr, NetlinkError>> {
    vec![
        genl_attr(SVC_ATTR_AF, family(&key.address).to_ne_bytes()),
        genl_attr(
            SVC_ATTR_PROTOCOL,
            protocol_number(key.protocol).to_ne_bytes(),
        ),
        genl_attr(SVC_ATTR_ADDR, inet_addr(&key.address)),
        genl_attr(SVC_ATTR_PORT, key.port.to_be_bytes()),
    ]
}

/// The attribute naming a virtual server: what deleting it and the
/// destination commands need.
pub(super) fn service_key(key: &VirtualServerKey) -> Result<Attr, NetlinkError> {
    nest(CMD_ATTR_SERVICE, service_identity(key))
}

/// A whole virtual server, as adding and editing one need it: the kernel
/// refuses either without scheduler, flags, timeout and netmask.
pub(super) fn service(
    key: &VirtualServerKey,
    scheduler: Scheduler,
    persistence_timeout: Option<u32>,
) -> Result<Attr, NetlinkError> {
    let flags = if persistence_timeout.is_some() {
        SVC_F_PERSISTENT
    } else {
        0
    };
    // struct ip_vs_flags { flags, mask }: a full mask makes the flags exact.
    let flags = [flags.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat();
    // Persistence granularity: one client address (ipvsadm's default);
    // IPv6 takes it as a prefix length.
    let netmask: u32 = match key.address {
        IpAddr::V4(_) => u32::MAX,
        IpAddr::V6(_) => 128,
    };
    let mut attrs = service_identity(key);
    attrs.extend([
        genl_attr(SVC_ATTR_SCHED_NAME, nul_terminated(scheduler.as_str())),
        genl_attr(SVC_ATTR_FLAGS, flags),
        genl_attr(
            SVC_ATTR_TIMEOUT,
            persistence_timeout.unwrap_or(0).to_ne_bytes(),
        ),
        genl_attr(SVC_ATTR_NETMASK, netmask.to_ne_bytes()),
    ]);
    nest(CMD_ATTR_SERVICE, attrs)
}

fn dest_identity(address: &IpAddr, port: u16) -> Vec<Result<Attr, NetlinkError>> {
    vec![
        genl_attr(DEST_ATTR_ADDR_FAMILY, family(address).to_ne_bytes()),
        genl_attr(DEST_ATTR_ADDR, inet_addr(address)),
        genl_attr(DEST_ATTR_PORT, port.to_be_bytes()),
    ]
}

/// The attribute naming a real server of some virtual server.
pub(super) fn dest_key(address: &IpAddr, port: u16) -> Result<Attr, NetlinkError> {
    nest(CMD_ATTR_DEST, dest_identity(address, port))
}

/// A whole real server, as adding and editing one need it.
pub(super) fn dest(real_server: &RealServer) -> Result<Attr, NetlinkError> {
    let forward = match real_server.forward {
        Forward::Masq => CONN_F_MASQ,
        Forward::Route => CONN_F_DROUTE,
        Forward::Tunnel => CONN_F_TUNNEL,
    };
    let mut attrs = dest_identity(&real_server.address, real_server.port);
    attrs.extend([
        genl_attr(DEST_ATTR_FWD_METHOD, forward.to_ne_bytes()),
        genl_attr(DEST_ATTR_WEIGHT, real_server.weight.to_ne_bytes()),
        // No connection thresholds.
        genl_attr(DEST_ATTR_U_THRESH, 0u32.to_ne_bytes()),
        genl_attr(DEST_ATTR_L_THRESH, 0u32.to_ne_bytes()),
    ]);
    nest(CMD_ATTR_DEST, attrs)
}

/// A virtual server as a service dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DumpedService {
    /// Firewall-mark virtual servers are never Setpoint's.
    Fwmark(u32),
    Address {
        key: VirtualServerKey,
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
    },
}

/// A real server as a destination dump reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DumpedDest {
    pub real_server: RealServer,
    pub active_connections: u32,
    pub inactive_connections: u32,
}

/// Why a kernel answer could not be read. `what` is the nested attribute
/// being read ("service", "destination").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unreadable {
    /// The message around the attributes.
    #[error("{0}")]
    Message(String),
    #[error("no {0} attribute")]
    NoNested(&'static str),
    #[error("{what}: {reason}")]
    Nested { what: &'static str, reason: String },
    #[error("{what} attribute {kind} is missing")]
    Missing { what: &'static str, kind: u16 },
    #[error("{what} attribute {kind} has {len} bytes, not {want}")]
    Size {
        what: &'static str,
        kind: u16,
        len: usize,
        want: usize,
    },
    #[error("{what}: address family {family}")]
    Family { what: &'static str, family: i32 },
    #[error("service protocol {0} is not tcp, udp or sctp")]
    Protocol(i32),
    #[error("{key}: scheduler name {name:?} is not text")]
    SchedulerText {
        key: VirtualServerKey,
        name: Vec<u8>,
    },
    #[error("{protocol} {key}: {reason}")]
    Scheduler {
        protocol: Protocol,
        key: VirtualServerKey,
        reason: String,
    },
    #[error("real server {address}:{port}: forwarding method {method}")]
    Forwarding {
        address: IpAddr,
        port: u16,
        method: u32,
    },
}

/// The attributes nested in one top-level attribute of a kernel message,
/// looked up by type; unknown types are simply never asked for.
struct Fields {
    attrs: Vec<(u16, Vec<u8>)>,
    what: &'static str,
}

impl Fields {
    fn of(message_payload: &[u8], nested: u16, what: &'static str) -> Result<Fields, Unreadable> {
        let message: IpvsMessage = parse(message_payload).map_err(describe)?;
        let top = message.attrs().get_attr_handle();
        let outer = top
            .get_attribute(nested)
            .ok_or(Unreadable::NoNested(what))?;
        let inner = outer
            .get_attr_handle::<u16>()
            .map_err(|e| Unreadable::Nested {
                what,
                reason: e.to_string(),
            })?;
        let attrs = inner
            .iter()
            .map(|a| (*a.nla_type().nla_type(), a.nla_payload().as_ref().to_vec()))
            .collect();
        Ok(Fields { attrs, what })
    }

    fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map(|(_, payload)| payload.as_slice())
    }

    fn required(&self, kind: u16) -> Result<&[u8], Unreadable> {
        self.get(kind).ok_or(Unreadable::Missing {
            what: self.what,
            kind,
        })
    }

    fn array<const N: usize>(&self, kind: u16) -> Result<[u8; N], Unreadable> {
        let bytes = self.required(kind)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Unreadable::Size {
            what: self.what,
            kind,
            len: bytes.len(),
            want: N,
        })
    }

    fn u16(&self, kind: u16) -> Result<u16, Unreadable> {
        self.array(kind).map(u16::from_ne_bytes)
    }

    fn be_u16(&self, kind: u16) -> Result<u16, Unreadable> {
        self.array(kind).map(u16::from_be_bytes)
    }

    fn u32(&self, kind: u16) -> Result<u32, Unreadable> {
        self.array(kind).map(u32::from_ne_bytes)
    }

    fn address(&self, kind: u16, family: u16) -> Result<IpAddr, Unreadable> {
        let bytes = self.array::<16>(kind)?;
        match i32::from(family) {
            libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            libc::AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(Unreadable::Family {
                what: self.what,
                family: other,
            }),
        }
    }
}

fn describe(e: NetlinkError) -> Unreadable {
    Unreadable::Message(match e {
        NetlinkError::Malformed(why) => why,
        other => format!("{other:?}"),
    })
}

/// Decodes one message of a service dump.
pub(super) fn decode_service(message_payload: &[u8]) -> Result<DumpedService, Unreadable> {
    let fields = Fields::of(message_payload, CMD_ATTR_SERVICE, "service")?;
    let family = fields.u16(SVC_ATTR_AF)?;
    if fields.get(SVC_ATTR_FWMARK).is_some() {
        return fields.u32(SVC_ATTR_FWMARK).map(DumpedService::Fwmark);
    }
    let protocol = match i32::from(fields.u16(SVC_ATTR_PROTOCOL)?) {
        libc::IPPROTO_TCP => Protocol::Tcp,
        libc::IPPROTO_UDP => Protocol::Udp,
        libc::IPPROTO_SCTP => Protocol::Sctp,
        other => return Err(Unreadable::Protocol(other)),
    };
    let key = VirtualServerKey {
        address: fields.address(SVC_ATTR_ADDR, family)?,
        protocol,
        port: fields.be_u16(SVC_ATTR_PORT)?,
    };
    let name = fields.required(SVC_ATTR_SCHED_NAME)?;
    let name = name.split(|b| *b == 0).next().unwrap_or_default();
    let scheduler = std::str::from_utf8(name)
        .map_err(|_| Unreadable::SchedulerText {
            key,
            name: name.to_vec(),
        })?
        .parse::<Scheduler>()
        .map_err(|reason| Unreadable::Scheduler {
            protocol,
            key,
            reason,
        })?;
    let flags = fields.array::<8>(SVC_ATTR_FLAGS)?;
    let flags = u32::from_ne_bytes([flags[0], flags[1], flags[2], flags[3]]);
    let timeout = fields.u32(SVC_ATTR_TIMEOUT)?;
    Ok(DumpedService::Address {
        key,
        scheduler,
        persistence_timeout: (flags & SVC_F_PERSISTENT != 0).then_some(timeout),
    })
}

/// Decodes one message of a destination dump of a virtual server whose
/// address is in `service_family`.
pub(super) fn decode_dest(
    message_payload: &[u8],
    service_address: &IpAddr,
) -> Result<DumpedDest, Unreadable> {
    let fields = Fields::of(message_payload, CMD_ATTR_DEST, "destination")?;
    // Kernels before 4.x do not report a destination's own family.
    let family = match fields.get(DEST_ATTR_ADDR_FAMILY) {
        Some(_) => fields.u16(DEST_ATTR_ADDR_FAMILY)?,
        None => family(service_address),
    };
    let address = fields.address(DEST_ATTR_ADDR, family)?;
    let port = fields.be_u16(DEST_ATTR_PORT)?;
    let forward = match fields.u32(DEST_ATTR_FWD_METHOD)? & CONN_F_FWD_MASK {
        // Older kernels record masquerading to one of their own addresses
        // as "local node".
        CONN_F_MASQ | CONN_F_LOCALNODE => Forward::Masq,
        CONN_F_DROUTE => Forward::Route,
        CONN_F_TUNNEL => Forward::Tunnel,
        method => {
            return Err(Unreadable::Forwarding {
                address,
                port,
                method,
            });
        }
    };
    Ok(DumpedDest {
        real_server: RealServer {
            address,
            port,
            weight: fields.u32(DEST_ATTR_WEIGHT)?,
            forward,
        },
        active_connections: fields.u32(DEST_ATTR_ACTIVE_CONNS)?,
        inactive_connections: fields.u32(DEST_ATTR_INACT_CONNS)?,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use neli::ToBytes;

    use super::*;

    fn bytes_of(attr: &Attr) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::new());
        attr.to_bytes(&mut cursor).expect("serialise");
        cursor.into_inner()
    }

    /// One attribute as the kernel lays it out: length, type, payload, padding.
    fn tlv(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((4 + payload.len()) as u16).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// A kernel reply's payload: the generic netlink header, then one nest.
    fn reply(cmd: u8, nested_kind: u16, children: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![cmd, GENL_VERSION, 0, 0];
        // The kernel marks nests with NLA_F_NESTED.
        out.extend(tlv(nested_kind | 0x8000, &children.concat()));
        out
    }

    fn key(address: &str, protocol: Protocol, port: u16) -> VirtualServerKey {
        VirtualServerKey {
            address: address.parse().expect("address"),
            protocol,
            port,
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_ipv4_service_is_encoded_byte_for_byte() {
        let attr = service(
            &key("10.96.0.10", Protocol::Tcp, 80),
            Scheduler::Rr,
            Some(10800),
        )
        .expect("encode");
        let inner = [
            tlv(SVC_ATTR_AF, &[2, 0]),
            tlv(SVC_ATTR_PROTOCOL, &[6, 0]),
            tlv(
                SVC_ATTR_ADDR,
                &[10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            tlv(SVC_ATTR_PORT, &[0, 80]),
            tlv(SVC_ATTR_SCHED_NAME, b"rr\0"),
            tlv(SVC_ATTR_FLAGS, &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            tlv(SVC_ATTR_TIMEOUT, &[0x30, 0x2a, 0, 0]),
            tlv(SVC_ATTR_NETMASK, &[0xff, 0xff, 0xff, 0xff]),
        ]
        .concat();
        assert_eq!(bytes_of(&attr), tlv(CMD_ATTR_SERVICE | 0x8000, &inner));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_ipv6_real_server_is_encoded_byte_for_byte() {
        let rs = RealServer {
            address: "fd00::1".parse().expect("address"),
            port: 8080,
            weight: 5,
            forward: Forward::Route,
        };
        let mut address = [0u8; 16];
        address[0] = 0xfd;
        address[15] = 1;
        let inner = [
            tlv(DEST_ATTR_ADDR_FAMILY, &[10, 0]),
            tlv(DEST_ATTR_ADDR, &address),
            tlv(DEST_ATTR_PORT, &[0x1f, 0x90]),
            tlv(DEST_ATTR_FWD_METHOD, &[3, 0, 0, 0]),
            tlv(DEST_ATTR_WEIGHT, &[5, 0, 0, 0]),
            tlv(DEST_ATTR_U_THRESH, &[0; 4]),
            tlv(DEST_ATTR_L_THRESH, &[0; 4]),
        ]
        .concat();
        assert_eq!(
            bytes_of(&dest(&rs).expect("encode")),
            tlv(CMD_ATTR_DEST | 0x8000, &inner)
        );
    }

    #[test]
    fn an_unpersistent_ipv6_service_clears_the_flag_and_masks_128() {
        let bytes = bytes_of(
            &service(&key("fd00::10", Protocol::Udp, 53), Scheduler::Mh, None).expect("encode"),
        );
        let tail = [
            tlv(
                SVC_ATTR_FLAGS,
                &[0u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
            ),
            tlv(SVC_ATTR_TIMEOUT, &0u32.to_ne_bytes()),
            tlv(SVC_ATTR_NETMASK, &128u32.to_ne_bytes()),
        ]
        .concat();
        assert!(bytes.ends_with(&tail), "{bytes:?}");
    }

    /// A service as a 6.x kernel dumps it, stats and all.
    fn kernel_service_reply() -> Vec<u8> {
        let stats = [tlv(1, &7u32.to_ne_bytes()), tlv(2, &9u32.to_ne_bytes())].concat();
        reply(
            CMD_NEW_SERVICE,
            CMD_ATTR_SERVICE,
            &[
                tlv(SVC_ATTR_AF, &2u16.to_ne_bytes()),
                tlv(SVC_ATTR_PROTOCOL, &17u16.to_ne_bytes()),
                tlv(
                    SVC_ATTR_ADDR,
                    &[10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                tlv(SVC_ATTR_PORT, &53u16.to_be_bytes()),
                tlv(SVC_ATTR_SCHED_NAME, b"wrr\0"),
                // Persistent and hashed, as the kernel reports it.
                tlv(
                    SVC_ATTR_FLAGS,
                    &[3u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
                ),
                tlv(SVC_ATTR_TIMEOUT, &10800u32.to_ne_bytes()),
                tlv(SVC_ATTR_NETMASK, &u32::MAX.to_ne_bytes()),
                tlv(10 | 0x8000, &stats),
                tlv(12 | 0x8000, &stats),
            ],
        )
    }

    #[test]
    fn a_kernel_service_decodes_into_the_contract() {
        assert_eq!(
            decode_service(&kernel_service_reply()),
            Ok(DumpedService::Address {
                key: key("10.96.0.10", Protocol::Udp, 53),
                scheduler: Scheduler::Wrr,
                persistence_timeout: Some(10800),
            })
        );
        let fwmark = reply(
            CMD_NEW_SERVICE,
            CMD_ATTR_SERVICE,
            &[
                tlv(SVC_ATTR_AF, &2u16.to_ne_bytes()),
                tlv(SVC_ATTR_FWMARK, &5u32.to_ne_bytes()),
            ],
        );
        assert_eq!(decode_service(&fwmark), Ok(DumpedService::Fwmark(5)));
    }

    #[test]
    fn a_kernel_dest_decodes_into_the_contract() {
        let dest = reply(
            CMD_NEW_DEST,
            CMD_ATTR_DEST,
            &[
                tlv(
                    DEST_ATTR_ADDR,
                    &[10, 0, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                tlv(DEST_ATTR_PORT, &8080u16.to_be_bytes()),
                // Masquerading plus the kernel's own INACTIVE bit (0x100).
                tlv(DEST_ATTR_FWD_METHOD, &0x100u32.to_ne_bytes()),
                tlv(DEST_ATTR_WEIGHT, &3u32.to_ne_bytes()),
                tlv(13, &[0]),
                tlv(DEST_ATTR_ACTIVE_CONNS, &4u32.to_ne_bytes()),
                tlv(DEST_ATTR_INACT_CONNS, &2u32.to_ne_bytes()),
                tlv(DEST_ATTR_ADDR_FAMILY, &2u16.to_ne_bytes()),
            ],
        );
        let service_address: IpAddr = "10.96.0.10".parse().expect("address");
        assert_eq!(
            decode_dest(&dest, &service_address),
            Ok(DumpedDest {
                real_server: RealServer {
                    address: "10.0.1.5".parse().expect("address"),
                    port: 8080,
                    weight: 3,
                    forward: Forward::Masq,
                },
                active_connections: 4,
                inactive_connections: 2,
            })
        );
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let cases = [
            (key("10.96.0.10", Protocol::Tcp, 443), Scheduler::Sh, None),
            (key("fd00::a", Protocol::Sctp, 9), Scheduler::Lc, Some(60)),
        ];
        for (k, scheduler, persistence_timeout) in cases {
            let mut payload = vec![CMD_NEW_SERVICE, GENL_VERSION, 0, 0];
            payload.extend(bytes_of(
                &service(&k, scheduler, persistence_timeout).expect("encode"),
            ));
            assert_eq!(
                decode_service(&payload),
                Ok(DumpedService::Address {
                    key: k,
                    scheduler,
                    persistence_timeout
                })
            );
        }
        let rs = RealServer {
            address: "fd00::1:5".parse().expect("address"),
            port: 80,
            weight: 1,
            forward: Forward::Tunnel,
        };
        let mut payload = vec![CMD_NEW_DEST, GENL_VERSION, 0, 0];
        let mut encoded = dest(&rs).expect("encode");
        for (kind, value) in [(DEST_ATTR_ACTIVE_CONNS, 0u32), (DEST_ATTR_INACT_CONNS, 0)] {
            encoded = encoded
                .nest(&genl_attr(kind, value.to_ne_bytes()).expect("attr"))
                .expect("nest");
        }
        payload.extend(bytes_of(&encoded));
        let decoded = decode_dest(&payload, &"fd00::a".parse().expect("address")).expect("decode");
        assert_eq!(decoded.real_server, rs);
    }

    #[test]
    fn malformed_kernel_attributes_are_errors() {
        let with = |replace: u16, payload: &[u8]| {
            let good: [(u16, &[u8]); 7] = [
                (SVC_ATTR_AF, &2u16.to_ne_bytes()),
                (SVC_ATTR_PROTOCOL, &6u16.to_ne_bytes()),
                (
                    SVC_ATTR_ADDR,
                    &[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                (SVC_ATTR_PORT, &[0, 80]),
                (SVC_ATTR_SCHED_NAME, b"rr\0"),
                (SVC_ATTR_FLAGS, &[0; 8]),
                (SVC_ATTR_TIMEOUT, &[0; 4]),
            ];
            let children: Vec<Vec<u8>> = good
                .into_iter()
                .map(|(kind, good)| tlv(kind, if kind == replace { payload } else { good }))
                .collect();
            decode_service(&reply(CMD_NEW_SERVICE, CMD_ATTR_SERVICE, &children))
        };
        assert!(
            with(SVC_ATTR_AF, &2u16.to_ne_bytes()).is_ok(),
            "the baseline decodes"
        );
        assert!(
            with(SVC_ATTR_ADDR, &[10, 0, 0]).is_err(),
            "a 3-byte address"
        );
        assert!(
            with(SVC_ATTR_AF, &77u16.to_ne_bytes()).is_err(),
            "an unknown family"
        );
        assert!(
            with(SVC_ATTR_PROTOCOL, &50u16.to_ne_bytes()).is_err(),
            "ESP"
        );
        assert!(
            with(SVC_ATTR_PORT, &[0, 80, 0, 0]).is_err(),
            "a 4-byte port"
        );
        assert!(
            with(SVC_ATTR_SCHED_NAME, b"fo\0").is_err(),
            "a scheduler outside the contract"
        );
        assert!(
            with(SVC_ATTR_FLAGS, &[0; 4]).is_err(),
            "half a flags struct"
        );
        assert!(
            decode_service(&reply(CMD_NEW_SERVICE, CMD_ATTR_DEST, &[])).is_err(),
            "no service"
        );
        assert!(
            decode_service(&[CMD_NEW_SERVICE, 1]).is_err(),
            "half a header"
        );
    }

    #[test]
    fn no_truncation_or_corruption_of_a_reply_panics() {
        let good = kernel_service_reply();
        for cut in 0..good.len() {
            let _ = decode_service(&good[..cut]);
            let _ = decode_dest(&good[..cut], &"10.0.0.1".parse().expect("address"));
        }
        for at in 0..good.len() {
            for value in [0x00, 0x03, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = decode_service(&bad);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes as a kernel reply: an error or a value, never
        /// a panic.
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_service(&bytes);
            let _ = decode_dest(&bytes, &"10.0.0.1".parse().expect("address"));
            let _ = decode_dest(&bytes, &"fd00::1".parse().expect("address"));
        }

        /// Well-framed replies whose attributes are arbitrary (any type,
        /// any length, nested where the kernel nests), so the decoders get
        /// past the framing.
        #[test]
        fn arbitrary_attributes_never_panic(
            cmd in proptest::prelude::any::<u8>(),
            nested in proptest::sample::select(vec![CMD_ATTR_SERVICE, CMD_ATTR_DEST, 0, 7]),
            children in proptest::collection::vec(
                (0u16..20, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24)),
                0..12,
            ),
        ) {
            let children: Vec<Vec<u8>> = children.iter().map(|(k, p)| tlv(*k, p)).collect();
            let bytes = reply(cmd, nested, &children);
            let _ = decode_service(&bytes);
            let _ = decode_dest(&bytes, &"10.0.0.1".parse().expect("address"));
        }
    }
}
