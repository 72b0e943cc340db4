//! The EndpointSlice controller's trigger time: where programming latency
//! starts, for the control plane as for kube-proxy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use setpoint_compute::ClusterObject;

/// The annotation the EndpointSlice controller stamps with the time of
/// the change behind the slice's last update (RFC 3339).
pub const TRIGGER_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger time an object carries: an EndpointSlice's annotation,
/// parsed; `None` for other kinds, without it, or unreadable. Manifests'
/// slices carry it when their writer set it.
pub fn trigger_time(object: &ClusterObject) -> Option<SystemTime> {
    let ClusterObject::EndpointSlice(slice) = object else {
        return None;
    };
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_ANNOTATION)?;
    parse_time(text)
}

/// An RFC 3339 time (the controller writes Go's `time.RFC3339Nano`, older
/// ones `RFC3339`) as a `SystemTime`; `None` when it does not parse or is
/// before 1970.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    // Bounded: the API server's annotation is short, a manifest's is anyone's.
    if text.len() > 64 {
        return None;
    }
    let t: k8s_openapi::jiff::Timestamp = text.trim().parse().ok()?;
    let nanos = u64::try_from(t.as_nanosecond()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}
