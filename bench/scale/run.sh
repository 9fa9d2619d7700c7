#!/usr/bin/env bash
# Scale: studies/hour with 1-4 studies scored at once (`cacd batch` shards) and the projection
# for an NLST-size archive on N workers (see bench.py).
#
#   bench/scale/run.sh        (STUDIES=8 RUNS=3 ENGINE=tract LEVELS="1 2 3 4")
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_need_ort
[ -n "${CACD:-}" ] || cargo build --release -q -p cacd --features onnxruntime
exec python3 bench/scale/bench.py
