//! Problems with objects, kept until the object changes or goes away.

use std::net::IpAddr;

use super::Index;
use crate::admit::{LeftOutReason, RefusalReason};
use crate::convert::Rejection;
use crate::object::ObjectKey;

/// A problem with an object, kept until the object changes or goes away
/// (or, for what compute decided about a Service, until it is planned again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    pub rejection: Rejection,
    /// True when the whole object was set aside; false for a warning about
    /// a part of it (one endpoint, one annotation, a port conflict).
    pub skipped: bool,
    pub kind: ProblemKind,
    /// The addresses it concerns (so `explain` can say why one is not
    /// served): a refused address, a taken frontend's, or every address of
    /// a Service left out; empty for a problem with an object as written.
    pub addresses: Vec<IpAddr>,
}

/// What a problem is about; bounded, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// The object as written (conversion, validation of its fields).
    Object,
    /// A frontend another Service keeps.
    FrontendTaken,
    /// One address of a Service that is not served.
    AddressRefused(RefusalReason),
    /// A whole Service that is not served.
    LeftOut(LeftOutReason),
}

impl Index {
    pub(super) fn note(&mut self, key: &ObjectKey, rejections: Vec<Rejection>, skipped: bool) {
        let kinded = rejections
            .into_iter()
            .map(|r| (r, ProblemKind::Object, Vec::new()))
            .collect();
        self.note_kinds(key, kinded, skipped);
    }

    pub(super) fn note_kinds(
        &mut self,
        key: &ObjectKey,
        rejections: Vec<(Rejection, ProblemKind, Vec<IpAddr>)>,
        skipped: bool,
    ) {
        if rejections.is_empty() {
            return;
        }
        let list = self.problems.entry(key.clone()).or_default();
        list.extend(
            rejections
                .into_iter()
                .map(|(rejection, kind, addresses)| Problem {
                    object: key.clone(),
                    rejection,
                    skipped,
                    kind,
                    addresses,
                }),
        );
    }

    /// Current problems, by object.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }

    /// Objects Setpoint deliberately does not proxy, with the reason.
    pub fn ignored(&self) -> impl Iterator<Item = (&ObjectKey, &&'static str)> {
        self.ignored.iter()
    }
}
