#!/usr/bin/env bash
# The whole pipeline on the GPU machine: `cacd score` (built with `cuda,tensorrt`) on one
# phantom three ways, and the three results compared.
#   1. the CPU path: CUDA hidden (CUDA_VISIBLE_DEVICES=""), ONNX Runtime CPU provider;
#   2. GPU preprocessing (the cudarc kernels inside the segmenter), same engine;
#   3. --engine tensorrt: TensorRT, else CUDA, else CPU provider, whichever the machine's
#      ONNX Runtime offers; the fallback must be logged and named in result.json.
# Pass: (1) and (2) give the same scores and lesions (the kernels are bit-identical to the
# CPU), (2) reports `model.preprocessing = "gpu"`, and (3) reports the engine it used.
# Also runs on a machine without a GPU (then (2) falls back to the CPU and says so).
#
#   bench/gpu/pipeline.sh CACD_BINARY [WORK_DIR [RESULTS_DIR]]
# RESULTS_DIR gets each run's result.json and log (not the 60 MB study).
set -uo pipefail
CACD="$1"
WORK="${2:-$(mktemp -d /tmp/cacd-gpu-pipeline.XXXXXX)}"
mkdir -p "$WORK"
export RUST_LOG="${RUST_LOG:-info}"
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  # The GPU machine's ONNX Runtime (../shared/GPU.md), else the wheel's here.
  for lib in /opt/torch/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*; do
    [ -f "$lib" ] && ORT_DYLIB_PATH="$lib"
  done
  [ -n "${ORT_DYLIB_PATH:-}" ] || ORT_DYLIB_PATH="$("$(dirname "$0")/../../scripts/ort-dylib" || true)"
  export ORT_DYLIB_PATH
fi
echo "ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-}"

"$CACD" phantom --out "$WORK/study" --seed 100777 --burden moderate --thickness 1.0 --slices 120 >/dev/null \
  || { echo "phantom failed"; exit 1; }
rc=0
run() {  # NAME ENV... -- ARGS...
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local t0=$EPOCHREALTIME
  env "${envs[@]}" "$CACD" score "$WORK/study" --out "$WORK/$name" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log"
  local r=$?
  awk -v n="$name" -v r="$r" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-10s rc=%d  %.2f s wall\n", n, r, b - a }'
  grep -iE "gpu|cuda|tensorrt|provider|fall" "$WORK/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220 | head -6 | sed 's/^/    /'
  [ "$r" -eq 0 ] || rc=1
}
run cpu CUDA_VISIBLE_DEVICES= -- --engine onnxruntime --precision int8
run gpu -- --engine onnxruntime --precision int8
run tensorrt -- --engine tensorrt --precision int8 --trt-cache "$WORK/trt-cache"

python3 - "$WORK" <<'PY' || rc=1
import json, os, sys
w = sys.argv[1]
res = {}
for name in ("cpu", "gpu", "tensorrt"):
    p = os.path.join(w, name, "result.json")
    res[name] = json.load(open(p)) if os.path.exists(p) else None
for name, r in res.items():
    if r is None:
        print(f"{name:<9} no result.json"); continue
    print(f"{name:<9} total {r['agatston_total']:9.3f}  lesions {len(r['lesions']):3d}  "
          f"engine {r['model']['engine']:<13} preprocessing {r['model'].get('preprocessing')}  ms {r['timings_ms']}")
ok = True
c, g = res["cpu"], res["gpu"]
if c and g:
    same = c["agatston_total"] == g["agatston_total"] and c["lesions"] == g["lesions"]
    print("cpu vs gpu preprocessing: " + ("IDENTICAL scores and lesions" if same else "DIFFERENT"))
    ok &= same
    ok &= c["model"].get("preprocessing") == "cpu"
    print(f"gpu run preprocessed on: {g['model'].get('preprocessing')}")
else:
    ok = False
t = res["tensorrt"]
if t:
    print(f"tensorrt run used engine {t['model']['engine']}; total differs from cpu by "
          f"{abs(t['agatston_total'] - c['agatston_total']) if c else float('nan'):.3f}")
else:
    ok = False
sys.exit(0 if ok else 1)
PY
if [ -n "${3:-}" ]; then
  for name in cpu gpu tensorrt; do
    mkdir -p "$3/$name"
    cp "$WORK/$name/result.json" "$3/$name/" 2>/dev/null
    cp "$WORK/$name.log" "$3/$name/score.log" 2>/dev/null
  done
fi
echo "pipeline check: $([ "$rc" -eq 0 ] && echo PASS || echo FAIL) (work dir $WORK)"
exit "$rc"
