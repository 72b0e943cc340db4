//! Rendered node states applied with the real kernel tools, each test in
//! network namespaces it creates.

mod admin_api;
mod agent_identity;
mod agent_listener_limits;
mod agent_refuses;
mod cluster_policy_matrix;
mod dashboard;
mod dependency_graph;
mod deploy_manifests;
mod e2e_support;
mod failsafe;
mod large_state;
mod leader_election;
mod otlp;
mod policy_matrix;
mod render_applies;
mod rollout;
mod running_failures;
mod running_system;
mod service_hijacks;
mod service_matrix;
mod sigkill;
mod verdict_log;
mod vm_smoke;
