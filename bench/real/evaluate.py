#!/usr/bin/env python3
"""Scores every real case fetch.py wrote and measures the result against the reference marked
by eye (reference/<case>.json).

    python3 bench/real/evaluate.py CASES_DIR OUT_DIR [--cacd BIN] [--json FILE] [--case ID ...]

Per case and variant it prints: status or refusal (with its code), Agatston per artery and the
risk category, the share of the marked coronary calcium (voxels of 130 HU or more inside the
coronary regions, less those marked unsure) that cacd labelled, labels on marked non-coronary
calcium, labels outside the heart margin (10 mm around the heart: the package's heart mask
where one ships, else cacd's own outline), and, where a heart mask ships, the Dice of cacd's
heart outline against it. --json writes the same as data (BENCHMARKS.md and the tests read it).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

HERE = Path(__file__).resolve().parent
MARGIN_MM = 10.0
VESSELS = ["LM", "LAD", "LCX", "RCA"]


def load_series(d):
    ds = [pydicom.dcmread(f) for f in sorted(glob.glob(os.path.join(d, "*"))) if os.path.isfile(f)]
    ds = [x for x in ds if "PixelData" in x]
    ds.sort(key=lambda x: float(x.ImagePositionPatient[2]))
    hu = np.stack([x.pixel_array * float(getattr(x, "RescaleSlope", 1)) + float(getattr(x, "RescaleIntercept", 0))
                   for x in ds]).astype(np.float32)
    return hu, ds


def patient_grids(ds, shape):
    """Patient x (per column), y (per row), z (per slice) of an axial, unrotated series."""
    o = [float(v) for v in ds[0].ImagePositionPatient]
    ps = [float(v) for v in ds[0].PixelSpacing]
    iop = [float(v) for v in ds[0].ImageOrientationPatient]
    if abs(iop[0] - 1) > 1e-3 or abs(iop[4] - 1) > 1e-3:
        raise SystemExit("evaluate: only axial, unrotated series are handled")
    xs = o[0] + np.arange(shape[2]) * ps[1]
    ys = o[1] + np.arange(shape[1]) * ps[0]
    zs = np.array([float(d.ImagePositionPatient[2]) for d in ds])
    return xs, ys, zs


def box_mask(box, xs, ys, zs):
    bz = (zs >= box["z"][0]) & (zs <= box["z"][1])
    by = (ys >= box["y"][0]) & (ys <= box["y"][1])
    bx = (xs >= box["x"][0]) & (xs <= box["x"][1])
    return bz[:, None, None] & by[None, :, None] & bx[None, None, :]


def seg_labels(result_dir, ds, shape):
    """cacd's labels on the series grid: {voxel mask per artery}."""
    out = {v: np.zeros(shape, bool) for v in VESSELS}
    p = os.path.join(result_dir, "seg.dcm")
    if not os.path.exists(p):
        return out
    s = pydicom.dcmread(p)
    names = {int(x.SegmentNumber): str(x.SegmentLabel) for x in s.SegmentSequence}
    px = s.pixel_array
    px = px[None] if px.ndim == 2 else px
    zs = [round(float(d.ImagePositionPatient[2]), 2) for d in ds]
    for i, fr in enumerate(s.PerFrameFunctionalGroupsSequence):
        z = round(float(fr.PlanePositionSequence[0].ImagePositionPatient[2]), 2)
        name = names[int(fr.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        vessel = next((v for v in VESSELS if v in name.upper().split()), None)
        if vessel and z in zs:
            out[vessel][zs.index(z)] |= px[i] > 0
    return out


def nifti_on_series(path, xs, ys, zs):
    """A NIfTI mask (cacd's heart outline) on the series grid, nearest neighbour."""
    import nibabel as nib

    img = nib.load(path)
    m = np.asanyarray(img.dataobj) > 0
    inv = np.linalg.inv(img.affine)
    Z, Y, X = np.meshgrid(zs, ys, xs, indexing="ij")
    ras = np.stack([-X, -Y, Z, np.ones_like(X)], -1) @ inv.T
    ijk = np.round(ras[..., :3]).astype(int)
    ok = (ijk >= 0).all(-1) & (ijk[..., 0] < m.shape[0]) & (ijk[..., 1] < m.shape[1]) & (ijk[..., 2] < m.shape[2])
    out = np.zeros(X.shape, bool)
    out[ok] = m[ijk[..., 0][ok], ijk[..., 1][ok], ijk[..., 2][ok]]
    return out


def grow(mask, mm, spacing):
    """`mask` grown by `mm` (distance transform on the anisotropic grid)."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    d = ndi.distance_transform_edt(~mask, sampling=spacing)
    return d <= mm


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def evaluate_variant(cacd, case_dir, case, vname, v, ref, out_dir, extra=()):
    series = case_dir / v["dir"]
    res = out_dir / case["id"] / vname
    res.mkdir(parents=True, exist_ok=True)
    heart_nii = res / "heart.nii"
    if heart_nii.exists():
        heart_nii.unlink()
    p = subprocess.run([cacd, "score", str(series), "--out", str(res), "--heart-mask", str(heart_nii), *extra],
                       capture_output=True, text=True)
    if not (res / "result.json").exists():
        raise SystemExit(f"evaluate: {case['id']}/{vname}: no result.json\n{p.stderr[-2000:]}")
    r = json.loads((res / "result.json").read_text())
    row = {"case": case["id"], "variant": vname, "status": r["status"], "reason": r.get("reason"),
           "reason_code": r.get("reason_code"), "agatston": r.get("agatston_total"),
           "per_vessel": r.get("per_vessel"), "risk": r.get("risk_category"),
           "warnings": r.get("quality", {}).get("warnings", []), "heart": r.get("quality", {}).get("heart")}
    hu, ds = load_series(series)
    xs, ys, zs = patient_grids(ds, hu.shape)
    spacing = (abs(zs[1] - zs[0]), abs(ys[1] - ys[0]), abs(xs[1] - xs[0]))
    labels = seg_labels(res, ds, hu.shape)
    any_label = np.zeros(hu.shape, bool)
    for m in labels.values():
        any_label |= m
    calc = hu >= 130
    coronary = np.zeros(hu.shape, bool)
    per_artery = {}
    non_coronary = np.zeros(hu.shape, bool)
    for reg in ref.get("regions", []):
        m = box_mask(reg["box_mm"], xs, ys, zs) & calc
        if reg["kind"] == "coronary":
            coronary |= m
            per_artery.setdefault(reg["artery"], np.zeros(hu.shape, bool))
            per_artery[reg["artery"]] |= m
        else:
            non_coronary |= m
    for u in ref.get("unsure", []):
        um = box_mask(u["box_mm"], xs, ys, zs)
        coronary &= ~um
        non_coronary &= ~um
    marked = int(coronary.sum())
    row["marked_coronary_voxels"] = marked
    row["labelled_share"] = round(float((coronary & any_label).sum() / marked), 3) if marked else None
    row["per_artery_share"] = {a: round(float((m & any_label).sum() / max(1, m.sum())), 3) for a, m in per_artery.items()}
    row["labels_on_non_coronary"] = int((non_coronary & any_label).sum())
    row["labels_total"] = int(any_label.sum())
    row["labels_unmarked"] = int((any_label & ~coronary).sum())
    heart_ref = None
    if v.get("heart_mask"):
        heart_ref = np.load(case_dir / v["heart_mask"]).astype(bool)
    ours = nifti_on_series(str(heart_nii), xs, ys, zs) if heart_nii.exists() else None
    if heart_ref is not None and ours is not None:
        row["heart_dice"] = round(dice(ours, heart_ref), 3)
    base = heart_ref if heart_ref is not None else ours
    row["heart_reference"] = "package mask" if heart_ref is not None else ("cacd outline" if ours is not None else None)
    if base is not None:
        row["labels_outside_heart"] = int((any_label & ~grow(base, MARGIN_MM, spacing)).sum())
    else:
        row["labels_outside_heart"] = int(any_label.sum())
    return row


def fmt(row):
    if row["status"] != "scored":
        head = f"REFUSED ({row['reason_code'] or 'input'}): {row['reason']}"
    else:
        pv = row["per_vessel"]
        head = (f"Agatston {row['agatston']:.1f} [{row['risk']}]  LM {pv['LM']:.1f} LAD {pv['LAD']:.1f} "
                f"LCX {pv['LCX']:.1f} RCA {pv['RCA']:.1f}")
    share = "-" if row["labelled_share"] is None else f"{100 * row['labelled_share']:.0f} %"
    extra = f"  marked coronary labelled {share} of {row['marked_coronary_voxels']} vox"
    extra += f"; on non-coronary {row['labels_on_non_coronary']}; outside heart {row['labels_outside_heart']}"
    if "heart_dice" in row:
        extra += f"; heart Dice {row['heart_dice']:.2f}"
    warn = "".join(f"\n      warning: {w}" for w in row["warnings"] if "thick" in w or "heart" in w or "contrast" in w)
    return f"{row['case']}/{row['variant']}: {head}\n    {extra}{warn}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases")
    ap.add_argument("out")
    ap.add_argument("--cacd", default=os.environ.get("CACD", "target/release/cacd"))
    ap.add_argument("--json")
    ap.add_argument("--case", action="append")
    ap.add_argument("--model-dir", help="score with the models in this folder")
    a = ap.parse_args()
    extra = ["--model-dir", a.model_dir] if a.model_dir else []
    cases_dir = Path(a.cases)
    rows = []
    for cdir in sorted(p for p in cases_dir.iterdir() if (p / "case.json").exists()):
        case = json.loads((cdir / "case.json").read_text())
        if a.case and case["id"] not in a.case:
            continue
        ref_path = HERE / "reference" / f"{case['id']}.json"
        ref = json.loads(ref_path.read_text()) if ref_path.exists() else {"regions": []}
        for vname, v in case["variants"].items():
            row = evaluate_variant(a.cacd, cdir, case, vname, v, ref, Path(a.out), extra)
            row["contrast"] = case.get("contrast")
            row["expect_no_heart"] = case.get("expect_no_heart", False)
            print(fmt(row), flush=True)
            rows.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
