"""Training crops made of real chest CT with synthetic coronary plaques inserted.

    python3 real_backgrounds.py --cases CASES --cacd CACD --out DATA --samples N [--first-seed S]

The calcium segmenter trained on phantoms alone calls real coronary calcium "non-coronary" or
background: the real chest around it (fat, noise texture, aortic root, partial volume of 3–5 mm
slices) is what it has never seen. Pasting a plaque into a real scan at a coronary position shows
the same failure, so the background is what has to be taught. This script writes crops in the
`cacd train-data` format (`s<seed>/fine_x.npy`, `fine_y.npy`, `meta.json`) whose background is a
real non-contrast chest CT and whose coronary calcium is synthetic and labelled:

* Backgrounds (BACKGROUNDS below): real non-contrast series written by `bench/real/fetch.py`
  (CASES is its output folder), and cacd's own heart outline of each (`cacd score
  --heart-mask`). The real cases used to *measure* cacd (bench/real: pyrad-lung1/2) are never
  used here.
* Where: plaques follow random walks through epicardial fat (−200…−20 HU on a 5×5-smoothed
  copy, so sharp-kernel noise does not read as fat) at least 3 mm inside the heart outline, not
  in its posterior quarter (oesophagus, descending aorta), starting in grooves — fat whose
  20 mm box is at least 55 % heart tissue (AV and interventricular grooves, the fat around the
  aortic root) — mostly in the upper two thirds of the heart (the proximal arteries); in 40 %
  of crops also a dense confluent cluster of long tubes from one upper-groove seed.
* What: tubes of 0.8–2.6 mm radius, 250–1800 HU, beaded or continuous, rendered with each native
  voxel's coverage (sub-sampled through the slice thickness), so 5 mm slices blur them as a
  scanner would.
* Which artery: by where the plaque lies in the box of the heart outline (`vessel_of`): left
  main at the top just left of the middle, RCA on the right and low at the back (posterior
  descending), LAD in front, LCX on the left behind it. Coarse, but anatomical: the phantom-
  trained segmenter itself, asked on these backgrounds, calls nearly every groove "RCA".
* Non-coronary (class 5), drawn first (a coronary plaque over it keeps its voxels): arcs of
  the aortic wall where it meets fat or lung, found by rays from the aorta's centre line marked
  by eye (`backgrounds.json`), with --root-arcs arcs inside the lumen at the aortic root
  (cusps, annulus), and blobs deep in the heart's tissue away from fat (valves, mitral annulus).
* Everything else in the real crop (bone, noise, real calcification) is background (0).

The fine crop is made as cacd makes it (appliance/src/preprocess.rs, mirrored here; on a
phantom series it matched `cacd train-data`'s fine_x to 0.23 HU): the heart locator's box centre plus a uniform
±8 mm jitter, trilinear, HU clipped to [-1000, 2000] / 1000, then three coordinate channels.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

# The real cases' reader and the heart-outline resampling are bench/real/evaluate.py's.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "real"))
import evaluate  # noqa: E402

HEART = dict(spacing=(4.0, 4.0, 4.0), shape=(64, 96, 96))
FINE = dict(spacing=(2.0, 0.8, 0.8), shape=(64, 192, 192))
PAD_HU = -1000.0
# A plaque starts in fat whose GROOVE_BOX_MM box is at least GROOVE_SHARE heart tissue.
GROOVE_BOX_MM = 20.0
GROOVE_SHARE = 0.55
VESSELS = ["LM", "LAD", "LCX", "RCA"]

MARKS = Path(__file__).resolve().parent / "backgrounds.json"
NON_CORONARY = 5
# Most non-coronary calcifications per crop, and whether arcs inside the aortic root are drawn
# (options; 1.5.0 was trained with 3 and without).
NON_CORONARY_MAX = [3]
ROOT_ARCS = [False]

# Real non-contrast chest CT used as backgrounds: (case, variant) of bench/real/cases.json.
BACKGROUNDS = [("platipy-chest", "3mm"), ("platipy-chest", "5mm"), ("lungdx-a0001", "5mm")]


# --- cacd's preprocessing, mirrored ---------------------------------------------------------

def load_series(d):
    """bench/real/evaluate.py's reader, plus the native spacing `[z, y, x]` (mm)."""
    hu, ds = evaluate.load_series(d)
    z = [float(x.ImagePositionPatient[2]) for x in ds]
    ps = [float(v) for v in ds[0].PixelSpacing]
    return hu, (float(np.median(np.diff(z))), ps[0], ps[1]), ds


def to_native(centre, spec, ns, axis, k):
    half = (spec["shape"][axis] - 1) / 2.0
    return centre[axis] + (k - half) * spec["spacing"][axis] / ns[axis]


def from_native(centre, spec, ns, axis, n):
    half = (spec["shape"][axis] - 1) / 2.0
    return (n - centre[axis]) * ns[axis] / spec["spacing"][axis] + half


def resample(vol, centre, spec, ns, cval=PAD_HU):
    axes = [to_native(centre, spec, ns, a, np.arange(spec["shape"][a], dtype=np.float64)) for a in range(3)]
    c = np.meshgrid(*axes, indexing="ij")
    return ndi.map_coordinates(vol, c, order=1, mode="grid-constant", cval=cval).astype(np.float32)


def scale_hu(v):
    return np.clip(v, -1000.0, 2000.0) / 1000.0


def coord_channels(shape):
    out = []
    for a in range(3):
        n = shape[a]
        c = (2.0 * np.arange(n) / (n - 1) - 1.0).astype(np.float32)
        sh = [1, 1, 1]
        sh[a] = n
        out.append(np.broadcast_to(c.reshape(sh), shape))
    return np.stack(out)


def fine_input(hu, centre, ns):
    v = scale_hu(resample(hu, centre, FINE, ns))
    return np.concatenate([v[None], coord_channels(FINE["shape"])]).astype(np.float32)


def heart_box_centre(hu, ns, session):
    """The heart locator's largest component's box centre (native index), as heart_box()."""
    centre = [(n - 1) / 2.0 for n in hu.shape]
    x = scale_hu(resample(hu, centre, HEART, ns))[None, None]
    p = session.run(None, {"input": x})[0][0, 1]
    fg = p > 0.5
    lab, n = ndi.label(fg)
    if n == 0:
        raise SystemExit("heart locator found no heart in a background")
    k = int(np.argmax(ndi.sum(fg, lab, range(1, n + 1)))) + 1
    idx = np.where(lab == k)
    mid = [(a.min() + a.max()) / 2.0 for a in idx]
    return [to_native(centre, HEART, ns, a, mid[a]) for a in range(3)]


def labels_to_fine(labels, centre, ns):
    """The footprint rule of preprocess::labels_to_fine: a fine voxel takes a label when its box
    overlaps a labelled native voxel's box; the first written (lowest native index) wins."""
    out = np.zeros(FINE["shape"], np.uint8)
    for z, y, x in np.argwhere(labels > 0):
        l = labels[z, y, x]
        rng = []
        for a, n in enumerate((z, y, x)):
            half = 0.5 * ns[a] / FINE["spacing"][a]
            c = from_native(centre, FINE, ns, a, float(n))
            lo = max(int(np.floor(c - half - 0.5)) + 1, 0)
            hi = min(int(np.ceil(c + half + 0.5)) - 1, FINE["shape"][a] - 1)
            if lo > hi:
                break
            rng.append(slice(lo, hi + 1))
        else:
            view = out[tuple(rng)]
            view[view == 0] = l
    return out


# --- plaques ----------------------------------------------------------------------------------

class Background:
    def aorta_marks(self, case, ds):
        """The aorta's centre line(s) of this background as native indices, from MARKS."""
        marks = json.loads(MARKS.read_text()).get(case, {})
        o = [float(v) for v in ds[0].ImagePositionPatient]
        z0 = float(ds[0].ImagePositionPatient[2])
        out = []
        for name in ("ascending_aorta", "descending_aorta"):
            if name in marks:
                line = [((z - z0) / self.ns[0], (y - o[1]) / self.ns[1], (x - o[0]) / self.ns[2]) for x, y, z in marks[name]]
                out.append((name, np.array(sorted(line))))
        return out

    def vessel_at(self, index):
        """Height in the whole outline; front/back and right/left within the outline's slice
        (the base of the heart lies right of the apex, so a global box would put every
        proximal groove on the right)."""
        index = np.asarray(index)
        w = (index[0] * self.ns[0] - self.heart_z_mid) / self.heart_z_half
        z = int(np.clip(round(index[0]), self.slice_z[0], self.slice_z[-1]))
        mid, half = self.slice_mid[z], self.slice_half[z]
        v = (index[1] - mid[0]) / half[0]
        u = (index[2] - mid[1]) / half[1]
        return vessel_of(w, v, u)

    def __init__(self, case, variant, cases_dir, cacd, work, locator):
        d = Path(cases_dir) / case / variant
        self.name = f"{case}/{variant}"
        self.hu, self.ns, ds = load_series(str(d))
        mask_path = Path(work) / f"{case}_{variant}.heart.nii"
        if not mask_path.exists():
            import subprocess

            subprocess.run([cacd, "score", str(d), "--out", str(Path(work) / f"{case}_{variant}"),
                            "--heart-mask", str(mask_path)], check=True, capture_output=True)
        heart = evaluate.nifti_on_series(str(mask_path), *evaluate.patient_grids(ds, self.hu.shape))
        sp = np.array(self.ns)
        # Depth below the outline's surface: epicardial fat lies inside the pericardial sac;
        # the fat outside it (anterior mediastinum, behind the left atrium in front of the
        # spine) is exactly where coronary calcium is not.
        depth = ndi.distance_transform_edt(heart, sampling=sp)
        zs = np.where(heart.any((1, 2)))[0]
        z_lo = zs.min() + (zs.max() - zs.min()) * 0.3  # upper two thirds (z grows upwards)
        # Tissue classes on a smoothed copy: on a noisy sharp-kernel scan (σ 65 HU) single
        # voxels of blood read as fat.
        self.smooth = ndi.uniform_filter(self.hu, size=(1, 5, 5))
        hu = self.smooth
        fat = (hu >= -200) & (hu <= -20)
        lung_far = ndi.distance_transform_edt(hu > -500, sampling=sp) > 3.0
        tissue_near = ndi.distance_transform_edt(hu < 0, sampling=sp) <= 8.0
        # Not the posterior quarter of the outline on each slice (oesophagus, descending aorta).
        posterior = np.zeros_like(heart)
        for z in zs:
            rows = np.where(heart[z].any(1))[0]
            cut = int(rows.max() - 0.25 * (rows.max() - rows.min()))
            posterior[z, cut:] = True
        # Grooves: fat with the heart's own tissue on several sides (AV and interventricular
        # grooves, the fat around the aortic root) rather than fat against the chest wall.
        cardiac = (heart & (hu > 0) & (hu < 120)).astype(np.float32)
        box = [max(1, int(round(GROOVE_BOX_MM / s))) for s in sp]
        groove = ndi.uniform_filter(cardiac, size=box) >= GROOVE_SHARE
        self.fat = fat
        self.walkable = (depth >= 1.5) & (hu < 60) & (hu > -400) & lung_far & ~posterior
        ok = (depth >= 3.0) & fat & lung_far & tissue_near & ~posterior & groove
        self.seeds_all = np.argwhere(ok)
        ok[: int(np.floor(z_lo))] = False
        self.seeds = np.argwhere(ok)
        # Valve-like places: heart tissue deep in the outline, away from any fat (aortic valve
        # cusps and annulus, mitral annulus): calcium there is not coronary.
        far_from_fat = ndi.distance_transform_edt(~fat, sampling=sp) >= 4.0
        valve = (depth >= 10.0) & (hu > 20) & (hu < 80) & far_from_fat
        valve[: int(np.floor(z_lo))] = False
        self.valve_seeds = np.argwhere(valve)
        self.aorta = self.aorta_marks(case, ds)
        self.heart_z_mid = (zs.min() + zs.max()) / 2 * sp[0]
        self.heart_z_half = (zs.max() - zs.min()) / 2 * sp[0]
        self.slice_z = zs
        self.slice_mid, self.slice_half = {}, {}
        for z in zs:
            rows = np.where(heart[z].any(1))[0]
            cols = np.where(heart[z].any(0))[0]
            self.slice_mid[z] = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
            self.slice_half[z] = (max((rows.max() - rows.min()) / 2, 1), max((cols.max() - cols.min()) / 2, 1))
        self.centre = heart_box_centre(self.hu, self.ns, locator)
        print(f"{self.name}: {hu.shape} spacing {self.ns}, {len(self.seeds)} upper fat seeds, "
              f"{len(self.seeds_all)} in all, locator centre {np.round(self.centre, 1).tolist()}", flush=True)


def vessel_of(w, v, u):
    """The artery a groove position belongs to, from where it lies in the heart outline's box
    (w up, v towards the back, u to the patient's left; each -1…1): the left main at the top
    just left of the middle, the RCA on the right (and the posterior descending artery low at
    the back), the LAD in front, the LCX on the left behind it."""
    if w > 0.45 and -0.1 < u < 0.35 and -0.3 < v < 0.2:
        return 1  # LM
    if u < -0.2 or (v > 0.25 and w < -0.2):
        return 4  # RCA
    if v < -0.2:
        return 2  # LAD
    return 3  # LCX


def walk(bg, rng, start, length_mm):
    """A random walk of 1 mm steps with momentum, staying in walkable voxels where it can."""
    sp = np.array(bg.ns)
    p = start * sp
    d = rng.normal(size=3)
    d[0] *= 0.5
    d /= np.linalg.norm(d)
    pts = [p.copy()]
    for _ in range(int(length_mm)):
        # The first of eight directions that stays in fat; else the first that stays walkable.
        best, fallback = None, None
        for _ in range(8):
            nd = d + rng.normal(scale=0.45, size=3)
            nd /= np.linalg.norm(nd)
            q = p + nd
            idx = tuple(np.round(q / sp).astype(int))
            if min(idx) < 0 or any(i >= n for i, n in zip(idx, bg.hu.shape)) or not bg.walkable[idx]:
                continue
            if bg.fat[idx]:
                best = (q, nd)
                break
            fallback = fallback or (q, nd)
        best = best or fallback
        if best is None:
            break
        p, d = best
        pts.append(p.copy())
    return np.array(pts)


def render(hu, smooth, ns, pts, radii, peaks, labels, vessel_tag):
    """Adds one tube to `hu` (in place) by coverage, and tags its ≥130 HU voxels in `labels`.
    The tube replaces the local mean (`smooth`), not the voxel, so the scan's own noise
    texture stays on the calcium as it would on real calcium."""
    sp = np.array(ns)
    rmax = radii.max() + 0.5
    lo = np.maximum(np.floor((pts.min(0) - rmax) / sp).astype(int) - 1, 0)
    hi = np.minimum(np.ceil((pts.max(0) + rmax) / sp).astype(int) + 2, hu.shape)
    if (hi <= lo).any():
        return 0
    sub = [max(1, int(round(sp[0] / 0.5))), 3, 3]
    offs = [((np.arange(n) + 0.5) / n - 0.5) for n in sub]
    grid = np.stack(np.meshgrid(*[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij"), -1).reshape(-1, 3)
    o = np.stack(np.meshgrid(*offs, indexing="ij"), -1).reshape(-1, 3)
    samples = (grid[:, None, :] + o[None]) * sp
    tree = cKDTree(pts)
    dist, near = tree.query(samples.reshape(-1, 3))
    inside = (dist <= radii[near]).reshape(len(grid), len(o))
    cover = inside.mean(1)
    val = np.where(inside, peaks[near].reshape(len(grid), len(o)), 0).sum(1) / np.maximum(inside.sum(1), 1)
    sel = cover > 0
    g = grid[sel]
    bgv = hu[g[:, 0], g[:, 1], g[:, 2]]
    mean = smooth[g[:, 0], g[:, 1], g[:, 2]]
    new = bgv + cover[sel] * (val[sel] - mean)
    new = np.maximum(new, bgv)
    hu[g[:, 0], g[:, 1], g[:, 2]] = new
    hot = new >= 130
    labels[g[hot, 0], g[hot, 1], g[hot, 2]] = vessel_tag
    return int(hot.sum())


def plaque(bg, rng, start, heavy):
    length = rng.uniform(12, 45) if heavy else rng.choice([rng.uniform(3, 8), rng.uniform(6, 25)])
    pts = walk(bg, rng, start, length)
    if len(pts) < 2:
        pts = np.vstack([pts, pts + rng.normal(scale=0.3, size=(1, 3))])
    n = len(pts)
    base_r = rng.uniform(1.2, 2.6) if heavy else rng.uniform(0.8, 2.0)
    radii = np.clip(base_r * (1 + 0.3 * np.sin(np.linspace(0, rng.uniform(2, 9), n) + rng.uniform(0, 6))), 0.6, 3.0)
    if not heavy and rng.random() < 0.4:
        # Beads: gaps along the path.
        keep = (np.sin(np.linspace(0, rng.uniform(3, 10), n) + rng.uniform(0, 6)) > -0.2)
        keep[0] = True
        pts, radii = pts[keep], radii[keep]
    peak = np.exp(rng.uniform(np.log(250), np.log(1800 if heavy else 1200)))
    peaks = peak * rng.uniform(0.75, 1.25, size=len(pts))
    return pts, radii, peaks


def aortic_wall(bg, rng):
    """An aortic-wall calcification: an arc of the wall where it meets fat or lung, over a few
    slices, found by rays from the marked centre line; with --root-arcs, near the root often an
    arc inside the lumen instead (valve cusps, annulus)."""
    if not bg.aorta:
        return None
    name, line = bg.aorta[int(rng.integers(len(bg.aorta)))]
    k = rng.uniform(line[0, 0], line[-1, 0])
    row = np.interp(k, line[:, 0], line[:, 1])
    col = np.interp(k, line[:, 0], line[:, 2])
    z = int(round(k))
    sp = np.array(bg.ns)
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    radius = np.full(36, np.nan)
    for i, a in enumerate(angles):
        for r in np.arange(4.0, 30.0, 0.5):  # mm
            y = int(round(row + r * np.sin(a) / sp[1]))
            x = int(round(col + r * np.cos(a) / sp[2]))
            if not (0 <= y < bg.hu.shape[1] and 0 <= x < bg.hu.shape[2]):
                break
            v = bg.smooth[z, y, x]
            if v < -30:
                radius[i] = r
                break
            if v > 200:
                break
    ok = np.where(np.isfinite(radius))[0]
    if len(ok) == 0:
        return None
    start = int(ok[rng.integers(len(ok))])
    n = int(rng.integers(2, 11))
    idx = [(start + j) % 36 for j in range(n) if np.isfinite(radius[(start + j) % 36])]
    inset = rng.uniform(1.0, 2.5)
    # At the aortic root: valve cusps and annulus, arcs inside the lumen.
    if ROOT_ARCS[0] and name == "ascending_aorta" and k - line[0, 0] < 8.0 / sp[0] and rng.random() < 0.6:
        inset = None
        frac = rng.uniform(0.35, 0.85)
    slices = int(rng.integers(1, max(2, int(round(12.0 / sp[0]))) + 1))
    pts = []
    for dz in range(slices):
        for i in idx:
            r = radius[i] - inset if inset is not None else radius[i] * frac
            pts.append([(z + dz) * sp[0], row * sp[1] + r * np.sin(angles[i]), col * sp[2] + r * np.cos(angles[i])])
    pts = np.array(pts)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < bg.hu.shape[0] * sp[0])]
    if len(pts) == 0:
        return None
    radii = np.full(len(pts), rng.uniform(0.7, 1.6))
    peaks = np.exp(rng.uniform(np.log(300), np.log(1500))) * rng.uniform(0.8, 1.2, size=len(pts))
    return pts, radii, peaks


def valve(bg, rng):
    """A valve-cusp or annulus calcification: a short blob deep in the heart's tissue."""
    if len(bg.valve_seeds) == 0:
        return None
    start = bg.valve_seeds[rng.integers(len(bg.valve_seeds))].astype(float)
    pts = start[None] * np.array(bg.ns) + np.cumsum(rng.normal(scale=0.8, size=(int(rng.integers(2, 8)), 3)), 0)
    radii = rng.uniform(1.0, 2.5, size=len(pts))
    peaks = np.exp(rng.uniform(np.log(300), np.log(1500))) * rng.uniform(0.8, 1.2, size=len(pts))
    return pts, radii, peaks


def make_sample(bg, rng):
    hu = bg.hu.copy()
    tags = np.zeros(hu.shape, np.int16)
    kind = rng.random()
    n_plaques = 0 if kind < 0.1 else int(rng.integers(2, 10))
    heavy_cluster = kind > 0.6
    placed = []
    # Non-coronary calcification first: a coronary plaque drawn over it keeps its voxels.
    negatives = []
    for j in range(int(rng.integers(0, NON_CORONARY_MAX[0] + 1))):
        made = aortic_wall(bg, rng) if rng.random() < 0.6 else valve(bg, rng)
        if made is not None and render(hu, bg.smooth, bg.ns, *made, tags, 200 + j):
            negatives.append((200 + j, made[0].mean(0) / np.array(bg.ns)))
    for i in range(n_plaques):
        src = bg.seeds if rng.random() < 0.8 else bg.seeds_all
        start = src[rng.integers(len(src))].astype(float)
        pts, radii, peaks = plaque(bg, rng, start, heavy=False)
        if render(hu, bg.smooth, bg.ns, pts, radii, peaks, tags, i + 1):
            placed.append(i + 1)
    if heavy_cluster:
        # Dense confluent calcium: several long tubes from one upper seed (a proximal segment).
        start = bg.seeds[rng.integers(len(bg.seeds))].astype(float)
        for j in range(int(rng.integers(2, 5))):
            tag = 100 + j
            pts, radii, peaks = plaque(bg, rng, start, heavy=True)
            if render(hu, bg.smooth, bg.ns, pts, radii, peaks, tags, tag):
                placed.append(tag)
            start = pts[-1] / np.array(bg.ns) if rng.random() < 0.5 else start
    jitter = rng.uniform(-8, 8, size=3)
    centre = [bg.centre[a] + jitter[a] / bg.ns[a] for a in range(3)]
    x = fine_input(hu, centre, bg.ns)
    labels = np.zeros(hu.shape, np.uint8)
    per_vessel = [0, 0, 0, 0]
    for tag in placed:
        m = tags == tag
        if not m.any():
            continue  # wholly covered by a later plaque
        v = bg.vessel_at(np.argwhere(m).mean(0))
        labels[m] = v
        per_vessel[v - 1] += int(m.sum())
    y = labels_to_fine(labels, centre, bg.ns)
    # Non-coronary only where no vessel label is, as `cacd train-data --non-coronary-class`.
    nc = np.zeros(hu.shape, np.uint8)
    for tag, _ in negatives:
        nc[tags == tag] = NON_CORONARY
    if negatives:
        nc_fine = labels_to_fine(nc, centre, bg.ns)
        y[(y == 0) & (nc_fine != 0)] = NON_CORONARY
    distractors = [[from_native(centre, FINE, bg.ns, a, c[a]) for a in range(3)] for _, c in negatives]
    return x, y, jitter, per_vessel, distractors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True, help="bench/real/fetch.py output (CASE/VARIANT series)")
    ap.add_argument("--cacd", required=True, help="cacd binary (writes the heart outlines)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="heart outlines (default OUT/work)")
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--first-seed", type=int, default=50000)
    ap.add_argument("--models", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--non-coronary-max", type=int, default=NON_CORONARY_MAX[0],
                    help="most non-coronary calcifications per crop (0: none)")
    ap.add_argument("--root-arcs", action="store_true", help="also arcs inside the aortic root (valve cusps, annulus)")
    args = ap.parse_args()
    NON_CORONARY_MAX[:] = [args.non_coronary_max]
    ROOT_ARCS[:] = [args.root_arcs]
    import onnxruntime as ort

    out = Path(args.out)
    work = Path(args.work or out / "work")
    work.mkdir(parents=True, exist_ok=True)
    locator = ort.InferenceSession(str(Path(args.models) / "heart_fp32.onnx"), providers=["CPUExecutionProvider"])
    bgs = [Background(c, v, args.cases, args.cacd, work, locator) for c, v in BACKGROUNDS]
    for i in range(args.samples):
        seed = args.first_seed + i
        d = out / f"s{seed:05d}"
        if (d / "meta.json").exists():
            continue
        rng = np.random.default_rng(seed)
        bg = bgs[i % len(bgs)]
        x, y, jitter, per_vessel, distractors = make_sample(bg, rng)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "fine_x.npy", x)
        np.save(d / "fine_y.npy", y)
        meta = {"seed": seed, "background": bg.name, "jitter_mm": jitter.tolist(),
                "lesion_voxels_native": per_vessel, "lesion_voxels_fine": int((y > 0).sum()),
                "distractors_fine": distractors, "non_coronary_voxels_fine": int((y == NON_CORONARY).sum())}
        (d / "meta.json").write_text(json.dumps(meta))
        print(f"s{seed}: {bg.name} native voxels per vessel {per_vessel}, fine {int((y > 0).sum())}", flush=True)


if __name__ == "__main__":
    main()
