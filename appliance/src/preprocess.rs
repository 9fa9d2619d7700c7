//! Stage "preprocess": a [`Volume`] on its native grid → the two model grids of
//! docs/ARCHITECTURE.md (coarse heart grid, fine heart-crop grid), and the fine network's
//! class probabilities → a label mask on the native grid.
//!
//! These are plain loops over plain slices on purpose: they are the CPU reference that any
//! accelerated version is checked against, and the training data (`cacd train-data`) come from
//! exactly these functions, so training and inference never disagree on resampling.
//!
//! Grid convention: a model grid is axis-aligned with the volume's index axes `[z, y, x]`
//! (not with the patient axes), has its own spacing and shape (from the manifest entry), and
//! is placed by the fractional native index of its centre. Model voxel `k` along an axis sits
//! at native index `centre + (k - (n - 1) / 2) * model_spacing / native_spacing`.

use crate::volume::Volume;
use cacd_models::{ModelEntry, Tensor};
use ndarray::{Array3, ArrayView3};
use std::collections::HashMap;

/// HU written where a model grid reaches outside the scanned volume (air).
pub const PAD_HU: f32 = -1000.0;
/// Native voxels below this HU are never labelled (the Agatston candidate threshold).
pub const CANDIDATE_HU: i16 = crate::score::HU_THRESHOLD;
/// p(heart) above which a coarse voxel counts as heart.
pub const HEART_PROB: f32 = 0.5;
/// Smallest heart component accepted (ml); anything smaller is "heart not found".
pub const MIN_HEART_ML: f64 = 30.0;

/// Errors of the preprocessing stage (malformed tensors or manifest grids).
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("tensor shape {actual:?} does not match the model grid {expected:?}")]
    Shape {
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("model grid is invalid: {0}")]
    Grid(String),
}

/// What a model expects of its input grid; copied from a manifest entry so no grid constant
/// lives in code.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    /// Spacing `[z, y, x]` mm.
    pub spacing: [f64; 3],
    /// Shape `[z, y, x]`.
    pub shape: [usize; 3],
    /// Input channels: 1 (HU) or 4 (HU + z, y, x coordinate channels).
    pub channels: usize,
    pub hu_clip: [f32; 2],
    pub hu_scale: f32,
}

impl GridSpec {
    /// The grid of a manifest entry, checked for sense.
    pub fn from_entry(e: &ModelEntry) -> Result<Self, PreprocessError> {
        let spec = GridSpec {
            spacing: e.spacing_mm,
            shape: e.shape,
            channels: e.channels,
            hu_clip: e.hu_clip,
            hu_scale: e.hu_scale,
        };
        if spec.spacing.iter().any(|&s| !(s > 0.0 && s.is_finite()))
            || spec.shape.iter().any(|&n| n < 2)
            || !(spec.channels == 1 || spec.channels == 4)
            || spec.hu_scale.is_nan()
            || spec.hu_scale <= 0.0
            || spec.hu_clip[0] >= spec.hu_clip[1]
        {
            return Err(PreprocessError::Grid(format!(
                "{} ({}): {spec:?}",
                e.name, e.file
            )));
        }
        Ok(spec)
    }
}

/// A model grid placed in a volume: the spec plus where its centre lies on the native grid.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGrid {
    pub spec: GridSpec,
    /// Fractional native index `[z, y, x]` of the model grid's centre.
    pub centre_index: [f64; 3],
    /// Native spacing `[z, y, x]` of the volume the grid was placed in.
    pub native_spacing: [f64; 3],
}

/// The fine (heart-crop) grid of one study.
pub type FineGrid = ModelGrid;

impl ModelGrid {
    /// Model grid centred on the centre of the scanned volume (the coarse heart grid).
    pub fn centred(vol: &Volume, spec: &GridSpec) -> Self {
        let (d, h, w) = vol.dims();
        ModelGrid {
            spec: spec.clone(),
            centre_index: [
                (d as f64 - 1.0) / 2.0,
                (h as f64 - 1.0) / 2.0,
                (w as f64 - 1.0) / 2.0,
            ],
            native_spacing: vol.geometry.spacing,
        }
    }

    /// Model grid centred on a patient position (mm, LPS), e.g. the heart centre.
    pub fn at_patient(vol: &Volume, spec: &GridSpec, centre_mm: [f64; 3]) -> Self {
        ModelGrid {
            spec: spec.clone(),
            centre_index: vol.geometry.patient_to_index(centre_mm),
            native_spacing: vol.geometry.spacing,
        }
    }

    /// Native fractional index along `axis` of model index `k` (fractional allowed).
    pub fn to_native(&self, axis: usize, k: f64) -> f64 {
        let half = (self.spec.shape[axis] as f64 - 1.0) / 2.0;
        self.centre_index[axis] + (k - half) * self.spec.spacing[axis] / self.native_spacing[axis]
    }

    /// Model fractional index along `axis` of native index `n`.
    pub fn from_native(&self, axis: usize, n: f64) -> f64 {
        let half = (self.spec.shape[axis] as f64 - 1.0) / 2.0;
        (n - self.centre_index[axis]) * self.native_spacing[axis] / self.spec.spacing[axis] + half
    }
}

/// One linear-interpolation tap along one axis: source indices and the weight of `i1`.
/// `None` marks a sample outside the source (it takes the pad value).
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: Option<usize>,
    i1: Option<usize>,
    w1: f32,
}

fn taps(n_out: usize, n_src: usize, map: impl Fn(f64) -> f64) -> Vec<Tap> {
    (0..n_out)
        .map(|k| {
            let s = map(k as f64);
            let f = s.floor();
            let w1 = (s - f) as f32;
            let idx = |i: f64| (i >= 0.0 && i < n_src as f64).then_some(i as usize);
            Tap {
                i0: idx(f),
                i1: idx(f + 1.0),
                w1,
            }
        })
        .collect()
}

/// Trilinear resampling of `src` onto `grid` (axis-aligned, so the taps are separable and
/// precomputed per axis). Samples outside `src` take `pad`. Output is `[z, y, x]` row-major.
pub fn resample_trilinear<T: Copy + Into<f32>>(
    src: ArrayView3<T>,
    grid: &ModelGrid,
    pad: f32,
) -> Vec<f32> {
    let (sd, sh, sw) = src.dim();
    let [d, h, w] = grid.spec.shape;
    let tz = taps(d, sd, |k| grid.to_native(0, k));
    let ty = taps(h, sh, |k| grid.to_native(1, k));
    let tx = taps(w, sw, |k| grid.to_native(2, k));
    let get = |z: Option<usize>, y: Option<usize>, x: Option<usize>| -> f32 {
        match (z, y, x) {
            (Some(z), Some(y), Some(x)) => src[[z, y, x]].into(),
            _ => pad,
        }
    };
    let mut out = vec![pad; d * h * w];
    for (kz, az) in tz.iter().enumerate() {
        if az.i0.is_none() && az.i1.is_none() {
            continue; // whole plane outside: stays pad
        }
        for (ky, ay) in ty.iter().enumerate() {
            let row = &mut out[(kz * h + ky) * w..(kz * h + ky + 1) * w];
            for (o, ax) in row.iter_mut().zip(&tx) {
                let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
                let along_x = |z, y| lerp(get(z, y, ax.i0), get(z, y, ax.i1), ax.w1);
                let along_y = |z| lerp(along_x(z, ay.i0), along_x(z, ay.i1), ay.w1);
                *o = lerp(along_y(az.i0), along_y(az.i1), az.w1);
            }
        }
    }
    out
}

fn scale_hu(v: &mut [f32], spec: &GridSpec) {
    for x in v {
        *x = x.clamp(spec.hu_clip[0], spec.hu_clip[1]) / spec.hu_scale;
    }
}

/// Coordinate channel value of model index `k` on an axis of `n` voxels: -1 … 1.
fn coord(k: usize, n: usize) -> f32 {
    (2.0 * k as f64 / (n as f64 - 1.0) - 1.0) as f32
}

/// Builds the `[1, C, D, H, W]` input of a grid: HU clipped and scaled, then (when the spec has
/// 4 channels) the z, y, x coordinate channels.
fn model_input(vol: &Volume, grid: &ModelGrid) -> Tensor {
    let spec = &grid.spec;
    let [d, h, w] = spec.shape;
    let mut data = resample_trilinear(vol.hu.view(), grid, PAD_HU);
    scale_hu(&mut data, spec);
    if spec.channels == 4 {
        data.reserve(3 * d * h * w);
        for axis in 0..3 {
            for z in 0..d {
                for y in 0..h {
                    for x in 0..w {
                        let (k, n) = [(z, d), (y, h), (x, w)][axis];
                        data.push(coord(k, n));
                    }
                }
            }
        }
    }
    Tensor {
        shape: vec![1, spec.channels, d, h, w],
        data,
    }
}

/// The heart locator's input: HU resampled onto the coarse grid centred on the volume centre.
pub fn coarse_input(vol: &Volume, spec: &GridSpec) -> (Tensor, ModelGrid) {
    let grid = ModelGrid::centred(vol, spec);
    (model_input(vol, &grid), grid)
}

/// The calcium segmenter's input: HU + coordinate channels on the fine grid centred on
/// `centre_mm` (patient position).
pub fn fine_input(vol: &Volume, centre_mm: [f64; 3], spec: &GridSpec) -> (Tensor, FineGrid) {
    let grid = ModelGrid::at_patient(vol, spec, centre_mm);
    (model_input(vol, &grid), grid)
}

/// A native-grid mask (e.g. the phantom's heart mask) on a model grid: trilinear fraction
/// ≥ 0.5 → 1.
pub fn mask_to_grid(mask: ArrayView3<u8>, grid: &ModelGrid) -> Array3<u8> {
    let [d, h, w] = grid.spec.shape;
    let bin = mask.mapv(|v| (v != 0) as u8);
    let frac = resample_trilinear(bin.view(), grid, 0.0);
    Array3::from_shape_vec((d, h, w), frac.iter().map(|&f| (f >= 0.5) as u8).collect())
        .unwrap_or_else(|_| Array3::zeros((d, h, w))) // unreachable: length is d*h*w
}

/// Where the heart is: the largest component of p(heart) > 0.5 on the coarse grid.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartBox {
    /// Centre of the component's bounding box, patient mm (LPS).
    pub centre_mm: [f64; 3],
    /// Bounding-box extent `[z, y, x]` in mm along the volume axes.
    pub extent_mm: [f64; 3],
    /// Component volume (ml).
    pub volume_ml: f64,
}

/// Finds the heart in the locator's output `[1, 2, D, H, W]` (softmax, channel 1 = heart).
/// `Ok(None)` when no component of at least [`MIN_HEART_ML`] exists ("heart not found").
pub fn heart_box(
    prob: &Tensor,
    grid: &ModelGrid,
    vol: &Volume,
) -> Result<Option<HeartBox>, PreprocessError> {
    let [d, h, w] = grid.spec.shape;
    let expected = vec![1, 2, d, h, w];
    if prob.shape != expected || prob.data.len() != 2 * d * h * w {
        return Err(PreprocessError::Shape {
            expected,
            actual: prob.shape.clone(),
        });
    }
    let p = &prob.data[d * h * w..];
    let fg: Vec<bool> = p.iter().map(|&v| v > HEART_PROB).collect();
    let Some((bbox, count)) = largest_component(&fg, [d, h, w]) else {
        return Ok(None);
    };
    let voxel_ml = grid.spec.spacing.iter().product::<f64>() / 1000.0;
    let volume_ml = count as f64 * voxel_ml;
    if volume_ml < MIN_HEART_ML {
        return Ok(None);
    }
    let mut centre_native = [0.0; 3];
    let mut extent_mm = [0.0; 3];
    for a in 0..3 {
        let mid = (bbox[a].0 + bbox[a].1) as f64 / 2.0;
        centre_native[a] = grid.to_native(a, mid);
        extent_mm[a] = (bbox[a].1 - bbox[a].0 + 1) as f64 * grid.spec.spacing[a];
    }
    let centre_mm =
        vol.geometry
            .index_to_patient(centre_native[0], centre_native[1], centre_native[2]);
    Ok(Some(HeartBox {
        centre_mm,
        extent_mm,
        volume_ml,
    }))
}

/// Largest 6-connected component of `fg` on a `[d, h, w]` grid: its inclusive bounding box per
/// axis and its voxel count.
fn largest_component(fg: &[bool], shape: [usize; 3]) -> Option<([(usize, usize); 3], usize)> {
    let [d, h, w] = shape;
    let mut seen = vec![false; fg.len()];
    let mut best: Option<([(usize, usize); 3], usize)> = None;
    let mut stack = Vec::new();
    for start in 0..fg.len() {
        if !fg[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut count = 0;
        let mut bb = [(usize::MAX, 0usize); 3];
        while let Some(i) = stack.pop() {
            count += 1;
            let (z, y, x) = (i / (h * w), (i / w) % h, i % w);
            for (a, c) in [z, y, x].into_iter().enumerate() {
                bb[a] = (bb[a].0.min(c), bb[a].1.max(c));
            }
            let mut visit = |j: usize| {
                if fg[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if z > 0 {
                visit(i - h * w);
            }
            if z + 1 < d {
                visit(i + h * w);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
        }
        if best.as_ref().is_none_or(|b| count > b.1) {
            best = Some((bb, count));
        }
    }
    best
}

/// Training target on the fine grid (footprint rule, docs/ARCHITECTURE.md): a fine voxel gets a
/// vessel label when its footprint (its box of one fine spacing) overlaps the box of a
/// native lesion voxel of that vessel, so a 1-voxel lesion never vanishes. Where two vessels
/// meet, the first written (lowest native index) keeps the voxel.
pub fn labels_to_fine(labels: ArrayView3<u8>, grid: &FineGrid) -> Array3<u8> {
    let [d, h, w] = grid.spec.shape;
    let mut out = Array3::<u8>::zeros((d, h, w));
    for ((z, y, x), &l) in labels.indexed_iter() {
        if l == 0 {
            continue;
        }
        // Native voxel box [n - ½, n + ½] in model index units; fine voxel k covers [k - ½, k + ½].
        let mut range = [(0usize, 0usize); 3];
        let mut inside = true;
        for (a, n) in [z, y, x].into_iter().enumerate() {
            let half = 0.5 * grid.native_spacing[a] / grid.spec.spacing[a];
            let c = grid.from_native(a, n as f64);
            // Strict overlap: (c - half, c + half) ∩ (k - ½, k + ½) ≠ ∅.
            let lo = (c - half - 0.5).floor() as i64 + 1;
            let hi = (c + half + 0.5).ceil() as i64 - 1;
            let lo = lo.max(0);
            let hi = hi.min(grid.spec.shape[a] as i64 - 1);
            if lo > hi {
                inside = false;
                break;
            }
            range[a] = (lo as usize, hi as usize);
        }
        if !inside {
            continue;
        }
        for kz in range[0].0..=range[0].1 {
            for ky in range[1].0..=range[1].1 {
                for kx in range[2].0..=range[2].1 {
                    let o = &mut out[[kz, ky, kx]];
                    if *o == 0 {
                        *o = l;
                    }
                }
            }
        }
    }
    out
}

/// One axis' interpolation tap into the fine grid: the two neighbouring indices and the weight
/// of the second.
pub(crate) type FineTap = (usize, usize, f32);

/// The tap of native index `i` along `axis`, clamped to the grid's edge (the GPU mask
/// kernel's tap tables are built from it too).
pub(crate) fn fine_tap(grid: &FineGrid, axis: usize, i: usize) -> FineTap {
    let n = grid.spec.shape[axis];
    let f = grid.from_native(axis, i as f64).clamp(0.0, (n - 1) as f64);
    let i0 = (f.floor() as usize).min(n - 1);
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, (f - i0 as f64) as f32)
}

/// The eight fine-grid corners `(z, y, x, weight)` of a trilinear sample from its three taps.
fn trilinear_corners(
    (z0, z1, wz): FineTap,
    (y0, y1, wy): FineTap,
    (x0, x1, wx): FineTap,
) -> [(usize, usize, usize, f32); 8] {
    [
        (z0, y0, x0, (1.0 - wz) * (1.0 - wy) * (1.0 - wx)),
        (z0, y0, x1, (1.0 - wz) * (1.0 - wy) * wx),
        (z0, y1, x0, (1.0 - wz) * wy * (1.0 - wx)),
        (z0, y1, x1, (1.0 - wz) * wy * wx),
        (z1, y0, x0, wz * (1.0 - wy) * (1.0 - wx)),
        (z1, y0, x1, wz * (1.0 - wy) * wx),
        (z1, y1, x0, wz * wy * (1.0 - wx)),
        (z1, y1, x1, wz * wy * wx),
    ]
}

/// Maps the segmenter's output `[1, K, D, H, W]` (class probabilities on the fine grid) back to
/// the native grid: every native voxel with HU ≥ 130 inside the crop gets the argmax of the K
/// probabilities trilinearly interpolated at its fine-grid position; all others get 0.
pub fn fine_to_native_mask(
    probs: &Tensor,
    grid: &FineGrid,
    vol: &Volume,
) -> Result<Array3<u8>, PreprocessError> {
    let k = check_probs(probs, grid)?;
    let [d, h, w] = grid.spec.shape;
    let (nd, nh, nw) = vol.dims();
    let mut mask = Array3::<u8>::zeros((nd, nh, nw));
    // Native index range covered by the crop along each axis (the crop's outer voxel centres).
    let range = |a: usize, n: usize| -> Option<(usize, usize)> {
        let lo = grid.to_native(a, 0.0).ceil().max(0.0);
        let hi = grid
            .to_native(a, grid.spec.shape[a] as f64 - 1.0)
            .floor()
            .min(n as f64 - 1.0);
        (lo <= hi).then_some((lo as usize, hi as usize))
    };
    let (Some(rz), Some(ry), Some(rx)) = (range(0, nd), range(1, nh), range(2, nw)) else {
        return Ok(mask);
    };
    let plane = d * h * w;
    // Per-axis taps into the fine grid for each native index in range (clamped to the edge).
    let axis_taps = |a: usize, r: (usize, usize)| -> Vec<FineTap> {
        (r.0..=r.1).map(|i| fine_tap(grid, a, i)).collect()
    };
    let (tz, ty, tx) = (axis_taps(0, rz), axis_taps(1, ry), axis_taps(2, rx));
    let mut p = vec![0f32; k];
    for (iz, z) in (rz.0..=rz.1).enumerate() {
        for (iy, y) in (ry.0..=ry.1).enumerate() {
            for (ix, x) in (rx.0..=rx.1).enumerate() {
                if vol.hu[[z, y, x]] < CANDIDATE_HU {
                    continue;
                }
                p.iter_mut().for_each(|v| *v = 0.0);
                for (cz, cy, cx, cw) in trilinear_corners(tz[iz], ty[iy], tx[ix]) {
                    let base = (cz * h + cy) * w + cx;
                    for (c, pc) in p.iter_mut().enumerate() {
                        *pc += cw * probs.data[c * plane + base];
                    }
                }
                // Argmax; ties go to the lower class (background first).
                let mut best = 0;
                for c in 1..k {
                    if p[c] > p[best] {
                        best = c;
                    }
                }
                mask[[z, y, x]] = best as u8;
            }
        }
    }
    Ok(mask)
}

/// Probability of coronary calcium (1 − background, trilinearly interpolated as in
/// [`fine_to_native_mask`]) at every labelled voxel of `mask`, keyed by `[z, y, x]`. Only the
/// labelled voxels are looked up: a few thousand per study, where the whole grid is millions.
/// With a sixth (non-coronary) class the probability is 1 − background − non-coronary: the
/// share the model gives the four vessels.
pub fn calcium_prob_at_labels(
    probs: &Tensor,
    grid: &FineGrid,
    mask: ArrayView3<u8>,
) -> Result<HashMap<[usize; 3], f32>, PreprocessError> {
    let k = check_probs(probs, grid)?;
    let [d, h, w] = grid.spec.shape;
    // Channels that are not coronary calcium: background, and non-coronary when the model
    // has it.
    let nc = usize::from(crate::infer::NON_CORONARY_CLASS);
    let not_coronary = if k > nc { vec![0, nc] } else { vec![0] };
    let mut out = HashMap::new();
    for ((z, y, x), &label) in mask.indexed_iter() {
        if label == 0 {
            continue;
        }
        let taps = (
            fine_tap(grid, 0, z),
            fine_tap(grid, 1, y),
            fine_tap(grid, 2, x),
        );
        let corners = trilinear_corners(taps.0, taps.1, taps.2);
        let bg: f32 = not_coronary
            .iter()
            .map(|&c| {
                corners
                    .iter()
                    .map(|&(cz, cy, cx, cw)| {
                        cw * probs.data[c * d * h * w + (cz * h + cy) * w + cx]
                    })
                    .sum::<f32>()
            })
            .sum();
        out.insert([z, y, x], (1.0 - bg).clamp(0.0, 1.0));
    }
    Ok(out)
}

/// Checks the segmenter's output `[1, K, D, H, W]` against the fine grid (2 ≤ K ≤ 255) and
/// returns K. Shared by the CPU and GPU mappings back to the native grid.
pub fn check_probs(probs: &Tensor, grid: &FineGrid) -> Result<usize, PreprocessError> {
    let [d, h, w] = grid.spec.shape;
    let k = probs.shape.get(1).copied().unwrap_or(0);
    let expected = vec![1, k, d, h, w];
    if !(2..=255).contains(&k) || probs.shape != expected || probs.data.len() != k * d * h * w {
        return Err(PreprocessError::Shape {
            expected,
            actual: probs.shape.clone(),
        });
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Geometry, SeriesMeta};

    fn volume(hu: Array3<i16>, spacing: [f64; 3], origin: [f64; 3]) -> Volume {
        let n = hu.dim().0;
        Volume {
            hu,
            geometry: Geometry::axial(spacing, origin),
            meta: SeriesMeta::default(),
            sop_instance_uids: vec![String::new(); n],
            source_frames: vec![1; n],
        }
    }

    fn spec(spacing: [f64; 3], shape: [usize; 3], channels: usize) -> GridSpec {
        GridSpec {
            spacing,
            shape,
            channels,
            hu_clip: [-1000.0, 2000.0],
            hu_scale: 1000.0,
        }
    }

    #[test]
    fn linear_ramp_resamples_exactly() {
        // HU = 3z + 2y + x on a 1.5 × 0.7 × 0.7 mm grid; any interior trilinear sample of a
        // linear function is exact.
        let hu = Array3::from_shape_fn((40, 60, 60), |(z, y, x)| (3 * z + 2 * y + x) as i16);
        let vol = volume(hu, [1.5, 0.7, 0.7], [0.0, 0.0, 0.0]);
        let s = spec([2.0, 1.3, 1.1], [20, 20, 20], 1);
        let grid = ModelGrid::centred(&vol, &s);
        let out = resample_trilinear(vol.hu.view(), &grid, PAD_HU);
        for (i, &v) in out.iter().enumerate() {
            let (kz, ky, kx) = (i / 400, (i / 20) % 20, i % 20);
            let (z, y, x) = (
                grid.to_native(0, kz as f64),
                grid.to_native(1, ky as f64),
                grid.to_native(2, kx as f64),
            );
            let expect = 3.0 * z + 2.0 * y + x;
            assert!((v as f64 - expect).abs() < 1e-3, "at {i}: {v} vs {expect}");
        }
    }

    #[test]
    fn outside_is_padded_and_input_is_scaled_with_coordinates() {
        let hu = Array3::from_elem((4, 4, 4), 500i16);
        let vol = volume(hu, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]);
        let s = spec([1.0, 1.0, 1.0], [8, 8, 8], 4);
        let (t, _) = coarse_input(&vol, &s);
        assert_eq!(t.shape, vec![1, 4, 8, 8, 8]);
        let at = |c: usize, z: usize, y: usize, x: usize| t.data[((c * 8 + z) * 8 + y) * 8 + x];
        assert_eq!(at(0, 0, 0, 0), -1.0); // pad -1000 HU / 1000
        assert!((at(0, 4, 4, 4) - 0.5).abs() < 1e-6); // inside: 500 / 1000
        assert_eq!(at(1, 0, 3, 5), -1.0);
        assert_eq!(at(1, 7, 3, 5), 1.0);
        assert_eq!(at(2, 2, 7, 0), 1.0);
        assert_eq!(at(3, 2, 7, 0), -1.0);
        assert!((at(3, 0, 0, 2) - (2.0 * 2.0 / 7.0 - 1.0) as f32).abs() < 1e-6);
    }

    #[test]
    fn hu_is_clipped() {
        let hu = Array3::from_elem((3, 3, 3), 3000i16);
        let vol = volume(hu, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]);
        let (t, _) = coarse_input(&vol, &spec([1.0, 1.0, 1.0], [3, 3, 3], 1));
        assert!((t.data[13] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn fine_crop_is_placed_in_patient_coordinates() {
        // Non-zero origin: one bright voxel at a known patient position must land at the crop
        // centre when the crop is centred on that position.
        let mut hu = Array3::from_elem((30, 50, 50), -1000i16);
        hu[[12, 20, 31]] = 1000;
        let vol = volume(hu, [2.0, 0.8, 0.8], [-100.0, 40.0, -250.0]);
        let p = vol.geometry.index_to_patient(12.0, 20.0, 31.0);
        assert!((p[0] - (-100.0 + 31.0 * 0.8)).abs() < 1e-9);
        let s = spec([2.0, 0.8, 0.8], [5, 7, 9], 4);
        let (t, grid) = fine_input(&vol, p, &s);
        let centre = (2 * 7 + 3) * 9 + 4;
        assert!((t.data[centre] - 1.0).abs() < 1e-6);
        assert_eq!(
            t.data.iter().take(5 * 7 * 9).filter(|&&v| v > -1.0).count(),
            1
        );
        assert!((grid.to_native(2, 4.0) - 31.0).abs() < 1e-9);
        // Coordinate channels are 0 at the centre.
        for c in 1..4 {
            assert!(t.data[c * 315 + centre].abs() < 1e-6);
        }
    }

    #[test]
    fn footprint_labels_keep_a_single_voxel_lesion() {
        // 3 mm slices, 0.6 mm pixels → fine 2 × 0.8 × 0.8: the one lesion voxel must survive
        // and cover every fine voxel its box overlaps, and nothing else.
        let mut labels = Array3::<u8>::zeros((20, 64, 64));
        labels[[10, 30, 33]] = 3;
        let hu = Array3::zeros((20, 64, 64));
        let vol = volume(hu, [3.0, 0.6, 0.6], [0.0, 0.0, 0.0]);
        let s = spec([2.0, 0.8, 0.8], [16, 32, 32], 4);
        let grid = ModelGrid::centred(&vol, &s);
        let fine = labels_to_fine(labels.view(), &grid);
        let hits: Vec<_> = fine.indexed_iter().filter(|(_, &v)| v != 0).collect();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|(_, &v)| v == 3));
        for ((kz, ky, kx), _) in &hits {
            for (a, k) in [*kz, *ky, *kx].into_iter().enumerate() {
                let c = grid.from_native(a, [10.0, 30.0, 33.0][a]);
                let half = 0.5 * vol.geometry.spacing[a] / s.spacing[a];
                assert!((k as f64 - c).abs() < half + 0.5, "axis {a}: {k} vs {c}");
            }
        }
        // z: native box 3 mm centred at 10 → 1.5 fine voxels → 2 or 3 fine slices.
        let zs: std::collections::BTreeSet<_> = hits.iter().map(|((z, _, _), _)| *z).collect();
        assert!(zs.len() >= 2);
    }

    #[test]
    fn fine_probabilities_map_back_to_the_right_native_voxels() {
        // Native 1 × 0.5 × 0.5 mm; crop 2 × 1 × 1 mm. Class 2 on the half x > centre, class 1
        // elsewhere in the crop; native voxels under 130 HU stay 0, voxels outside the crop too.
        let (nd, nh, nw) = (20, 40, 40);
        let mut hu = Array3::from_elem((nd, nh, nw), 0i16);
        for z in 0..nd {
            for y in 0..nh {
                for x in 0..nw {
                    if (x + y) % 2 == 0 {
                        hu[[z, y, x]] = 300;
                    }
                }
            }
        }
        let vol = volume(hu, [1.0, 0.5, 0.5], [5.0, -7.0, 11.0]);
        let s = spec([2.0, 1.0, 1.0], [6, 10, 10], 4);
        let centre = vol.geometry.index_to_patient(9.5, 19.5, 19.5);
        let grid = ModelGrid::at_patient(&vol, &s, centre);
        let (d, h, w) = (6, 10, 10);
        let mut data = vec![0f32; 3 * d * h * w];
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let c = if x >= 5 { 2 } else { 1 };
                    data[(c * d + z) * h * w + y * w + x] = 1.0;
                }
            }
        }
        let probs = Tensor {
            shape: vec![1, 3, d, h, w],
            data,
        };
        let mask = fine_to_native_mask(&probs, &grid, &vol).expect("shapes match");
        for ((z, y, x), &m) in mask.indexed_iter() {
            let inside = (0..3).all(|a| {
                let f = grid.from_native(a, [z, y, x][a] as f64);
                f >= 0.0 && f <= (s.shape[a] - 1) as f64
            });
            let expect = if !inside || vol.hu[[z, y, x]] < 130 {
                0
            } else if grid.from_native(2, x as f64) > 4.5 {
                2
            } else if grid.from_native(2, x as f64) < 4.5 {
                1
            } else {
                m // exactly on the boundary: either is right
            };
            assert_eq!(m, expect, "at {z},{y},{x}");
        }
        assert!(mask.iter().any(|&m| m == 2) && mask.iter().any(|&m| m == 1));
        // Wrong shape is an error, not a panic.
        let bad = Tensor {
            shape: vec![1, 3, 2, 2, 2],
            data: vec![0.0; 24],
        };
        assert!(fine_to_native_mask(&bad, &grid, &vol).is_err());
    }

    /// A 20×40×40 volume of 300 HU and a 6×10×10 fine crop at its centre (for the
    /// calcium-probability tests).
    fn probability_fixture() -> (Volume, FineGrid) {
        let vol = volume(
            Array3::from_elem((20, 40, 40), 300i16),
            [1.0, 0.5, 0.5],
            [0.0; 3],
        );
        let s = spec([2.0, 1.0, 1.0], [6, 10, 10], 4);
        let grid = ModelGrid::at_patient(&vol, &s, vol.geometry.index_to_patient(9.5, 19.5, 19.5));
        (vol, grid)
    }

    #[test]
    fn calcium_probability_is_interpolated_at_labelled_voxels_only() {
        // Background probability rises linearly along fine x (0 at x = 0, 1 at the last
        // column); trilinear interpolation of a ramp is exact, so every labelled native voxel
        // must get 1 − ramp at its fine position, clamped at the crop's edge.
        let (_, grid) = probability_fixture();
        let (d, h, w) = (6, 10, 10);
        let mut data = vec![0f32; 2 * d * h * w];
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let bg = x as f32 / (w - 1) as f32;
                    data[(z * h + y) * w + x] = bg;
                    data[((d + z) * h + y) * w + x] = 1.0 - bg;
                }
            }
        }
        let probs = Tensor {
            shape: vec![1, 2, d, h, w],
            data,
        };
        let mut mask = Array3::<u8>::zeros((20, 40, 40));
        for (z, y, x) in [
            (9, 19, 12),
            (9, 19, 19),
            (10, 20, 27),
            (3, 5, 0),
            (19, 39, 39),
        ] {
            mask[[z, y, x]] = 2;
        }
        let p = calcium_prob_at_labels(&probs, &grid, mask.view()).expect("shapes match");
        assert_eq!(p.len(), 5, "one value per labelled voxel, none elsewhere");
        for ([z, y, x], v) in p {
            let f = grid.from_native(2, x as f64).clamp(0.0, (w - 1) as f64);
            let expect = 1.0 - f / (w - 1) as f64;
            assert!(
                (f64::from(v) - expect).abs() < 1e-5,
                "at {z},{y},{x}: {v} vs {expect}"
            );
        }
        let bad = Tensor {
            shape: vec![1, 2, 2, 2, 2],
            data: vec![0.0; 16],
        };
        assert!(calcium_prob_at_labels(&bad, &grid, mask.view()).is_err());
    }

    #[test]
    fn calcium_probability_leaves_out_the_non_coronary_class() {
        // Six classes, constant over the crop: background 0.2, LM 0.1, LAD 0.3, LCX 0.05,
        // RCA 0.05, non-coronary 0.3 — coronary calcium is 0.5, not 1 − background = 0.8.
        let (vol, grid) = probability_fixture();
        // Each class's probability constant over the 6×10×10 crop.
        let constant = |class_p: [f32; 6]| Tensor {
            shape: vec![1, 6, 6, 10, 10],
            data: class_p
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, 6 * 10 * 10))
                .collect(),
        };
        let probs = constant([0.2, 0.1, 0.3, 0.05, 0.05, 0.3]);
        let mut mask = Array3::<u8>::zeros((20, 40, 40));
        mask[[9, 19, 19]] = 2;
        mask[[10, 22, 17]] = 1;
        let p = calcium_prob_at_labels(&probs, &grid, mask.view()).expect("shapes match");
        assert_eq!(p.len(), 2);
        for v in p.values() {
            assert!(
                (v - 0.5).abs() < 1e-6,
                "coronary probability {v}, expected 0.5"
            );
        }
        // The native mask itself still names class 5 where it wins; `Segmenter::segment`
        // maps it to background.
        let probs = constant([0.1, 0.1, 0.1, 0.1, 0.1, 0.5]);
        let m = fine_to_native_mask(&probs, &grid, &vol).expect("shapes match");
        assert_eq!(m[[9, 19, 19]], 5);
    }

    #[test]
    fn heart_box_finds_the_largest_component_in_patient_space() {
        let hu = Array3::zeros((50, 100, 100));
        let vol = volume(hu, [2.0, 1.0, 1.0], [-50.0, -60.0, 300.0]);
        let s = spec([4.0, 4.0, 4.0], [16, 24, 24], 1);
        let grid = ModelGrid::centred(&vol, &s);
        let (d, h, w) = (16, 24, 24);
        let mut data = vec![1f32; 2 * d * h * w];
        let heart = |z: usize, y: usize, x: usize| {
            (4..=11).contains(&z) && (5..=14).contains(&y) && (10..=19).contains(&x)
        };
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let i = (z * h + y) * w + x;
                    let small = z == 14 && y == 20 && x == 2; // a stray voxel
                    let p = if heart(z, y, x) || small { 0.9 } else { 0.1 };
                    data[d * h * w + i] = p;
                    data[i] = 1.0 - p;
                }
            }
        }
        let prob = Tensor {
            shape: vec![1, 2, d, h, w],
            data,
        };
        let hb = heart_box(&prob, &grid, &vol)
            .expect("shape ok")
            .expect("found");
        let want = vol.geometry.index_to_patient(
            grid.to_native(0, 7.5),
            grid.to_native(1, 9.5),
            grid.to_native(2, 14.5),
        );
        for (got, want) in hb.centre_mm.iter().zip(want) {
            assert!((got - want).abs() < 1e-9);
        }
        assert_eq!(hb.extent_mm, [32.0, 40.0, 40.0]);
        assert!((hb.volume_ml - 8.0 * 10.0 * 10.0 * 64.0 / 1000.0).abs() < 1e-9);
        // Nothing above 0.5 → not found.
        let none = Tensor {
            shape: vec![1, 2, d, h, w],
            data: vec![0.5; 2 * d * h * w],
        };
        assert_eq!(heart_box(&none, &grid, &vol).expect("shape ok"), None);
    }
}
