//! The agent's fail-safe, with the agent's own connection inside the
//! network namespace it programs (a veth pair to the control plane, which
//! listens with mTLS on the host side). A revision adds a Service whose
//! external IP and port are the control plane's, without endpoints: the
//! kernel now rejects new connections to the control plane. The control
//! plane restarts; the agent cannot reconnect, returns to the previous
//! state by itself after the bound, reconnects, and refuses the state that
//! cut it off. When the control plane is simply away (the loss comes long
//! after the last apply), the kernel is left as it is: fail static.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use setpoint_agent::client::{Agent, AgentOptions, FailsafeConfig};
use setpoint_agent::services::IpvsMode;
use setpoint_agent::target::Target;
use setpoint_controlplane::serve::ServeConfig;
use setpoint_integration::netns_agent::NetnsAgent;
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_store::AgentResult;

use crate::agent_identity::{Pki, server_tls};
use crate::e2e_support::{copy_examples, fresh_postgres_database};
use crate::running_failures::{ControlPlane, config, open_store, wait_for};

const LIMIT: Duration = Duration::from_secs(30);

/// A namespace joined to the host by a veth pair (`10.251.X.Y/30`, the
/// host side `.1` of the pair, the namespace side `.2`), the examples'
/// manifests, and a control plane on the host side with mTLS.
struct Rig {
    _dir: tempfile::TempDir,
    manifests: std::path::PathBuf,
    database: String,
    pki: Pki,
    ns: Netns,
    host_if: String,
    control_plane: SocketAddr,
    cp: ControlPlane,
}

impl Rig {
    async fn new(pair: u8) -> Rig {
        require_root_and_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir");
        copy_examples(&manifests);
        let ns = Netns::create("fs").expect("netns");
        // Unique per test process and test: kernel names are short.
        let pid = std::process::id();
        let host_if = format!("spfs{}x{pair}", pid % 100_000);
        let third = u8::try_from(pid % 250).unwrap_or(0);
        let host = Ipv4Addr::new(10, 251, third, pair * 4 + 1);
        let inside = Ipv4Addr::new(10, 251, third, pair * 4 + 2);
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip runs");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            ns.name(),
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ns.exec(
            &["ip", "addr", "add", &format!("{inside}/30"), "dev", "up0"],
            None,
        )
        .expect("address");
        ns.exec(&["ip", "link", "set", "up0", "up"], None)
            .expect("link up");
        let pki = Pki::new();
        let database = fresh_postgres_database();
        let cp = Self::launch(&manifests, &database, &pki, SocketAddr::from((host, 0))).await;
        let control_plane = cp.running.agent_addr;
        Rig {
            _dir: dir,
            manifests,
            database,
            pki,
            ns,
            host_if,
            control_plane,
            cp,
        }
    }

    async fn launch(
        manifests: &Path,
        database: &str,
        pki: &Pki,
        listen: SocketAddr,
    ) -> ControlPlane {
        ControlPlane::launch(ServeConfig {
            tls: Some(server_tls(pki)),
            ..config(manifests, database, listen)
        })
        .await
        .expect("the control plane starts")
    }

    /// The control plane goes down hard and comes back on the same address.
    async fn restart_control_plane(&mut self) {
        self.cp.kill();
        self.cp = Self::launch(
            &self.manifests,
            &self.database,
            &self.pki,
            self.control_plane,
        )
        .await;
    }

    /// node-a's agent, running inside the namespace, heartbeating often.
    fn agent(&self, failsafe: FailsafeConfig, state_dir: &Path) -> NetnsAgent {
        let mut tls = self.pki.node("node-a", "node-a");
        tls.server_name = Some("localhost".into());
        let agent = Agent::new(AgentOptions {
            target: Target {
                netns: Some(self.ns.name().to_string()),
            },
            state_dir: Some(state_dir.to_path_buf()),
            ipvs: IpvsMode::Simulated,
            drift_interval: Duration::from_secs(3600),
            tls: Some(tls),
            heartbeat: Duration::from_millis(200),
            failsafe: Some(failsafe),
            ..AgentOptions::new("node-a", format!("https://{}", self.control_plane))
        });
        NetnsAgent::start(self.ns.name(), agent)
    }

    /// A Service claiming the control plane's address and port as its
    /// external IP, without endpoints: its new connections are rejected.
    fn cut_off(&self) {
        let manifest = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: cut-off\n  namespace: default\n\
             spec:\n  type: ClusterIP\n  clusterIP: 10.96.250.250\n  externalIPs: [\"{}\"]\n\
             \x20 ports:\n    - port: {}\n      protocol: TCP\n",
            self.control_plane.ip(),
            self.control_plane.port()
        );
        std::fs::write(self.manifests.join("zz-cut-off.yaml"), manifest).expect("write");
    }

    /// The kernel's Setpoint sets and rules, as comparable lines.
    fn kernel(&self) -> BTreeSet<String> {
        let sets = self.ns.exec(&["ipset", "save"], None).expect("ipset save");
        let rules = self
            .ns
            .exec(&["iptables-save"], None)
            .expect("iptables-save");
        sets.lines()
            .chain(rules.lines().filter(|l| l.contains("SP-")))
            .filter(|l| !l.starts_with('#'))
            // Chain lines carry packet counters.
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect()
    }

    /// The kernel rejects new connections to the control plane.
    fn rejects_control_plane(&self) -> bool {
        let entry = format!(
            "{},tcp:{}",
            self.control_plane.ip(),
            self.control_plane.port()
        );
        self.kernel()
            .iter()
            .any(|l| l.contains("NO-ENDPOINTS") && l.contains(&entry))
    }

    fn head(&self) -> u64 {
        *self.cp.running.head.borrow()
    }

    /// Waits for `agent` to apply the first revision, then cuts it off and
    /// waits for it to apply that; returns both revisions and the kernel
    /// before the cut.
    async fn first_then_cut(&self, agent: &NetnsAgent) -> (u64, u64, BTreeSet<String>) {
        wait_for("a first revision", LIMIT, || self.head() > 0).await;
        let good = self.head();
        wait_for("the agent applies the first revision", LIMIT, || {
            agent.progress().revision == good
        })
        .await;
        let before = self.kernel();
        assert!(!self.rejects_control_plane());
        self.cut_off();
        wait_for("the cutting revision", LIMIT, || self.head() > good).await;
        let bad = self.head();
        wait_for("the agent applies it", LIMIT, || {
            agent.progress().revision == bad
        })
        .await;
        assert!(self.rejects_control_plane(), "{:#?}", self.kernel());
        (good, bad, before)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Deleting the namespace takes the pair with it; this is for a
        // namespace that outlives the rig.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn reverts(agent: &NetnsAgent) -> String {
    agent
        .metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("setpoint_agent_failsafe_reverts_total"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_rejects_the_control_plane_is_reverted_by_the_agent() {
    let mut rig = Rig::new(1).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    let agent = rig.agent(
        FailsafeConfig {
            window: Duration::from_secs(300),
            after: Duration::from_secs(1),
        },
        state_dir.path(),
    );
    let (good, _, before) = rig.first_then_cut(&agent).await;
    // The established stream outlives the rule; a restart of the control
    // plane ends it, and every reconnect is rejected now.
    rig.restart_control_plane().await;
    wait_for("the fail-safe's revert", LIMIT, || {
        agent.progress().failsafe_reverts == 1
    })
    .await;
    wait_for("the agent reconnects", LIMIT, || agent.progress().connected).await;
    assert!(!rig.rejects_control_plane(), "{:#?}", rig.kernel());
    assert_eq!(rig.kernel(), before, "the previous state, exactly");
    assert_eq!(agent.progress().revision, good);
    assert_eq!(reverts(&agent), "setpoint_agent_failsafe_reverts_total 1");
    // The control plane offers the cutting state again and hears why it is
    // refused; the kernel stays at the previous state.
    let store = open_store(&rig.database).await;
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let status = store.agent_status("node-a").await.expect("store read");
        if let Some(AgentResult::Nack { operation, error }) = status.map(|s| s.result) {
            assert_eq!(operation, "fail-safe");
            assert!(
                error.contains(&format!("returned to revision {good}")),
                "{error}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fail-safe nack recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.kernel(), before);
    assert_eq!(agent.progress().failsafe_reverts, 1, "one step back only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_simply_away_leaves_the_kernel_as_it_is() {
    let mut rig = Rig::new(2).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    let window = Duration::from_millis(500);
    let after = Duration::from_millis(500);
    let agent = rig.agent(FailsafeConfig { window, after }, state_dir.path());
    // Even the cutting revision stays once the stream outlived the window
    // after it: the control plane going away later is not its doing.
    let (_, bad, _) = rig.first_then_cut(&agent).await;
    let held = rig.kernel();
    tokio::time::sleep(window * 3).await;
    assert!(agent.progress().connected, "stable past the window");
    rig.cp.kill();
    wait_for("the agent notices", LIMIT, || !agent.progress().connected).await;
    // Many times the bound: no revert, the kernel untouched.
    tokio::time::sleep(after * 6).await;
    assert_eq!(agent.progress().failsafe_reverts, 0);
    assert_eq!(agent.progress().revision, bad);
    assert_eq!(rig.kernel(), held, "fail static");
    assert!(rig.rejects_control_plane());
}
