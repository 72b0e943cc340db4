//! Rendered node states applied with the real kernel tools, each test in
//! network namespaces it creates.

mod render_applies;
