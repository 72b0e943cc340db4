//! Where the agent's kernel tools run: the current network namespace or a
//! named one (`ip netns exec`), how long they may take, and how their
//! failures read.
//!
//! A tool never stalls the agent: its input is written by one thread while
//! two others read its output and errors (a tool that answers before it has
//! read all its input cannot deadlock on full pipes), and a tool still
//! running at its deadline is killed with its whole process group.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one kernel tool may run before it is killed: far above what a
/// 10,000-Service state takes (under a second), far below forever.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `iptables-restore` waits for the xtables lock another program
/// holds (`-w`), before it fails and the apply is nacked and retried.
pub const XTABLES_LOCK_WAIT_SECS: u32 = 5;

/// Where kernel commands run: this network namespace or a named one.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub netns: Option<String>,
}

impl Target {
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    /// Runs a kernel tool with `args`, feeding `stdin`; returns stdout.
    /// Killed after [`TOOL_TIMEOUT`].
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, RunError> {
        self.run_within(program, args, stdin, TOOL_TIMEOUT)
    }

    /// [`Target::run`] with a deadline of `timeout`.
    pub fn run_within(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<String, RunError> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a kill at the deadline also
            // reaches whatever it started (`ip netns exec` execs in place;
            // a wrapper script would not).
            .process_group(0);
        let child = cmd.spawn().map_err(RunError::Spawn)?;
        let (stdout, stderr, success) = bounded(child, stdin, timeout)?;
        if !success {
            return Err(RunError::Failed(
                String::from_utf8_lossy(&stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

/// Feeds `stdin` to `child` while reading its output and errors, until it
/// exits or `timeout` passes; then it is killed. Output, errors and
/// whether it succeeded.
fn bounded(
    mut child: Child,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>, bool), RunError> {
    let deadline = Instant::now() + timeout;
    let input = child.stdin.take();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let (closed, pipes_closed) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        if let (Some(text), Some(mut input)) = (stdin, input) {
            // A tool that exits early closes its end: the write fails,
            // and the exit status says why.
            scope.spawn(move || {
                let _ = input.write_all(text.as_bytes());
            });
        }
        let stdout = {
            let closed = closed.clone();
            scope.spawn(move || drain(out, &closed))
        };
        let stderr = scope.spawn(move || drain(err, &closed));
        let exited = wait_until(&mut child, &pipes_closed, deadline);
        let timed_out = !matches!(exited, Ok(Some(_)));
        if timed_out {
            kill_group(&mut child);
        }
        let status = match exited {
            Ok(Some(status)) => status,
            _ => child.wait().map_err(RunError::Spawn)?,
        };
        let (stdout, stderr) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        if timed_out {
            return Err(RunError::TimedOut {
                after: timeout,
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        Ok((stdout, stderr, status.success()))
    })
}

/// Everything `pipe` yields until it closes; then a word on `closed`.
fn drain(pipe: Option<impl Read>, closed: &mpsc::Sender<()>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    let _ = closed.send(());
    bytes
}

/// The exit status of `child` once both its pipes closed and it exited,
/// `None` when `deadline` came first.
fn wait_until(
    child: &mut Child,
    pipes_closed: &mpsc::Receiver<()>,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if pipes_closed.recv_timeout(left).is_err() {
            return Ok(None);
        }
    }
    // Pipes close as the tool exits; one that closed them and lives on is
    // waited for until the deadline, in short naps.
    let mut nap = Duration::from_micros(50);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// Kills `child`'s process group. The child is not yet reaped, so its id
/// (which is the group's) still names it and nothing else.
fn kill_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; a negative id names
        // the process group this child leads.
        Ok(pid) if pid > 0 => unsafe {
            libc::kill(-pid, libc::SIGKILL);
        },
        _ => {
            let _ = child.kill();
        }
    }
}

/// A kernel tool that could not be started, that failed, or that was
/// killed at its deadline.
#[derive(Debug)]
pub enum RunError {
    Spawn(std::io::Error),
    Failed(String),
    TimedOut { after: Duration, stderr: String },
}

impl RunError {
    /// What went wrong, in words (the tool's own when it said something).
    pub fn describe(self) -> String {
        match self {
            RunError::Spawn(e) => e.to_string(),
            RunError::Failed(stderr) => stderr,
            RunError::TimedOut { after, stderr } => {
                format!("killed after {after:?} without finishing; it said: {stderr}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread; fails the test, instead of hanging it, when
    /// `f` has not returned within a minute (a liveness bound, not a speed
    /// target: what is tested takes well under a second).
    fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the tool run returned (no deadlock, no endless wait)")
    }

    fn sh(script: &str, stdin: Option<&str>, timeout: Duration) -> Result<String, RunError> {
        Target::default().run_within("sh", &["-c", script], stdin, timeout)
    }

    fn gone(pid: i32) -> bool {
        // Absent, or a zombie waiting for whoever reaps it.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    }

    #[test]
    fn a_tool_that_hangs_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let result = finishes(move || sh(&script, None, Duration::from_millis(300)));
        match result {
            Err(RunError::TimedOut { after, .. }) => {
                assert_eq!(after, Duration::from_millis(300))
            }
            other => panic!("a hanging tool must time out, got {other:?}"),
        }
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the script wrote its child's pid")
            .trim()
            .parse()
            .expect("a pid");
        // The kill reaches the process group; the orphan is reaped by init.
        let mut tries = 0;
        while !gone(pid) && tries < 500 {
            std::thread::sleep(Duration::from_millis(10));
            tries += 1;
        }
        assert!(gone(pid), "the tool's own child {pid} was killed too");
    }

    #[test]
    fn a_tool_that_closes_its_output_and_lives_on_is_killed() {
        let result = finishes(|| {
            sh(
                "exec >/dev/null 2>&1; sleep 600",
                None,
                Duration::from_millis(300),
            )
        });
        assert!(
            matches!(result, Err(RunError::TimedOut { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_tool_that_never_reads_its_input_is_killed() {
        let input = "x".repeat(4 << 20);
        let result = finishes(move || sh("sleep 600", Some(&input), Duration::from_millis(300)));
        assert!(
            matches!(result, Err(RunError::TimedOut { .. })),
            "{result:?}"
        );
    }

    /// `cat` writes as it reads: with the input written before the output
    /// is read, both pipes fill and neither side moves.
    #[test]
    fn large_input_is_fed_while_output_and_errors_are_read() {
        let input: String = (0..400_000).map(|i| format!("add SP-X 10.{i}\n")).collect();
        let expected = input.clone();
        let out = finishes(move || sh("tee /dev/stderr", Some(&input), TOOL_TIMEOUT))
            .expect("tee succeeds");
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "the output is the input");
    }

    #[test]
    fn failures_and_spawn_errors_read_as_such() {
        match sh("echo bad >&2; exit 3", None, TOOL_TIMEOUT) {
            Err(RunError::Failed(stderr)) => assert_eq!(stderr, "bad"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Target::default().run("setpoint-no-such-tool", &[], None),
            Err(RunError::Spawn(_))
        ));
        assert_eq!(sh("printf ok", None, TOOL_TIMEOUT).expect("ok"), "ok");
    }
}
