#!/usr/bin/env bash
# Benchmark: the agent's memory and CPU with 1k and 5k simulated peers, on loopback.
#
#   benches/agent_scale.sh [COUNT...]      (default 1000 5000; writes benches/results/agent-scale.md)
#
# For each COUNT and each number of simulated fabric responders (RESPONDERS, default "1 16"):
# `efaprobe simulate-peers` serves COUNT peers on 127.1.x.y:19476 (one hello each; the fabric
# answered by the responders, peer i publishing responder i mod K), and the release agent
# probes them with its defaults (--interval 5s, --timeout 1s, --probe-budget 20: 100 peers a
# round; without instance metadata the whole capacity is a rotating sample) over
# `udp;ofi_rxd` on 127.0.0.1, --imds-endpoint none. After WARMUP_SECS (rounds with the
# fabric learned), the agent's CPU (utime + stime from /proc, per thread too) is taken over
# MEASURE_SECS, and its VmRSS at the end and VmHWM (peak). With PROFILE=1 (and perf) the
# configuration PROFILE_AT (COUNT:RESPONDERS, default 1000:16) is also profiled for PROFILE_SECS.
# To attribute costs: PROVIDER (the agent's --fabric-provider, default udp;ofi_rxd; `none` is
# the IP path alone), AGENT_ARGS (more agent flags, split on spaces) and OUT (the report).
#
# Traffic: 127.0.0.0/8 only. Needs `ulimit -n` above COUNT + a few hundred (raised here to the
# hard limit). Every process started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 5000)
read -r -a responders <<<"${RESPONDERS:-1 16}"
warmup=${WARMUP_SECS:-25}
measure=${MEASURE_SECS:-60}
profile=${PROFILE:-1}
profile_at=${PROFILE_AT:-1000:16}
profile_secs=${PROFILE_SECS:-20}
provider=${PROVIDER:-udp;ofi_rxd}
read -r -a agent_args <<<"${AGENT_ARGS:-}"
sim_port=19476

max=0; for c in "${counts[@]}"; do if [ "$c" -gt "$max" ]; then max=$c; fi; done
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((max + 512)) ] \
  || { echo "open-file limit $(ulimit -n) too low for $max peers (raise the hard limit)" >&2; exit 1; }

cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
out=${OUT:-benches/results/agent-scale.md}
tmp=$(mktemp -d)
sim='' agent=''

stop() {  # PID: TERM, then KILL after 10 s
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { stop "$agent"; stop "$sim"; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# Per thread name: summed ticks (tokio's workers share a name).
thread_ticks() { for t in /proc/"$1"/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done \
  | awk '{s[$1] += $2} END {for (k in s) print k, s[k]}' | sort; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
metric_sum() {  # URL REGEX: sum of the values of the matching sample lines
  curl -sf --max-time 5 "$1" | awk -v re="$2" '$0 ~ re {s += $NF} END {printf "%d\n", s}'
}

{
  echo "# Agent RSS and CPU with simulated peers"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)),"
  echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, libfabric $(pkg-config --modversion libfabric), release build. Reproduce:"
  echo "\`RESPONDERS=\"${responders[*]}\" PROVIDER=\"$provider\" AGENT_ARGS=\"${agent_args[*]}\" benches/agent_scale.sh ${counts[*]}\`"
  echo "(WARMUP_SECS=$warmup MEASURE_SECS=$measure)."
  echo
  echo "The agent runs with its defaults: \`--interval 5s --timeout 1s --probe-budget 20\` (100 peers"
  echo "a round, a rotating sample), provider \`$provider\`, \`--imds-endpoint none\`${agent_args[*]:+, \`${agent_args[*]}\`}. CPU is the agent's"
  echo "utime + stime over ${measure} s as % of one core ($((1000 / hz)) ms ticks), split by thread: \`fabric\` is the"
  echo "engine threads, \`tokio\` the runtime's workers (HTTP fetches, verdicts, metrics). RSS is VmRSS at"
  echo "the end of the window, peak is VmHWM. Counts are over the window."
  echo
  echo "| peers | sim responders | RSS | peak RSS | agent CPU | fabric threads | tokio workers | hello fetches | fabric probes ok / timeout | states at the end | goal at 1k (<= 32 MiB, <= 2%) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} >"$tmp/report.md"
: >"$tmp/notes.md"

for count in "${counts[@]}"; do
  for k in "${responders[@]}"; do
    echo "agent_scale: $count peers, $k responder(s)" >&2
    rm -f "$tmp/peers"
    "$bin" simulate-peers --count "$count" --fabric-engines "$k" --port $sim_port \
      --fabric-provider "udp;ofi_rxd" --fabric-bind 127.0.0.1 --peers-file "$tmp/peers" \
      >"$tmp/sim.log" 2>&1 &
    sim=$!
    for _ in $(seq 300); do [ -f "$tmp/peers" ] && break; kill -0 "$sim" || break; sleep 0.1; done
    [ -f "$tmp/peers" ] || { echo "simulate-peers did not start:" >&2; cat "$tmp/sim.log" >&2; exit 1; }

    port=$(free_port)
    url=http://127.0.0.1:$port
    EFAPROBE_PEERS=$(cat "$tmp/peers") "$bin" agent --node-name bench-observer \
      --listen "127.0.0.1:$port" --pod-ip 127.0.0.1 --fabric-provider "$provider" \
      --fabric-bind 127.0.0.1 --imds-endpoint none "${agent_args[@]}" >"$tmp/agent.log" 2>&1 &
    agent=$!
    for _ in $(seq 600); do curl -sf --max-time 1 -o /dev/null "$url/readyz" && break; sleep 0.1; done
    curl -sf --max-time 1 -o /dev/null "$url/readyz" || { echo "the agent never got ready:" >&2; cat "$tmp/agent.log" >&2; exit 1; }
    sleep "$warmup"

    ip0=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="ip"')
    ok0=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="fabric".*result="ok"')
    to0=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="fabric".*result="timeout"')
    thread_ticks "$agent" >"$tmp/threads0"
    t0=$(ticks "$agent"); start=$(date +%s.%N)
    sleep "$measure"
    t1=$(ticks "$agent"); end=$(date +%s.%N)
    thread_ticks "$agent" >"$tmp/threads1"
    rss=$(status_kib "$agent" VmRSS); hwm=$(status_kib "$agent" VmHWM)
    ip1=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="ip"')
    ok1=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="fabric".*result="ok"')
    to1=$(metric_sum "$url/metrics" '^efa_probes_total[{].*path="fabric".*result="timeout"')
    # Verdicts by state from the per-node aggregate (per-peer series depend on the mode), and
    # what the schedule probes per round.
    states=$(curl -sf --max-time 5 "$url/metrics" | awk '/^efa_peers_by_state[{]/ && $NF > 0 {
        match($0, /state="[a-z_]+"/); printf "%s %d, ", substr($0, RSTART + 7, RLENGTH - 8), $NF }' \
      | sed 's/, $//')
    probed=$(metric_sum "$url/metrics" '^efa_peers_probed ')
    states="$states (probed per round: $probed)"

    secs=$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')
    pct() { awk -v d="$1" -v hz="$hz" -v s="$secs" 'BEGIN {printf "%.1f%%", 100 * d / hz / s}'; }
    by_thread() {  # PATTERN: ticks of the threads whose name matches, over the window
      join "$tmp/threads0" "$tmp/threads1" | awk -v re="$1" '$1 ~ re {d += $3 - $2} END {print d + 0}'
    }
    cpu=$(pct $((t1 - t0)))
    fab=$(pct "$(by_thread '^fabric')")
    tok=$(pct "$(by_thread '^tokio')")
    goal=-
    if [ "$count" -eq 1000 ]; then
      goal=$(awk -v r="$rss" -v c="${cpu%\%}" 'BEGIN {
        printf "RSS %s, CPU %s", (r <= 32768) ? "met" : "MISSED", (c <= 2) ? "met" : "MISSED" }')
    fi
    printf '| %s | %s | %.1f MiB | %.1f MiB | %s | %s | %s | %d | %d / %d | %s | %s |\n' \
      "$count" "$k" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$(awk -v k="$hwm" 'BEGIN {print k / 1024}')" \
      "$cpu" "$fab" "$tok" $((ip1 - ip0)) $((ok1 - ok0)) $((to1 - to0)) "$states" "$goal" >>"$tmp/report.md"

    if [ "$profile" = 1 ] && [ "$count:$k" = "$profile_at" ] && command -v perf >/dev/null; then
      perf record -q -F 499 -g -p "$agent" -o "$tmp/perf.data" -- sleep "$profile_secs" >/dev/null 2>&1 || true
      {
        echo
        echo "## Where the CPU goes: $count peers, $k responder(s)"
        echo
        echo "\`perf record -F 499 -g -p AGENT -- sleep $profile_secs\`, then \`perf report --no-children --sort comm,sym\`:"
        echo "the top symbols by thread (self time, % of the agent's samples)."
        echo
        echo '```'
        perf report -i "$tmp/perf.data" --no-children --sort comm,sym --stdio -g none \
          >"$tmp/perf.txt" 2>/dev/null || true
        grep -v -e '^#' -e '^$' "$tmp/perf.txt" | sed -n 1,25p || true
        echo '```'
      } >>"$tmp/notes.md"
    fi

    stop "$agent"; agent=''
    stop "$sim"; sim=''
    {
      echo
      echo "Simulator, $count peers, $k responder(s): $(grep -h '^{' "$tmp/sim.log" | tail -1)"
    } >>"$tmp/notes.md"
  done
done

cat "$tmp/notes.md" >>"$tmp/report.md"
mkdir -p "$(dirname "$out")"
cp "$tmp/report.md" "$out"
cat "$out"
