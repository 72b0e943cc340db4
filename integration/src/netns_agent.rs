//! An agent whose sockets live in a network namespace, so that what it
//! applies there also decides whether it can reach the control plane (the
//! fail-safe's tests): it runs on a thread that entered the namespace, in
//! a runtime of its own, until dropped.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use setpoint_agent::client::{Agent, AgentProgress};
use setpoint_agent::metrics::AgentMetrics;

pub struct NetnsAgent {
    pub progress: Arc<Mutex<AgentProgress>>,
    pub metrics: Arc<AgentMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NetnsAgent {
    /// Runs `agent` inside `netns` (its connections start there).
    pub fn start(netns: &str, agent: Agent) -> NetnsAgent {
        let (progress, metrics) = (agent.progress.clone(), agent.metrics.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let netns = netns.to_string();
        let thread = std::thread::spawn(move || {
            let ran = setpoint_agent::in_netns(Some(&netns), move || {
                // Threads the runtime starts inherit the namespace.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    tokio::select! {
                        () = agent.run() => {}
                        _ = stopped => {}
                    }
                });
                std::io::Result::Ok(())
            });
            if let Err(e) | Ok(Err(e)) = ran {
                eprintln!("the agent in {netns} could not run: {e}");
            }
        });
        NetnsAgent {
            progress,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn progress(&self) -> AgentProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for NetnsAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
