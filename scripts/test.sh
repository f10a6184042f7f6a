#!/usr/bin/env bash
# The whole test suite, as the README names it and CI runs it:
#   set-up check → wasm32 build of treaty-core → every test of every crate (nextest when
#   installed, cargo test otherwise). Exits non-zero if anything fails and ends with the test
#   runner's summary. Pass --lint to also run rustfmt and clippy (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

lint=0
[ "${1:-}" = "--lint" ] && lint=1

scripts/setup.sh

if [ "$lint" = 1 ]; then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy (all targets, warnings are errors)"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "== treaty-core builds for wasm32-unknown-unknown (contracts depend on it)"
cargo build -p treaty-core --target wasm32-unknown-unknown --no-default-features --locked

echo "== tests"
# A throw-away PostgreSQL for treaty-storage's tests (they fail rather than skip without it).
pg_env=$(scripts/pg.sh start)
eval "$pg_env"
trap 'scripts/pg.sh stop' EXIT
export TREATY_TEST_POSTGRES_URL TREATY_REQUIRE_POSTGRES=1
# A Python with grpcio for the test that drives a node's RPC from Python.
TREATY_PYTHON=$(scripts/python-env.sh)
export TREATY_PYTHON TREATY_REQUIRE_PYTHON=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
