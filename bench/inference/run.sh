#!/usr/bin/env bash
# Inference: the committed calcium segmenter (the network that dominates a study's time) on its
# full 4×64×192×192 input, in cacd's engines (tract and ONNX Runtime, fp32 and int8) and in
# PyTorch eager (the peer a research pipeline uses: the same fp32 ONNX graph converted with
# onnx2torch), all on the same CPU with the same thread count. Median of RUNS runs after one
# warm-up. Target (issue 8): cacd's best engine >= 2x PyTorch.
#
# PyTorch also runs the graph as torch.onnx exported it, before models/training/graph.py
# rewrote its Softmax and Resize (from git, commit 9a48213, the same weights), so the
# comparison shows whether the rewrite slowed the peer; ratios are to the faster PyTorch.
#
#   bench/inference/run.sh            (THREADS=2 RUNS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
RUNS=${RUNS:-5}
. bench/lib.sh
bench_need_ort
bench_need_py torch torch
bench_need_py onnx2torch onnx2torch
bench_need_py onnx onnx
command -v git >/dev/null || bench_fail "git is needed (the graph as exported comes from the history)"
cargo build --release -q -p cacd-models --features onnxruntime --example probe
PROBE=target/release/examples/probe
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $THREADS; $RUNS runs each"
# The committed segmenter's class count (1.4.0 has six), for the probe's output check.
LABELS=$(python3 -c 'import tomllib; m = tomllib.load(open("models/manifest.toml", "rb")); print(len(next(e for e in m["model"] if e["role"] == "calcium")["labels"]))')
declare -A med
for engine in tract ort; do
  for prec in fp32 int8; do
    line=$("$PROBE" "models/calcium_$prec.onnx" 4 64 192 192 --engine $engine --threads "$THREADS" --labels "$LABELS" --runs "$RUNS" | grep 'timed runs')
    med[$engine/$prec]=$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$line")
    echo "cacd $engine/$prec: $line"
  done
done
EXPORTED=$(mktemp --suffix=.onnx)
trap 'rm -f "$EXPORTED"' EXIT
git show 9a48213:models/calcium_fp32.onnx > "$EXPORTED"
torch_run() {
python3 - "$THREADS" "$RUNS" "$1" <<'PY'
import sys, time, statistics
import numpy as np, onnx, torch
from onnx2torch import convert
threads, runs = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
net = convert(onnx.load(sys.argv[3])).eval()
n = 4 * 64 * 192 * 192
# The probe's deterministic input pattern.
i = np.arange(n, dtype=np.uint64)
x = ((i * np.uint64(2654435761)) % np.uint64(1 << 32)).astype(np.float64) / 4294967296.0 * 4.0 - 2.0
x = torch.from_numpy(x.astype(np.float32).reshape(1, 4, 64, 192, 192))
with torch.inference_mode():
    net(x)
    ms = []
    for _ in range(runs):
        t = time.perf_counter(); net(x); ms.append((time.perf_counter() - t) * 1e3)
ms.sort()
print(f"timed runs: {runs}, median {ms[runs // 2]:.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms (torch {torch.__version__})")
PY
}
# cacd's ONNX Runtime on the graph as exported, for the before/after of the rewrite (1.2.0's
# weights: five classes).
line=$("$PROBE" "$EXPORTED" 4 64 192 192 --engine ort --threads "$THREADS" --labels 5 --runs "$RUNS" | grep 'timed runs')
ort_exported=$(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$line")
echo "cacd ort/fp32, graph as exported: $line"
torch_line=$(torch_run models/calcium_fp32.onnx)
torch_exported_line=$(torch_run "$EXPORTED")
echo "pytorch eager/fp32: $torch_line"
echo "pytorch eager/fp32, graph as exported: $torch_exported_line"
torch_med=$(python3 -c "print(min($(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$torch_line"), $(sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$torch_exported_line")))")
echo
printf '%-22s %12s %14s\n' engine "median ms" "vs PyTorch"
for k in tract/fp32 tract/int8 ort/fp32 ort/int8; do
  printf '%-22s %12s %13.2fx\n' "cacd $k" "${med[$k]}" "$(python3 -c "print($torch_med / ${med[$k]})")"
done
printf '%-22s %12s %13.2fx\n' "cacd ort/fp32 exported" "$ort_exported" "$(python3 -c "print($torch_med / $ort_exported)")"
printf '%-22s %12s %13.2fx\n' "pytorch eager/fp32" "$torch_med" 1
