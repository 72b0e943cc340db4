//! IPVS virtual and real servers over generic netlink (family "IPVS"), in
//! the terms of the dataplane contract, in this or a named network
//! namespace.
//!
//! ```text
//!  IpvsClient ──add/edit/del service, dest──▶ kernel
//!             ◀──dump: services + their dests── (→ VirtualServerKey → VirtualServer)
//! ```
//!
//! Each call is one blocking request; nothing is cached, so a dump is the
//! kernel's state at that moment. Firewall-mark virtual servers are never
//! Setpoint's: a dump skips and counts them.

mod attrs;

use std::collections::BTreeMap;
use std::net::IpAddr;

use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use setpoint_dataplane::{RealServer, Scheduler, VirtualServer, VirtualServerKey};

pub use crate::netlink::RequestError;
use crate::netlink::{Netlink, NetlinkError};
use attrs::{
    CMD_DEL_DEST, CMD_DEL_SERVICE, CMD_GET_DEST, CMD_GET_SERVICE, CMD_NEW_DEST, CMD_NEW_SERVICE,
    CMD_SET_DEST, CMD_SET_SERVICE, DumpedService,
};

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// Nothing to talk to: the IPVS module is not loaded (or not built).
    #[error("the kernel has no IPVS (generic netlink family IPVS not found; modprobe ip_vs)")]
    Unsupported,
    /// The namespace, the socket, or the kernel's answer; every operation
    /// is named "IPVS …".
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl IpvsError {
    /// The errno the kernel answered with. IPVS says `EEXIST` for a virtual
    /// or real server that already exists, `ESRCH` for a virtual server
    /// and `ENOENT` for a real server that does not.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Request(e) => e.errno(),
            IpvsError::Unsupported => None,
        }
    }
}

fn failed(
    e: NetlinkError,
    operation: &'static str,
    target: String,
    netns: Option<&str>,
) -> IpvsError {
    IpvsError::Request(e.named(operation, target, netns))
}

fn unreadable(operation: &'static str, target: String, reason: attrs::Unreadable) -> IpvsError {
    IpvsError::Request(RequestError::Malformed {
        operation,
        target,
        reason: reason.to_string(),
    })
}

/// What a dump of the kernel's virtual servers found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IpvsDump {
    /// Every address-based virtual server, with its real servers.
    pub services: BTreeMap<VirtualServerKey, VirtualServer>,
    /// Firewall-mark virtual servers, which are someone else's.
    pub fwmark_services: usize,
}

/// Connections of one real server, for graceful termination.
pub type DestConnections = (IpAddr, u16, u32, u32);

/// A generic netlink socket talking to IPVS in one network namespace.
pub struct IpvsClient {
    netlink: Netlink,
    family: u16,
}

fn service_target(key: &VirtualServerKey) -> String {
    format!("{} {key}", key.protocol)
}

fn dest_target(key: &VirtualServerKey, address: IpAddr, port: u16) -> String {
    format!(
        "{} {key} -> {}",
        key.protocol,
        std::net::SocketAddr::new(address, port)
    )
}

impl IpvsClient {
    /// Connects in the agent's own network namespace.
    pub fn connect() -> Result<Self, IpvsError> {
        Self::connect_in(None)
    }

    /// Connects in network namespace `/var/run/netns/<netns>` (the socket
    /// stays there), or in the agent's own with `None`.
    pub fn connect_in(netns: Option<&str>) -> Result<Self, IpvsError> {
        let fail = |e| failed(e, "IPVS connect", "family IPVS".into(), netns);
        let mut netlink = Netlink::open(NlFamily::Generic, netns).map_err(fail)?;
        match netlink.resolve_family(attrs::GENL_NAME).map_err(fail)? {
            Some(family) => Ok(IpvsClient { netlink, family }),
            None => Err(IpvsError::Unsupported),
        }
    }

    /// One acknowledged command.
    fn command(
        &mut self,
        operation: &'static str,
        target: impl FnOnce() -> String,
        cmd: u8,
        attrs: Result<Vec<attrs::Attr>, NetlinkError>,
    ) -> Result<(), IpvsError> {
        let message = attrs.and_then(|attrs| attrs::message(cmd, attrs));
        message
            .and_then(|message| self.netlink.request(self.family, NlmF::empty(), message))
            .map(drop)
            .map_err(|e| failed(e, operation, target(), None))
    }

    /// Adds the virtual server alone; its real servers are added one by one.
    pub fn add_service(
        &mut self,
        key: &VirtualServerKey,
        vs: &VirtualServer,
    ) -> Result<(), IpvsError> {
        let attrs = attrs::service(key, vs.scheduler, vs.persistence_timeout).map(|a| vec![a]);
        self.command(
            "IPVS add service",
            || service_target(key),
            CMD_NEW_SERVICE,
            attrs,
        )
    }

    pub fn edit_service(
        &mut self,
        key: &VirtualServerKey,
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
    ) -> Result<(), IpvsError> {
        let attrs = attrs::service(key, scheduler, persistence_timeout).map(|a| vec![a]);
        self.command(
            "IPVS edit service",
            || service_target(key),
            CMD_SET_SERVICE,
            attrs,
        )
    }

    /// Deletes the virtual server with all its real servers.
    pub fn del_service(&mut self, key: &VirtualServerKey) -> Result<(), IpvsError> {
        let attrs = attrs::service_key(key).map(|a| vec![a]);
        self.command(
            "IPVS delete service",
            || service_target(key),
            CMD_DEL_SERVICE,
            attrs,
        )
    }

    fn with_service(
        key: &VirtualServerKey,
        dest: Result<attrs::Attr, NetlinkError>,
    ) -> Result<Vec<attrs::Attr>, NetlinkError> {
        Ok(vec![attrs::service_key(key)?, dest?])
    }

    pub fn add_dest(&mut self, key: &VirtualServerKey, rs: &RealServer) -> Result<(), IpvsError> {
        let attrs = Self::with_service(key, attrs::dest(rs));
        let target = || dest_target(key, rs.address, rs.port);
        self.command("IPVS add real server", target, CMD_NEW_DEST, attrs)
    }

    /// Sets the weight and forwarding method of an existing real server.
    pub fn edit_dest(&mut self, key: &VirtualServerKey, rs: &RealServer) -> Result<(), IpvsError> {
        let attrs = Self::with_service(key, attrs::dest(rs));
        let target = || dest_target(key, rs.address, rs.port);
        self.command("IPVS edit real server", target, CMD_SET_DEST, attrs)
    }

    pub fn del_dest(
        &mut self,
        key: &VirtualServerKey,
        address: IpAddr,
        port: u16,
    ) -> Result<(), IpvsError> {
        let attrs = Self::with_service(key, attrs::dest_key(&address, port));
        let target = || dest_target(key, address, port);
        self.command("IPVS delete real server", target, CMD_DEL_DEST, attrs)
    }

    /// Every virtual server with its real servers, as the contract has them.
    pub fn dump(&mut self) -> Result<IpvsDump, IpvsError> {
        let operation = "IPVS dump services";
        let replies = attrs::message(CMD_GET_SERVICE, Vec::new())
            .and_then(|m| self.netlink.request(self.family, NlmF::DUMP, m))
            .map_err(|e| failed(e, operation, "(all)".into(), None))?;
        let mut dump = IpvsDump::default();
        for reply in replies {
            let service = attrs::decode_service(&reply)
                .map_err(|reason| unreadable(operation, "(all)".into(), reason))?;
            match service {
                DumpedService::Fwmark(_) => dump.fwmark_services += 1,
                DumpedService::Address {
                    key,
                    scheduler,
                    persistence_timeout,
                } => {
                    let real_servers = self
                        .dests(&key)?
                        .into_iter()
                        .map(|d| d.real_server)
                        .collect();
                    let vs = VirtualServer::new(scheduler, persistence_timeout, real_servers);
                    dump.services.insert(key, vs);
                }
            }
        }
        Ok(dump)
    }

    /// One virtual server with its real servers; `None` when the kernel
    /// has none at `key`. Two round trips, whatever the table size.
    pub fn service(&mut self, key: &VirtualServerKey) -> Result<Option<VirtualServer>, IpvsError> {
        let operation = "IPVS get service";
        let replies = match attrs::service_key(key)
            .and_then(|service| attrs::message(CMD_GET_SERVICE, vec![service]))
            .and_then(|m| self.netlink.request(self.family, NlmF::empty(), m))
            .map_err(|e| failed(e, operation, service_target(key), None))
        {
            Ok(r) => r,
            Err(e) if matches!(e.errno(), Some(libc::ESRCH) | Some(libc::ENOENT)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(reply) = replies.first() else {
            return Ok(None);
        };
        let decoded = attrs::decode_service(reply)
            .map_err(|reason| unreadable(operation, service_target(key), reason))?;
        let DumpedService::Address {
            scheduler,
            persistence_timeout,
            ..
        } = decoded
        else {
            return Ok(None);
        };
        let real_servers = self
            .dests(key)?
            .into_iter()
            .map(|d| d.real_server)
            .collect();
        Ok(Some(VirtualServer::new(
            scheduler,
            persistence_timeout,
            real_servers,
        )))
    }

    /// [`IpvsClient::dump`] without the count of others' virtual servers.
    pub fn services(&mut self) -> Result<BTreeMap<VirtualServerKey, VirtualServer>, IpvsError> {
        self.dump().map(|dump| dump.services)
    }

    /// (address, port, active, inactive connections) of each real server
    /// of a virtual server: a removed one may go once both reach zero.
    pub fn dest_connections(
        &mut self,
        key: &VirtualServerKey,
    ) -> Result<Vec<DestConnections>, IpvsError> {
        Ok(self
            .dests(key)?
            .into_iter()
            .map(|d| {
                let rs = d.real_server;
                (
                    rs.address,
                    rs.port,
                    d.active_connections,
                    d.inactive_connections,
                )
            })
            .collect())
    }

    fn dests(&mut self, key: &VirtualServerKey) -> Result<Vec<attrs::DumpedDest>, IpvsError> {
        let operation = "IPVS dump real servers of";
        let replies = attrs::service_key(key)
            .and_then(|service| attrs::message(CMD_GET_DEST, vec![service]))
            .and_then(|m| self.netlink.request(self.family, NlmF::DUMP, m))
            .map_err(|e| failed(e, operation, service_target(key), None))?;
        replies
            .iter()
            .map(|reply| {
                attrs::decode_dest(reply, &key.address)
                    .map_err(|reason| unreadable(operation, service_target(key), reason))
            })
            .collect()
    }
}
