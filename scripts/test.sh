#!/usr/bin/env bash
# The test command (the README's second line; .ci/run calls exactly this).
# Installs what it needs, checks formatting and lints, then runs every test. Tests that need
# root (network namespaces) skip with a reason outside CI and must run in CI (CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
