# syntax=docker/dockerfile:1
#
# The Setpoint control plane (`setpoint-controlplane`) and the operators'
# CLI (`setpointctl`, handy for `kubectl exec … -- setpointctl status`).
#
# Build from the repository root (the build context is the whole workspace):
#   docker build -f deploy/docker/controlplane.Dockerfile -t setpoint-controlplane:dev .
# controlplane.Dockerfile.dockerignore (next to this file) keeps target/ and
# local databases out of the context.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The protocol is compiled with protox (pure Rust): no protoc needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p setpoint-controlplane -p setpoint-ctl \
 && install -D -m 0755 target/release/setpoint-controlplane /out/setpoint-controlplane \
 && install -D -m 0755 target/release/setpointctl /out/setpointctl

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 setpoint \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/setpoint \
        --create-home --shell /usr/sbin/nologin setpoint
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/setpoint
# 7443 agents (gRPC), 7444 admin API (gRPC), 9464 /metrics /healthz /readyz.
EXPOSE 7443 7444 9464
ENTRYPOINT ["/usr/local/bin/setpoint-controlplane"]
CMD ["serve", "--listen", "0.0.0.0:7443", "--admin-listen", "0.0.0.0:7444", "--metrics-listen", "0.0.0.0:9464"]
