#!/usr/bin/env bash
# Builds the three binaries bench/gpu/run.sh runs on the GPU machine (which has no Rust
# toolchain) and puts them in bench/gpu/bin/ (git-ignored), gzipped: the bench, the parity
# tests and `cacd` itself (for bench/gpu/pipeline.sh).
# Run from anywhere on the build machine. Uses the workspace's --all-features build (the one
# the tests use, so nothing is rebuilt twice), which includes `cuda` (CUDA 13.0) and
# `tensorrt`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/gpu/bin
mkdir -p "$out"
cargo build --release --workspace --all-features --bins
target="${CARGO_TARGET_DIR:-target}"
cp "$target/release/cacd-gpu-bench" "$out/cacd-gpu-bench"
cp "$target/release/cacd" "$out/cacd"
# The integration-test executable's name carries a hash: ask cargo for it.
test_exe="$(cargo test --release --workspace --all-features --test gpu_parity --no-run \
    --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu_parity" and m.get("executable"):
        print(m["executable"])')"
[ -n "$test_exe" ] || { echo "could not find the gpu_parity test executable" >&2; exit 1; }
cp "$test_exe" "$out/gpu_parity"
# Debug info is not needed on the GPU machine, and small binaries copy there quickly:
# stripped and gzipped they are about 7, 7 and 15 MB; run.sh unpacks them.
strip "$out/cacd-gpu-bench" "$out/gpu_parity" "$out/cacd"
gzip -9f "$out/cacd-gpu-bench" "$out/gpu_parity" "$out/cacd"
ls -la "$out"
