//! Compiles the protocol with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=v1/agent.proto");
    println!("cargo:rerun-if-changed=v1/admin.proto");
    let fds = protox::compile(["v1/agent.proto", "v1/admin.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
