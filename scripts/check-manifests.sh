#!/usr/bin/env bash
# Checks the deployment manifests offline (scripts/test.sh runs it; scripts/setup.sh installs
# kubectl, kubernetes-validate and the Prometheus Operator schema package it uses):
#
# 1. the monitoring overlay's generated files match their sources (gen-prometheusrule.py);
# 2. `kubectl kustomize` renders the base, every overlay, and the EFA overlay with each
#    component and with all of them; the Helm chart (charts/efaprobe) passes `helm lint
#    --strict`, its appVersion is the workspace's version, and `helm template` renders for the
#    same choices the same objects (compare-chart.py), from the chart directory and from the
#    package `helm package` makes; its default values are rendered too;
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
for tool in kubectl helm promtool node python3; do
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

echo "== helm chart ($(helm version --template '{{.Version}}'))"
chart=charts/efaprobe
version=$(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)
app_version=$(awk -F'"' '/^appVersion:/ {print $2}' "$chart/Chart.yaml")
[ "$app_version" = "$version" ] || fail "$chart/Chart.yaml: appVersion $app_version, the workspace is $version"
# helm says on stderr that it follows the chart's links to the rules and the dashboard
# (files/): expected, see the chart's README; anything else it says is shown.
helm_quiet() {
  "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}
# Each component's chart values; a component without them fails here.
declare -A component_values=(
  [efa-device-resource]=fabric.deviceAccess=deviceResource
  [efa-host-libfabric]=fabric.hostLibfabric=true
  [host-network]=hostNetwork=true
  [network-policy]=networkPolicy.enabled=true
)
efa_values=fabric.provider=efa
monitoring_values=$efa_values,monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true
all_values=$efa_values
# NAME=VALUES: NAME is the kustomize render the chart must match; the base takes no values.
pairs=(base= overlay-efa=$efa_values overlay-monitoring=$monitoring_values)
for c in "${components[@]}"; do
  [ -n "${component_values[$c]:-}" ] || fail "manifests/components/$c has no chart values in check-manifests.sh (add them to the chart)"
  pairs+=("efa+$c=$efa_values,${component_values[$c]}")
  all_values+=,${component_values[$c]}
done
pairs+=("efa+all-components=$all_values")
helm_quiet helm lint --strict "$chart" >"$out/helm-lint.log" || { cat "$out/helm-lint.log" >&2; fail "helm lint $chart"; }
helm_quiet helm lint --strict "$chart" --set "$monitoring_values" >"$out/helm-lint.log" \
  || { cat "$out/helm-lint.log" >&2; fail "helm lint $chart (EFA and monitoring values)"; }
echo "helm lint --strict: ok (default values; EFA and monitoring values)"
helm_render() { # NAME CHART [--set VALUES]
  local name=$1 from=$2; shift 2
  helm_quiet helm template efaprobe "$from" --namespace efaprobe "$@" >"$out/chart-$name.yaml" \
    || fail "helm template $from $* ($name)"
  echo "rendered chart-$name: $(grep -c '^kind:' "$out/chart-$name.yaml") objects"
}
helm_render defaults "$chart"
# The values no overlay has, so their templates are validated too.
helm_render ip-only-tuned "$chart" --set 'fabric.provider=none,probe.interval=10s,probe.timeout=2s,probe.budget=50,perPeerMetrics=unhealthy,discovery.peerGrace=1m,targets={nats=nats.system:4222,prom=prometheus.monitoring:9090},nodeSelector.efaprobe\.example/pool=gpu'
# One node action on alone: its ClusterRole must grant exactly that action's verbs (invariants).
helm_render efa-condition-only "$chart" --set 'fabric.provider=efa,nodeActions.events=false,nodeActions.startupTaintGate=false'
compare=()
for pair in "${pairs[@]}"; do
  name=${pair%%=*} values=${pair#*=}
  # The kustomize renders include the Namespace; the chart renders it on request.
  helm_render "$name" "$chart" --set "namespace.create=true${values:+,$values}"
  compare+=("$name=$out/$name.yaml:$out/chart-$name.yaml")
done
mkdir "$out/package"
helm_quiet helm package "$chart" --destination "$out/package" >/dev/null || fail "helm package $chart"
package=$(echo "$out"/package/efaprobe-*.tgz)
for f in files/efaprobe-rules.yml files/efaprobe-dashboard.json; do
  tar -tvzf "$package" "efaprobe/$f" | grep -q '^-' || fail "$package: efaprobe/$f is not a regular file"
done
mkdir "$out/from-package"
helm template efaprobe "$package" --namespace efaprobe --set "namespace.create=true,$monitoring_values" \
  >"$out/from-package/chart-monitoring.yaml" || fail "helm template $package"
python3 scripts/compare-chart.py "${compare[@]}" \
  "package=$out/chart-overlay-monitoring.yaml:$out/from-package/chart-monitoring.yaml" \
  || fail "the chart and the kustomize manifests render different objects (or the package differs)"

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
