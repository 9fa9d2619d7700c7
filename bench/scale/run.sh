#!/usr/bin/env bash
# Scale: studies/hour with 1-4 studies scored at once (`cacd batch` shards) and the projection
# for an NLST-size archive on N workers (see bench.py).
#
#   bench/scale/run.sh        (STUDIES=8 RUNS=3 ENGINE=tract LEVELS="1 2 3 4")
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH="$(python3 -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])' 2>/dev/null || true)"
  export ORT_DYLIB_PATH
fi
[ -n "${CACD:-}" ] || cargo build --release -q -p cacd --all-features
exec python3 bench/scale/bench.py
