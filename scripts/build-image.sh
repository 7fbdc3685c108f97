#!/usr/bin/env bash
# Builds the container image from the Dockerfile and checks it, without any container registry.
#
#   sudo scripts/build-image.sh [--suite bookworm|trixie] [--tag NAME:TAG] [--rebuild-bases] [--record]
#
# --suite: the Debian release of the image, and so its libfabric: bookworm (the default,
# libfabric 1.17) or trixie (libfabric 2.1, the generation of the AWS EFA installer);
# docs/image-build.md says which to pick. The default tag is localhost/efaprobe:VERSION for
# bookworm and localhost/efaprobe:VERSION-trixie for trixie.
#
# 1. Base images, made once with debootstrap from Debian's packages (the mirror this machine's
#    apt sources name) and `podman import`, and reused after that:
#      localhost/efaprobe-runtime-base:SUITE   Debian SUITE, minbase, trimmed like -slim
#      localhost/efaprobe-build-base:SUITE     the same plus gcc and this machine's Rust
#                                              toolchain (rustc --print sysroot, no docs)
#    They stand in for the Dockerfile's defaults (rust:1-bookworm, debian:bookworm-slim) through
#    its BUILD_IMAGE and RUNTIME_IMAGE arguments.
# 2. `podman build --isolation chroot` (crates come from crates.io through cargo, packages from
#    Debian through apt; the cargo registry of this machine is mounted to save downloads).
# 3. The check: containers cannot run here, so the image's filesystem is exported from a
#    created (never started) container, and `efaprobe --version` and `fi_info -l` run in a
#    chroot of it as uid 65532, the image's user.
# --record writes the result into docs/image-build.md, in the section of its suite.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)
suite=bookworm
tag=""
rebuild_bases=false
record=false
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --rebuild-bases) rebuild_bases=true; shift ;;
    --record) record=true; shift ;;
    *) echo "usage: $0 [--suite bookworm|trixie] [--tag NAME:TAG] [--rebuild-bases] [--record]" >&2; exit 64 ;;
  esac
done
case "$suite" in
  bookworm) tag=${tag:-localhost/efaprobe:$version} ;;
  trixie) tag=${tag:-localhost/efaprobe:$version-trixie} ;;
  *) echo "build-image: --suite $suite: want bookworm or trixie" >&2; exit 64 ;;
esac

[ "$(id -u)" -eq 0 ] || { echo "build-image: needs root (debootstrap, chroot)" >&2; exit 1; }
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

runtime_base=localhost/efaprobe-runtime-base:$suite
build_base=localhost/efaprobe-build-base:$suite
start=$(date +%s)
work=$(mktemp -d /var/tmp/efaprobe-image.XXXXXX)
ctr=""
cleanup() {
  [ -n "$ctr" ] && podman rm -f "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The Debian mirrors this machine's apt sources name (either format), for the image's suite;
# other sources on this machine (third parties, keys the images lack) stay out.
# shellcheck source=scripts/debian-sources.sh
. scripts/debian-sources.sh
mirror=$(debian_mirror) || exit 1
debian_sources "$suite" >"$work/debian.sources"

# A root filesystem from debootstrap, with the suite's sources on this machine's mirrors (so
# `apt-get install` in the Dockerfile gets the security updates too) and the -slim trimming (no docs, man pages or
# locales, now or for packages installed later).
make_rootfs() { # DIR [EXTRA_PACKAGES]
  local dir=$1 include=${2:-}
  timeout 1200 debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$dir" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; return 1; }
  rm -f "$dir/etc/apt/sources.list"
  cp "$work/debian.sources" "$dir/etc/apt/sources.list.d/debian.sources"
  cat >"$dir/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  # As Debian's container images do: no apt caches left in a layer.
  cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$dir"/usr/share/{man,info,lintian}/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
    "$dir"/var/lib/apt/lists/*
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
}

import_rootfs() { # DIR IMAGE [--change ...]
  local dir=$1 image=$2; shift 2
  tar --numeric-owner -C "$dir" -c . | podman import --quiet "$@" - "$image" >/dev/null
}

bases="reused"
if $rebuild_bases || ! podman image exists "$runtime_base"; then
  bases="made"
  echo "== $runtime_base (debootstrap $suite)"
  make_rootfs "$work/runtime"
  import_rootfs "$work/runtime" "$runtime_base" --change 'CMD ["/bin/bash"]'
  rm -rf "$work/runtime"
fi

if $rebuild_bases || ! podman image exists "$build_base"; then
  bases="made"
  sysroot=$(rustc --print sysroot)
  echo "== $build_base (debootstrap $suite, Rust $(rustc --version | awk '{print $2}') from $sysroot)"
  make_rootfs "$work/build" gcc,libc6-dev,ca-certificates
  mkdir -p "$work/build/usr/local/rust"
  # The toolchain without its documentation (most of its size).
  tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$work/build/usr/local/rust" -x
  import_rootfs "$work/build" "$build_base" \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]'
  rm -rf "$work/build"
fi

echo "== podman build $tag"
mounts=()
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
[ -d "$registry" ] && mounts+=(--volume "$registry:/usr/local/cargo/registry")
# The steps on the terminal, everything in the log; pipefail makes a failed build fail here.
if ! timeout 3600 podman build --isolation chroot --pull=never "${mounts[@]}" \
    --build-arg BUILD_IMAGE="$build_base" --build-arg RUNTIME_IMAGE="$runtime_base" \
    --tag "$tag" --file Dockerfile . 2>&1 \
  | tee "$work/build.log" | { grep -E '^(\[[0-9]/[0-9]\] )?STEP|^COMMIT|^Successfully' || true; }; then
  echo "build-image: podman build failed:" >&2
  tail -40 "$work/build.log" >&2
  exit 1
fi
# The build stage's image is left dangling by every build: 2-3 GB each.
podman image prune --force >/dev/null

echo "== checking $tag in a chroot of its exported filesystem"
user=$(podman image inspect --format '{{.Config.User}}' "$tag")
[ "$user" = "65532:65532" ] || { echo "build-image: image user is '$user', want 65532:65532" >&2; exit 1; }
ctr=$(podman create "$tag")
mkdir "$work/root"
podman export "$ctr" | tar -C "$work/root" -x
version=$(chroot --userspec=65532:65532 "$work/root" /usr/local/bin/efaprobe --version)
providers=$(chroot --userspec=65532:65532 "$work/root" /usr/bin/fi_info -l)
echo "efaprobe --version: $version"
echo "fi_info -l:"; echo "$providers" | sed 's/^/  /'
# efa registers only where it finds a device, so here the check is that libfabric loads its
# providers at all (tcp is what the loopback tests use).
grep -qx 'tcp:' <<<"$providers" || { echo "build-image: fi_info -l lists no tcp provider" >&2; exit 1; }

size=$(podman image inspect --format '{{.Size}}' "$tag")
size_mb=$(( size / 1000000 ))
took=$(( $(date +%s) - start ))
echo "== $tag: ${size_mb} MB, user $user, ${took}s"

if $record; then
  doc=docs/image-build.md
  mark="<!-- last result ($suite): written by scripts/build-image.sh --record -->"
  [ -f "$doc" ] && grep -qF "$mark" "$doc" || { echo "build-image: $doc has no result marker for $suite" >&2; exit 1; }
  # The suite's section is replaced: from its marker to the next heading or marker.
  awk -v m="$mark" 'index($0, m) { print; exit } { print }' "$doc" >"$work/doc"
  awk -v m="$mark" 'skip && (/^## / || /^<!-- last result/) { skip = 0; print ""; }
                    !skip && seen { print } index($0, m) { seen = 1; skip = 1 }' "$doc" >"$work/doc.rest"
  {
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- image: \`$tag\`, $size_mb MB (\`podman image inspect --format '{{.Size}}'\`: $size bytes), user \`$user\`"
    echo "- took: ${took}s (base images $bases)"
    echo "- \`efaprobe --version\`: \`$version\`"
    echo "- \`fi_info -l\`:"
    echo
    echo '  ```'
    echo "$providers" | sed 's/^/  /'
    echo '  ```'
    cat "$work/doc.rest"
  } >>"$work/doc" && mv "$work/doc" "$doc"
  echo "== recorded in $doc"
fi
