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
//! The expansion also leaves out the node facts (health checks, node
//! conditions), which no kernel holds: the agent serves them from the
//! state itself.
//!
//! ```text
//!  services: 0.0.0.0:30080/tcp ─┐
//!                               ├─ expand ─▶ 192.168.10.11:30080/tcp, 10.0.0.11:30080/tcp
//!  node/a:   SP-NODEPORT-IPS ───┘            (same scheduler and real servers)
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::diff::{Change, Diff};
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
/// node-port addresses, and without node facts: what the kernel holds.
/// O(templates × addresses + node facts); a fragment with neither comes
/// back as a clone.
pub fn expand(f: &Fragment) -> Result<Fragment, Collision> {
    let mut out = f.without_node_facts();
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

/// The kernel's side of a contract change: `diff` turns a state whose
/// expansion is `view` into another, and the result turns `view` into the
/// other state's expansion — without expanding either state again. A
/// template's change becomes the same change on each of its virtual
/// servers. `None` when the diff edits a node-port address set (every
/// template's expansion changes shape) or when a template and a virtual
/// server of its own trade an address: the caller expands whole then.
/// Changes to node facts are left out, as [`expand`] leaves them out.
/// A collision shows as the result not applying to `view` (a virtual
/// server added where one exists).
pub fn expand_diff(view: &Fragment, diff: &Diff) -> Option<Diff> {
    let address_set = |name: &str| {
        Family::ALL
            .into_iter()
            .any(|family| node_port_address_set(family) == name)
    };
    let mut addresses: [Option<Vec<IpAddr>>; 2] = [None, None];
    let mut changes = Vec::with_capacity(diff.changes.len());
    for change in diff.changes.iter().filter(|c| c.is_kernel()) {
        let set = match change {
            Change::SetCreated { name, .. }
            | Change::SetRedefined { name, .. }
            | Change::SetDestroyed { name } => Some(name),
            Change::EntriesAdded { set, .. } | Change::EntriesRemoved { set, .. } => Some(set),
            _ => None,
        };
        if set.is_some_and(|name| address_set(name)) {
            return None;
        }
        let Some(template) = change.virtual_server_key().filter(|k| is_template(k)) else {
            changes.push(change.clone());
            continue;
        };
        let family = template.family();
        let on =
            addresses[family as usize].get_or_insert_with(|| node_port_addresses(view, family));
        for address in on.iter() {
            changes.push(change.at(VirtualServerKey {
                address: *address,
                ..*template
            }));
        }
    }
    // A template and a virtual server of its own trading one address
    // (one removed, the other added): the kernel's diff edits that virtual
    // server in place, which this one-to-one mapping does not say.
    let added: Vec<&VirtualServerKey> = changes
        .iter()
        .filter_map(|c| match c {
            Change::VirtualServerAdded { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    let traded = changes.iter().any(|c| match c {
        Change::VirtualServerRemoved { key } => added.contains(&key),
        _ => false,
    });
    (!traded).then_some(Diff { changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

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

    /// A node: templates and a concrete virtual server in a shared part,
    /// its node-port addresses in its own.
    fn state(
        addresses: &[&str],
        templates: &[(u16, &str)],
        concrete: Option<(&str, u16)>,
    ) -> crate::NodeDataplane {
        let mut services = Fragment::new();
        for (port, backend) in templates {
            services.put_virtual_server(key("0.0.0.0", *port), vs(backend));
        }
        if let Some((address, port)) = concrete {
            services.put_virtual_server(key(address, port), vs("10.244.9.9"));
        }
        crate::NodeDataplane::from_parts([
            ("services".to_string(), Arc::new(services)),
            ("node/a".to_string(), Arc::new(node(addresses))),
        ])
    }

    #[test]
    fn a_template_change_is_the_same_change_on_each_address() {
        let before = state(
            &["192.168.10.11", "10.0.0.11"],
            &[(30080, "10.244.1.5")],
            None,
        );
        let after = state(
            &["192.168.10.11", "10.0.0.11"],
            &[(30080, "10.244.1.6")],
            None,
        );
        let view = expand(&before.flatten()).unwrap();
        let kernel = expand_diff(&view, &crate::diff(&before, &after)).unwrap();
        let keys: BTreeSet<String> = kernel
            .changes
            .iter()
            .filter_map(|c| c.virtual_server_key().map(|k| k.to_string()))
            .collect();
        assert_eq!(
            keys,
            ["10.0.0.11:30080", "192.168.10.11:30080"]
                .map(String::from)
                .into()
        );
        let mut goal = view.clone();
        crate::diff::apply_to_fragment(&mut goal, &kernel).unwrap();
        assert_eq!(goal, expand(&after.flatten()).unwrap());
    }

    #[test]
    fn an_address_set_change_asks_for_a_whole_expansion() {
        let before = state(&["192.168.10.11"], &[(30080, "10.244.1.5")], None);
        let after = state(&["192.168.10.12"], &[(30080, "10.244.1.5")], None);
        let view = expand(&before.flatten()).unwrap();
        assert_eq!(expand_diff(&view, &crate::diff(&before, &after)), None);
    }

    const ADDRESSES: [&str; 3] = ["192.168.10.11", "10.0.0.11", "192.168.10.12"];
    const BACKENDS: [&str; 3] = ["10.244.1.5", "10.244.1.6", "10.244.2.7"];

    fn arbitrary_state() -> impl proptest::strategy::Strategy<Value = crate::NodeDataplane> {
        use proptest::prelude::*;
        (
            proptest::sample::subsequence(ADDRESSES.to_vec(), 0..=3),
            proptest::collection::btree_map(30080u16..30084, 0..BACKENDS.len(), 0..4),
            proptest::option::of((0..ADDRESSES.len(), 30080u16..30084)),
        )
            .prop_map(|(addresses, templates, concrete)| {
                let templates: Vec<(u16, &str)> = templates
                    .into_iter()
                    .map(|(p, b)| (p, BACKENDS[b]))
                    .collect();
                state(
                    &addresses,
                    &templates,
                    concrete.map(|(a, p)| (ADDRESSES[a], p)),
                )
            })
    }

    proptest::proptest! {
        /// The kernel diff turns the old expansion into the new one, or
        /// fails to apply exactly when the new state collides.
        #[test]
        fn expand_diff_agrees_with_expanding_both_states(
            before in arbitrary_state(),
            after in arbitrary_state(),
        ) {
            let Ok(view) = expand(&before.flatten()) else {
                return Ok(());
            };
            let contract = crate::diff(&before, &after);
            let Some(kernel) = expand_diff(&view, &contract) else {
                let sets = |s: &crate::NodeDataplane| {
                    Family::ALL.map(|family| node_port_addresses(&s.flatten(), family))
                };
                let traded = contract.changes.iter().any(|c| {
                    matches!(c, Change::VirtualServerAdded { .. })
                }) && contract.changes.iter().any(|c| {
                    matches!(c, Change::VirtualServerRemoved { .. })
                });
                proptest::prop_assert!(sets(&before) != sets(&after) || traded);
                return Ok(());
            };
            let mut goal = view.clone();
            let applied = crate::diff::apply_to_fragment(&mut goal, &kernel);
            match expand(&after.flatten()) {
                Ok(want) => {
                    proptest::prop_assert!(applied.is_ok(), "{applied:?}");
                    proptest::prop_assert_eq!(goal, want);
                }
                Err(_) => proptest::prop_assert!(applied.is_err()),
            }
        }
    }
}
