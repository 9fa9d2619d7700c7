#!/usr/bin/env python3
"""Calibrates the refine stage's two thresholds for a calcium model on held-out phantoms.

cacd drops a lesion when the segmenter's mean probability over it is below
`min_lesion_confidence`, or when its peak stands out from its surroundings by less than
`min_lesion_contrast_sigma` times the study's noise (appliance/src/refine.rs). Both live in
the model's manifest. This script scores phantoms with both rules off (a copy of the model
folder with the two keys removed), reads each lesion's `confidence` and `contrast_hu` and the
study's `quality.noise_hu` from result.json, and replays every pair of thresholds on a grid:
dropping whole lesions is exactly what the rules do, so no re-scoring is needed.

The pair chosen maximises the category agreement averaged over the pair and its grid
neighbours (a lone lucky cell is not chosen), then Spearman. Use the model-selection seeds
(90001+), never the benchmark's (100001+):

    python3 bench/accuracy/calibrate.py --engine onnxruntime --precision int8 --keep /tmp/cal

then write the pair into models/manifest.toml (or pass it to models/training/export.py) and
measure the result once with bench/accuracy/run.py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BURDENS, THICKNESSES, median, run, spearman  # noqa: E402

CONFIDENCES = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
CONTRASTS = [0.0, 3.0, 4.0, 5.0, 5.5, 6.0, 6.5, 7.0, 8.0, 9.0, 10.0, 12.0]
# Manifest lines removed to score with the rules off (by prefix: the second also removes
# min_lesion_contrast_sigma_large).
KEYS = ("min_lesion_confidence", "min_lesion_contrast_sigma", "large_lesion_area_mm2")


def category(total):
    if total <= 0:
        return "0"
    if total <= 10:
        return "1-10"
    if total <= 100:
        return "11-100"
    if total <= 400:
        return "101-400"
    return ">400"


def models_without_rules(src, dst):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "manifest.toml")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(l for l in lines if not l.startswith(KEYS)) + "\n")


def calcium_sha(model_dir, precision):
    """sha256 of the calcium model at `precision`, from the manifest."""
    with open(os.path.join(model_dir, "manifest.toml"), "rb") as f:
        models = tomllib.load(f)["model"]
    for m in models:
        if m["role"] == "calcium" and m["precision"] == precision:
            return m["sha256"]
    sys.exit(f"no calcium model at precision {precision} in {model_dir}")


# The large-lesion tier (min_lesion_contrast_sigma_large for lesions of at least
# large_lesion_area_mm2): searched jointly with the two grids above by --two-tier, see main().
LARGE_SIGMAS = [4.0, 4.5, 5.0, 5.5, 6.0, 6.5]
LARGE_AREAS = [1.5, 2.0, 3.0, 4.0, 6.0]


def replay(studies, min_conf, min_sigma, large_sigma=0.0, large_area=0.0):
    truth, pred, agree, free_max = [], [], 0, 0.0
    for t, r in studies:
        noise = r["quality"].get("noise_hu")
        total = 0.0
        for lesion in r["lesions"]:
            if lesion["confidence"] < min_conf:
                continue
            sigma = min_sigma
            if large_sigma > 0 and lesion["area_mm2"] >= large_area:
                sigma = large_sigma
            if noise is not None and lesion["contrast_hu"] < sigma * noise:
                continue
            total += lesion["agatston"]
        truth.append(t["agatston_total"])
        pred.append(total)
        agree += category(total) == t["risk_category"]
        if t["agatston_total"] <= 0:
            free_max = max(free_max, total)
    rel = [abs(p - t) / t for p, t in zip(pred, truth) if t > 0]
    return {"agreement": agree / len(studies), "spearman": spearman(truth, pred),
            "median_rel": median(rel), "free_max": free_max}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-burden", type=int, default=15)
    ap.add_argument("--seed-base", type=int, default=90000)
    ap.add_argument("--sets", help="several phantom sets at once: SEED_BASE:PER_BURDEN,... "
                    "(e.g. 90000:30,91000:60); replaces --seed-base and --per-burden")
    ap.add_argument("--cacd", default="target/release/cacd")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--models", default="models", help="model folder to calibrate")
    ap.add_argument("--keep", help="keep phantoms and results here (and reuse them)")
    ap.add_argument("--two-tier", action="store_true",
                    help="also search a lower contrast threshold for lesions above an area")
    ap.add_argument("--phantoms-only", action="store_true",
                    help="only write the phantoms into --keep (e.g. niced, while the model trains)")
    args = ap.parse_args()
    if args.phantoms_only and not args.keep:
        sys.exit("--phantoms-only needs --keep")
    sets = ([tuple(int(v) for v in part.split(":")) for part in args.sets.split(",")] if args.sets
            else [(args.seed_base, args.per_burden)])
    if any(base + 4 * n > 100000 for base, n in sets):
        sys.exit("seeds >= 100001 are the benchmark's; calibrate on 90000+")

    work = args.keep or tempfile.mkdtemp(prefix="cacd-calibrate-")
    os.makedirs(work, exist_ok=True)
    # One folder per calibrated model, so runs for two models can share --keep at once.
    model_dir = os.path.join(work, "models-no-rules-" + os.path.basename(os.path.abspath(args.models)))
    shutil.rmtree(model_dir, ignore_errors=True)
    models_without_rules(args.models, model_dir)
    tag = calcium_sha(model_dir, args.precision)[:12]

    studies = []
    for seed, burden, i in ((base + b * per + i + 1, burden, i) for base, per in sets
                            for b, burden in enumerate(BURDENS) for i in range(per)):
        d = os.path.join(work, f"{burden}-{seed}")
        # Phantoms are reused across runs; results are kept per model (its calcium sha256).
        out = os.path.join(d, f"out-{args.engine}-{args.precision}-{tag}")
        if not os.path.exists(os.path.join(d, "dicom", "truth.json")):
            run([args.cacd, "phantom", "--out", os.path.join(d, "dicom"), "--seed", str(seed),
                 "--burden", burden, "--thickness", str(THICKNESSES[i % len(THICKNESSES)])])
        if args.phantoms_only:
            continue
        if not os.path.exists(os.path.join(out, "result.json")):
            run([args.cacd, "score", os.path.join(d, "dicom"), "--out", out, "--engine", args.engine,
                 "--precision", args.precision, "--model-dir", model_dir])
        studies.append((json.load(open(os.path.join(d, "dicom", "truth.json"))),
                        json.load(open(os.path.join(out, "result.json")))))
        print(f"seed {seed}: scored", flush=True)
    if args.phantoms_only:
        return

    grid = {(c, s): replay(studies, c, s) for c in CONFIDENCES for s in CONTRASTS}

    def smoothed(ci, si):
        cells = [grid[(CONFIDENCES[a], CONTRASTS[b])]["agreement"]
                 for a in range(max(0, ci - 1), min(len(CONFIDENCES), ci + 2))
                 for b in range(max(0, si - 1), min(len(CONTRASTS), si + 2))]
        return sum(cells) / len(cells)

    ranges = ", ".join(f"{base + 1}..{base + 4 * per}" for base, per in sets)
    print(f"\n{len(studies)} phantoms (seeds {ranges}), {args.engine} {args.precision}")
    print("category agreement (%) by min_lesion_confidence (rows) and min_lesion_contrast_sigma (columns)")
    print("conf \\ sigma " + "".join(f"{s:>7.1f}" for s in CONTRASTS))
    for c in CONFIDENCES:
        print(f"{c:>12.2f} " + "".join(f"{100 * grid[(c, s)]['agreement']:>7.1f}" for s in CONTRASTS))
    best = max(((ci, si) for ci in range(len(CONFIDENCES)) for si in range(len(CONTRASTS))),
               key=lambda k: (round(smoothed(*k), 6), grid[(CONFIDENCES[k[0]], CONTRASTS[k[1]])]["spearman"]))
    c, s = CONFIDENCES[best[0]], CONTRASTS[best[1]]
    off, m = grid[(0.0, 0.0)], grid[(c, s)]
    for name, r in (("rules off", off), (f"chosen: confidence {c}, contrast {s} sigma", m)):
        print(f"{name}: agreement {100 * r['agreement']:.1f} %, Spearman {r['spearman']:.4f}, median relative "
              f"error {100 * r['median_rel']:.1f} %, calcium-free max {r['free_max']:.1f}")
    print(f"manifest (calcium entries): min_lesion_confidence = {c}\n"
          f"                            min_lesion_contrast_sigma = {s}")

    # Second tier: a lesion of at least `area` mm² needs only `low` σ. Faint true plaques are
    # larger than the 2–4-pixel noise blobs the contrast rule is for. Searched over the
    # confidence and small-lesion σ grid too (the tier shifts the best small-lesion σ), with
    # the same smoothing over every neighbouring cell in all four dimensions.
    if args.two_tier:
        dims = [CONFIDENCES, CONTRASTS, LARGE_SIGMAS, LARGE_AREAS]
        cells = {}
        for k in ((a, b, x, y) for a in range(len(dims[0])) for b in range(len(dims[1]))
                  for x in range(len(dims[2])) for y in range(len(dims[3]))):
            conf, small, low, area = (d[i] for d, i in zip(dims, k))
            if low >= small:
                continue
            cells[k] = replay(studies, conf, small, low, area)

        def smoothed4(k):
            near = [cells[n] for n in cells if all(abs(n[i] - k[i]) <= 1 for i in range(4))]
            return sum(r["agreement"] for r in near) / len(near)

        best4 = max(cells, key=lambda k: (round(smoothed4(k), 6), cells[k]["agreement"], cells[k]["spearman"]))
        conf, small, low, area = (d[i] for d, i in zip(dims, best4))
        r = cells[best4]
        print(f"two tiers: confidence {conf}, contrast {small} sigma, {low} sigma from {area} mm2: agreement "
              f"{100 * r['agreement']:.1f} % (smoothed {100 * smoothed4(best4):.1f} %), Spearman "
              f"{r['spearman']:.4f}, median relative error {100 * r['median_rel']:.1f} %, calcium-free max "
              f"{r['free_max']:.1f}")
        print(f"manifest (calcium entries): min_lesion_confidence = {conf}\n"
              f"                            min_lesion_contrast_sigma = {small}\n"
              f"                            min_lesion_contrast_sigma_large = {low}\n"
              f"                            large_lesion_area_mm2 = {area}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
