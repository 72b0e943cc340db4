//! Validation of node states as commits change them: the shared part of a
//! zone's states once per zone, checked by what changed since its last
//! check when it had no problem; each node's own parts over it.
//!
//! Equal in result to `NodeDataplane::validate` of each whole state, which
//! the incremental property tests compare against.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use setpoint_dataplane::diff::{Change, Diff, apply_to_fragment, diff_fragments};
use setpoint_dataplane::validate::Invalid;
use setpoint_dataplane::{Family, Fragment, NodeDataplane, SetEntry, VirtualServerKey, template};

use super::PART_BASE;

/// The shared part of a zone's nodes' states (base, services, zone) as
/// last validated: checked whole the first time and after any problem,
/// otherwise by what changed since.
pub(super) struct SharedCheck {
    pub(super) services: Arc<Fragment>,
    pub(super) zone: Arc<Fragment>,
    flat: Fragment,
    pub(super) invalid: Vec<Invalid>,
}

/// What a zone's shared part gained at its last check: what a node whose
/// own parts did not change must be checked against.
#[derive(Default)]
pub(super) struct SharedGain {
    /// Checked whole: so is every node of the zone.
    pub(super) whole: bool,
    pub(super) entries: Vec<(String, SetEntry)>,
    pub(super) virtual_servers: Vec<VirtualServerKey>,
}

/// A node's own parts as last validated (the same `Arc`s while they are
/// not edited), with the state's problems.
pub(super) struct NodeCheck {
    pub(super) own: Option<Arc<Fragment>>,
    pub(super) policy: Option<Arc<Fragment>>,
    pub(super) invalid: Vec<Invalid>,
}

pub(super) fn same_part(a: &Option<Arc<Fragment>>, b: Option<&Arc<Fragment>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The shared part of a zone's states, checked against the last check
/// when there was one without problems (`validate`'s checks on what the
/// fragments' diff adds: entries against their set, set fill, virtual
/// servers' families; anything else is checked whole), else whole.
pub(super) fn check_shared(
    base: &Arc<Fragment>,
    services: &Arc<Fragment>,
    zone: &Arc<Fragment>,
    previous: Option<&SharedCheck>,
) -> (SharedCheck, SharedGain) {
    let mut gain = SharedGain::default();
    let mut invalid: Vec<Invalid>;
    // The last checked union with the diff applied; an atom added where
    // another part has it fails to apply, and is checked whole.
    let delta = previous.filter(|p| p.invalid.is_empty()).and_then(|p| {
        let mut changes = diff_fragments(&p.services, services).changes;
        changes.extend(diff_fragments(&p.zone, zone).changes);
        let checkable = changes.iter().all(|c| {
            matches!(
                c,
                Change::EntriesAdded { .. }
                    | Change::EntriesRemoved { .. }
                    | Change::AddressAdded { .. }
                    | Change::AddressRemoved { .. }
                    | Change::VirtualServerAdded { .. }
                    | Change::VirtualServerEdited { .. }
                    | Change::VirtualServerRemoved { .. }
                    | Change::RealServerAdded { .. }
                    | Change::RealServerEdited { .. }
                    | Change::RealServerRemoved { .. }
            )
        });
        if !checkable {
            return None;
        }
        let mut flat = p.flat.clone();
        let diff = Diff { changes };
        apply_to_fragment(&mut flat, &diff).ok()?;
        Some((flat, diff.changes))
    });
    let flat: Fragment;
    match delta {
        Some((applied, changes)) => {
            flat = applied;
            // What the diff adds, with the definitions of the sets it
            // fills, validated as a state of its own: `validate`'s own
            // checks of entries and virtual servers. Set fill is the
            // whole set's, counted here.
            let mut added = Fragment::new();
            let mut filled: BTreeSet<&String> = BTreeSet::new();
            for change in &changes {
                match change {
                    Change::EntriesAdded { set, entries } => {
                        filled.insert(set);
                        if let Some(spec) = flat.set(set) {
                            added.put_set(set.clone(), spec.clone());
                        }
                        for entry in entries {
                            added.add_entry(set, entry.clone());
                            gain.entries.push((set.clone(), entry.clone()));
                        }
                    }
                    Change::VirtualServerAdded { key, .. }
                    | Change::VirtualServerEdited { key, .. }
                    | Change::RealServerAdded { key, .. }
                    | Change::RealServerEdited { key, .. } => {
                        if matches!(change, Change::VirtualServerAdded { .. }) {
                            gain.virtual_servers.push(*key);
                        }
                        if let Some(vs) = flat.virtual_server(key) {
                            added.put_virtual_server(*key, vs.clone());
                        }
                    }
                    _ => {}
                }
            }
            invalid = NodeDataplane::from_fragment(added)
                .validate()
                .into_iter()
                .filter(|p| !matches!(p, Invalid::SetOverfull { .. }))
                .collect();
            for set in filled {
                invalid.extend(overfull(&flat, set, flat.entry_count(set)));
            }
        }
        None => {
            gain.whole = true;
            let mut whole = Fragment::clone(services);
            let overlap = whole.absorb(base) + whole.absorb(zone);
            invalid = NodeDataplane::from_fragment(whole.clone()).validate();
            if overlap > 0 {
                invalid.push(Invalid::DuplicatedAcrossParts { atoms: overlap });
            }
            flat = whole;
        }
    }
    invalid.dedup();
    let check = SharedCheck {
        services: services.clone(),
        zone: zone.clone(),
        flat,
        invalid,
    };
    (check, gain)
}

/// The set overfull with `entries`, if it is.
fn overfull(flat: &Fragment, set: &str, entries: usize) -> Option<Invalid> {
    let spec = flat.set(set)?;
    (entries > spec.maxelem as usize).then(|| Invalid::SetOverfull {
        set: set.to_string(),
        entries,
        maxelem: spec.maxelem,
    })
}

/// The template twin of a concrete virtual server key.
fn twin(key: &VirtualServerKey) -> VirtualServerKey {
    VirtualServerKey {
        address: template::template_address(key.family()),
        ..*key
    }
}

/// The problems of one node's state, checked whole: those of its zone's
/// shared part, of its own parts over the base (`NodeDataplane::validate`),
/// and what only the union shows — an atom in two parts, a set the parts
/// overfill together, a NodePort template on a node address where a
/// virtual server of its own sits. Equals `validate` of the whole state
/// without merging the shared part per node.
pub(super) fn check_node(
    base: &Arc<Fragment>,
    shared: &SharedCheck,
    mine: &[&Arc<Fragment>],
) -> Vec<Invalid> {
    let mut invalid = shared.invalid.clone();
    let mut parts: Vec<(String, Arc<Fragment>)> = vec![(PART_BASE.to_string(), base.clone())];
    for (i, part) in mine.iter().enumerate() {
        parts.push((format!("own/{i}"), Arc::clone(part)));
    }
    for problem in NodeDataplane::from_parts(parts).validate() {
        if !invalid.contains(&problem) {
            invalid.push(problem);
        }
    }
    let mut flat = shared.flat.clone();
    let overlap: u64 = mine.iter().map(|part| flat.absorb(part)).sum();
    if overlap > 0 {
        invalid.push(Invalid::DuplicatedAcrossParts { atoms: overlap });
    }
    let sets: BTreeSet<&String> = mine
        .iter()
        .flat_map(|part| part.all_entries().map(|(set, _)| set))
        .collect();
    for set in sets {
        if let Some(problem) = overfull(&flat, set, flat.entry_count(set))
            && !invalid.contains(&problem)
        {
            invalid.push(problem);
        }
    }
    for family in Family::ALL {
        for address in template::node_port_addresses(&flat, family) {
            for (key, _) in flat.virtual_servers_at(address) {
                if flat.virtual_server(&twin(key)).is_some() {
                    invalid.push(Invalid::NodePortCollision {
                        collision: template::Collision { key: *key },
                    });
                }
            }
        }
    }
    invalid
}

/// The problems of a node whose own parts did not change since a check
/// without problems, after its zone's shared part gained `gain`: only
/// what the gained atoms can break with the node's own parts.
pub(super) fn check_gain(
    shared: &SharedCheck,
    gain: &SharedGain,
    mine: &[&Arc<Fragment>],
) -> Vec<Invalid> {
    let mut invalid = shared.invalid.clone();
    let has = |set: &str, entry: &SetEntry| {
        mine.iter()
            .any(|p| p.entries(set).is_some_and(|e| e.contains(entry)))
    };
    let mut duplicated = 0u64;
    let mut filled: BTreeSet<&String> = BTreeSet::new();
    for (set, entry) in &gain.entries {
        if has(set, entry) {
            duplicated += 1;
        }
        if mine.iter().any(|p| p.entry_count(set) > 0) {
            filled.insert(set);
        }
    }
    for set in filled {
        let entries =
            shared.flat.entry_count(set) + mine.iter().map(|p| p.entry_count(set)).sum::<usize>();
        invalid.extend(overfull(&shared.flat, set, entries));
    }
    let vs_anywhere = |key: &VirtualServerKey| {
        shared.flat.virtual_server(key).is_some()
            || mine.iter().any(|p| p.virtual_server(key).is_some())
    };
    for key in &gain.virtual_servers {
        if mine.iter().any(|p| p.virtual_server(key).is_some()) {
            duplicated += 1;
        }
        let addresses = |family| {
            mine.iter()
                .flat_map(move |p| template::node_port_addresses(p, family))
                .collect::<Vec<IpAddr>>()
        };
        if template::is_template(key) {
            for address in addresses(key.family()) {
                let concrete = VirtualServerKey { address, ..*key };
                if vs_anywhere(&concrete) {
                    invalid.push(Invalid::NodePortCollision {
                        collision: template::Collision { key: concrete },
                    });
                }
            }
        } else if addresses(key.family()).contains(&key.address) && vs_anywhere(&twin(key)) {
            invalid.push(Invalid::NodePortCollision {
                collision: template::Collision { key: *key },
            });
        }
    }
    if duplicated > 0 {
        invalid.push(Invalid::DuplicatedAcrossParts { atoms: duplicated });
    }
    invalid
}
