#!/usr/bin/env bash
# Benchmark: the CPU an idle engine costs with 1, 8 and 32 rails on one thread, and 32 rails
# with a thread each for reference (see benches/rails_idle.rs). Loopback only, no root.
#
#   benches/rails_idle.sh          (writes benches/results/rails-idle.md; ~1 minute)
#
# RAILS_IDLE_SECS sets the window per row (default 10 s), RAILS_IDLE_PROVIDER the provider
# (default udp;ofi_rxd).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benches/results/rails-idle.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cargo bench -q -p efaprobe --bench rails_idle >"$tmp"
{
  echo "# Idle engine cost by rail count"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)),"
  echo "release build, commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Reproduce: \`benches/rails_idle.sh\`."
  echo
  cat "$tmp"
} >"$out"
cat "$out"
