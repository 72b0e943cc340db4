//! The interface that holds service addresses (a dummy link such as
//! `setpoint0`, so the node accepts packets for them and IPVS sees them),
//! over rtnetlink, in this or a named network namespace.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, Ifla, IflaInfo, RtAddrFamily, RtScope, Rtm};
use neli::consts::socket::NlFamily;
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, Rtattr, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};

pub use crate::netlink::RequestError;
use crate::netlink::{Netlink, NetlinkError, nul_terminated, parse};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Creating a dummy link failed with "Unknown device type".
    #[error(
        "the kernel has no dummy interfaces (creating {name}: unknown device type; modprobe dummy)"
    )]
    Unsupported { name: String },
    /// The namespace, the socket, or the kernel's answer.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl LinkError {
    /// The errno the kernel answered with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Request(e) => e.errno(),
            LinkError::Unsupported { .. } => None,
        }
    }
}

fn unreadable(operation: &'static str, target: String, reason: String) -> LinkError {
    LinkError::Request(RequestError::Malformed {
        operation,
        target,
        reason,
    })
}

/// An rtnetlink socket in one network namespace.
pub struct LinkClient {
    netlink: Netlink,
}

fn rtattr<T: neli::consts::rtnl::RtaType>(
    kind: T,
    payload: Vec<u8>,
) -> Result<Rtattr<T, Buffer>, NetlinkError> {
    RtattrBuilder::default()
        .rta_type(kind)
        .rta_payload(Buffer::from(payload))
        .build()
        .map_err(|e| NetlinkError::Malformed(format!("cannot encode attribute: {e}")))
}

fn encode_error(e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Malformed(format!("cannot encode request: {e}"))
}

/// A host address (/32, /128) message for `address` on `ifindex`.
fn host_address(ifindex: u32, address: IpAddr) -> Result<Ifaddrmsg, NetlinkError> {
    let (family, prefix, bytes) = match address {
        IpAddr::V4(v4) => (RtAddrFamily::Inet, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (RtAddrFamily::Inet6, 128, v6.octets().to_vec()),
    };
    IfaddrmsgBuilder::default()
        .ifa_family(family)
        .ifa_prefixlen(prefix)
        // A service address is never a duplicate to detect, and a tentative
        // one could not be bound to.
        .ifa_flags(IfaF::NODAD)
        .ifa_scope(RtScope::Universe)
        .ifa_index(ifindex)
        .rtattrs(RtBuffer::from_iter([
            rtattr(Ifa::Local, bytes.clone())?,
            rtattr(Ifa::Address, bytes)?,
        ]))
        .build()
        .map_err(encode_error)
}

/// An address attribute whose length does not fit its family.
#[derive(Debug, thiserror::Error)]
#[error("{family:?} address of {len} bytes")]
struct WrongLength {
    family: RtAddrFamily,
    len: usize,
}

/// The address `message` carries, `None` for a family other than IPv4
/// and IPv6.
fn address_of(message: &Ifaddrmsg) -> Result<Option<IpAddr>, WrongLength> {
    let handle = message.rtattrs().get_attr_handle();
    // IPv4 keeps the peer of a point-to-point link in IFA_ADDRESS.
    let Some(attr) = handle
        .get_attribute(Ifa::Local)
        .or_else(|| handle.get_attribute(Ifa::Address))
    else {
        return Ok(None);
    };
    let bytes: &[u8] = attr.rta_payload().as_ref();
    let wrong = || WrongLength {
        family: *message.ifa_family(),
        len: bytes.len(),
    };
    match message.ifa_family() {
        RtAddrFamily::Inet => <[u8; 4]>::try_from(bytes)
            .map(|b| Some(IpAddr::V4(Ipv4Addr::from(b))))
            .map_err(|_| wrong()),
        RtAddrFamily::Inet6 => <[u8; 16]>::try_from(bytes)
            .map(|b| Some(IpAddr::V6(Ipv6Addr::from(b))))
            .map_err(|_| wrong()),
        _ => Ok(None),
    }
}

fn is_link_local(address: &IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

impl LinkClient {
    /// Connects in network namespace `/var/run/netns/<netns>` (the socket
    /// stays there), or in the agent's own with `None`.
    pub fn connect_in(netns: Option<&str>) -> Result<Self, LinkError> {
        let netlink = Netlink::open(NlFamily::Route, netns)
            .map_err(|e| e.named("connect", "rtnetlink".into(), netns))?;
        Ok(LinkClient { netlink })
    }

    fn request<P>(
        &mut self,
        operation: &'static str,
        target: impl FnOnce() -> String,
        kind: Rtm,
        flags: NlmF,
        payload: Result<P, NetlinkError>,
    ) -> Result<Vec<Vec<u8>>, LinkError>
    where
        P: neli::Size + neli::ToBytes + std::fmt::Debug,
    {
        payload
            .and_then(|p| self.netlink.request(kind, flags, p))
            .map_err(|e| LinkError::Request(e.named(operation, target(), None)))
    }

    /// The index of interface `name`, `None` if there is none.
    pub fn ifindex(&mut self, name: &str) -> Result<Option<u32>, LinkError> {
        let request = rtattr(Ifla::Ifname, nul_terminated(name)).and_then(|attr| {
            IfinfomsgBuilder::default()
                .ifi_family(RtAddrFamily::Unspecified)
                .rtattrs(RtBuffer::from_iter([attr]))
                .build()
                .map_err(encode_error)
        });
        let replies = match self.request(
            "look up link",
            || name.into(),
            Rtm::Getlink,
            NlmF::empty(),
            request,
        ) {
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                return Ok(None);
            }
            other => other?,
        };
        let malformed = |reason: String| unreadable("look up link", name.into(), reason);
        let reply = replies
            .first()
            .ok_or_else(|| malformed("no link in the answer".into()))?;
        let link: Ifinfomsg = parse(reply).map_err(|e| malformed(format!("{e:?}")))?;
        u32::try_from(*link.ifi_index())
            .map(Some)
            .map_err(|_| malformed(format!("interface index {}", link.ifi_index())))
    }

    /// Creates dummy interface `name` unless it exists, sets it up, and
    /// returns its index.
    pub fn ensure_dummy(&mut self, name: &str) -> Result<u32, LinkError> {
        if self.ifindex(name)?.is_none() {
            let request = (|| {
                let kind = rtattr(IflaInfo::Kind, b"dummy".to_vec())?;
                let info = rtattr(Ifla::Linkinfo, Vec::new())?
                    .nest(&kind)
                    .map_err(encode_error)?;
                IfinfomsgBuilder::default()
                    .ifi_family(RtAddrFamily::Unspecified)
                    .rtattrs(RtBuffer::from_iter([
                        rtattr(Ifla::Ifname, nul_terminated(name))?,
                        info,
                    ]))
                    .build()
                    .map_err(encode_error)
            })();
            let created = self.request(
                "create dummy link",
                || name.into(),
                Rtm::Newlink,
                NlmF::CREATE | NlmF::EXCL,
                request,
            );
            match created {
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                    return Err(LinkError::Unsupported { name: name.into() });
                }
                // Someone else created it meanwhile; it is used as found.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                other => drop(other?),
            }
        }
        let index = self.ifindex(name)?.ok_or_else(|| {
            unreadable(
                "create dummy link",
                name.into(),
                "the link is gone right after its creation".into(),
            )
        })?;
        let up = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as libc::c_int)
            .up()
            .build()
            .map_err(encode_error);
        self.request(
            "set link up",
            || name.into(),
            Rtm::Newlink,
            NlmF::empty(),
            up,
        )?;
        Ok(index)
    }

    /// Every address on interface `ifindex`, whatever its prefix length,
    /// except IPv6 link-local ones: the kernel gives one to every interface
    /// that comes up, manages it itself, and it is never a service address.
    pub fn addresses(&mut self, ifindex: u32) -> Result<BTreeSet<IpAddr>, LinkError> {
        Ok(self
            .dump_addresses(|| format!("interface {ifindex}"))?
            .into_iter()
            .filter(|(on, address)| *on == ifindex && !is_link_local(address))
            .map(|(_, address)| address)
            .collect())
    }

    /// Every IPv4 and IPv6 address of every interface, with the index of
    /// the interface that holds it (one dump).
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpAddr)>, LinkError> {
        self.dump_addresses(|| "all interfaces".to_string())
    }

    fn dump_addresses(
        &mut self,
        target: impl Fn() -> String,
    ) -> Result<Vec<(u32, IpAddr)>, LinkError> {
        let request = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(encode_error);
        let replies = self.request(
            "list addresses of",
            &target,
            Rtm::Getaddr,
            NlmF::DUMP,
            request,
        )?;
        let mut addresses = Vec::with_capacity(replies.len());
        for reply in &replies {
            let read = parse::<Ifaddrmsg>(reply)
                .map_err(|e| format!("{e:?}"))
                .and_then(|message| {
                    let address = address_of(&message).map_err(|e| e.to_string())?;
                    Ok(address.map(|a| (*message.ifa_index(), a)))
                });
            match read {
                Ok(address) => addresses.extend(address),
                Err(reason) => return Err(unreadable("list addresses of", target(), reason)),
            }
        }
        Ok(addresses)
    }

    /// Adds `address` as a host address (/32, /128); present already is fine.
    pub fn add_address(&mut self, ifindex: u32, address: IpAddr) -> Result<(), LinkError> {
        let target = || format!("{address} to interface {ifindex}");
        let request = host_address(ifindex, address);
        match self.request(
            "add address",
            target,
            Rtm::Newaddr,
            NlmF::CREATE | NlmF::EXCL,
            request,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes host address `address`; absent already is fine. The same
    /// address with a shorter prefix is not Setpoint's and stays.
    pub fn del_address(&mut self, ifindex: u32, address: IpAddr) -> Result<(), LinkError> {
        let target = || format!("{address} from interface {ifindex}");
        let request = host_address(ifindex, address);
        match self.request(
            "delete address",
            target,
            Rtm::Deladdr,
            NlmF::empty(),
            request,
        ) {
            Err(e) if matches!(e.errno(), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => Ok(()),
            other => other.map(drop),
        }
    }
}
