#!/usr/bin/env bash
# Benchmark: how long a fabric blackhole takes to show as fabric_dropped, at a 1 s interval.
# Root; two network namespaces (efp-bdet-a 198.18.242.1, efp-bdet-b 198.18.242.2, a veth
# pair), removed at exit.
#
#   sudo benches/detection.sh [REPEATS]     (default 10; writes benches/results/detection.md)
#
# Two agents probe each other over `udp;ofi_rxd` with --interval 1s --timeout 500ms (the
# timeout must be below the interval; the lab uses the same) and the default hysteresis. Each
# repeat waits a random 0-1 s (so the fault lands anywhere in a round), then drops all UDP in
# and out of B's namespace with nftables (the fabric; the IP path is TCP and keeps working),
# and polls A's /metrics every 50 ms until efa_peer_state{peer="bdet-b",state="fabric_dropped"}
# is 1. Detection time: from the nft command's return to that poll (Prometheus's scrape
# interval not included). Then the rule goes and the pair must be healthy again before the next.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
repeats=${1:-10}
limit=${DETECT_LIMIT_SECS:-30}

command -v nft >/dev/null && command -v ip >/dev/null && command -v curl >/dev/null \
  && pkg-config --exists libfabric || scripts/setup.sh
cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
a=efp-bdet-a b=efp-bdet-b
A=198.18.242.1 B=198.18.242.2
port=9476
out=benches/results/detection.md
tmp=$(mktemp -d)
pids=()

cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $a 2>/dev/null || true
  ip netns del $b 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns del $a 2>/dev/null || true
ip netns del $b 2>/dev/null || true
ip netns add $a; ip netns add $b
ip link add efpbdeta netns $a type veth peer name efpbdetb netns $b
ip -n $a addr add $A/24 dev efpbdeta; ip -n $a link set efpbdeta up; ip -n $a link set lo up
ip -n $b addr add $B/24 dev efpbdetb; ip -n $b link set efpbdetb up; ip -n $b link set lo up

start_agent() {  # NS NAME IP PEER_IP
  ip netns exec "$1" "$bin" agent --node-name "$2" --listen "$3:$port" --pod-ip "$3" \
    --peers "$4:$port" --fabric-provider "udp;ofi_rxd" --interval 1s --timeout 500ms \
    --imds-endpoint none >"$tmp/$2.log" 2>&1 &
  pids+=($!)
}
start_agent $a bdet-a $A $B
start_agent $b bdet-b $B $A

state_of_b() {  # the state A reports for B (empty while unknown to it)
  ip netns exec $a curl -sf --max-time 1 "http://$A:$port/metrics" 2>/dev/null \
    | awk '/^efa_peer_state[{]/ && /peer="bdet-b"/ && $NF == 1 {
        match($0, /state="[a-z_]+"/); print substr($0, RSTART + 7, RLENGTH - 8) }' || true
}
wait_state() {  # STATE SECONDS: polls every 50 ms; prints the seconds waited, or fails
  local start now
  start=$(date +%s.%N)
  while :; do
    [ "$(state_of_b)" = "$1" ] && { now=$(date +%s.%N); awk -v a="$start" -v b="$now" 'BEGIN {printf "%.2f\n", b - a}'; return 0; }
    now=$(date +%s.%N)
    awk -v a="$start" -v b="$now" -v l="$2" 'BEGIN {exit !(b - a > l)}' && return 1
    sleep 0.05
  done
}
blackhole() {
  ip netns exec $b nft -f - <<'EOF'
table inet efp_bdet {
  chain input { type filter hook input priority 0; policy accept; meta l4proto udp drop; }
  chain output { type filter hook output priority 0; policy accept; meta l4proto udp drop; }
}
EOF
}
heal() { ip netns exec $b nft delete table inet efp_bdet 2>/dev/null || true; }

wait_state healthy 60 >/dev/null || { echo "the pair never became healthy" >&2; cat "$tmp"/*.log >&2; exit 1; }
sleep 3

times=() healed=()
for i in $(seq "$repeats"); do
  sleep "$(awk -v r="$RANDOM" 'BEGIN {printf "%.3f", r / 32768}')"
  blackhole
  if t=$(wait_state fabric_dropped "$limit"); then times+=("$t"); else times+=("timeout>${limit}"); fi
  echo "repeat $i: ${times[-1]} s" >&2
  heal
  h=$(wait_state healthy 60) || { echo "not healthy again after the heal" >&2; exit 1; }
  healed+=("$h")
  sleep 3
done

stats() {  # min median max of the numbers on stdin
  grep -v timeout | sort -n | awk '{v[NR] = $1} END {
    if (NR == 0) {print "- - -"; exit}
    med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.2f %.2f %.2f\n", v[1], med, v[NR] }'
}
read -r min med max <<<"$(printf '%s\n' "${times[@]}" | stats)"
read -r hmin hmed hmax <<<"$(printf '%s\n' "${healed[@]}" | stats)"
missed=$(printf '%s\n' "${times[@]}" | grep -c timeout || true)
verdict=$(awk -v m="$med" -v x="$max" -v n="$missed" 'BEGIN {
  if (m == "-" || n > 0) print "MISSED"; else if (x <= 2) print "met (max <= 2 s)";
  else if (m <= 2) print "median met, max MISSED"; else print "MISSED" }')

{
  echo "# Detection time of a fabric blackhole"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)), libfabric $(pkg-config --modversion libfabric),"
  echo "two agents in network namespaces joined by a veth pair, \`udp;ofi_rxd\`, \`--interval 1s --timeout 500ms\`,"
  echo "default hysteresis. Reproduce: \`sudo benches/detection.sh $repeats\`."
  echo
  echo "Fault: all UDP dropped in and out of B (nftables), at a random point of the round. Time: from"
  echo "the rule's installation until A's /metrics shows \`efa_peer_state{peer=\"bdet-b\",state=\"fabric_dropped\"} 1\`"
  echo "(polled every 50 ms; a Prometheus scrape interval comes on top)."
  echo
  echo "| repeats | min | median | max | not detected within ${limit} s | goal (<= 2 s) |"
  echo "|---|---|---|---|---|---|"
  echo "| $repeats | ${min} s | ${med} s | ${max} s | $missed | $verdict |"
  echo
  echo "Each repeat, in order: $(printf '%s s, ' "${times[@]}" | sed 's/, $//')."
  echo
  echo "Back to \`healthy\` after the rule is removed (same polling): min ${hmin} s, median ${hmed} s,"
  echo "max ${hmax} s."
} >"$tmp/report.md"
mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
