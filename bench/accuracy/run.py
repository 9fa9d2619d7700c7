#!/usr/bin/env python3
"""Accuracy of `cacd score` on held-out phantoms (seeds never used in training: >= 100000).

For every burden level (none/low/moderate/high) and every slice thickness it generates phantoms
with `cacd phantom`, scores each with the int8 and the fp32 model (tract engine unless
--engine says otherwise), and compares result.json with truth.json.

Prints: risk-category agreement, Spearman rank correlation of Agatston, median relative error,
false positives on calcium-free phantoms, int8 vs fp32 differences. Exit 1 when a target is
missed (category agreement >= 95 %, Spearman >= 0.98, no calcium-free phantom above 10).

    python3 bench/accuracy/run.py [--per-burden 15] [--cacd target/release/cacd] [--keep DIR]

Model selection uses the same script on the trainer's held-out seeds, never on these:
    python3 bench/accuracy/run.py --seed-base 90000 --per-burden 4 --precisions fp32 --model-dir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

THICKNESSES = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
BURDENS = ["none", "low", "moderate", "high"]
SEED_BASE = 100000  # training uses seeds < 10000; evaluation never overlaps


def rank(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = rank(a), rank(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va > 0 and vb > 0 else float("nan")


def median(xs):
    s = sorted(xs)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-burden", type=int, default=15)
    ap.add_argument("--cacd", default="target/release/cacd")
    ap.add_argument("--engine", default="tract")
    ap.add_argument("--keep", help="keep phantoms and results here")
    ap.add_argument("--json", help="write per-phantom rows here")
    ap.add_argument("--model-dir", help="score with the models in this folder (default: the committed ones)")
    ap.add_argument("--seed-base", type=int, default=SEED_BASE,
                    help="first seed - 1 (the benchmark's 100000; 90000 for model selection)")
    ap.add_argument("--precisions", default="int8,fp32")
    args = ap.parse_args()
    precs = args.precisions.split(",")
    extra = ["--model-dir", args.model_dir] if args.model_dir else []

    work = args.keep or tempfile.mkdtemp(prefix="cacd-accuracy-")
    rows = []
    seed = args.seed_base
    for burden in BURDENS:
        for i in range(args.per_burden):
            th = THICKNESSES[i % len(THICKNESSES)]
            seed += 1
            d = os.path.join(work, f"{burden}-{seed}")
            run([args.cacd, "phantom", "--out", os.path.join(d, "dicom"), "--seed", str(seed),
                 "--burden", burden, "--thickness", str(th)])
            truth = json.load(open(os.path.join(d, "dicom", "truth.json")))
            row = {"seed": seed, "burden": burden, "thickness": th,
                   "truth": truth["agatston_total"], "truth_cat": truth["risk_category"]}
            for prec in precs:
                out = os.path.join(d, f"out-{prec}")
                run([args.cacd, "score", os.path.join(d, "dicom"), "--out", out,
                     "--engine", args.engine, "--precision", prec] + extra)
                res = json.load(open(os.path.join(out, "result.json")))
                row[prec] = res["agatston_total"]
                row[prec + "_cat"] = res["risk_category"]
            rows.append(row)
            print(f"seed {seed:6d} {burden:8s} {th:4.2f} mm  truth {row['truth']:8.1f} ({row['truth_cat']:>7s})"
                  + "".join(f"  {p} {row[p]:8.1f} ({row[p + '_cat']:>7s})" for p in precs), flush=True)
            if not args.keep:
                shutil.rmtree(os.path.join(d, "dicom"), ignore_errors=True)

    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    ok = True
    print()
    print(f"phantoms: {len(rows)} (seeds {args.seed_base + 1}..{seed}), engine {args.engine}")
    for prec in precs:
        agree = sum(r[prec + "_cat"] == r["truth_cat"] for r in rows) / len(rows)
        rho = spearman([r["truth"] for r in rows], [r[prec] for r in rows])
        rel = [abs(r[prec] - r["truth"]) / r["truth"] for r in rows if r["truth"] > 0]
        free = [r for r in rows if r["truth"] == 0]
        fp = [r[prec] for r in free if r[prec] > 0]
        worst = max([r[prec] for r in free], default=0.0)
        print(f"[{prec}] category agreement {100 * agree:.1f} %  Spearman {rho:.4f}  "
              f"median relative error {100 * median(rel):.1f} %  "
              f"calcium-free with score > 0: {len(fp)}/{len(free)} (max {worst:.1f})")
        if prec == precs[0]:
            ok &= agree >= 0.95 and rho >= 0.98 and worst <= 10.0
    if "int8" in precs and "fp32" in precs:
        diffs = [abs(r["int8"] - r["fp32"]) for r in rows]
        cat_diff = sum(r["int8_cat"] != r["fp32_cat"] for r in rows)
        print(f"int8 vs fp32: median |diff| {median(diffs):.2f}, max |diff| {max(diffs):.2f}, "
              f"category differs on {cat_diff}/{len(rows)}")
    print(f"targets ({precs[0]}): agreement >= 95 %, Spearman >= 0.98, calcium-free <= 10:",
          "MET" if ok else "MISSED")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
