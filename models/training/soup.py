"""Averages the weights of fine-tuning runs that started from the same weights (a "model soup").

    python3 soup.py --out RUN RUN_A RUN_B [RUN_C ...]

Each RUN_* holds a `calcium.pt` fine-tuned from one common start (here: 1.4.0 rebuilt by
recover.py, BatchNorm frozen, so every run keeps the same normalisation statistics and only
convolution weights and BatchNorm shifts differ). Runs that start together stay in one basin,
where the average of their weights is itself a good network that keeps what each learnt; the
calcium segmenter 1.5.0 is the soup of three runs that differ in their real-background crops
and non-coronary weight (README.md). Writes RUN/calcium.pt and RUN/metrics.json (the first
run's seed lists, which export.py reads, plus the soup's members).
"""

import argparse
import json
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("a soup needs two runs or more")
    states = [torch.load(Path(r) / "calcium.pt", map_location="cpu") for r in args.runs]
    keys = set(states[0])
    if any(set(s) != keys for s in states):
        raise SystemExit("the runs do not hold the same network")
    soup = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            soup[k] = (sum(s[k].float() for s in states) / len(states)).to(v.dtype)
        else:
            soup[k] = v  # counters (num_batches_tracked): equal in BatchNorm-frozen runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(soup, out / "calcium.pt")
    metrics = json.loads((Path(args.runs[0]) / "metrics.json").read_text())
    metrics["soup_of"] = [str(r) for r in args.runs]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{out / 'calcium.pt'}: average of {len(states)} runs")


if __name__ == "__main__":
    main()
