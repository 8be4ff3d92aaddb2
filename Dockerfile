# syntax=docker/dockerfile:1
# Student Sync: one image with all three binaries (studentsync-api,
# studentsync-worker and the studentsync CLI); docker-compose.yml picks the command.

# ---- build ----------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /app
# sqlx's compile-time checked queries (if any) use the committed .sqlx/ data,
# never a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are
# copied out of the cached target/ because it is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/studentsync target/release/studentsync-api target/release/studentsync-worker /out/

# ---- run ------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin studentsync
COPY --from=builder /out/ /usr/local/bin/
USER studentsync
ENV BIND_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
CMD ["studentsync-api"]
