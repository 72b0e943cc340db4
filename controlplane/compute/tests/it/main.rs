//! Integration tests of `setpoint-compute`: Kubernetes objects in, a node's
//! desired dataplane out, checked as compact lines through one helper
//! ([`support::check`]).

mod support;

mod addresses;
mod bad_input;
mod budgets;
mod cluster_ip;
mod conflicts;
mod endpoints;
mod examples;
mod external;
mod health_checks;
mod ignored;
mod incremental;
mod layout;
mod node_port;
mod policy;
mod properties;
mod scheduling;
mod service_cidrs;
mod topology;
mod traffic_policy;
