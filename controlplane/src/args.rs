//! Command-line settings shared by every binary that computes node
//! states (`setpoint-controlplane serve` and `render`, `setpoint-demo`).

use clap::Args;
use ipnet::IpNet;
use setpoint_compute::ComputeConfig;
use setpoint_compute::layout::VerdictLog;
use setpoint_dataplane::Scheduler;

/// Settings of the computation shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// IPVS scheduler for Services without the setpoint.io/ipvs-scheduler annotation.
    #[arg(long, default_value = "rr", env = "SETPOINT_IPVS_SCHEDULER")]
    pub ipvs_scheduler: Scheduler,
    /// Serve NodePorts only on node addresses inside these CIDRs (repeatable; default: all).
    #[arg(
        long = "nodeport-addresses",
        value_delimiter = ',',
        env = "SETPOINT_NODEPORT_ADDRESSES"
    )]
    pub nodeport_addresses: Vec<IpNet>,
    /// Pod CIDRs of the cluster (repeatable; default: the Nodes' podCIDRs).
    #[arg(
        long = "cluster-cidr",
        value_delimiter = ',',
        env = "SETPOINT_CLUSTER_CIDR"
    )]
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs.
    #[arg(long, env = "SETPOINT_MASQUERADE_ALL")]
    pub masquerade_all: bool,
    /// fwmark bit used to request masquerading (kube-proxy uses 14).
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(0..=31), env = "SETPOINT_MASQUERADE_BIT")]
    pub masquerade_bit: u8,
    /// Apply NetworkPolicy also to traffic from a node to its own pods
    /// (Kubernetes allows it always, for kubelet probes).
    #[arg(long, env = "SETPOINT_POLICE_NODE_TRAFFIC")]
    pub police_node_traffic: bool,
    /// The CIDRs ClusterIPs are allocated from (repeatable), beside the
    /// cluster's ServiceCIDR objects; no external or load-balancer IP is
    /// served inside them, and traffic to an address inside them that no
    /// Service holds is rejected. Default: only the ServiceCIDR objects'
    /// (with none, an address equal to any ClusterIP is refused all the
    /// same and nothing is rejected).
    #[arg(
        long = "service-cidr",
        value_delimiter = ',',
        value_parser = parse_service_cidr,
        env = "SETPOINT_SERVICE_CIDR"
    )]
    pub service_cidrs: Vec<IpNet>,
    /// Serve a Service's externalIPs only inside these CIDRs (repeatable;
    /// default: any address no other rule refuses).
    #[arg(
        long = "external-ip-cidrs",
        value_delimiter = ',',
        env = "SETPOINT_EXTERNAL_IP_CIDRS"
    )]
    pub external_ip_cidrs: Vec<IpNet>,
    /// Serve a node's own address when a Service lists it as an external or
    /// load-balancer IP (never bound on any node's service interface).
    #[arg(long, env = "SETPOINT_ALLOW_NODE_EXTERNAL_IPS")]
    pub allow_node_external_ips: bool,
    /// A Service with more frontends (ports × addresses, plus NodePorts)
    /// is left out whole.
    #[arg(long, default_value_t = setpoint_compute::layout::DEFAULT_MAX_SERVICE_FRONTENDS, env = "SETPOINT_MAX_SERVICE_FRONTENDS")]
    pub max_service_frontends: usize,
    /// A Service with more endpoints over all its EndpointSlices is left
    /// out whole.
    #[arg(long, default_value_t = setpoint_compute::layout::DEFAULT_MAX_SERVICE_ENDPOINTS, env = "SETPOINT_MAX_SERVICE_ENDPOINTS")]
    pub max_service_endpoints: usize,
    /// Log policy verdicts through NFLOG, read by the agents: every
    /// ClusterNetworkPolicy Deny and NetworkPolicy drop, and the Accept and
    /// Pass rules of ClusterNetworkPolicies annotated
    /// `setpoint.io/log-accepted: "true"`. Off: no log rule exists.
    #[arg(long, env = "SETPOINT_LOG_POLICY_VERDICTS")]
    pub log_policy_verdicts: bool,
    /// The NFLOG group of the verdict log.
    #[arg(long, default_value_t = setpoint_compute::layout::DEFAULT_VERDICT_LOG_GROUP, env = "SETPOINT_POLICY_LOG_GROUP")]
    pub policy_log_group: u16,
    /// Verdicts logged per second per rule (after the burst); more are
    /// counted by no one, at no cost to the packets.
    #[arg(long, default_value_t = setpoint_compute::layout::DEFAULT_VERDICT_LOG_RATE, value_parser = clap::value_parser!(u32).range(1..=10_000), env = "SETPOINT_POLICY_LOG_RATE")]
    pub policy_log_rate: u32,
    /// Verdicts logged at once per rule before the rate applies.
    #[arg(long, default_value_t = setpoint_compute::layout::DEFAULT_VERDICT_LOG_BURST, value_parser = clap::value_parser!(u32).range(1..=10_000), env = "SETPOINT_POLICY_LOG_BURST")]
    pub policy_log_burst: u32,
}

/// A `--service-cidr`: a CIDR (host bits cut off, as kube-apiserver's
/// `--service-cluster-ip-range`) that takes in no loopback, link-local,
/// multicast or unspecified address, which every node would then reject.
fn parse_service_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .parse()
        .map_err(|e| format!("{text:?} is not a CIDR: {e}"))?;
    setpoint_compute::admit::service_cidr(net).map_err(|e| e.to_string())
}

impl ComputeArgs {
    pub fn config(&self) -> ComputeConfig {
        let ComputeArgs {
            ipvs_scheduler,
            nodeport_addresses,
            cluster_cidrs,
            masquerade_all,
            masquerade_bit,
            police_node_traffic,
            service_cidrs,
            external_ip_cidrs,
            allow_node_external_ips,
            max_service_frontends,
            max_service_endpoints,
            log_policy_verdicts,
            policy_log_group,
            policy_log_rate,
            policy_log_burst,
        } = self.clone();
        ComputeConfig {
            default_scheduler: ipvs_scheduler,
            nodeport_addresses,
            cluster_cidrs,
            masquerade_all,
            masquerade_bit,
            police_node_traffic,
            service_cidrs,
            external_ip_cidrs,
            allow_node_external_ips,
            max_service_frontends,
            max_service_endpoints,
            verdict_log: log_policy_verdicts.then_some(VerdictLog {
                group: policy_log_group,
                per_second: policy_log_rate,
                burst: policy_log_burst,
            }),
            ..ComputeConfig::default()
        }
    }
}
