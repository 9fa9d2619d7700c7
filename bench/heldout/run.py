#!/usr/bin/env python3
"""cacd on the held-out phantom style (bench/heldout/generate.py), never used for training.

Generates K phantoms per burden (none/low/moderate/high) from fixed seeds, scores each with
`cacd score`, and compares result.json with the phantom's own truth.json.

    python3 bench/heldout/run.py [--per-burden 6] [--cacd target/release/cacd] [--keep DIR]
                                 [--seed-base 710000] [--json rows.json] [--below MM] [-- extra cacd score args]

Prints one row per phantom and the summary: risk-category agreement (a refused study counts as
a disagreement), Spearman rank correlation of the Agatston totals (scored studies), calcium-free
phantoms scored above 0, refusals. Exit 1 when agreement < 90 % or Spearman < 0.95.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate  # noqa: E402

BURDENS = ["none", "low", "moderate", "high"]
# 2.5 / 3 / 5 mm mostly, some thinner; rotated per burden so every burden sees every thickness
THICKNESSES = [2.5, 3.0, 5.0, 1.5, 2.5, 3.0, 5.0, 1.0, 3.0, 2.5, 5.0, 2.0]
SEED_BASE = 710000
TARGET_AGREEMENT = 0.90
TARGET_SPEARMAN = 0.95


def ranks(xs):
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
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va > 0 and vb > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-burden", type=int, default=6)
    ap.add_argument("--cacd", default="target/release/cacd", help="the cacd binary to evaluate")
    ap.add_argument("--seed-base", type=int, default=SEED_BASE, help="first seed - 1")
    ap.add_argument("--keep", help="keep phantoms and cacd outputs in this folder")
    ap.add_argument("--json", help="write the per-phantom rows here")
    ap.add_argument("--below", type=float,
                    help="diagnostic only: extend every study this far (mm) below the heart instead of the "
                         "seed's 5-45 mm (not the benchmark; shows scoring apart from the coverage gate)")
    ap.add_argument("extra", nargs="*", help="extra arguments for `cacd score` (after --)")
    args = ap.parse_args()
    cacd = os.path.abspath(args.cacd)
    if not os.path.exists(cacd):
        sys.exit(f"no cacd binary at {cacd} (build it with `cargo build --release`, or pass --cacd)")

    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="cacd-heldout-")
    os.makedirs(work, exist_ok=True)
    rows = []
    seed = args.seed_base
    hdr = (f"{'seed':>7} {'burden':8} {'mm':>5}  {'truth':>8} {'(cat)':9} {'cacd':>8} {'(cat)':9} "
           f"{'status':9} {'gen s':>5} {'score s':>7}")
    print(f"cacd: {cacd}")
    if args.below is not None:
        print(f"DIAGNOSTIC: coverage {args.below:g} mm below the heart (not the benchmark's default)")
    print(f"phantoms in: {work}")
    print(hdr)
    print("-" * len(hdr))
    t_all = time.time()
    for b_i, burden in enumerate(BURDENS):
        for i in range(args.per_burden):
            seed += 1
            th = THICKNESSES[(i + 3 * b_i) % len(THICKNESSES)]
            d = os.path.join(work, f"{burden}-{seed}")
            study, out = os.path.join(d, "study"), os.path.join(d, "out")
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.time()
            truth = generate.generate(study, seed, burden, th, below_mm=args.below)
            t1 = time.time()
            p = subprocess.run([cacd, "score", study, "--out", out] + args.extra, capture_output=True, text=True)
            t2 = time.time()
            row = dict(seed=seed, burden=burden, thickness=th, truth=truth["agatston_total"],
                       truth_cat=truth["risk_category"], truth_per_vessel=truth["per_vessel"],
                       gen_s=round(t1 - t0, 2), score_s=round(t2 - t1, 2))
            res_path = os.path.join(out, "result.json")
            if os.path.exists(res_path):
                res = json.load(open(res_path))
                row.update(status=res.get("status"), reason=res.get("reason"), cacd=res.get("agatston_total"),
                           cacd_cat=res.get("risk_category"), cacd_per_vessel=res.get("per_vessel"),
                           warnings=(res.get("quality") or {}).get("warnings"))
            else:
                row.update(status="error", reason=(p.stderr or p.stdout).strip()[-300:], cacd=None, cacd_cat=None)
            if p.returncode != 0 and row["status"] == "scored":
                row["status"] = f"rc{p.returncode}"
            rows.append(row)
            ct = "-" if row["cacd"] is None else f"{row['cacd']:8.1f}"
            cc = "-" if row["cacd_cat"] is None else f"({row['cacd_cat']})"
            print(f"{seed:7d} {burden:8s} {th:5.2f}  {row['truth']:8.1f} {'(' + row['truth_cat'] + ')':9s} "
                  f"{ct:>8} {cc:9s} {row['status']:9s} {row['gen_s']:5.1f} {row['score_s']:7.1f}", flush=True)
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)

    n = len(rows)
    scored = [r for r in rows if r["status"] == "scored" and r["cacd"] is not None]
    refused = [r for r in rows if r not in scored]
    agree = sum(1 for r in scored if r["cacd_cat"] == r["truth_cat"])
    agreement = agree / n if n else float("nan")
    agreement_scored = agree / len(scored) if scored else float("nan")
    rho = spearman([r["truth"] for r in scored], [r["cacd"] for r in scored])
    free = [r for r in rows if r["truth"] == 0]
    free_fp = [r for r in free if r in scored and r["cacd"] > 0]
    print()
    print(f"phantoms: {n} (seeds {args.seed_base + 1}..{seed}), scored {len(scored)}, refused {len(refused)}; "
          f"{time.time() - t_all:.0f} s in all")
    print(f"risk-category agreement: {100 * agreement:.1f} % ({agree}/{n}; a refusal counts as a miss)"
          f"; among scored: {100 * agreement_scored:.1f} %")
    print(f"Spearman of Agatston totals (scored): {rho:.4f}")
    print(f"calcium-free phantoms scored above 0: {len(free_fp)}/{len(free)}"
          + (f" (max {max(r['cacd'] for r in free_fp):.1f})" if free_fp else ""))
    print(f"refusals: {len(refused)}")
    reasons = {}
    for r in refused:
        reasons.setdefault((r.get("reason") or r["status"])[:120], []).append(r["seed"])
    for k, v in reasons.items():
        print(f"  {len(v):2d} x {k}  (seeds {', '.join(map(str, v))})")
    cats = ["0", "1-10", "11-100", "101-400", ">400"]
    print("confusion (rows truth, columns cacd; '-' refused):")
    print("          " + "".join(f"{c:>9s}" for c in cats + ["-"]))
    for tc in cats:
        line = [sum(1 for r in scored if r["truth_cat"] == tc and r["cacd_cat"] == cc) for cc in cats]
        line.append(sum(1 for r in refused if r["truth_cat"] == tc))
        print(f"{tc:>9s} " + "".join(f"{v:9d}" for v in line))
    ok = agreement >= TARGET_AGREEMENT and rho >= TARGET_SPEARMAN
    print(f"targets: agreement >= {100 * TARGET_AGREEMENT:.0f} %, Spearman >= {TARGET_SPEARMAN}:",
          "MET" if ok else "MISSED")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
