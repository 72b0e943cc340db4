//! Synthetic clusters for benchmarks and scale tests: deterministic, sized
//! by [`ClusterShape`], with the mix of Service kinds a real cluster has.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::object::ClusterObject;

#[derive(Clone, Copy, Debug)]
pub struct ClusterShape {
    pub nodes: usize,
    pub services: usize,
    pub endpoints: usize,
    pub zones: usize,
}

impl ClusterShape {
    /// The scale the design targets.
    pub const TARGET: ClusterShape = ClusterShape {
        nodes: 5_000,
        services: 10_000,
        endpoints: 100_000,
        zones: 3,
    };
}

/// What kind of Service index `i` is: most are plain ClusterIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    InternalLocal,
    Topology,
}

pub fn kind_of(i: usize) -> Kind {
    match i % 100 {
        0..=4 => Kind::NodePort,
        5..=6 => Kind::LoadBalancer,
        7 => Kind::InternalLocal,
        8..=9 => Kind::Topology,
        _ => Kind::ClusterIp,
    }
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn zone_name(i: usize, shape: &ClusterShape) -> String {
    format!("zone-{}", i % shape.zones.max(1))
}

pub fn node(i: usize, shape: &ClusterShape) -> ClusterObject {
    let mut labels = BTreeMap::new();
    labels.insert(
        "topology.kubernetes.io/zone".to_string(),
        zone_name(i, shape),
    );
    ClusterObject::Node(core::Node {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(None, &node_name(i))
        },
        spec: Some(core::NodeSpec {
            pod_cidrs: Some(vec![format!("10.{}.{}.0/24", i / 256, i % 256)]),
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            addresses: Some(vec![core::NodeAddress {
                type_: "InternalIP".to_string(),
                address: format!("172.16.{}.{}", i / 250, i % 250 + 1),
            }]),
            ..Default::default()
        }),
    })
}

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub fn service(i: usize) -> ClusterObject {
    let kind = kind_of(i);
    let cluster_ip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
    // Unique while there are fewer than 2,768 NodePort Services (the
    // default range): 7 of every 100 Services have one.
    let node_port = matches!(kind, Kind::NodePort | Kind::LoadBalancer)
        .then(|| 30000 + ((i / 100 * 7 + i % 100) % 2768) as i32);
    let spec = core::ServiceSpec {
        type_: Some(
            match kind {
                Kind::NodePort => "NodePort",
                Kind::LoadBalancer => "LoadBalancer",
                _ => "ClusterIP",
            }
            .to_string(),
        ),
        cluster_ip: Some(cluster_ip.clone()),
        cluster_ips: Some(vec![cluster_ip]),
        ports: Some(vec![core::ServicePort {
            name: Some("http".to_string()),
            port: 80,
            protocol: Some("TCP".to_string()),
            node_port,
            ..Default::default()
        }]),
        internal_traffic_policy: (kind == Kind::InternalLocal).then(|| "Local".to_string()),
        traffic_distribution: (kind == Kind::Topology).then(|| "PreferClose".to_string()),
        ..Default::default()
    };
    let status = (kind == Kind::LoadBalancer).then(|| core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus {
            ingress: Some(vec![core::LoadBalancerIngress {
                ip: Some(format!("198.18.{}.{}", (i / 256) % 256, i % 256)),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    ClusterObject::Service(core::Service {
        metadata: meta(Some("bench"), &service_name(i)),
        spec: Some(spec),
        status,
    })
}

/// The slice of Service `i`, with `per_service` endpoints spread over the
/// nodes; `generation` flips the readiness of one endpoint so that each
/// generation is a one-endpoint change.
pub fn slice(i: usize, shape: &ClusterShape, generation: usize) -> ClusterObject {
    let per_service = (shape.endpoints / shape.services.max(1)).max(1);
    let mut endpoints = Vec::with_capacity(per_service);
    for k in 0..per_service {
        let global = i * per_service + k;
        let node = (global * 7919) % shape.nodes.max(1);
        // Each node hosts about endpoints/nodes pods; derive a host number
        // from the endpoint's global position so addresses are unique.
        let host = global / shape.nodes.max(1) + 2;
        let address = format!("10.{}.{}.{}", node / 256, node % 256, host % 254 + 1);
        let zone = zone_name(node, shape);
        let hints = (kind_of(i) == Kind::Topology).then(|| discovery::EndpointHints {
            for_zones: Some(vec![discovery::ForZone { name: zone.clone() }]),
            ..Default::default()
        });
        endpoints.push(discovery::Endpoint {
            addresses: vec![address],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(!(generation % 2 == 1 && k == generation % per_service)),
                ..Default::default()
            }),
            node_name: Some(node_name(node)),
            zone: Some(zone),
            hints,
            ..Default::default()
        });
    }
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/service-name".to_string(), service_name(i));
    ClusterObject::EndpointSlice(discovery::EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(Some("bench"), &format!("{}-abcde", service_name(i)))
        },
        address_type: "IPv4".to_string(),
        endpoints,
        ports: Some(vec![discovery::EndpointPort {
            name: Some("http".to_string()),
            port: Some(8080),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
    })
}

/// Every object of the cluster.
pub fn cluster(shape: &ClusterShape) -> Vec<ClusterObject> {
    let mut out = Vec::with_capacity(shape.nodes + 2 * shape.services);
    out.extend((0..shape.nodes).map(|i| node(i, shape)));
    for i in 0..shape.services {
        out.push(service(i));
        out.push(slice(i, shape, 0));
    }
    out
}

/// Size of a synthetic NetworkPolicy workload.
#[derive(Clone, Copy, Debug)]
pub struct PolicyShape {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
}

impl PolicyShape {
    /// The scale the NetworkPolicy issue targets.
    pub const TARGET: PolicyShape = PolicyShape {
        nodes: 500,
        namespaces: 1_000,
        pods: 10_000,
        policies: 3_000,
    };
}

pub fn policy_namespace(i: usize) -> String {
    format!("ns-{i:04}")
}

/// Pod `i` with `app` label `app-<k>`; `generation` moves it between apps
/// so that each generation is a label change.
pub fn policy_pod(i: usize, shape: &PolicyShape, generation: usize) -> ClusterObject {
    let ns = policy_namespace(i % shape.namespaces.max(1));
    let mut labels = BTreeMap::new();
    labels.insert(
        "app".to_string(),
        format!("app-{}", (i / shape.namespaces.max(1) + generation) % 5),
    );
    labels.insert(
        "tier".to_string(),
        if i.is_multiple_of(2) { "web" } else { "db" }.to_string(),
    );
    let node = i % shape.nodes.max(1);
    ClusterObject::Pod(core::Pod {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(Some(&ns), &format!("pod-{i:05}"))
        },
        spec: Some(core::PodSpec {
            node_name: Some(node_name(node)),
            containers: vec![core::Container {
                name: "c".to_string(),
                ports: Some(vec![core::ContainerPort {
                    name: Some("http".to_string()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(format!(
                "10.{}.{}.{}",
                128 + i / 65536,
                (i / 256) % 256,
                i % 256
            )),
            ..Default::default()
        }),
    })
}

/// Policy `i` in namespace `i % namespaces`: three kinds in turn — allow
/// from the same app, allow from a labelled namespace on a named port,
/// egress to an ipBlock.
pub fn policy(i: usize, shape: &PolicyShape) -> ClusterObject {
    use k8s_openapi::api::networking::v1 as net;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let ns = policy_namespace(i % shape.namespaces.max(1));
    let app = |k: usize| LabelSelector {
        match_labels: Some([("app".to_string(), format!("app-{}", k % 5))].into()),
        ..Default::default()
    };
    let spec = match i % 3 {
        0 => net::NetworkPolicySpec {
            pod_selector: Some(app(i)),
            ingress: Some(vec![net::NetworkPolicyIngressRule {
                from: Some(vec![net::NetworkPolicyPeer {
                    pod_selector: Some(app(i)),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            ..Default::default()
        },
        1 => net::NetworkPolicySpec {
            pod_selector: Some(app(i + 1)),
            ingress: Some(vec![net::NetworkPolicyIngressRule {
                from: Some(vec![net::NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(
                            [("team".to_string(), format!("team-{}", i % 10))].into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![net::NetworkPolicyPort {
                    port: Some(IntOrString::String("http".to_string())),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        },
        _ => net::NetworkPolicySpec {
            pod_selector: Some(app(i + 2)),
            policy_types: Some(vec!["Egress".to_string()]),
            egress: Some(vec![net::NetworkPolicyEgressRule {
                to: Some(vec![net::NetworkPolicyPeer {
                    ip_block: Some(net::IPBlock {
                        cidr: "10.128.0.0/9".to_string(),
                        except: Some(vec![format!("10.128.{}.0/24", i % 40)]),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            ..Default::default()
        },
    };
    ClusterObject::NetworkPolicy(net::NetworkPolicy {
        metadata: meta(Some(&ns), &format!("policy-{i:04}")),
        spec: Some(spec),
    })
}

/// Nodes, namespaces, pods and policies of a policy workload.
pub fn policy_cluster(shape: &PolicyShape) -> Vec<ClusterObject> {
    let node_shape = ClusterShape {
        nodes: shape.nodes,
        services: 0,
        endpoints: 0,
        zones: 3,
    };
    let mut out: Vec<ClusterObject> = (0..shape.nodes).map(|i| node(i, &node_shape)).collect();
    for n in 0..shape.namespaces {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), format!("team-{}", n % 10));
        out.push(ClusterObject::Namespace(core::Namespace {
            metadata: ObjectMeta {
                labels: Some(labels),
                ..meta(None, &policy_namespace(n))
            },
            ..Default::default()
        }));
    }
    out.extend((0..shape.pods).map(|i| policy_pod(i, shape, 0)));
    out.extend((0..shape.policies).map(|i| policy(i, shape)));
    out
}

/// ClusterNetworkPolicy `i` of a policy workload (`generation` 0 as
/// created; each later generation moves its first rule to another port and
/// peer app, a one-policy change). A mix in turn over `i`: two of every
/// three in the Admin tier (Accept, Deny and Pass), the third Baseline
/// (Accept and Deny); priorities spread over 0–1000; subjects every
/// namespace (one in twenty), a team's namespaces, or an app's pods in a
/// team's namespaces; ingress from namespaces and pods, egress to
/// namespaces, pods, `networks` and `nodes` (by zone); protocols TCP and
/// UDP with ports, ranges and `destinationNamedPort`.
pub fn cluster_policy(i: usize, generation: usize) -> ClusterObject {
    use crate::policy::cluster::api;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let labels = |key: &str, value: String| LabelSelector {
        match_labels: Some([(key.to_string(), value)].into()),
        ..Default::default()
    };
    let team = |k: usize| labels("team", format!("team-{}", k % 10));
    let app = |k: usize| labels("app", format!("app-{}", k % 5));
    let pods = |k: usize| api::NamespacedPod {
        namespace_selector: Some(team(k)),
        pod_selector: Some(app(k)),
    };
    let admin = i % 3 != 2;
    let subject = if i.is_multiple_of(20) {
        api::Subject {
            namespaces: Some(LabelSelector::default()),
            ..Default::default()
        }
    } else if i.is_multiple_of(2) {
        api::Subject {
            namespaces: Some(team(i / 2)),
            ..Default::default()
        }
    } else {
        api::Subject {
            pods: Some(pods(i / 2)),
            ..Default::default()
        }
    };
    let port = |number: i64| api::ProtocolPort {
        destination_port: Some(api::Port {
            number: Some(number),
            range: None,
        }),
    };
    let tcp = |number: i64| api::ProtocolMatch {
        tcp: Some(port(number)),
        ..Default::default()
    };
    let tcp_range = |start: i64, end: i64| api::ProtocolMatch {
        tcp: Some(api::ProtocolPort {
            destination_port: Some(api::Port {
                number: None,
                range: Some(api::PortRange { start, end }),
            }),
        }),
        ..Default::default()
    };
    let udp = |number: i64| api::ProtocolMatch {
        udp: Some(port(number)),
        ..Default::default()
    };
    let named = || api::ProtocolMatch {
        destination_named_port: Some("http".to_string()),
        ..Default::default()
    };
    // Actions the tier allows, in turn.
    let action = |k: usize| {
        match (admin, k % 3) {
            (true, 0) => "Deny",
            (true, 1) => "Pass",
            (false, 1) => "Deny",
            _ => "Accept",
        }
        .to_string()
    };
    let g = generation;
    let ingress = vec![
        api::IngressRule {
            name: "from-team-pods".to_string(),
            action: action(i),
            from: Some(vec![api::IngressPeer {
                pods: Some(pods(i + g)),
                ..Default::default()
            }]),
            protocols: Some(vec![tcp(8000 + (i + g) as i64 % 1000), named()]),
        },
        api::IngressRule {
            name: "from-team-namespaces".to_string(),
            action: action(i + 1),
            from: Some(vec![api::IngressPeer {
                namespaces: Some(team(i + 3)),
                ..Default::default()
            }]),
            protocols: Some(vec![tcp_range(9000, 9100 + (i % 100) as i64)]),
        },
    ];
    let egress = vec![
        api::EgressRule {
            name: "to-pods-and-namespaces".to_string(),
            action: action(i + 2),
            to: Some(vec![
                api::EgressPeer {
                    pods: Some(pods(i + 1 + g)),
                    ..Default::default()
                },
                api::EgressPeer {
                    namespaces: Some(team(i + 5)),
                    ..Default::default()
                },
            ]),
            protocols: Some(vec![tcp(5432 + (g % 100) as i64), udp(53)]),
        },
        api::EgressRule {
            name: "to-networks".to_string(),
            action: action(i),
            to: Some(vec![api::EgressPeer {
                networks: Some(vec![
                    format!("192.168.{}.0/24", i % 256),
                    "169.254.169.254/32".to_string(),
                ]),
                ..Default::default()
            }]),
            protocols: None,
        },
        api::EgressRule {
            name: "to-nodes".to_string(),
            action: action(i + 1),
            to: Some(vec![api::EgressPeer {
                nodes: Some(labels(
                    "topology.kubernetes.io/zone",
                    format!("zone-{}", i % 3),
                )),
                ..Default::default()
            }]),
            protocols: Some(vec![tcp(10250), tcp_range(30000, 32767)]),
        },
    ];
    // Ingress only, egress only or both, in turn.
    let (ingress, egress) = match i % 4 {
        0 => (Some(ingress), None),
        1 => (None, Some(egress)),
        _ => (Some(ingress), Some(egress)),
    };
    ClusterObject::ClusterNetworkPolicy(api::ClusterNetworkPolicy {
        metadata: meta(None, &format!("cnp-{i:04}")),
        spec: Some(api::ClusterNetworkPolicySpec {
            tier: if admin { "Admin" } else { "Baseline" }.to_string(),
            priority: Some(((i * 389) % 1001) as i64),
            subject,
            ingress,
            egress,
        }),
        status: None,
    })
}
