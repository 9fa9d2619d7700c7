#!/usr/bin/env python3
"""Montage PNG of a DICOM CT series, to look at: W400/L40, pixels >= 130 HU in magenta.

    python3 bench/heldout/montage.py SERIES_DIR OUT.png [--cols 6] [--every N] [--scale 0.5]

Needs Pillow besides numpy and pydicom (only this viewer does; the generator does not).
"""
import argparse
import glob
import os

import numpy as np
import pydicom


def load(series):
    files = sorted(glob.glob(os.path.join(series, "**", "*.dcm"), recursive=True))
    ds = [pydicom.dcmread(f) for f in files]
    ds = [d for d in ds if "ImagePositionPatient" in d]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                    for d in ds])
    zs = [float(d.ImagePositionPatient[2]) for d in ds]
    return vol, zs


def render(sl, lo=-160.0, hi=240.0):
    g = np.clip((sl - lo) / (hi - lo), 0, 1) * 255
    rgb = np.repeat(g[..., None], 3, axis=2)
    m = sl >= 130
    rgb[m] = [255, 0, 255]
    return rgb.astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("series")
    ap.add_argument("out")
    ap.add_argument("--cols", type=int, default=6)
    ap.add_argument("--every", type=int, default=0, help="every Nth slice (default: ~24 tiles)")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--last", type=int, default=-1)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--crop", help="x0,y0,x1,y1 pixel crop before scaling")
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    vol, zs = load(args.series)
    last = len(zs) if args.last < 0 else args.last + 1
    idx = list(range(args.first, last))
    every = args.every or max(1, len(idx) // 24)
    idx = idx[::every]
    tiles = []
    for i in idx:
        sl = vol[i]
        if args.crop:
            x0, y0, x1, y1 = map(int, args.crop.split(","))
            sl = sl[y0:y1, x0:x1]
        im = Image.fromarray(render(sl))
        im = im.resize((max(1, int(im.width * args.scale)), max(1, int(im.height * args.scale))), Image.BILINEAR)
        ImageDraw.Draw(im).text((3, 3), f"{i} z={zs[i]:.1f}", fill=(255, 255, 0))
        tiles.append(im)
    cols = min(args.cols, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w, rows * h))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * w, (k // cols) * h))
    sheet.save(args.out)
    print(args.out, sheet.size, f"{len(zs)} slices")


if __name__ == "__main__":
    main()
