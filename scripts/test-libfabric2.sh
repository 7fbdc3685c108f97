#!/usr/bin/env bash
# The fabric tests against libfabric 2.x: Debian trixie's libfabric 2.1, the generation the AWS
# EFA installer ships, in a trixie root filesystem (scripts/test.sh runs this as a stage).
#
#   sudo scripts/test-libfabric2.sh [--prepare]
#
# 1. The root filesystem: debootstrap of trixie (minbase plus libfabric and a C toolchain for
#    bindgen), from the Debian mirror this machine's apt sources name, cached in
#    $EFAPROBE_TRIXIE_CACHE (/var/cache/efaprobe-trixie) and made again only when it is missing
#    or its package list (below) changed. --prepare stops after this step.
# 2. Run time: the test binaries built here against Debian 12's libfabric 1.17 run in a chroot
#    of it, so they load trixie's libfabric 2.1; that is what manifests/components/
#    efa-host-libfabric does on an EFA node (an old binary, the host's newer library).
# 3. Build time: fabric-sys, fabric and the agent built inside the chroot against the 2.1
#    headers (this machine's Rust toolchain and cargo registry mounted in, offline; the target
#    directory cached next to the root filesystem), and the same tests run.
# The tests, in both steps: fabric/tests/providers.rs and tests/fabric_ping_loopback.rs
# (loopback on tcp, udp;ofi_rxd and shm), and fabric-sys's unit tests.
#
# EFAPROBE_TEST_LOCK, if set, names a file whose flock the test runs (not the builds) hold: on
# a machine shared by several checkouts, the loopback tests' fixed ports would collide.
# Do not set it when the caller already holds that lock (a second flock of it would wait forever).
#
# It needs root (debootstrap, mounts, chroot): outside CI it skips with the reason, in CI
# (CI=true) it fails. Mounts live in a private mount namespace, so they go when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
workspace=$(pwd -P)

prepare_only=false
case "${1:-}" in
  "") ;;
  --prepare) prepare_only=true ;;
  *) echo "usage: $0 [--prepare]" >&2; exit 64 ;;
esac

unavailable() {
  if [ "${CI:-}" = "true" ]; then
    echo "test-libfabric2: FAILED: cannot run in CI: $*" >&2
    exit 1
  fi
  echo "test-libfabric2: skipped: $*"
  exit 0
}
fail() { echo "test-libfabric2: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || unavailable "needs root (debootstrap, bind mounts, chroot)"
for tool in debootstrap unshare chroot flock; do
  command -v "$tool" >/dev/null || unavailable "$tool is missing (scripts/setup.sh installs debootstrap)"
done

suite=trixie
# What the chroot needs: libfabric 2.x with its providers (libfabric1; fi_info from
# libfabric-bin), and what fabric-sys's build runs (bindgen's libclang, pkg-config, gcc for the
# static-function wrappers and for linking). Changing this list makes the root filesystem anew.
packages=(libfabric1 libfabric-bin libfabric-dev libclang-dev pkg-config gcc libc6-dev)
cache=${EFAPROBE_TRIXIE_CACHE:-/var/cache/efaprobe-trixie}
root=$cache/rootfs
stamp_file=$cache/rootfs.packages
stamp="$suite minbase ${packages[*]}"
mkdir -p "$cache"
# One user of the cache at a time (worktrees, concurrent CI runs).
exec 9>"$cache/lock"
flock 9

started=$(date +%s)
if [ ! -x "$root/usr/bin/fi_info" ] || [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  # shellcheck source=scripts/debian-sources.sh
  . scripts/debian-sources.sh
  mirror=$(debian_mirror) || unavailable "no Debian mirror in this machine's apt sources"
  echo "== debootstrap $suite into $root (${packages[*]})"
  rm -rf "$root" "$root.new" "$stamp_file"
  log=$cache/debootstrap.log
  include=$(IFS=,; echo "${packages[*]}")
  timeout 1800 debootstrap --variant=minbase --include="$include" "$suite" "$root.new" "$mirror" \
    >"$log" 2>&1 || { tail -20 "$log" >&2; fail "debootstrap $suite (log: $log)"; }
  debian_sources "$suite" >"$root.new/etc/apt/sources.list.d/debian.sources"
  rm -f "$root.new/etc/apt/sources.list" "$root.new"/var/cache/apt/archives/*.deb
  mv "$root.new" "$root"
  echo "$stamp" >"$stamp_file"
  echo "   made in $(( $(date +%s) - started ))s"
else
  echo "== $suite root filesystem: cached in $root"
fi
libfabric_version=$(chroot "$root" dpkg-query -W -f='${Version}' libfabric1)
echo "   libfabric1 $libfabric_version, $(chroot "$root" fi_info --version | awk '/^libfabric:/ {print "fi_info: libfabric " $2}')"
case "$libfabric_version" in
  2.*) ;;
  *) fail "the $suite root filesystem has libfabric $libfabric_version, not 2.x" ;;
esac
$prepare_only && exit 0

# The Rust toolchain and cargo home of this machine, at the same paths inside.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] || unavailable "no rustup toolchains in $rustup_home"
toolchain=$(rustup show active-toolchain | awk '{print $1}')
trixie_target=$cache/target
mkdir -p "$trixie_target"

# Runs "$@" in the chroot with the workspace, the toolchain, cargo's home and the trixie target
# directory bind-mounted at their own paths; /proc, /sys, /dev (with /dev/shm, which shm
# uses) and a fresh /tmp as a system has them. A private mount namespace ends them all.
in_trixie() {
  unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1; shift
    for d in "$WORKSPACE" "$RUSTUP_HOME" "$CARGO_HOME" "$TRIXIE_TARGET"; do
      mkdir -p "$root$d"
      mount --bind "$d" "$root$d"
    done
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    cd "$WORKSPACE"
    exec chroot "$root" /usr/bin/env -C "$WORKSPACE" "$@"
  ' in_trixie "$root" "$@"
}
export WORKSPACE=$workspace RUSTUP_HOME=$rustup_home CARGO_HOME=$cargo_home TRIXIE_TARGET=$trixie_target
chroot_env=(
  PATH="$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  HOME=/root RUSTUP_HOME="$rustup_home" CARGO_HOME="$cargo_home" RUSTUP_TOOLCHAIN="$toolchain"
  CI="${CI:-}" RUST_BACKTRACE=1 CARGO_TERM_COLOR=never
)

# Runs one test binary in the chroot, after checking that it resolves libfabric there.
run_tests() { # LABEL EXE
  local label=$1 exe=$2 name lib
  name=$(basename "$exe"); name=${name%-*}
  lib=$(in_trixie env "${chroot_env[@]}" ldd "$exe" | awk '$1 ~ /^libfabric\.so/ {print $3}')
  case "$lib" in
    /*) ;;
    "") fail "$exe does not link libfabric" ;;
    *) fail "$exe: libfabric not found in the chroot ($lib)" ;;
  esac
  echo "-- $label: $name (libfabric from $suite's $lib)"
  if [ -n "${EFAPROBE_TEST_LOCK:-}" ]; then
    local t=$(date +%s)
    exec 8>"$EFAPROBE_TEST_LOCK"
    flock 8
    echo "   (waited $(( $(date +%s) - t ))s for $EFAPROBE_TEST_LOCK)"
  fi
  in_trixie env "${chroot_env[@]}" "$exe" --test-threads=2 -q || fail "$label: $(basename "$exe")"
  [ -z "${EFAPROBE_TEST_LOCK:-}" ] || exec 8>&-
}

# The test executables of a `cargo test --no-run --message-format=json` on stdin, by target
# name (unique in the workspace); compile errors go to stderr.
test_executables() { # TARGET...
  python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-message" and msg["message"]["level"] == "error":
        print(msg["message"]["rendered"], file=sys.stderr)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable") or not msg["profile"]["test"]:
        continue
    if msg["target"]["name"] in wanted:
        print(msg["executable"])
' "$@"
}
# fabric-sys's unit tests, fabric's provider tests, the agent's loopback pings (fabric's own
# unit tests call no libfabric).
test_targets=(fabric_sys providers fabric_ping_loopback)
# Only these targets are built there: fabric-sys's unit tests in one cargo run, the two
# integration tests (which build the agent's binary too) in another; not the agent's own unit
# tests, a second compile of the whole agent that this stage does not run.
cargo_runs=("-p fabric-sys --lib" "-p fabric -p efaprobe --test providers --test fabric_ping_loopback")

echo "== run time: the binaries built here (libfabric $(pkg-config --modversion libfabric)) against $suite's $libfabric_version"
# The whole workspace's test build, as `cargo test --workspace` makes it (the same features,
# so nothing is built twice); only the fabric tests run.
t0=$(date +%s)
exes=$(cargo test --workspace --no-run --locked --message-format=json 2>"$cache/build-host.log" \
  | test_executables "${test_targets[@]}") || { tail -30 "$cache/build-host.log" >&2; fail "cargo test --no-run here"; }
[ "$(wc -l <<<"$exes")" -eq ${#test_targets[@]} ] || fail "expected ${#test_targets[@]} test executables, got: $exes"
while read -r exe; do run_tests "built on $(. /etc/os-release && echo "$VERSION_CODENAME")" "$exe"; done <<<"$exes"
echo "   run time stage: $(( $(date +%s) - t0 ))s"

echo "== build time: built in the chroot against $suite's libfabric-dev $(in_trixie pkg-config --modversion libfabric)"
t0=$(date +%s)
log=$cache/build-$suite.log
: >"$log"
# Line tables only: backtraces keep file and line, and the cold build links far less.
build_env=(CARGO_TARGET_DIR="$trixie_target" CARGO_PROFILE_DEV_DEBUG=line-tables-only)
exes=""
for run in "${cargo_runs[@]}"; do
  # shellcheck disable=SC2086 # each run is a list of cargo arguments
  exes+=$(in_trixie env "${chroot_env[@]}" "${build_env[@]}" \
    cargo test --offline --locked --no-run --message-format=json $run 2>>"$log" \
    | test_executables "${test_targets[@]}") || { tail -30 "$log" >&2; fail "cargo test --no-run $run in $suite (log: $log)"; }
  exes+=$'\n'
done
exes=${exes%$'\n'}
[ "$(wc -l <<<"$exes")" -eq ${#test_targets[@]} ] \
  || fail "the $suite build gave $(wc -l <<<"$exes") of ${#test_targets[@]} test executables: $exes"
echo "   built in $(( $(date +%s) - t0 ))s"
while read -r exe; do run_tests "built on $suite" "$exe"; done <<<"$exes"
echo "test-libfabric2: all passed in $(( $(date +%s) - started ))s"
