//! The diff, apply and digest laws over generated valid states.
//!
//! A generated state is a list of atoms, each assigned to one of 1–3
//! fragments (`p0`, `p1`, `p2`). Names, addresses and ports come from small
//! pools, so two independently generated states share many keys and their
//! diff exercises updates, not only additions and removals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use setpoint_dataplane::{
    ApplyError, Chain, ChainKey, Change, Diff, Family, Format, Forward, Fragment, HealthCheck,
    Jump, NodeCondition, NodeDataplane, Protocol, RealServer, Rule, Scheduler, SetEntry, SetSpec,
    SetType, Table, VirtualServer, VirtualServerKey, apply, diff, render,
};

// --- pools -----------------------------------------------------------------

const SET_NAMES: &[&str] = &[
    "SP-CLUSTER-IP",
    "SP-NODE-PORT-TCP",
    "SP6-LOOP-BACK",
    "SP-EXTERNAL-IP",
    // 31 bytes: the longest name the kernel takes.
    "SP-LB-SOURCE-CIDR-ABCDEFGHIJKLM",
    "SP-S",
];
const SET_TYPES: [SetType; 6] = [
    SetType::HashIp,
    SetType::HashIpPort,
    SetType::HashIpPortIp,
    SetType::HashIpPortNet,
    SetType::HashNet,
    SetType::BitmapPort,
];
const COMMENTS: &[&str] = &[
    "default/kubernetes:https cluster IP",
    "kube-system/kube-dns:dns",
    "masquerade",
    "node port \"quoted\" \\ backslash",
];
const CHAIN_NAMES: &[&str] = &[
    "SP-SERVICES",
    "SP-NODEPORTS",
    "SP-SVC-4N57TFCL",
    "SP-SEP-ABCDEF",
    "SP-MARK-MASQ",
    // 28 bytes: the longest chain name iptables takes.
    "SP-FIREWALL-0123456789ABCDEF",
];
const TABLES: [Table; 2] = [Table::Filter, Table::Nat];
const HEALTH_CHECK_PORTS: &[u16] = &[30000, 30001, 32767];
const SERVICES: &[(&str, &str)] = &[("default", "web"), ("kube-system", "ingress.v2")];
const PORTS: &[u16] = &[53, 80, 443, 8080, 30080];
/// `Some(0)` stays out until the digest tells it from `None`
/// (`golden::digest_tells_no_persistence_from_zero_persistence`).
const PERSISTENCE: [Option<u32>; 3] = [None, Some(1800), Some(10800)];

fn pick<T: Copy>(pool: &[T], seed: u8) -> T {
    pool[usize::from(seed) % pool.len()]
}

fn pick_ip(pool: &[&str], seed: u8) -> IpAddr {
    pick(pool, seed).parse().expect("pool address")
}

/// Addresses a set entry's IPs come from.
fn entry_ip(family: Family, seed: u8) -> IpAddr {
    match family {
        Family::Inet => pick_ip(
            &["10.96.0.1", "10.96.0.10", "10.96.0.11", "192.168.1.1"],
            seed,
        ),
        Family::Inet6 => pick_ip(&["fd00::1", "fd00::10", "fd00::11", "2001:db8::1"], seed),
    }
}

fn entry_net(family: Family, seed: u8) -> IpNet {
    let pool: &[&str] = match family {
        Family::Inet => &[
            "10.244.0.0/16",
            "10.244.1.0/24",
            "10.0.0.1/32",
            "192.168.0.0/16",
        ],
        Family::Inet6 => &["fd00:10::/64", "fd00::1/128", "2001:db8::/32"],
    };
    pick(pool, seed).parse().expect("pool net")
}

/// An entry of the shape `kind` stores, in `family`.
fn entry_of(kind: SetType, family: Family, s: [u8; 4]) -> SetEntry {
    let protocol = pick(&Protocol::ALL, s[1]);
    let port = pick(PORTS, s[2]);
    match kind {
        SetType::HashIp => SetEntry::Ip(entry_ip(family, s[0])),
        SetType::HashIpPort => SetEntry::IpPort {
            ip: entry_ip(family, s[0]),
            protocol,
            port,
        },
        SetType::HashIpPortIp => SetEntry::IpPortIp {
            ip: entry_ip(family, s[0]),
            protocol,
            port,
            ip2: entry_ip(family, s[3]),
        },
        SetType::HashIpPortNet => SetEntry::IpPortNet {
            ip: entry_ip(family, s[0]),
            protocol,
            port,
            net: entry_net(family, s[3]),
        },
        SetType::HashNet => SetEntry::Net {
            net: entry_net(family, s[0]),
            nomatch: s[1].is_multiple_of(4),
        },
        SetType::BitmapPort => SetEntry::Port(30000 + u16::from(s[0] % 8)),
    }
}

fn vs_key_of(family: Family, s: [u8; 3]) -> VirtualServerKey {
    let address = match family {
        Family::Inet => pick_ip(&["10.96.0.10", "192.168.1.1"], s[0]),
        Family::Inet6 => pick_ip(&["fd00::10", "fd00::11"], s[0]),
    };
    // Few keys, so that two states often hold the same virtual server.
    VirtualServerKey {
        address,
        protocol: pick(
            &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            s[1],
        ),
        port: pick(&[80, 443], s[2]),
    }
}

fn rs_of(family: Family, s: [u8; 4]) -> RealServer {
    let address = match family {
        Family::Inet => pick_ip(
            &["10.244.1.5", "10.244.1.6", "10.244.1.7", "10.244.2.5"],
            s[0],
        ),
        Family::Inet6 => pick_ip(&["fd00:10::5", "fd00:10::6", "fd00:10::7"], s[0]),
    };
    RealServer {
        address,
        port: pick(&[8080, 8443, 53], s[1]),
        weight: u32::from(s[2] % 4),
        forward: pick(&[Forward::Masq, Forward::Route, Forward::Tunnel], s[3]),
    }
}

fn address_of(seed: u8) -> IpAddr {
    pick_ip(
        &[
            "10.96.0.10",
            "10.96.0.11",
            "10.96.0.12",
            "fd00::10",
            "fd00::11",
        ],
        seed,
    )
}

// --- generated states --------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    Set(String, SetSpec),
    Entry(String, SetEntry),
    Vs(VirtualServerKey, Arc<VirtualServer>),
    Address(IpAddr),
    Chain(ChainKey, Arc<Chain>),
    Jump(Jump),
    HealthCheck(u16, HealthCheck),
    Condition(NodeCondition),
}

fn insert(f: &mut Fragment, atom: &Atom) {
    match atom {
        Atom::Set(name, spec) => {
            f.put_set(name.clone(), spec.clone());
        }
        Atom::Entry(set, e) => {
            f.add_entry(set, e.clone());
        }
        Atom::Vs(key, vs) => {
            f.put_virtual_server(*key, vs.clone());
        }
        Atom::Address(a) => {
            f.add_address(*a);
        }
        Atom::Chain(key, chain) => {
            f.put_chain(key.clone(), chain.clone());
        }
        Atom::Jump(j) => {
            f.add_jump(j.clone());
        }
        Atom::HealthCheck(port, check) => {
            f.put_health_check(*port, check.clone());
        }
        Atom::Condition(c) => {
            f.add_node_condition(*c);
        }
    }
}

fn remove(f: &mut Fragment, atom: &Atom) -> bool {
    match atom {
        Atom::Set(name, _) => f.remove_set(name).is_some(),
        Atom::Entry(set, e) => f.remove_entry(set, e),
        Atom::Vs(key, _) => f.remove_virtual_server(key).is_some(),
        Atom::Address(a) => f.remove_address(a),
        Atom::Chain(key, _) => f.remove_chain(key).is_some(),
        Atom::Jump(j) => f.remove_jump(j),
        Atom::HealthCheck(port, _) => f.remove_health_check(*port).is_some(),
        Atom::Condition(c) => f.remove_node_condition(*c),
    }
}

/// Distinct atoms, each with the index of the fragment it sits in.
#[derive(Clone, Debug)]
struct Gen {
    atoms: Vec<(Atom, usize)>,
    nparts: usize,
}

fn part_name(i: usize) -> String {
    format!("p{i}")
}

impl Gen {
    fn new(atoms: Vec<Atom>, nparts: usize, assign: &[usize]) -> Gen {
        let atoms = atoms
            .into_iter()
            .enumerate()
            .map(|(i, a)| (a, assign[i % assign.len()] % nparts))
            .collect();
        Gen { atoms, nparts }
    }

    /// The same atoms in other fragments, inserted in reverse if asked.
    fn resplit(&self, nparts: usize, assign: &[usize], reverse: bool) -> Gen {
        let mut atoms: Vec<Atom> = self.atoms.iter().map(|(a, _)| a.clone()).collect();
        if reverse {
            atoms.reverse();
        }
        Gen::new(atoms, nparts, assign)
    }

    fn build(&self) -> NodeDataplane {
        let mut parts = vec![Fragment::new(); self.nparts];
        for (atom, part) in &self.atoms {
            insert(&mut parts[*part], atom);
        }
        NodeDataplane::from_parts(
            parts
                .into_iter()
                .enumerate()
                .map(|(i, f)| (part_name(i), Arc::new(f))),
        )
    }

    fn sets(&self) -> BTreeMap<&str, &SetSpec> {
        self.atoms
            .iter()
            .filter_map(|(a, _)| match a {
                Atom::Set(n, s) => Some((n.as_str(), s)),
                _ => None,
            })
            .collect()
    }

    /// Indices of the atoms matching `pred`.
    fn indices(&self, pred: impl Fn(&Atom) -> bool) -> Vec<usize> {
        (0..self.atoms.len())
            .filter(|&i| pred(&self.atoms[i].0))
            .collect()
    }
}

type RuleSeed = (Option<Index>, Index, Option<usize>, Option<usize>);

fn rule_seed() -> impl Strategy<Value = RuleSeed> {
    (
        option::of(any::<Index>()),
        any::<Index>(),
        option::of(0..COMMENTS.len()),
        option::of(0..PORTS.len()),
    )
}

/// `[-p tcp --dport P] [-m set --match-set S dst,dst] [-m comment --comment C] -j T`
fn rule_args(dport: Option<u16>, set: Option<&str>, comment: Option<&str>, target: &str) -> Rule {
    let mut args: Vec<String> = Vec::new();
    if let Some(port) = dport {
        args.extend(["-p", "tcp", "--dport"].map(String::from));
        args.push(port.to_string());
    }
    if let Some(set) = set {
        args.extend(["-m", "set", "--match-set", set, "dst,dst"].map(String::from));
    }
    if let Some(comment) = comment {
        args.extend(["-m", "comment", "--comment", comment].map(String::from));
    }
    args.extend(["-j", target].map(String::from));
    Rule(args)
}

type SetSeed = (usize, SetType, Family, u32, usize, Vec<[u8; 4]>);
type VsSeed = (Family, [u8; 3], Scheduler, Option<u32>, Vec<[u8; 4]>);
type ChainSeed = (Family, Table, usize, Vec<RuleSeed>);
type JumpSeed = (Family, Table, Index, u16, Index, Option<usize>);
type HealthCheckSeed = (usize, usize, u32);

fn health_check_of(service: usize, local_endpoints: u32) -> HealthCheck {
    let (namespace, name) = SERVICES[service];
    HealthCheck {
        namespace: namespace.to_string(),
        name: name.to_string(),
        local_endpoints,
    }
}

/// The atoms of a valid state, in canonical kind order.
fn assemble(
    sets: Vec<SetSeed>,
    vss: Vec<VsSeed>,
    addrs: Vec<u8>,
    chains: Vec<ChainSeed>,
    jumps: Vec<JumpSeed>,
    (health_checks, draining): (Vec<HealthCheckSeed>, bool),
) -> Vec<Atom> {
    let mut specs: BTreeMap<String, (SetSpec, BTreeSet<SetEntry>)> = BTreeMap::new();
    for (name, kind, family, maxelem, comment, entries) in sets {
        let family = if kind == SetType::BitmapPort {
            Family::Inet
        } else {
            family
        };
        let spec = SetSpec {
            kind,
            family,
            maxelem,
            comment: COMMENTS[comment].to_string(),
        };
        let entries = entries
            .into_iter()
            .map(|s| entry_of(kind, family, s))
            .collect();
        specs.insert(SET_NAMES[name].to_string(), (spec, entries));
    }

    let mut virtual_servers: BTreeMap<VirtualServerKey, Arc<VirtualServer>> = BTreeMap::new();
    for (family, key, scheduler, persistence, reals) in vss {
        let key = vs_key_of(family, key);
        let reals = reals.into_iter().map(|s| rs_of(family, s)).collect();
        virtual_servers.insert(
            key,
            Arc::new(VirtualServer::new(scheduler, persistence, reals)),
        );
    }

    let addresses: BTreeSet<IpAddr> = addrs.into_iter().map(address_of).collect();

    let keys: BTreeMap<ChainKey, Vec<RuleSeed>> = chains
        .into_iter()
        .map(|(family, table, name, rules)| {
            let key = ChainKey {
                family,
                table,
                name: CHAIN_NAMES[name].to_string(),
            };
            (key, rules)
        })
        .collect();
    let mut chain_atoms = Vec::new();
    for (key, rules) in &keys {
        let usable_sets: Vec<&str> = specs
            .iter()
            .filter(|(_, (s, _))| s.kind == SetType::BitmapPort || s.family == key.family)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut targets = vec!["ACCEPT"];
        targets.extend(
            keys.keys()
                .filter(|k| k.family == key.family && k.table == key.table && *k != key)
                .map(|k| k.name.as_str()),
        );
        let rules = rules
            .iter()
            .map(|(set, target, comment, dport)| {
                let set = set
                    .filter(|_| !usable_sets.is_empty())
                    .map(|i| *i.get(&usable_sets));
                rule_args(
                    dport.map(|p| PORTS[p]),
                    set,
                    comment.map(|c| COMMENTS[c]),
                    targets[target.index(targets.len())],
                )
            })
            .collect();
        chain_atoms.push(Atom::Chain(key.clone(), Arc::new(Chain { rules })));
    }

    let mut jump_set: BTreeSet<Jump> = BTreeSet::new();
    for (family, table, from, position, target, comment) in jumps {
        let targets: Vec<&str> = keys
            .keys()
            .filter(|k| k.family == family && k.table == table)
            .map(|k| k.name.as_str())
            .collect();
        if targets.is_empty() {
            continue;
        }
        jump_set.insert(Jump {
            family,
            table,
            from: from.get(table.builtin_chains()).to_string(),
            position,
            rule: rule_args(
                None,
                None,
                comment.map(|c| COMMENTS[c]),
                targets[target.index(targets.len())],
            ),
        });
    }

    let mut atoms = Vec::new();
    for (name, (spec, entries)) in &specs {
        atoms.push(Atom::Set(name.clone(), spec.clone()));
        atoms.extend(entries.iter().map(|e| Atom::Entry(name.clone(), e.clone())));
    }
    atoms.extend(virtual_servers.into_iter().map(|(k, v)| Atom::Vs(k, v)));
    atoms.extend(addresses.into_iter().map(Atom::Address));
    atoms.extend(chain_atoms);
    atoms.extend(jump_set.into_iter().map(Atom::Jump));
    let health_checks: BTreeMap<u16, HealthCheck> = health_checks
        .into_iter()
        .map(|(port, service, n)| (HEALTH_CHECK_PORTS[port], health_check_of(service, n)))
        .collect();
    atoms.extend(
        health_checks
            .into_iter()
            .map(|(port, check)| Atom::HealthCheck(port, check)),
    );
    if draining {
        atoms.push(Atom::Condition(NodeCondition::Draining));
    }
    atoms
}

fn families() -> impl Strategy<Value = Family> {
    select(Family::ALL.to_vec())
}

fn arb_atoms() -> impl Strategy<Value = Vec<Atom>> {
    let sets = vec(
        (
            0..SET_NAMES.len(),
            select(SET_TYPES.to_vec()),
            families(),
            select(vec![64u32, 1024, 65536]),
            0..COMMENTS.len(),
            vec(any::<[u8; 4]>(), 0..8),
        ),
        0..=5,
    );
    let vss = vec(
        (
            families(),
            any::<[u8; 3]>(),
            select(Scheduler::ALL.to_vec()),
            select(PERSISTENCE.to_vec()),
            vec(any::<[u8; 4]>(), 0..5),
        ),
        0..=6,
    );
    let addrs = vec(any::<u8>(), 0..4);
    let chains = vec(
        (
            families(),
            select(TABLES.to_vec()),
            0..CHAIN_NAMES.len(),
            vec(rule_seed(), 0..4),
        ),
        0..=4,
    );
    let jumps = vec(
        (
            families(),
            select(TABLES.to_vec()),
            any::<Index>(),
            0..3u16,
            any::<Index>(),
            option::of(0..COMMENTS.len()),
        ),
        0..3,
    );
    let facts = (
        vec(
            (0..HEALTH_CHECK_PORTS.len(), 0..SERVICES.len(), 0..3u32),
            0..3,
        ),
        any::<bool>(),
    );
    (sets, vss, addrs, chains, jumps, facts)
        .prop_map(|(s, v, a, c, j, f)| assemble(s, v, a, c, j, f))
}

fn arb_split() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (1..=3usize, vec(0..3usize, 64))
}

/// A valid state in one to three fragments.
fn arb_gen() -> impl Strategy<Value = Gen> {
    (arb_atoms(), arb_split()).prop_map(|(atoms, (n, assign))| Gen::new(atoms, n, &assign))
}

// --- single-atom mutations -----------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    AddEntry(Index, [u8; 4], usize),
    RemoveEntry(Index),
    AddRealServer(Index, [u8; 4]),
    RemoveRealServer(Index, Index),
    EditRealServer(Index, Index),
    ChangeScheduler(Index, Scheduler),
    AddAddress(u8, usize),
    RemoveAddress(Index),
    ReplaceChain(Index, usize),
    /// Adds a health check on a port, or sets its count.
    SetHealthCheck(usize, u32, usize),
    RemoveHealthCheck(Index),
    AddDraining(usize),
    RemoveDraining,
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<[u8; 4]>(), 0..3usize)
            .prop_map(|(s, e, p)| Mutation::AddEntry(s, e, p)),
        any::<Index>().prop_map(Mutation::RemoveEntry),
        (any::<Index>(), any::<[u8; 4]>()).prop_map(|(v, r)| Mutation::AddRealServer(v, r)),
        (any::<Index>(), any::<Index>()).prop_map(|(v, r)| Mutation::RemoveRealServer(v, r)),
        (any::<Index>(), any::<Index>()).prop_map(|(v, r)| Mutation::EditRealServer(v, r)),
        (any::<Index>(), select(Scheduler::ALL.to_vec()))
            .prop_map(|(v, s)| Mutation::ChangeScheduler(v, s)),
        (any::<u8>(), 0..3usize).prop_map(|(a, p)| Mutation::AddAddress(a, p)),
        any::<Index>().prop_map(Mutation::RemoveAddress),
        (any::<Index>(), 0..COMMENTS.len()).prop_map(|(c, t)| Mutation::ReplaceChain(c, t)),
        (0..HEALTH_CHECK_PORTS.len(), 0..4u32, 0..3usize)
            .prop_map(|(p, n, part)| Mutation::SetHealthCheck(p, n, part)),
        any::<Index>().prop_map(Mutation::RemoveHealthCheck),
        (0..3usize).prop_map(Mutation::AddDraining),
        Just(Mutation::RemoveDraining),
    ]
}

/// One atom-level edit of a [`Gen`].
#[derive(Debug)]
enum Edit {
    Add(Atom, usize),
    Remove(usize),
    Replace(usize, Atom),
}

/// What `m` does to `g`, or `None` when it does not apply (nothing to
/// remove, or the atom to add is already there).
fn resolve(g: &Gen, m: &Mutation) -> Option<Edit> {
    let vs_at = |i: &Index| -> Option<(usize, VirtualServerKey, Arc<VirtualServer>)> {
        let all = g.indices(|a| matches!(a, Atom::Vs(..)));
        if all.is_empty() {
            return None;
        }
        let at = *i.get(&all);
        match &g.atoms[at].0 {
            Atom::Vs(k, v) => Some((at, *k, v.clone())),
            _ => None,
        }
    };
    let with_reals = |v: &VirtualServer, reals: Vec<RealServer>| {
        Arc::new(VirtualServer::new(
            v.scheduler,
            v.persistence_timeout,
            reals,
        ))
    };
    match m {
        Mutation::AddEntry(set, seed, part) => {
            let sets: Vec<(&str, &SetSpec)> = g.sets().into_iter().collect();
            if sets.is_empty() {
                return None;
            }
            let (name, spec) = *set.get(&sets);
            let atom = Atom::Entry(name.to_string(), entry_of(spec.kind, spec.family, *seed));
            if g.atoms.iter().any(|(a, _)| *a == atom) {
                return None;
            }
            Some(Edit::Add(atom, part % g.nparts))
        }
        Mutation::RemoveEntry(i) => {
            let all = g.indices(|a| matches!(a, Atom::Entry(..)));
            (!all.is_empty()).then(|| Edit::Remove(*i.get(&all)))
        }
        Mutation::AddRealServer(v, seed) => {
            let (at, key, vs) = vs_at(v)?;
            let rs = rs_of(key.family(), *seed);
            if vs.real_server(rs.address, rs.port).is_some() {
                return None;
            }
            let mut reals = vs.real_servers.clone();
            reals.push(rs);
            Some(Edit::Replace(at, Atom::Vs(key, with_reals(&vs, reals))))
        }
        Mutation::RemoveRealServer(v, r) => {
            let (at, key, vs) = vs_at(v)?;
            if vs.real_servers.is_empty() {
                return None;
            }
            let mut reals = vs.real_servers.clone();
            reals.remove(r.index(reals.len()));
            Some(Edit::Replace(at, Atom::Vs(key, with_reals(&vs, reals))))
        }
        Mutation::EditRealServer(v, r) => {
            let (at, key, vs) = vs_at(v)?;
            if vs.real_servers.is_empty() {
                return None;
            }
            let mut reals = vs.real_servers.clone();
            let slot = r.index(reals.len());
            reals[slot].weight += 1;
            Some(Edit::Replace(at, Atom::Vs(key, with_reals(&vs, reals))))
        }
        Mutation::ChangeScheduler(v, scheduler) => {
            let (at, key, vs) = vs_at(v)?;
            if vs.scheduler == *scheduler {
                return None;
            }
            let new =
                VirtualServer::new(*scheduler, vs.persistence_timeout, vs.real_servers.clone());
            Some(Edit::Replace(at, Atom::Vs(key, Arc::new(new))))
        }
        Mutation::AddAddress(seed, part) => {
            let atom = Atom::Address(address_of(*seed));
            if g.atoms.iter().any(|(a, _)| *a == atom) {
                return None;
            }
            Some(Edit::Add(atom, part % g.nparts))
        }
        Mutation::RemoveAddress(i) => {
            let all = g.indices(|a| matches!(a, Atom::Address(..)));
            (!all.is_empty()).then(|| Edit::Remove(*i.get(&all)))
        }
        Mutation::ReplaceChain(c, comment) => {
            let all = g.indices(|a| matches!(a, Atom::Chain(..)));
            if all.is_empty() {
                return None;
            }
            let at = *c.get(&all);
            let Atom::Chain(key, chain) = &g.atoms[at].0 else {
                return None;
            };
            let mut rules = chain.rules.clone();
            rules.push(rule_args(None, None, Some(COMMENTS[*comment]), "ACCEPT"));
            Some(Edit::Replace(
                at,
                Atom::Chain(key.clone(), Arc::new(Chain { rules })),
            ))
        }
        Mutation::SetHealthCheck(port, n, part) => {
            let port = HEALTH_CHECK_PORTS[*port];
            let at = g
                .atoms
                .iter()
                .position(|(a, _)| matches!(a, Atom::HealthCheck(p, _) if *p == port));
            match at {
                Some(at) => {
                    let Atom::HealthCheck(_, check) = &g.atoms[at].0 else {
                        return None;
                    };
                    if check.local_endpoints == *n {
                        return None;
                    }
                    let check = HealthCheck {
                        local_endpoints: *n,
                        ..check.clone()
                    };
                    Some(Edit::Replace(at, Atom::HealthCheck(port, check)))
                }
                None => Some(Edit::Add(
                    Atom::HealthCheck(port, health_check_of(0, *n)),
                    part % g.nparts,
                )),
            }
        }
        Mutation::RemoveHealthCheck(i) => {
            let all = g.indices(|a| matches!(a, Atom::HealthCheck(..)));
            (!all.is_empty()).then(|| Edit::Remove(*i.get(&all)))
        }
        Mutation::AddDraining(part) => {
            let atom = Atom::Condition(NodeCondition::Draining);
            if g.atoms.iter().any(|(a, _)| *a == atom) {
                return None;
            }
            Some(Edit::Add(atom, part % g.nparts))
        }
        Mutation::RemoveDraining => {
            let all = g.indices(|a| matches!(a, Atom::Condition(..)));
            all.first().map(|at| Edit::Remove(*at))
        }
    }
}

/// Applies `edit` to the model and, through the `Fragment` API, to a copy
/// of the fragment of `state` it touches; the other fragments stay shared.
fn perform(g: &mut Gen, state: &mut NodeDataplane, edit: Edit) {
    let mut touch = |part: usize, f: &mut dyn FnMut(&mut Fragment)| {
        let name = part_name(part);
        let mut frag = Fragment::clone(state.part(&name).expect("part exists"));
        // Digests are kept until an edit: asked before every edit, so one
        // kept past it shows in the comparisons with a rebuilt state.
        let _ = (state.digest(), frag.digest());
        f(&mut frag);
        state.set_part(name, Arc::new(frag));
    };
    match edit {
        Edit::Add(atom, part) => {
            touch(part, &mut |f| insert(f, &atom));
            g.atoms.push((atom, part));
        }
        Edit::Remove(at) => {
            let (atom, part) = g.atoms.remove(at);
            touch(part, &mut |f| {
                assert!(remove(f, &atom), "{atom:?} was there")
            });
        }
        Edit::Replace(at, atom) => {
            let part = g.atoms[at].1;
            touch(part, &mut |f| insert(f, &atom));
            g.atoms[at].0 = atom;
        }
    }
}

// --- strictness --------------------------------------------------------------

/// Breaks the precondition of `change` in `base`: removes what the change
/// removes or edits, or adds what it adds. `None` for a change without a
/// precondition (`ChainReplaced`, `HealthCheckSet`) or when `base` already
/// broke it.
fn sabotage(base: &mut Fragment, change: &Change) -> Option<()> {
    let edit_reals =
        |base: &mut Fragment, key: &VirtualServerKey, edit: &dyn Fn(&mut Vec<RealServer>)| {
            let vs = base.virtual_server(key).expect("edited VS exists").clone();
            let mut reals = vs.real_servers.clone();
            edit(&mut reals);
            if reals.len() == vs.real_servers.len() {
                return None;
            }
            base.put_virtual_server(
                *key,
                Arc::new(VirtualServer::new(
                    vs.scheduler,
                    vs.persistence_timeout,
                    reals,
                )),
            );
            Some(())
        };
    match change {
        Change::SetCreated { name, spec } => {
            base.put_set(name.clone(), spec.clone())
                .is_none()
                .then_some(())?;
        }
        Change::SetRedefined { name, .. } | Change::SetDestroyed { name } => {
            base.remove_set(name)?;
        }
        Change::EntriesAdded { set, entries } => {
            base.add_entry(set, entries[0].clone()).then_some(())?;
        }
        Change::EntriesRemoved { set, entries } => {
            base.remove_entry(set, &entries[0]).then_some(())?;
        }
        Change::AddressAdded { address } => {
            base.add_address(*address).then_some(())?;
        }
        Change::AddressRemoved { address } => {
            base.remove_address(address).then_some(())?;
        }
        Change::VirtualServerAdded {
            key,
            virtual_server,
        } => {
            base.put_virtual_server(*key, virtual_server.clone())
                .is_none()
                .then_some(())?;
        }
        Change::VirtualServerEdited { key, .. } | Change::VirtualServerRemoved { key } => {
            base.remove_virtual_server(key)?;
        }
        Change::RealServerAdded { key, real_server } => {
            let rs = *real_server;
            edit_reals(base, key, &|reals| reals.push(rs))?;
        }
        Change::RealServerEdited { key, real_server } => {
            let rs = *real_server;
            edit_reals(base, key, &|reals| {
                reals.retain(|r| (r.address, r.port) != (rs.address, rs.port))
            })?;
        }
        Change::RealServerRemoved { key, address, port } => {
            let at = (*address, *port);
            edit_reals(base, key, &|reals| {
                reals.retain(|r| (r.address, r.port) != at)
            })?;
        }
        Change::ChainReplaced { .. } => return None,
        Change::ChainRemoved { key } => {
            base.remove_chain(key)?;
        }
        Change::JumpAdded { jump } => {
            base.add_jump(jump.clone()).then_some(())?;
        }
        Change::JumpRemoved { jump } => {
            base.remove_jump(jump).then_some(())?;
        }
        Change::HealthCheckSet { .. } => return None,
        Change::HealthCheckRemoved { port } => {
            base.remove_health_check(*port)?;
        }
        Change::NodeConditionAdded { condition } => {
            base.add_node_condition(*condition).then_some(())?;
        }
        Change::NodeConditionRemoved { condition } => {
            base.remove_node_condition(*condition).then_some(())?;
        }
    }
    Some(())
}

fn json_round_trip(state: &NodeDataplane) -> NodeDataplane {
    let text = serde_json::to_string(state).expect("serialise state");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("deserialise {text}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_states_are_valid(g in arb_gen()) {
        let state = g.build();
        prop_assert_eq!(state.validate(), vec![]);
        prop_assert_eq!(state.atom_count(), g.atoms.len() as u64);
    }

    #[test]
    fn apply_of_diff_reaches_the_target(ga in arb_gen(), gb in arb_gen()) {
        let (a, b) = (ga.build(), gb.build());
        let d = diff(&a, &b);
        prop_assert_eq!(d.is_empty(), a == b);
        let reached = apply(&a, &d).map_err(|e| TestCaseError::fail(format!("{e}\n{d:#?}")))?;
        prop_assert_eq!(&reached, &b);
        prop_assert_eq!(reached.digest(), b.digest());

        // The diff survives the wire.
        let text = serde_json::to_string(&d).expect("serialise diff");
        let wired: Diff = serde_json::from_str(&text).expect("deserialise diff");
        prop_assert_eq!(&wired, &d);
        prop_assert_eq!(apply(&a, &wired).map(|s| s.digest()), Ok(b.digest()));
    }

    #[test]
    fn diff_of_a_state_with_itself_is_empty(
        g in arb_gen(),
        (n, assign) in arb_split(),
        reverse in any::<bool>(),
    ) {
        let a = g.build();
        prop_assert!(diff(&a, &a).is_empty());
        prop_assert!(diff(&a, &g.build()).is_empty());
        let resplit = g.resplit(n, &assign, reverse).build();
        prop_assert_eq!(&a, &resplit);
        prop_assert!(diff(&a, &resplit).is_empty(), "{:?}", diff(&a, &resplit));
        prop_assert!(diff(&resplit, &a).is_empty(), "{:?}", diff(&resplit, &a));
    }

    #[test]
    fn digest_is_the_state_identity(ga in arb_gen(), gb in arb_gen()) {
        let (a, b) = (ga.build(), gb.build());
        prop_assert_eq!(a == b, a.digest() == b.digest());
        prop_assert_eq!(a.digest(), a.flatten().digest());
        let back = json_round_trip(&a);
        prop_assert_eq!(&back, &a);
        prop_assert_eq!(back.digest(), a.digest());
    }

    #[test]
    fn split_and_insertion_order_are_invisible(
        g in arb_gen(),
        (n, assign) in arb_split(),
        reverse in any::<bool>(),
    ) {
        let a = g.build();
        let b = g.resplit(n, &assign, reverse).build();
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.flatten().digest(), b.flatten().digest());
        for format in [Format::Json, Format::Ipset, Format::Iptables, Format::Ip6tables, Format::Ipvs, Format::Text] {
            prop_assert_eq!(render(&a, format), render(&b, format), "{:?}", format);
        }
    }

    #[test]
    fn diff_size_is_bounded_by_the_change(
        ga in arb_gen(),
        mutations in vec(arb_mutation(), 1..=6),
    ) {
        let a = ga.build();
        let mut gb = ga.clone();
        let mut b = a.clone();
        for m in &mutations {
            if let Some(edit) = resolve(&gb, m) {
                perform(&mut gb, &mut b, edit);
            }
        }
        // Incremental digests agree with building from scratch.
        let rebuilt = gb.build();
        prop_assert_eq!(&b, &rebuilt);
        prop_assert_eq!(b.digest(), rebuilt.digest());
        prop_assert_eq!(b.validate(), vec![]);

        let d = diff(&a, &b);
        prop_assert!(d.size() <= mutations.len(), "{} mutations gave {:#?}", mutations.len(), d);
        prop_assert_eq!(d.is_empty(), a == b);
        prop_assert_eq!(a.digest() == b.digest(), a == b);
        prop_assert_eq!(apply(&a, &d), Ok(b.clone()));
        // The same change seen between unshared copies is no bigger.
        prop_assert_eq!(diff(&ga.build(), &rebuilt), d);
    }

    #[test]
    fn apply_is_strict(ga in arb_gen(), gb in arb_gen(), pick in any::<Index>()) {
        let (a, b) = (ga.build(), gb.build());
        let d = diff(&a, &b);
        let checkable: Vec<usize> = (0..d.changes.len())
            .filter(|&i| {
                !matches!(
                    d.changes[i],
                    Change::ChainReplaced { .. } | Change::HealthCheckSet { .. }
                )
            })
            .collect();
        prop_assume!(!checkable.is_empty());
        let index = *pick.get(&checkable);
        let mut base = a.flatten();
        prop_assert!(sabotage(&mut base, &d.changes[index]).is_some());
        let base = NodeDataplane::from_fragment(base);
        match apply(&base, &d) {
            Err(ApplyError::Mismatch { index: failed, .. }) => prop_assert_eq!(failed, index),
            Ok(_) => prop_assert!(false, "applied {:?} onto a base without its precondition", d.changes[index]),
        }
        // Wrong bases never panic.
        let _ = apply(&b, &d);
        let _ = apply(&NodeDataplane::new(), &d);
    }
}

// --- a worked example ----------------------------------------------------------

mod example {
    use setpoint_dataplane::{
        Change, Family, NodeCondition, Protocol, Scheduler, SetType, Table, apply, diff,
    };

    use crate::fixtures::{
        StateBuilder, entry, ip, mk_chain_key, mk_health_check, mk_jump, mk_rs, mk_spec, mk_vs,
        mk_vs_key, state,
    };

    const SVC: &str = "SETPOINT-SERVICES";

    fn before() -> StateBuilder {
        state()
            .set("KEEP", SetType::HashIp, Family::Inet, 64)
            .entries("KEEP", &["10.0.0.1", "10.0.0.2"])
            .set("GONE", SetType::HashIp, Family::Inet, 64)
            .entries("GONE", &["10.0.0.9"])
            .set("REDEF", SetType::HashIp, Family::Inet, 64)
            .vs(
                Protocol::Tcp,
                "10.96.0.10:80",
                Scheduler::Rr,
                None,
                &[("10.244.1.5:8080", 1), ("10.244.2.7:8080", 1)],
            )
            .vs(Protocol::Tcp, "10.96.0.11:80", Scheduler::Rr, None, &[])
            .address("10.96.0.10")
            .chain(Family::Inet, Table::Nat, SVC, &[&["-j", "ACCEPT"]])
            .chain(Family::Inet, Table::Nat, "SETPOINT-OLD", &[])
            .jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC])
            .health_check(30000, "default/web", 1)
            .health_check(30001, "default/gone", 0)
            .health_check(30003, "default/same", 2)
    }

    fn after() -> StateBuilder {
        state()
            .part("cluster")
            .set("KEEP", SetType::HashIp, Family::Inet, 64)
            .entries("KEEP", &["10.0.0.2", "10.0.0.3"])
            .set("NEW", SetType::HashIp, Family::Inet, 64)
            .entries("NEW", &["10.0.0.4"])
            .set("REDEF", SetType::HashIp, Family::Inet, 128)
            .part("node")
            .vs(
                Protocol::Tcp,
                "10.96.0.10:80",
                Scheduler::Wrr,
                None,
                &[("10.244.1.5:8080", 2), ("10.244.3.9:8080", 1)],
            )
            .vs(Protocol::Tcp, "10.96.0.12:80", Scheduler::Rr, None, &[])
            .address("fd00::10")
            .chain(Family::Inet, Table::Nat, SVC, &[&["-j", "DROP"]])
            .jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-j", SVC])
            .health_check(30002, "default/new", 0)
            .health_check(30003, "default/same", 2)
            .part("cluster")
            .health_check(30000, "default/web", 3)
            .draining()
    }

    fn expected() -> Vec<Change> {
        let key = mk_vs_key(Protocol::Tcp, "10.96.0.10:80");
        let entries = |e: &[&str]| e.iter().map(|t| entry(t)).collect::<Vec<_>>();
        vec![
            Change::SetCreated {
                name: "NEW".into(),
                spec: mk_spec(SetType::HashIp, Family::Inet, 64),
            },
            Change::SetRedefined {
                name: "REDEF".into(),
                spec: mk_spec(SetType::HashIp, Family::Inet, 128),
            },
            Change::EntriesAdded {
                set: "KEEP".into(),
                entries: entries(&["10.0.0.3"]),
            },
            Change::EntriesAdded {
                set: "NEW".into(),
                entries: entries(&["10.0.0.4"]),
            },
            Change::EntriesRemoved {
                set: "KEEP".into(),
                entries: entries(&["10.0.0.1"]),
            },
            Change::SetDestroyed {
                name: "GONE".into(),
            },
            Change::AddressAdded {
                address: ip("fd00::10"),
            },
            Change::AddressRemoved {
                address: ip("10.96.0.10"),
            },
            Change::VirtualServerAdded {
                key: mk_vs_key(Protocol::Tcp, "10.96.0.12:80"),
                virtual_server: mk_vs(Scheduler::Rr, None, &[]),
            },
            Change::VirtualServerEdited {
                key,
                scheduler: Scheduler::Wrr,
                persistence_timeout: None,
            },
            Change::VirtualServerRemoved {
                key: mk_vs_key(Protocol::Tcp, "10.96.0.11:80"),
            },
            Change::RealServerAdded {
                key,
                real_server: mk_rs("10.244.3.9:8080", 1),
            },
            Change::RealServerEdited {
                key,
                real_server: mk_rs("10.244.1.5:8080", 2),
            },
            Change::RealServerRemoved {
                key,
                address: ip("10.244.2.7"),
                port: 8080,
            },
            Change::ChainReplaced {
                key: mk_chain_key(Family::Inet, Table::Nat, SVC),
                chain: std::sync::Arc::new(setpoint_dataplane::Chain {
                    rules: vec![crate::fixtures::mk_rule(&["-j", "DROP"])],
                }),
            },
            Change::ChainRemoved {
                key: mk_chain_key(Family::Inet, Table::Nat, "SETPOINT-OLD"),
            },
            Change::JumpAdded {
                jump: mk_jump(Family::Inet, Table::Nat, "OUTPUT", 0, &["-j", SVC]),
            },
            Change::JumpRemoved {
                jump: mk_jump(Family::Inet, Table::Nat, "PREROUTING", 0, &["-j", SVC]),
            },
            Change::HealthCheckSet {
                port: 30000,
                health_check: mk_health_check("default/web", 3),
            },
            Change::HealthCheckSet {
                port: 30002,
                health_check: mk_health_check("default/new", 0),
            },
            Change::HealthCheckRemoved { port: 30001 },
            Change::NodeConditionAdded {
                condition: NodeCondition::Draining,
            },
        ]
    }

    /// The same changes, in any order.
    fn assert_same_changes(got: &[Change], want: &[Change]) {
        let missing: Vec<&Change> = want.iter().filter(|c| !got.contains(c)).collect();
        let extra: Vec<&Change> = got.iter().filter(|c| !want.contains(c)).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && got.len() == want.len(),
            "missing {missing:#?}\nextra {extra:#?}\nin {got:#?}"
        );
    }

    #[test]
    fn diff_lists_each_change_once() {
        let (a, b) = (before().build(), after().build());
        let d = diff(&a, &b);
        assert_same_changes(&d.changes, &expected());
        // A destroyed set takes its entries along: one change, not two.
        assert_eq!(d.size(), expected().len());
        assert_eq!(apply(&a, &d), Ok(b));
    }

    /// `Change` documents: "Changes are listed in the order the variants
    /// are declared, then by key."
    #[test]

    fn diff_lists_changes_in_variant_order() {
        let d = diff(&before().build(), &after().build());
        assert_eq!(d.changes, expected());
    }
}
