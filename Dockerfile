# syntax=docker/dockerfile:1
#
# One image with the three binaries: progress-service, gateway, mangahub.
# docker-compose.yml picks the process per service with `command:`.
#
#   docker build -t mangahub:local .
#
# Stages: chef (toolchain + cargo-chef) → planner (dependency recipe) →
# builder (dependencies cooked in their own layer, then our crates) →
# runtime (distroless, non-root). Protos are compiled by protox at build
# time, so no protoc is needed anywhere.

# Keep equal to the channel in rust-toolchain.toml (a test checks it). The
# toolchain file itself stays out of the build context (.dockerignore): the
# image's toolchain is the pin, and rustup has nothing to download.
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.77

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
# make: the binaries' allocator (jemalloc, built from source by
# tikv-jemalloc-sys) runs configure and make; the slim image has only gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# This layer changes only when Cargo.toml/Cargo.lock do.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
        -p progress-service -p gateway -p mangahub
COPY . .
RUN cargo build --release --locked -p progress-service -p gateway -p mangahub \
 && mkdir -p /out/bin /out/data \
 && cp target/release/progress-service target/release/gateway target/release/mangahub /out/bin/

# glibc + libgcc, no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/bin/ /usr/local/bin/
# Working directory of the embedded SQLite default (sqlite://mangahub.db);
# the compose deployment uses Postgres + Redis instead.
COPY --from=builder --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
ENV LOG_FORMAT=json
# gRPC 8083, gateway TCP 8081 and WebSocket 8082, admin HTTP (metrics,
# healthz, readyz) as configured.
EXPOSE 8081 8082 8083
CMD ["progress-service"]
