"""Trains the heart locator and the per-vessel calcium segmenter on `cacd train-data` arrays.

    python3 train.py --data DATA --out RUN [--heart-minutes M] [--calcium-minutes M]

Reads DATA/s*/{coarse_x,coarse_y,fine_x,fine_y}.npy + meta.json (written by the Rust
preprocessing, so nothing is resampled here). Seeds whose number % 10 == 9 are held out for
validation; per-class Dice on them is printed and written to RUN/metrics.json. The trained
weights go to RUN/heart.pt and RUN/calcium.pt (export.py turns them into ONNX).

Deterministic: fixed seeds, deterministic algorithms, a fixed number of optimiser steps per
network (the --*-steps options; the minutes options only cap the wall time as a safety net).
"""

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import CalciumNet, HeartNet

VESSELS = ["LM", "LAD", "LCX", "RCA"]
# Optional sixth class (`cacd train-data --non-coronary-class`): calcium that is not coronary
# (aortic wall and valve, mitral annulus). Scored as background by the engine; it exists so the
# network learns a name for what it must not call LM or RCA.
NON_CORONARY = "non-coronary"


def calcium_labels(data):
    """The calcium class names of DATA (its grids.json), 5 or 6 of them."""
    grids = Path(data) / "grids.json"
    if not grids.exists():
        return ["background"] + VESSELS
    labels = json.loads(grids.read_text())["calcium"]["labels"]
    if labels[:5] != ["background"] + VESSELS or labels[5:] not in ([], [NON_CORONARY]):
        raise SystemExit(f"{grids}: unexpected calcium labels {labels}")
    return labels


def seed_everything(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_samples(data):
    samples = []
    for d in sorted(Path(data).glob("s*")):
        if not (d / "meta.json").exists():
            continue
        meta = json.loads((d / "meta.json").read_text())
        samples.append((d, meta))
    return samples


def split(samples):
    train = [s for s in samples if s[1]["seed"] % 10 != 9]
    val = [s for s in samples if s[1]["seed"] % 10 == 9]
    return train, val


def dice_per_class(pred, target, classes):
    out = []
    for c in classes:
        p = pred == c
        t = target == c
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if denom > 0 else float("nan"))
    return out


def soft_dice_loss(logits, target, classes):
    prob = torch.softmax(logits, 1)
    loss = 0.0
    for c in classes:
        p = prob[:, c]
        t = (target == c).float()
        inter = (p * t).sum()
        loss = loss + 1 - (2 * inter + 1) / (p.sum() + t.sum() + 1)
    return loss / len(classes)


# ---------------------------------------------------------------------------------------------
# Heart locator


def train_heart(train, val, out, steps, minutes, batch=2):
    seed_everything(1)
    xs = np.stack([np.load(d / "coarse_x.npy") for d, _ in train]).astype(np.float32)
    ys = np.stack([np.load(d / "coarse_y.npy") for d, _ in train]).astype(np.int64)
    net = HeartNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    rng = np.random.default_rng(1)
    t0 = time.time()
    net.train()
    for step in range(steps):
        idx = rng.choice(len(xs), batch, replace=False)
        x = torch.from_numpy(xs[idx])
        y = torch.from_numpy(ys[idx])
        # Random flips are not used: orientation (left/right, anterior/posterior) is anatomy.
        logits = net(x)
        loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y, [1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            print(f"heart step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > minutes * 60:
            print(f"heart: wall-time cap reached at step {step}", flush=True)
            break
    net.eval()
    dices = []
    with torch.no_grad():
        for d, _ in val:
            x = torch.from_numpy(np.load(d / "coarse_x.npy")[None])
            y = np.load(d / "coarse_y.npy")
            pred = net(x).argmax(1)[0].numpy()
            dices.append(dice_per_class(pred, y, [1])[0])
    print(f"heart validation Dice {np.nanmean(dices):.4f} (n={len(dices)})", flush=True)
    torch.save(net.state_dict(), out / "heart.pt")
    return {"heart_dice": float(np.nanmean(dices)), "heart_steps": step + 1, "heart_seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------
# Calcium segmenter


class FineSet:
    """Fine crops held in memory: HU channel as float16, labels as uint8. The three coordinate
    channels are identical for every crop (position in the crop), so one copy serves all."""

    def __init__(self, samples):
        self.hu, self.y, self.metas = [], [], []
        self.coords = None
        for d, meta in samples:
            x = np.load(d / "fine_x.npy", mmap_mode="r")
            if self.coords is None:
                self.coords = np.array(x[1:4], dtype=np.float32)
            self.hu.append(np.array(x[0], dtype=np.float16))
            self.y.append(np.load(d / "fine_y.npy"))
            self.metas.append(meta)
        # Coronary lesions only: the non-coronary class (5) is sampled through the distractors.
        self.lesions = [np.argwhere((y > 0) & (y <= len(VESSELS))) for y in self.y]
        # Non-coronary voxels (6-class data): patches centred on them weigh the distractors by
        # size rather than by count (a mitral annulus is many small beads, an aortic-wall
        # plaque by an ostium one).
        self.non_coronary = [np.argwhere(y == len(VESSELS) + 1) for y in self.y]
        # Bright non-lesion voxels (bone, distractors) ≥ 130 HU.
        rng = np.random.default_rng(0)
        self.bright = []
        for h, y in zip(self.hu, self.y):
            b = np.argwhere((h >= 0.13) & (y == 0))
            self.bright.append(b[rng.choice(len(b), min(len(b), 4000), replace=False)] if len(b) else b)
        self.shape = self.y[0].shape

    def patch(self, i, centre, size):
        lo = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, self.shape)]
        sl = tuple(slice(a, a + s) for a, s in zip(lo, size))
        x = np.concatenate([self.hu[i][sl][None].astype(np.float32), self.coords[(slice(None),) + sl]])
        return x, self.y[i][sl].astype(np.int64)

    def sample(self, rng, size):
        i = int(rng.integers(len(self.y)))
        r = rng.random()
        jitter = rng.integers(-12, 13, size=3) * np.array([1, 2, 2])
        if r < MIX[0] and len(self.lesions[i]):
            c = self.lesions[i][rng.integers(len(self.lesions[i]))] + jitter
        elif r < MIX[1] and NC_VOXEL_SHARE[0] > 0 and len(self.non_coronary[i]) and rng.random() < NC_VOXEL_SHARE[0]:
            c = self.non_coronary[i][rng.integers(len(self.non_coronary[i]))] + jitter
        elif r < MIX[1] and self.metas[i]["distractors_fine"]:
            ds = self.metas[i]["distractors_fine"]
            c = np.round(ds[rng.integers(len(ds))]).astype(int) + jitter
        elif r < MIX[2] and len(self.bright[i]):
            c = self.bright[i][rng.integers(len(self.bright[i]))]
        else:
            c = [rng.integers(n) for n in self.shape]
        return self.patch(i, c, size)


CLASS_WEIGHTS = [1.0, 8.0, 6.0, 6.0, 6.0]
# Weight of the non-coronary class when the data has one (--non-coronary-weight).
NON_CORONARY_WEIGHT = [3.0]
# Patch sampling mix: cumulative shares of lesion, distractor, bright-voxel centres (rest: anywhere).
MIX = [0.5, 0.75, 0.85]
# Of the distractor-centred patches, the share centred on a random non-coronary voxel instead.
NC_VOXEL_SHARE = [0.0]


def calcium_loss(logits, y, hu):
    """Class-weighted CE + soft Dice, both on the voxels that matter.

    After the HU >= 130 trim at native resolution only candidate voxels are ever labelled, so
    the loss looks at voxels that can become candidates (>= 100 HU on the fine grid, partial
    volume included) or carry a label; the rest of the crop (soft tissue, air, ~99 %) weighs
    1/50 so the output there stays sane without drowning the lesions.
    """
    focus = ((hu >= 0.10) | (y > 0)).float()
    w = 0.02 + focus
    k = logits.shape[1]
    class_w = torch.tensor((CLASS_WEIGHTS + NON_CORONARY_WEIGHT)[:k])
    ce = F.cross_entropy(logits, y, weight=class_w, reduction="none")
    ce = (ce * w).sum() / (w * class_w[y]).sum()
    prob = torch.softmax(logits, 1)
    dice, n = 0.0, 0
    for c in range(1, 5):
        t = (y == c).float() * focus
        if t.sum() == 0:
            continue
        p = prob[:, c] * focus
        dice = dice + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        n += 1
    return ce + 0.5 * dice / max(n, 1)


def evaluate_calcium(net, val, coords):
    """Per-class Dice on whole validation crops, counted on voxels ≥ 130 HU (what gets scored)."""
    net.eval()
    k = net.head.out_channels
    names = (["background"] + VESSELS + [NON_CORONARY])[:k]
    inter = np.zeros(k)
    denom = np.zeros(k)
    with torch.no_grad():
        for d, _ in val[:20]:
            x = np.load(d / "fine_x.npy")
            y = np.load(d / "fine_y.npy")
            pred = net(torch.from_numpy(x[None])).argmax(1)[0].numpy()
            cand = x[0] >= 0.13
            for c in range(1, k):
                p = (pred == c) & cand
                t = (y == c) & cand
                inter[c] += 2 * (p & t).sum()
                denom[c] += p.sum() + t.sum()
    net.train()
    return {v: float(inter[c] / denom[c]) if denom[c] else float("nan") for c, v in enumerate(names) if c > 0}


def load_init(net, init):
    """Loads earlier weights; a 5-class head grows a non-coronary row that starts silent
    (zero weights, bias 6 below background), so the fine-tuned network begins exactly where
    the 5-class one was."""
    state = torch.load(init, map_location="cpu")
    k = net.head.out_channels
    old = state["head.weight"].shape[0]
    if old != k:
        if (old, k) != (5, 6):
            raise SystemExit(f"{init}: {old}-class head cannot initialise a {k}-class network")
        w = torch.zeros((k,) + tuple(state["head.weight"].shape[1:]))
        w[:old] = state["head.weight"]
        b = torch.empty(k)
        b[:old] = state["head.bias"]
        b[old] = state["head.bias"][0] - 6.0
        state["head.weight"], state["head.bias"] = w, b
        print(f"calcium: {init} has {old} classes; head row {old} initialised silent", flush=True)
    net.load_state_dict(state)


def freeze_batchnorm(net):
    """BatchNorm layers in inference mode (running statistics used, not updated; scale and
    shift still learn): for weights rebuilt by recover.py, whose BatchNorms are the identity
    after folding, where batch statistics would change the function from the first step."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eval()


def train_calcium(train, val, out, steps, minutes, batch, size, init=None, lr=3e-3, classes=5, freeze_bn=False):
    seed_everything(2)
    t_load = time.time()
    ds = FineSet(train)
    print(f"calcium: {len(train)} crops loaded in {time.time() - t_load:.0f}s", flush=True)
    net = CalciumNet(classes)
    if init:
        # Fine-tuning continues from an earlier run's weights (its seed stream differs: 3).
        load_init(net, init)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.08)
    rng = np.random.default_rng(3 if init else 2)
    t0 = time.time()
    net.train()
    if freeze_bn:
        freeze_batchnorm(net)
    for step in range(steps):
        xb, yb = zip(*(ds.sample(rng, size) for _ in range(batch)))
        x = torch.from_numpy(np.stack(xb))
        y = torch.from_numpy(np.stack(yb))
        logits = net(x)
        loss = calcium_loss(logits, y, x[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            print(f"calcium step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > minutes * 60:
            print(f"calcium: wall-time cap reached at step {step}", flush=True)
            break
    torch.save(net.state_dict(), out / "calcium.pt")
    dice = evaluate_calcium(net, val, ds.coords)
    print("calcium validation Dice (voxels >= 130 HU): " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()), flush=True)
    return {"calcium_dice": dice, "calcium_steps": step + 1, "calcium_seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heart-steps", type=int, default=300)
    ap.add_argument("--heart-minutes", type=float, default=8)
    ap.add_argument("--calcium-steps", type=int, default=1200)
    ap.add_argument("--calcium-minutes", type=float, default=25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, nargs=3, default=[32, 80, 80])
    ap.add_argument("--only", choices=["heart", "calcium"])
    ap.add_argument("--calcium-init", help="start the calcium net from these weights (fine-tuning)")
    ap.add_argument("--calcium-lr", type=float, default=3e-3)
    ap.add_argument("--freeze-bn", action="store_true",
                    help="keep BatchNorm in inference mode (weights from recover.py: BatchNorm folded into the convolutions)")
    ap.add_argument("--class-weights", type=float, nargs=5, default=CLASS_WEIGHTS)
    ap.add_argument("--non-coronary-weight", type=float, default=NON_CORONARY_WEIGHT[0], help="class weight of non-coronary (6-class data)")
    ap.add_argument("--nc-voxel-share", type=float, default=NC_VOXEL_SHARE[0],
                    help="share of distractor patches centred on a non-coronary voxel (6-class data)")
    ap.add_argument("--mix", type=float, nargs=3, default=MIX, help="cumulative lesion/distractor/bright shares")
    args = ap.parse_args()
    CLASS_WEIGHTS[:] = args.class_weights
    MIX[:] = args.mix
    NON_CORONARY_WEIGHT[:] = [args.non_coronary_weight]
    NC_VOXEL_SHARE[:] = [args.nc_voxel_share]
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(args.data)
    train, val = split(samples)
    labels = calcium_labels(args.data)
    print(f"{len(train)} training seeds, {len(val)} validation seeds, calcium classes {labels}", flush=True)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.update({"train_seeds": [m["seed"] for _, m in train], "val_seeds": [m["seed"] for _, m in val], "calcium_labels": labels})
    if args.only in (None, "heart"):
        metrics.update(train_heart(train, val, out, args.heart_steps, args.heart_minutes))
    if args.only in (None, "calcium"):
        metrics.update(train_calcium(train, val, out, args.calcium_steps, args.calcium_minutes, args.batch, tuple(args.patch), args.calcium_init, args.calcium_lr, len(labels), args.freeze_bn))
    metrics_path.write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
