#!/usr/bin/env bash
# End-to-end latency (last C-STORE in → last result acknowledged by the receiver), split by
# stage, and the daemon's peak RSS, for 1.0 mm x 150, 2.5 mm x 80 and 1.0 mm x 500 studies
# with the tract and ONNX Runtime engines (see bench.py).
#
#   bench/latency/run.sh       (RUNS=3 QUIET=2 ENGINES="tract onnxruntime" CASES="1.0x150 2.5x80 1.0x500")
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_need_ort
bench_need_cmd /usr/bin/storescu dcmtk
bench_need_cmd /usr/bin/storescp dcmtk
[ -n "${CACD:-}" ] || cargo build --release -q -p cacd --features onnxruntime
exec python3 bench/latency/bench.py
