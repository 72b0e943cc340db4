//! Builders for fixtures: states are written as they read in `ipset save`,
//! `ipvsadm-save` and `iptables-save`, one builder call per atom.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use setpoint_dataplane::{
    Chain, ChainKey, Family, Forward, Fragment, HealthCheck, Jump, NodeCondition, NodeDataplane,
    Protocol, RealServer, Rule, Scheduler, SetEntry, SetSpec, SetType, Table, VirtualServer,
    VirtualServerKey,
};

pub fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad IP {text:?}: {e}"))
}

pub fn entry(text: &str) -> SetEntry {
    text.parse()
        .unwrap_or_else(|e| panic!("bad entry {text:?}: {e}"))
}

fn socket(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad socket address {text:?}: {e}"))
}

pub fn mk_spec(kind: SetType, family: Family, maxelem: u32) -> SetSpec {
    SetSpec {
        kind,
        family,
        maxelem,
        comment: String::new(),
    }
}

/// `10.96.0.10:80` (or `[fd00::10]:80`) with a protocol.
pub fn mk_vs_key(protocol: Protocol, addr: &str) -> VirtualServerKey {
    let sa = socket(addr);
    VirtualServerKey {
        address: sa.ip(),
        protocol,
        port: sa.port(),
    }
}

/// A masquerading real server `10.244.1.5:8080` with a weight.
pub fn mk_rs(addr: &str, weight: u32) -> RealServer {
    let sa = socket(addr);
    RealServer {
        address: sa.ip(),
        port: sa.port(),
        weight,
        forward: Forward::Masq,
    }
}

pub fn mk_vs(
    scheduler: Scheduler,
    persistence_timeout: Option<u32>,
    reals: &[(&str, u32)],
) -> Arc<VirtualServer> {
    Arc::new(VirtualServer::new(
        scheduler,
        persistence_timeout,
        reals.iter().map(|(a, w)| mk_rs(a, *w)).collect(),
    ))
}

pub fn mk_rule(args: &[&str]) -> Rule {
    Rule::new(args.iter().copied())
}

pub fn mk_chain_key(family: Family, table: Table, name: &str) -> ChainKey {
    ChainKey {
        family,
        table,
        name: name.to_string(),
    }
}

pub fn mk_jump(family: Family, table: Table, from: &str, position: u16, args: &[&str]) -> Jump {
    Jump {
        family,
        table,
        from: from.to_string(),
        position,
        rule: mk_rule(args),
    }
}

/// A health check for Service `namespace/name`.
pub fn mk_health_check(service: &str, local_endpoints: u32) -> HealthCheck {
    let (namespace, name) = service
        .split_once('/')
        .unwrap_or_else(|| panic!("{service:?} is not namespace/name"));
    HealthCheck {
        namespace: namespace.to_string(),
        name: name.to_string(),
        local_endpoints,
    }
}

/// Builds a [`NodeDataplane`] atom by atom into named fragments; atoms go
/// to the fragment last chosen with [`StateBuilder::part`] (`whole` at
/// first).
#[derive(Clone, Debug)]
pub struct StateBuilder {
    parts: BTreeMap<String, Fragment>,
    current: String,
}

pub fn state() -> StateBuilder {
    StateBuilder {
        parts: BTreeMap::new(),
        current: "whole".to_string(),
    }
}

impl StateBuilder {
    fn frag(&mut self) -> &mut Fragment {
        self.parts.entry(self.current.clone()).or_default()
    }

    /// Puts the following atoms into fragment `name`.
    pub fn part(mut self, name: &str) -> Self {
        self.current = name.to_string();
        self.frag();
        self
    }

    pub fn set(self, name: &str, kind: SetType, family: Family, maxelem: u32) -> Self {
        self.set_spec(name, mk_spec(kind, family, maxelem))
    }

    pub fn set_spec(mut self, name: &str, spec: SetSpec) -> Self {
        self.frag().put_set(name, spec);
        self
    }

    pub fn entries(mut self, set: &str, entries: &[&str]) -> Self {
        for text in entries {
            self.frag().add_entry(set, entry(text));
        }
        self
    }

    pub fn vs(
        mut self,
        protocol: Protocol,
        addr: &str,
        scheduler: Scheduler,
        persistence_timeout: Option<u32>,
        reals: &[(&str, u32)],
    ) -> Self {
        let key = mk_vs_key(protocol, addr);
        self.frag()
            .put_virtual_server(key, mk_vs(scheduler, persistence_timeout, reals));
        self
    }

    /// A virtual server built by hand (other forwarding methods, …).
    pub fn put_vs(mut self, key: VirtualServerKey, vs: Arc<VirtualServer>) -> Self {
        self.frag().put_virtual_server(key, vs);
        self
    }

    pub fn address(mut self, addr: &str) -> Self {
        self.frag().add_address(ip(addr));
        self
    }

    pub fn chain(mut self, family: Family, table: Table, name: &str, rules: &[&[&str]]) -> Self {
        let chain = Chain {
            rules: rules.iter().map(|r| mk_rule(r)).collect(),
        };
        self.frag()
            .put_chain(mk_chain_key(family, table, name), Arc::new(chain));
        self
    }

    pub fn jump(
        mut self,
        family: Family,
        table: Table,
        from: &str,
        position: u16,
        args: &[&str],
    ) -> Self {
        self.frag()
            .add_jump(mk_jump(family, table, from, position, args));
        self
    }

    /// A health check on `port` for Service `namespace/name`.
    pub fn health_check(mut self, port: u16, service: &str, local_endpoints: u32) -> Self {
        self.frag()
            .put_health_check(port, mk_health_check(service, local_endpoints));
        self
    }

    pub fn draining(mut self) -> Self {
        self.frag().add_node_condition(NodeCondition::Draining);
        self
    }

    pub fn build(self) -> NodeDataplane {
        NodeDataplane::from_parts(self.parts.into_iter().map(|(n, f)| (n, Arc::new(f))))
    }
}
