//! Test support for exercising real kernel parts: network namespaces the
//! test creates (and always removes), and the kernel tools run inside them.

use std::process::{Command, Output};

pub mod binaries;
pub mod cluster;
pub mod fleet_agents;
pub mod measure;
pub mod netns_agent;
pub mod pki;
pub mod postgres;
pub mod service_matrix;
pub mod vm;

/// The status code of `GET /readyz` on a metrics listener.
pub async fn readyz(addr: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.expect("read reply");
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
}

/// A network namespace created for one test and deleted on drop, also when
/// the test fails.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sp-<tag>-<pid>-<n>` so that parallel tests never collide.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sp-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"], None)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace, feeding `stdin` if given;
    /// returns stdout, or an error with the command's stderr.
    pub fn exec(&self, argv: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        let output = match stdin {
            None => cmd.output()?,
            Some(text) => {
                use std::io::Write;
                use std::process::Stdio;
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                if let Some(mut input) = child.stdin.take() {
                    input.write_all(text.as_bytes())?;
                }
                child.wait_with_output()?
            }
        };
        check(&format!("{argv:?} in {}", self.name), output)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

fn check(what: &str, output: Output) -> anyhow::Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        anyhow::bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    check(&what, cmd.output()?)
}

/// Fails with a clear message unless the tests can create namespaces and
/// find the tools; there is no silent skip.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and need root (run them via scripts/test as root)"
    );
    for tool in [
        "ip",
        "ipset",
        "iptables-restore",
        "ip6tables-restore",
        "iptables-save",
    ] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).exists()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed: scripts/test installs it (apt-get install ipset iptables iproute2)"
        );
    }
}
