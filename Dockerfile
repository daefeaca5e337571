# syntax=docker/dockerfile:1
# One image holding all the binaries; the command picks the role, e.g. in docker-compose.yml
# or `docker run --rm IMAGE ws-server` (publisher, ws-server, orders-api, cli-client).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep downloaded crates and compiled dependencies between builds. A cache mount is
# not part of the image, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
    && install -D -m 0755 -t /out \
        target/release/publisher target/release/ws-server target/release/orders-api target/release/cli-client

FROM debian:bookworm-slim
# ca-certificates: TLS to managed PostgreSQL/Redis; curl: the healthchecks in docker-compose.yml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
COPY --from=builder /out/ /usr/local/bin/
USER app:app
# ws-server's PORT, the publisher's HEALTH_PORT and the API's API_PORT defaults.
EXPOSE 8080 9100 3000
