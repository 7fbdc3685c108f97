#!/usr/bin/env bash
# Measures what one agent costs, to size the DaemonSet's requests and limits (docs/sizing.md).
#
#   scripts/measure-sizing.sh [AGENTS] [SECONDS]      # default: 10 agents, 120 s
#
# Starts AGENTS agents on loopback (127.0.0.11, .12, ...), each probing all the others over IP
# and over the fabric (`udp;ofi_rxd`, the IP-based provider that stands in for efa here), scrapes
# each agent's /metrics every 15 s as Prometheus would, lets them warm up for 20 s, then reads
# every agent's VmRSS, VmHWM and CPU time from /proc over SECONDS. Prints one line per agent and
# a summary. Sends traffic to loopback only; stops every agent it started, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

agents=${1:-10}
seconds=${2:-120}
warmup=20
bin=target/release/efaprobe
[ -x "$bin" ] || { echo "measure: build first: cargo build --release -p efaprobe" >&2; exit 1; }
[ "$agents" -ge 2 ] && [ "$agents" -le 200 ] || { echo "measure: 2..200 agents" >&2; exit 64; }

logdir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$logdir"
}
trap cleanup EXIT

addr() { echo "127.0.0.$((10 + $1))"; }
peers=$(for i in $(seq 1 "$agents"); do printf '%s:9476,' "$(addr "$i")"; done)
peers=${peers%,}

for i in $(seq 1 "$agents"); do
  ip=$(addr "$i")
  "$bin" agent --node-name "node-$i" --listen "$ip:9476" --pod-ip "$ip" \
    --peers "$peers" --fabric-provider 'udp;ofi_rxd' --fabric-bind "$ip" \
    --imds-endpoint none >"$logdir/agent-$i.log" 2>&1 &
  pids+=($!)
done

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
scrape_all() {
  for i in $(seq 1 "$agents"); do
    curl -s -o /dev/null --max-time 2 -H 'Accept: application/openmetrics-text' \
      "http://$(addr "$i"):9476/metrics" || true
  done
}

sleep "$warmup"
for i in $(seq 1 "$agents"); do
  kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { echo "measure: agent $i died:" >&2; cat "$logdir/agent-$i.log" >&2; exit 1; }
done
ready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$(addr 1):9476/readyz" || true)
declare -a t0
for i in $(seq 1 "$agents"); do t0[i]=$(cpu_ticks "${pids[$((i - 1))]}"); done
start=$(date +%s.%N)
end=$(( $(date +%s) + seconds ))
while [ "$(date +%s)" -lt "$end" ]; do
  scrape_all
  sleep 15
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc -l)

echo "agents=$agents peers_each=$((agents - 1)) window=${elapsed%.*}s warmup=${warmup}s readyz(agent 1)=$ready"
printf '%-8s %10s %10s %12s\n' agent rss_mib hwm_mib cpu_millicores
max_rss=0 max_hwm=0 max_cpu=0 sum_cpu=0
for i in $(seq 1 "$agents"); do
  pid=${pids[$((i - 1))]}
  rss=$(status_kb "$pid" VmRSS) hwm=$(status_kb "$pid" VmHWM)
  ticks=$(( $(cpu_ticks "$pid") - t0[i] ))
  mc=$(echo "$ticks * 1000 / $clk / $elapsed" | bc -l)
  printf '%-8s %10.1f %10.1f %12.1f\n' "node-$i" "$(echo "$rss/1024" | bc -l)" "$(echo "$hwm/1024" | bc -l)" "$mc"
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  [ "$hwm" -gt "$max_hwm" ] && max_hwm=$hwm
  max_cpu=$(echo "if ($mc > $max_cpu) $mc else $max_cpu" | bc -l)
  sum_cpu=$(echo "$sum_cpu + $mc" | bc -l)
done
printf 'max: rss %.1f MiB, peak rss (VmHWM) %.1f MiB, cpu %.1f millicores; mean cpu %.1f millicores\n' \
  "$(echo "$max_rss/1024" | bc -l)" "$(echo "$max_hwm/1024" | bc -l)" "$max_cpu" "$(echo "$sum_cpu/$agents" | bc -l)"
