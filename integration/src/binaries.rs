//! The workspace's own binaries (`setpoint-controlplane`, `setpoint-agent`,
//! …) for tests that run them as operators do.
//!
//! Every such test asks here, and the one build happens once per test
//! process, as `cargo test --workspace` builds them. Tests that each ran
//! their own `cargo build` resolved dependency features without the
//! dev-dependencies, so every such build compiled a second copy of a
//! dozen crates and relinked `target/<profile>/setpoint-controlplane`
//! (400 MiB with debug info) while the other tests ran — and started it.
//! Under `scripts/test` this build finds everything fresh and changes
//! nothing; a developer running one test alone still gets binaries of the
//! code they are testing, never a stale one left in the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What `scripts/test` runs, without running anything: the same feature
/// resolution, so the same binaries.
const BUILD_ARGS: [&str; 4] = ["test", "--workspace", "--no-run", "--locked"];

/// `target/<profile>`, where cargo puts the binaries of this build.
pub fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/it-… → target/<profile>/
        exe.parent()
            .and_then(Path::parent)
            .expect("test executable in target/<profile>/deps")
            .to_path_buf()
    })
}

/// The path of the workspace binary `name`, built (once per process, all
/// binaries together) with this test's profile.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(BUILD_ARGS)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        if profile_dir().ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo {BUILD_ARGS:?} failed");
    });
    let binary = profile_dir().join(name);
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    binary
}
