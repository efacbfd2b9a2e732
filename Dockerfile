# rearguard's container image. Two ways to get the binary into it, chosen with the build
# argument REARGUARD_BINARY:
#
#   source (the default): compiled here, on the Rust image, exactly as CI compiles it
#   (`cargo build --release --locked`), then stripped. Needs a registry for the Rust
#   image; from the repository root:
#       podman build -t localhost/rearguard:0.1.0 .       (or docker build)
#
#   prebuilt: the release binary already built on the host, taken from the build
#   context at target/release/rearguard (stripped). scripts/image builds this way, on
#   a base image it makes with debootstrap when no registry is reachable, and checks
#   the result; CI runs it after its release build, so the image costs no second build.
#
# Both end in the same final stage: Debian bookworm-slim with CA certificates (HTTPS to
# Prometheus and the notification providers), the binary, the default configuration and
# the recipe scripts, running as an unprivileged user with a numeric UID so that
# Kubernetes' runAsNonRoot can verify it. Base images are named in full so that podman
# resolves them without a search registry. packaging/README.md says how to run it.

ARG REARGUARD_BINARY=source

FROM docker.io/library/rust:1.95-bookworm AS source
WORKDIR /src
# Cargo.toml names the benches, so they must be present for the manifest to load; the
# recipes' documentation is compiled in (include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config/recipes ./config/recipes
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -s -m 0755 target/release/rearguard /usr/local/bin/rearguard

FROM scratch AS prebuilt
# podman keeps this stage as an untagged image; the label lets scripts/image remove it.
LABEL io.rearguard.stage="prebuilt"
COPY target/release/rearguard /usr/local/bin/rearguard

# The stage the final image takes the binary from; only that one is built.
FROM ${REARGUARD_BINARY} AS binary

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
# The same user as the Debian package's, with a fixed UID and GID outside the host's
# usual ranges. /var/lib/rearguard is the default state_dir: mount a volume there so
# open incidents and the notification outbox survive a restart.
RUN groupadd --system --gid 10001 rearguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/rearguard \
        --no-create-home --shell /usr/sbin/nologin rearguard \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/rearguard
COPY config/default.toml /etc/rearguard/rearguard.toml
# The scripts the rollback recipes run (`rearguard recipes`); the tools some of them call
# (psql, redis-cli, sqlite3) are not in the image: add them in an image of your own.
COPY packaging/recipes/ /usr/lib/rearguard/recipes/
COPY --from=binary /usr/local/bin/rearguard /usr/bin/rearguard
# Last, so that a new commit does not rebuild the layers above. The version must be
# Cargo.toml's (tests/it/manifests.rs checks it); scripts/image passes both.
ARG REARGUARD_VERSION=0.1.0
ARG REARGUARD_REVISION=unknown
LABEL org.opencontainers.image.title="rearguard" \
      org.opencontainers.image.description="An autonomous rollback watchdog: detects a bad deploy, rolls it back, verifies the rollback, and escalates to people" \
      org.opencontainers.image.version="${REARGUARD_VERSION}" \
      org.opencontainers.image.revision="${REARGUARD_REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
USER 10001:10001
WORKDIR /var/lib/rearguard
VOLUME ["/var/lib/rearguard"]
# The listener ([daemon] listen): /metrics, /healthz, /readyz, the control API and
# Alertmanager's webhook. The default configuration listens on 127.0.0.1 only: set
# REARGUARD_DAEMON__LISTEN=0.0.0.0:9787 to reach it from outside the container.
EXPOSE 9787
# SIGTERM starts rearguard's drain (bounded by daemon.drain_timeout); give `docker stop`
# longer than that (docker stop --time 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rearguard"]
CMD ["run", "--config", "/etc/rearguard/rearguard.toml"]
