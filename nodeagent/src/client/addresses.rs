//! The node's own NodePort addresses (`--nodeport-addresses` naming CIDRs
//! or `all`), followed: the applier plans over the newest choice, and a
//! change re-applies the held state over it — the same revision, state and
//! digest, only the node-port address sets and the virtual servers the
//! NodePort templates expand to change in the kernel. Nothing is sent to
//! the control plane: what it acked is still what the node holds.

use std::time::Instant;

use tokio::sync::watch;

use super::Agent;
use crate::apply::Base;
use crate::node_addresses::{NodeAddresses, watch::follow};

/// The next choice of addresses once it changes; never without a follower.
pub(super) async fn changed(
    addresses: &mut Option<watch::Receiver<NodeAddresses>>,
) -> NodeAddresses {
    if let Some(receiver) = addresses
        && receiver.changed().await.is_ok()
    {
        return receiver.borrow_and_update().clone();
    }
    // No follower, or it is gone (it logged why): nothing more will come.
    *addresses = None;
    std::future::pending().await
}

impl Agent {
    /// Starts following the node's addresses when the flag asks for it;
    /// the applier takes the first read before anything is planned.
    pub(super) async fn follow_addresses(&mut self) {
        if !self.options.node_port_addresses.is_local() || self.addresses.is_some() {
            return;
        }
        let netns = self.options.target.netns.clone();
        let flag = self.options.node_port_addresses.clone();
        tracing::info!(%flag, "NodePorts on the node's own addresses (--nodeport-addresses)");
        let failures = self.metrics.nodeport_address_failures.clone();
        let Ok(follower) = tokio::task::spawn_blocking(move || follow(netns, flag, failures)).await
        else {
            tracing::error!("cannot start following the node's addresses");
            return;
        };
        let first = follower.addresses.borrow().clone();
        self.with_applier(move |a| a.set_node_addresses(first))
            .await;
        self.addresses = Some(follower.addresses);
    }

    /// The node's addresses changed: the held state is re-applied over
    /// them (a step from its view: the sets' entries and the expanded
    /// virtual servers). A failure leaves the kernel unknown, as a nack
    /// does: the next state is applied from the whole kernel.
    pub(super) async fn addresses_changed(&mut self, addresses: NodeAddresses) {
        let held = self.held.clone();
        let started = Instant::now();
        let result = self
            .with_applier(move |a| {
                if !a.set_node_addresses(addresses) {
                    return Ok(None);
                }
                let Some(held) = held else {
                    return Ok(None);
                };
                a.apply(Base::Held(&held), &held.state)
                    .map(|(report, view)| Some((report.changes, view)))
            })
            .await;
        match result {
            Some(Ok(None)) => {}
            Some(Ok(Some((changes, view)))) => {
                tracing::info!(
                    changes,
                    took = ?started.elapsed(),
                    "the node's new NodePort addresses applied"
                );
                if let Some(held) = &mut self.held {
                    held.view = view;
                }
            }
            failed => {
                let why = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "the apply worker failed".to_string(),
                };
                tracing::warn!("applying the node's new NodePort addresses: {why}");
                self.note(|p| p.last_error = Some(why));
                self.held = None;
            }
        }
    }

    /// Sleeps until `wake`, following address changes meanwhile: they are
    /// local facts, and the kernel keeps up with them while the control
    /// plane is away too.
    pub(super) async fn sleep_following_addresses(&mut self, wake: Instant) {
        let mut addresses = self.addresses.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => return,
                next = changed(&mut addresses) => self.addresses_changed(next).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::sync::Arc;

    use setpoint_dataplane::template::node_port_address_set;
    use setpoint_dataplane::{
        Family, Fragment, NodeDataplane, Protocol, RealServer, Scheduler, SetEntry, SetSpec,
        SetType, VirtualServer, VirtualServerKey,
    };

    use super::*;
    use crate::apply::Verified;
    use crate::client::AgentOptions;
    use crate::services::IpvsMode;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    /// A node with the control plane's node-port address `192.168.10.11`
    /// and one NodePort template, whose backend is `backend`.
    fn state(backend: &str) -> NodeDataplane {
        let mut own = Fragment::new();
        own.put_set(
            node_port_address_set(Family::Inet),
            SetSpec {
                kind: SetType::HashIp,
                family: Family::Inet,
                maxelem: 1024,
                comment: String::new(),
            },
        );
        own.add_entry("SP-NODEPORT-IPS", SetEntry::Ip(ip("192.168.10.11")));
        let mut services = Fragment::new();
        services.put_virtual_server(
            VirtualServerKey {
                address: ip("0.0.0.0"),
                protocol: Protocol::Tcp,
                port: 30080,
            },
            Arc::new(VirtualServer::new(
                Scheduler::Rr,
                None,
                vec![RealServer {
                    address: ip(backend),
                    port: 8080,
                    weight: 1,
                    forward: Default::default(),
                }],
            )),
        );
        NodeDataplane::from_parts([
            ("services".to_string(), Arc::new(services)),
            ("node/a".to_string(), Arc::new(own)),
        ])
    }

    /// The addresses the held view serves the NodePort on, with its backend.
    fn served(agent: &Agent) -> BTreeSet<(IpAddr, IpAddr)> {
        let held = agent.held.as_ref().expect("held");
        held.view
            .virtual_servers()
            .filter(|(k, _)| k.port == 30080)
            .map(|(k, vs)| (k.address, vs.real_servers[0].address))
            .collect()
    }

    #[tokio::test]
    async fn an_address_change_reapplies_the_held_state_and_deltas_keep_the_overlay() {
        let mut agent = Agent::new(AgentOptions {
            dry_run: true,
            ipvs: IpvsMode::Simulated,
            ..AgentOptions::new("n", "http://127.0.0.1:1")
        });
        let one = state("10.244.1.5");
        agent.held = Some(Verified::check(7, one.clone()).expect("valid"));
        let (a, b) = (ip("10.0.0.11"), ip("10.0.0.12"));
        let backend = ip("10.244.1.5");
        assert_eq!(served(&agent), [(ip("192.168.10.11"), backend)].into());

        agent
            .addresses_changed(NodeAddresses::new(Some([a, b].into()), None))
            .await;
        let held = agent.held.as_ref().expect("still held");
        assert_eq!(
            (held.revision, held.state.digest()),
            (7, one.digest()),
            "the state as sent"
        );
        assert_eq!(served(&agent), [(a, backend), (b, backend)].into());

        // A delta from the control plane (a new backend) is planned from
        // the view over the node's addresses.
        let two = state("10.244.1.6");
        let reply = agent.apply(8, two.clone()).await;
        assert!(
            matches!(
                reply.body,
                Some(setpoint_proto::v1::agent_message::Body::Ack(_))
            ),
            "{reply:?}"
        );
        let backend = ip("10.244.1.6");
        assert_eq!(served(&agent), [(a, backend), (b, backend)].into());

        // The same choice again changes nothing; dropping back to the
        // control plane's list restores it.
        agent
            .addresses_changed(NodeAddresses::new(Some([a, b].into()), None))
            .await;
        assert_eq!(served(&agent), [(a, backend), (b, backend)].into());
        agent.addresses_changed(NodeAddresses::default()).await;
        assert_eq!(served(&agent), [(ip("192.168.10.11"), backend)].into());
    }
}
