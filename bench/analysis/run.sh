#!/usr/bin/env bash
# Analysis benchmark (BENCHMARKS.md, "Analysis"): 10 M synthetic samples by default; pass a
# different count in millions as the first argument. Built in release mode.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
cargo bench -q -p planner --bench analysis -- "${1:-10}"
