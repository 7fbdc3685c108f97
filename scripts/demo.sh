#!/usr/bin/env bash
# A two-node fabric-ping demo in network namespaces (root): the fabric path works, then the
# fabric's traffic is dropped while IP still works (what a missing EFA security-group rule
# does), then the peer dies. Addresses 198.18.250.1 and .2 only; everything is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }

scripts/setup.sh
cargo build --release -q -p efaprobe
bin=$PWD/target/release/efaprobe
provider="udp;ofi_rxd"
a=efp-demo-a b=efp-demo-b

cleanup() {
  [ -n "${responder:-}" ] && kill "$responder" 2>/dev/null || true
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$a"; ip netns add "$b"
ip link add efpdemoa netns "$a" type veth peer name efpdemob netns "$b"
ip -n "$a" addr add 198.18.250.1/24 dev efpdemoa; ip -n "$a" link set efpdemoa up; ip -n "$a" link set lo up
ip -n "$b" addr add 198.18.250.2/24 dev efpdemob; ip -n "$b" link set efpdemob up; ip -n "$b" link set lo up

ip netns exec "$b" "$bin" fabric-ping --provider "$provider" --bind 198.18.250.2 --port 47600 &
responder=$!
for _ in $(seq 50); do ip netns exec "$a" bash -c 'exec 3<>/dev/tcp/198.18.250.2/47600' 2>/dev/null && break; sleep 0.1; done

probe() { ip netns exec "$a" "$bin" fabric-ping --provider "$provider" --bind 198.18.250.1 --peer 198.18.250.2:47600 "$@" || echo "(exit code $?)"; }

echo; echo "### 1. both paths work"
probe --count 20 --interval 50ms
echo; echo "### 2. node b drops the fabric's UDP, TCP still passes (a missing self-referencing SG rule)"
ip netns exec "$b" nft -f - <<'NFT'
table inet efp_demo {
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp drop
  }
}
NFT
probe --count 3 --timeout 1s
echo; echo "### 3. rule removed"
ip netns exec "$b" nft flush ruleset
probe --count 5 --interval 50ms
echo; echo "### 4. the responder is gone"
kill "$responder"; wait "$responder" 2>/dev/null || true; responder=
probe --count 2 --timeout 1s
