#!/usr/bin/env bash
# timesync accuracy on the lab (root, `ci/lab up`): reflectors on metal1, metal2 (native XDP) and
# vm1 (generic XDP, behind the lab's user-space relay), then `timesync probe` from the manager for
# DURATION seconds (default 60) at RATE Hz (default 50), twice: with the true offset zero (shared
# kernel) and with the reflector's test switch (+1.234567 s, +20 ppm) on metal1.
# Prints `timesync summarize` output: |offset error| p50/p99/max per domain, fits outside their
# bound, convergence time (first fit after which every fit is within 5 µs), drift error after 30 s,
# probe bandwidth. Holds the lab lock like the lab tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-60}
RATE=${RATE:-50}
BIN=${LATPLAN_ARTIFACTS:-$root/target/x86_64-unknown-linux-musl/release}/timesync
STATE=${LATPLAN_STATE:-/var/lib/latplan-ci}
OUT=${OUT:-$(mktemp -d)}
[ "$(id -u)" = 0 ] || { echo "bench/timesync/run.sh needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release --target x86_64-unknown-linux-musl -p timesync" >&2; exit 1; }
"$root/ci/lab" status >/dev/null || { echo "the lab is not up: ci/lab up" >&2; exit 1; }

exec 9>"$STATE/test.lock"
flock 9

pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT
token=$(printf '%x' "$(( $(date +%s%N) & 0xffffffffffff | 1 ))")

reflect() { # NETNS IF OUTFILE ARGS...
  local ns=$1 ifc=$2 out=$3; shift 3
  ip netns exec "$ns" "$BIN" reflect --interface "$ifc" --token "$token" "$@" >"$out" &
  pids+=($!)
}
wait_ready() { for f in "$@"; do for _ in $(seq 50); do [ -s "$f" ] && break; sleep 0.1; done; [ -s "$f" ] || { echo "reflector did not start ($f)" >&2; exit 1; }; done; }

echo "== shared clock (true offset 0), ${DURATION} s at ${RATE} Hz"
reflect lp-metal1 mgmt0 "$OUT/r-metal1.json" --mode native
reflect lp-metal2 mgmt0 "$OUT/r-metal2.json" --mode native
reflect lp-vm1 eth0 "$OUT/r-vm1.json"
wait_ready "$OUT/r-metal1.json" "$OUT/r-metal2.json" "$OUT/r-vm1.json"
"$BIN" probe --token "$token" --rate "$RATE" --duration "$DURATION" \
  --target metal1=10.77.0.11 --target metal2=10.77.0.12 --target vm1=10.77.1.2 >"$OUT/shared.jsonl"
"$BIN" summarize <"$OUT/shared.jsonl" | tee "$OUT/shared.summary.json"
stop

echo "== test switch on metal1: +1.234567 s, +20 ppm, ${DURATION} s at ${RATE} Hz"
reflect lp-metal1 mgmt0 "$OUT/r-switch.json" --mode native --test-offset-ns 1234567000 --test-drift-ppm 20
wait_ready "$OUT/r-switch.json"
ref=$(jq -r .test_ref_ns "$OUT/r-switch.json")
"$BIN" probe --token "$token" --rate "$RATE" --duration "$DURATION" --target metal1=10.77.0.11 >"$OUT/switch.jsonl"
"$BIN" summarize --test-offset-ns 1234567000 --test-drift-ppm 20 --test-ref-ns "$ref" <"$OUT/switch.jsonl" \
  | tee "$OUT/switch.summary.json"
stop
echo "raw output in $OUT"
