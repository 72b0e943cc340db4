//! The JSON shape of a state: sets with their entries, virtual servers
//! with their real servers, addresses, chains, jumps, and (when there are
//! any, so a state without them reads as before) health checks and node
//! conditions — each in canonical order, plus the digest so that a reader
//! can detect corruption.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fragment::Fragment;
use crate::model::{
    Chain, ChainKey, Family, HealthCheck, Jump, NodeCondition, Protocol, RealServer, Rule,
    Scheduler, SetEntry, SetSpec, SetType, Table, VirtualServer, VirtualServerKey,
};

#[derive(Serialize, Deserialize)]
pub(crate) struct WireState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<Digest>,
    #[serde(default)]
    sets: Vec<WireSet>,
    /// Entries of sets defined elsewhere; only a partial state has them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    foreign_entries: BTreeMap<String, Vec<SetEntry>>,
    #[serde(default)]
    virtual_servers: Vec<WireVirtualServer>,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    #[serde(default)]
    chains: Vec<WireChain>,
    #[serde(default)]
    jumps: Vec<Jump>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    health_checks: Vec<WireHealthCheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    node_conditions: Vec<NodeCondition>,
}

#[derive(Serialize, Deserialize)]
struct WireHealthCheck {
    port: u16,
    namespace: String,
    name: String,
    local_endpoints: u32,
}

#[derive(Serialize, Deserialize)]
struct WireSet {
    name: String,
    #[serde(rename = "type")]
    kind: SetType,
    family: Family,
    maxelem: u32,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    entries: Vec<SetEntry>,
}

#[derive(Serialize, Deserialize)]
struct WireVirtualServer {
    address: IpAddr,
    protocol: Protocol,
    port: u16,
    scheduler: Scheduler,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persistence_timeout: Option<u32>,
    #[serde(default)]
    real_servers: Vec<RealServer>,
}

#[derive(Serialize, Deserialize)]
struct WireChain {
    family: Family,
    table: Table,
    name: String,
    rules: Vec<Rule>,
}

impl WireState {
    pub(crate) fn from_fragment(f: &Fragment, digest: Digest) -> WireState {
        let entries_of = |name: &str| -> Vec<SetEntry> {
            f.entries(name)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default()
        };
        WireState {
            digest: Some(digest),
            sets: f
                .sets()
                .map(|(name, spec)| WireSet {
                    name: name.clone(),
                    kind: spec.kind,
                    family: spec.family,
                    maxelem: spec.maxelem,
                    comment: spec.comment.clone(),
                    entries: entries_of(name),
                })
                .collect(),
            foreign_entries: f
                .all_entries()
                .filter(|(name, _)| f.set(name).is_none())
                .map(|(name, m)| (name.clone(), m.iter().cloned().collect()))
                .collect(),
            virtual_servers: f
                .virtual_servers()
                .map(|(key, vs)| WireVirtualServer {
                    address: key.address,
                    protocol: key.protocol,
                    port: key.port,
                    scheduler: vs.scheduler,
                    persistence_timeout: vs.persistence_timeout,
                    real_servers: vs.real_servers.clone(),
                })
                .collect(),
            addresses: f.addresses().copied().collect(),
            chains: f
                .chains()
                .map(|(key, chain)| WireChain {
                    family: key.family,
                    table: key.table,
                    name: key.name.clone(),
                    rules: chain.rules.clone(),
                })
                .collect(),
            jumps: f.jumps().cloned().collect(),
            health_checks: f
                .health_checks()
                .map(|(port, check)| WireHealthCheck {
                    port: *port,
                    namespace: check.namespace.clone(),
                    name: check.name.clone(),
                    local_endpoints: check.local_endpoints,
                })
                .collect(),
            node_conditions: f.node_conditions().copied().collect(),
        }
    }

    /// Rebuilds the fragment; a digest that does not match the content, or
    /// an atom listed twice, is an error rather than a silently different
    /// state.
    pub(crate) fn into_fragment(self) -> Result<Fragment, WireError> {
        let mut f = Fragment::new();
        let mut listed = 0u64;
        for set in self.sets {
            let spec = SetSpec {
                kind: set.kind,
                family: set.family,
                maxelem: set.maxelem,
                comment: set.comment,
            };
            f.put_set(set.name.clone(), spec);
            listed += 1;
            for entry in set.entries {
                f.add_entry(&set.name, entry);
                listed += 1;
            }
        }
        for (set, entries) in self.foreign_entries {
            for entry in entries {
                f.add_entry(&set, entry);
                listed += 1;
            }
        }
        for vs in self.virtual_servers {
            let key = VirtualServerKey {
                address: vs.address,
                protocol: vs.protocol,
                port: vs.port,
            };
            let body = VirtualServer::new(vs.scheduler, vs.persistence_timeout, vs.real_servers);
            f.put_virtual_server(key, Arc::new(body));
            listed += 1;
        }
        for addr in self.addresses {
            f.add_address(addr);
            listed += 1;
        }
        for chain in self.chains {
            let key = ChainKey {
                family: chain.family,
                table: chain.table,
                name: chain.name,
            };
            f.put_chain(key, Arc::new(Chain { rules: chain.rules }));
            listed += 1;
        }
        for jump in self.jumps {
            f.add_jump(jump);
            listed += 1;
        }
        for check in self.health_checks {
            let body = HealthCheck {
                namespace: check.namespace,
                name: check.name,
                local_endpoints: check.local_endpoints,
            };
            f.put_health_check(check.port, body);
            listed += 1;
        }
        for condition in self.node_conditions {
            f.add_node_condition(condition);
            listed += 1;
        }
        if listed != f.atom_count() {
            return Err(WireError::Repeated {
                listed,
                distinct: f.atom_count(),
            });
        }
        if let Some(expected) = self.digest {
            let actual = f.digest();
            if actual != expected {
                return Err(WireError::Digest { actual, expected });
            }
        }
        Ok(f)
    }
}

/// Why a state's JSON does not describe a state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("state lists {listed} atoms but only {distinct} are distinct")]
    Repeated { listed: u64, distinct: u64 },
    #[error("state digest mismatch: content hashes to {actual}, document says {expected}")]
    Digest { actual: Digest, expected: Digest },
}
