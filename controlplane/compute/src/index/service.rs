//! Services: converted on apply, admitted and planned at commit.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as k8s;

use super::problems::ProblemKind;
use super::{Index, IndexResource};
use crate::admit::{AddressContext, LeftOutReason, Refusal, frontend_count};
use crate::convert::{self, Rejection, ServiceOutcome};
use crate::model::{EndpointSlice, Service, ServiceId};
use crate::object::{Kind, ObjectKey};
use crate::plan::{Frontend, ServicePlan, frontends, plan_service};

impl IndexResource<k8s::Service> for Index {
    fn apply(&mut self, key: &ObjectKey, service: k8s::Service) {
        let id = ServiceId::new(&key.namespace, &key.name);
        match convert::service(&service, "default") {
            ServiceOutcome::Proxied(model, warnings) => {
                self.note(key, warnings, false);
                self.services.insert(id.clone(), model);
            }
            ServiceOutcome::Ignored(why) => {
                self.ignored.insert(key.clone(), why);
                self.services.remove(&id);
            }
            ServiceOutcome::Rejected(r) => {
                self.note(key, vec![r], true);
                self.services.remove(&id);
            }
        }
        self.dirty_services.insert(id);
    }

    fn delete(&mut self, key: &ObjectKey) {
        let id = ServiceId::new(&key.namespace, &key.name);
        self.services.remove(&id);
        self.dirty_services.insert(id);
    }
}

/// Every address a Service asks to be served on.
fn addresses_of(svc: &Service) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = svc
        .cluster_ips
        .iter()
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
        .copied()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A Service as compute serves it.
pub(super) enum Served<'a> {
    Absent,
    LeftOut(LeftOutReason, String),
    Serve(Cow<'a, Service>, Vec<Refusal>),
}

impl Index {
    /// A Service as compute serves it now: its admitted addresses, or left
    /// out over a budget or an earlier invalid state.
    pub(super) fn served(&self, id: &ServiceId) -> Served<'_> {
        let Some(svc) = self.services.get(id) else {
            return Served::Absent;
        };
        if let Some(why) = self.left_out_invalid.get(id) {
            return Served::LeftOut(LeftOutReason::InvalidState, why.clone());
        }
        let context = AddressContext {
            config: &self.config,
            cluster_ips: &self.cluster_ip_users,
            pod_cidrs: &self.pod_cidrs,
            node_addresses: &self.node_addresses,
        };
        let (service, refusals) = context.admit(svc);
        let frontends = frontend_count(&service);
        let limit = self.config.max_service_frontends;
        if frontends > limit {
            return Served::LeftOut(
                LeftOutReason::TooManyFrontends,
                format!(
                    "left out: {frontends} frontends (ports × addresses, plus NodePorts) \
                     are more than the budget of {limit} (--max-service-frontends)"
                ),
            );
        }
        let endpoints: usize = self
            .slices_by_service
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|slot| self.slices.get(slot))
            .map(|s| s.endpoints.len())
            .sum();
        let limit = self.config.max_service_endpoints;
        if endpoints > limit {
            return Served::LeftOut(
                LeftOutReason::TooManyEndpoints,
                format!(
                    "left out: {endpoints} endpoints are more than the budget of {limit} \
                     (--max-service-endpoints)"
                ),
            );
        }
        Served::Serve(service, refusals)
    }

    pub(super) fn plan(
        &mut self,
        id: &ServiceId,
        zones: &[Option<Arc<str>>],
    ) -> Option<ServicePlan> {
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: id.namespace.to_string(),
            name: id.name.to_string(),
        };
        // What compute decided at the last plan goes; what the object
        // itself carries stays.
        if let Some(list) = self.problems.get_mut(&key) {
            list.retain(|p| p.kind == ProblemKind::Object);
            if list.is_empty() {
                self.problems.remove(&key);
            }
        }
        let object = format!("Service {id}");
        let (plan, notes, skipped) = match self.served(id) {
            Served::Absent => return None,
            Served::LeftOut(reason, why) => (
                None,
                vec![(
                    Rejection {
                        object,
                        reason: why,
                    },
                    ProblemKind::LeftOut(reason),
                    self.services.get(id).map(addresses_of).unwrap_or_default(),
                )],
                true,
            ),
            Served::Serve(svc, refusals) => {
                let claims = &self.claims;
                let owns = |f: &Frontend| claims.get(f).and_then(|s| s.first()) == Some(id);
                let mut notes: Vec<(Rejection, ProblemKind, Vec<IpAddr>)> = refusals
                    .iter()
                    .map(|r| {
                        (
                            Rejection {
                                object: object.clone(),
                                reason: r.to_string(),
                            },
                            ProblemKind::AddressRefused(r.reason),
                            vec![r.address],
                        )
                    })
                    .collect();
                for f in frontends(&svc) {
                    if !owns(&f)
                        && let Some(winner) = claims.get(&f).and_then(|s| s.first())
                    {
                        notes.push((
                            Rejection {
                                object: object.clone(),
                                reason: format!(
                                    "{f} is also claimed by Service {winner}, which keeps it"
                                ),
                            },
                            ProblemKind::FrontendTaken,
                            match f {
                                Frontend::Vip(ip, ..) => vec![ip],
                                Frontend::NodePort(..) => Vec::new(),
                            },
                        ));
                    }
                }
                let slices: Vec<&EndpointSlice> = self
                    .slices_by_service
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|slot| self.slices.get(slot))
                    .collect();
                let plan = plan_service(&svc, &slices, zones, &self.config, &owns);
                (Some(plan), notes, false)
            }
        };
        self.note_kinds(&key, notes, skipped);
        plan
    }
}
