//! The few image operations the heart outline needs, on flat `[z, y, x]` grids with isotropic
//! spacing: connected components, hole filling and convex hulls per slice, Euclidean distance,
//! Gaussian smoothing, gradient magnitude and marker-controlled watershed.
//!
//! Written here rather than taken from a crate: the ndimage ports for Rust lack the distance
//! transform, the hull and the watershed, and pull in a second `ndarray`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Grid dimensions `[d, h, w]` (slices, rows, columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub d: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub fn len(self) -> usize {
        self.d * self.h * self.w
    }

    pub fn plane(self) -> usize {
        self.h * self.w
    }

    pub fn at(self, z: usize, y: usize, x: usize) -> usize {
        (z * self.h + y) * self.w + x
    }

    pub fn zyx(self, i: usize) -> (usize, usize, usize) {
        (i / self.plane(), (i / self.w) % self.h, i % self.w)
    }

    /// The 6-connected neighbours of voxel `i`.
    pub fn neighbours6(self, i: usize) -> impl Iterator<Item = usize> {
        let (z, y, x) = self.zyx(i);
        let p = self.plane();
        let w = self.w;
        [
            (z > 0).then(|| i - p),
            (z + 1 < self.d).then(|| i + p),
            (y > 0).then(|| i - w),
            (y + 1 < self.h).then(|| i + w),
            (x > 0).then(|| i - 1),
            (x + 1 < self.w).then(|| i + 1),
        ]
        .into_iter()
        .flatten()
    }
}

/// 6-connected components of `mask`: a label per voxel (0 outside, 1.. inside) and the size of
/// each label (index 0 unused).
pub fn label(mask: &[bool], dims: Dims) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut n = 0;
        labels[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            n += 1;
            for j in dims.neighbours6(i) {
                if mask[j] && labels[j] == 0 {
                    labels[j] = id;
                    stack.push(j);
                }
            }
        }
        sizes.push(n);
    }
    (labels, sizes)
}

/// Only the components of `mask` with at least `min` voxels.
pub fn keep_large(mask: &[bool], dims: Dims, min: usize) -> Vec<bool> {
    let (labels, sizes) = label(mask, dims);
    labels
        .iter()
        .map(|&l| l != 0 && sizes[l as usize] >= min)
        .collect()
}

/// Only the largest component of `mask` (all false when empty).
pub fn largest(mask: &[bool], dims: Dims) -> Vec<bool> {
    let (labels, sizes) = label(mask, dims);
    let Some(best) = (1..sizes.len()).max_by_key(|&l| sizes[l]) else {
        return vec![false; mask.len()];
    };
    labels.iter().map(|&l| l as usize == best).collect()
}

/// Per slice: `mask` with every region it encloses (not reachable from the slice border
/// through 4-connected background) filled.
pub fn fill_holes_2d(mask: &[bool], dims: Dims) -> Vec<bool> {
    let (h, w) = (dims.h, dims.w);
    let mut out = mask.to_vec();
    let mut outside = vec![false; h * w];
    let mut stack = Vec::new();
    for z in 0..dims.d {
        let m = &mask[z * h * w..(z + 1) * h * w];
        outside.iter_mut().for_each(|o| *o = false);
        let seed = |i: usize, stack: &mut Vec<usize>, outside: &mut [bool]| {
            if !m[i] && !outside[i] {
                outside[i] = true;
                stack.push(i);
            }
        };
        for x in 0..w {
            seed(x, &mut stack, &mut outside);
            seed((h - 1) * w + x, &mut stack, &mut outside);
        }
        for y in 0..h {
            seed(y * w, &mut stack, &mut outside);
            seed(y * w + w - 1, &mut stack, &mut outside);
        }
        while let Some(i) = stack.pop() {
            let (y, x) = (i / w, i % w);
            let mut push = |j: usize| {
                if !m[j] && !outside[j] {
                    outside[j] = true;
                    stack.push(j);
                }
            };
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
        }
        for (i, o) in outside.iter().enumerate() {
            if !o {
                out[z * h * w + i] = true;
            }
        }
    }
    out
}

/// The filled convex hull of the true pixels of one `h × w` slice (pixels as unit squares).
pub fn convex_hull_2d(slice: &[bool], h: usize, w: usize) -> Vec<bool> {
    // Corners of the pixels on each row's ends are enough: interior pixels never make the hull.
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for y in 0..h {
        let row = &slice[y * w..(y + 1) * w];
        let (Some(x0), Some(x1)) = (row.iter().position(|&b| b), row.iter().rposition(|&b| b))
        else {
            continue;
        };
        let (yf, x0f, x1f) = (y as f64, x0 as f64, x1 as f64);
        pts.extend([
            (x0f - 0.5, yf - 0.5),
            (x0f - 0.5, yf + 0.5),
            (x1f + 0.5, yf - 0.5),
            (x1f + 0.5, yf + 0.5),
        ]);
    }
    let mut out = vec![false; h * w];
    if pts.len() < 3 {
        return out;
    }
    let hull = monotone_chain(pts);
    if hull.len() < 3 {
        return out;
    }
    // Fill: a pixel centre is inside when it is left of (or on) every counter-clockwise edge.
    let (ymin, ymax) = hull
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    for y in (ymin.ceil().max(0.0) as usize)..=(ymax.floor().min(h as f64 - 1.0) as usize) {
        let yf = y as f64;
        // Intersect the row with the polygon: the x range where every edge constraint holds.
        let (mut lo, mut hi) = (f64::MIN, f64::MAX);
        for k in 0..hull.len() {
            let (a, b) = (hull[k], hull[(k + 1) % hull.len()]);
            // cross((b - a), (p - a)) >= 0 with p = (x, yf): linear in x.
            let (ex, ey) = (b.0 - a.0, b.1 - a.1);
            // ex * (yf - a.1) - ey * (x - a.0) >= 0
            let c = ex * (yf - a.1) + ey * a.0;
            if ey.abs() < 1e-12 {
                if c < -1e-9 {
                    lo = f64::MAX;
                }
            } else if ey > 0.0 {
                hi = hi.min(c / ey);
            } else {
                lo = lo.max(c / ey);
            }
        }
        if lo > hi {
            continue;
        }
        let x0 = lo.ceil().max(0.0) as usize;
        let x1 = hi.floor().min(w as f64 - 1.0);
        if x1 < 0.0 {
            continue;
        }
        for x in x0..=(x1 as usize) {
            out[y * w + x] = true;
        }
    }
    out
}

/// Convex hull, counter-clockwise (in a y-down image: clockwise on screen), no collinear points.
fn monotone_chain(mut pts: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut lower: Vec<(f64, f64)> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0.0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<(f64, f64)> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0.0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Squared distance transform along one line (Felzenszwalb & Huttenlocher's lower envelope of
/// parabolas): `f` holds the squared distance so far (0 at features, infinite where nothing has
/// been seen), in units of the grid step. Only finite entries become parabolas.
fn edt_1d(f: &[f64], out: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let mut k: Option<usize> = None;
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        let fq = f[q] + (q * q) as f64;
        loop {
            match k {
                None => {
                    k = Some(0);
                    v[0] = q;
                    z[0] = f64::NEG_INFINITY;
                    z[1] = f64::INFINITY;
                    break;
                }
                Some(kk) => {
                    let p = v[kk];
                    let s = (fq - (f[p] + (p * p) as f64)) / (2.0 * (q - p) as f64);
                    if s <= z[kk] {
                        k = kk.checked_sub(1);
                        continue;
                    }
                    v[kk + 1] = q;
                    z[kk + 1] = s;
                    z[kk + 2] = f64::INFINITY;
                    k = Some(kk + 1);
                    break;
                }
            }
        }
    }
    let Some(_) = k else {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    };
    let mut j = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[j + 1] < q as f64 {
            j += 1;
        }
        let d = q as f64 - v[j] as f64;
        *o = d * d + f[v[j]];
    }
}

/// Euclidean distance (mm) from every voxel to the nearest voxel of `features`; `f32::MAX`
/// everywhere when there is none.
pub fn distance_to(features: &[bool], dims: Dims, spacing_mm: f64) -> Vec<f32> {
    let mut g: Vec<f64> = features
        .iter()
        .map(|&b| if b { 0.0 } else { f64::INFINITY })
        .collect();
    let n = dims.d.max(dims.h).max(dims.w);
    let (mut line, mut out) = (vec![0f64; n], vec![0f64; n]);
    let (mut v, mut zb) = (vec![0usize; n], vec![0f64; n + 1]);
    let strides = [1, dims.w, dims.plane()];
    let sizes = [dims.w, dims.h, dims.d];
    // Along x, then y, then z.
    for axis in 0..3 {
        let (stride, len) = (strides[axis], sizes[axis]);
        for start in 0..g.len() {
            if (start / stride) % len != 0 {
                continue;
            }
            for t in 0..len {
                line[t] = g[start + t * stride];
            }
            edt_1d(&line[..len], &mut out[..len], &mut v, &mut zb);
            for t in 0..len {
                g[start + t * stride] = out[t];
            }
        }
    }
    g.iter()
        .map(|&d2| {
            if d2.is_finite() {
                (d2.sqrt() * spacing_mm) as f32
            } else {
                f32::MAX
            }
        })
        .collect()
}

/// Morphological opening of `mask` with a ball of `radius_mm`: the union of all balls of that
/// radius that fit inside it.
pub fn open_ball(mask: &[bool], dims: Dims, spacing_mm: f64, radius_mm: f64) -> Vec<bool> {
    let outside: Vec<bool> = mask.iter().map(|&b| !b).collect();
    let depth = distance_to(&outside, dims, spacing_mm);
    let core: Vec<bool> = depth.iter().map(|&d| d as f64 > radius_mm).collect();
    let reach = distance_to(&core, dims, spacing_mm);
    mask.iter()
        .zip(&reach)
        .map(|(&m, &r)| m && (r as f64) <= radius_mm)
        .collect()
}

/// Separable Gaussian smoothing (σ in voxels), edges clamped.
pub fn gaussian(v: &[f32], dims: Dims, sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|x| x / sum).collect();
    let mut a = v.to_vec();
    let mut b = vec![0f32; v.len()];
    let strides = [dims.plane(), dims.w, 1];
    let sizes = [dims.d, dims.h, dims.w];
    for axis in 0..3 {
        let (stride, n) = (strides[axis], sizes[axis]);
        for (i, out) in b.iter_mut().enumerate() {
            let pos = (i / stride) % n;
            let mut acc = 0f32;
            for (t, kv) in k.iter().enumerate() {
                let q = (pos as isize + t as isize - r).clamp(0, n as isize - 1) as usize;
                acc += kv * a[i - pos * stride + q * stride];
            }
            *out = acc;
        }
        std::mem::swap(&mut a, &mut b);
    }
    a
}

/// Gradient magnitude by central differences (per voxel step).
pub fn gradient_magnitude(v: &[f32], dims: Dims) -> Vec<f32> {
    let strides = [dims.plane(), dims.w, 1];
    let sizes = [dims.d, dims.h, dims.w];
    (0..v.len())
        .map(|i| {
            let mut s = 0f32;
            for axis in 0..3 {
                let (stride, n) = (strides[axis], sizes[axis]);
                let pos = (i / stride) % n;
                let lo = if pos > 0 { i - stride } else { i };
                let hi = if pos + 1 < n { i + stride } else { i };
                let g = (v[hi] - v[lo]) / (hi - lo).max(1) as f32 * stride as f32;
                s += g * g;
            }
            s.sqrt()
        })
        .collect()
}

/// Marker-controlled watershed: every voxel of `domain` reachable from a marker gets the label
/// of the marker whose flood (in order of rising `elevation`) reaches it first; 0 elsewhere.
/// `allowed(label, voxel)` may forbid a label some voxels (its flood stops there).
pub fn watershed(
    elevation: &[f32],
    markers: &[u8],
    domain: &[bool],
    dims: Dims,
    allowed: impl Fn(u8, usize) -> bool,
) -> Vec<u8> {
    let mut out = vec![0u8; markers.len()];
    // (elevation quantised, insertion order, voxel): ties flood in insertion order (FIFO).
    let mut heap: BinaryHeap<Reverse<(u32, u64, usize)>> = BinaryHeap::new();
    let mut order = 0u64;
    let q = |e: f32| (e.max(0.0) * 16.0).min(u32::MAX as f32 / 2.0) as u32;
    for (i, &m) in markers.iter().enumerate() {
        if m != 0 && domain[i] {
            out[i] = m;
        }
    }
    for (i, &m) in out.iter().enumerate() {
        if m != 0 {
            for j in dims.neighbours6(i) {
                if domain[j] && out[j] == 0 {
                    heap.push(Reverse((q(elevation[j]), order, j)));
                    order += 1;
                }
            }
        }
    }
    while let Some(Reverse((level, _, i))) = heap.pop() {
        if out[i] != 0 {
            continue;
        }
        // The label of the first labelled neighbour allowed here (the one that flooded here).
        let Some(l) = dims
            .neighbours6(i)
            .map(|j| out[j])
            .find(|&l| l != 0 && allowed(l, i))
        else {
            continue;
        };
        out[i] = l;
        for j in dims.neighbours6(i) {
            if domain[j] && out[j] == 0 {
                heap.push(Reverse((q(elevation[j]).max(level), order, j)));
                order += 1;
            }
        }
    }
    out
}

/// Per slice, `mask` grown by one pixel (4-connected).
pub fn dilate_2d(slice: &[bool], h: usize, w: usize) -> Vec<bool> {
    let mut out = slice.to_vec();
    for y in 0..h {
        for x in 0..w {
            if !slice[y * w + x] {
                continue;
            }
            if y > 0 {
                out[(y - 1) * w + x] = true;
            }
            if y + 1 < h {
                out[(y + 1) * w + x] = true;
            }
            if x > 0 {
                out[y * w + x - 1] = true;
            }
            if x + 1 < w {
                out[y * w + x + 1] = true;
            }
        }
    }
    out
}

/// `mask` grown by one voxel (6-connected).
pub fn dilate_3d(mask: &[bool], dims: Dims) -> Vec<bool> {
    let mut out = mask.to_vec();
    for (i, &m) in mask.iter().enumerate() {
        if m {
            for j in dims.neighbours6(i) {
                out[j] = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(d: usize, h: usize, w: usize) -> Dims {
        Dims { d, h, w }
    }

    #[test]
    fn distance_matches_brute_force() {
        let g = dims(7, 9, 11);
        let mut f = vec![false; g.len()];
        for &(z, y, x) in &[(1, 2, 3), (5, 7, 9), (3, 0, 10)] {
            f[g.at(z, y, x)] = true;
        }
        let d = distance_to(&f, g, 2.0);
        for (i, &di) in d.iter().enumerate() {
            let (z, y, x) = g.zyx(i);
            let best = [(1, 2, 3), (5, 7, 9), (3, 0, 10)]
                .iter()
                .map(|&(a, b, c): &(i32, i32, i32)| {
                    let (dz, dy, dx) = (z as i32 - a, y as i32 - b, x as i32 - c);
                    (((dz * dz + dy * dy + dx * dx) as f64).sqrt() * 2.0) as f32
                })
                .fold(f32::MAX, f32::min);
            assert!((di - best).abs() < 1e-3, "{i}: {di} vs {best}");
        }
    }

    #[test]
    fn hull_of_two_blobs_spans_between_them() {
        let (h, w) = (10, 20);
        let mut s = vec![false; h * w];
        for y in 3..7 {
            s[y * w + 2] = true;
            s[y * w + 17] = true;
        }
        let hull = convex_hull_2d(&s, h, w);
        assert!(hull[5 * w + 10], "between the blobs");
        assert!(!hull[w + 10], "above them");
        assert!(hull[3 * w + 2] && hull[6 * w + 17]);
        assert_eq!(hull.iter().filter(|&&b| b).count(), 4 * 16);
    }

    #[test]
    fn holes_are_filled_and_open_regions_kept_open() {
        let g = dims(1, 7, 7);
        let mut m = vec![false; g.len()];
        for i in 1..6 {
            m[g.at(0, 1, i)] = true;
            m[g.at(0, 5, i)] = true;
            m[g.at(0, i, 1)] = true;
            m[g.at(0, i, 5)] = true;
        }
        let f = fill_holes_2d(&m, g);
        assert!(f[g.at(0, 3, 3)]);
        assert!(!f[g.at(0, 0, 0)]);
        m[g.at(0, 1, 3)] = false; // a door into the ring
        let f = fill_holes_2d(&m, g);
        assert!(!f[g.at(0, 3, 3)]);
    }

    #[test]
    fn opening_removes_what_a_ball_does_not_fit_in() {
        let g = dims(30, 30, 60);
        let mut m = vec![false; g.len()];
        for (i, mi) in m.iter_mut().enumerate() {
            let (z, y, x) = g.zyx(i);
            let ball =
                (z as f64 - 15.0).powi(2) + (y as f64 - 15.0).powi(2) + (x as f64 - 15.0).powi(2)
                    <= 100.0;
            let rod = (z as f64 - 15.0).powi(2) + (y as f64 - 15.0).powi(2) <= 4.0 && x >= 15;
            *mi = ball || rod;
        }
        let o = open_ball(&m, g, 1.0, 5.0);
        assert!(o[g.at(15, 15, 15)], "the ball stays");
        assert!(!o[g.at(15, 15, 45)], "the thin rod goes");
    }

    #[test]
    fn watershed_splits_two_basins_at_the_ridge() {
        let g = dims(1, 1, 9);
        let elev = [0.0, 1.0, 2.0, 3.0, 9.0, 3.0, 2.0, 1.0, 0.0];
        let mut markers = vec![0u8; 9];
        markers[0] = 1;
        markers[8] = 2;
        let out = watershed(&elev, &markers, &[true; 9], g, |_, _| true);
        assert_eq!(&out[..4], &[1, 1, 1, 1]);
        assert_eq!(&out[5..], &[2, 2, 2, 2]);
    }
}
