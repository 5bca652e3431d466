# syntax=docker/dockerfile:1
# The creditflow image: the `creditflow` binary (serve, worker, migrate, operator commands) and
# the local Stripe emulator, on a slim Debian. docker-compose.yml builds it once and runs it as
# the API, the worker, the migration step and the emulator.

# ---- build ----
FROM rust:1.95-bookworm AS builder

# The Temporal SDK compiles its protobuf definitions at build time (protoc, and the
# well-known types from libprotobuf-dev).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# sqlx checks queries against the cache in .sqlx instead of a live database.
ENV SQLX_OFFLINE=true

# Cache mounts keep the registry and the target folder between builds; the binaries are copied
# out because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin creditflow --bin stripe-emulator \
 && mkdir -p /out \
 && cp target/release/creditflow target/release/stripe-emulator /out/

# ---- runtime ----
FROM debian:bookworm-slim

# ca-certificates for TLS to real Stripe; curl for health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin creditflow

COPY --from=builder /out/creditflow /out/stripe-emulator /usr/local/bin/
# Migrations are embedded in the binary (sqlx::migrate! in store/src/lib.rs): only the layered
# settings are needed at run time.
COPY config/ /app/config/

WORKDIR /app
# No config/prod.toml exists and base.toml holds no secret: in `prod` every secret and address
# comes from CREDITFLOW__… variables, and `serve`/`worker` refuse to start, naming each one,
# until CREDITFLOW__STRIPE__SECRET_KEY, CREDITFLOW__STRIPE__WEBHOOK_SECRET and
# CREDITFLOW__AUTH__OPERATOR_KEYS are set (to values the repository does not publish) and
# CREDITFLOW__STRIPE__API_BASE is https. docker-compose.yml picks `dev` for the local stack.
ENV CREDITFLOW_CONFIG_DIR=/app/config \
    CREDITFLOW_ENV=prod

USER creditflow
EXPOSE 8080 9464 12111
ENTRYPOINT ["creditflow"]
CMD ["serve"]
