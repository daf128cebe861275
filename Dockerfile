# gatewayd's image. Two stages: a builder with the toolchain the workspace needs (stable
# Rust with rust-src, LLVM 22 and bpf-linker for the eBPF object), and a small runtime.
#
#   docker build -t gatewayd:0.1.0 .
#   kubectl apply -f config/kubernetes/
#
# The builder mirrors `cargo xtask setup` (see xtask/src/main.rs); LLVM 22 comes from
# apt.llvm.org because Debian 12 ships an older one.

FROM docker.io/library/rust:1.95-bookworm AS builder
ARG BPF_LINKER_VERSION=0.13.0
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    curl -fsSL https://apt.llvm.org/llvm-snapshot.gpg.key | gpg --dearmor -o /usr/share/keyrings/llvm.gpg; \
    echo "deb [signed-by=/usr/share/keyrings/llvm.gpg] http://apt.llvm.org/bookworm/ llvm-toolchain-bookworm-22 main" \
        > /etc/apt/sources.list.d/llvm.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev pkg-config; \
    rm -rf /var/lib/apt/lists/*
# bpf-linker only changes with its version: its own layer, cached across source edits.
RUN PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features llvm-22
WORKDIR /src
COPY rust-toolchain.toml ./
RUN rustup show active-toolchain || rustup toolchain install
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway-userspace --bin gatewayd \
    && install -D target/release/gatewayd /out/gatewayd

# Runtime: glibc and CA certificates (upstream TLS), nothing else. No shell is needed
# by gatewayd; debian-slim keeps one for `kubectl exec` debugging.
FROM docker.io/library/debian:bookworm-slim
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/gatewayd /usr/local/bin/gatewayd
# Readiness/liveness, Prometheus, and the local admin (bound to 127.0.0.1 by default).
EXPOSE 15021 15090
# The DaemonSet runs it as root with every capability dropped except BPF, NET_ADMIN,
# NET_BIND_SERVICE and PERFMON; see config/kubernetes/daemonset.yaml.
ENTRYPOINT ["/usr/local/bin/gatewayd"]
CMD ["run", "--config", "/etc/gatewayd/config"]
