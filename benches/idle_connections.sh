#!/usr/bin/env bash
# Benchmark: the agent's memory and CPU while clients hold 1000 idle connections to its port.
#
#   benches/idle_connections.sh [COUNT]      (default 1000; writes benches/results/idle-connections.md)
#
# Two release agents on loopback probe each other (`udp;ofi_rxd` on 127.0.0.1, --interval 1s,
# --imds-endpoint none); the one under test is A. A Python holder opens COUNT connections to A
# and holds them in one of two ways:
#   keepalive: each connection sends GET /healthz, then one more every KEEPALIVE_EVERY (10 s),
#              inside the agent's 20 s idle timeout: a well-behaved client that keeps its
#              connection (a scraper with keep-alive), so A holds all COUNT;
#   silent:    each connection sends nothing, so A closes it at its 5 s header-read timeout;
#              the holder opens it again at once (a hostile client keeping the pressure on).
# For each, after SETTLE_SECS A's CPU (utime + stime from /proc) is taken over MEASURE_SECS,
# with its VmRSS and open descriptors at the end; the same with no connections first, and
# RSS again RELEASE_SECS after the last holder stopped. The holder's own CPU is not counted.
#
# Traffic: 127.0.0.1 only. Every process started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000}
settle=${SETTLE_SECS:-10}
measure=${MEASURE_SECS:-60}
release=${RELEASE_SECS:-15}
keepalive_every=${KEEPALIVE_EVERY:-10}

ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((count * 2 + 512)) ] \
  || { echo "open-file limit $(ulimit -n) too low for $count connections" >&2; exit 1; }

cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
out=${OUT:-benches/results/idle-connections.md}
tmp=$(mktemp -d)
a='' b='' holder=''
: >"$tmp/trace.md"

stop() {  # PID: TERM, then KILL after 10 s
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { stop "$holder"; stop "$a"; stop "$b"; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
peer_state() {  # URL: the state the agent gives its one peer
  curl -sf --max-time 5 "$1/v1/peers" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["state"])'
}

cat >"$tmp/hold.py" <<'EOF'
"""Holds COUNT connections to 127.0.0.1:PORT (see idle_connections.sh); on SIGTERM prints one
JSON line: connections open, opened again after the agent closed them, requests sent."""
import json, resource, selectors, signal, socket, sys, time

mode, port, count, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
sel = selectors.DefaultSelector()
stats = {"open": 0, "reopened": 0, "requests": 0}
running = True

def stop(*_):
    global running
    running = False

signal.signal(signal.SIGTERM, stop)

def open_one():
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if mode == "keepalive":
        s.sendall(request)
        stats["requests"] += 1
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, {"asked": time.monotonic()})
    stats["open"] += 1

for _ in range(count):
    open_one()
print("holding", flush=True)
while running:
    for key, _ in sel.select(timeout=0.2):
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            stats["open"] -= 1
            stats["reopened"] += 1
            open_one()
    if mode == "keepalive":
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            if now - key.data["asked"] >= every:
                try:
                    key.fileobj.sendall(request)
                    stats["requests"] += 1
                except OSError:
                    pass
                key.data["asked"] = now
print(json.dumps(stats), flush=True)
EOF

a_port=$(free_port); b_port=$(free_port)
start_agent() {  # NAME PORT PEER_PORT
  EFAPROBE_LOG=warn "$bin" agent --node-name "$1" --listen "127.0.0.1:$2" --peers "127.0.0.1:$3" \
    --fabric-provider "udp;ofi_rxd" --fabric-bind 127.0.0.1 --interval 1s --timeout 500ms \
    --imds-endpoint none >"$tmp/$1.log" 2>&1 &
}
start_agent bench-idle-a "$a_port" "$b_port"; a=$!
start_agent bench-idle-b "$b_port" "$a_port"; b=$!
url=http://127.0.0.1:$a_port
for _ in $(seq 300); do curl -sf --max-time 1 -o /dev/null "$url/readyz" && break; sleep 0.1; done
curl -sf --max-time 1 -o /dev/null "$url/readyz" || { echo "agent A never got ready:" >&2; cat "$tmp/bench-idle-a.log" >&2; exit 1; }
sleep "$settle"

measure_row() {  # LABEL HOLDER_SUMMARY: one table row over MEASURE_SECS
  local t0 t1 start end secs cpu
  local trace=""
  t0=$(ticks "$a"); start=$(date +%s.%N)
  # VmRSS every 10 s of the window, to tell a plateau from growth.
  for _ in $(seq $((measure / 10))); do
    sleep 10
    trace="$trace $(awk -v k="$(status_kib "$a" VmRSS)" 'BEGIN {printf "%.1f", k / 1024}')"
  done
  sleep $((measure % 10))
  t1=$(ticks "$a"); end=$(date +%s.%N)
  echo "- $1: VmRSS every 10 s (MiB):$trace" >>"$tmp/trace.md"
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$secs" 'BEGIN {printf "%.1f%%", 100 * d / hz / s}')
  rss=$(status_kib "$a" VmRSS)
  local held=$(( $(fds "$a") - base_fds ))
  local delta
  delta=$(awk -v r="$rss" -v b="$base_rss" -v n="$held" 'BEGIN {
    if (n > 0) printf "%+.1f MiB (%.1f KiB per connection)", (r - b) / 1024, (r - b) / n;
    else printf "%+.1f MiB", (r - b) / 1024 }')
  echo "| $1 | $held | $(mib "$rss") | $delta | $cpu | $(peer_state "$url") / $(peer_state "http://127.0.0.1:$b_port") | $2 |" >>"$tmp/rows.md"
}

base_fds=$(fds "$a"); base_rss=$(status_kib "$a" VmRSS)
measure_row "none" "-"
base_rss=$(status_kib "$a" VmRSS)

for mode in keepalive silent; do
  echo "idle_connections: $count $mode connections" >&2
  python3 "$tmp/hold.py" "$mode" "$a_port" "$count" "$keepalive_every" >"$tmp/hold.out" 2>&1 &
  holder=$!
  for _ in $(seq 300); do grep -q holding "$tmp/hold.out" && break; sleep 0.1; done
  sleep "$settle"
  measure_row "$count $mode" "(pending)"
  stop "$holder"; holder=''
  summary=$(grep '^{' "$tmp/hold.out" | tail -1)
  sed -i "s|(pending)|${summary:-no summary}|" "$tmp/rows.md"
  sleep "$release"
  after=$(status_kib "$a" VmRSS)
  echo "| after $mode, ${release} s later | $(( $(fds "$a") - base_fds )) | $(mib "$after") | $(awk -v r="$after" -v b="$base_rss" 'BEGIN {printf "%+.1f MiB", (r - b) / 1024}') | - | $(peer_state "$url") / $(peer_state "http://127.0.0.1:$b_port") | - |" >>"$tmp/rows.md"
done

{
  echo "# Agent RSS and CPU with $count idle connections held"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)),"
  echo "release build. Reproduce: \`benches/idle_connections.sh $count\` (SETTLE_SECS=$settle MEASURE_SECS=$measure"
  echo "RELEASE_SECS=$release KEEPALIVE_EVERY=$keepalive_every)."
  echo
  echo "Agent A (\`udp;ofi_rxd\` on 127.0.0.1, \`--interval 1s --timeout 500ms\`) probes one peer agent, B, and"
  echo "is probed by it. CPU is A's utime + stime over $measure s as % of one core; RSS is VmRSS at the end"
  echo "of the window, compared with the first row's; \"held\" is A's open descriptors above the first"
  echo "row's. \`keepalive\`: each connection sends a request every $keepalive_every s and is otherwise idle."
  echo "\`silent\`: connections that never send, which A closes at its header-read timeout (5 s) and the"
  echo "holder opens again at once. The last column is the holder's count at its end."
  echo
  echo "| connections | held by the agent | RSS | RSS vs none | agent CPU | verdicts A / B | holder |"
  echo "|---|---|---|---|---|---|---|"
  cat "$tmp/rows.md"
  echo
  cat "$tmp/trace.md"
} >"$tmp/report.md"
mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
