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
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo_for_this_test) {
                build.env_remove(name);
            }
        }
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

/// What cargo sets for the test it runs and not for itself. Build scripts
/// that read one of these declare it with `rerun-if-env-changed` (ring's
/// reads `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR`), so a build
/// started with them saw them "changed", ran those scripts again and
/// rebuilt ring, rustls, tonic and everything above them (and the next
/// `cargo test` did it back).
fn set_by_cargo_for_this_test(name: &str) -> bool {
    matches!(
        name,
        "OUT_DIR"
            | "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
    ) || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_for_this_test;

    #[test]
    fn only_what_cargo_sets_for_a_test_is_left_out_of_the_build() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_BIN_EXE_setpoint-service-matrix",
            "CARGO_TARGET_TMPDIR",
        ] {
            assert!(set_by_cargo_for_this_test(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_INCREMENTAL",
            "RUSTFLAGS",
            "PATH",
            "CC",
        ] {
            assert!(!set_by_cargo_for_this_test(name), "{name}");
        }
    }
}
