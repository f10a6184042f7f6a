#!/usr/bin/env bash
# A/B of `treaty bench flows` between builds of treaty, run alternately on this machine.
#
#   scripts/bench-ab.sh SCENARIO COUNT CONCURRENCY BINARY...
#   e.g. scripts/bench-ab.sh pay 4000 128 /tmp/treaty-before /tmp/treaty-after /tmp/treaty-before /tmp/treaty-after
#
# For each binary, in the order given: flows per second, latency p50/p99, CPU per flow of the
# whole run (the benchmark and its node processes, from /usr/bin/time), of each node process
# alone (Alice, Bob, the notary; from /proc/PID/stat just before it stops), and what Alice's
# node wrote per flow (bytes and write calls, from /proc/PID/io).
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,9p "$0"; exit 2; }
scenario=$1; count=$2; concurrency=$3; shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for bin in "$@"; do
  /usr/bin/time -f "%U %S" -o "$out/time" "$bin" bench flows --scenario "$scenario" --count "$count" \
    --concurrency "$concurrency" --json > "$out/json" 2> "$out/err" &
  run=$!
  alice=""
  for _ in $(seq 1 100); do
    alice=$(pgrep -f "$bin node run.*alice/node.toml" | head -1)
    [ -n "$alice" ] && break
    sleep 0.1
  done
  bob=""; notary=""
  wchar=0; syscw=0; ticks=0; bob_ticks=0; notary_ticks=0
  node_ticks() { local st; st=$(cat "/proc/$1/stat" 2>/dev/null) && awk '{print $12 + $13}' <<<"${st##*) }"; }
  while [ -n "$alice" ] && kill -0 "$alice" 2>/dev/null; do
    # Bob and the notary start after Alice: looked for until found.
    [ -z "$bob" ] && bob=$(pgrep -f "$bin node run.*bob/node.toml" | head -1)
    [ -z "$notary" ] && notary=$(pgrep -f "$bin node run.*notary/node.toml" | head -1)
    io=$(cat "/proc/$alice/io" 2>/dev/null) && {
      wchar=$(awk '/^wchar/ {print $2}' <<<"$io"); syscw=$(awk '/^syscw/ {print $2}' <<<"$io"); }
    t=$(node_ticks "$alice") && ticks=$t
    [ -n "$bob" ] && t=$(node_ticks "$bob") && bob_ticks=$t
    [ -n "$notary" ] && t=$(node_ticks "$notary") && notary_ticks=$t
    sleep 0.2
  done
  wait "$run"
  if [ ! -s "$out/json" ]; then
    echo "$bin: FAILED"; grep -v " INFO " "$out/err" | tail -3; continue
  fi
  python3 - "$bin" "$count" "$wchar" "$syscw" "$out" "$ticks" "$(getconf CLK_TCK)" "$bob_ticks" "$notary_ticks" <<'PY'
import json, sys
bin, n, wchar, syscw, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
per_flow = lambda ticks: 1000 * int(ticks) / int(sys.argv[7]) / n
d = json.load(open(f"{out}/json"))
user, system = map(float, open(f"{out}/time").read().split()[-2:])
print(f"{bin}: {d['flows_per_sec']:.1f}/s p50 {d['latency_ms_p50']:.0f} ms p99 {d['latency_ms_p99']:.0f} ms, "
      f"CPU {1000 * (user + system) / n:.2f} ms/flow (Alice {per_flow(sys.argv[6]):.2f}, Bob {per_flow(sys.argv[8]):.2f}, "
      f"notary {per_flow(sys.argv[9]):.2f}), Alice wrote {wchar / n / 1024:.1f} KiB in {syscw / n:.1f} calls per flow")
PY
done
