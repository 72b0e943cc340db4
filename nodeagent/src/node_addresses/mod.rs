//! Which of the node's own addresses serve NodePorts: kube-proxy's
//! `--nodeport-addresses`, on the agent.
//!
//! The control plane lists the Node object's addresses in the node's own
//! part (`SP-NODEPORT-IPS` / `SP6-NODEPORT-IPS`), and every NodePort
//! template expands over that set on the agent. With `--nodeport-addresses`
//! naming CIDRs or `all`, the agent fills the set from its interfaces
//! instead ([`watch`] reads them over rtnetlink and follows them): a local
//! overlay on the state it plans from. The state it was sent stays as
//! sent — its digest is what the agent acks — and only the kernel's view
//! changes: the set's entries and the virtual servers the templates
//! expand to.
//!
//! ```text
//!  interfaces ─watch─▶ Interfaces ─select(flag)─▶ NodeAddresses ─┐
//!  received state ──────────────────────────────────────────────┴─overlay─▶ flat ─expand─▶ kernel view
//!                  (set's entries replaced; service addresses left out; at most the set's limit)
//! ```
//!
//! Per family, as kube-proxy does: a CIDR list that names no CIDR of a
//! family serves that family's NodePorts on all its local addresses, and a
//! zero CIDR (`0.0.0.0/0`, `::/0`) means all of them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use setpoint_dataplane::template::node_port_address_set;
use setpoint_dataplane::{Family, Fragment, NodeDataplane, SetEntry};

pub mod watch;

/// At most this many addresses per family go into a node-port address set
/// from the node's interfaces (and never more than the set's `maxelem`):
/// every NodePort's virtual server is laid out once per address, so the
/// kernel's IPVS table grows with NodePorts × addresses.
pub const NODE_PORT_ADDRESS_LIMIT: usize = 256;

/// `--nodeport-addresses`: where the node-port address sets come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The Node object's addresses, as the control plane sends them
    /// (kube-proxy's `primary`; also what an absent flag means).
    #[default]
    Primary,
    /// The node's interface addresses, chosen per family.
    Local { inet: Selector, inet6: Selector },
}

/// Which local addresses of one family serve NodePorts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every usable local address ([`unusable`] ones and the service
    /// interface's left out).
    All,
    /// Those inside one of these networks.
    Within(Vec<IpNet>),
}

impl Selector {
    fn admits(&self, address: &IpAddr) -> bool {
        match self {
            Selector::All => true,
            Selector::Within(nets) => nets.iter().any(|net| net.contains(address)),
        }
    }
}

/// A `--nodeport-addresses` value that is none of `primary`, `all` or a
/// comma-separated list of CIDRs (the text follows the flag's name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("empty: give `primary`, `all` or a comma-separated list of CIDRs")]
    Empty,
    #[error("an empty item in `{value}`")]
    EmptyItem { value: String },
    #[error("`{word}` stands alone, not in a list with CIDRs")]
    KeywordInList { word: String },
    #[error("`{item}` is not a CIDR (such as 10.0.0.0/8 or fd00::/64){hint}")]
    NotCidr { item: String, hint: &'static str },
}

impl FromStr for NodePortAddresses {
    type Err = FlagError;

    fn from_str(value: &str) -> Result<Self, FlagError> {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        match items.as_slice() {
            [""] => return Err(FlagError::Empty),
            ["primary"] => return Ok(NodePortAddresses::Primary),
            ["all"] => {
                return Ok(NodePortAddresses::Local {
                    inet: Selector::All,
                    inet6: Selector::All,
                });
            }
            _ => {}
        }
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            if item.is_empty() {
                return Err(FlagError::EmptyItem {
                    value: value.to_string(),
                });
            }
            if item == "primary" || item == "all" {
                return Err(FlagError::KeywordInList {
                    word: item.to_string(),
                });
            }
            let net: IpNet = item.parse().map_err(|_| FlagError::NotCidr {
                item: item.to_string(),
                hint: if item.parse::<IpAddr>().is_ok() {
                    ": an address needs its prefix length, /32 or /128"
                } else {
                    ""
                },
            })?;
            nets.push(net.trunc());
        }
        let selector = |family: Family| {
            let ours: Vec<IpNet> = nets
                .iter()
                .filter(|net| Family::of(&net.addr()) == family)
                .copied()
                .collect();
            // kube-proxy: no CIDR of a family, or a zero one, is all of it.
            if ours.is_empty() || ours.iter().any(|net| net.prefix_len() == 0) {
                Selector::All
            } else {
                Selector::Within(ours)
            }
        };
        Ok(NodePortAddresses::Local {
            inet: selector(Family::Inet),
            inet6: selector(Family::Inet6),
        })
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::Local { inet, inet6 } = self else {
            return f.write_str("primary");
        };
        let mut nets = Vec::new();
        for (selector, zero) in [(inet, "0.0.0.0/0"), (inet6, "::/0")] {
            match selector {
                Selector::All => nets.push(zero.to_string()),
                Selector::Within(within) => nets.extend(within.iter().map(IpNet::to_string)),
            }
        }
        f.write_str(&nets.join(","))
    }
}

impl NodePortAddresses {
    /// Whether the agent reads its interfaces (anything but `primary`).
    pub fn is_local(&self) -> bool {
        matches!(self, NodePortAddresses::Local { .. })
    }
}

/// Why an interface address never serves NodePorts, if it does not:
/// what the contract refuses as a virtual server's address (loopback,
/// link-local of either family, multicast, broadcast, unspecified).
/// kube-proxy leaves out loopback and IPv6 link-local; IPv4 link-local
/// (169.254/16) is left out here too, as a NodePort's virtual server there
/// would make the whole state invalid.
pub fn unusable(address: &IpAddr) -> Option<&'static str> {
    match address {
        a if a.is_unspecified() => Some("unspecified"),
        a if a.is_loopback() => Some("loopback"),
        a if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        _ => None,
    }
}

/// One address on one interface, as rtnetlink lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    pub address: IpAddr,
}

/// The node's interface addresses as read at one moment, and which
/// interface holds service addresses (`setpoint0`, when it exists).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub addresses: Vec<InterfaceAddress>,
    pub service_ifindex: Option<u32>,
}

/// The addresses the agent puts in each family's node-port address set;
/// `None` for a family leaves the control plane's list in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    inet: Option<BTreeSet<IpAddr>>,
    inet6: Option<BTreeSet<IpAddr>>,
}

/// The addresses `flag` chooses among `interfaces`: none for `primary`;
/// else, per family, the usable ones the selector admits, except those on
/// the service interface (kube-proxy's ipvs mode leaves out `kube-ipvs0`'s;
/// an address also held by another interface stays, as there).
pub fn select(flag: &NodePortAddresses, interfaces: &Interfaces) -> NodeAddresses {
    let NodePortAddresses::Local { inet, inet6 } = flag else {
        return NodeAddresses::default();
    };
    let chosen = |selector: &Selector, family: Family| {
        interfaces
            .addresses
            .iter()
            .filter(|a| Some(a.ifindex) != interfaces.service_ifindex)
            .map(|a| a.address)
            .filter(|a| Family::of(a) == family && unusable(a).is_none() && selector.admits(a))
            .collect::<BTreeSet<IpAddr>>()
    };
    NodeAddresses {
        inet: Some(chosen(inet, Family::Inet)),
        inet6: Some(chosen(inet6, Family::Inet6)),
    }
}

/// What an overlay left out of the node-port address sets, both families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeftOut {
    /// Local addresses that are the state's service addresses (a virtual
    /// server's or one bound on the service interface).
    pub service_addresses: usize,
    /// Local addresses past [`NODE_PORT_ADDRESS_LIMIT`] or the set's
    /// `maxelem`, the highest ones.
    pub over_limit: usize,
}

/// One family's set as the overlay fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlaid {
    pub entries: BTreeSet<IpAddr>,
    pub left_out: LeftOut,
}

impl NodeAddresses {
    /// From explicit per-family lists (`None`: the control plane's stays).
    pub fn new(inet: Option<BTreeSet<IpAddr>>, inet6: Option<BTreeSet<IpAddr>>) -> Self {
        NodeAddresses { inet, inet6 }
    }

    pub fn family(&self, family: Family) -> Option<&BTreeSet<IpAddr>> {
        match family {
            Family::Inet => self.inet.as_ref(),
            Family::Inet6 => self.inet6.as_ref(),
        }
    }

    /// Whether every family keeps the control plane's list.
    pub fn is_none(&self) -> bool {
        self.inet.is_none() && self.inet6.is_none()
    }

    /// The entries `family`'s node-port address set gets in `state`;
    /// `None` when the control plane's stay (nothing chosen for the family,
    /// or the state has no such set: nothing is created that the control
    /// plane did not declare). Reads the state's parts, not a flattened
    /// copy: a few lookups per address.
    pub fn entries(&self, state: &NodeDataplane, family: Family) -> Option<Overlaid> {
        let local = self.family(family)?;
        let name = node_port_address_set(family);
        let spec = state.parts().find_map(|(_, part)| part.set(name))?;
        let limit = NODE_PORT_ADDRESS_LIMIT.min(usize::try_from(spec.maxelem).unwrap_or(0));
        let mut left_out = LeftOut::default();
        let mut entries = BTreeSet::new();
        for address in local {
            let service = state.parts().any(|(_, part)| {
                part.has_address(address) || part.virtual_servers_at(*address).next().is_some()
            });
            if service {
                left_out.service_addresses += 1;
            } else if entries.len() < limit {
                entries.insert(*address);
            } else {
                left_out.over_limit += 1;
            }
        }
        Some(Overlaid { entries, left_out })
    }

    /// `flat` (`state` flattened) with the node-port address sets this
    /// overlay fills replaced; what it left out.
    pub fn overlay(&self, state: &NodeDataplane, flat: &mut Fragment) -> LeftOut {
        let mut total = LeftOut::default();
        for family in Family::ALL {
            let Some(overlaid) = self.entries(state, family) else {
                continue;
            };
            let name = node_port_address_set(family);
            flat.clear_entries(name);
            for address in overlaid.entries {
                flat.add_entry(name, SetEntry::Ip(address));
            }
            total.service_addresses += overlaid.left_out.service_addresses;
            total.over_limit += overlaid.left_out.over_limit;
        }
        total
    }
}

#[cfg(test)]
mod tests;
