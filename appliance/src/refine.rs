//! Stage "refine": rules applied to the segmenter's mask before it is scored. Each drops
//! labels, never adds them, and each answers one way the networks were seen to err on
//! held-out phantoms (BENCHMARKS.md, "Scoring accuracy"):
//!
//! * [`drop_fragments`] — the edge of a large non-coronary calcification (aortic wall or
//!   valve, mitral annulus) labelled as a vessel where it touches the vessel's course;
//! * [`drop_faint_lesions`] — low-dose noise: a few pixels just over 130 HU inside a vessel's
//!   course (in its blood, ~40 HU), labelled as calcium. A lesion is kept only when its peak
//!   stands out from its surroundings by [`Rules::min_contrast_sigma`] times the study's
//!   noise ([`noise_sigma`]) — [`Rules::min_contrast_sigma_large`] for lesions of at least
//!   [`Rules::large_area_mm2`] — and the segmenter's mean probability over it reaches
//!   [`Rules::min_confidence`].
//!
//! The thresholds were calibrated on held-out phantoms (seeds 90001–90120, never the
//! benchmark's) and live in the model's manifest, so a retrained model carries its own.

use crate::score::{self, Lesion};
use crate::volume::Volume;
use cacd_models::ModelEntry;
use ndarray::{Array3, ArrayView2, ArrayView3, ArrayViewMut3, Axis};
use std::collections::HashSet;

/// The per-lesion thresholds of [`drop_faint_lesions`]; 0 turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rules {
    /// Least mean calcium probability over a lesion's pixels (0–1).
    pub min_confidence: f64,
    /// Least (peak − median of the surrounding ring) in units of the study's noise σ.
    pub min_contrast_sigma: f64,
    /// The same for lesions of at least [`Rules::large_area_mm2`] (0: no second tier).
    pub min_contrast_sigma_large: f64,
    /// Area (mm²) from which a lesion is held to `min_contrast_sigma_large`.
    pub large_area_mm2: f64,
}

impl Rules {
    /// The rules a calcium model's manifest entry asks for (absent fields: off).
    pub fn from_entry(e: &ModelEntry) -> Rules {
        Rules {
            min_confidence: e.min_lesion_confidence.unwrap_or(0.0),
            min_contrast_sigma: e.min_lesion_contrast_sigma.unwrap_or(0.0),
            min_contrast_sigma_large: e.min_lesion_contrast_sigma_large.unwrap_or(0.0),
            large_area_mm2: e.large_lesion_area_mm2.unwrap_or(0.0),
        }
    }

    /// The contrast threshold (σ) a lesion of `area_mm2` must reach. Why two tiers: noise that
    /// passes 130 HU comes in blobs of 2–4 pixels, while a faint true plaque covers more of
    /// its slice, so a larger lesion is believed at a lower contrast.
    pub fn contrast_sigma_for(&self, area_mm2: f64) -> f64 {
        if self.min_contrast_sigma_large > 0.0 && area_mm2 >= self.large_area_mm2 {
            self.min_contrast_sigma_large
        } else {
            self.min_contrast_sigma
        }
    }
}

/// Width (pixels) of the ring around a lesion whose median is its background.
pub const RING_PX: i64 = 3;
/// Side of the square tiles [`noise_sigma`] measures.
const TILE: usize = 8;
/// At most this many slices, evenly spread, are measured for the noise.
const NOISE_SLICES: usize = 64;

/// A labelled calcification must be mostly labelled. Per slice (Agatston lesions are 2-D), each
/// 8-connected region of pixels >= 130 HU that the segmenter labelled only in part — less than
/// [`MIN_LABELLED_FRACTION`] of its pixels — loses its labels. Why: where the networks err,
/// they label the edge of a large non-coronary calcification (aortic wall, aortic valve,
/// mitral annulus) that touches a vessel's course; a coronary plaque is labelled whole.
pub const MIN_LABELLED_FRACTION: f64 = 0.5;

pub fn drop_fragments(hu: ArrayView3<i16>, mut mask: ArrayViewMut3<u8>) {
    let (_, rows, cols) = hu.dim();
    let mut seen = vec![false; rows * cols];
    let mut stack = Vec::new();
    let mut region = Vec::new();
    for (hu_s, mut mask_s) in hu.axis_iter(Axis(0)).zip(mask.axis_iter_mut(Axis(0))) {
        seen.iter_mut().for_each(|v| *v = false);
        for y0 in 0..rows {
            for x0 in 0..cols {
                // Regions are entered only through a labelled bright pixel.
                if seen[y0 * cols + x0]
                    || mask_s[[y0, x0]] == 0
                    || hu_s[[y0, x0]] < crate::score::HU_THRESHOLD
                {
                    continue;
                }
                region.clear();
                seen[y0 * cols + x0] = true;
                stack.push((y0, x0));
                let mut labelled = 0usize;
                while let Some((y, x)) = stack.pop() {
                    region.push((y, x));
                    labelled += usize::from(mask_s[[y, x]] != 0);
                    for (dy, dx) in [
                        (-1i64, -1i64),
                        (-1, 0),
                        (-1, 1),
                        (0, -1),
                        (0, 1),
                        (1, -1),
                        (1, 0),
                        (1, 1),
                    ] {
                        let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                        if ny < 0 || nx < 0 || ny >= rows as i64 || nx >= cols as i64 {
                            continue;
                        }
                        let (ny, nx) = (ny as usize, nx as usize);
                        if !seen[ny * cols + nx] && hu_s[[ny, nx]] >= crate::score::HU_THRESHOLD {
                            seen[ny * cols + nx] = true;
                            stack.push((ny, nx));
                        }
                    }
                }
                if (labelled as f64) < MIN_LABELLED_FRACTION * region.len() as f64 {
                    for &(y, x) in &region {
                        mask_s[[y, x]] = 0;
                    }
                }
            }
        }
    }
}

/// Image noise σ (HU) of a study: the median standard deviation of 8×8-pixel tiles of soft
/// tissue (every pixel in −250…300 HU, tile mean in −20…100 HU). Soft-tissue tiles are mostly
/// flat (blood, myocardium, muscle, liver), so their spread is the noise; the median ignores
/// the tiles that straddle an edge. `None` when fewer than 16 such tiles exist.
pub fn noise_sigma(hu: ArrayView3<i16>) -> Option<f64> {
    let (nz, ny, nx) = hu.dim();
    let step = nz.div_ceil(NOISE_SLICES).max(1);
    let mut stds = Vec::new();
    for z in (0..nz).step_by(step) {
        for ty in 0..ny / TILE {
            'tile: for tx in 0..nx / TILE {
                let (mut sum, mut sq) = (0f64, 0f64);
                for y in ty * TILE..(ty + 1) * TILE {
                    for x in tx * TILE..(tx + 1) * TILE {
                        let v = f64::from(hu[[z, y, x]]);
                        if !(-250.0..=300.0).contains(&v) {
                            continue 'tile;
                        }
                        sum += v;
                        sq += v * v;
                    }
                }
                let n = (TILE * TILE) as f64;
                let mean = sum / n;
                if (-20.0..=100.0).contains(&mean) {
                    stds.push((sq / n - mean * mean).max(0.0).sqrt());
                }
            }
        }
    }
    if stds.len() < 16 {
        return None;
    }
    stds.sort_by(f64::total_cmp);
    Some(stds[stds.len() / 2])
}

/// A lesion's contrast: its peak HU minus the median HU of the ring of pixels within
/// [`RING_PX`] (Chebyshev distance) of it on its slice, the lesion itself excluded.
pub fn lesion_contrast(slice: ArrayView2<i16>, pixels: &[(u32, u32)], peak_hu: i16) -> f64 {
    let (ny, nx) = slice.dim();
    let own: HashSet<(u32, u32)> = pixels.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut ring = Vec::new();
    for &(y, x) in pixels {
        for dy in -RING_PX..=RING_PX {
            for dx in -RING_PX..=RING_PX {
                let (yy, xx) = (i64::from(y) + dy, i64::from(x) + dx);
                if yy < 0 || xx < 0 || yy >= ny as i64 || xx >= nx as i64 {
                    continue;
                }
                let p = (yy as u32, xx as u32);
                if !own.contains(&p) && seen.insert(p) {
                    ring.push(slice[[yy as usize, xx as usize]]);
                }
            }
        }
    }
    if ring.is_empty() {
        return f64::INFINITY;
    }
    ring.sort_unstable();
    f64::from(peak_hu) - f64::from(ring[ring.len() / 2])
}

/// Drops (unlabels) every lesion of `mask` that fails a rule: mean `confidence` below
/// `rules.min_confidence`, or contrast ([`lesion_contrast`]) below
/// [`Rules::contrast_sigma_for`] its area × noise (skipped when the noise is unknown). Returns
/// how many lesions were dropped.
pub fn drop_faint_lesions(
    hu: ArrayView3<i16>,
    spacing: [f64; 3],
    mask: &mut Array3<u8>,
    confidence: impl Fn(&Lesion) -> f64,
    noise: Option<f64>,
    rules: &Rules,
) -> usize {
    let contrast_rule = rules.min_contrast_sigma > 0.0 || rules.min_contrast_sigma_large > 0.0;
    if rules.min_confidence <= 0.0 && (!contrast_rule || noise.is_none()) {
        return 0;
    }
    let scores = score::score(hu, mask.view(), spacing);
    let mut dropped = 0;
    for lesion in &scores.lesions {
        let unsure = confidence(lesion) < rules.min_confidence;
        let faint = match noise {
            Some(sigma) if contrast_rule => {
                let slice = hu.index_axis(Axis(0), lesion.slice);
                lesion_contrast(slice, &lesion.pixels, lesion.peak_hu)
                    < rules.contrast_sigma_for(lesion.area_mm2) * sigma
            }
            _ => false,
        };
        if unsure || faint {
            dropped += 1;
            for &(y, x) in &lesion.pixels {
                mask[[lesion.slice, y as usize, x as usize]] = 0;
            }
        }
    }
    dropped
}

/// Drops every label of `mask` outside the heart's gate (its outline plus the margin, less the
/// spine's clearance): calcium there is never coronary. Returns the voxels dropped.
pub fn gate_to_heart(vol: &Volume, mask: &mut Array3<u8>, heart: &crate::heart::Heart) -> usize {
    let g = &vol.geometry;
    let mut dropped = 0;
    for ((z, y, x), l) in mask.indexed_iter_mut() {
        if *l != 0 && !heart.in_gate(g.index_to_patient(z as f64, y as f64, x as f64)) {
            *l = 0;
            dropped += 1;
        }
    }
    dropped
}

/// A calcification the segmenter labelled on most of its voxels gets one label throughout:
/// its voxels of 130 HU or more inside the heart's gate that are 26-connected across slices
/// form one calcification; when the vessel labels hold at least [`MIN_UNIFIED_SHARE`] of it,
/// every voxel takes the most frequent vessel (the remaining ones were its rim or a vessel
/// boundary the network drew through it). `mask` holds the raw argmax (vessels 1–4, the
/// non-coronary class above them, 0 background). Returns the voxels relabelled.
pub const MIN_UNIFIED_SHARE: f64 = 0.5;

pub fn unify_calcifications(
    vol: &Volume,
    mask: &mut Array3<u8>,
    heart: &crate::heart::Heart,
) -> usize {
    let (nz, ny, nx) = vol.dims();
    let g = &vol.geometry;
    let hu = &vol.hu;
    let is_candidate = |z: usize, y: usize, x: usize| {
        hu[[z, y, x]] >= score::HU_THRESHOLD
            && heart.in_gate(g.index_to_patient(z as f64, y as f64, x as f64))
    };
    // Only where labels are: components are entered through a labelled voxel.
    let mut seen: HashSet<(usize, usize, usize)> = HashSet::new();
    let mut relabelled = 0;
    let seeds: Vec<(usize, usize, usize)> = mask
        .indexed_iter()
        .filter(|(_, &l)| l != 0)
        .map(|(i, _)| i)
        .collect();
    let mut stack = Vec::new();
    let mut comp = Vec::new();
    for s in seeds {
        if seen.contains(&s) || !is_candidate(s.0, s.1, s.2) {
            continue;
        }
        comp.clear();
        seen.insert(s);
        stack.push(s);
        let mut votes = [0usize; 256];
        while let Some((z, y, x)) = stack.pop() {
            comp.push((z, y, x));
            votes[usize::from(mask[[z, y, x]])] += 1;
            for dz in -1i64..=1 {
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (qz, qy, qx) = (z as i64 + dz, y as i64 + dy, x as i64 + dx);
                        if qz < 0 || qy < 0 || qx < 0 {
                            continue;
                        }
                        let q = (qz as usize, qy as usize, qx as usize);
                        if q.0 >= nz || q.1 >= ny || q.2 >= nx || seen.contains(&q) {
                            continue;
                        }
                        if is_candidate(q.0, q.1, q.2) {
                            seen.insert(q);
                            stack.push(q);
                        }
                    }
                }
            }
        }
        let vessel_votes: usize = votes[1..=4].iter().sum();
        if (vessel_votes as f64) < MIN_UNIFIED_SHARE * comp.len() as f64 {
            continue;
        }
        let best = (1..=4u8)
            .max_by_key(|&v| votes[usize::from(v)])
            .unwrap_or(1);
        for &(z, y, x) in &comp {
            if mask[[z, y, x]] != best {
                mask[[z, y, x]] = best;
                relabelled += 1;
            }
        }
    }
    relabelled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calcification_labelled_only_at_its_edge_loses_its_labels() {
        let mut hu = Array3::<i16>::from_elem((2, 20, 20), -100);
        let mut mask = Array3::<u8>::zeros((2, 20, 20));
        // Slice 0: a 6×6 aortic-wall calcification, labelled RCA on a 2×2 corner only (4 of 36).
        hu.slice_mut(ndarray::s![0, 2..8, 2..8]).fill(600);
        mask.slice_mut(ndarray::s![0, 2..4, 2..4]).fill(4);
        // Slice 0: a plaque labelled whole (LAD), and one labelled on 6 of 9 pixels (kept).
        hu.slice_mut(ndarray::s![0, 12..15, 12..15]).fill(400);
        mask.slice_mut(ndarray::s![0, 12..15, 12..15]).fill(2);
        hu.slice_mut(ndarray::s![0, 16..19, 2..5]).fill(300);
        mask.slice_mut(ndarray::s![0, 16..18, 2..5]).fill(3);
        // Slice 1: the same big region labelled whole: kept (the rule is per slice).
        hu.slice_mut(ndarray::s![1, 2..8, 2..8]).fill(600);
        mask.slice_mut(ndarray::s![1, 2..8, 2..8]).fill(1);
        // A label on dark pixels is not a calcification and is left to the scorer.
        mask[[1, 15, 15]] = 2;
        let before = mask.clone();
        drop_fragments(hu.view(), mask.view_mut());
        assert_eq!(
            mask.slice(ndarray::s![0, 2..8, 2..8])
                .iter()
                .filter(|&&v| v != 0)
                .count(),
            0
        );
        assert_eq!(
            mask.slice(ndarray::s![0, 12..19, ..]),
            before.slice(ndarray::s![0, 12..19, ..])
        );
        assert_eq!(
            mask.slice(ndarray::s![1, .., ..]),
            before.slice(ndarray::s![1, .., ..])
        );
    }

    /// 40 HU soft tissue with reproducible noise of σ ≈ `sigma` (sum of 12 uniforms).
    fn noisy(dims: (usize, usize, usize), sigma: f64, seed: u64) -> Array3<i16> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array3::from_shape_fn(dims, |_| {
            let g: f64 = (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0;
            (40.0 + sigma * g).round() as i16
        })
    }

    #[test]
    fn noise_is_measured_on_soft_tissue() {
        for sigma in [15.0, 30.0, 45.0] {
            let mut hu = noisy((4, 128, 128), sigma, sigma as u64);
            // Air and bone must not count: a third of each slice is lung, a strip is bone.
            hu.slice_mut(ndarray::s![.., .., 0..40]).fill(-850);
            hu.slice_mut(ndarray::s![.., 60..70, ..]).fill(700);
            let est = noise_sigma(hu.view()).expect("soft tissue present");
            assert!(
                (est / sigma - 1.0).abs() < 0.08,
                "σ {sigma}: estimated {est}"
            );
        }
        // No soft tissue at all: unknown, not zero.
        assert_eq!(
            noise_sigma(Array3::from_elem((2, 64, 64), -900).view()),
            None
        );
    }

    #[test]
    fn faint_and_unsure_lesions_are_dropped_plaques_kept() {
        let spacing = [3.0, 0.7, 0.7];
        let mut hu = Array3::<i16>::from_elem((1, 40, 40), 40);
        let mut mask = Array3::<u8>::zeros((1, 40, 40));
        // A noise blob in blood: 3 pixels of 170 HU in 40 HU (contrast 130).
        for x in 5..8 {
            hu[[0, 5, x]] = 170;
            mask[[0, 5, x]] = 4;
        }
        // A plaque in fat: 3×3 of 400 HU in −100 HU (contrast 500).
        hu.slice_mut(ndarray::s![0, 20..30, 20..30]).fill(-100);
        hu.slice_mut(ndarray::s![0, 24..27, 24..27]).fill(400);
        mask.slice_mut(ndarray::s![0, 24..27, 24..27]).fill(2);
        // A bright lesion the segmenter was unsure of.
        hu.slice_mut(ndarray::s![0, 32..35, 5..8]).fill(600);
        mask.slice_mut(ndarray::s![0, 32..35, 5..8]).fill(1);
        let conf = |l: &Lesion| {
            if l.vessel == score::Vessel::LM {
                0.55
            } else {
                0.99
            }
        };
        let rules = Rules {
            min_confidence: 0.7,
            min_contrast_sigma: 6.5,
            ..Rules::default()
        };

        // σ 30: the blob (130 < 195) and the unsure lesion go, the plaque stays.
        let mut m = mask.clone();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, conf, Some(30.0), &rules),
            2
        );
        let kept = score::score(hu.view(), m.view(), spacing);
        assert_eq!(kept.lesions.len(), 1);
        assert_eq!(kept.lesions[0].vessel, score::Vessel::LAD);

        // σ 15 (a quieter scan): 130 HU over the blood is 8.7 σ, the blob is calcium.
        let mut m = mask.clone();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, conf, Some(15.0), &rules),
            1
        );
        // Noise unknown: only the confidence rule applies. Rules off: nothing changes.
        let mut m = mask.clone();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, conf, None, &rules),
            1
        );
        let mut m = mask.clone();
        let off = Rules::default();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, conf, Some(30.0), &off),
            0
        );
        assert_eq!(m, mask);
    }

    #[test]
    fn a_large_faint_lesion_passes_the_lower_tier_a_small_one_does_not() {
        let spacing = [3.0, 0.7, 0.7];
        let mut hu = Array3::<i16>::from_elem((1, 40, 40), 40);
        let mut mask = Array3::<u8>::zeros((1, 40, 40));
        // Both 180 HU in 40 HU blood: contrast 140 = 4.7 σ at σ 30.
        // Small: 3 pixels (1.5 mm²). Large: 3×3 pixels (4.4 mm²).
        for x in 5..8 {
            hu[[0, 5, x]] = 180;
            mask[[0, 5, x]] = 4;
        }
        hu.slice_mut(ndarray::s![0, 20..23, 20..23]).fill(180);
        mask.slice_mut(ndarray::s![0, 20..23, 20..23]).fill(2);
        let sure = |_: &Lesion| 0.99;
        let one_tier = Rules {
            min_confidence: 0.0,
            min_contrast_sigma: 6.5,
            ..Rules::default()
        };
        let two_tiers = Rules {
            min_contrast_sigma_large: 4.5,
            large_area_mm2: 3.0,
            ..one_tier
        };
        assert_eq!(two_tiers.contrast_sigma_for(1.47), 6.5);
        assert_eq!(two_tiers.contrast_sigma_for(3.0), 4.5);
        assert_eq!(one_tier.contrast_sigma_for(10.0), 6.5);

        let mut m = mask.clone();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, sure, Some(30.0), &one_tier),
            2
        );
        let mut m = mask.clone();
        assert_eq!(
            drop_faint_lesions(hu.view(), spacing, &mut m, sure, Some(30.0), &two_tiers),
            1
        );
        let kept = score::score(hu.view(), m.view(), spacing);
        assert_eq!(kept.lesions.len(), 1);
        assert_eq!(kept.lesions[0].vessel, score::Vessel::LAD);
    }
}
