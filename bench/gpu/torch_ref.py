#!/usr/bin/env python3
"""PyTorch reference for the GPU preprocessing bench (bench/gpu/README.md).

The same operations as cacd's CUDA kernels, written the way one would in PyTorch, on the same
GPU and the same grids (read from the config cacd-gpu-bench writes with --config-out), timed
with CUDA events after warm-up (median):

- rescale: int16 stored values -> HU (int32 add + clamp for slope 1; float64 multiply-add,
  round, clamp for a fractional slope);
- clip + normalise: HU -> float32, clamp, divide;
- coarse / fine input: F.grid_sample(mode='bilinear' on a 5-D input = trilinear,
  align_corners=True) at the model grid's native positions; HU shifted by the pad value so
  zero padding equals cacd's per-corner pad of -1000 HU; then clamp / scale, and for the fine
  grid the three coordinate channels concatenated;
- mask: F.grid_sample of the K class probabilities at every native voxel of the crop's box,
  argmax over classes, zero where HU < 130.

Semantics match cacd's up to rounding details (torch.round is half-to-even); this script is
for timing, the parity proof is tests/gpu_parity.rs.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def default_config():
    d, h, w = 300, 512, 512
    ns = [1.0, 0.7, 0.7]
    def grid(spacing, shape, channels, centre):
        return {"spacing": spacing, "shape": shape, "channels": channels, "centre_index": centre,
                "native_spacing": ns, "hu_clip": [-1000.0, 2000.0], "hu_scale": 1000.0}
    return {
        "dims": [d, h, w],
        "rescale": {"slope": 1.0, "intercept": -1024.0},
        "rescale_f64": {"slope": 0.999, "intercept": -1023.5},
        "coarse": grid([4.0, 4.0, 4.0], [64, 96, 96], 1, [(d - 1) / 2, (h - 1) / 2, (w - 1) / 2]),
        "fine": grid([2.0, 0.8, 0.8], [64, 192, 192], 4, [d * 0.55, h * 0.45, w * 0.55]),
        "classes": 5, "candidate_hu": 130, "pad_hu": -1000.0, "reps": 20,
    }


def timed(fn, reps, warm=3):
    for _ in range(warm):
        fn()
    if not torch.cuda.is_available():  # --device cpu smoke test: wall clock
        ms = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        return ms[len(ms) // 2]
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    ms.sort()
    return ms[len(ms) // 2]


def to_native(g, axis, k):
    half = (g["shape"][axis] - 1) / 2
    return g["centre_index"][axis] + (k - half) * g["spacing"][axis] / g["native_spacing"][axis]


def from_native(g, axis, n):
    half = (g["shape"][axis] - 1) / 2
    return (n - g["centre_index"][axis]) * g["native_spacing"][axis] / g["spacing"][axis] + half


def sample_grid(axes_norm, dev):
    """[1, D, H, W, 3] grid (x, y, z order) from three 1-D normalised coordinate vectors."""
    gz, gy, gx = torch.meshgrid(*axes_norm, indexing="ij")
    return torch.stack((gx, gy, gz), dim=-1).unsqueeze(0).to(dev)


def model_grid(g, dims, dev):
    axes = []
    for a in range(3):
        k = torch.arange(g["shape"][a], dtype=torch.float64)
        idx = to_native(g, a, k)
        axes.append((2.0 * idx / (dims[a] - 1) - 1.0).float())
    return sample_grid(axes, dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="config written by cacd-gpu-bench --config-out")
    ap.add_argument("--json", help="write timings here")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run on the CPU at a small size (checks the script, times nothing useful)")
    a = ap.parse_args()
    cfg = default_config()
    if a.config:
        with open(a.config) as f:
            cfg = json.load(f)
    if a.cpu_smoke:
        dev = torch.device("cpu")
        cfg["dims"] = [40, 64, 64]
        for g in (cfg["coarse"], cfg["fine"]):
            g["native_spacing"] = [4.0, 3.0, 3.0]
            g["centre_index"] = [19.5, 31.5, 31.5]
    elif not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return 0
    else:
        dev = torch.device("cuda")
    reps = a.reps or cfg.get("reps", 20)
    d, h, w = cfg["dims"]
    n = d * h * w
    dev_name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"== torch {torch.__version__} on {dev_name}: {d}x{h}x{w} int16, "
          f"median of {reps} (CUDA events)")

    # Synthetic stored values (HU + 1024): air outside an elliptic body, ~3 % bright voxels.
    gen = torch.Generator(device=dev).manual_seed(1)
    y = torch.arange(h, device=dev).view(1, h, 1).float()
    x = torch.arange(w, device=dev).view(1, 1, w).float()
    body = (((y - h / 2) / (0.38 * h)) ** 2 + ((x - w / 2) / (0.46 * w)) ** 2) <= 1.0
    r = torch.rand((d, h, w), device=dev, generator=gen)
    hu0 = torch.where(body, torch.where(r < 0.03, 130 + (r * 46000) % 1400, (r * 1e4) % 120 - 60),
                      -1000 + (r * 1e4) % 40 - 20)
    raw = (hu0 + 1024).to(torch.int16)
    del hu0, r

    out = {}
    # Copy floor, as in the Rust bench: device-to-device copy of the raw volume's bytes.
    dst = torch.empty_like(raw)
    out["copy"] = timed(lambda: dst.copy_(raw), reps)
    copy_gbs = 2 * raw.numel() * 2 / out["copy"] / 1e6
    print(f"copy floor {out['copy']:.3f} ms = {copy_gbs:.0f} GB/s")
    del dst

    rs = cfg["rescale"]
    off = int(rs["intercept"])
    def rescale_int():
        return (raw.to(torch.int32) + off).clamp_(-32768, 32767).to(torch.int16)
    out["rescale"] = timed(rescale_int, reps)
    rf = cfg["rescale_f64"]
    out["rescale_f64"] = timed(
        lambda: torch.round(raw.double() * rf["slope"] + rf["intercept"]).clamp_(-32768, 32767)
        .to(torch.int16), reps)
    hu = rescale_int()

    c = cfg["coarse"]
    lo, hi = c["hu_clip"]
    scale = c["hu_scale"]
    out["clip_normalise"] = timed(lambda: hu.float().clamp_(lo, hi).div_(scale), reps)

    pad = cfg["pad_hu"]
    # grid_sample needs floating point input: one conversion per study, shared by both grids.
    def to_float():
        return (hu.float() - pad).view(1, 1, d, h, w)
    out["to_float"] = timed(to_float, reps)
    vol_f = to_float()

    def model_input(g, grid):
        v = F.grid_sample(vol_f, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        v = (v + pad).clamp_(g["hu_clip"][0], g["hu_clip"][1]).div_(g["hu_scale"])
        if g["channels"] == 4:
            D, H, W = g["shape"]
            cz = torch.linspace(-1, 1, D, device=dev).view(1, 1, D, 1, 1).expand(1, 1, D, H, W)
            cy = torch.linspace(-1, 1, H, device=dev).view(1, 1, 1, H, 1).expand(1, 1, D, H, W)
            cx = torch.linspace(-1, 1, W, device=dev).view(1, 1, 1, 1, W).expand(1, 1, D, H, W)
            v = torch.cat((v, cz, cy, cx), dim=1)
        return v

    cgrid = model_grid(c, cfg["dims"], dev)
    out["coarse"] = timed(lambda: model_input(c, cgrid), reps)
    fg = cfg["fine"]
    fgrid = model_grid(fg, cfg["dims"], dev)
    out["fine"] = timed(lambda: model_input(fg, fgrid), reps)

    # Mask over the crop's native box (same box rule as cacd).
    k = cfg["classes"]
    D, H, W = fg["shape"]
    start, axes = [], []
    for ax in range(3):
        lo_i = max(math.ceil(to_native(fg, ax, 0.0)), 0)
        hi_i = min(math.floor(to_native(fg, ax, fg["shape"][ax] - 1.0)), cfg["dims"][ax] - 1)
        if lo_i > hi_i:
            print("crop misses the volume; no mask timing")
            return 0
        i = torch.arange(lo_i, hi_i + 1, dtype=torch.float64)
        f = from_native(fg, ax, i).clamp(0, fg["shape"][ax] - 1)
        axes.append((2.0 * f / (fg["shape"][ax] - 1) - 1.0).float())
        start.append(lo_i)
    mgrid = sample_grid(axes, dev)
    bd, bh, bw = (len(t) for t in axes)
    probs = torch.softmax(torch.randn((1, k, D, H, W), device=dev, generator=gen), dim=1)
    hu_box = hu[start[0]:start[0] + bd, start[1]:start[1] + bh, start[2]:start[2] + bw]
    thr = cfg["candidate_hu"]

    def mask():
        p = F.grid_sample(probs, mgrid, mode="bilinear", padding_mode="border", align_corners=True)
        lab = p.argmax(dim=1)[0]
        return torch.where(hu_box >= thr, lab, 0).to(torch.uint8)
    out["mask"] = timed(mask, reps)

    out["total"] = out["rescale"] + out["to_float"] + out["coarse"] + out["fine"] + out["mask"]
    for name in ["rescale", "rescale_f64", "clip_normalise", "to_float", "coarse", "fine", "mask",
                 "total"]:
        print(f"torch {name:<16} {out[name]:>9.4f} ms")
    print(f"(mask box {bd}x{bh}x{bw} = {bd * bh * bw} voxels; total = rescale + to_float + "
          f"coarse + fine + mask)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__,
                       "torch_ms": out, "copy_gbs": copy_gbs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
