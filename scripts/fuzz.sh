#!/usr/bin/env bash
# Runs one cargo-fuzz target (decoders of bytes from the network) for a while, after writing the seed corpus.
#
#   scripts/fuzz.sh TARGET [SECONDS] [extra libFuzzer flags...]
#   scripts/fuzz.sh signed_transaction 300
#   scripts/fuzz.sh list                      # the targets
#
# Targets: signed_transaction, filtered_transaction, public_key, wire_frame, signed_node_info (fuzz/fuzz_targets/).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The fuzz crate is
# not part of the main workspace and builds into fuzz/target, so it never locks the main build.
# The corpus (fuzz/corpus/TARGET) and crash artifacts (fuzz/artifacts/TARGET) are git-ignored.
# Environment: FUZZ_JOBS=N runs N libFuzzer jobs in parallel (default 1);
#              FUZZ_SANITIZER=none|address (default address).
set -euo pipefail

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(dirname "$(dirname "$self")")"
fuzz_dir="$root/fuzz"
cd "$fuzz_dir"

target="${1:-}"
if [[ -z "$target" || "$target" == "-h" || "$target" == "--help" ]]; then
    sed -n '2,13p' "$self" | sed 's/^# \{0,1\}//'
    exit 2
fi
if [[ "$target" == "list" ]]; then
    cargo +nightly fuzz list
    exit 0
fi
seconds="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))

if ! cargo +nightly fuzz list | grep -qx -- "$target"; then
    echo "unknown fuzz target '$target'; known:" >&2
    cargo +nightly fuzz list >&2
    exit 2
fi
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number, got '$seconds'" >&2; exit 2; }

export CARGO_TARGET_DIR="$fuzz_dir/target"

echo "==> writing seed corpus into fuzz/corpus/"
cargo +nightly run --quiet --example gen_seeds -- "$fuzz_dir/corpus"

jobs="${FUZZ_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"
mkdir -p "$fuzz_dir/artifacts/$target"
echo "==> fuzzing $target for ${seconds}s (jobs=$jobs, sanitizer=$sanitizer)"
job_flags=()
if (( jobs > 1 )); then
    job_flags=(-jobs="$jobs" -workers="$jobs")
fi
exec cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "$fuzz_dir/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "${job_flags[@]}" "$@"
