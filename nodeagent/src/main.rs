//! `setpoint-agent`: see `cli.rs` for the commands.

mod cli;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    cli::run()
}

/// Keeps the heap in 4 KiB pages. Where the kernel backs anonymous memory
/// with transparent huge pages always (Debian's and RHEL's default), each
/// 2 MiB the heap reaches is resident whole, and pages freed inside one
/// are not given back: the agent's resident memory climbed by about 2 MiB
/// per one-endpoint delta in the VM benchmark (AnonHugePages most of it),
/// for a heap that needs a few hundred KiB more.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches only
    // this process's flags; failure (an old kernel) leaves things as they
    // were.
    unsafe {
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
    }
}
