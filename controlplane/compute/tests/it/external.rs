//! External IPs, load balancer ingress IPs and loadBalancerSourceRanges.

use crate::objs;
use crate::support::*;

fn slice() -> SliceB {
    mk_slice("default", "gw", "IPv4")
        .port("http", "TCP", 8080)
        .eps(&[("10.244.1.5", "node-a")])
}

#[test]
fn external_ip_gets_a_virtual_server_a_set_entry_and_an_address() {
    let objects = cluster(objs![
        mk_service("default", "gw")
            .cluster_ip("10.96.1.50")
            .port("http", "TCP", 80)
            .external_ips(&["192.168.10.100"]),
        slice(),
    ]);
    check(
        objects,
        "node-b",
        "",
        &[
            "vs tcp 10.96.1.50:80 rr -> 10.244.1.5:8080",
            "vs tcp 192.168.10.100:80 rr -> 10.244.1.5:8080",
            "set SP-CLUSTER-IP 10.96.1.50,tcp:80",
            "set SP-EXTERNAL-IP 192.168.10.100,tcp:80",
            "set SP-IPVS-IPS 10.96.1.50",
            "set SP-IPVS-IPS 192.168.10.100",
            "addr 10.96.1.50",
            "addr 192.168.10.100",
        ],
    );
}

#[test]
fn load_balancer_ingress_ip_in_vip_mode_only() {
    let objects = cluster(objs![
        mk_service("default", "gw")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .node_port(30880)
            .lb_ingress("203.0.113.10")
            .lb_ingress_mode("203.0.113.11", "VIP")
            .lb_ingress_mode("203.0.113.12", "Proxy"),
        slice(),
    ]);
    check(
        objects,
        "node-b",
        "vs tcp 203|set SP-LOAD|set SP-IPVS|addr",
        &[
            "vs tcp 203.0.113.10:80 rr -> 10.244.1.5:8080",
            "vs tcp 203.0.113.11:80 rr -> 10.244.1.5:8080",
            "set SP-LOAD-BALANCER 203.0.113.10,tcp:80",
            "set SP-LOAD-BALANCER 203.0.113.11,tcp:80",
            "set SP-IPVS-IPS 10.96.1.10",
            "set SP-IPVS-IPS 203.0.113.10",
            "set SP-IPVS-IPS 203.0.113.11",
            "addr 10.96.1.10",
            "addr 203.0.113.10",
            "addr 203.0.113.11",
        ],
    );
}

fn grafana(ranges: &[&str]) -> Vec<ClusterObject> {
    let mut objects = cluster(objs![
        mk_service("default", "gw")
            .type_("LoadBalancer")
            .cluster_ip("10.96.20.20")
            .port("http", "TCP", 80)
            .node_port(30300)
            .lb_ingress("192.168.10.200")
            .source_ranges(ranges),
        slice(),
    ]);
    objects.push(mk_node("node-out", "", &["172.16.0.5"]).into());
    objects
}

#[test]
fn source_ranges_fill_the_firewall_sets() {
    let want = [
        "set SP-LOAD-BALANCER-FW 192.168.10.200,tcp:80",
        "set SP-LOAD-BALANCER-SOURCE-CIDR 192.168.10.200,tcp:80,10.0.0.0/8",
        "set SP-LOAD-BALANCER-SOURCE-CIDR 192.168.10.200,tcp:80,192.168.0.0/16",
    ];
    // A node inside a range may reach the load balancer from its own
    // address; kube-proxy writes the LB IP as the source (hairpin SNAT).
    let mut inside = want.to_vec();
    inside.push("set SP-LOAD-BALANCER-SOURCE-IP 192.168.10.200,tcp:80,192.168.10.200");
    let filter = "set SP-LOAD-BALANCER-";
    check(
        grafana(&["192.168.0.0/16", "10.0.0.0/8"]),
        "node-a",
        filter,
        &inside,
    );
    check(
        grafana(&["192.168.0.0/16", "10.0.0.0/8"]),
        "node-out",
        filter,
        &want,
    );
}

#[test]
fn source_ranges_are_truncated_to_their_network() {
    check(
        grafana(&["10.1.2.3/8"]),
        "node-out",
        "set SP-LOAD-BALANCER-SOURCE-CIDR",
        &["set SP-LOAD-BALANCER-SOURCE-CIDR 192.168.10.200,tcp:80,10.0.0.0/8"],
    );
}

#[test]
fn zero_source_range_means_no_firewall() {
    check(
        grafana(&["192.168.0.0/16", "0.0.0.0/0"]),
        "node-a",
        "set SP-LOAD-BALANCER",
        &["set SP-LOAD-BALANCER 192.168.10.200,tcp:80"],
    );
}

#[test]
fn service_without_endpoints_lists_every_frontend_in_no_endpoints() {
    let objects = cluster(objs![
        mk_service("default", "gw")
            .type_("LoadBalancer")
            .cluster_ip("10.96.1.10")
            .port("http", "TCP", 80)
            .external_ips(&["192.168.10.100"])
            .lb_ingress("203.0.113.10"),
    ]);
    check(
        objects,
        "node-a",
        "set SP-NO-|vs",
        &[
            "vs tcp 10.96.1.10:80 rr -> none",
            "vs tcp 192.168.10.100:80 rr -> none",
            "vs tcp 203.0.113.10:80 rr -> none",
            "set SP-NO-ENDPOINTS 10.96.1.10,tcp:80",
            "set SP-NO-ENDPOINTS 192.168.10.100,tcp:80",
            "set SP-NO-ENDPOINTS 203.0.113.10,tcp:80",
        ],
    );
}

#[test]
fn dual_stack_source_ranges_apply_per_family() {
    let svc = |ranges: &[&str]| {
        cluster(objs![
            mk_service("default", "gw")
                .type_("LoadBalancer")
                .cluster_ips(&["10.96.20.20", "fd00:96::2020"])
                .port("http", "TCP", 80)
                .lb_ingress("203.0.113.10")
                .lb_ingress("2001:db8::10")
                .source_ranges(ranges),
        ])
    };
    let filter = "set SP-LOAD-BALANCER-|set SP6-LOAD-BALANCER-";
    check(
        svc(&["192.168.0.0/16", "fd00:10::/64"]),
        "node-a",
        filter,
        &[
            "set SP-LOAD-BALANCER-FW 203.0.113.10,tcp:80",
            "set SP-LOAD-BALANCER-SOURCE-CIDR 203.0.113.10,tcp:80,192.168.0.0/16",
            "set SP-LOAD-BALANCER-SOURCE-IP 203.0.113.10,tcp:80,203.0.113.10",
            "set SP6-LOAD-BALANCER-FW 2001:db8::10,tcp:80",
            "set SP6-LOAD-BALANCER-SOURCE-CIDR 2001:db8::10,tcp:80,fd00:10::/64",
            "set SP6-LOAD-BALANCER-SOURCE-IP 2001:db8::10,tcp:80,2001:db8::10",
        ],
    );
}

#[test]
fn zero_source_range_of_one_family_keeps_the_other_family_firewalled() {
    let objects = cluster(objs![
        mk_service("default", "gw")
            .type_("LoadBalancer")
            .cluster_ips(&["10.96.20.20", "fd00:96::2020"])
            .port("http", "TCP", 80)
            .lb_ingress("203.0.113.10")
            .lb_ingress("2001:db8::10")
            .source_ranges(&["192.168.0.0/16", "::/0"]),
    ]);
    check(
        objects,
        "node-c",
        "set SP-LOAD-BALANCER-|set SP6-LOAD-BALANCER-",
        &[
            "set SP-LOAD-BALANCER-FW 203.0.113.10,tcp:80",
            "set SP-LOAD-BALANCER-SOURCE-CIDR 203.0.113.10,tcp:80,192.168.0.0/16",
            "set SP-LOAD-BALANCER-SOURCE-IP 203.0.113.10,tcp:80,203.0.113.10",
        ],
    );
}
