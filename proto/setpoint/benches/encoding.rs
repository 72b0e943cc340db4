//! Snapshot encodings on the wire: `cargo bench -p setpoint-proto --bench encoding`.
//!
//! Builds a synthetic cluster (default 10,000 Services × 5 endpoints over
//! 5,000 nodes, 3 zones; override with SETPOINT_BENCH_SERVICES /
//! _ENDPOINTS / _NODES), takes one node's state and prints its snapshot's
//! bytes in the JSON parts encoding and the deflated one, the time to
//! encode each (what the control plane spends once per part digest) and to
//! decode each into a fresh cache (what one agent spends), and the size of
//! a one-endpoint delta. The synthetic addresses are sequential, which
//! DEFLATE likes; a second figure replaces every IPv4 address in the JSON
//! with a pseudo-random one, for a cluster whose addresses follow no
//! pattern. Figures on a shared machine are noisy: best of a few runs.

use std::time::{Duration, Instant};

use prost::Message;
use setpoint_compute::synthetic::{self, ClusterShape};
use setpoint_compute::{ComputeConfig, Index};
use setpoint_dataplane::{Fragment, NodeDataplane};
use setpoint_proto::parts::{
    FragmentCache, PartsEncoding, encode_part_as, encode_part_diff, snapshot_of_parts_as,
    snapshot_state_cached,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The best of `runs` timings of `f` (the machine is shared), and its
/// last result.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut fastest = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let started = Instant::now();
        out = Some(f());
        fastest = fastest.min(started.elapsed());
    }
    (fastest, out.expect("at least one run"))
}

fn snapshot(state: &NodeDataplane, encoding: PartsEncoding) -> setpoint_proto::v1::Snapshot {
    let parts: Vec<Vec<u8>> = state
        .parts()
        .map(|(n, f)| encode_part_as(n, f, encoding).expect("encodes"))
        .collect();
    snapshot_of_parts_as(1, &state.digest(), &parts, encoding)
}

/// `json` with every dotted-quad replaced by a pseudo-random address (the
/// same one for the same input), so DEFLATE sees no sequence.
fn scrambled(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut i = 0;
    while i < json.len() {
        let starts = json[i].is_ascii_digit() && (i == 0 || !json[i - 1].is_ascii_alphanumeric());
        if starts {
            let end = (i..json.len())
                .find(|&j| !(json[j].is_ascii_digit() || json[j] == b'.'))
                .unwrap_or(json.len());
            let text = &json[i..end];
            let quad = text.split(|b| *b == b'.').count() == 4
                && text
                    .split(|b| *b == b'.')
                    .all(|p| !p.is_empty() && p.len() <= 3);
            if quad {
                let mut h: u64 = 0xcbf29ce484222325;
                for b in text {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
                }
                let [a, b, c, d, ..] = h.to_le_bytes();
                out.extend_from_slice(format!("10.{}.{}.{}", a ^ b, c, d).as_bytes());
                i = end;
                continue;
            }
            out.extend_from_slice(text);
            i = end;
            continue;
        }
        out.push(json[i]);
        i += 1;
    }
    out
}

fn deflated_len(bytes: &[u8]) -> usize {
    use std::io::Write as _;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bytes).expect("deflates");
    z.finish().expect("deflates").len()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let services = env_or("SETPOINT_BENCH_SERVICES", 10_000);
    let shape = ClusterShape {
        nodes: env_or("SETPOINT_BENCH_NODES", 5_000),
        services,
        endpoints: services * env_or("SETPOINT_BENCH_ENDPOINTS", 5),
        zones: 3,
    };
    println!(
        "cluster: {} nodes, {} services, {} endpoints",
        shape.nodes, shape.services, shape.endpoints
    );
    let mut index = Index::new(ComputeConfig::default());
    for object in synthetic::cluster(&shape) {
        index.upsert(object);
    }
    let _ = index.commit();
    let node = synthetic::node_name(0);
    let state = index.node_state(&node).expect("node 0 has a state");
    println!(
        "{node}: {} atoms in {} parts",
        state.atom_count(),
        state.parts().count()
    );

    let mut figures = Vec::new();
    for encoding in [PartsEncoding::Json, PartsEncoding::Deflate] {
        let (encode, s) = best(3, || snapshot(&state, encoding));
        let (decode, decoded) = best(3, || {
            snapshot_state_cached(&s, &FragmentCache::default()).expect("decodes")
        });
        assert_eq!(decoded.digest(), state.digest());
        let message = setpoint_proto::v1::ControlMessage {
            protocol_version: setpoint_proto::PROTOCOL_VERSION,
            body: Some(setpoint_proto::v1::control_message::Body::Snapshot(
                s.clone(),
            )),
            traceparent: String::new(),
        };
        let wire = message.encoded_len();
        println!(
            "snapshot {:<34} {:>9} bytes ({:.2} MiB) on the wire, {:>4} pieces; encode {:>7.1} ms, decode {:>7.1} ms",
            encoding.name(),
            wire,
            mib(wire),
            wire.div_ceil(setpoint_proto::pieces::PIECE_BYTES),
            encode.as_secs_f64() * 1e3,
            decode.as_secs_f64() * 1e3,
        );
        figures.push(wire);
    }
    println!(
        "deflated / JSON: {:.3} ({:.1}× smaller)",
        figures[1] as f64 / figures[0] as f64,
        figures[0] as f64 / figures[1] as f64
    );
    let json: Vec<u8> = snapshot(&state, PartsEncoding::Json).state;
    let random = scrambled(&json);
    println!(
        "with pseudo-random addresses: JSON {} bytes, deflated {} bytes ({:.2} MiB)",
        random.len(),
        deflated_len(&random),
        mib(deflated_len(&random))
    );

    // One endpoint turns unready: the delta every node is sent (JSON).
    index.upsert(synthetic::slice(0, &shape, 1));
    let _ = index.commit();
    let next = index.node_state(&node).expect("node 0 has a state");
    let mut delta = Vec::new();
    for (name, f) in next.parts() {
        let old = state.part(name);
        if old.map(|o| o.digest()) == Some(f.digest()) {
            continue;
        }
        let empty = Fragment::new();
        let diff = setpoint_dataplane::diff::diff_fragments(old.map(|o| &**o).unwrap_or(&empty), f);
        delta.extend(
            encode_part_diff(name, old.map(|o| o.digest()), Some(f.digest()), &diff)
                .expect("encodes"),
        );
    }
    println!(
        "one-endpoint delta (JSON, as sent): {} bytes; deflated it would be {} bytes",
        delta.len(),
        deflated_len(&delta)
    );
}
