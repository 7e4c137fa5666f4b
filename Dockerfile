# syntax=docker/dockerfile:1
# One image with every OmniNode Bridge binary: bridge-operator today, hook-receiver and
# event-consumer beside it (the operator will run its workloads from this same image).
#   docker build -t omninode/bridge:0.1.0 .
# The chart runs /usr/local/bin/bridge-operator as user 65532 with a read-only root
# filesystem.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is built from rdkafka-sys's bundled source: it needs cmake, and zlib for the
# libz feature. Debian package versions are not pinned: the archive drops superseded point
# versions, so a pin breaks the build at the next point release; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate downloads and the target directory between builds; the
# binaries are copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/bridge-operator /out/ \
 && for binary in hook-receiver event-consumer; do \
      if [ -f "target/release/${binary}" ]; then cp "target/release/${binary}" /out/; fi; \
    done

# Same Debian release as the build stage, so the binaries find the glibc they were linked
# against. Only zlib (librdkafka) and the CA bundle (TLS to the API server from outside a
# cluster) are added.
FROM debian:${DEBIAN_RELEASE}-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The numeric user of distroless' "nonroot": runAsNonRoot can verify a number, not a name.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bridge-operator"]
