#!/usr/bin/env bash
# efaprobe lab: a small cluster in network namespaces on this machine (root).
#
#   sudo scripts/lab.sh up                 build, create the cluster, print where to look
#   sudo scripts/lab.sh break SCENARIO     cross_subnet | sg_self_rule | rail_sg | nats_port |
#                                          prometheus_port | node_down | agent_restart
#   sudo scripts/lab.sh heal               undo every break
#   sudo scripts/lab.sh status             node x peer verdicts, targets, alerts
#   sudo scripts/lab.sh down               stop everything, remove the namespaces
#
# Layout (addresses from 198.18.0.0/15 only; nothing else is contacted):
#
#                 subnet A                  router                 subnet B
#   rail 0 (lab0) 198.18.100.0/24        (routes IP; drops     198.18.101.0/24
#   rail 1 (lab1) 198.18.110.0/24         the fabric on        198.18.111.0/24
#     sys  .10 nats-server -js, prometheus, agent (rail 0 only: no fabric)
#     gpu1 .11 agent                       cross_subnet)        gpu3 .13 agent
#     gpu2 .12 agent
#
# Every GPU node has two rails, as an EFA instance has several devices, each on its own ENI:
# lab0 on the rail-0 bridge of its subnet, lab1 on the rail-1 bridge, and its agent binds
# one fabric endpoint to each (--fabric-bind RAIL0-IP,RAIL1-IP). IP and HTTP stay on lab0.
# The rail-1 bridges are routed like the rail-0 ones: an AWS subnet holds all of an
# instance's ENIs; the lab gives each rail its own IP subnet (two interfaces of one namespace
# in one IP subnet would answer ARP for each other), and its fake IMDS puts both ENIs in the
# same AWS subnet.
#
# Agents use the udp;ofi_rxd provider, so the fabric's traffic is UDP. Real EFA never crosses
# subnets; here the router passes it until `break cross_subnet`, so that the lab starts healthy.
# libfabric's rxd crashes on an rxd header naming a peer it does not know (README: Who can
# reach the rxd port; the agent filters out only malformed datagrams), so each GPU node drops
# UDP from any address but the GPU agents' (fabric_guard): the router, the system node and
# anything else in the lab cannot kill an agent with one packet.
# Each node has a fake instance-metadata server on its own loopback (scripts/fake-imds.py):
# gpu3 is in subnet-0bbbb, the others in subnet-0aaaa, all in us-east-1a. It lists each ENI
# under the real MAC of its interface (the agent finds a rail's ENI by that MAC). Every ENI
# is in security group sg-0efa, except the rail-1 ENIs of gpu1 and gpu2: they were launched
# into sg-0efarail1, whose self-referencing rule `break rail_sg` removes.
#
# The lab's Prometheus and the agents' status pages are forwarded to 127.0.0.1 on this host
# (socat), so a browser here can open them. State, logs and pids live in $LAB_DIR.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
LAB_DIR=${LAB_DIR:-/run/efaprobe-lab}
PREFIX=${LAB_PREFIX:-efp-lab}
BIN=${EFAPROBE_BIN:-$REPO/target/release/efaprobe}
INTERVAL=${LAB_INTERVAL:-1s}
TIMEOUT=${LAB_TIMEOUT:-500ms}
RULES=${LAB_RULES:-$REPO/manifests/prometheus/efaprobe-rules.yml}
PORT=9476
PROVIDER="udp;ofi_rxd"
NODES=(sys gpu1 gpu2 gpu3)
GPUS=(gpu1 gpu2 gpu3)
# Rail 0: the node's address (IP, HTTP, rail 0's fabric endpoint) on lab0.
declare -A IP=([sys]=198.18.100.10 [gpu1]=198.18.100.11 [gpu2]=198.18.100.12 [gpu3]=198.18.101.13)
declare -A SUBNET=([sys]=subnet-0aaaa [gpu1]=subnet-0aaaa [gpu2]=subnet-0aaaa [gpu3]=subnet-0bbbb)
declare -A BRIDGE=([sys]=brA [gpu1]=brA [gpu2]=brA [gpu3]=brB)
# Rail 1: the GPU nodes' second fabric endpoint, on lab1.
declare -A RAIL1_IP=([gpu1]=198.18.110.11 [gpu2]=198.18.110.12 [gpu3]=198.18.111.13)
declare -A RAIL1_BRIDGE=([gpu1]=brA1 [gpu2]=brA1 [gpu3]=brB1)
RAIL1_NETS=198.18.110.0/23  # both subnets' rail-1 bridges, reached through lab1
declare -A GATEWAY=([brA]=198.18.100.1 [brB]=198.18.101.1 [brA1]=198.18.110.1 [brB1]=198.18.111.1)
# Security groups by ENI: sg-0efarail1 is the group `break rail_sg` takes the self rule from.
SG=sg-0efa
declare -A RAIL1_SG=([gpu1]=sg-0efarail1 [gpu2]=sg-0efarail1 [gpu3]=sg-0efa)
# The IP subnets of each AWS subnet, both rails: what cross_subnet keeps apart.
SUBNET_A_NETS="198.18.100.0/24, 198.18.110.0/24"
SUBNET_B_NETS="198.18.101.0/24, 198.18.111.0/24"
declare -A FORWARD=([prometheus]=19090 [sys]=19476 [gpu1]=19477 [gpu2]=19478 [gpu3]=19479)
SYS_IP=${IP[sys]}

die() { echo "lab: $*" >&2; exit 1; }
ns() { echo "$PREFIX-$1"; }
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces)"; }

# Starts a command in the background, detached, logging to $LAB_DIR/NAME.log. It keeps no
# other descriptor of ours: under `flock LOCK lab.sh up` the lock's would otherwise stay open
# in every agent and server, and the lock held until `down`.
start() {
  local name=$1; shift
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec setsid "$@" >"$LAB_DIR/$name.log" 2>&1 < /dev/null
  ) &
  echo $! > "$LAB_DIR/$name.pid"
}

# True while PID runs. A zombie has finished: our processes are reparented when `up`
# returns, and whoever reaps them may take its time.
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null; }

stop() {
  local pidfile="$LAB_DIR/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

running() { [ -f "$LAB_DIR/$1.pid" ] && alive "$(cat "$LAB_DIR/$1.pid")"; }

wait_http() {  # NODE URL [TRIES]: until the URL answers inside the node's namespace
  local tries=${3:-100}
  for _ in $(seq "$tries"); do
    in_ns "$1" curl -sf --max-time 1 -o /dev/null "$2" && return 0
    sleep 0.1
  done
  return 1
}

wait_port() {  # NODE IP PORT: until something listens there
  for _ in $(seq 100); do
    in_ns "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

agent_peers() {  # the other GPU agents
  local me=$1 out=()
  for g in "${GPUS[@]}"; do [ "$g" = "$me" ] || out+=("${IP[$g]}:$PORT"); done
  (IFS=,; echo "${out[*]}")
}

# The MAC of a node's interface, as the kernel has it: what the agent looks up in IMDS.
mac_of() { in_ns "$1" cat "/sys/class/net/$2/address"; }

# A locally administered MAC for rail R of a node: 0a:00:00:00:0R:<last octet of its IP>.
lab_mac() { printf '0a:00:00:00:%02x:%02x' "$2" "${IP[$1]##*.}"; }

# A fake sysfs per node with one EFA-like device, so device-counter metrics and panels have data.
# Its class/net is the node's real one: the agent reads the MAC of the interface holding each
# rail's address there (to find the rail's ENI in IMDS), and /sys in the node's namespace (ip
# netns exec mounts the namespace's own) lists the node's interfaces with the kernel's MACs.
fake_sysfs() {
  local dir="$LAB_DIR/sysfs-$1/class/infiniband/efa_$1/ports/1/hw_counters"
  mkdir -p "$dir"
  local c; for c in tx_bytes rx_bytes tx_pkts rx_pkts rx_drops send_bytes recv_bytes; do
    echo $(( RANDOM * 1000 )) > "$dir/$c"
  done
  ln -s /sys/class/net "$LAB_DIR/sysfs-$1/class/net"
}

start_agent() {
  local n=$1 args=()
  [ -d "$LAB_DIR/sysfs-$n" ] || fake_sysfs "$n"
  if [ "$n" = sys ]; then
    # The system node checks the services too, but probes no peers and has no fabric.
    args=(--fabric-provider none)
  else
    args=(--fabric-provider "$PROVIDER" --fabric-bind "${IP[$n]},${RAIL1_IP[$n]}"
      --peers "$(agent_peers "$n")")
  fi
  start "agent-$n" ip netns exec "$(ns "$n")" "$BIN" agent \
    --node-name "$n" --listen "${IP[$n]}:$PORT" --pod-ip "${IP[$n]}" \
    --target "nats=$SYS_IP:4222" --target "prometheus=$SYS_IP:9090" \
    --imds-endpoint http://127.0.0.1:8169 --imds-timeout 2s --sysfs-root "$LAB_DIR/sysfs-$n" \
    --interval "$INTERVAL" --timeout "$TIMEOUT" "${args[@]}"
}

prometheus_config() {
  cat <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: efaprobe
    static_configs:
EOF
  for n in "${NODES[@]}"; do
    printf '      - targets: ["%s:%s"]\n        labels: {node: "%s"}\n' "${IP[$n]}" "$PORT" "$n"
  done
}

up() {
  need_root
  [ -d "$LAB_DIR" ] && [ -n "$(ls -A "$LAB_DIR" 2>/dev/null)" ] && { echo "lab: already up ($LAB_DIR); 'down' first" >&2; exit 1; }
  if [ "${LAB_SKIP_BUILD:-}" != 1 ]; then
    "$REPO/scripts/setup.sh"
    (cd "$REPO" && cargo build --release -q -p efaprobe)
  fi
  [ -x "$BIN" ] || die "no agent binary at $BIN"
  mkdir -p "$LAB_DIR"

  # The router: two bridges, one per subnet, and IP forwarding between them.
  ip netns add "$(ns r)"
  in_ns r ip link set lo up
  in_ns r sysctl -qw net.ipv4.ip_forward=1
  for br in brA brB brA1 brB1; do
    in_ns r ip link add "$br" type bridge
    in_ns r ip addr add "${GATEWAY[$br]}/24" dev "$br"
    in_ns r ip link set "$br" up
  done
  # The router's filter: empty until `break cross_subnet` adds the fabric drop.
  in_ns r nft -f - <<'EOF'
table inet efp_lab_router {
  chain forward { type filter hook forward priority 0; policy accept; }
}
EOF

  for n in "${NODES[@]}"; do
    ip netns add "$(ns "$n")"
    in_ns "$n" ip link set lo up
    ip link add "lab0" address "$(lab_mac "$n" 0)" netns "$(ns "$n")" \
      type veth peer name "v-$n" netns "$(ns r)"
    in_ns r ip link set "v-$n" master "${BRIDGE[$n]}"
    in_ns r ip link set "v-$n" up
    in_ns "$n" ip addr add "${IP[$n]}/24" dev lab0
    in_ns "$n" ip link set lab0 up
    in_ns "$n" ip route add default via "${GATEWAY[${BRIDGE[$n]}]}"
    local enis=()
    if [ -n "${RAIL1_IP[$n]:-}" ]; then
      ip link add "lab1" address "$(lab_mac "$n" 1)" netns "$(ns "$n")" \
        type veth peer name "v1-$n" netns "$(ns r)"
      in_ns r ip link set "v1-$n" master "${RAIL1_BRIDGE[$n]}"
      in_ns r ip link set "v1-$n" up
      in_ns "$n" ip addr add "${RAIL1_IP[$n]}/24" dev lab1
      in_ns "$n" ip link set lab1 up
      in_ns "$n" ip route add "$RAIL1_NETS" via "${GATEWAY[${RAIL1_BRIDGE[$n]}]}" dev lab1
      enis=(--extra-interface "$(mac_of "$n" lab1),${SUBNET[$n]},vpc-0lab,${RAIL1_SG[$n]}")
    fi
    start "imds-$n" ip netns exec "$(ns "$n")" python3 "$REPO/scripts/fake-imds.py" \
      --listen 127.0.0.1:8169 --instance-id "i-0lab$n" --instance-type p5.48xlarge \
      --az us-east-1a --subnet "${SUBNET[$n]}" --vpc vpc-0lab --security-groups "$SG" \
      --placement-group pg-lab --mac "$(mac_of "$n" lab0)" "${enis[@]}"
  done

  # The system node's services.
  mkdir -p "$LAB_DIR/jetstream" "$LAB_DIR/prometheus-data"
  start nats ip netns exec "$(ns sys)" nats-server -a "$SYS_IP" -p 4222 -js -sd "$LAB_DIR/jetstream"
  prometheus_config > "$LAB_DIR/prometheus.yml"
  start prometheus ip netns exec "$(ns sys)" prometheus \
    --config.file="$LAB_DIR/prometheus.yml" --storage.tsdb.path="$LAB_DIR/prometheus-data" \
    --web.listen-address="$SYS_IP:9090" --web.enable-lifecycle
  for n in "${NODES[@]}"; do wait_port "$n" 127.0.0.1 8169; done

  for g in "${GPUS[@]}"; do fabric_guard "$g"; done
  for n in "${NODES[@]}"; do start_agent "$n"; done
  for n in "${NODES[@]}"; do
    wait_http "$n" "http://${IP[$n]}:$PORT/healthz" || die "agent on $n did not start: $(tail -3 "$LAB_DIR/agent-$n.log")"
  done
  wait_http sys "http://$SYS_IP:9090/-/ready" 300 || die "prometheus did not start: $(tail -3 "$LAB_DIR/prometheus.log")"

  # Browsable from this host: loopback forwards into the lab.
  if [ "${LAB_NO_FORWARD:-}" != 1 ] && command -v socat >/dev/null; then
    start fwd-prometheus socat "TCP-LISTEN:${FORWARD[prometheus]},bind=127.0.0.1,reuseaddr,fork" \
      "EXEC:ip netns exec $(ns sys) socat STDIO TCP\:$SYS_IP\:9090"
    for n in "${NODES[@]}"; do
      start "fwd-$n" socat "TCP-LISTEN:${FORWARD[$n]},bind=127.0.0.1,reuseaddr,fork" \
        "EXEC:ip netns exec $(ns "$n") socat STDIO TCP\:${IP[$n]}\:$PORT"
    done
  fi

  echo "lab is up. Prometheus: http://127.0.0.1:${FORWARD[prometheus]}/alerts  (in the lab: http://$SYS_IP:9090/)"
  for n in "${NODES[@]}"; do echo "  agent $n: http://127.0.0.1:${FORWARD[$n]}/  (in the lab: http://${IP[$n]}:$PORT/)"; done
  echo "Next: sudo scripts/lab.sh status; sudo scripts/lab.sh break cross_subnet; ... heal; down"
  [ "${LAB_QUIET:-}" = 1 ] && return 0
  sleep 4
  status
}

# Only the GPU agents may send UDP to a GPU node: rxd (libfabric 1.17 and 2.1) dereferences
# the peer a packet's header names without checking it, so one crafted datagram from anyone
# else to the agent's fabric port (an ephemeral one) would end the agent with SIGSEGV.
# Loopback stays open (the node itself). Not an efp_lab_* table: `heal` removes those.
fabric_guard() {  # NODE
  local agents="" g
  for g in "${GPUS[@]}"; do agents+="${agents:+, }${IP[$g]}, ${RAIL1_IP[$g]}"; done
  in_ns "$1" nft -f - <<EOF
table inet efp_fabric_guard {
  chain input {
    type filter hook input priority -10; policy accept;
    iif "lo" accept
    meta l4proto udp ip saddr != { $agents } counter drop comment "udp;ofi_rxd: only the agents"
  }
}
EOF
}

# nft table NAME in NODE's namespace with one input (and optional output) rule.
add_rule() {  # NODE TABLE INPUT-RULE [OUTPUT-RULE]
  local node=$1 table=$2 input=$3 output=${4:-}
  {
    echo "table inet $table {"
    echo "  chain input { type filter hook input priority 0; policy accept; $input; }"
    [ -n "$output" ] && echo "  chain output { type filter hook output priority 0; policy accept; $output; }"
    echo "}"
  } | in_ns "$node" nft -f -
}

break_scenario() {
  need_root
  local gpu_ips="{ ${IP[gpu1]}, ${IP[gpu2]}, ${IP[gpu3]} }"
  case "${1:-}" in
    cross_subnet)
      # What EFA always does: its traffic does not cross the router between subnets, on
      # any rail. Only routed traffic between the subnets: with br_netfilter loaded, frames
      # bridged within a subnet pass this hook too.
      in_ns r nft add rule inet efp_lab_router forward ip saddr "{ $SUBNET_A_NETS }" \
        ip daddr "{ $SUBNET_B_NETS }" meta l4proto udp drop comment \"efp_lab_cross_subnet\"
      in_ns r nft add rule inet efp_lab_router forward ip saddr "{ $SUBNET_B_NETS }" \
        ip daddr "{ $SUBNET_A_NETS }" meta l4proto udp drop comment \"efp_lab_cross_subnet\" ;;
    sg_self_rule)
      # gpu1 and gpu2 share subnet A; gpu1's group (on every ENI of gpu1, so every rail)
      # lost its self-referencing rule.
      local gpu2_rails="{ ${IP[gpu2]}, ${RAIL1_IP[gpu2]} }"
      add_rule gpu1 efp_lab_sg_self_rule "ip saddr $gpu2_rails meta l4proto udp drop" \
        "ip daddr $gpu2_rails meta l4proto udp drop" ;;
    rail_sg)
      # One ENI's group: the rail-1 ENIs of gpu1 and gpu2 are in sg-0efarail1 (their fake
      # IMDS says so), which lost its self-referencing rule. Their rail-1 fabric traffic to
      # each other is dropped, both ways, on both; rail 0, IP, gpu3 are untouched.
      local a b
      for a in gpu1 gpu2; do
        b=gpu1; [ "$a" = gpu1 ] && b=gpu2
        add_rule "$a" efp_lab_rail_sg \
          "ip saddr ${RAIL1_IP[$b]} ip daddr ${RAIL1_IP[$a]} meta l4proto udp counter drop" \
          "ip saddr ${RAIL1_IP[$a]} ip daddr ${RAIL1_IP[$b]} meta l4proto udp counter drop"
      done ;;
    nats_port)
      add_rule sys efp_lab_nats_port "ip saddr $gpu_ips tcp dport 4222 drop" ;;
    prometheus_port)
      add_rule sys efp_lab_prometheus_port "ip saddr ${IP[gpu1]} tcp dport 9090 drop" ;;
    node_down)
      in_ns gpu2 ip link set lab0 down
      in_ns gpu2 ip link set lab1 down ;;
    agent_restart)
      stop agent-gpu1
      start_agent gpu1
      wait_http gpu1 "http://${IP[gpu1]}:$PORT/healthz" || die "gpu1's agent did not restart" ;;
    *) die "unknown scenario '${1:-}' (cross_subnet sg_self_rule rail_sg nats_port prometheus_port node_down agent_restart)" ;;
  esac
  echo "broke: $1"
}

heal() {
  need_root
  # The router's fabric drop.
  local handles
  handles=$(in_ns r nft -a list chain inet efp_lab_router forward 2>/dev/null | awk '/efp_lab_cross_subnet/ {print $NF}')
  for h in $handles; do in_ns r nft delete rule inet efp_lab_router forward handle "$h"; done
  for n in "${NODES[@]}"; do
    for t in $(in_ns "$n" nft list tables 2>/dev/null | awk '$3 ~ /^efp_lab_/ {print $3}'); do
      in_ns "$n" nft delete table inet "$t"
    done
    in_ns "$n" ip link set lab0 up
    in_ns "$n" ip route replace default via "${GATEWAY[${BRIDGE[$n]}]}"
    if [ -n "${RAIL1_IP[$n]:-}" ]; then
      in_ns "$n" ip link set lab1 up
      in_ns "$n" ip route replace "$RAIL1_NETS" via "${GATEWAY[${RAIL1_BRIDGE[$n]}]}" dev lab1
    fi
    running "agent-$n" || start_agent "$n"
  done
  echo "healed"
}

status() {
  local tmp; tmp=$(mktemp -d)
  for n in "${NODES[@]}"; do
    in_ns "$n" curl -sf --max-time 2 "http://${IP[$n]}:$PORT/v1/peers" > "$tmp/$n.peers" 2>/dev/null || echo null > "$tmp/$n.peers"
    in_ns "$n" curl -sf --max-time 2 "http://${IP[$n]}:$PORT/v1/targets" > "$tmp/$n.targets" 2>/dev/null || echo null > "$tmp/$n.targets"
    in_ns "$n" curl -sf --max-time 2 "http://${IP[$n]}:$PORT/v1/hello" > "$tmp/$n.hello" 2>/dev/null || echo null > "$tmp/$n.hello"
  done
  in_ns sys curl -sf --max-time 2 "http://$SYS_IP:9090/api/v1/alerts" > "$tmp/alerts" 2>/dev/null || echo null > "$tmp/alerts"
  python3 - "$tmp" "${NODES[@]}" <<'EOF'
import json, sys, os
tmp, nodes = sys.argv[1], sys.argv[2:]
load = lambda f: json.load(open(os.path.join(tmp, f)))
gpus = [n for n in nodes if n != "sys"]
print("fabric and IP verdicts (row: observer, column: peer)")
print("%-6s" % "" + "".join("%-34s" % g for g in gpus))
for o in gpus:
    peers = load(o + ".peers")
    row = "%-6s" % o
    for g in gpus:
        if o == g:
            cell = "-"
        elif peers is None:
            cell = "(agent not answering)"
        else:
            p = next((p for p in peers if p["name"] == g or p["address"].startswith(g)), None)
            cell = "?" if p is None else p["state"] + (" (%s)" % p["reason"] if p.get("reason") else "")
        row += "%-34s" % cell
    print(row)
print()
# Rail by rail, where the agents report rails (rail i of the observer to rail i of the peer).
lines = []
for o in gpus:
    peers = load(o + ".peers") or []
    hello = load(o + ".hello") or {}
    own = len((hello.get("fabric") or {}).get("endpoints") or [])
    for g in gpus:
        p = next((p for p in peers if p["name"] == g or p["address"].startswith(g)), None)
        if o == g or p is None or not p.get("rails"):
            continue
        rails = p["rails"]
        answering = [r for r in rails if r.get("reachable") is True]
        failing = [r for r in rails if r.get("reachable") is False]
        line = "  %-4s -> %-4s %d/%d answering" % (o, g, len(answering), len(rails))
        theirs = p.get("peer_rails")
        if theirs is not None and (theirs != len(rails) or own != len(rails)):
            line += " (%d paired: this node has %d rails, the peer %d)" % (len(rails), own, theirs)
        for r in failing:
            why = ", ".join(x for x in (r.get("last_failure"), r.get("reason")) if x)
            line += "; rail %d failing (%s -> %s)%s" % (
                r["rail"], r.get("domain"), r.get("peer_domain"), ": " + why if why else "")
        lines.append(line)
if lines:
    print("rails (observer -> peer: paired rails answering; failing rails by index and device)")
    print("\n".join(lines))
    print()
print("targets (node: target result)")
for n in nodes:
    t = load(n + ".targets")
    if t is None:
        print("  %-5s (agent not answering)" % n)
        continue
    cells = []
    for r in t:
        addrs = r.get("addresses") or []
        ok = bool(addrs) and all(a.get("ok") for a in addrs)
        reasons = sorted({a.get("reason", "") for a in addrs if not a.get("ok")})
        if r.get("resolve_failure"):
            reasons.append(r["resolve_failure"].get("reason", "dns"))
        cells.append("%s %s" % (r.get("target"), "ok" if ok else "FAIL " + ",".join(reasons)))
    print("  %-5s %s" % (n, "; ".join(cells)))
print()
alerts = load("alerts")
alerts = [] if alerts is None else alerts["data"]["alerts"]
print("alerts (%d)" % len(alerts))
for a in sorted(alerts, key=lambda a: (a["labels"]["alertname"], str(a["labels"]))):
    labels = ", ".join("%s=%s" % kv for kv in sorted(a["labels"].items()) if kv[0] not in ("alertname", "severity"))
    print("  %-8s %-30s %s" % (a["state"], a["labels"]["alertname"], labels))
EOF
  rm -rf "$tmp"
}

down() {
  need_root
  if [ -d "$LAB_DIR" ]; then
    for f in "$LAB_DIR"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done
  fi
  for n in "${NODES[@]}" r; do ip netns del "$(ns "$n")" 2>/dev/null || true; done
  rm -rf "$LAB_DIR"
  echo "lab is down"
}

case "${1:-}" in
  up) up ;;
  break) shift; break_scenario "$@" ;;
  heal) heal ;;
  status) status ;;
  down) down ;;
  *) sed -n '2,9p' "$0"; exit 64 ;;
esac
