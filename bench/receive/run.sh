#!/usr/bin/env bash
# Receive throughput against DCMTK storescp and dicom-rs's dicom-storescp, with the loopback
# and fsync limits (see bench.py). Installs iperf3 and dicom-storescp when missing.
#
#   bench/receive/run.sh            (RUNS=5, SLICES=300 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v iperf3 >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 dcmtk; }
if ! command -v dicom-storescp >/dev/null; then
  cargo install --locked dicom-storescp --version 0.10.1
fi
[ -n "${CACD:-}" ] || cargo build --release -q -p cacd --all-features
exec python3 bench/receive/bench.py
