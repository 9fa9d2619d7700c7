#!/usr/bin/env python3
"""Scale: studies per hour with 1, 2, 3 and 4 studies scored at once on this machine, and the
projection for a whole NLST-size archive (127,776 studies, DeepCAC2's count) on N batch
workers of this machine's size, from the measured per-study cost.

Each level runs C `cacd batch` shards (shard i/C, the Kubernetes job's own path) over the
same folder of STUDIES phantoms at NLST-like geometry (2.5 mm, about 200 mm of coverage),
each shard with max(1, cores / C) inference threads, and times the wall clock until the last
shard exits. Each level is run RUNS times (median, min-max).

    bench/scale/run.sh       (STUDIES=8 RUNS=3 ENGINE=tract LEVELS="1 2 3 4")
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDIES = int(os.environ.get("STUDIES", "8"))
RUNS = int(os.environ.get("RUNS", "3"))
ENGINE = os.environ.get("ENGINE", "tract")
LEVELS = [int(x) for x in os.environ.get("LEVELS", "1 2 3 4").split()]
CACD = os.path.abspath(os.environ.get("CACD", "target/release/cacd"))
NLST = 127_776


def main():
    ncpu = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="cacd-bench-scale.", dir=os.environ.get("BENCH_DIR", "/tmp")))
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    try:
        root = work / "archive"
        for i in range(STUDIES):
            subprocess.run([CACD, "phantom", "--out", str(root / f"s{i:02}"), "--seed", str(700000 + i),
                            "--burden", ["none", "low", "moderate", "high"][i % 4], "--thickness", "2.5"],
                           check=True, stdout=subprocess.DEVNULL)
        print(f"machine: {ncpu} cores, {model}; {STUDIES} studies of 512x512 at 2.5 mm; engine {ENGINE}; "
              f"{RUNS} runs per level")
        rows = []
        for c in LEVELS:
            threads = max(1, ncpu // c)
            walls = []
            for r in range(RUNS):
                out = work / f"out-{c}-{r}"
                t = time.perf_counter()
                procs = [subprocess.Popen([CACD, "batch", str(root), "--out", str(out), "--shard", f"{i}/{c}",
                                           "--engine", ENGINE, "--threads", str(threads)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(c)]
                errs = [p.communicate()[1] for p in procs]
                walls.append(time.perf_counter() - t)
                for p, e in zip(procs, errs):
                    if p.returncode != 0:
                        raise RuntimeError(f"batch shard failed: {e.decode(errors='replace')[-400:]}")
                done = sum(1 for _ in out.rglob("result.json"))
                if done != STUDIES:
                    raise RuntimeError(f"{done} of {STUDIES} studies have a result")
                shutil.rmtree(out)
            m, lo, hi = statistics.median(walls), min(walls), max(walls)
            rows.append((c, threads, m, lo, hi))
            print(f"{c} at once ({threads} threads each): {STUDIES} studies in {m:.1f} s ({lo:.1f}-{hi:.1f})")
        base = STUDIES / rows[0][2] * 3600
        print()
        print(f"{'at once':>7} {'threads':>7} {'studies/h':>10} {'(min-max)':>15} {'s/study':>8} {'vs 1':>6}")
        for c, th, m, lo, hi in rows:
            sph = STUDIES / m * 3600
            rng = f"({STUDIES / hi * 3600:.0f}-{STUDIES / lo * 3600:.0f})"
            print(f"{c:>7} {th:>7} {sph:>10.0f} {rng:>15} {m / STUDIES:>8.2f} {sph / base:>5.2f}x")
        best = max(rows, key=lambda r: STUDIES / r[2])
        sph = STUDIES / best[2] * 3600
        print()
        print(f"NLST projection ({NLST} studies) from the best level ({best[0]} at once, {sph:.0f} studies/h "
              f"per {ncpu}-core worker):")
        for n in (1, 10, 50, 100):
            print(f"  {n:>3} workers: {NLST / (sph * n):8.1f} h")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
