# syntax=docker/dockerfile:1
# Builder: Rust plus cmake (Pingora's zlib-ng) and a C compiler (ring, zstd).
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# The dashboard's pages and vendored uPlot, embedded by the build.
COPY web/dashboard/*.html web/dashboard/*.js web/dashboard/*.css ./web/dashboard/
COPY web/dashboard/vendor ./web/dashboard/vendor
RUN cargo build --release --locked --bin modelgate

# Runtime: slim Debian with CA roots for upstream TLS, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/modelgate --create-home modelgate
COPY --from=builder /src/target/release/modelgate /usr/local/bin/modelgate
COPY conf /etc/modelgate
USER modelgate
WORKDIR /var/lib/modelgate
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/modelgate"]
# conf/modelgate.yaml on all interfaces. It starts as a passthrough-auth
# gateway (each client's own Anthropic credential is forwarded); given a
# provider key (ANTHROPIC_API_KEY) it refuses to start until the config has
# gateway `keys` (or `allow_unauthenticated: true`), so the image is never an
# open relay for the key. Mount your own config at /etc/modelgate.
CMD ["serve", "-c", "/etc/modelgate/modelgate.yaml", "--listen", "0.0.0.0:8080"]
