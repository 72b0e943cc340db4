# syntax=docker/dockerfile:1
#
# The Setpoint node agent (`setpoint-agent`). It applies ipsets, IPVS and
# iptables on the host, so it runs with hostNetwork and NET_ADMIN (see
# deploy/kubernetes/agent-daemonset.yaml) and calls the distribution's
# tools: ipset, iptables(-save/-restore), conntrack, ip, modprobe.
#
# Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t setpoint-agent:dev .

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p setpoint-agent \
 && install -D -m 0755 target/release/setpoint-agent /out/setpoint-agent

FROM ${RUNTIME_IMAGE}
# iptables on bookworm defaults to the nf_tables backend, like current
# kubelets and kube-proxy; hosts still on legacy iptables should switch
# with `update-alternatives --set iptables /usr/sbin/iptables-legacy` in a
# derived image, since both backends must agree on one host.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates ipset iptables conntrack iproute2 kmod \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/setpoint-agent /usr/local/bin/setpoint-agent
# Runs as root inside the pod: netlink and iptables need it together with
# CAP_NET_ADMIN; the DaemonSet drops every other capability.
ENTRYPOINT ["/usr/local/bin/setpoint-agent"]
