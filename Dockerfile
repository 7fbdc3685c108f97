# efaprobe's container image: the agent and Debian's libfabric, running as uid 65532.
#
#   podman build -t efaprobe:0.1.0 .        # or docker build; scripts/build-image.sh builds
#                                           # and checks it with locally made base images
#
# Running with the EFA installer's libfabric from the host (newer than Debian's, and the one
# AWS supports on EFA): mount the host's /opt/amazon/efa read-only at the same path and set
# LD_LIBRARY_PATH=/opt/amazon/efa/lib64 (lib on Debian/Ubuntu hosts). The binary asks
# fi_getinfo for the API version it was compiled against (Debian's 1.17), which a newer
# libfabric still serves, so this image needs no rebuild for it: the component
# manifests/components/efa-host-libfabric does both (and says what to check).
#
# Building against another libfabric: put its prefix (include/, lib64/ or lib/) in the build
# context and name it, e.g. `cp -a /opt/amazon/efa libfabric-efa` then
# `--build-arg LIBFABRIC_DIR=/src/libfabric-efa` (fabric-sys's build honours LIBFABRIC_DIR).
# Such a binary asks for that newer API version, so run it with that libfabric too (above).

# Base images, overridable: scripts/build-image.sh passes images it made with debootstrap
# where no container registry can be reached. The build image needs a Rust toolchain
# (workspace rust-version: 1.85) with cargo on PATH, on the runtime's Debian release: bookworm
# (libfabric 1.17), or trixie for both (libfabric 2.1; docs/image-build.md says which to pick).
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG LIBFABRIC_DIR=
# libfabric-dev: the headers bindgen reads and the library to link; libclang-dev: bindgen;
# pkg-config finds libfabric when LIBFABRIC_DIR is not given.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libfabric-dev libclang-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# fabric-sys reads LIBFABRIC_DIR whenever it is set, so an empty one must be unset. The release
# profile keeps debug info (for profiling); the image drops it (87 MB -> 15 MB on every node's
# pull) and keeps the symbols, so a backtrace still names functions.
RUN if [ -z "$LIBFABRIC_DIR" ]; then unset LIBFABRIC_DIR; fi \
 && cargo build --release --locked -p efaprobe \
 && install -D -m 0755 target/release/efaprobe /out/efaprobe \
 && objcopy --strip-debug /out/efaprobe

FROM ${RUNTIME_IMAGE}
# libfabric1 with its providers' libraries: ibverbs-providers carries the verbs drivers the efa
# provider opens the device through (only recommended by libibverbs1, so named here).
# libfabric-bin: fi_info, to see the providers from inside a pod (`fi_info -l`, `fi_info -p efa`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libfabric1 ibverbs-providers libfabric-bin \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 efaprobe \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin efaprobe
COPY --from=build /out/efaprobe /usr/local/bin/efaprobe
# libinfinipath (linked by Debian's libfabric for its psm provider) otherwise installs, from its
# constructor, handlers that turn SIGSEGV, SIGBUS, SIGILL and SIGABRT into exit(1): a crash in a
# provider would look like an error exit to the kubelet instead of dying of its signal. The agent
# also resets them at start; this keeps them out of fi_info and the first moments too.
ENV IPATH_NO_BACKTRACE=1
# Non-root by default; the manifests set the same uid (runAsNonRoot needs it numeric).
USER 65532:65532
EXPOSE 9476
ENTRYPOINT ["/usr/local/bin/efaprobe"]
CMD ["agent"]
