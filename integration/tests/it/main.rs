//! Rendered node states applied with the real kernel tools, each test in
//! network namespaces it creates.

mod policy_matrix;
mod leader_election;
mod render_applies;
mod running_system;
mod vm_smoke;
