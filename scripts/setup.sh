#!/usr/bin/env bash
# Installs the system packages efaprobe's build, tests, lab and benchmarks use (Debian).
# Idempotent; runs apt-get update first whenever it has anything to install, and always in CI.
set -euo pipefail

packages=(
  libfabric-dev libfabric-bin   # the fabric library, headers, fi_info and fi_pingpong
  libclang-dev pkg-config       # bindgen
  nftables iproute2 procps curl dnsmasq-base socat # test hosts in netns, security-group rules, DNS
  nats-server prometheus        # real infrastructure services (prometheus ships promtool)
  prometheus-blackbox-exporter  # the reference prober for benchmarks
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || [ "${CI:-}" = "true" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]:-(CI refresh)}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# Services are started by the tests that need them, never by the packages.
for svc in nats-server prometheus prometheus-blackbox-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
