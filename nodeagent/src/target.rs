//! Where the agent's kernel tools run: the current network namespace or a
//! named one (`ip netns exec`), and how their failures read.

use std::process::{Command, Stdio};

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
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, RunError> {
        use std::io::Write;
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(RunError::Spawn)?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes()).map_err(RunError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(RunError::Spawn)?;
        if !out.status.success() {
            return Err(RunError::Failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A kernel tool that could not be started, or that failed.
#[derive(Debug)]
pub enum RunError {
    Spawn(std::io::Error),
    Failed(String),
}
