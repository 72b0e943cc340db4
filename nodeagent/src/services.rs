//! The kernel's IPVS and the service-address interface as the executor's
//! [`ServiceKernel`]; on a kernel without IPVS, one that refuses states
//! with virtual servers (or, when asked, an in-memory stand-in that says so).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use setpoint_dataplane::{Fragment, VirtualServer, VirtualServerKey};

use crate::apply::{ApplyError, NoIpvs, ServiceKernel};
use crate::ipvs::{IpvsClient, IpvsError};

use crate::kernel_model::ModelServices;
use crate::link::{LinkClient, LinkError};
use crate::plan::Op;
use crate::target::Target;

/// The interface service addresses are bound to (kube-proxy's is
/// `kube-ipvs0`; a node may run both during a migration).
pub const SERVICE_INTERFACE: &str = "setpoint0";

/// IPVS through generic netlink, addresses on the dummy interface.
pub struct KernelServices {
    ipvs: IpvsClient,
    link: LinkClient,
    ifindex: u32,
}

fn ipvs_error(op: &Op, e: IpvsError) -> ApplyError {
    ApplyError::Service {
        operation: describe(op),
        message: e.to_string(),
    }
}

fn link_error(operation: String, e: LinkError) -> ApplyError {
    ApplyError::Service {
        operation,
        message: e.to_string(),
    }
}

fn describe(op: &Op) -> String {
    match op {
        Op::AddVirtualServer { key, .. } => format!("add virtual server {key}"),
        Op::EditVirtualServer { key, .. } => format!("edit virtual server {key}"),
        Op::DelVirtualServer { key } => format!("delete virtual server {key}"),
        Op::AddRealServer { key, real_server } => format!(
            "add real server {}:{} to {key}",
            real_server.address, real_server.port
        ),
        Op::EditRealServer { key, real_server } => format!(
            "set real server {}:{} of {key} to weight {}",
            real_server.address, real_server.port, real_server.weight
        ),
        Op::DelRealServer { key, address, port } => {
            format!("delete real server {address}:{port} of {key}")
        }
        Op::AddAddress { address } => format!("add address {address}"),
        Op::DelAddress { address } => format!("delete address {address}"),
        other => format!("{other:?}"),
    }
}

impl KernelServices {
    pub fn connect(target: &Target) -> Result<KernelServices, ApplyError> {
        let netns = target.netns.as_deref();
        let ipvs = IpvsClient::connect_in(netns).map_err(|e| ApplyError::Service {
            operation: "connect to IPVS".into(),
            message: e.to_string(),
        })?;
        let mut link = LinkClient::connect_in(netns)
            .map_err(|e| link_error("connect to rtnetlink".into(), e))?;
        let ifindex = link
            .ensure_dummy(SERVICE_INTERFACE)
            .map_err(|e| link_error(format!("create {SERVICE_INTERFACE}"), e))?;
        // Not fatal: IPVS works without them, only less like kube-proxy's.
        if let Err(e) = crate::sysctl::ensure_ipvs_sysctls(netns) {
            eprintln!("warning: IPVS sysctls: {e}");
        }
        Ok(KernelServices {
            ipvs,
            link,
            ifindex,
        })
    }
}

impl ServiceKernel for KernelServices {
    fn missing_feature(&self) -> Option<String> {
        None
    }

    fn read(&mut self, into: &mut Fragment) -> Result<(), ApplyError> {
        let services = self.ipvs.services().map_err(|e| ApplyError::Service {
            operation: "dump IPVS".into(),
            message: e.to_string(),
        })?;
        for (key, vs) in services {
            into.put_virtual_server(key, Arc::new(vs));
        }
        for a in self.read_addresses()? {
            into.add_address(a);
        }
        Ok(())
    }

    fn read_virtual_server(
        &mut self,
        key: &VirtualServerKey,
    ) -> Result<Option<VirtualServer>, ApplyError> {
        self.ipvs.service(key).map_err(|e| ApplyError::Service {
            operation: format!("read virtual server {key}"),
            message: e.to_string(),
        })
    }

    fn read_addresses(&mut self) -> Result<BTreeSet<IpAddr>, ApplyError> {
        self.link
            .addresses(self.ifindex)
            .map_err(|e| link_error(format!("list addresses of {SERVICE_INTERFACE}"), e))
    }

    fn execute(&mut self, op: &Op) -> Result<(), ApplyError> {
        let ipvs = &mut self.ipvs;
        match op {
            Op::AddVirtualServer {
                key,
                virtual_server,
            } => {
                ipvs.add_service(key, virtual_server)
                    .map_err(|e| ipvs_error(op, e))?;
                for rs in &virtual_server.real_servers {
                    ipvs.add_dest(key, rs).map_err(|e| ipvs_error(op, e))?;
                }
                Ok(())
            }
            Op::EditVirtualServer {
                key,
                scheduler,
                persistence_timeout,
            } => ipvs
                .edit_service(key, *scheduler, *persistence_timeout)
                .map_err(|e| ipvs_error(op, e)),
            Op::DelVirtualServer { key } => ipvs.del_service(key).map_err(|e| ipvs_error(op, e)),
            Op::AddRealServer { key, real_server } => ipvs
                .add_dest(key, real_server)
                .map_err(|e| ipvs_error(op, e)),
            Op::EditRealServer { key, real_server } => ipvs
                .edit_dest(key, real_server)
                .map_err(|e| ipvs_error(op, e)),
            Op::DelRealServer { key, address, port } => ipvs
                .del_dest(key, *address, *port)
                .map_err(|e| ipvs_error(op, e)),
            Op::AddAddress { address } => self
                .link
                .add_address(self.ifindex, *address)
                .map_err(|e| link_error(describe(op), e)),
            Op::DelAddress { address } => self
                .link
                .del_address(self.ifindex, *address)
                .map_err(|e| link_error(describe(op), e)),
            other => Err(ApplyError::Service {
                operation: describe(other),
                message: "not an IPVS or address operation".into(),
            }),
        }
    }

    fn connections(
        &mut self,
        key: &VirtualServerKey,
    ) -> Result<Vec<(IpAddr, u16, u32, u32)>, ApplyError> {
        self.ipvs
            .dest_connections(key)
            .map_err(|e| ApplyError::Service {
                operation: format!("read connections of {key}"),
                message: e.to_string(),
            })
    }
}

/// How the agent handles virtual servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IpvsMode {
    /// The kernel's IPVS; refuse states with virtual servers without it.
    #[default]
    Kernel,
    /// Keep virtual servers in memory only: for demos and tests on kernels
    /// without IPVS. Nothing forwards Service traffic in this mode.
    Simulated,
}

pub fn for_target(target: &Target, mode: IpvsMode) -> Box<dyn ServiceKernel + Send> {
    match mode {
        IpvsMode::Simulated => Box::new(ModelServices::default()),
        IpvsMode::Kernel => match KernelServices::connect(target) {
            Ok(k) => Box::new(k),
            Err(e) => Box::new(NoIpvs {
                reason: format!("cannot program virtual servers here ({e})"),
            }),
        },
    }
}
