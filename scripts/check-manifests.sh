#!/usr/bin/env bash
# Checks the deployment manifests offline (scripts/test.sh runs it; scripts/setup.sh installs
# kubectl, kubernetes-validate and the Prometheus Operator schema package it uses):
#
# 1. the monitoring overlay's generated files match their sources (gen-prometheusrule.py);
# 2. `kubectl kustomize` renders the base, every overlay, and the EFA overlay with each
#    component and with all of them;
# 3. every rendered object validates: built-in kinds strictly against the Kubernetes schemas
#    (kubernetes-validate, Kubernetes 1.30 and 1.33), PodMonitor and PrometheusRule against the
#    Prometheus Operator's API schema; and what the agent relies on holds in each rendering
#    (validate-manifests.py: labels, probes, downward API, RBAC, the PodMonitor's `node`, and
#    the Pod Security level its namespace enforces); the cluster-wide RBAC is exactly what the
#    node actions turned on need: none in the base, all three in the EFA and monitoring overlays;
# 4. `promtool check rules` on each rendered PrometheusRule's spec;
# 5. the dashboard JSON parses;
# 6. the examples (manifests/examples): built-in kinds validate strictly, the PyTorchJob (a
#    Kubeflow custom resource, no schema here) parses, and every pod template runs
#    `efaprobe preflight` as an init container (validate-examples.py).
# Any failure ends it with a non-zero status and says what failed.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${EFAPROBE_CI_TOOLS:-/opt/efaprobe-ci}
venv_python=$tools/venv/bin/python
node_prefix=$tools/node
k8s_versions=(1.30.0 1.33.0)

fail() { echo "check-manifests: FAILED: $*" >&2; exit 1; }
for tool in kubectl promtool node python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (run scripts/setup.sh)"
done
[ -x "$venv_python" ] || fail "$venv_python is missing (run scripts/setup.sh)"
[ -d "$node_prefix/node_modules/@kubernetes-models/prometheus-operator" ] \
  || fail "the Prometheus Operator schema package is missing under $node_prefix (run scripts/setup.sh)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== generated monitoring files are up to date"
"$venv_python" scripts/gen-prometheusrule.py --check || fail "stale generated files"

echo "== kubectl kustomize ($(kubectl version --client 2>/dev/null | awk '/Kustomize/ {print $3}'))"
render() { # NAME DIR
  kubectl kustomize "$2" >"$out/$1.yaml" 2>"$out/$1.err" || { cat "$out/$1.err" >&2; fail "kubectl kustomize $2"; }
  echo "rendered $1: $(grep -c '^kind:' "$out/$1.yaml") objects"
}
render base manifests/base
for overlay in manifests/overlays/*/; do
  render "overlay-$(basename "$overlay")" "$overlay"
done
# Components only render on top of something: the EFA overlay, one at a time and together.
with_components() { # NAME COMPONENT...
  local name=$1; shift
  local dir="$out/kustomize-$name"
  mkdir -p "$dir"
  {
    echo "resources: [$(realpath --relative-to="$dir" manifests/overlays/efa)]"
    echo "components:"
    for c in "$@"; do echo "  - $(realpath --relative-to="$dir" "manifests/components/$c")"; done
  } >"$dir/kustomization.yaml"
  render "$name" "$dir"
}
components=()
for component in manifests/components/*/; do
  c=$(basename "$component")
  # A component the EFA overlay includes already renders with it (twice is an error).
  grep -q "components/$c\$" manifests/overlays/efa/kustomization.yaml && continue
  components+=("$c")
  with_components "efa+$c" "$c"
done
with_components "efa+all-components" "${components[@]}"

echo "== validate (Kubernetes ${k8s_versions[*]}, strict; custom resources; invariants)"
mkdir "$out/rules"
versions=()
for v in "${k8s_versions[@]}"; do versions+=(--k8s-version "$v"); done
"$venv_python" scripts/validate-manifests.py "${versions[@]}" \
  --crd-validator "node scripts/validate-crs.mjs '$node_prefix'" \
  --rules-dir "$out/rules" "$out"/*.yaml || fail "manifest validation"

echo "== promtool check rules"
rules=("$out"/rules/*.rules.yml)
[ -e "${rules[0]}" ] || fail "no PrometheusRule rendered"
for f in "${rules[@]}"; do
  promtool check rules "$f" || fail "promtool check rules ($(basename "$f"))"
done

echo "== dashboard JSON parses"
for f in manifests/grafana/*.json manifests/overlays/monitoring/*.json; do
  python3 -m json.tool "$f" >/dev/null || fail "$f is not JSON"
  echo "$f: ok"
done
echo "== examples (Kubernetes ${k8s_versions[*]}, strict; the PyTorchJob parsed only)"
"$venv_python" scripts/validate-examples.py "${versions[@]}" manifests/examples/*.yaml \
  || fail "example validation"
echo "check-manifests: all passed"
