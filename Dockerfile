# syntax=docker/dockerfile:1
# The omninode/bridge image, for those who build with Docker. The reference build is
# e2e/image.sh: it needs no Docker, assembles the image from the release binaries and the
# Debian packages pinned in e2e/image/packages.txt, reproducibly, and pushes it to a
# registry. This file builds the equivalent image: the same three binaries (bridge-operator,
# hook-receiver, event-consumer) in /usr/local/bin, user 65532:65532, the same PATH,
# working directory, entrypoint and labels. Its base differs: debian:bookworm-slim brings a
# shell and apt, which the reference image leaves out.
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t omninode/bridge:0.1.0 .
# The operator runs its hook-receiver and event-consumer workloads from this same image
# (--workload-image); the chart runs /usr/local/bin/bridge-operator as user 65532 with a
# read-only root filesystem.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is built from rdkafka-sys's bundled source: it needs cmake, and zlib for the
# libz feature (OpenSSL's headers come with the rust image). Debian package versions are
# not pinned here: the archive drops superseded point versions, so a pin breaks the build
# at the next point release; the base tag pins the release. (e2e/image.sh does pin its
# runtime packages, and names the pin to update when one goes.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate downloads and the target directory between builds; the
# binaries are copied out of the cached target directory before the step ends. The same
# cargo command as e2e/image.sh: the three binaries, not crdgen.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p bridge-operator -p hook-receiver -p event-consumer --bins \
 && mkdir -p /out \
 && cp target/release/bridge-operator target/release/hook-receiver target/release/event-consumer /out/

# Same Debian release as the build stage, so the binaries find the glibc they were linked
# against. Added: the libraries librdkafka links (libssl3 for TLS to Kafka, zlib1g) and the
# CA bundle, as in the reference image.
FROM debian:${DEBIAN_RELEASE}-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PATH=/usr/local/bin:/usr/bin:/bin
WORKDIR /
# The numeric user of distroless' "nonroot": runAsNonRoot can verify a number, not a name.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bridge-operator"]
