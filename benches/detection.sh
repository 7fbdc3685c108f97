#!/usr/bin/env bash
# Benchmark: how long a fabric blackhole takes to show as fabric_dropped, at a 1 s interval.
# Root; two network namespaces (efp-bdet-a 198.18.242.1, efp-bdet-b 198.18.242.2, a veth
# pair), removed at exit.
#
#   sudo benches/detection.sh [REPEATS]            (default 10; writes benches/results/detection.md)
#   sudo benches/detection.sh --rail 1 [REPEATS]   (writes benches/results/detection-rail1.md)
#   sudo RAILS=8 benches/detection.sh --rail 1 [REPEATS]   (detection-rail1-of-8.md)
#
# With `--rail 1` the agents have RAILS rails (default 2): a veth pair more for each rail
# after 0 (rail 1: 198.18.243.1, .2; rail r >= 2: 198.19.(200 + r).1, .2, a /24 each) and
# `--fabric-bind` with every address; the fault drops UDP on B's rail-1 interface alone
# (rail 0, the other rails and the IP path untouched), so only rail 1 fails: a single-rail
# blackhole, which must still make the peer fabric_dropped (a fabric path is reachable only
# when every paired rail answers), with rail 1 alone named unreachable. Its goal is 3 s at
# worst. With more than 4 rails a round's probe pings half of rails 1 and up, by turn (see
# the README's Rotation), so a cut rail may wait a round longer to be pinged.
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
rail_mode=0
if [ "${1:-}" = --rail ]; then
  [ "${2:-}" = 1 ] || { echo "--rail takes 1 (rail 1 of two)" >&2; exit 2; }
  rail_mode=1
  shift 2
fi
repeats=${1:-10}
rails=${RAILS:-2}
[[ "$rails" =~ ^[0-9]+$ ]] && [ "$rails" -ge 2 ] && [ "$rails" -le 32 ] \
  || { echo "RAILS must be 2 to 32, not $rails" >&2; exit 2; }
[ $rail_mode = 1 ] || [ "$rails" = 2 ] || { echo "RAILS is for --rail mode" >&2; exit 2; }
goal_secs=2
[ $rail_mode = 1 ] && goal_secs=3
limit=${DETECT_LIMIT_SECS:-30}

command -v nft >/dev/null && command -v ip >/dev/null && command -v curl >/dev/null \
  && pkg-config --exists libfabric || scripts/setup.sh
cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
a=efp-bdet-a b=efp-bdet-b
A=198.18.242.1 B=198.18.242.2
port=9476
A1=198.18.243.1 B1=198.18.243.2
out=benches/results/detection.md
[ $rail_mode = 1 ] && out=benches/results/detection-rail1.md
[ "$rails" = 2 ] || out=benches/results/detection-rail1-of-$rails.md
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
binds_a=$A binds_b=$B
if [ $rail_mode = 1 ]; then
  ip link add efpbdeta1 netns $a type veth peer name efpbdetb1 netns $b
  ip -n $a addr add $A1/24 dev efpbdeta1; ip -n $a link set efpbdeta1 up
  ip -n $b addr add $B1/24 dev efpbdetb1; ip -n $b link set efpbdetb1 up
  binds_a=$A,$A1 binds_b=$B,$B1
  for r in $(seq 2 $((rails - 1))); do
    ip link add "efpbdeta$r" netns $a type veth peer name "efpbdetb$r" netns $b
    ip -n $a addr add "198.19.$((200 + r)).1/24" dev "efpbdeta$r"; ip -n $a link set "efpbdeta$r" up
    ip -n $b addr add "198.19.$((200 + r)).2/24" dev "efpbdetb$r"; ip -n $b link set "efpbdetb$r" up
    binds_a+=",198.19.$((200 + r)).1" binds_b+=",198.19.$((200 + r)).2"
  done
fi

start_agent() {  # NS NAME IP PEER_IP BINDS
  ip netns exec "$1" "$bin" agent --node-name "$2" --listen "$3:$port" --pod-ip "$3" \
    --peers "$4:$port" --fabric-provider "udp;ofi_rxd" --fabric-bind "$5" \
    --interval 1s --timeout 500ms --imds-endpoint none >"$tmp/$2.log" 2>&1 &
  pids+=($!)
}
start_agent $a bdet-a $A $B "$binds_a"
start_agent $b bdet-b $B $A "$binds_b"

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
  if [ $rail_mode = 1 ]; then
    ip netns exec $b nft -f - <<'EOF'
table inet efp_bdet {
  chain input { type filter hook input priority 0; policy accept; iifname "efpbdetb1" meta l4proto udp drop; }
  chain output { type filter hook output priority 0; policy accept; oifname "efpbdetb1" meta l4proto udp drop; }
}
EOF
  else
    ip netns exec $b nft -f - <<'EOF'
table inet efp_bdet {
  chain input { type filter hook input priority 0; policy accept; meta l4proto udp drop; }
  chain output { type filter hook output priority 0; policy accept; meta l4proto udp drop; }
}
EOF
  fi
}
# Rail mode: the rails of B that A reports unreachable (`efa_peer_rail_unreachable`).
rails_down_of_b() {
  ip netns exec $a curl -sf --max-time 1 "http://$A:$port/metrics" 2>/dev/null \
    | awk '/^efa_peer_rail_unreachable[{]/ && /peer="bdet-b"/ && $NF == 1 {
        match($0, /rail="[0-9]+"/); printf "%s ", substr($0, RSTART + 6, RLENGTH - 7) }' || true
}
heal() { ip netns exec $b nft delete table inet efp_bdet 2>/dev/null || true; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
wait_state healthy 60 >/dev/null || { echo "the pair never became healthy" >&2; cat "$tmp"/*.log >&2; exit 1; }
sleep 3
if [ $rail_mode = 1 ]; then
  paired=$(ip netns exec $a curl -sf --max-time 1 "http://$A:$port/metrics" \
    | awk '/^efa_peer_rails[{]/ && /peer="bdet-b"/ {print $NF}')
  [ "$paired" = "$rails" ] || { echo "A pairs ${paired:-no} rails with B, not $rails" >&2; cat "$tmp"/*.log >&2; exit 1; }
fi

times=() healed=()
for i in $(seq "$repeats"); do
  sleep "$(awk -v r="$RANDOM" 'BEGIN {printf "%.3f", r / 32768}')"
  blackhole
  if t=$(wait_state fabric_dropped "$limit"); then times+=("$t"); else times+=("timeout>${limit}"); fi
  echo "repeat $i: ${times[-1]} s" >&2
  if [ $rail_mode = 1 ]; then
    # The verdict names rail 1 alone: rail 0 kept answering through the fault.
    down=''
    for _ in $(seq 20); do down=$(rails_down_of_b); [ "$down" = "1 " ] && break; sleep 0.05; done
    [ "$down" = "1 " ] || { echo "repeat $i: rails reported down: '${down}', wanted rail 1 alone" >&2; exit 1; }
  fi
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
verdict=$(awk -v m="$med" -v x="$max" -v n="$missed" -v g="$goal_secs" 'BEGIN {
  if (m == "-" || n > 0) print "MISSED"; else if (x <= g) printf "met (max <= %d s)\n", g;
  else if (m <= g) print "median met, max MISSED"; else print "MISSED" }')

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- agent fabric fabric-sys || echo "+dirty")
{
  if [ $rail_mode = 1 ]; then
    echo "# Detection time of a single-rail fabric blackhole"
  else
    echo "# Detection time of a fabric blackhole"
  fi
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) at commit $commit on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)), libfabric $(pkg-config --modversion libfabric),"
  echo "load average $load_before at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  if [ $rail_mode = 1 ]; then
    echo "Two agents in network namespaces joined by $rails veth pairs, $rails rails each (\`--fabric-bind\` with"
    echo "every address), \`udp;ofi_rxd\`, \`--interval 1s --timeout 500ms\`, default hysteresis."
    [ "$rails" -gt 4 ] && echo "With more than 4 rails a round's probe pings half of rails 1 and up, by turn."
    echo "Reproduce: \`sudo ${RAILS:+RAILS=$rails }benches/detection.sh --rail 1 $repeats\`."
    echo
    echo "Fault: UDP dropped in and out of B's rail-1 interface alone (nftables; the other rails and the IP"
    echo "path untouched), at a random point of the round. Time: from the rule's installation until A's"
    echo "/metrics shows \`efa_peer_state{peer=\"bdet-b\",state=\"fabric_dropped\"} 1\` (polled every 50 ms; a"
    echo "Prometheus scrape interval comes on top); each repeat also checks that A then reports rail 1,"
    echo "and rail 1 alone, unreachable (\`efa_peer_rail_unreachable\`)."
  else
    echo "Two agents in network namespaces joined by a veth pair, \`udp;ofi_rxd\`, \`--interval 1s --timeout 500ms\`,"
    echo "default hysteresis. Reproduce: \`sudo benches/detection.sh $repeats\`."
    echo
    echo "Fault: all UDP dropped in and out of B (nftables), at a random point of the round. Time: from"
    echo "the rule's installation until A's /metrics shows \`efa_peer_state{peer=\"bdet-b\",state=\"fabric_dropped\"} 1\`"
    echo "(polled every 50 ms; a Prometheus scrape interval comes on top)."
  fi
  echo
  echo "| repeats | min | median | max | not detected within ${limit} s | goal (<= ${goal_secs} s) |"
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
