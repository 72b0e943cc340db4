//! The agent trusts nothing it is sent: crafted states reach a real agent
//! through the real gRPC stream, from a minimal control plane of the
//! test's own, and each is nacked with its reason while the kernel of the
//! agent's network namespace — `ipset save`, `iptables-save`,
//! `ip6tables-save` — stays exactly as the last good state left it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use setpoint_dataplane::{
    Chain, ChainKey, Family, Fragment, Jump, NodeDataplane, Rule, SetEntry, SetSpec, SetType,
    Table, diff,
};
use setpoint_integration::{Netns, require_root_and_tools};
use setpoint_proto::v1::agent_message::Body as AgentBody;
use setpoint_proto::v1::agent_stream_server::{AgentStream, AgentStreamServer};
use setpoint_proto::v1::control_message::Body as ControlBody;
use setpoint_proto::v1::{AgentMessage, ControlMessage, Nack};
use setpoint_proto::{PROTOCOL_VERSION, delta, snapshot};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::e2e_support::spawn_agent_to;

type Outbound = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// A control plane that sends what the test tells it and hands the test
/// what the agent says (hellos and heartbeats left out).
struct Scripted {
    to_agent: Mutex<Option<mpsc::Receiver<ControlMessage>>>,
    from_agent: mpsc::Sender<AgentBody>,
}

#[tonic::async_trait]
impl AgentStream for Scripted {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let Some(script) = self.to_agent.lock().await.take() else {
            return Err(Status::unavailable("one stream per test"));
        };
        let mut inbound = request.into_inner();
        let heard = self.from_agent.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.body {
                    Some(AgentBody::Hello(_) | AgentBody::Heartbeat(_)) | None => {}
                    Some(body) => {
                        if heard.send(body).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let outbound = tokio_stream::StreamExt::map(ReceiverStream::new(script), Ok);
        Ok(Response::new(Box::pin(outbound)))
    }
}

struct Harness {
    send: mpsc::Sender<ControlMessage>,
    heard: mpsc::Receiver<AgentBody>,
    ns: Netns,
    _agent: tokio::task::JoinHandle<()>,
    _server: tokio::task::JoinHandle<()>,
    _state_dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let (send, script) = mpsc::channel(4);
        let (from_agent, heard) = mpsc::channel(4);
        let service = Scripted {
            to_agent: Mutex::new(Some(script)),
            from_agent,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentStreamServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        let ns = Netns::create("agent-refuse").expect("netns");
        let state_dir = tempfile::tempdir().expect("state dir");
        let (agent, _) = spawn_agent_to(addr, "node-a", &ns, state_dir.path());
        Harness {
            send,
            heard,
            ns,
            _agent: agent,
            _server: server,
            _state_dir: state_dir,
        }
    }

    async fn send(&self, body: ControlBody) {
        let message = ControlMessage {
            protocol_version: PROTOCOL_VERSION,
            traceparent: String::new(),
            body: Some(body),
        };
        self.send.send(message).await.expect("the stream is up");
    }

    async fn reply(&mut self) -> AgentBody {
        tokio::time::timeout(Duration::from_secs(60), self.heard.recv())
            .await
            .expect("the agent answers within a minute")
            .expect("the stream is up")
    }

    async fn snapshot(&self, revision: u64, state: &NodeDataplane) {
        let s = snapshot(revision, state).expect("encode snapshot");
        self.send(ControlBody::Snapshot(s)).await;
    }

    async fn delta(&self, from: (u64, &NodeDataplane), to: (u64, &NodeDataplane)) {
        let changes = diff(from.1, to.1);
        let d = delta(from.0, to.0, &changes, &to.1.digest()).expect("encode delta");
        self.send(ControlBody::Delta(d)).await;
    }

    async fn expect_ack(&mut self, revision: u64) {
        match self.reply().await {
            AgentBody::Ack(ack) => assert_eq!(ack.revision, revision),
            other => panic!("revision {revision} must be acked, got {other:?}"),
        }
    }

    async fn expect_nack(&mut self, revision: u64) -> Nack {
        match self.reply().await {
            AgentBody::Nack(nack) => {
                assert_eq!(nack.revision, revision, "{nack:?}");
                nack
            }
            other => panic!("revision {revision} must be nacked, got {other:?}"),
        }
    }

    /// What the namespace's kernel holds, as its tools print it (without
    /// the tools' timestamp comments and packet counters).
    fn kernel(&self) -> String {
        let mut out = String::new();
        for argv in [
            &["ipset", "save"][..],
            &["iptables-save"][..],
            &["ip6tables-save"][..],
        ] {
            let text = self.ns.exec(argv, None).expect("save");
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let line = match line.rfind(" [") {
                    Some(at) if line.starts_with(':') => &line[..at],
                    _ => line,
                };
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

fn spec(kind: SetType, maxelem: u32) -> SetSpec {
    SetSpec {
        kind,
        family: Family::Inet,
        maxelem,
        comment: "the test's".to_string(),
    }
}

fn filter(name: &str) -> ChainKey {
    ChainKey {
        family: Family::Inet,
        table: Table::Filter,
        name: name.to_string(),
    }
}

fn input_jump(from: &str, to: &str) -> Jump {
    Jump {
        family: Family::Inet,
        table: Table::Filter,
        from: from.to_string(),
        position: 0,
        rule: Rule::new(["-j", to]),
    }
}

/// A set, a chain matching it and the jump into the chain from INPUT.
fn good() -> Fragment {
    let mut f = Fragment::new();
    f.put_set("SP-GOOD", spec(SetType::HashIp, 64));
    for ip in ["10.0.0.1", "10.0.0.2"] {
        f.add_entry("SP-GOOD", SetEntry::Ip(ip.parse().expect("ip")));
    }
    f.put_chain(
        filter("SP-FW"),
        Arc::new(Chain {
            rules: vec![Rule::new([
                "-m",
                "set",
                "--match-set",
                "SP-GOOD",
                "src",
                "-j",
                "ACCEPT",
            ])],
        }),
    );
    f.add_jump(input_jump("INPUT", "SP-FW"));
    f
}

/// `good()` with a further chain of one rule of `words`.
fn with_rule(words: &[&str]) -> Fragment {
    let mut f = good();
    f.put_chain(
        filter("SP-EXTRA"),
        Arc::new(Chain {
            rules: vec![Rule::new(words.iter().copied())],
        }),
    );
    f
}

fn state(f: Fragment) -> NodeDataplane {
    NodeDataplane::from_fragment(f)
}

/// Crafted states, each with a word its nack must carry.
fn crafted() -> Vec<(&'static str, NodeDataplane, &'static str)> {
    let mut cases = Vec::new();
    cases.push((
        "a newline in a rule word",
        state(with_rule(&[
            "-m",
            "comment",
            "--comment",
            "x\n-F INPUT",
            "-j",
            "ACCEPT",
        ])),
        "control character",
    ));
    cases.push((
        "a control character in a comment",
        state(with_rule(&[
            "-m",
            "comment",
            "--comment",
            "bell\u{7}",
            "-j",
            "DROP",
        ])),
        "control character",
    ));
    let mut foreign = good();
    foreign.put_chain(filter("KUBE-EVIL"), Arc::new(Chain { rules: Vec::new() }));
    cases.push((
        "a chain named outside SP-",
        state(foreign),
        "must be SP- or SP6-",
    ));
    let mut from_own = good();
    from_own.put_chain(filter("SP-OTHER"), Arc::new(Chain { rules: Vec::new() }));
    from_own.add_jump(input_jump("SP-OTHER", "SP-FW"));
    cases.push((
        "a jump from a chain that is not built in",
        state(from_own),
        "not a built-in chain",
    ));
    let mut huge = good();
    huge.put_set("SP-HUGE", spec(SetType::HashIp, u32::MAX));
    cases.push(("a set over its size bound", state(huge), "maxelem"));
    let mut overfull = good();
    overfull.put_set("SP-GOOD", spec(SetType::HashIp, 1));
    cases.push(("a set past its maxelem", state(overfull), "maxelem is 1"));
    let mut name = good();
    name.put_set("SP-X\nCOMMIT", spec(SetType::HashIp, 64));
    cases.push(("a newline in a set name", state(name), "set name"));
    cases.push((
        "a jump to a chain of someone else's",
        state(with_rule(&["-j", "KUBE-SERVICES"])),
        "not defined",
    ));
    cases
}

/// Every crafted state, as a snapshot and as a delta from a good state,
/// is nacked by the validation step with its reason, and the namespace's
/// kernel is exactly as the good state left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_states_are_nacked_with_the_reason_and_the_kernel_untouched() {
    require_root_and_tools();
    let mut h = Harness::start().await;
    // Holding nothing, the agent checks a snapshot whole.
    let empty = h.kernel();
    let (what, bad, reason) = &crafted()[0];
    h.snapshot(1, bad).await;
    let nack = h.expect_nack(1).await;
    assert_eq!(nack.failed_operation, "validate", "{what}: {nack:?}");
    assert!(nack.error.contains(reason), "{what}: {}", nack.error);
    assert_eq!(h.kernel(), empty, "{what}: the kernel is untouched");

    // Holding a verified state, it checks what a step changes.
    let good = state(good());
    let mut revision = 2;
    h.snapshot(revision, &good).await;
    h.expect_ack(revision).await;
    let before = h.kernel();
    assert!(
        before.contains("SP-GOOD") && before.contains("-A INPUT") && before.contains("SP-FW"),
        "the good state is in the kernel:\n{before}"
    );

    for (what, bad, reason) in crafted() {
        for as_delta in [false, true] {
            let held = revision;
            revision += 1;
            if as_delta {
                h.delta((held, &good), (revision, &bad)).await;
            } else {
                h.snapshot(revision, &bad).await;
            }
            let nack = h.expect_nack(revision).await;
            let how = if as_delta { "delta" } else { "snapshot" };
            assert_eq!(
                nack.failed_operation, "validate",
                "{what} ({how}): {nack:?}"
            );
            assert!(
                nack.error.contains(reason),
                "{what} ({how}): the nack names the reason {reason:?}: {}",
                nack.error
            );
            assert!(
                !nack.error.contains('\n'),
                "{what} ({how}): the nack is one line: {:?}",
                nack.error
            );
            assert_eq!(
                h.kernel(),
                before,
                "{what} ({how}): the kernel is untouched"
            );
            // After a nack the agent holds nothing: the good state again,
            // so the next delta has a base.
            revision += 1;
            h.snapshot(revision, &good).await;
            h.expect_ack(revision).await;
        }
    }
    assert_eq!(h.kernel(), before);
}
