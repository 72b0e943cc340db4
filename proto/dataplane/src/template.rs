//! NodePort virtual servers as templates.
//!
//! kube-proxy's ipvs mode puts a NodePort's virtual server on every address
//! of the node. Written out per address, a NodePort Service's endpoint change
//! edits every node's own state (5,000 nodes: 5,000 edits and 5,000 stored
//! node rows). In the contract it is one atom instead, keyed by the
//! unspecified address of its family — `0.0.0.0:30080` / `[::]:30080` —
//! meaning "on each address of this node's node-port address set": the
//! `SP-NODEPORT-IPS` / `SP6-NODEPORT-IPS` set, which lives in the node's own
//! part. The template is shared like any other atom, so the change edits one
//! shared fragment.
//!
//! The digest covers templates and the address set as they are. What the
//! kernel holds is the expansion: the agent plans, applies and verifies
//! against [`expand`], and renders of the kernel's view (`ipvs`) expand too.
//!
//! ```text
//!  services: 0.0.0.0:30080/tcp ─┐
//!                               ├─ expand ─▶ 192.168.10.11:30080/tcp, 10.0.0.11:30080/tcp
//!  node/a:   SP-NODEPORT-IPS ───┘            (same scheduler and real servers)
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::fragment::Fragment;
use crate::model::{Family, SetEntry, VirtualServer, VirtualServerKey};

/// The set listing the addresses a node serves NodePorts on, per family.
pub fn node_port_address_set(family: Family) -> &'static str {
    match family {
        Family::Inet => "SP-NODEPORT-IPS",
        Family::Inet6 => "SP6-NODEPORT-IPS",
    }
}

/// The address a template is keyed by in `family`.
pub fn template_address(family: Family) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Whether `key` is a template rather than a kernel virtual server.
pub fn is_template(key: &VirtualServerKey) -> bool {
    key.address.is_unspecified()
}

/// The addresses `f` lists for NodePorts in `family`, in order.
pub fn node_port_addresses(f: &Fragment, family: Family) -> Vec<IpAddr> {
    f.entries(node_port_address_set(family))
        .into_iter()
        .flatten()
        .filter_map(|entry| match entry {
            SetEntry::Ip(ip) if Family::of(ip) == family => Some(*ip),
            _ => None,
        })
        .collect()
}

/// The templates of `f` (a range read per family, not a scan).
pub fn templates(f: &Fragment) -> Vec<(VirtualServerKey, Arc<VirtualServer>)> {
    Family::ALL
        .into_iter()
        .flat_map(|family| {
            f.virtual_servers_at(template_address(family))
                .map(|(k, vs)| (*k, vs.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A template would land on an address and port that already has a virtual
/// server of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collision {
    pub key: VirtualServerKey,
}

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NodePort virtual server {}/{} collides with a virtual server of its own on that node address",
            self.key, self.key.protocol
        )
    }
}

impl std::error::Error for Collision {}

/// The concrete virtual servers `template` stands for on this node.
pub fn expansion(
    f: &Fragment,
    template: &VirtualServerKey,
) -> impl Iterator<Item = VirtualServerKey> + use<> {
    let (protocol, port) = (template.protocol, template.port);
    node_port_addresses(f, template.family())
        .into_iter()
        .map(move |address| VirtualServerKey {
            address,
            protocol,
            port,
        })
}

/// `f` with every template replaced by its virtual servers on the node's
/// node-port addresses: what the kernel holds. O(templates × addresses);
/// a fragment without templates comes back as a clone.
pub fn expand(f: &Fragment) -> Result<Fragment, Collision> {
    let mut out = f.clone();
    for (template, vs) in templates(f) {
        out.remove_virtual_server(&template);
        for key in expansion(f, &template) {
            if out.put_virtual_server(key, vs.clone()).is_some() {
                return Err(Collision { key });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, RealServer, Scheduler, SetSpec, SetType};

    fn vs(backend: &str) -> Arc<VirtualServer> {
        Arc::new(VirtualServer::new(
            Scheduler::Rr,
            None,
            vec![RealServer {
                address: backend.parse().unwrap(),
                port: 8080,
                weight: 1,
                forward: Default::default(),
            }],
        ))
    }

    fn key(address: &str, port: u16) -> VirtualServerKey {
        VirtualServerKey {
            address: address.parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn node(addresses: &[&str]) -> Fragment {
        let mut f = Fragment::new();
        for family in Family::ALL {
            f.put_set(
                node_port_address_set(family),
                SetSpec {
                    kind: SetType::HashIp,
                    family,
                    maxelem: 1024,
                    comment: String::new(),
                },
            );
        }
        for a in addresses {
            let ip: IpAddr = a.parse().unwrap();
            f.add_entry(node_port_address_set(Family::of(&ip)), SetEntry::Ip(ip));
        }
        f
    }

    #[test]
    fn a_template_becomes_one_virtual_server_per_address_of_its_family() {
        let mut f = node(&["192.168.10.11", "10.0.0.11", "fd00::11"]);
        f.put_virtual_server(key("0.0.0.0", 30080), vs("10.244.1.5"));
        f.put_virtual_server(key("::", 30081), vs("fd00:244::5"));
        f.put_virtual_server(key("10.96.0.10", 80), vs("10.244.1.5"));
        let kernel = expand(&f).unwrap();
        let keys: Vec<String> = kernel
            .virtual_servers()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "10.0.0.11:30080",
                "10.96.0.10:80",
                "192.168.10.11:30080",
                "[fd00::11]:30081"
            ]
        );
        assert_eq!(
            kernel.virtual_server(&key("10.0.0.11", 30080)),
            f.virtual_server(&key("0.0.0.0", 30080))
        );
        assert!(templates(&kernel).is_empty());
    }

    #[test]
    fn without_addresses_a_template_serves_nowhere() {
        let mut f = node(&[]);
        f.put_virtual_server(key("0.0.0.0", 30080), vs("10.244.1.5"));
        assert_eq!(expand(&f).unwrap().virtual_server_count(), 0);
    }

    #[test]
    fn a_template_on_an_address_with_its_own_virtual_server_is_a_collision() {
        let mut f = node(&["192.168.10.11"]);
        f.put_virtual_server(key("0.0.0.0", 30080), vs("10.244.1.5"));
        f.put_virtual_server(key("192.168.10.11", 30080), vs("10.244.9.9"));
        assert_eq!(
            expand(&f),
            Err(Collision {
                key: key("192.168.10.11", 30080)
            })
        );
    }

    #[test]
    fn a_fragment_without_templates_expands_to_itself() {
        let mut f = node(&["192.168.10.11"]);
        f.put_virtual_server(key("10.96.0.10", 80), vs("10.244.1.5"));
        assert_eq!(expand(&f).unwrap(), f);
    }
}
