# rearguard's container image. Built from the repository root:
#   docker build -t rearguard .
# The build stage compiles the release binary exactly as CI does (`cargo build --release
# --locked`) on Debian bookworm; the final image is bookworm-slim with CA certificates
# (for HTTPS to Prometheus and the notification providers), the binary and the default
# configuration, running as an unprivileged user with a numeric UID so that Kubernetes'
# runAsNonRoot can verify it. packaging/README.md says how to run it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Cargo.toml names the benches, so they must be present for the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/rearguard /usr/local/bin/rearguard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The same user as the Debian package's, with a fixed UID and GID outside the host's
# usual ranges. /var/lib/rearguard is the default state_dir: mount a volume there so
# open incidents and the notification outbox survive a restart.
RUN groupadd --system --gid 10001 rearguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/rearguard \
        --no-create-home --shell /usr/sbin/nologin rearguard \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/rearguard
COPY --from=build /usr/local/bin/rearguard /usr/bin/rearguard
COPY config/default.toml /etc/rearguard/rearguard.toml
USER 10001:10001
WORKDIR /var/lib/rearguard
VOLUME ["/var/lib/rearguard"]
# SIGTERM starts rearguard's drain (bounded by daemon.drain_timeout); give `docker stop`
# longer than that (docker stop --time 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rearguard"]
CMD ["run", "--config", "/etc/rearguard/rearguard.toml"]
