#!/usr/bin/env bash
# GPU preprocessing check on the GPU machine, from binaries built beforehand with
# bench/gpu/build.sh (that machine has no Rust toolchain). Run from the repository root:
#   bash bench/gpu/run.sh
# Steps: device facts, parity tests (GPU vs CPU), the CPU fallback without NVRTC, the bench
# (kernels vs copy bandwidth, CPU path, whole preprocessing), the PyTorch reference, and a
# side-by-side summary, then the whole pipeline (bench/gpu/pipeline.sh: `cacd score` with GPU
# preprocessing and with --engine tensorrt against the CPU path). Every step runs under
# `timeout`, a failing step does not stop the others, and the whole script stays inside
# 285 s. Logs and JSON go to $OUT (when set) or /tmp/cacd-gpu-bench.
set -u
cd "$(dirname "$0")/../.."
PACKED=bench/gpu/bin
RES="${OUT:-/tmp/cacd-gpu-bench}"
BIN=/tmp/cacd-gpu-bin
mkdir -p "$RES" "$BIN"
PY=/opt/torch/.venv/bin/python
[ -x "$PY" ] || PY=python3
CUDA_LIBS=/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=1
BUDGET=285
declare -a SUMMARY=()

# step NAME TIMEOUT_S CMD... : header, bounded run, status line; never exits the script.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -le 5 ]; then
    echo "== SKIP $name: time budget spent"
    SUMMARY+=("$name: skipped (budget)")
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo
  echo "=================================================================="
  echo "== $name   (limit ${limit}s, t=${SECONDS}s)"
  echo "=================================================================="
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$RES/$(echo "$name" | tr ' /' '__').log"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$name: ok (${took}s)")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    SUMMARY+=("$name: TIMED OUT after ${took}s")
  else
    SUMMARY+=("$name: FAILED rc=$rc (${took}s)")
  fi
  echo "-- $name: rc=$rc, ${took}s"
}

echo "cacd GPU preprocessing check, $(date -u +%FT%TZ), host $(hostname)"
for b in cacd-gpu-bench gpu_parity cacd; do
  if [ -f "$PACKED/$b.gz" ]; then
    gzip -dc "$PACKED/$b.gz" > "$BIN/$b" && chmod +x "$BIN/$b"
  elif [ -x "$PACKED/$b" ]; then
    cp "$PACKED/$b" "$BIN/$b"
  else
    echo "MISSING $PACKED/$b.gz: build it first with bench/gpu/build.sh (and carry bench/gpu/bin)"
  fi
done
ls -la "$BIN"

step "device" 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
step "parity tests" 90 "$BIN/gpu_parity" --test-threads=1 --nocapture
# libcuda present but NVRTC hidden: every test must skip with a reason, none may panic.
step "cpu fallback without nvrtc" 30 env LD_LIBRARY_PATH=/usr/local/nvidia/lib64 "$BIN/gpu_parity" --test-threads=1 --nocapture nothing_resident
step "bench" 120 "$BIN/cacd-gpu-bench" --reps 20 --cpu-reps 2 --json "$RES/bench.json" --config-out "$RES/config.json"
# The same on a phantom (bone and calcium cluster, as in a CT) with the crop on its heart.
step "bench phantom" 90 "$BIN/cacd-gpu-bench" --reps 20 --cpu-reps 1 --phantom 424242 --json "$RES/bench-phantom.json"
# The same two, each repetition queued behind an L2 flush and a spin kernel: the kernels'
# device time alone (no host launch latency between the events), from a cold L2.
step "bench queued" 90 "$BIN/cacd-gpu-bench" --reps 20 --cpu-reps 1 --timing queued --json "$RES/bench-queued.json"
step "bench phantom queued" 90 "$BIN/cacd-gpu-bench" --reps 20 --cpu-reps 1 --phantom 424242 --timing queued --json "$RES/bench-phantom-queued.json"
if [ -f "$RES/config.json" ]; then
  step "torch reference" 100 "$PY" bench/gpu/torch_ref.py --config "$RES/config.json" --json "$RES/torch.json"
else
  step "torch reference" 100 "$PY" bench/gpu/torch_ref.py --json "$RES/torch.json"
fi
step "summary" 15 "$PY" - "$RES/bench.json" "$RES/torch.json" "$RES/bench-phantom.json" "$RES/bench-queued.json" "$RES/bench-phantom-queued.json" <<'PYEOF'
import json, sys
def num(x):
    return float(x) if isinstance(x, (int, float)) else float("nan")  # null = failed measurement
try:
    ours = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no bench results: {e}")
try:
    torch_ms = json.load(open(sys.argv[2]))["torch_ms"]
except Exception as e:
    print(f"(no torch results: {e})")
    torch_ms = {}
def kernel_table(ours, what):
    copy = num(ours["copy"]["gbs"])
    print(f"{what}: device {ours['device']}, copy floor {copy:.0f} GB/s")
    print(f"{'kernel':<34}{'ms':>9}{'bytes':>9}{'% copy':>7}{'% same-size copy':>18}   target >= 60 %")
    for k in ours["kernels"]:
        pct = num(k["pct_of_copy"])
        same = k.get("pct_of_same_size_copy")
        same_txt = f"{num(same):>17.0f}%" if same is not None else " " * 18
        # Rows of kernel sets the product does not use (no " *") are for comparison only.
        compared = "H2D" in k["name"] or (any(v in k["name"] for v in ("Baseline", "Warp", "X2", "X4", "Rows", "Cells", "Mixed", "TwoPass")) and not k["name"].endswith("*"))
        flag = "" if compared else ("ok" if pct >= 60 else ("ok at size" if same is not None and num(same) >= 60 else "BELOW"))
        print(f"{k['name']:<34}{num(k['ms']):>9.4f}{num(k['bytes']) / 1e6:>7.1f}MB{pct:>6.0f}%{same_txt}   {flag}")
kernel_table(ours, "synthetic volume")
for path, what in [(sys.argv[3], "phantom volume"),
                   (sys.argv[4], "synthetic volume, queued timing (device time, cold L2)"),
                   (sys.argv[5], "phantom volume, queued timing (device time, cold L2)")]:
    try:
        print()
        r = json.load(open(path))
        kernel_table(r, what)
        if "late_queued_reps" in r:
            print(f"(queued repetitions enqueued later than half the spin: {r['late_queued_reps']})")
    except Exception as e:
        print(f"(no {what} results: {e})")
o = {key: num(v) for key, v in ours["ours_ms"].items()}
t = {key: num(v) for key, v in torch_ms.items()}
print(f"\n{'op':<16}{'cacd ms':>10}{'torch ms':>10}{'torch/cacd':>12}")
for op in ["copy", "rescale", "clip_normalise", "coarse", "fine", "mask"]:
    a, b = o.get(op, float("nan")), t.get(op, float("nan"))
    print(f"{op:<16}{a:>10.4f}{b:>10.4f}{b / a if a > 0 else float('nan'):>11.2f}x")
ours_dev = o["rescale"] + o["coarse"] + o["fine"] + o["mask"]
if "total" in t:
    print(f"{'device total':<16}{ours_dev:>10.4f}{t['total']:>10.4f}{t['total'] / ours_dev:>11.2f}x"
          "   (torch total includes its int16->float conversion)")
cpu = num(ours["cpu_ms"]["total"])
gpu_total, kern = num(ours["gpu_total_ms"]), num(ours["gpu_kernels_ms"])
print(f"\nCPU path {cpu:.1f} ms; GPU whole preprocessing {gpu_total:.2f} ms (wall, incl. transfers) "
      f"= {cpu / gpu_total:.1f}x (target >= 20x); kernels only {kern:.3f} ms = {cpu / kern:.0f}x")
print(f"parity at full size: {ours['parity']}")
PYEOF

# Last, so it never takes the kernels' time: whatever budget is left, at most 60 s.
step "pipeline" 60 bash bench/gpu/pipeline.sh "$BIN/cacd" /tmp/cacd-gpu-pipeline "$RES/pipeline"

# Nsight Compute on the product's gather kernels (phantom volume), where the machine has it and
# lets us read the counters: throughput, occupancy and warp stall reasons, for the next tuning.
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
if [ -n "$NCU" ]; then
  # One launch of a kernel after SKIP launches of it, on the phantom volume.
  NCU_ARGS=(--launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis
    --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats)
  BENCH_ARGS=("$BIN/cacd-gpu-bench" --reps 1 --cpu-reps 1 --phantom 424242 --timing queued)
  # 4 launches per measurement (3 warm-ups, 1 rep), kernel sets in GatherKernels::ALL order:
  # resample_input: Baseline coarse, Baseline fine, Mixed coarse, TwoPass coarse; resample_input_x4: WarpChunks
  # coarse, fine, WarpRows coarse, fine, Mixed fine, TwoPass fine; fine_to_native_rows: WarpRows,
  # Mixed; mask_scan, mask_label: TwoPass.
  step "profile coarse" 40 "$NCU" --kernel-name resample_input --launch-skip 9 "${NCU_ARGS[@]}" "${BENCH_ARGS[@]}"
  step "profile fine" 40 "$NCU" --kernel-name resample_input_x4 --launch-skip 17 "${NCU_ARGS[@]}" "${BENCH_ARGS[@]}"
  step "profile mask" 40 "$NCU" --kernel-name fine_to_native_rows --launch-skip 5 "${NCU_ARGS[@]}" "${BENCH_ARGS[@]}"
  step "profile mask scan" 40 "$NCU" --kernel-name mask_scan --launch-skip 1 "${NCU_ARGS[@]}" "${BENCH_ARGS[@]}"
  step "profile mask label" 40 "$NCU" --kernel-name mask_label --launch-skip 1 "${NCU_ARGS[@]}" "${BENCH_ARGS[@]}"
else
  echo "(no Nsight Compute on this machine: no profile)"
fi

echo
echo "=================================================================="
echo "== done in ${SECONDS}s; results in $RES"
for s in "${SUMMARY[@]}"; do echo "   $s"; done
