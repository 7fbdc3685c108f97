#!/usr/bin/env bash
# Benchmark: /metrics encode time and size at 1k, 5k and 10k peers (criterion; see
# benches/metrics_encode.rs for the registry's contents).
#
#   benches/metrics_encode.sh          (writes benches/results/metrics-encode.md)
#
# Times are criterion's median over 20 samples with its 95% confidence interval; sizes are the
# bytes of one encoding. No network, no root.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benches/results/metrics-encode.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo bench -q -p efaprobe --bench metrics_encode >"$tmp/bench.log" 2>&1 || { cat "$tmp/bench.log" >&2; exit 1; }
grep '^SIZE ' "$tmp/bench.log" >"$tmp/sizes"

python3 - "$tmp/sizes" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(uname -r)" >"$tmp/report.md" <<'PY'
import datetime, json, sys
sizes, cores, cpu, kernel = sys.argv[1:5]
def median_ms(mode, fmt, peers):
    d = json.load(open(f"target/criterion/metrics_encode/{mode}_{fmt}/{peers}/new/estimates.json"))["median"]
    ci = d["confidence_interval"]
    return d["point_estimate"] / 1e6, ci["lower_bound"] / 1e6, ci["upper_bound"] / 1e6
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
print("# /metrics encode time and size")
print()
print(f"Measured {now} on {cores} cores ({cpu}, {kernel}), release build, criterion median of 20")
print("samples (95% confidence interval). Reproduce: `benches/metrics_encode.sh`.")
print()
print("| mode | peers | samples | OpenMetrics bytes | OpenMetrics encode | text 0.0.4 bytes | text encode | goal (<= 5 ms at 1k, all) |")
print("|---|---|---|---|---|---|---|---|")
for line in open(sizes):
    f = dict(kv.split("=") for kv in line.split()[1:])
    mode, peers = f["mode"], int(f["peers"])
    om, om_lo, om_hi = median_ms(mode, "openmetrics", peers)
    tx, tx_lo, tx_hi = median_ms(mode, "text", peers)
    goal = "-"
    if mode == "all" and peers == 1000:
        goal = "met" if om <= 5 else "MISSED"
    mib = lambda b: f"{int(b):,} ({int(b) / 1048576:.2f} MiB)"
    print(f"| `{mode}` | {peers:,} | {int(f['samples']):,} | {mib(f['openmetrics_bytes'])} | "
          f"{om:.2f} ms ({om_lo:.2f}-{om_hi:.2f}) | {mib(f['text_bytes'])} | "
          f"{tx:.2f} ms ({tx_lo:.2f}-{tx_hi:.2f}) | {goal} |")
PY
mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
