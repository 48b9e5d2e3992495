# syntax=docker/dockerfile:1.7
#
# One image holds every binary: `aia` (the operator's CLI), `aia-auth`,
# `aia-session`, `aia-audit` and `aia-gateway`; Compose and Kubernetes choose one with
# `command`. Build: `docker build -t aia:latest .`
#
# The build runs the same command as `make release` (the Makefile is copied in and
# called), so what CI builds and tests is what the image holds.

ARG RUST_VERSION=1.95

# cargo-chef (MIT/Apache-2.0) splits the build: dependencies are compiled in their own
# layer, rebuilt only when a Cargo.toml or Cargo.lock changes.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --workspace --bins --recipe-path recipe.json
COPY . .
RUN make release

# Runtime: distroless (glibc, CA certificates, no shell, no package manager), as the
# `nonroot` user (65532). Health checks use `aia healthcheck`, so no curl is needed.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /src/target/release/aia /usr/local/bin/aia
COPY --from=builder /src/target/release/aia-auth /usr/local/bin/aia-auth
COPY --from=builder /src/target/release/aia-session /usr/local/bin/aia-session
COPY --from=builder /src/target/release/aia-audit /usr/local/bin/aia-audit
COPY --from=builder /src/target/release/aia-gateway /usr/local/bin/aia-gateway
USER 65532:65532
ENV APP_ENV=production LOG_FORMAT=json
EXPOSE 8080 9100
CMD ["aia-gateway"]
