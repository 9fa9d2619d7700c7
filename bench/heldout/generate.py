#!/usr/bin/env python3
"""Held-out chest-CT phantom: a coronary-calcium study built independently of `cacd phantom`.

    python3 bench/heldout/generate.py OUT_DIR --seed N [--burden none|low|moderate|high]
                                      [--thickness MM] [--labels]

Writes OUT_DIR/CT0001.dcm ... (CT Image Storage, one file per slice, explicit VR little endian,
uint16 stored values with RescaleIntercept -1024, axial, LPS) and OUT_DIR/truth.json with the
Agatston score computed from this phantom's own lesion label volume (see README.md). With
--labels it also writes OUT_DIR/labels.npz (the label volume, 0 none, 1 LM, 2 LAD, 3 LCX, 4 RCA).

Only numpy and pydicom are needed. Nothing here is shared with cacd's generator: the anatomy is a
chest built around a heart made of chambers, the coronaries follow the grooves found on that
heart, calcium is a union of small blobs in the vessel wall, and the image is a slab average of
finer sub-slices, blurred by a point-spread function, with correlated noise and streaks.

This style is a held-out measure of generalisation: it is never used for training.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
import uuid

import numpy as np

VESSELS = ("LM", "LAD", "LCX", "RCA")
BURDENS = ("none", "low", "moderate", "high")
BIG = np.float32(1e4)
STYLE = "heldout-chambers-v1"


# ----------------------------------------------------------------------------- small helpers

def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def rotation(axis, angle):
    """Rodrigues rotation matrix (right-handed, radians)."""
    a = unit(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def smin(a, b, k):
    """Polynomial smooth minimum of two signed distances (fills concave creases up to ~k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def risk_category(total):
    if total <= 0:
        return "0"
    if total <= 10:
        return "1-10"
    if total <= 100:
        return "11-100"
    if total <= 400:
        return "101-400"
    return ">400"


def make_uid(seed, what):
    """2.25.<uuid as integer>, the UUID taken from a hash of the seed and the object's role."""
    h = hashlib.sha256(f"cacd-heldout/{STYLE}/{seed}/{what}".encode()).digest()[:16]
    return "2.25." + str(uuid.UUID(bytes=h, version=4).int)


def gauss1d(sigma_px):
    r = max(1, int(math.ceil(3.5 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma_px, 1e-3)) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur_small(a, k):
    """Separable convolution of a small 2-D patch with kernel k ('same' size, zero padding)."""
    r = len(k) // 2
    p = np.pad(a, r)
    out = np.zeros((p.shape[0], a.shape[1]), np.float32)
    for i, w in enumerate(k):
        out += w * p[:, i:i + a.shape[1]]
    res = np.zeros(a.shape, np.float32)
    for i, w in enumerate(k):
        res += w * out[i:i + a.shape[0], :]
    return res


# ----------------------------------------------------------------------------- the pixel grid

class Grid:
    def __init__(self, n, px, x0, y0):
        self.n, self.px, self.x0, self.y0 = n, px, x0, y0
        self.x = (x0 + px * np.arange(n)).astype(np.float32)
        self.y = (y0 + px * np.arange(n)).astype(np.float32)
        self.inv = np.float32(1.0 / px)

    def box(self, xa, xb, ya, yb):
        """(row slice, column slice, X (1,nx), Y (ny,1)) for a mm box, or None when empty."""
        ja = max(0, int(math.floor((xa - self.x0) / self.px)))
        jb = min(self.n, int(math.ceil((xb - self.x0) / self.px)) + 1)
        ia = max(0, int(math.floor((ya - self.y0) / self.px)))
        ib = min(self.n, int(math.ceil((yb - self.y0) / self.px)) + 1)
        if ja >= jb or ia >= ib:
            return None
        return slice(ia, ib), slice(ja, jb), self.x[None, ja:jb], self.y[ia:ib, None]

    def occ(self, sd):
        """Soft occupancy from a signed distance (mm): a one-pixel ramp across the surface."""
        return np.clip(np.float32(0.5) - sd * self.inv, 0.0, 1.0)


def paint(img, sy, sx, occ, hu):
    v = img[sy, sx]
    img[sy, sx] = v + occ * (hu - v)


# ----------------------------------------------------------------------------- primitives

class Ell:
    """Ellipsoid: centre c, rows of `axes` are its unit axes, semi-axes r (mm)."""

    def __init__(self, c, axes, r):
        self.c = np.asarray(c, float)
        self.R = np.asarray(axes, float)
        self.r = np.asarray(r, float)
        self.half = np.sqrt(((self.R * self.r[:, None]) ** 2).sum(0))

    def sdf(self, X, Y, Z):
        dx, dy, dz = X - self.c[0], Y - self.c[1], Z - self.c[2]
        R, r = self.R, self.r
        k0 = 0.0
        k1 = 0.0
        for i in range(3):
            li = R[i, 0] * dx + R[i, 1] * dy + R[i, 2] * dz
            k0 = k0 + (li / r[i]) ** 2
            k1 = k1 + (li / (r[i] * r[i])) ** 2
        k0 = np.sqrt(k0)
        k1 = np.sqrt(k1)
        return (k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)).astype(np.float32)

    def near(self, z, margin):
        return abs(z - self.c[2]) <= self.half[2] + margin

    def region_sdf(self, G, z, margin=1.0):
        """(sy, sx, sd) over the ellipsoid's box at slice z, or None."""
        if not self.near(z, margin):
            return None
        b = G.box(self.c[0] - self.half[0] - margin, self.c[0] + self.half[0] + margin,
                  self.c[1] - self.half[1] - margin, self.c[1] + self.half[1] + margin)
        if b is None:
            return None
        sy, sx, X, Y = b
        return sy, sx, self.sdf(X, Y, z)


def axis_ell(c, r):
    return Ell(c, np.eye(3), r)


class Tubes:
    """A set of capsule-like segments A→B with radii ra→rb, rendered by stamping: every segment
    touches only the pixels of its own box, all segments of a slice in one vectorised pass."""

    def __init__(self, A, B, ra, rb):
        self.A = np.asarray(A, np.float32).reshape(-1, 3)
        self.B = np.asarray(B, np.float32).reshape(-1, 3)
        self.ra = np.asarray(ra, np.float32).reshape(-1)
        self.rb = np.asarray(rb, np.float32).reshape(-1)
        rm = np.maximum(self.ra, self.rb)
        self.rm = rm
        self.zlo = np.minimum(self.A[:, 2], self.B[:, 2]) - rm
        self.zhi = np.maximum(self.A[:, 2], self.B[:, 2]) + rm
        self.D = self.B - self.A
        self.L2 = np.maximum((self.D ** 2).sum(1), 1e-6)
        # a segment continuing its predecessor / successor almost straight (for pruning caps)
        k = len(self.A)
        u = self.D / np.sqrt(self.L2)[:, None]
        joint = np.zeros(k + 1, bool)
        if k > 1:
            joint[1:-1] = (np.abs(self.B[:-1] - self.A[1:]).sum(1) < 1e-3) & ((u[:-1] * u[1:]).sum(1) > 0.85)
        self.prv_ok = joint[:-1]
        self.nxt_ok = joint[1:]
        self.zmin = np.minimum(self.A[:, 2], self.B[:, 2])
        self.zmax = np.maximum(self.A[:, 2], self.B[:, 2])

    @staticmethod
    def polyline(P, r):
        P = np.asarray(P, float)
        r = np.broadcast_to(np.asarray(r, float), (len(P),))
        return Tubes(P[:-1], P[1:], r[:-1], r[1:])

    @staticmethod
    def concat(ts):
        ts = [t for t in ts if t is not None and len(t.A)]
        return Tubes(np.concatenate([t.A for t in ts]), np.concatenate([t.B for t in ts]),
                     np.concatenate([t.ra for t in ts]), np.concatenate([t.rb for t in ts]))

    def sd(self, G, z, grow=0.0):
        """(flat pixel indices, signed distance) of pixels within `grow` mm + 1 px of the tubes."""
        win = (self.zlo - grow <= z) & (self.zhi + grow >= z)
        core = (self.zmin <= z) & (self.zmax >= z)
        cov = core
        for _ in range(5):
            cov = cov | (self.prv_ok & np.concatenate([[False], cov[:-1]])) | (self.nxt_ok & np.concatenate([cov[1:], [False]]))
        redundant = ~core & win & cov
        act = np.nonzero(win & ~redundant)[0]
        if len(act) == 0:
            return None
        A, B, D = self.A[act], self.B[act], self.D[act]
        # cross-section half size at this z (bounded by the segment's horizontal extent)
        m = self.rm[act] + grow + G.px
        xa = np.minimum(A[:, 0], B[:, 0]) - m
        xb = np.maximum(A[:, 0], B[:, 0]) + m
        ya = np.minimum(A[:, 1], B[:, 1]) - m
        yb = np.maximum(A[:, 1], B[:, 1]) + m
        # tighten the box to the part of the segment near this z
        dz = D[:, 2]
        steep = np.abs(dz) > 1e-3
        if steep.any():
            t0 = np.where(steep, (z - m - A[:, 2]) / np.where(steep, dz, 1), 0.0)
            t1 = np.where(steep, (z + m - A[:, 2]) / np.where(steep, dz, 1), 1.0)
            tl = np.clip(np.minimum(t0, t1), 0, 1)
            th = np.clip(np.maximum(t0, t1), 0, 1)
            pxl = A[:, 0] + D[:, 0] * tl
            pxh = A[:, 0] + D[:, 0] * th
            pyl = A[:, 1] + D[:, 1] * tl
            pyh = A[:, 1] + D[:, 1] * th
            xa = np.where(steep, np.minimum(pxl, pxh) - m, xa)
            xb = np.where(steep, np.maximum(pxl, pxh) + m, xb)
            ya = np.where(steep, np.minimum(pyl, pyh) - m, ya)
            yb = np.where(steep, np.maximum(pyl, pyh) + m, yb)
        ja = np.clip(np.floor((xa - G.x0) / G.px), 0, G.n).astype(np.int64)
        jb = np.clip(np.ceil((xb - G.x0) / G.px) + 1, 0, G.n).astype(np.int64)
        ia = np.clip(np.floor((ya - G.y0) / G.px), 0, G.n).astype(np.int64)
        ib = np.clip(np.ceil((yb - G.y0) / G.px) + 1, 0, G.n).astype(np.int64)
        w = np.maximum(jb - ja, 0)
        h = np.maximum(ib - ia, 0)
        cnt = w * h
        tot = int(cnt.sum())
        if tot == 0:
            return None
        seg = np.repeat(np.arange(len(act)), cnt)
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        loc = np.arange(tot) - start
        ww = w[seg]
        ii = ia[seg] + loc // ww
        jj = ja[seg] + loc % ww
        X = G.x[jj]
        Y = G.y[ii]
        ax, ay, az = A[seg, 0], A[seg, 1], A[seg, 2]
        dx, dy, dzz = D[seg, 0], D[seg, 1], D[seg, 2]
        t = ((X - ax) * dx + (Y - ay) * dy + (z - az) * dzz) / self.L2[act][seg]
        t = np.clip(t, 0.0, 1.0)
        ex = X - ax - t * dx
        ey = Y - ay - t * dy
        ez = z - az - t * dzz
        r = self.ra[act][seg] + t * (self.rb[act][seg] - self.ra[act][seg])
        sd = np.sqrt(ex * ex + ey * ey + ez * ez) - r
        flat = ii * G.n + jj
        keep = sd < grow + G.px
        flat, sd = flat[keep], sd[keep]
        if len(flat) == 0:
            return None
        buf, mark = _scratch(G.n)
        np.minimum.at(buf, flat, sd.astype(np.float32))
        mark[flat] = True
        u = np.flatnonzero(mark)
        out = buf[u].copy()
        buf[u] = BIG
        mark[u] = False
        return u, out


_SCRATCH = {}


def _scratch(n):
    if n not in _SCRATCH:
        _SCRATCH[n] = (np.full(n * n, BIG, np.float32), np.zeros(n * n, bool))
    return _SCRATCH[n]


def tubes_sdf_pts(t, P, chunk=4096):
    """Signed distance of points P (N,3) to a Tubes set (exact capsules)."""
    P = np.asarray(P, float).reshape(-1, 3)
    A, D = t.A.astype(float), t.D.astype(float)
    L2 = t.L2.astype(float)
    ra, rb = t.ra.astype(float), t.rb.astype(float)
    out = np.empty(len(P))
    for i in range(0, len(P), chunk):
        q = P[i:i + chunk, None, :]
        tt = np.clip(((q - A) * D).sum(-1) / L2, 0, 1)
        d = np.linalg.norm(q - (A + tt[..., None] * D), axis=-1) - (ra + tt * (rb - ra))
        out[i:i + chunk] = d.min(1)
    return out


def paint_flat(img, res, G, hu, offset=0.0, weight=None):
    """Paint a Tubes.sd result (shrunk by `offset` mm) with value hu."""
    if res is None:
        return
    u, sd = res
    o = G.occ(sd + offset)
    if weight is not None:
        o = o * weight(u)
    f = img.reshape(-1)
    v = f[u]
    f[u] = v + o * (hu - v)


def polar_lut_radius(A, Bant, Bpost, n, phis):
    """Polar radius of an asymmetric superellipse for angles measured from +y (posterior)."""
    s = np.abs(np.sin(phis))
    c = np.cos(phis)
    B = np.where(c > 0, Bpost, Bant)
    return 1.0 / ((s / A) ** n + (np.abs(c) / B) ** n) ** (1.0 / n)


# ----------------------------------------------------------------------------- curves

def resample(P, step=0.5):
    P = np.asarray(P, float)
    seg = np.linalg.norm(np.diff(P, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(s[-1] / step) + 1)
    si = np.linspace(0, s[-1], n)
    return np.stack([np.interp(si, s, P[:, k]) for k in range(3)], 1)


def smooth_curve(P, win):
    if win <= 1 or len(P) < 3:
        return P
    k = np.ones(win) / win
    pad = win // 2
    Q = np.concatenate([np.repeat(P[:1], pad, 0), P, np.repeat(P[-1:], pad, 0)])
    out = np.stack([np.convolve(Q[:, i], k, mode="valid") for i in range(3)], 1)
    out = out[:len(P)]
    out[0], out[-1] = P[0], P[-1]
    return out


def catmull(pts, n_per=12):
    """Catmull-Rom spline through control points."""
    pts = np.asarray(pts, float)
    P = np.concatenate([pts[:1] * 2 - pts[1:2], pts, pts[-1:] * 2 - pts[-2:-1]])
    out = []
    for i in range(1, len(P) - 2):
        p0, p1, p2, p3 = P[i - 1], P[i], P[i + 1], P[i + 2]
        for t in np.linspace(0, 1, n_per, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    out.append(P[-2])
    return np.array(out)


class Path:
    """A vessel centre line resampled at 0.5 mm with a parallel-transport frame and radii."""

    def __init__(self, name, label, P, r0, r1):
        self.name, self.label = name, label
        self.P = resample(P, 0.5)
        n = len(self.P)
        self.s = np.arange(n) * 0.5 if n > 1 else np.zeros(1)
        self.length = float(np.sum(np.linalg.norm(np.diff(self.P, axis=0), axis=1)))
        self.s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(self.P, axis=0), axis=1))])
        self.r = np.linspace(r0, r1, n)
        T = np.gradient(self.P, axis=0)
        T /= np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-9)
        self.T = T
        N1 = np.zeros_like(T)
        a = np.cross(T[0], [0, 0, 1.0])
        if np.linalg.norm(a) < 1e-3:
            a = np.cross(T[0], [1.0, 0, 0])
        N1[0] = unit(a)
        for i in range(1, n):
            v = N1[i - 1] - np.dot(N1[i - 1], T[i]) * T[i]
            N1[i] = unit(v) if np.linalg.norm(v) > 1e-9 else N1[i - 1]
        self.N1 = N1
        self.N2 = np.cross(T, N1)

    def at(self, s):
        i = int(np.clip(round(s / 0.5), 0, len(self.P) - 1))
        return i

    def tubes(self, extra=0.0, step=2):
        idx = np.unique(np.concatenate([np.arange(0, len(self.P), step), [len(self.P) - 1]]))
        return Tubes.polyline(self.P[idx], self.r[idx] + extra)


# ----------------------------------------------------------------------------- the patient

class Patient:
    """All randomised geometry and tissue values of one study (patient frame LPS, mm; the heart's
    base centre O sits at z = 0)."""

    def __init__(self, seed, burden, thickness):
        self.seed = seed
        rng = np.random.default_rng([seed, 20240611])
        self.rng = rng
        U = rng.uniform
        self.burden = burden
        self.T = thickness

        # ---- tissue values (HU, 120 kVp, non-contrast)
        blood = U(32, 47)
        self.hu = dict(
            air=-1000.0, fat=U(-112, -86), muscle=U(42, 60), blood=blood, myo=blood + U(0, 6),
            liver=U(50, 68), spleen=U(40, 52), lung=U(-885, -835), cart=U(85, 160),
            cortex=U(620, 1000), marrow=U(110, 260), disc=U(65, 100), skin=U(10, 40),
            peric=U(15, 40), node=U(25, 45), fluid=U(5, 22), gland=U(-25, 25),
            table=U(150, 350), cord=U(15, 35), bowel=U(-40, 30))

        # ---- heart frame: long axis from the base centre O towards the apex
        self.s_h = U(0.86, 1.16)
        az = math.radians(U(35, 58))       # from anterior towards the patient's left
        de = math.radians(U(15, 38))       # below the axial plane
        ea = np.array([math.sin(az) * math.cos(de), -math.cos(az) * math.cos(de), -math.sin(de)])
        er0 = np.array([-math.cos(az), -math.sin(az), 0.0])
        er = unit(er0 - np.dot(er0, ea) * ea)
        roll = rotation(ea, math.radians(U(-14, 14)))
        er = roll @ er
        ec = np.cross(ea, er)
        self.ea, self.er, self.ec = ea, er, ec
        self.O = np.array([U(2, 22), 0.0, 0.0])
        self._build_heart()

        # ---- spine and chest built round the heart
        self._build_chest()
        self._build_vessels()
        self._build_coronaries()
        self._build_lung_trees()
        self._build_abdomen()
        self.nodes = []

    # .......................................................................... heart
    def L(self, a, r, c):
        """Heart-local (along long axis, towards RV, towards diaphragm) → patient."""
        return self.O + a * self.ea + r * self.er + c * self.ec

    def _build_heart(self):
        U, s = self.rng.uniform, self.s_h
        fr = np.stack([self.ea, self.er, self.ec])
        lv_len, lv_rad = U(46, 54) * s, U(24, 30) * s
        wall = U(8.5, 12)
        self.lv = Ell(self.L(38 * s, -8 * s, 0), fr, [lv_len, lv_rad, lv_rad * U(0.92, 1.05)])
        self.lv_cav = Ell(self.L(40 * s + 0.5 * wall, -8 * s, 0), fr,
                          [lv_len - wall * 1.3, lv_rad - wall, lv_rad * 0.98 - wall])
        rv_c = self.L(U(26, 32) * s, U(12, 17) * s, -U(4, 9) * s)
        rv_r = [U(38, 46) * s, U(19, 24) * s, U(29, 35) * s]
        self.rv = Ell(rv_c, fr, rv_r)
        self.rv_cav = Ell(rv_c, fr, [rv_r[0] - 5, rv_r[1] - 4, rv_r[2] - 4])
        O = self.O
        self.la = axis_ell(O + s * np.array([U(4, 12), U(25, 31), U(11, 17)]),
                           s * np.array([U(29, 35), U(16, 20), U(19, 24)]))
        self.la_cav = axis_ell(self.la.c, self.la.r - 2.5)
        self.ra = axis_ell(O + s * np.array([-U(34, 42), U(2, 9), U(0, 6)]),
                           s * np.array([U(21, 27), U(23, 29), U(26, 32)]))
        self.ra_cav = axis_ell(self.ra.c, self.ra.r - 2.5)
        self.laa = Ell(O + s * np.array([U(24, 32), -U(4, 10), U(20, 26)]),
                       np.stack([unit([0.7, -0.6, 0.3]), unit([0.6, 0.75, 0.0]),
                                 np.cross(unit([0.7, -0.6, 0.3]), unit([0.6, 0.75, 0.0]))]),
                       s * np.array([U(12, 16), U(7, 9), U(6, 8)]))
        # aortic valve and root (sinuses)
        self.av = O + s * np.array([-U(2, 7), -U(5, 11), U(12, 17)])
        self.d_ao = unit([-U(0.15, 0.35), -U(0.25, 0.45), 0.9])
        self.r_root = U(14, 17) * s
        self.root = axis_ell(self.av + self.d_ao * 9 * s, [self.r_root] * 3)
        self.pv = self.av + s * np.array([U(13, 18), -U(12, 17), U(10, 15)])
        # right-ventricular outflow tract: muscular, from the RV body up to the pulmonary valve
        a0 = self.L(10 * s, 15 * s, -14 * s)
        ax = self.pv - a0
        la_ = np.linalg.norm(ax)
        u = ax / la_
        v = unit(np.cross(u, [0, 0, 1.0]) if abs(u[2]) < 0.95 else np.cross(u, [1.0, 0, 0]))
        self.rvot = Ell((a0 + self.pv) / 2, np.stack([u, v, np.cross(u, v)]), [la_ / 2 + 3, 12 * s, 12 * s])
        self.rvot_cav = Ell(self.rvot.c, self.rvot.R, self.rvot.r - [0, 3, 3])
        self.walls = [self.lv, self.rv, self.la, self.ra, self.laa, self.root, self.rvot]
        self.epi0 = U(0.5, 2.0)            # epicardial fat over the free walls (mm)
        self.epi_amp = U(1.0, 4.0)         # ... plus a smooth, patchy excess
        self.epi_k = self.rng.normal(0, 1, (3, 3)) * (2 * math.pi / self.rng.uniform(35, 80, (3, 1)))
        self.epi_ph = self.rng.uniform(0, 2 * math.pi, 3)
        self.k_groove = U(12, 20)          # how deep the grooves fill with fat
        self.k_myo = U(8, 11)              # how smoothly the chambers merge
        self.peric_t = U(1.0, 1.8)
        self.paracard = U(1.5, 6)          # fat outside the pericardium (more in front and below)
        self.paracard_ant = U(1, 12)
        self.paracard_inf = U(3, 20)

    def epi(self, X, Y, Z):
        v = 0.0
        for i in range(3):
            k = self.epi_k[i]
            v = v + np.sin(k[0] * X + k[1] * Y + k[2] * Z + self.epi_ph[i])
        return self.epi0 + self.epi_amp * np.clip(0.5 + v / 3.0, 0, 1)

    def myo_sdf(self, X, Y, Z):
        d = None
        for e in self.walls:
            v = e.sdf(X, Y, Z)
            d = v if d is None else smin(d, v, self.k_myo)
        return d

    # .......................................................................... chest
    def _build_chest(self):
        U, rng = self.rng.uniform, self.rng
        # vertebral column: body centre line behind the left atrium
        self.vb_rx, self.vb_ry = U(16, 21), U(14, 18)
        la_back = self.la.c[1] + self.la.r[1]
        self.vb_y0 = la_back + U(12, 19) + self.vb_ry
        self.vb_x = U(-4, 4)
        self.kyph = U(0.0004, 0.0014)
        self.hv = U(23, 28)                    # vertebral level height
        self.disc = U(4, 6)
        self.vb_z0 = U(0, self.hv)             # a vertebral centre
        # descending aorta at the left front of the spine
        self.r_da = U(11, 14)
        # thoracic cavity (inner chest wall) round the heart
        heart_ant = min(self.rv.c[1] - self.rv.half[1], self.lv.c[1] - self.lv.half[1])
        heart_left = self.lv.c[0] + self.lv.half[0]
        heart_right = self.ra.c[0] - self.ra.half[0]
        self.cav_ant = heart_ant - U(3, 16)
        self.cav_post = self.vb_y0 + self.vb_ry + U(22, 32)
        self.cav_yc = 0.5 * (self.cav_ant + self.cav_post) + U(-8, 4)
        half_w = max(heart_left, -heart_right) + U(25, 60)
        self.cav_A = max(half_w, U(105, 150))
        self.cav_n = U(1.8, 2.2)
        self.cav_taper = U(0.05, 0.2)          # wider towards the diaphragm (per 100 mm)
        # chest wall and body, in polar coordinates about the cavity centre: the cavity plus a
        # wall (ribs, intercostal and chest-wall muscles, pectorals in front), merged with the
        # paraspinal muscle mass behind, then subcutaneous fat; the back lies flat on the table
        self.rib_r = U(3.6, 4.8)
        self.wall_lat = 2 * self.rib_r + 2 + U(3, 9)
        self.fat = U(6, 38)
        self.muscle_ant = U(6, 16)
        self.ps_c = (self.vb_x, self.vb_y0 + self.vb_ry + U(16, 22))
        self.ps_r = (U(60, 80), U(32, 40))
        self.fat_h = rng.normal(0, 0.12, 4)    # angular variation of the fat layer
        self.body_yc = self.cav_yc
        self.y_back = 1e9
        phis = np.linspace(-math.pi, math.pi, 1440, endpoint=False)
        rb0 = self.body_lut(0.0, phis)
        while 2 * np.abs(rb0 * np.sin(phis)).max() > 395 and self.fat > 5:
            self.fat *= 0.85            # a chest that fits the 410 mm field of view
            rb0 = self.body_lut(0.0, phis)
        yb = self.cav_yc + rb0 * np.cos(phis)
        xb = rb0 * np.sin(phis)
        self.y_back = float(yb.max() - U(4, 12))
        self.body_A = float(np.abs(xb).max())
        self.body_Bant = float(self.cav_yc - yb.min())
        self.body_Bpost = float(self.y_back - self.cav_yc)
        self.female = rng.random() < 0.4
        if self.female:
            d = U(60, 95)
            rz = U(45, 65)
            depth = U(15, 40)
            rl = U(55, 85)
            zc = U(-20, 15)
            ant = np.cos(phis) < 0
            k = np.argmin(np.where(ant, np.abs(np.abs(xb) - d), 1e9))
            ys = yb[k]
            self.breasts = [axis_ell([sx * d, ys + depth * 0.35, zc], [rl, depth, rz]) for sx in (-1, 1)]
            self.glands = [axis_ell(b.c + [0, -depth * 0.1, 0], b.r * 0.6) for b in self.breasts]
        else:
            self.breasts, self.glands = [], []
        # sternum in the anterior midline
        self.st_y = self.cav_ant - U(5, 8)
        self.med_w0 = U(3, 9)
        self.med_w1 = U(10, 20)
        self.st_top = U(90, 130)
        self.st_bot = U(-85, -50)
        self.st_w = U(12, 17)
        self.st_d = U(5, 7)
        # the table under the patient
        self.table_y = self.y_back + 1.0
        # ribs: 12 each side, posterior ends at the vertebral levels
        self.ribs, self.cartilage = self._build_ribs()

    def cav_lut(self, z, phis):
        f = 1.0 + self.cav_taper * np.clip(-(z - 0.0) / 100.0, -0.6, 1.2)
        A = self.cav_A * f
        Bant = (self.cav_yc - self.cav_ant) * (1 + 0.4 * (f - 1))
        Bpost = (self.cav_post - self.cav_yc) * (1 + 0.2 * (f - 1))
        return polar_lut_radius(A, Bant, Bpost, self.cav_n, phis)

    def _ps_radius(self, phis):
        """Polar radius (about the cavity centre) of the paraspinal muscle ellipse."""
        ex, ey = self.ps_c
        a, b = self.ps_r
        ux, uy = np.sin(phis), np.cos(phis)
        cx, cy = -ex, self.cav_yc - ey
        A = (ux / a) ** 2 + (uy / b) ** 2
        B = 2 * (cx * ux / a ** 2 + cy * uy / b ** 2)
        C = (cx / a) ** 2 + (cy / b) ** 2 - 1
        disc = B * B - 4 * A * C
        t = np.where(disc > 0, (-B + np.sqrt(np.maximum(disc, 0))) / (2 * A), 0.0)
        return np.maximum(t, 0.0)

    def muscle_lut(self, z, phis):
        c = np.cos(phis)
        r = self.cav_lut(z, phis) + self.wall_lat + self.muscle_ant * np.clip(-c, 0, 1) ** 2
        return -smin(-r, -self._ps_radius(phis), 40.0)

    def body_lut(self, z, phis):
        r = self.muscle_lut(z, phis) + self.fat_lut(phis)
        c = np.cos(phis)
        lim = np.where(c > 0.02, (self.y_back - self.cav_yc) / np.maximum(c, 0.02), 1e9)
        return np.minimum(r, lim)

    def fat_lut(self, phis):
        h = self.fat_h
        v = (0.75 + 0.45 * np.sin(phis) ** 2 - 0.25 * np.cos(phis)
             + h[0] * np.cos(2 * phis) + h[1] * np.sin(3 * phis) + h[2] * np.cos(3 * phis))
        return self.fat * np.clip(v, 0.3, 1.8)

    def vb_y(self, z):
        return self.vb_y0 - self.kyph * (z - 10.0) ** 2

    def _build_ribs(self):
        U = self.rng.uniform
        ribs, cart = [], []
        drop = U(85, 120)
        rib_r = self.rib_r
        for k in range(-6, 9):                 # vertebral levels round the heart
            zk = self.vb_z0 + k * self.hv
            for side in (-1, 1):
                z_start = zk + 4
                phis = np.linspace(math.radians(28), math.radians(168), 48)
                t = (phis - phis[0]) / (phis[-1] - phis[0])
                dz = drop * U(0.85, 1.15) * t ** 1.25
                pts = []
                yc = self.cav_yc
                for ph, d in zip(phis, dz):
                    z = z_start - d
                    rad = float(self.cav_lut(z, np.array([ph]))[0]) + rib_r + 1.5
                    pts.append([side * rad * math.sin(ph), yc + rad * math.cos(ph), z])
                pts = np.array(pts)
                head = np.array([self.vb_x + side * (self.vb_rx - 3), self.vb_y(z_start) + 4, z_start + 2])
                tp = np.array([self.vb_x + side * 30, self.vb_y(z_start) + self.vb_ry + 14, z_start + 1])
                allp = np.concatenate([[head, tp], pts])
                # the bony rib ends at ~70 % of the arc; costal cartilage carries on to the sternum
                n_bone = int(len(allp) * U(0.68, 0.78))
                bone = allp[:n_bone + 1]
                ribs.append(bone)
                c = allp[n_bone:].copy()
                # last part bends to the sternal edge
                c[-1] = [side * self.st_w * 0.9, self.st_y + 2, c[-1][2] + 6]
                cart.append(c)
        return ribs, cart

    # .......................................................................... vessels
    def _build_vessels(self):
        U, s = self.rng.uniform, self.s_h
        av, d = self.av, self.d_ao
        r_asc = U(14, 18)
        self.r_asc = r_asc
        da_x = self.vb_x + 0.8 * self.vb_rx + 0.6 * self.r_da
        da_y = self.vb_y0 - 0.5 * self.vb_ry - 0.4 * self.r_da
        self.da_xy = (da_x, da_y)
        top = U(70, 95)
        ctrl = [av, av + d * 22 * s, av + s * np.array([-10, -7, 50]), av + np.array([-4, 6, top - 10]),
                np.array([(av[0] + da_x) / 2, (av[1] + da_y) / 2 + 5, av[2] + top]),
                np.array([da_x, da_y - 4, av[2] + top - 14]), np.array([da_x, da_y, av[2] + top - 45]),
                np.array([da_x, da_y, -120.0]), np.array([da_x - 3, da_y + 2, -260.0])]
        P = catmull(ctrl, 10)
        r = np.interp(np.arange(len(P)), [0, 10, 30, len(P) - 1], [self.r_root, r_asc, r_asc * 0.85, self.r_da])
        self.aorta = Path("aorta", "aorta", P, 1, 1)
        self.aorta.r = np.interp(np.linspace(0, 1, len(self.aorta.P)), np.linspace(0, 1, len(r)), r)
        # pulmonary trunk and arteries
        pv = self.pv
        pb = pv + s * np.array([U(6, 12), U(18, 24), U(26, 32)])
        self.pb = pb
        lhil = np.array([self.cav_A * 0.45 + 10, pb[1] + 28, pb[2] - 12])
        rhil = np.array([-self.cav_A * 0.45 - 8, pb[1] + 22, pb[2] - 14])
        self.hila = (rhil, lhil)
        self.pt = Tubes.concat([
            Tubes.polyline(resample(catmull([pv - (pb - pv) * 0.1, pv, pv + (pb - pv) * 0.55, pb], 8), 5.0),
                           [U(12, 14)]),
            Tubes.polyline(resample(catmull([pb, pb + np.array([22, 14, 2]), lhil], 8), 6.0), [U(10, 12)]),
            Tubes.polyline(resample(catmull([pb, pb + np.array([-20, 16, -3]), rhil], 8), 6.0), [U(10, 12)])])
        # caval veins
        ra = self.ra
        svc_top = np.array([ra.c[0] - 4, av[1] + 12, av[2] + 120])
        self.svc = Tubes.polyline(resample(catmull([svc_top, svc_top + [0, 0, -60], ra.c + [3, 2, ra.r[2] * 0.6]], 6),
                                           8.0), [U(8, 11)])
        self.ivc = Tubes.polyline(resample(catmull([ra.c + [6, 8, -ra.r[2] * 0.6], ra.c + [10, 18, -ra.r[2] - 25],
                                                    ra.c + [12, 22, -200]], 6), 8.0), [U(11, 14)])
        # pulmonary veins into the left atrium
        la = self.la
        pvs = []
        for sx in (-1, 1):
            for dz in (10, -8):
                a = la.c + np.array([sx * la.r[0] * 0.75, la.r[1] * 0.3, dz * s])
                b = a + np.array([sx * 32, 12 + U(-4, 4), dz * 1.3 + U(-5, 5)])
                pvs.append(Tubes.polyline([a, b], [U(6, 8)]))
        self.pveins = Tubes.concat(pvs)
        # trachea, carina and main bronchi; oesophagus
        tx, ty = self.vb_x - U(0, 6), self.vb_y(60) - self.vb_ry - U(18, 26)
        car = np.array([tx, ty + 4, pb[2] + U(8, 22)])
        self.carina = car
        tr = [np.array([tx, ty, 300.0]), np.array([tx, ty, car[2] + 20]), car]
        rb = [car, car + [-20, 6, -12], car + [-34, 14, -24], rhil + [-4, 12, -6]]
        lb = [car, car + [24, 8, -14], car + [40, 16, -26], lhil + [4, 12, -6]]
        self.airway_paths = [(catmull(tr, 6), U(8, 10)), (catmull(rb, 6), U(6, 7)), (catmull(lb, 6), U(5, 6.5))]
        ex = self.vb_x + U(2, 10)
        ey = self.vb_y0 - self.vb_ry - U(6, 10)
        self.eso = Tubes.polyline([[ex, ey, 300.0], [ex + 2, ey, 0], [ex + 14, ey - 8, -150], [ex + 40, ey - 30, -250]],
                                  [U(7, 9)])
        self.eso_air = self.rng.random() < 0.4
        # the great vessels round the heart base, which the coronaries must stay out of
        ao = self.aorta
        near = ao.s < 140
        self.great_near = Tubes.concat([Tubes.polyline(ao.P[near][::8], ao.r[near][::8]), self.pt, self.svc])

    # .......................................................................... coronaries
    def _ray_surface(self, origins, dirs, off, rmax=110.0, step=2.0):
        """Largest ρ ≥ 0 where myo_sdf(origin + ρ dir) ≤ off (outermost surface crossing)."""
        rs = np.arange(0, rmax, step)
        P = origins[:, None, :] + dirs[:, None, :] * rs[None, :, None]
        S = self.myo_sdf(P[..., 0], P[..., 1], P[..., 2]) - off
        inside = S <= 0
        idx = np.where(inside.any(1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
        lo = rs[idx]
        hi = np.minimum(lo + step, rmax)
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            Q = origins + dirs * mid[:, None]
            v = self.myo_sdf(Q[:, 0], Q[:, 1], Q[:, 2]) - off
            lo = np.where(v <= 0, mid, lo)
            hi = np.where(v <= 0, hi, mid)
        return 0.5 * (lo + hi)

    def _dirs(self, th):
        th = np.asarray(th, float)
        return np.cos(th)[:, None] * self.er + np.sin(th)[:, None] * self.ec

    def obstacle_sdf(self, P):
        """Distance to the nearest of the heart muscle and the great vessels (the aortic root
        and ascending aorta, the pulmonary trunk and arteries, the SVC): coronaries run outside."""
        P = np.asarray(P, float)
        return smin(self.myo_sdf(P[:, 0], P[:, 1], P[:, 2]), tubes_sdf_pts(self.great_near, P), 6.0)

    def _settle(self, P, off, keep=0, rounds=4):
        """Resample, smooth and push out a few times, so that no stretch between neighbouring
        points cuts through a chamber or a great vessel. The first `keep` points stay."""
        P = np.asarray(P, float)
        for _ in range(rounds):
            P = resample(P, 1.0)
            head = P[:keep].copy()
            P = smooth_curve(P, 5)
            P[:keep] = head
            P[keep:] = self._push_out(P[keep:], off)
        return P

    def _push_out(self, P, off, iters=25):
        """Move points that lie inside (obstacles + off) out along the gradient."""
        P = np.array(P, float)
        e = 0.3
        for _ in range(iters):
            S = self.obstacle_sdf(P) - off
            bad = S < 0
            if not bad.any():
                break
            Q = P[bad]
            g = np.stack([self.obstacle_sdf(Q + d) - self.obstacle_sdf(Q - d)
                          for d in (np.array([e, 0, 0]), np.array([0, e, 0]), np.array([0, 0, e]))], 1)
            gn = np.linalg.norm(g, axis=1, keepdims=True)
            away = Q - (self.O + 30 * self.s_h * self.ea)
            away /= np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-6)
            g = np.where(gn > 0.05, g / np.maximum(gn, 1e-6), away)   # flat spots: straight outwards
            P[bad] = Q - 0.8 * (S[bad, None] - 0.3) * g
        return P

    def _build_coronaries(self):
        U, s = self.rng.uniform, self.s_h
        off = U(3.2, 4.4)
        # AV groove: for each angle round the long axis, the crease (minimum radius along the axis)
        ths = np.radians(np.arange(-180, 180, 5.0))
        ts = np.arange(-14, 16, 1.5) * s
        O = self.O
        origins = (O[None, None, :] + ts[None, :, None] * self.ea[None, None, :]).reshape(-1, 3)
        origins = np.broadcast_to(origins.reshape(1, len(ts), 3), (len(ths), len(ts), 3)).reshape(-1, 3)
        dirs = np.repeat(self._dirs(ths), len(ts), axis=0)
        rho = self._ray_surface(origins, dirs, off).reshape(len(ths), len(ts))
        tstar = ts[np.argmin(rho + 0.02 * (ts[None, :] / s) ** 2, axis=1)]
        # smooth circularly
        k = np.ones(5) / 5
        tstar = np.convolve(np.concatenate([tstar[-2:], tstar, tstar[:2]]), k, "valid")
        o2 = O[None, :] + tstar[:, None] * self.ea[None, :]
        d2 = self._dirs(ths)
        rr = self._ray_surface(o2, d2, off)
        ring = o2 + d2 * rr[:, None]
        self.ring_th, self.ring = ths, ring

        def ring_arc(t0, t1, step=math.radians(5)):
            n = max(2, int(abs(t1 - t0) / step) + 1)
            tt = np.linspace(t0, t1, n)
            ttw = (tt + math.pi) % (2 * math.pi) - math.pi
            o = O[None, :] + np.interp(ttw, ths, tstar, period=2 * math.pi)[:, None] * self.ea[None, :]
            d = self._dirs(ttw)
            return o + d * self._ray_surface(o, d, off)[:, None]

        # interventricular grooves: where the LV surface meets the RV surface
        lv, rv = self.lv, self.rv
        apex_t = (lv.c - O) @ self.ea + lv.r[0]
        tt = np.linspace(16 * s, apex_t - 4, 40)
        ant, inf = [], []
        for t in tt:
            c = lv.c + ((O + t * self.ea) - lv.c) @ self.ea * self.ea
            thg = np.radians(np.arange(-180, 180, 2.0))
            d = self._dirs(thg)
            rl = self._ray_surface_single(lv, c, d)
            P = c[None, :] + d * rl[:, None]
            v = rv.sdf(P[:, 0], P[:, 1], P[:, 2])
            sgn = np.sign(v)
            ch = np.nonzero(sgn[:-1] != sgn[1:])[0]
            for lst, lo_, hi_ in ((ant, -math.pi, 0.0), (inf, 0.0, math.pi)):
                cand = [i for i in ch if lo_ <= thg[i] < hi_]
                if cand:
                    # the crossing nearest the middle of the half-plane
                    i = min(cand, key=lambda i: abs(thg[i] - (lo_ + hi_) / 2))
                    lst.append((t, thg[i], c))
        def groove(lst, frac_end=1.0, wrap=0.0):
            if len(lst) < 2:
                return None
            n = max(2, int(len(lst) * frac_end))
            lst = lst[:n]
            o = np.array([c for _, _, c in lst])
            d = self._dirs([th for _, th, _ in lst])
            pts = o + d * self._ray_surface(o, d, off)[:, None]
            return pts
        lad_g = groove(ant)
        pda_g = groove(inf, U(0.4, 0.75))
        # ostia on the aortic root
        root = self.root
        lo_dir = unit([U(0.75, 0.95), U(0.1, 0.35), U(-0.1, 0.15)])
        ro_dir = unit([-U(0.3, 0.55), -U(0.8, 0.95), U(-0.15, 0.1)])
        lost = root.c + lo_dir * (root.r[0] - 1.0)
        rost = root.c + ro_dir * (root.r[0] - 1.0)
        # LM: from the left ostium towards the left AV groove near the appendage
        th_b = math.radians(U(-150, -120))
        ring_b = ring_arc(th_b, th_b)[0]
        lm_len = U(6, 14) * s
        bif = lost + unit(ring_b - lost) * lm_len
        lm = resample(catmull(np.array([lost - lo_dir * 1.0, lost + unit(ring_b - lost) * lm_len * 0.5, bif]), 6), 0.5)
        # beyond the ostium the LM runs in fat between the root, the trunk and the appendage
        lm = self._settle(lm, 3.2, keep=4)
        bif = lm[-1]
        self.paths = {}
        self.paths["LM"] = Path("LM", "LM", lm, U(2.0, 2.5), U(1.9, 2.3))
        # LAD: bifurcation → down the anterior interventricular groove → round the apex
        if lad_g is None:
            lad_g = np.array([self.L(t, -12 * s, -22 * s) for t in np.linspace(10 * s, apex_t, 10)])
        apex_p = self.L(apex_t + 1.5, 0, 0)
        # the proximal LAD passes the pulmonary trunk on its left before it enters the groove
        r_pt = float(self.pt.ra[0])
        way = self.pv + np.array([r_pt + 0.5 * off, -U(0, 5), -(0.8 * r_pt + U(2, 6))])
        lad = np.concatenate([[bif, 0.5 * (bif + way), way], lad_g[:: max(1, len(lad_g) // 10)], [apex_p]])
        lad = self._settle(resample(catmull(lad, 8), 1.0), off, keep=1)
        self.paths["LAD"] = Path("LAD", "LAD", lad, U(1.7, 2.0), U(0.7, 0.9))
        # LCX: bifurcation → along the left AV groove towards the crux
        th_end = math.radians(U(95, 160))
        arc = ring_arc(th_b, -(2 * math.pi - th_end))
        lcx = np.concatenate([[bif], arc])
        lcx = self._settle(lcx, off, keep=1)
        self.paths["LCX"] = Path("LCX", "LCX", lcx, U(1.6, 1.9), U(0.9, 1.1))
        # RCA: right ostium → right AV groove → crux → posterior interventricular groove
        th_r0 = math.radians(U(-60, -35))
        th_crux = math.radians(U(70, 95))
        arc = ring_arc(th_r0, th_crux)
        rca = [rost - ro_dir * 1.0, rost + ro_dir * 6, arc[0] + 0.3 * (rost - arc[0])]
        rca = np.concatenate([rca, arc])
        if pda_g is not None:
            rca = np.concatenate([rca, pda_g])
        rca = self._settle(rca, off, keep=4)
        self.paths["RCA"] = Path("RCA", "RCA", rca, U(1.8, 2.2), U(0.9, 1.1))
        # side branches (labelled with their parent artery)
        br = {}
        lp = self.paths["LAD"]
        i0 = lp.at(U(18, 35))
        th_d = math.atan2(np.dot(lp.P[i0] - O, self.ec), np.dot(lp.P[i0] - O, self.er))
        ts_ = np.linspace(0, 1, 8)
        c0 = (lp.P[i0] - O) @ self.ea
        o = O[None, :] + (c0 + ts_ * U(30, 45) * s)[:, None] * self.ea
        d = self._dirs(th_d - ts_ * math.radians(U(35, 60)))
        dg = o + d * self._ray_surface(o, d, off)[:, None]
        dg[0] = lp.P[i0]
        br["D1"] = Path("D1", "LAD", self._settle(dg, off, keep=1), 1.3, 0.6)
        cp = self.paths["LCX"]
        i1 = cp.at(cp.length * U(0.35, 0.6))
        c1 = (cp.P[i1] - O) @ self.ea
        th_m = math.atan2(np.dot(cp.P[i1] - O, self.ec), np.dot(cp.P[i1] - O, self.er))
        o = O[None, :] + (c1 + 4 + ts_ * U(35, 55) * s)[:, None] * self.ea
        d = self._dirs(th_m + ts_ * math.radians(U(-15, 15)))
        om = o + d * self._ray_surface(o, d, off)[:, None]
        om[0] = cp.P[i1]
        br["OM1"] = Path("OM1", "LCX", self._settle(om, off, keep=1), 1.3, 0.6)
        self.branches = br
        self.all_paths = list(self.paths.values()) + list(br.values())
        self.cor_tubes = Tubes.concat([p.tubes() for p in self.all_paths])
        self.cor_sleeve = Tubes.concat([p.tubes(extra=U(3.0, 5.0)) for p in self.all_paths])

    def _ray_surface_single(self, e, c, d):
        rs = np.linspace(0, 80, 161)
        P = c[None, None, :] + d[:, None, :] * rs[None, :, None]
        S = e.sdf(P[..., 0], P[..., 1], P[..., 2])
        inside = S <= 0
        idx = np.where(inside.any(1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
        return rs[idx]

    # .......................................................................... lungs
    def lung_inside(self, P):
        x, y, z = P[..., 0], P[..., 1], P[..., 2]
        ph = np.arctan2(x, y - self.cav_yc)
        rho = np.hypot(x, y - self.cav_yc)
        ok = rho < self.cav_lut(z, ph) - 4
        ok &= self.sac_sdf_pts(P) > 10
        ok &= np.abs(x - self.vb_x) > self.vb_rx + 12
        ok &= z > self.dome_at(x, y) + 6
        return ok

    def sac_sdf_pts(self, P):
        X, Y, Z = P[..., 0], P[..., 1], P[..., 2]
        d = None
        for e in self.walls:
            v = e.sdf(X, Y, Z)
            d = v if d is None else smin(d, v, self.k_groove)
        return d - self.epi(X, Y, Z)

    def _build_lung_trees(self):
        """Pulmonary vessel trees grown from the hila, one generation at a time (vectorised):
        every branch splits in two (sometimes three), turning 18-42 degrees, thinner and shorter,
        and stops where it would leave the lung."""
        rng = self.rng
        self._build_domes()
        P, D, R, Ls = [], [], [], []
        for side, hil in ((-1, self.hila[0]), (1, self.hila[1])):
            roots = [[0.4, 0.1, 1.0], [1.0, -0.3, 0.4], [0.7, -0.8, -0.1], [0.8, 0.3, -0.6], [0.3, 0.7, -1.0],
                     [0.5, -0.4, -0.9], [0.6, 0.6, 0.5], [0.9, 0.2, -0.1], [0.3, -0.6, 0.7]]
            for d0 in roots:
                d = unit([side * d0[0], d0[1], d0[2]])
                P.append(hil + d * 8), D.append(d), R.append(rng.uniform(4.0, 5.5)), Ls.append(rng.uniform(20, 30))
        P, D, R, Ls = map(np.array, (P, D, R, Ls))
        A, B, ra, rb = [], [], [], []
        for g in range(9):
            if len(P) == 0:
                break
            Q = P + D * Ls[:, None]
            ok = self.lung_inside(Q)
            Qh = P + D * (Ls * 0.5)[:, None]
            okh = ~ok & self.lung_inside(Qh)
            Q = np.where(ok[:, None], Q, Qh)
            keep = ok | okh
            P, D, R, Ls, Q = P[keep], D[keep], R[keep], Ls[keep], Q[keep]
            A.append(P), B.append(Q), ra.append(R), rb.append(R * 0.9)
            go = R >= 0.75
            P, D, R, Ls, Q = P[go], D[go], R[go], Ls[go], Q[go]
            nk = np.where(rng.random(len(P)) < 0.8, 2, 3)
            idx = np.repeat(np.arange(len(P)), nk)
            m = len(idx)
            dd = D[idx]
            rnd = rng.normal(size=(m, 3))
            ax = np.cross(dd, rnd)
            ax /= np.maximum(np.linalg.norm(ax, axis=1, keepdims=True), 1e-9)
            ang = np.radians(rng.uniform(18, 42, m))[:, None]
            # Rodrigues with the axis perpendicular to d: d cos + (ax x d) sin
            nd = dd * np.cos(ang) + np.cross(ax, dd) * np.sin(ang)
            nd /= np.linalg.norm(nd, axis=1, keepdims=True)
            P, D = Q[idx], nd
            R = R[idx] * rng.uniform(0.72, 0.84, m)
            Ls = Ls[idx] * rng.uniform(0.7, 0.85, m)
        A, B, ra, rb = (np.concatenate(v) for v in (A, B, ra, rb))
        self.lung_vessels = Tubes(A, B, ra, rb)

    # .......................................................................... diaphragm
    def _build_domes(self):
        U = self.rng.uniform
        self.domeR = (U(-35, -5), -U(45, 80), self.cav_yc - U(5, 25), U(0.006, 0.010))
        self.domeL = (U(-55, -25), U(45, 80), self.cav_yc - U(5, 25), U(0.006, 0.010))
        self.dome_tilt = U(0.3, 0.6)
        self.heart_floor = None

    def dome_raw(self, x, y):
        zr, xr, yr, kr = self.domeR
        zl, xl, yl, kl = self.domeL
        a = zr - kr * ((x - xr) ** 2 + 1.3 * (y - yr) ** 2)
        b = zl - kl * ((x - xl) ** 2 + 1.3 * (y - yl) ** 2)
        return np.maximum(a, b) - self.dome_tilt * 25.0 * np.logaddexp(0.0, (y - self.cav_yc) / 25.0)

    def dome_at(self, x, y):
        d = self.dome_raw(x, y)
        if self.heart_floor is not None:
            hx, hy, hz = self.heart_floor
            fx = np.clip((x - hx[0]) / (hx[1] - hx[0]), 0, len(hx) - 1.001)
            fy = np.clip((y - hy[0]) / (hy[1] - hy[0]), 0, len(hy) - 1.001)
            jx, jy = fx.astype(int), fy.astype(int)
            ax, ay = fx - jx, fy - jy
            v = ((1 - ay) * ((1 - ax) * hz[jy, jx] + ax * hz[jy, jx + 1])
                 + ay * ((1 - ax) * hz[jy + 1, jx] + ax * hz[jy + 1, jx + 1]))
            d = np.minimum(d, v)
        return d

    def _build_abdomen(self):
        """Mould the diaphragm under the heart: the floor is the heart's lowest point (plus the
        paracardiac fat) wherever the heart lies over it."""
        U = self.rng.uniform
        xs = np.arange(-120, 140, 2.0) + self.O[0]
        ys = np.arange(-110, 90, 2.0)
        zs = np.arange(-110, 20, 2.0)
        X, Y = np.meshgrid(xs, ys)
        floor = np.full(X.shape, 1e3)
        for z in zs[::-1]:
            v = self.sac_sdf_pts(np.stack([X, Y, np.full(X.shape, z)], -1))
            floor = np.where(v < self.paracard * 0.5 + 2, z, floor)
        floor = floor - self.paracard * 0.5 - 3
        # smooth so the dome drapes rather than steps
        floor = np.minimum(floor, 200.0)
        k = np.ones(5) / 5
        for _ in range(4):
            floor = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 2, mode="edge"), k, "valid"), 1, floor)
            floor = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 2, mode="edge"), k, "valid"), 0, floor)
        self.heart_floor = (xs, ys, floor)
        liver_top = self.domeR[0]
        self.liver = axis_ell([-40, self.cav_yc - 5, liver_top - 95], [self.cav_A * 1.0, (self.cav_post - self.cav_ant) * 0.5, 110])
        self.spleen = axis_ell([self.cav_A * 0.55, self.cav_post - 45, self.domeL[0] - 45], [35, 45, 60])
        self.stomach = axis_ell([self.cav_A * 0.35, self.cav_yc - 10, self.domeL[0] - 40], [U(35, 50), U(35, 50), U(40, 55)])
        self.stomach_air = U(0, 25) if self.rng.random() < 0.7 else 0.0

    # .......................................................................... heart extent
    def heart_z_extent(self):
        zs = np.arange(-140, 120, 2.0)
        xs = np.arange(-110, 130, 4.0) + self.O[0]
        ys = np.arange(-110, 80, 4.0)
        X, Y = np.meshgrid(xs, ys)
        top, bot = -1e9, 1e9
        for z in zs:
            v = self.sac_sdf_pts(np.stack([X, Y, np.full(X.shape, z)], -1))
            if (v < 0).any():
                top, bot = max(top, z), min(bot, z)
        return bot, max(top, self.pb[2] + 8)


# ----------------------------------------------------------------------------- calcium

class Blob:
    __slots__ = ("c", "R", "r", "h", "he", "half")

    def __init__(self, c, R, r, h, he):
        self.c = np.asarray(c, float)
        self.R = np.asarray(R, float)
        self.r = np.maximum(np.asarray(r, float), 0.3)
        self.h, self.he = float(h), float(he)
        self.half = np.sqrt(((self.R * self.r[:, None]) ** 2).sum(0))


class Source:
    """One calcification: a union of blobs with one label (an artery or a distractor class)."""

    def __init__(self, label, kind, blobs, info=None):
        self.label, self.kind, self.blobs, self.info = label, kind, blobs, info or {}


def wall_blobs(path, s0, L, th0, dth, tau, h_peak, rng, inward=0.25, circ=None):
    """Blobs in the wall of a vessel path: from arc length s0 over L mm, round an arc of dth
    radians centred on th0, tau mm thick, peak density h_peak with a smooth profile along it."""
    blobs = []
    L = max(L, 0.5)
    n_s = max(1, int(L / 0.6) + 1)
    ss = np.linspace(s0, s0 + L, n_s)
    ph = rng.uniform(0, 2 * math.pi, 3)
    fr = rng.uniform(0.1, 0.5, 3)
    prof = 0.55 + 0.45 * (0.5 + 0.5 * np.sin(fr[0] * ss + ph[0]) * np.cos(fr[1] * ss + ph[1]))
    prof = prof / prof.max()
    taper = np.minimum(1.0, 0.35 + np.minimum(ss - s0, s0 + L - ss) / 2.0) if L > 3 else np.ones(n_s)
    n_t = max(1, int(dth / math.radians(32)) + 1)
    for k, s in enumerate(ss):
        i = path.at(s)
        if s > path.length + 0.4:
            break
        r = path.r[i]
        ths = [th0] if n_t == 1 else np.linspace(th0 - dth / 2, th0 + dth / 2, n_t)
        for th in ths:
            n = math.cos(th) * path.N1[i] + math.sin(th) * path.N2[i]
            tang = path.T[i]
            b = np.cross(tang, n)
            c = path.P[i] + n * (r + tau * 0.5 - inward)
            rc = circ if circ is not None else max(0.8, r * math.radians(32) * 0.9)
            t_here = tau * taper[k] * rng.uniform(0.85, 1.1)
            h = h_peak * prof[k] * taper[k] ** 0.5
            blobs.append(Blob(c, np.stack([tang, n, b]), [0.85, t_here / 2, rc], h, 0.7 * h))
    return blobs


def spot_blob(path, s, th, rad, h, rng):
    i = path.at(s)
    n = math.cos(th) * path.N1[i] + math.sin(th) * path.N2[i]
    tang = path.T[i]
    c = path.P[i] + n * (path.r[i] + 0.3)
    return Blob(c, np.stack([tang, n, np.cross(tang, n)]), [rad * rng.uniform(0.9, 1.3), rad * 0.8, rad], h, 0.7 * h)


LESION_MIX = {
    "low": (1, 3, {"spot": 0.65, "short": 0.35}),
    "moderate": (2, 6, {"spot": 0.25, "short": 0.35, "segment": 0.33, "long": 0.07}),
    "high": (5, 12, {"spot": 0.08, "short": 0.2, "segment": 0.37, "long": 0.35}),
}


def make_lesion(pt, artery, kind, rng, ostial=False):
    U = rng.uniform
    paths = [pt.paths[artery]] + [b for b in pt.branches.values() if b.label == artery]
    path = paths[0] if (len(paths) == 1 or rng.random() < 0.82) else paths[rng.integers(1, len(paths))]
    Lp = path.length
    th0 = U(-math.pi, math.pi)
    if kind == "spot":
        s = min(Lp * rng.beta(1.3, 2.6), Lp - 1)
        rad = U(0.9, 2.3)
        h = U(230, 750)
        blobs = [spot_blob(path, s, th0, rad, h, rng)]
        info = dict(s_mm=round(s, 1), length_mm=round(2 * rad, 1), peak_hu=round(h))
    else:
        L, dth, tau, h = {
            "short": (U(2, 6), math.radians(U(60, 150)), U(0.8, 1.6), U(260, 850)),
            "segment": (U(6, 16), math.radians(U(90, 240)), U(1.0, 2.0), U(350, 1100)),
            "long": (U(15, 45), math.radians(U(180, 360)), U(1.2, 2.6), U(600, 1500)),
            "ostial": (U(3, 10), math.radians(U(120, 300)), U(1.2, 2.4), U(400, 1300)),
        }[kind]
        if ostial:
            s0 = 0.0
        else:
            s0 = min(Lp * rng.beta(1.3, 2.8), max(0.0, Lp - L - 1))
        L = min(L, max(1.0, Lp - s0 - 0.5))
        blobs = wall_blobs(path, s0, L, th0, dth, tau, h, rng)
        info = dict(s_mm=round(s0, 1), length_mm=round(L, 1), arc_deg=round(math.degrees(dth)),
                    thickness_mm=round(tau, 1), peak_hu=round(h))
    if blobs:
        cs = np.array([b.c for b in blobs])
        ok = tubes_sdf_pts(pt.great_near, cs) > -1.0
        ok &= pt.root.sdf(cs[:, 0], cs[:, 1], cs[:, 2]) > -1.0
        blobs = [b for b, k in zip(blobs, ok) if k] or blobs[-1:]
    info.update(artery=artery, path=path.name, kind=kind)
    return Source(artery, "coronary", blobs, info)


def plan_lesions(pt, burden, rng):
    if burden == "none":
        return []
    lo, hi, mix = LESION_MIX[burden]
    n = int(rng.integers(lo, hi + 1))
    kinds, probs = list(mix), np.array(list(mix.values()))
    w = {"LM": 0.14, "LAD": 0.38, "LCX": 0.2, "RCA": 0.28}
    arts = list(w)
    out = []
    order = list(rng.permutation(arts)) if burden == "high" else []
    taken = []

    def free(les):
        a0, a1 = les.info["s_mm"] - 1.5, les.info["s_mm"] + les.info["length_mm"] + 1.5
        return all(p != les.info["path"] or a1 < b0 or a0 > b1 for p, b0, b1 in taken)

    def place(art, kind, ostial=False):
        for _ in range(8):
            les = make_lesion(pt, art, kind, rng, ostial=ostial)
            if free(les):
                break
            art = arts[rng.choice(4, p=list(w.values()))] if not ostial else art
        i = les.info
        taken.append((i["path"], i["s_mm"], i["s_mm"] + i["length_mm"]))
        out.append(les)

    if burden in ("moderate", "high") and rng.random() < (0.45 if burden == "high" else 0.15):
        place("LM" if rng.random() < 0.5 else "RCA", "ostial", ostial=True)
    for k in range(n):
        art = order[k] if k < len(order) and rng.random() < 0.85 else arts[rng.choice(4, p=list(w.values()))]
        kind = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
        if art == "LM" and kind == "long":
            kind = "segment"
        place(art, kind)
    return out


def plan_distractors(pt, rng, z_lo, z_hi):
    U = rng.uniform
    out = []
    s = pt.s_h

    def add(kind, blobs, **info):
        if blobs:
            c = np.mean([b.c for b in blobs], 0)
            info.update(type=kind, center_mm=[round(float(v), 1) for v in c], peak_hu=round(max(b.h for b in blobs)),
                        n_blobs=len(blobs))
            out.append(Source(kind, "distractor", blobs, info))

    # aortic valve calcification on the valve plane inside the root
    if rng.random() < 0.35:
        d = pt.d_ao
        e1 = unit(np.cross(d, [0, 0, 1.0]) if abs(d[2]) < 0.99 else [1, 0, 0])
        e2 = np.cross(d, e1)
        blobs = []
        for _ in range(int(rng.integers(1, 5))):
            a = U(0, 2 * math.pi)
            rad = U(4, 0.8 * pt.r_root)
            h = U(300, 1200)
            nchain = int(rng.integers(1, 5))
            for k in range(nchain):
                aa = a + k * 0.12
                c = pt.av + d * U(1, 4) + rad * (math.cos(aa) * e1 + math.sin(aa) * e2)
                r = U(1.0, 2.8)
                blobs.append(Blob(c, np.stack([d, e1, e2]), [r * 0.8, r, r], h, 0.7 * h))
        add("aortic_valve", blobs)
    # mitral annulus calcification: a ring segment at the posterior AV junction, in the wall
    if rng.random() < 0.25:
        lv = pt.lv
        t = 2.0 * s
        axis_pt = lv.c + ((pt.O + t * pt.ea) - lv.c) @ pt.ea * pt.ea
        post = np.array([0, 1.0, 0]) - np.dot([0, 1.0, 0], pt.ea) * pt.ea
        post = unit(post)
        side = np.cross(pt.ea, post)
        R = lv.r[1] * U(0.55, 0.7)
        half = math.radians(U(30, 80))
        tau = U(1.5, 3.2)
        h = U(300, 950)
        blobs = []
        for a in np.linspace(-half, half, max(3, int(2 * half * R / 1.2))):
            n = math.cos(a) * post + math.sin(a) * side
            c = axis_pt + n * R
            tang = np.cross(pt.ea, n)
            blobs.append(Blob(c, np.stack([tang, n, pt.ea]), [1.2, tau * U(0.8, 1.1), tau * U(0.8, 1.1)],
                              h * U(0.7, 1.0), 0.7 * h))
        add("mitral_annulus", blobs)
    # aortic wall plaques
    if rng.random() < 0.6:
        ao = pt.aorta
        inz = np.nonzero((ao.P[:, 2] > z_lo - 5) & (ao.P[:, 2] < z_hi + 5))[0]
        inz = inz[ao.s[inz] > 15]
        for _ in range(int(rng.integers(1, 7))):
            if len(inz) == 0:
                break
            i = int(rng.choice(inz))
            tau = U(1.0, 2.5)
            L = U(2, 14)
            bl = wall_blobs(ao, ao.s[i], L, U(-math.pi, math.pi), math.radians(U(25, 120)), tau, U(200, 1000), rng,
                            inward=tau, circ=1.6)
            region = "ascending" if ao.s[i] < 60 else ("arch" if ao.P[i, 2] > pt.av[2] + 45 else "descending")
            add("aortic_wall", bl, region=region)
    # costal cartilage calcification
    if rng.random() < 0.7:
        cands = [c for c in pt.cartilage if z_lo - 10 < c[:, 2].mean() < z_hi + 10]
        for _ in range(int(rng.integers(1, 7))):
            if not cands:
                break
            c = resample(cands[int(rng.integers(len(cands)))], 1.0)
            i = int(rng.integers(len(c)))
            n = max(1, int(rng.integers(1, 6)))
            blobs = []
            h = U(200, 650)
            for k in range(n):
                p = c[min(len(c) - 1, i + k)] + rng.normal(0, 1.2, 3)
                r = U(0.8, 2.2)
                blobs.append(Blob(p, np.eye(3), [r, r, r * 1.3], h * U(0.8, 1.0), 0.7 * h))
            add("costal_cartilage", blobs)
    # vertebral osteophytes at the front and sides of the endplates
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            k = int(rng.integers(-4, 4))
            zk = pt.vb_z0 + k * pt.hv + (pt.hv - pt.disc) / 2 * (1 if rng.random() < 0.5 else -1)
            if not (z_lo - 5 < zk < z_hi + 5):
                continue
            a = U(math.radians(200), math.radians(340))   # anterior and lateral margins
            ex, ey = math.cos(a), math.sin(a)
            c = np.array([pt.vb_x + (pt.vb_rx + 1.5) * ex, pt.vb_y(zk) + (pt.vb_ry + 1.5) * ey, zk])
            n = unit([ex, ey, 0])
            tang = np.cross([0, 0, 1.0], n)
            h = U(350, 800)
            add("osteophyte", [Blob(c, np.stack([tang, n, [0, 0, 1.0]]), [U(3, 7), U(2, 3.5), U(2, 4)], h, 0.8 * h)])
    # a calcified lymph node (subcarinal, hilar or paratracheal)
    pt.nodes = []
    if rng.random() < 0.2:
        where = rng.choice(["subcarinal", "hilar", "paratracheal"])
        if where == "subcarinal":
            c = pt.carina + [0, 12, -16]
        elif where == "hilar":
            h_ = pt.hila[int(rng.integers(2))]
            c = h_ + [np.sign(h_[0]) * -8, -8, U(-10, 10)]
        else:
            c = pt.carina + [-14, -6, U(15, 35)]
        rn = U(5, 9)
        pt.nodes.append(axis_ell(c, [rn, rn * 0.8, rn]))
        blobs = []
        h = U(300, 1200)
        for _ in range(int(rng.integers(1, 3))):
            r = U(1.5, 0.5 * rn)
            blobs.append(Blob(c + rng.normal(0, rn * 0.25, 3), np.eye(3), [r, r, r], h, 0.75 * h))
        add("lymph_node", blobs, site=str(where))
    return out


def render_sources(sources, G, z_edge0, T, nslab, nf):
    """Slab-averaged occupancy and density of every calcification.
    Returns {slab index: [(source index, sy, sx, occ, mass), ...]}."""
    items = {}
    dzf = T / nf
    w = G.px
    for si, src in enumerate(sources):
        lo = np.min([b.c - b.half for b in src.blobs], 0) - 1.0
        hi = np.max([b.c + b.half for b in src.blobs], 0) + 1.0
        j0 = max(0, int(math.floor((lo[2] - z_edge0) / T)))
        j1 = min(nslab - 1, int(math.floor((hi[2] - z_edge0) / T)))
        if j1 < j0:
            continue
        box = G.box(lo[0], hi[0], lo[1], hi[1])
        if box is None:
            continue
        sy, sx, X, Y = box
        zf = z_edge0 + (np.arange(j0 * nf, (j1 + 1) * nf) + 0.5) * dzf
        occ = np.zeros((len(zf), X.shape[1] if False else Y.shape[0], X.shape[1]), np.float32)
        mass = np.zeros_like(occ)
        for b in src.blobs:
            kz = np.nonzero(np.abs(zf - b.c[2]) <= b.half[2] + 0.5)[0]
            if len(kz) == 0:
                continue
            jx = np.nonzero(np.abs(X[0] - b.c[0]) <= b.half[0] + w)[0]
            iy = np.nonzero(np.abs(Y[:, 0] - b.c[1]) <= b.half[1] + w)[0]
            if len(jx) == 0 or len(iy) == 0:
                continue
            zs = zf[kz[0]:kz[-1] + 1][:, None, None]
            xs = X[0, jx[0]:jx[-1] + 1][None, None, :]
            ys = Y[iy[0]:iy[-1] + 1, 0][None, :, None]
            dx, dy, dz = xs - b.c[0], ys - b.c[1], zs - b.c[2]
            k0 = 0.0
            k1 = 0.0
            for i in range(3):
                li = b.R[i, 0] * dx + b.R[i, 1] * dy + b.R[i, 2] * dz
                k0 = k0 + (li / b.r[i]) ** 2
                k1 = k1 + (li / (b.r[i] ** 2)) ** 2
            k0 = np.sqrt(k0)
            sd = k0 * (k0 - 1.0) / np.maximum(np.sqrt(k1), 1e-6)
            o = np.clip(0.5 - sd / w, 0.0, 1.0).astype(np.float32)
            hv = (b.he + (b.h - b.he) * np.clip(1.0 - k0 * k0, 0.0, 1.0)).astype(np.float32)
            sl = (slice(kz[0], kz[-1] + 1), slice(iy[0], iy[-1] + 1), slice(jx[0], jx[-1] + 1))
            np.maximum(occ[sl], o, out=occ[sl])
            np.maximum(mass[sl], o * hv, out=mass[sl])
        occ = occ.reshape(j1 - j0 + 1, nf, occ.shape[1], occ.shape[2]).mean(1)
        mass = mass.reshape(j1 - j0 + 1, nf, mass.shape[1], mass.shape[2]).mean(1)
        for k in range(j1 - j0 + 1):
            if occ[k].max() > 1e-3:
                items.setdefault(j0 + k, []).append((si, sy, sx, occ[k], mass[k]))
    return items


# ----------------------------------------------------------------------------- anatomy renderer

class Renderer:
    NPHI = 1440

    def __init__(self, pt, G):
        self.pt, self.G = pt, G
        n = G.n
        X = G.x[None, :]
        Y = G.y[:, None]
        self.phis = np.linspace(-math.pi, math.pi, self.NPHI, endpoint=False)
        # polar maps about the body and cavity centres
        self.rho_b = np.hypot(X, Y - pt.body_yc).astype(np.float32)
        self.iph_b = self._phi_idx(np.arctan2(np.broadcast_to(X, (n, n)), Y - pt.body_yc))
        self.rho_c = np.hypot(X, Y - pt.cav_yc).astype(np.float32)
        self.iph_c = self._phi_idx(np.arctan2(np.broadcast_to(X, (n, n)), Y - pt.cav_yc))
        rng = np.random.default_rng([pt.seed, 5])
        tex = smooth_noise(rng, n, G.px, 6.0)
        tex2 = smooth_noise(rng, n, G.px, 2.0)
        grav = np.clip((Y - pt.cav_ant) / (pt.cav_post - pt.cav_ant), 0, 1) ** 2
        self.lung_map = (pt.hu["lung"] + rng.uniform(30, 110) * grav + 18 * tex + 10 * tex2).astype(np.float32)
        self.fat_map = (pt.hu["fat"] + 6 * tex2).astype(np.float32)
        self.gland_map = np.clip((tex - rng.uniform(-0.3, 0.5)) * 2.0, 0, 1).astype(np.float32)
        # diaphragm height map
        XX = np.broadcast_to(X, (n, n))
        YY = np.broadcast_to(Y, (n, n))
        self.zd = pt.dome_at(XX, YY).astype(np.float32)
        self.zd_max = float(self.zd[np.abs(self.rho_c) < 1e9].max())
        # boxes
        A = pt.body_A * 1.3 + 20
        self.body_box = G.box(-A, A, pt.body_yc - pt.body_Bant * 1.2 - 60, pt.table_y + 5)
        Ac = pt.cav_A * 1.5
        self.cav_box = G.box(-Ac, Ac, pt.cav_ant - 30, pt.cav_post + 10)
        # bone tubes
        self.ribs = Tubes.concat([Tubes.polyline(resample(r, 5.0), pt.rib_r) for r in pt.ribs])
        self.cart = Tubes.concat([Tubes.polyline(resample(c, 3.0), pt.rib_r * 0.95) for c in pt.cartilage])
        proc = []
        for k in range(-8, 10):
            zk = pt.vb_z0 + k * pt.hv
            yc = pt.vb_y(zk) + pt.vb_ry + 8
            proc.append(Tubes.polyline([[pt.vb_x, yc + 8, zk + 3], [pt.vb_x, yc + 38, zk - 22]], [4.5, 3.5]))
            for sd_ in (-1, 1):
                proc.append(Tubes.polyline([[pt.vb_x + sd_ * 9, yc + 3, zk + 3], [pt.vb_x + sd_ * 31, yc + 13, zk + 2]],
                                           [5.0, 4.5]))
        self.proc = Tubes.concat(proc)
        self.airways = [(Tubes.polyline(p, r), r) for p, r in pt.airway_paths]
        self.aorta = pt.aorta.tubes(step=12)
        self.vessels = Tubes.concat([self.aorta, pt.pt, pt.svc, pt.ivc, pt.pveins])
        hb = np.array([[e.c - e.half, e.c + e.half] for e in pt.walls])
        self.heart_lo = hb[:, 0].min(0) - 20
        self.heart_hi = hb[:, 1].max(0) + 20

    def _phi_idx(self, ph):
        return ((ph + math.pi) / (2 * math.pi) * self.NPHI).astype(np.int32) % self.NPHI

    def render(self, z):
        pt, G, hu = self.pt, self.G, self.pt.hu
        n = G.n
        img = np.full((n, n), hu["air"], np.float32)
        # table (a curved cradle with two skins)
        b = G.box(-230, 230, pt.table_y - 45, pt.table_y + 16)
        if b is not None:
            sy, sx, X, Y = b
            yt = pt.table_y - 0.0009 * X ** 2
            d = Y - yt
            paint(img, sy, sx, G.occ(np.abs(d - 6.5) - 5.5), -420.0)
            paint(img, sy, sx, G.occ(np.abs(d - 0.8) - 0.8), hu["table"])
            paint(img, sy, sx, G.occ(np.abs(d - 12.2) - 0.8), hu["table"])
        # body: skin, subcutaneous fat, muscle
        sy, sx, X, Y = self.body_box
        rb = pt.body_lut(z, self.phis).astype(np.float32)
        rho = self.rho_b[sy, sx]
        ip = self.iph_b[sy, sx]
        sd_b = rho - rb[ip]
        paint(img, sy, sx, G.occ(sd_b), hu["skin"])
        paint(img, sy, sx, G.occ(sd_b + 1.8), self.fat_map[sy, sx])
        for br, gl in zip(pt.breasts, pt.glands):
            r = br.region_sdf(G, z)
            if r is not None:
                bsy, bsx, v = r
                paint(img, bsy, bsx, G.occ(v), self.fat_map[bsy, bsx])
                r2 = gl.region_sdf(G, z)
                if r2 is not None:
                    gsy, gsx, v2 = r2
                    paint(img, gsy, gsx, G.occ(v2) * self.gland_map[gsy, gsx], hu["gland"])
        rm = np.minimum(pt.muscle_lut(z, self.phis), rb - 2.5).astype(np.float32)
        sd_m = rho - rm[ip]
        paint(img, sy, sx, G.occ(sd_m), hu["muscle"])
        # thin fat plane between the chest-wall muscles and the ribs
        csy, csx, cX, cY = self.cav_box
        rc = pt.cav_lut(z, self.phis).astype(np.float32)
        sd_c = self.rho_c[csy, csx] - rc[self.iph_c[csy, csx]]
        # lungs fill the cavity
        lung_occ = G.occ(sd_c)
        paint(img, csy, csx, lung_occ, self.lung_map[csy, csx])
        # below the diaphragm: muscle sheet, then the abdomen (liver, spleen, stomach, fat)
        if z < self.zd_max + 3:
            zd = self.zd[csy, csx]
            below = np.clip(0.5 - (z - zd) / 1.2, 0, 1) * lung_occ
            if below.max() > 0:
                paint(img, csy, csx, below, hu["muscle"])
                inner = np.clip(0.5 - (z - zd + 4.0) / 1.2, 0, 1) * G.occ(sd_c + 3.0)
                paint(img, csy, csx, inner, self.fat_map[csy, csx])
                for e, v in ((pt.liver, hu["liver"]), (pt.spleen, hu["spleen"]), (pt.stomach, hu["muscle"])):
                    r = e.region_sdf(G, z)
                    if r is not None:
                        esy, esx, ev = r
                        o = G.occ(ev) * self._sub(inner, csy, csx, esy, esx)
                        paint(img, esy, esx, o, v)
                r = pt.stomach.region_sdf(G, z)
                if r is not None:
                    esy, esx, ev = r
                    o = G.occ(ev + 3.0) * self._sub(inner, csy, csx, esy, esx)
                    top = pt.stomach.c[2] + pt.stomach.r[2] - pt.stomach_air
                    paint(img, esy, esx, o, hu["air"] if z > top else hu["fluid"])
        above = None
        if z < self.zd_max + 3:
            above = np.clip(0.5 + (z - self.zd - 1.0) / 1.2, 0, 1)
        # mediastinum: a midline fat band from the sternum to the spine and fat round the great vessels
        yv = pt.vb_y(z)
        mb = G.box(pt.vb_x - 40, pt.vb_x + 40, pt.cav_ant - 5, yv)
        if mb is not None:
            msy, msx, mX, mY = mb
            w = pt.med_w0 + pt.med_w1 * np.clip((mY - pt.cav_ant) / max(1.0, yv - pt.cav_ant), 0, 1) ** 2
            sdm = np.abs(mX - pt.vb_x - 3) - w
            o = G.occ(sdm)
            if above is not None:
                o = o * above[msy, msx]
            paint(img, msy, msx, o, self.fat_map[msy, msx])
        env = self.vessels.sd(G, z, grow=6.0)
        if env is not None:
            u, sdv = env
            o = G.occ(sdv - 5.0)
            if above is not None:
                o = o * above.reshape(-1)[u]
            f = img.reshape(-1)
            f[u] = f[u] + o * (self.fat_map.reshape(-1)[u] - f[u])
        # spine: paravertebral tissue, vertebral body or disc, canal and arch, processes
        self._spine(img, z)
        # ribs, costal cartilage, sternum
        rs = self.ribs.sd(G, z)
        paint_flat(img, rs, G, hu["cortex"])
        paint_flat(img, rs, G, hu["marrow"], offset=1.3)
        paint_flat(img, self.cart.sd(G, z), G, hu["cart"])
        if pt.st_bot < z < pt.st_top:
            wz = pt.st_w * (1.0 + 0.8 * np.clip((z - pt.st_top + 40) / 40, 0, 1))
            sb = G.box(-wz - 3, wz + 3, pt.st_y - pt.st_d - 3, pt.st_y + pt.st_d + 3)
            if sb is not None:
                ssy, ssx, sX, sY = sb
                f = ((np.abs(sX) / wz) ** 4 + (np.abs(sY - pt.st_y) / pt.st_d) ** 2) ** 0.25
                sdst = (f - 1) * pt.st_d
                taper = 1.0 if z > pt.st_bot + 15 else 0.6
                paint(img, ssy, ssx, G.occ(sdst) * taper, hu["cortex"] * 0.8)
                paint(img, ssy, ssx, G.occ(sdst + 1.4) * taper, hu["marrow"])
        # heart and the great vessels
        self._heart(img, z, above, env)
        # oesophagus, airways, nodes
        rs = pt.eso.sd(G, z)
        paint_flat(img, rs, G, hu["muscle"])
        if pt.eso_air:
            paint_flat(img, rs, G, hu["air"], offset=5.0)
        for t, r in self.airways:
            res = t.sd(G, z)
            paint_flat(img, res, G, hu["muscle"])
            paint_flat(img, res, G, hu["air"], offset=1.8)
        for nd in pt.nodes:
            r = nd.region_sdf(G, z)
            if r is not None:
                paint(img, r[0], r[1], G.occ(r[2]), hu["node"])
        # lung vessels, only where there is lung
        res = pt.lung_vessels.sd(G, z)
        if res is not None:
            u, sdv = res
            f = img.reshape(-1)
            wgt = np.clip((-380.0 - f[u]) / 350.0, 0, 1)
            o = G.occ(sdv) * wgt
            f[u] = f[u] + o * (hu["blood"] - f[u])
        return img

    @staticmethod
    def _sub(arr, asy, asx, bsy, bsx):
        """arr (over box a) cut to box b (b inside the image); zeros where b leaves a."""
        out = np.zeros((bsy.stop - bsy.start, bsx.stop - bsx.start), np.float32)
        y0, y1 = max(asy.start, bsy.start), min(asy.stop, bsy.stop)
        x0, x1 = max(asx.start, bsx.start), min(asx.stop, bsx.stop)
        if y0 < y1 and x0 < x1:
            out[y0 - bsy.start:y1 - bsy.start, x0 - bsx.start:x1 - bsx.start] = \
                arr[y0 - asy.start:y1 - asy.start, x0 - asx.start:x1 - asx.start]
        return out

    def _spine(self, img, z):
        pt, G, hu = self.pt, self.G, self.pt.hu
        k = round((z - pt.vb_z0) / pt.hv)
        zk = pt.vb_z0 + k * pt.hv
        dz = z - zk
        hb = (pt.hv - pt.disc) / 2
        yv = pt.vb_y(z)
        rx, ry = pt.vb_rx, pt.vb_ry
        b = G.box(pt.vb_x - rx - 40, pt.vb_x + rx + 40, yv - ry - 10, yv + ry + 45)
        if b is None:
            return
        sy, sx, X, Y = b
        ex = (X - pt.vb_x)
        ey = (Y - yv)

        def ell(a, bb):
            f = np.sqrt((ex / a) ** 2 + (ey / bb) ** 2)
            return (f - 1) * min(a, bb)

        paint(img, sy, sx, G.occ(ell(rx + 5, ry + 4)), hu["muscle"])
        bx, by = X - pt.vb_x, Y - (yv + ry + 12)
        fpv = np.sqrt((bx / (rx + 15)) ** 2 + (np.maximum(by, 0) / 30.0) ** 2 + (np.minimum(by, 0) / (ry + 12)) ** 2)
        paint(img, sy, sx, G.occ((fpv - 1) * (rx + 12)), hu["muscle"])
        if abs(dz) <= hb:
            flare = 1.5 * max(0.0, (abs(dz) - hb + 4) / 4)
            paint(img, sy, sx, G.occ(ell(rx + flare, ry + flare)), hu["cortex"])
            inner = hu["cortex"] * 0.6 if abs(dz) > hb - 1.2 else hu["marrow"]
            paint(img, sy, sx, G.occ(ell(rx + flare - 1.3, ry + flare - 1.3)), inner)
        else:
            paint(img, sy, sx, G.occ(ell(rx + 0.8, ry + 0.8)), hu["disc"])
        # neural arch round the canal (pedicles and laminae in the upper part of each level)
        cy = yv + ry + 8
        ax = X - pt.vb_x
        ay = Y - cy
        rr = np.sqrt(ax ** 2 + (ay * 1.1) ** 2)
        if -hb * 0.9 < dz < hb * 0.8:
            paint(img, sy, sx, G.occ(rr - 13.5), hu["cortex"] * 0.85)
        paint(img, sy, sx, G.occ(rr - 8.0), hu["cord"])
        rs = self.proc.sd(G, z)
        paint_flat(img, rs, G, hu["cortex"] * 0.85)
        paint_flat(img, rs, G, hu["marrow"], offset=1.4)

    def _heart(self, img, z, above, env):
        pt, G, hu = self.pt, self.G, self.pt.hu
        lo, hi = self.heart_lo, self.heart_hi
        if lo[2] <= z <= hi[2]:
            box = G.box(lo[0], hi[0], lo[1], hi[1])
        else:
            box = None
        if box is not None:
            sy, sx, X, Y = box
            fields = [(e, e.sdf(X, Y, z)) for e in pt.walls if e.near(z, 25)]
            if fields:
                S_myo = None
                S_sac = None
                for e, v in fields:
                    S_myo = v if S_myo is None else smin(S_myo, v, pt.k_myo)
                    S_sac = v if S_sac is None else smin(S_sac, v, pt.k_groove)
                S_sac = S_sac - pt.epi(X, Y, z)
                sl = pt.cor_sleeve.sd(G, z)
                if sl is not None:
                    u, sdv = sl
                    iy = u // G.n - sy.start
                    ix = u % G.n - sx.start
                    ok = (iy >= 0) & (iy < S_sac.shape[0]) & (ix >= 0) & (ix < S_sac.shape[1])
                    S_sac[iy[ok], ix[ok]] = np.minimum(S_sac[iy[ok], ix[ok]], sdv[ok])
                ab = above[sy, sx] if above is not None else 1.0
                pc = (pt.paracard + pt.paracard_ant * np.clip((pt.O[1] - 10 - Y) / 50.0, 0, 1)
                      + pt.paracard_inf * np.clip(-(z + 20) / 40.0, 0, 1))
                paint(img, sy, sx, G.occ(S_sac - pc) * ab, self.fat_map[sy, sx])
                paint(img, sy, sx, G.occ(S_sac - pt.peric_t) * ab, hu["peric"])
                paint(img, sy, sx, G.occ(S_sac) * ab, self.fat_map[sy, sx])
                paint(img, sy, sx, G.occ(S_myo) * ab, hu["myo"])
                # fat deeper than a groove can be is no fat: chambers that do not quite touch
                paint(img, sy, sx, G.occ(S_sac + 8.0) * ab, hu["myo"])
                cav = {e: e for e in (pt.lv_cav, pt.la_cav, pt.ra_cav, pt.rvot_cav)}
                for e in cav:
                    if e.near(z, 2):
                        paint(img, sy, sx, G.occ(e.sdf(X, Y, z)) * ab, hu["blood"])
                if pt.rv_cav.near(z, 2):
                    lvv = [v for e, v in fields if e is pt.lv]
                    v = pt.rv_cav.sdf(X, Y, z)
                    if lvv:
                        v = np.maximum(v, -lvv[0])
                    paint(img, sy, sx, G.occ(v) * ab, hu["blood"])
                if pt.root.near(z, 2):
                    paint(img, sy, sx, G.occ(pt.root.sdf(X, Y, z) + 2.0) * ab, hu["blood"])
        # great vessels (blood) and coronary arteries
        paint_flat(img, env, G, hu["blood"])
        paint_flat(img, pt.cor_tubes.sd(G, z), G, hu["blood"])


def smooth_noise(rng, n, px, corr_mm):
    w = rng.standard_normal((n, n)).astype(np.float32)
    fy = np.fft.fftfreq(n, d=px)[:, None]
    fx = np.fft.rfftfreq(n, d=px)[None, :]
    H = np.exp(-2 * (math.pi * corr_mm) ** 2 * (fx ** 2 + fy ** 2))
    out = np.fft.irfft2(np.fft.rfft2(w) * H, s=(n, n))
    return (out / max(out.std(), 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------- imaging

class Imager:
    """Point-spread blur, correlated noise with a ramp-like spectrum, occasional streaks."""

    def __init__(self, pt, G, rng, sigma, psf_mm):
        n = G.n
        self.G, self.pt, self.n = G, pt, n
        fy = np.fft.fftfreq(n, d=G.px)[:, None]
        fx = np.fft.rfftfreq(n, d=G.px)[None, :]
        f2 = (fx ** 2 + fy ** 2).astype(np.float32)
        self.psf = np.exp(-2 * (math.pi * psf_mm) ** 2 * f2).astype(np.float32)
        fc = rng.uniform(0.15, 0.32)
        a = rng.uniform(0.6, 1.0)
        S = (np.sqrt(f2) + 0.02) ** a * np.exp(-f2 / fc ** 2)
        Hf = np.sqrt(S).astype(np.float32)
        fyf = np.fft.fftfreq(n, d=G.px)[:, None]
        fxf = np.fft.fftfreq(n, d=G.px)[None, :]
        f2f = fxf ** 2 + fyf ** 2
        var = np.mean((np.sqrt(f2f) + 0.02) ** a * np.exp(-f2f / fc ** 2))
        self.H = (Hf / math.sqrt(var)).astype(np.float32)
        self.nps = dict(fc_cyc_per_mm=round(fc, 3), ramp_exponent=round(a, 3))
        self.sigma = sigma
        X = G.x[None, :]
        Y = G.y[:, None]
        rr = np.sqrt((X / pt.body_A) ** 2 + ((Y - pt.body_yc) / (0.5 * (pt.body_Bant + pt.body_Bpost))) ** 2)
        m = np.where(rr < 1, 1.0 + 0.3 * (1 - rr ** 2), 0.75)
        hc = pt.lv.c
        mh = float(1.0 + 0.3 * (1 - min(1.0, (hc[0] / pt.body_A) ** 2 + ((hc[1] - pt.body_yc) / pt.body_Bant) ** 2)))
        self.map = (m / mh).astype(np.float32)
        self.streaky = rng.random() < 0.35
        self.seed = pt.seed

    def image(self, pre, j, dense_pts):
        n = self.n
        img = np.fft.irfft2(np.fft.rfft2(pre) * self.psf, s=(n, n)).astype(np.float32)
        rng = np.random.default_rng([self.seed, 99, j])
        w = rng.standard_normal((n, n), dtype=np.float32)
        noise = np.fft.irfft2(np.fft.rfft2(w) * self.H, s=(n, n)).astype(np.float32)
        img += noise * (self.sigma * self.map)
        if self.streaky and dense_pts:
            for (px_, py_, strength) in dense_pts:
                for _ in range(int(rng.integers(2, 6))):
                    ang = rng.normal(0, 0.35) if rng.random() < 0.7 else rng.uniform(-math.pi / 2, math.pi / 2)
                    amp = strength * self.sigma * rng.uniform(0.4, 1.4) * (1 if rng.random() < 0.5 else -1)
                    self._streak(img, px_, py_, ang, amp, rng.uniform(0.5, 1.5))
        return img

    def _streak(self, img, px_, py_, ang, amp, wd_mm, decay=140.0):
        """Add a thin line of amplitude amp (Gaussian profile across, fading along) through a
        dense point, rasterised column by column (or row by row when steep)."""
        G, n = self.G, self.n
        ca, sa = math.cos(ang), math.sin(ang)
        k = np.arange(-4, 5)[:, None]
        if abs(ca) >= abs(sa):
            t = G.x
            across = (py_ + (t - px_) * sa / ca - G.y0) / G.px
            par = (t - px_) / ca
            cross_scale = abs(ca)
        else:
            t = G.y
            across = (px_ + (t - py_) * ca / sa - G.x0) / G.px
            par = (t - py_) / sa
            cross_scale = abs(sa)
        idx = np.floor(across)[None, :] + k
        d = (idx - across[None, :]) * G.px * cross_scale
        v = amp * np.exp(-0.5 * (d / wd_mm) ** 2) * np.exp(-np.abs(par) / decay)[None, :]
        other = np.broadcast_to(np.arange(n)[None, :], idx.shape)
        ok = (idx >= 0) & (idx < n)
        ii = idx[ok].astype(np.int64)
        jj = other[ok]
        if abs(ca) >= abs(sa):
            img[ii, jj] += v[ok].astype(np.float32)
        else:
            img[jj, ii] += v[ok].astype(np.float32)


# ----------------------------------------------------------------------------- truth

def components(mask_pts):
    """8-connected components of a set of (row, col) pixels. Returns list of lists."""
    pts = set(mask_pts)
    out = []
    while pts:
        p = pts.pop()
        comp = [p]
        stack = [p]
        while stack:
            i, j = stack.pop()
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    q = (i + di, j + dj)
                    if q in pts:
                        pts.remove(q)
                        comp.append(q)
                        stack.append(q)
        out.append(comp)
    return out


def weight(peak):
    return 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4


def agatston(hu_slices, lab_slices, px, spacing):
    """The truth convention: HU >= 130 inside the lesion label, 8-connected per slice, area
    >= 1 mm2, area x weight(peak), sum x spacing / 3; artery of a lesion = majority label."""
    per = {v: 0.0 for v in VESSELS}
    lesions = []
    area_px = px * px
    for j, (hu, lab) in enumerate(zip(hu_slices, lab_slices)):
        if lab is None:
            continue
        cand = (hu >= 130) & (lab > 0)
        if not cand.any():
            continue
        ii, jj = np.nonzero(cand)
        for comp in components(zip(ii.tolist(), jj.tolist())):
            area = len(comp) * area_px
            if area < 1.0:
                continue
            ci = np.array([c[0] for c in comp])
            cj = np.array([c[1] for c in comp])
            peak = int(hu[ci, cj].max())
            labs = np.bincount(lab[ci, cj], minlength=5)[1:]
            art = VESSELS[int(np.argmax(labs))]
            sc = area * weight(peak) * spacing / 3.0
            per[art] += sc
            lesions.append(dict(slice=j, artery=art, area_mm2=round(area, 2), peak_hu=peak, score=round(sc, 2)))
    total = sum(per.values())
    return total, per, lesions


# ----------------------------------------------------------------------------- DICOM

def write_series(out, hu_slices, zs, G, meta):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    seed = meta["seed"]
    study = make_uid(seed, "study")
    series = make_uid(seed, "series")
    frame = make_uid(seed, "frame")
    n = len(hu_slices)
    order = np.argsort(-np.asarray(zs))            # head first, as scanners number them
    for inst, j in enumerate(order, start=1):
        sop = make_uid(seed, f"image/{j}")
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CTImageStorage
        fm.MediaStorageSOPInstanceUID = sop
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        ds = FileDataset(None, {}, file_meta=fm, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = meta["date"]
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = meta["time"]
        ds.AccessionNumber = f"HO{seed:08d}"
        ds.Modality = "CT"
        ds.Manufacturer = "cacd heldout phantom"
        ds.InstitutionName = "SYNTHETIC"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
        ds.SeriesDescription = f"AXIAL {meta['thickness']:g}MM {meta['kernel']}"
        ds.ManufacturerModelName = STYLE
        ds.PatientName = f"HELDOUT^{seed}"
        ds.PatientID = f"heldout-{seed}"
        ds.PatientBirthDate = ""
        ds.PatientSex = meta["sex"]
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{meta['thickness']:g}"
        ds.KVP = "120"
        ds.SpacingBetweenSlices = f"{meta['thickness']:g}"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = f"{G.n * G.px:.1f}"
        ds.GantryDetectorTilt = "0"
        ds.XRayTubeCurrent = str(meta["ma"])
        ds.ConvolutionKernel = meta["kernel"]
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = str(seed % 100000)
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [f"{G.x0:.4f}", f"{G.y0:.4f}", f"{zs[j]:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{zs[j]:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = G.n
        ds.PixelSpacing = [f"{G.px:.6f}", f"{G.px:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        stored = (hu_slices[j].astype(np.int32) + 1024).clip(0, 65535).astype("<u2")
        ds.add_new(0x7FE00010, "OW", stored.tobytes())
        ds.save_as(os.path.join(out, f"CT{inst:04d}.dcm"), enforce_file_format=True)
    return dict(study=study, series=series, n=n)


# ----------------------------------------------------------------------------- the study

THICK_CHOICES = [(2.5, 0.28), (3.0, 0.28), (5.0, 0.24), (1.0, 0.05), (1.25, 0.05), (1.5, 0.05), (2.0, 0.05)]


def generate(out, seed, burden=None, thickness=None, save_labels=False, verbose=False, below_mm=None):
    t0 = time.time()
    rng = np.random.default_rng([seed, 1])
    if burden is None:
        burden = BURDENS[int(rng.choice(4, p=[0.2, 0.3, 0.3, 0.2]))]
    if thickness is None:
        th, p = zip(*THICK_CHOICES)
        thickness = float(th[int(rng.choice(len(th), p=np.array(p) / sum(p)))])
    T = float(thickness)
    pt = Patient(seed, burden, T)
    t_build = time.time()
    # pixel grid: 512 x 512 at 0.6-0.8 mm, wide enough for the body
    need = 2 * pt.body_A * (1.0 + 0.35 * pt.cav_taper) + rng.uniform(10, 70)
    px = float(np.clip(need / 512, 0.6, 0.8))
    n = 512
    cx = rng.uniform(-12, 12)
    cy = pt.body_yc + rng.uniform(-15, 20)
    G = Grid(n, px, cx - px * (n - 1) / 2, cy - px * (n - 1) / 2)
    # coverage: the whole heart plus margins, 120-200 mm
    hbot, htop = pt.heart_z_extent()
    lo = hbot - rng.uniform(5, 45)
    hi = htop + rng.uniform(5, 45)
    if below_mm is not None:
        lo = hbot - below_mm
    if hi - lo < 120:
        extra = 120 - (hi - lo)
        f = rng.uniform(0.2, 0.8)
        lo -= extra * f
        hi += extra * (1 - f)
    if hi - lo > 200:
        over = hi - lo - 200
        lo += min(over * 0.3, max(0, hbot - 3 - lo))
        hi = lo + 200
    nslab = int(round((hi - lo) / T))
    z_edge0 = lo + rng.uniform(-T / 2, T / 2)
    zc = z_edge0 + (np.arange(nslab) + 0.5) * T
    # calcium and distractors
    crng = np.random.default_rng([seed, 3])
    lesions = plan_lesions(pt, burden, crng)
    distract = plan_distractors(pt, crng, z_edge0, z_edge0 + nslab * T)
    rend = Renderer(pt, G)
    nsub = max(1, int(math.ceil(T / 1.0 - 1e-6)))
    anat = []
    for j in range(nslab):
        acc = None
        for k in range(nsub):
            z = z_edge0 + j * T + (k + 0.5) * T / nsub
            im = rend.render(z)
            acc = im if acc is None else acc + im
        anat.append(np.rint(acc / nsub).astype(np.int16))
    t_anat = time.time()
    # imaging
    sig3 = rng.uniform(12, 36) * (pt.body_A / 165.0) ** 0.7
    sigma = float(np.clip(sig3 * math.sqrt(3.0 / T), 10, 45))
    psf = rng.uniform(0.45, 0.8)
    imager = Imager(pt, G, rng, sigma, psf)
    nf = max(4, int(math.ceil(T / 0.25)))
    kr = gauss1d(psf / px)
    codes = {v: i + 1 for i, v in enumerate(VESSELS)}

    def compose(sources):
        items = render_sources(sources, G, z_edge0, T, nslab, nf)
        hu_s, lab_s = [], []
        for j in range(nslab):
            pre = anat[j].astype(np.float32)
            its = items.get(j, [])
            dense = []
            if its:
                occ_t = np.zeros((n, n), np.float32)
                mass_t = np.zeros((n, n), np.float32)
                for si, sy, sx, o, m in its:
                    occ_t[sy, sx] += o
                    mass_t[sy, sx] += m
                sc = np.maximum(occ_t, 1.0)
                pre = pre * (1 - np.minimum(occ_t, 1.0)) + mass_t / sc
            yv = pt.vb_y(float(zc[j]))
            dense.append((pt.vb_x, yv, 0.7))
            if its and imager.streaky:
                si, sy, sx, o, m = max(its, key=lambda it: float(it[4].max()))
                if m.max() > 500:
                    ii, jj = np.unravel_index(np.argmax(m), m.shape)
                    dense.append((float(G.x[sx.start + jj]), float(G.y[sy.start + ii]), 0.5))
            img = imager.image(pre, j, dense)
            hu = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
            lab = None
            if its:
                best = np.zeros((n, n), np.float32)
                bl = np.zeros((n, n), np.int8)
                base = anat[j]
                r = len(kr) // 2
                for si, sy, sx, o, m in its:
                    ex = m - o * base[sy, sx].astype(np.float32)
                    exb = blur_small(np.pad(ex, r), kr)
                    ya, xa = sy.start - r, sx.start - r
                    yb_, xb_ = ya + exb.shape[0], xa + exb.shape[1]
                    cy0, cx0 = max(0, -ya), max(0, -xa)
                    cy1 = exb.shape[0] - max(0, yb_ - n)
                    cx1 = exb.shape[1] - max(0, xb_ - n)
                    e = exb[cy0:cy1, cx0:cx1]
                    tsl = (slice(ya + cy0, ya + cy1), slice(xa + cx0, xa + cx1))
                    code = codes.get(sources[si].label, -1)
                    win = e > best[tsl]
                    best[tsl] = np.where(win, e, best[tsl])
                    bl[tsl] = np.where(win, code, bl[tsl])
                lab = np.where((best >= 25.0) & (bl > 0), bl, 0).astype(np.int8)
            hu_s.append(hu)
            lab_s.append(lab)
        return hu_s, lab_s

    sources = lesions + distract
    hu_s, lab_s = compose(sources)
    total, per, found = agatston(hu_s, lab_s, px, T)
    tries = 0
    while burden != "none" and total <= 0 and tries < 4:
        # the planned calcium vanished in partial volume: add a visible lesion and image again
        tries += 1
        art = VESSELS[int(crng.integers(4))]
        lesions.append(make_lesion(pt, art, "short" if burden == "low" else "segment", crng))
        sources = lesions + distract
        hu_s, lab_s = compose(sources)
        total, per, found = agatston(hu_s, lab_s, px, T)
    t_img = time.time()
    os.makedirs(out, exist_ok=True)
    kern = ["B30f", "STANDARD", "FC12", "Br36", "SOFT", "B35f"][int(rng.integers(6))]
    meta = dict(seed=seed, thickness=T, kernel=kern, sex="F" if pt.female else "M",
                date=f"2025{1 + seed % 12:02d}{1 + seed % 28:02d}", time=f"{8 + seed % 10:02d}{seed % 60:02d}00",
                ma=int(rng.integers(20, 120)))
    zs_dicom = zc
    info = write_series(out, hu_s, zs_dicom, G, meta)
    truth = dict(
        style=STYLE,
        generator="bench/heldout/generate.py",
        seed=seed,
        burden=burden,
        thickness=T,
        slice_spacing=T,
        agatston_total=round(total, 2),
        per_vessel={v: round(per[v], 2) for v in VESSELS},
        risk_category=risk_category(total),
        convention="HU>=130 inside the lesion label; 8-connected per slice; area>=1 mm2; "
                   "area x weight(peak: 130-199:1, 200-299:2, 300-399:3, >=400:4); sum x spacing/3; "
                   "artery = majority label",
        lesions=[s.info for s in lesions],
        scored_lesions=found,
        distractors=[s.info for s in distract],
        image=dict(rows=n, columns=n, pixel_mm=round(px, 4), slices=nslab, coverage_mm=round(nslab * T, 1),
                   z_first=round(float(zc[0]), 2), z_last=round(float(zc[-1]), 2),
                   noise_sigma_hu=round(sigma, 1), psf_sigma_mm=round(psf, 3), streaks=imager.streaky,
                   sub_slices=nsub, **imager.nps),
        patient=dict(sex=meta["sex"], heart_scale=round(pt.s_h, 3), body_half_width_mm=round(pt.body_A, 1),
                     subcutaneous_fat_mm=round(pt.fat, 1)),
        series_instance_uid=info["series"],
        study_instance_uid=info["study"],
    )
    with open(os.path.join(out, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1)
    if save_labels:
        vol = np.stack([l if l is not None else np.zeros((n, n), np.int8) for l in lab_s])
        np.savez_compressed(os.path.join(out, "labels.npz"), labels=vol, z=zc)
    t_end = time.time()
    if verbose:
        print(f"seed {seed} {burden} {T} mm: {nslab} slices, px {px:.3f}, sigma {sigma:.1f}; "
              f"truth {total:.1f} ({risk_category(total)}); build {t_build - t0:.1f}s anatomy "
              f"{t_anat - t_build:.1f}s imaging {t_img - t_anat:.1f}s write {t_end - t_img:.1f}s", file=sys.stderr)
    return truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--burden", choices=BURDENS)
    ap.add_argument("--thickness", type=float)
    ap.add_argument("--labels", action="store_true", help="also write labels.npz (the lesion label volume)")
    ap.add_argument("--below", type=float, help="coverage below the heart's lowest point in mm "
                    "(default: drawn from the seed, 5-45)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    t = generate(a.out, a.seed, a.burden, a.thickness, a.labels, a.verbose, below_mm=a.below)
    print(json.dumps({k: t[k] for k in ("seed", "burden", "thickness", "agatston_total", "per_vessel",
                                         "risk_category")}))


if __name__ == "__main__":
    main()
