#!/usr/bin/env bash
# Times `cacd score` on a 512×512×300 phantom (1 mm, the whole chest: the heart stage and quality
# gate run as on a patient) with both engines and both precisions:
# wall time (hyperfine, several runs), per-stage milliseconds (result.json timings_ms) and
# peak RSS (/usr/bin/time -v). Targets on the 2-core dev machine: <= 10 s wall, <= 1.5 GB RSS.
#
#   bench/score-speed/run.sh            (builds target/release/cacd with --features onnxruntime;
#                                        CACD=path times another binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
CACD=${CACD:-target/release/cacd}
RUNS=${RUNS:-5}
work=$(mktemp -d /tmp/cacd-speed.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/lib.sh
bench_need_ort
bench_need_cmd /usr/bin/hyperfine hyperfine
bench_need_cmd /usr/bin/time time
if [ "$CACD" = target/release/cacd ]; then
  cargo build --release -q -p cacd --features onnxruntime
fi
[ -x "$CACD" ] || bench_fail "no cacd binary at $CACD"
"$CACD" phantom --out "$work/study" --seed 100777 --burden moderate --thickness 1.0 --slices 300 >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "study: 512x512x300, 1.0 mm, $(du -sh "$work/study" | cut -f1)"
for engine in tract onnxruntime; do
  for prec in int8 fp32; do
    out="$work/out-$engine-$prec"
    if ! "$CACD" score "$work/study" --out "$out" --engine $engine --precision $prec >/dev/null 2>"$work/err"; then
      echo "$engine/$prec: skipped: $(tail -n1 "$work/err")"; continue
    fi
    rss=$( { /usr/bin/time -v "$CACD" score "$work/study" --out "$out" --engine $engine --precision $prec >/dev/null; } 2>&1 | awk -F: '/Maximum resident/{print $2}' | xargs)
    status=$(python3 -c "import json; print(json.load(open('$out/result.json'))['status'])")
    [ "$status" = scored ] || bench_fail "$engine/$prec: the study was not scored ($status): the timing would not be of scoring"
    stages=$(python3 -c "import json,sys; t=json.load(open('$out/result.json'))['timings_ms']; print(' '.join(f'{k} {v}' for k,v in t.items()))")
    hyperfine --runs "$RUNS" --warmup 1 --export-json "$work/h.json" \
      "$CACD score $work/study --out $out --engine $engine --precision $prec" >/dev/null
    wall=$(python3 -c "import json; r=json.load(open('$work/h.json'))['results'][0]; print(f\"median {r['median']:.2f} s (min {r['min']:.2f}, max {r['max']:.2f}, {len(r['times'])} runs)\")")
    echo "$engine/$prec: wall $wall; peak RSS $((rss / 1024)) MB; stages ms: $stages"
  done
done
