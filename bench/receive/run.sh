#!/usr/bin/env bash
# Receive throughput against DCMTK storescp and dicom-rs's dicom-storescp, with the loopback
# and fsync limits (see bench.py). Installs iperf3 and dicom-storescp when missing.
#
#   bench/receive/run.sh            (RUNS=5, SLICES=300 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_need_cmd /usr/bin/iperf3 iperf3
bench_need_cmd /usr/bin/storescu dcmtk
bench_need_cmd /usr/bin/storescp dcmtk
if ! command -v dicom-storescp >/dev/null; then
  echo "bench: installing dicom-storescp 0.10.1 (cargo install)" >&2
  cargo install --locked dicom-storescp --version 0.10.1 || bench_fail "cargo install dicom-storescp failed"
fi
[ -n "${CACD:-}" ] || cargo build --release -q -p cacd --features onnxruntime
exec python3 bench/receive/bench.py
