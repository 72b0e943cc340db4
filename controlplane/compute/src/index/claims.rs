//! Who lists which address, and who owns which frontend: what makes one
//! Service's change dirty others.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Index;
use super::service::Served;
use crate::model::ServiceId;
use crate::plan::frontends;

impl Index {
    /// Updates which addresses Services list as ClusterIPs and as external
    /// or load-balancer IPs; Services whose admission this changes (an
    /// external IP that became or stopped being a ClusterIP) become dirty.
    pub(super) fn update_listed(&mut self, dirty: &mut BTreeSet<ServiceId>) {
        let mut flipped: Vec<IpAddr> = Vec::new();
        for id in dirty.iter() {
            let new: (Vec<IpAddr>, Vec<IpAddr>) = match self.services.get(id) {
                Some(svc) => (
                    svc.cluster_ips.clone(),
                    svc.external_ips
                        .iter()
                        .chain(&svc.load_balancer_ips)
                        .copied()
                        .collect(),
                ),
                None => Default::default(),
            };
            let old = self.listed.remove(id).unwrap_or_default();
            for ip in old.0.iter().filter(|ip| !new.0.contains(ip)) {
                if let Some(users) = self.cluster_ip_users.get_mut(ip) {
                    users.remove(id);
                    if users.is_empty() {
                        self.cluster_ip_users.remove(ip);
                        flipped.push(*ip);
                    }
                }
            }
            for ip in new.0.iter().filter(|ip| !old.0.contains(ip)) {
                let users = self.cluster_ip_users.entry(*ip).or_default();
                if users.is_empty() {
                    flipped.push(*ip);
                }
                users.insert(id.clone());
            }
            for ip in old.1.iter().filter(|ip| !new.1.contains(ip)) {
                if let Some(users) = self.foreign_users.get_mut(ip) {
                    users.remove(id);
                    if users.is_empty() {
                        self.foreign_users.remove(ip);
                    }
                }
            }
            for ip in new.1.iter().filter(|ip| !old.1.contains(ip)) {
                self.foreign_users
                    .entry(*ip)
                    .or_default()
                    .insert(id.clone());
            }
            if !new.0.is_empty() || !new.1.is_empty() {
                self.listed.insert(id.clone(), new);
            }
        }
        for ip in flipped {
            dirty.extend(self.foreign_users.get(&ip).into_iter().flatten().cloned());
        }
    }

    /// Moves frontend claims to what `dirty` Services ask for now; a
    /// Service that loses or wins a frontend becomes dirty too. Returns
    /// whether any frontend changed owner.
    pub(super) fn settle_claims(&mut self, dirty: &mut BTreeSet<ServiceId>) -> bool {
        let mut owners_changed = false;
        for id in dirty.clone() {
            let new = match self.served(&id) {
                Served::Serve(svc, _) => frontends(&svc),
                Served::Absent | Served::LeftOut(..) => Vec::new(),
            };
            let old = self.claimed_by.remove(&id).unwrap_or_default();
            for f in old.iter().filter(|f| !new.contains(f)) {
                if let Some(set) = self.claims.get_mut(f) {
                    let was = set.first().cloned();
                    set.remove(&id);
                    if let Some(winner) = set.first().filter(|w| Some(*w) != was.as_ref()) {
                        dirty.insert(winner.clone());
                        owners_changed = true;
                    }
                    if set.is_empty() {
                        self.claims.remove(f);
                    }
                }
            }
            for f in new.iter().filter(|f| !old.contains(f)) {
                let set = self.claims.entry(*f).or_default();
                let was = set.first().cloned();
                set.insert(id.clone());
                if let Some(loser) = was.filter(|w| set.first() != Some(w)) {
                    dirty.insert(loser);
                    owners_changed = true;
                }
            }
            if !new.is_empty() {
                self.claimed_by.insert(id, new);
            }
        }
        owners_changed
    }
}
