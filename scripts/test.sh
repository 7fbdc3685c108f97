#!/usr/bin/env bash
# The test command (the README's second line; .ci/run calls exactly this).
# Installs what it needs, checks formatting and lints, then runs every test. Tests that need
# root (network namespaces) skip with a reason outside CI and must run in CI (CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== manifests: kustomize renders, schema validation, promtool, dashboard JSON"
scripts/check-manifests.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== fabric-sys against a libfabric outside pkg-config's view (LIBFABRIC_DIR, as /opt/amazon/efa)"
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
mkdir "$prefix/lib64"
ln -s /usr/include "$prefix/include"
ln -s /usr/lib/"$(gcc -print-multiarch)"/libfabric.so* "$prefix/lib64/"
# PKG_CONFIG=false: the build must not fall back to pkg-config.
LIBFABRIC_DIR=$prefix PKG_CONFIG=false cargo test -q -p fabric-sys --target-dir target/libfabric-dir

echo "== cargo test"
cargo test --workspace --no-fail-fast

echo "== libfabric 2.x: the fabric tests against Debian trixie's libfabric 2.1, built here and built there"
scripts/test-libfabric2.sh
