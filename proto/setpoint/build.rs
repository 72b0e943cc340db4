//! Compiles the protocol with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=v1/agent.proto");
    println!("cargo:rerun-if-changed=v1/admin.proto");
    let fds = protox::compile(["v1/agent.proto", "v1/admin.proto"], ["."])?;
    // A piece is a slice of one shared encoding, not a copy.
    tonic_prost_build::configure()
        .bytes(".setpoint.v1.Piece.data")
        .compile_fds(fds)?;
    Ok(())
}
