//! Rendered node states applied with the real kernel tools, each test in
//! network namespaces it creates.

mod policy_matrix;
mod render_applies;
mod vm_smoke;
