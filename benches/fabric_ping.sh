#!/usr/bin/env bash
# Benchmark: efaprobe fabric-ping against fi_pingpong, and the CPU an idle responder and a
# 1 probe/s prober use. Root; two network namespaces (198.18.240.1/.2), removed at exit.
#
#   sudo benches/fabric_ping.sh [ITERATIONS]      (default 20000; writes benches/results/fabric-ping.md)
#
# RTT: fi_pingpong -e rdm -S 64 prints usec/xfer (one way); its RTT is 2 x that. efaprobe's is
# the p50 of the same number of back-to-back 64-byte probes (each probe is a ping pair; RTT from
# the second). Both run on the same provider between the same namespaces in the same run.
# CPU: utime+stime from /proc/PID/stat over a fixed wall time, as % of one core.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
iters=${1:-20000}
idle_secs=${IDLE_SECS:-30}
probe_count=${PROBE_COUNT:-30}

scripts/setup.sh
cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
a=efp-bench-a b=efp-bench-b
A=198.18.240.1 B=198.18.240.2
out=benches/results/fabric-ping.md
tmp=$(mktemp -d)

cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  ip netns del $a 2>/dev/null || true
  ip netns del $b 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cleanup; tmp=$(mktemp -d)
ip netns add $a; ip netns add $b
ip link add efpbencha netns $a type veth peer name efpbenchb netns $b
ip -n $a addr add $A/24 dev efpbencha; ip -n $a link set efpbencha up; ip -n $a link set lo up
ip -n $b addr add $B/24 dev efpbenchb; ip -n $b link set efpbenchb up; ip -n $b link set lo up

ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }   # utime + stime, in clock ticks
hz=$(getconf CLK_TCK)

wait_port() { for _ in $(seq 100); do ip netns exec $a bash -c "exec 3<>/dev/tcp/$B/$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

pingpong_rtt() {  # provider -> RTT in us (2 x usec/xfer)
  ip netns exec $b timeout 120 fi_pingpong -p "$1" -e rdm -S 64 -I "$iters" -B 47920 >/dev/null 2>&1 &
  local srv=$!
  sleep 1
  local line
  line=$(ip netns exec $a timeout 120 fi_pingpong -p "$1" -e rdm -S 64 -I "$iters" -P 47920 $B | awk '$1 == 64 {print $7}')
  wait $srv || true
  awk -v x="$line" 'BEGIN {printf "%.2f", 2 * x}'
}

efaprobe_rtt() {  # provider -> p50 RTT in us
  ip netns exec $b "$bin" fabric-ping --provider "$1" --bind $B --port 47921 >/dev/null 2>&1 &
  local srv=$!
  wait_port 47921
  ip netns exec $a "$bin" fabric-ping --provider "$1" --bind $A --peer $B:47921 --count "$iters" \
    --interval 0 --size 64 --json > "$tmp/rtt.json"
  kill -TERM $srv; wait $srv || true
  python3 -c "import json,sys; print('%.2f' % json.load(open(sys.argv[1]))['rtt_p50_us'])" "$tmp/rtt.json"
}

{
  echo "# fabric-ping benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(uname -r)), libfabric $(pkg-config --modversion libfabric),"
  echo "between two network namespaces joined by a veth pair. Reproduce: \`sudo benches/fabric_ping.sh $iters\`."
  echo
  echo "## RTT, 64 bytes, $iters iterations each"
  echo
  echo "| provider | fi_pingpong RTT (2 x usec/xfer) | efaprobe fabric-ping RTT p50 | ratio | goal |"
  echo "|---|---|---|---|---|"
} > "$tmp/report.md"

for provider in "udp;ofi_rxd" "tcp"; do
  ref=$(pingpong_rtt "$provider")
  ours=$(efaprobe_rtt "$provider")
  ratio=$(awk -v o="$ours" -v r="$ref" 'BEGIN {printf "%.2f", o / r}')
  verdict=$(awk -v x="$ratio" 'BEGIN {print (x <= 1.15) ? "met (<= 1.15)" : "MISSED (> 1.15)"}')
  echo "| \`$provider\` | ${ref} us | ${ours} us | ${ratio} | $verdict |" >> "$tmp/report.md"
done

# CPU: an idle responder, then a prober at one probe per second (and the responder serving it).
ip netns exec $b "$bin" fabric-ping --provider "udp;ofi_rxd" --bind $B --port 47922 >/dev/null 2>&1 &
srv=$!
wait_port 47922
sleep 1
t0=$(ticks $srv); sleep "$idle_secs"; t1=$(ticks $srv)
idle_pct=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$idle_secs" 'BEGIN {printf "%.2f", 100 * d / hz / s}')

ip netns exec $a "$bin" fabric-ping --provider "udp;ofi_rxd" --bind $A --peer $B:47922 \
  --count "$probe_count" --interval 1s --json > "$tmp/cpu.json" &
prober=$!
sleep 1
p0=$(ticks $prober); s0=$(ticks $srv); start=$(date +%s.%N)
sleep $((probe_count - 3))
p1=$(ticks $prober); s1=$(ticks $srv); end=$(date +%s.%N)
wait $prober
secs=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
prober_pct=$(awk -v d=$((p1 - p0)) -v hz="$hz" -v s="$secs" 'BEGIN {printf "%.2f", 100 * d / hz / s}')
serving_pct=$(awk -v d=$((s1 - s0)) -v hz="$hz" -v s="$secs" 'BEGIN {printf "%.2f", 100 * d / hz / s}')
kill -TERM $srv; wait $srv || true
cpu_goal() { awk -v x="$1" 'BEGIN {print (x <= 1.0) ? "met (<= 1%)" : "MISSED (> 1%)"}'; }

{
  echo
  echo "## CPU (\`udp;ofi_rxd\`), % of one core"
  echo
  echo "| process | CPU | goal |"
  echo "|---|---|---|"
  echo "| responder, idle for ${idle_secs} s | ${idle_pct}% | $(cpu_goal "$idle_pct") |"
  echo "| prober, 1 probe/s over $(printf %.0f "$secs") s | ${prober_pct}% | $(cpu_goal "$prober_pct") |"
  echo "| responder answering it | ${serving_pct}% | $(cpu_goal "$serving_pct") |"
  echo
  echo "Clock ticks are $((1000 / hz)) ms, so a CPU figure is resolved to about $(awk -v hz="$hz" -v s="$idle_secs" 'BEGIN {printf "%.2f", 100 / hz / s}')%."
} >> "$tmp/report.md"

cp "$tmp/report.md" "$out"
cat "$out"
