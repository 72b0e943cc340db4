//! What a policy set's members are drawn from. A pod change alters the
//! members of sets on nodes whose chains stay the same: those nodes get
//! their sets' entries recomputed from here, not their chains rebuilt.

use setpoint_dataplane::{Family, Protocol, SetEntry};

use super::{PeerUse, Pod, PodPeer, PolicyView};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// A node's sets drawn from pods: (set name, its source).
pub type NamedSets = Vec<(String, SetSource)>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SetSource {
    /// The addresses of the pods a peer selects.
    PodIps { peer: PodPeer, family: Family },
    /// (IP, protocol, port) of the pods a peer selects (every pod: `None`)
    /// that name `port` for `protocol`.
    NamedPort {
        peer: Option<PodPeer>,
        port: String,
        protocol: Protocol,
        family: Family,
    },
    /// The same for a port name on any protocol, of every pod (a
    /// ClusterNetworkPolicy's `destinationNamedPort`).
    NamedPortAnyProtocol { port: String, family: Family },
}

impl SetSource {
    pub fn family(&self) -> Family {
        match self {
            SetSource::PodIps { family, .. }
            | SetSource::NamedPort { family, .. }
            | SetSource::NamedPortAnyProtocol { family, .. } => *family,
        }
    }

    /// The pods whose changes can alter the entries.
    pub fn peer(&self) -> PeerUse {
        match self {
            SetSource::PodIps { peer, .. }
            | SetSource::NamedPort {
                peer: Some(peer), ..
            } => PeerUse::Pods(peer.clone()),
            SetSource::NamedPort { peer: None, .. } | SetSource::NamedPortAnyProtocol { .. } => {
                PeerUse::AllPods
            }
        }
    }

    /// The entries, as `view` has the pods now.
    pub fn entries(&self, view: &PolicyView) -> Vec<SetEntry> {
        let ips_of = |p: &Pod, family: Family| {
            p.ips
                .iter()
                .copied()
                .filter(move |ip| Family::of(ip) == family)
                .collect::<Vec<_>>()
        };
        match self {
            SetSource::PodIps { peer, family } => view
                .peer_pods(peer)
                .flat_map(|p| ips_of(p, *family))
                .map(SetEntry::Ip)
                .collect(),
            SetSource::NamedPort {
                peer,
                port,
                protocol,
                family,
            } => {
                let pods: Vec<&Pod> = match peer {
                    None => view.pods.values().filter(|p| !p.host_network).collect(),
                    Some(peer) => view.peer_pods(peer).collect(),
                };
                pods.into_iter()
                    .filter_map(|p| p.named_port(port, *protocol).map(|n| (p, n)))
                    .flat_map(|(p, n)| {
                        ips_of(p, *family)
                            .into_iter()
                            .map(move |ip| SetEntry::IpPort {
                                ip,
                                protocol: *protocol,
                                port: n,
                            })
                    })
                    .collect()
            }
            SetSource::NamedPortAnyProtocol { port, family } => {
                let mut out = Vec::new();
                for pod in view.pods.values().filter(|p| !p.host_network) {
                    for protocol in PROTOCOLS {
                        let Some(n) = pod.named_port(port, protocol) else {
                            continue;
                        };
                        out.extend(ips_of(pod, *family).into_iter().map(|ip| SetEntry::IpPort {
                            ip,
                            protocol,
                            port: n,
                        }));
                    }
                }
                out
            }
        }
    }
}
