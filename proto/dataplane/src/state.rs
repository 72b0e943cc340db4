//! [`NodeDataplane`]: one node's whole desired state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::{Accumulator, Digest};
use crate::fragment::Fragment;
use crate::model::{HealthCheck, NodeCondition};
use crate::wire::WireState;

/// A node's full desired dataplane, made of named, disjoint fragments.
///
/// The split into fragments is how the control plane shares work and
/// memory (one fragment for what every node has, one per zone, one per
/// node); it is not part of the state's meaning. Equality, the digest,
/// `diff` and every render look only at the union of the fragments.
///
/// Fragments must be disjoint: an atom (an entry, a virtual server, …) may
/// sit in one fragment only. [`NodeDataplane::validate`] checks it.
#[derive(Clone, Debug, Default)]
pub struct NodeDataplane {
    /// Shared by clones until one changes (copy on write): the control
    /// plane clones a revision's state for every session that sends it.
    parts: Arc<BTreeMap<String, Arc<Fragment>>>,
    /// The parts' sum, kept: its digest is asked on every send and ack.
    /// Shared by clones, which hold the same parts until one changes
    /// (thousands of sessions clone a revision's state and ask its
    /// digest: one SHA-256 for all); a change to the parts takes a new
    /// cell.
    sum: Arc<std::sync::OnceLock<Accumulator>>,
}

/// The part name used for a state that was not split.
pub const WHOLE: &str = "whole";

impl NodeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state held in one fragment, as the agent keeps it.
    pub fn from_fragment(fragment: Fragment) -> Self {
        let mut parts = BTreeMap::new();
        parts.insert(WHOLE.to_string(), Arc::new(fragment));
        NodeDataplane {
            parts: Arc::new(parts),
            sum: Default::default(),
        }
    }

    pub fn from_parts<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = (S, Arc<Fragment>)>,
        S: Into<String>,
    {
        NodeDataplane {
            parts: Arc::new(parts.into_iter().map(|(n, f)| (n.into(), f)).collect()),
            sum: Default::default(),
        }
    }

    pub fn parts(&self) -> impl Iterator<Item = (&String, &Arc<Fragment>)> {
        self.parts.iter()
    }

    pub fn part(&self, name: &str) -> Option<&Arc<Fragment>> {
        self.parts.get(name)
    }

    pub fn set_part(&mut self, name: impl Into<String>, fragment: Arc<Fragment>) {
        self.sum = Arc::default();
        Arc::make_mut(&mut self.parts).insert(name.into(), fragment);
    }

    pub fn remove_part(&mut self, name: &str) -> Option<Arc<Fragment>> {
        self.sum = Arc::default();
        Arc::make_mut(&mut self.parts).remove(name)
    }

    pub fn accumulator(&self) -> Accumulator {
        self.sum().clone()
    }

    fn sum(&self) -> &Accumulator {
        self.sum.get_or_init(|| {
            let mut acc = Accumulator::default();
            for part in self.parts.values() {
                acc.merge(part.accumulator());
            }
            acc
        })
    }

    /// The stable digest of the state: equal exactly when the states are.
    pub fn digest(&self) -> Digest {
        self.sum().finish()
    }

    pub fn atom_count(&self) -> u64 {
        self.sum().count()
    }

    /// The union of all fragments as one. O(1) for a single fragment.
    pub fn flatten(&self) -> Fragment {
        flatten(self.parts.values())
    }

    /// The health-check node ports the agent serves, across all parts (in
    /// a valid state a port sits in one part only; should two hold it,
    /// the part named last wins).
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        self.parts
            .values()
            .flat_map(|part| part.health_checks())
            .map(|(port, check)| (*port, check.clone()))
            .collect()
    }

    /// The node's conditions, across all parts.
    pub fn node_conditions(&self) -> BTreeSet<NodeCondition> {
        self.parts
            .values()
            .flat_map(|part| part.node_conditions().copied())
            .collect()
    }

    /// Whether load balancers should drain this node
    /// ([`NodeCondition::Draining`] in any part).
    pub fn node_draining(&self) -> bool {
        self.parts
            .values()
            .any(|part| part.has_node_condition(NodeCondition::Draining))
    }

    /// Atoms that sit in more than one fragment (zero in a valid state).
    pub fn overlap(&self) -> u64 {
        let mut parts = self.parts.values();
        let Some(first) = parts.next() else {
            return 0;
        };
        let mut whole = Fragment::clone(first);
        parts.map(|p| whole.absorb(p)).sum()
    }
}

/// The union of disjoint parts. The largest is cloned (persistent maps:
/// O(1), and its structure stays shared with the part, which keeps later
/// diffs against similar states cheap) and the others are added to it.
pub(crate) fn flatten<'a>(parts: impl Iterator<Item = &'a Arc<Fragment>>) -> Fragment {
    let parts: Vec<&Arc<Fragment>> = parts.collect();
    let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].atom_count()) else {
        return Fragment::new();
    };
    let mut whole = Fragment::clone(parts[largest]);
    for (i, part) in parts.iter().enumerate() {
        if i != largest {
            whole.absorb(part);
        }
    }
    whole
}

impl PartialEq for NodeDataplane {
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.parts, &other.parts) {
            return true;
        }
        if self.parts.len() == other.parts.len()
            && self
                .parts
                .iter()
                .zip(other.parts.iter())
                .all(|((na, a), (nb, b))| na == nb && (Arc::ptr_eq(a, b) || a == b))
        {
            return true;
        }
        self.flatten() == other.flatten()
    }
}
impl Eq for NodeDataplane {}

impl Serialize for NodeDataplane {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireState::from_fragment(&self.flatten(), self.digest()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeDataplane {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireState::deserialize(d)?;
        let fragment = wire.into_fragment().map_err(serde::de::Error::custom)?;
        Ok(NodeDataplane::from_fragment(fragment))
    }
}
