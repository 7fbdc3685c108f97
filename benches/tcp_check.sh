#!/usr/bin/env bash
# Benchmark: the TCP target check, efaprobe against prometheus-blackbox-exporter (Debian's
# package), both doing a bare TCP connect to the same local nats-server on 127.0.0.1.
#
#   benches/tcp_check.sh [PROBES]      (default 20000; writes benches/results/tcp-check.md)
#
# CPU: user + system seconds of the prober process only, from /proc/PID/stat, scaled to 10k
# probes. blackbox does one probe per HTTP request to /probe?module=tcp_connect&target=...:
# a Python driver sends those requests (one keep-alive connection per in-flight slot) and its
# own CPU is NOT counted; blackbox's cost of serving each request is, since that is how
# blackbox probes. efaprobe's is `efaprobe check --repeat N` (the same check the agent runs
# each round), measured inside the process over the checks only (start-up excluded).
# Latency: blackbox reports probe_duration_seconds (resolving the IP literal, dial, close);
# efaprobe reports connect_rtt (the handshake) and total (the whole check): p50 of each.
# Traffic: 127.0.0.1 only. Every process started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
probes=${1:-20000}
warmup=${WARMUP:-500}
parallel=${PARALLEL:-8}

command -v nats-server >/dev/null && command -v prometheus-blackbox-exporter >/dev/null \
  || scripts/setup.sh
cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
out=benches/results/tcp-check.md
tmp=$(mktemp -d)
pids=()

cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 100); do bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
hz=$(getconf CLK_TCK)

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$tmp/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"

bb_port=$(free_port)
cat >"$tmp/blackbox.yml" <<EOF
modules:
  tcp_connect:
    prober: tcp
    timeout: 2s
    tcp:
      preferred_ip_protocol: ip4
EOF
prometheus-blackbox-exporter --config.file="$tmp/blackbox.yml" \
  --web.listen-address="127.0.0.1:$bb_port" --log.level=warn >"$tmp/blackbox.log" 2>&1 &
bb=$!
pids+=("$bb")
wait_port "$bb_port"

# The driver: COUNT requests over PAR keep-alive connections; prints failures and the p50 of
# blackbox's own probe_duration_seconds, in microseconds.
cat >"$tmp/drive.py" <<'EOF'
import http.client, sys, threading
port, target, count, par = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
path = "/probe?module=tcp_connect&target=" + target
durations, failures, lock = [], [0], threading.Lock()
def worker(n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mine, bad = [], 0
    for _ in range(n):
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        ok = False
        for line in body.splitlines():
            if line.startswith("probe_duration_seconds "):
                mine.append(float(line.split()[1]))
            elif line.startswith("probe_success "):
                ok = line.split()[1] == "1"
        bad += not ok
    with lock:
        durations.extend(mine)
        failures[0] += bad
threads = [threading.Thread(target=worker, args=(count // par + (i < count % par),)) for i in range(par)]
for t in threads: t.start()
for t in threads: t.join()
durations.sort()
p50 = durations[max(0, (len(durations) + 1) // 2 - 1)] * 1e6 if durations else 0.0
print(failures[0], "%.1f" % p50)
EOF

blackbox_run() {  # PAR -> "cpu_per_10k p50_us failures"
  python3 "$tmp/drive.py" "$bb_port" "127.0.0.1:$nats_port" "$warmup" "$1" >/dev/null
  local t0 t1 result
  t0=$(ticks "$bb")
  result=$(python3 "$tmp/drive.py" "$bb_port" "127.0.0.1:$nats_port" "$probes" "$1")
  t1=$(ticks "$bb")
  read -r failures p50 <<<"$result"
  awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$probes" -v p="$p50" -v f="$failures" \
    'BEGIN {printf "%.3f %s %d\n", d / hz * 10000 / n, p, f}'
}

efaprobe_run() {  # PAR -> "cpu_per_10k connect_p50_us total_p50_us failures"
  "$bin" check --target "nats=127.0.0.1:$nats_port:tcp" --repeat "$warmup" >/dev/null
  "$bin" check --target "nats=127.0.0.1:$nats_port:tcp" --repeat "$probes" \
    --concurrency "$1" >"$tmp/efaprobe.json" || true
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("%.3f %.1f %.1f %d" % (d["cpu_seconds_per_10k_probes"], d["connect_us"]["p50"],
                             d["total_us"]["p50"], d["failures"]))' "$tmp/efaprobe.json"
}

{
  echo "# TCP target check: efaprobe against blackbox_exporter"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)),"
  echo "$(prometheus-blackbox-exporter --version 2>&1 | sed -n 1p | cut -d' ' -f1-3), nats-server $(nats-server --version | awk '{print $2}'),"
  echo "efaprobe $("$bin" --version | awk '{print $2}'). $probes probes per row, after $warmup to warm up; target: nats-server on"
  echo "127.0.0.1 (TCP connect only). Reproduce: \`benches/tcp_check.sh $probes\`."
  echo
  echo "CPU is the prober process's user + system time (/proc/PID/stat, $((1000 / hz)) ms ticks) per 10k probes."
  echo "blackbox does one probe per HTTP request to its /probe endpoint: its CPU includes serving"
  echo "those requests (that is how it probes); the driver's CPU is excluded. efaprobe's is the"
  echo "in-process \`check --repeat\` loop, start-up excluded. Latency is each tool's own p50: blackbox's"
  echo "probe_duration_seconds, efaprobe's connect (handshake) and total (whole check) times."
  echo
  echo "| in flight | blackbox CPU s / 10k | efaprobe CPU s / 10k | CPU ratio (goal <= 0.5) | blackbox p50 | efaprobe connect p50 | efaprobe total p50 | latency ratio (total) | failures (bb / efaprobe) |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$tmp/report.md"

for par in 1 "$parallel"; do
  read -r bb_cpu bb_p50 bb_fail <<<"$(blackbox_run "$par")"
  read -r ef_cpu ef_connect ef_total ef_fail <<<"$(efaprobe_run "$par")"
  cpu_ratio=$(awk -v a="$ef_cpu" -v b="$bb_cpu" 'BEGIN {printf "%.2f", a / b}')
  verdict=$(awk -v x="$cpu_ratio" 'BEGIN {print (x <= 0.5) ? "met" : "MISSED"}')
  lat_ratio=$(awk -v a="$ef_total" -v b="$bb_p50" 'BEGIN {printf "%.2f", a / b}')
  echo "| $par | $bb_cpu | $ef_cpu | $cpu_ratio ($verdict) | ${bb_p50} us | ${ef_connect} us | ${ef_total} us | $lat_ratio | $bb_fail / $ef_fail |" >>"$tmp/report.md"
done

mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
