#!/usr/bin/env bash
# Installs what a fresh machine needs beyond the Rust toolchain itself: the pinned toolchain's
# components and the wasm32-unknown-unknown target (contracts and treaty-core build for it).
# Safe to run repeatedly. Prints what it does and fails with a clear message if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^${toolchain}"; then
  echo "setup: installing Rust ${toolchain} (pinned in rust-toolchain.toml)"
  rustup toolchain install "${toolchain}" --profile minimal --component rustfmt,clippy ||
    { echo "setup: cannot install Rust ${toolchain}; install it with rustup and retry" >&2; exit 1; }
fi
if ! rustup target list --installed --toolchain "${toolchain}" | grep -q '^wasm32-unknown-unknown$'; then
  echo "setup: installing the wasm32-unknown-unknown target for ${toolchain}"
  rustup target add wasm32-unknown-unknown --toolchain "${toolchain}" ||
    { echo "setup: cannot install the wasm32-unknown-unknown target (needed to build contracts)." >&2
      echo "       Run 'rustup target add wasm32-unknown-unknown --toolchain ${toolchain}' with network access to the Rust distribution server." >&2
      exit 1; }
fi
