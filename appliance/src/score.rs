//! Stage "score": Agatston, volume, risk category and CAC-DRS, exactly as
//! `docs/CONTRACT.md` defines them. A pure function over plain arrays: the phantom's
//! `truth.json` and the pipeline's `result.json` both come from [`score`].

use ndarray::{ArrayView3, Axis};
use serde::{Deserialize, Serialize};

/// Candidate threshold (HU) of the Agatston method.
pub const HU_THRESHOLD: i16 = 130;
/// Smallest lesion kept (mm²).
pub const MIN_LESION_AREA_MM2: f64 = 1.0;

/// The coronary arteries cacd scores, in the order every table uses. The numeric value is the
/// label the segmentation network and the phantom's ground truth use (0 = background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Vessel {
    LM = 1,
    LAD = 2,
    LCX = 3,
    RCA = 4,
}

impl Vessel {
    pub const ALL: [Vessel; 4] = [Vessel::LM, Vessel::LAD, Vessel::LCX, Vessel::RCA];

    pub fn from_label(label: u8) -> Option<Vessel> {
        match label {
            1 => Some(Vessel::LM),
            2 => Some(Vessel::LAD),
            3 => Some(Vessel::LCX),
            4 => Some(Vessel::RCA),
            _ => None,
        }
    }

    pub fn label(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Vessel::LM => "LM",
            Vessel::LAD => "LAD",
            Vessel::LCX => "LCX",
            Vessel::RCA => "RCA",
        }
    }
}

/// One 8-connected 2-D component of candidate pixels on one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    pub vessel: Vessel,
    /// Slice index on the native grid (sorted along the normal, 0-based).
    pub slice: usize,
    pub area_mm2: f64,
    pub peak_hu: i16,
    /// This lesion's contribution to the total: area × density weight × spacing / 3.
    pub agatston: f64,
    /// Mean probability of coronary calcium the segmenter gave the lesion's pixels (0–1);
    /// `None` where no network was involved (the phantom's ground truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Peak HU minus the median HU around the lesion (`refine::lesion_contrast`); `None` for
    /// the ground truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast_hu: Option<f64>,
    /// Pixels `(y, x)` of the lesion; used by the encoders, not serialised in result.json.
    #[serde(skip)]
    pub pixels: Vec<(u32, u32)>,
}

/// Per-vessel scores in the fixed LM, LAD, LCX, RCA order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct PerVessel {
    pub LM: f64,
    pub LAD: f64,
    pub LCX: f64,
    pub RCA: f64,
}

impl PerVessel {
    pub fn get(&self, v: Vessel) -> f64 {
        match v {
            Vessel::LM => self.LM,
            Vessel::LAD => self.LAD,
            Vessel::LCX => self.LCX,
            Vessel::RCA => self.RCA,
        }
    }

    fn add(&mut self, v: Vessel, x: f64) {
        match v {
            Vessel::LM => self.LM += x,
            Vessel::LAD => self.LAD += x,
            Vessel::LCX => self.LCX += x,
            Vessel::RCA => self.RCA += x,
        }
    }
}

/// Everything the convention derives from one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub agatston_total: f64,
    pub volume_mm3: f64,
    pub per_vessel: PerVessel,
    /// Calcium volume per vessel (mm³).
    pub per_vessel_volume_mm3: PerVessel,
    pub lesions: Vec<Lesion>,
    pub risk_category: String,
    pub cac_drs: String,
}

/// Density weight of a lesion's peak HU.
pub fn density_weight(peak_hu: i16) -> f64 {
    match peak_hu {
        i16::MIN..=129 => 0.0,
        130..=199 => 1.0,
        200..=299 => 2.0,
        300..=399 => 3.0,
        _ => 4.0,
    }
}

/// Risk category of a total Agatston score: "0", "1-10", "11-100", "101-400", ">400".
/// Fractional totals fall in the band whose upper bound they do not exceed.
pub fn risk_category(total: f64) -> &'static str {
    if total <= 0.0 {
        "0"
    } else if total <= 10.0 {
        "1-10"
    } else if total <= 100.0 {
        "11-100"
    } else if total <= 400.0 {
        "101-400"
    } else {
        ">400"
    }
}

/// CAC-DRS "A<k>/N<n>": A0 (0), A1 (< 100), A2 (100–299), A3 (≥ 300); N counts vessels with
/// a score above zero.
pub fn cac_drs(total: f64, per_vessel: &PerVessel) -> String {
    let a = if total <= 0.0 {
        0
    } else if total < 100.0 {
        1
    } else if total < 300.0 {
        2
    } else {
        3
    };
    let n = Vessel::ALL
        .iter()
        .filter(|v| per_vessel.get(**v) > 0.0)
        .count();
    format!("A{a}/N{n}")
}

/// Scores a series.
///
/// * `hu` — HU on the native grid `[z, y, x]`.
/// * `mask` — the coronary calcium mask on the same grid: 0 outside, else a [`Vessel`] label.
/// * `spacing` — `[z, y, x]` mm, `z` from slice positions.
///
/// A lesion whose pixels carry several vessel labels goes to the most frequent one (ties to
/// the first in LM, LAD, LCX, RCA order).
///
/// # Panics
/// If `mask` and `hu` differ in shape (a programming error, never input data).
pub fn score(hu: ArrayView3<i16>, mask: ArrayView3<u8>, spacing: [f64; 3]) -> Scores {
    assert_eq!(hu.dim(), mask.dim(), "score: mask and HU grids differ");
    let pixel_area = spacing[1] * spacing[2];
    let slice_factor = spacing[0] / 3.0;
    let (_, rows, cols) = hu.dim();

    let mut lesions = Vec::new();
    let mut per_vessel = PerVessel::default();
    let mut per_vessel_volume = PerVessel::default();
    let mut visited = vec![false; rows * cols];
    let mut stack: Vec<(usize, usize)> = Vec::new();

    for (z, (hu_s, mask_s)) in hu
        .axis_iter(Axis(0))
        .zip(mask.axis_iter(Axis(0)))
        .enumerate()
    {
        visited.iter_mut().for_each(|v| *v = false);
        let is_candidate = |y: usize, x: usize| hu_s[[y, x]] >= HU_THRESHOLD && mask_s[[y, x]] != 0;
        for y0 in 0..rows {
            for x0 in 0..cols {
                if visited[y0 * cols + x0] || !is_candidate(y0, x0) {
                    continue;
                }
                // Flood fill one 8-connected component.
                let mut pixels = Vec::new();
                let mut votes = [0usize; 5];
                let mut peak = i16::MIN;
                visited[y0 * cols + x0] = true;
                stack.push((y0, x0));
                while let Some((y, x)) = stack.pop() {
                    pixels.push((y as u32, x as u32));
                    votes[mask_s[[y, x]].min(4) as usize] += 1;
                    peak = peak.max(hu_s[[y, x]]);
                    for dy in -1i64..=1 {
                        for dx in -1i64..=1 {
                            let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                            if ny < 0 || nx < 0 || ny >= rows as i64 || nx >= cols as i64 {
                                continue;
                            }
                            let (ny, nx) = (ny as usize, nx as usize);
                            if !visited[ny * cols + nx] && is_candidate(ny, nx) {
                                visited[ny * cols + nx] = true;
                                stack.push((ny, nx));
                            }
                        }
                    }
                }
                let area = pixels.len() as f64 * pixel_area;
                if area < MIN_LESION_AREA_MM2 {
                    continue;
                }
                // Most frequent vessel label; labels outside 1..=4 count for nobody.
                let mut best = Vessel::LM;
                let mut best_votes = 0;
                for v in Vessel::ALL {
                    if votes[v.label() as usize] > best_votes {
                        best = v;
                        best_votes = votes[v.label() as usize];
                    }
                }
                let agatston = area * density_weight(peak) * slice_factor;
                per_vessel.add(best, agatston);
                per_vessel_volume.add(best, pixels.len() as f64 * pixel_area * spacing[0]);
                pixels.sort_unstable();
                lesions.push(Lesion {
                    vessel: best,
                    slice: z,
                    area_mm2: area,
                    peak_hu: peak,
                    agatston,
                    confidence: None,
                    contrast_hu: None,
                    pixels,
                });
            }
        }
    }

    // An empty float sum is -0.0 in Rust; a calcium-free study scores 0, never "-0.0".
    let total: f64 = lesions.iter().map(|l| l.agatston).sum::<f64>() + 0.0;
    let volume: f64 = Vessel::ALL
        .iter()
        .map(|v| per_vessel_volume.get(*v))
        .sum::<f64>()
        + 0.0;
    Scores {
        agatston_total: total,
        volume_mm3: volume,
        per_vessel,
        per_vessel_volume_mm3: per_vessel_volume,
        risk_category: risk_category(total).to_string(),
        cac_drs: cac_drs(total, &per_vessel),
        lesions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn grid(z: usize) -> (Array3<i16>, Array3<u8>) {
        (
            Array3::from_elem((z, 20, 20), 40),
            Array3::zeros((z, 20, 20)),
        )
    }

    #[test]
    fn empty_mask_scores_zero() {
        let (mut hu, mask) = grid(3);
        hu.fill(900);
        let s = score(hu.view(), mask.view(), [3.0, 0.5, 0.5]);
        assert_eq!(s.agatston_total, 0.0);
        assert_eq!(s.risk_category, "0");
        assert_eq!(s.cac_drs, "A0/N0");
        assert!(s.lesions.is_empty());
    }

    #[test]
    fn one_lesion_by_hand() {
        // 3×3 block of 350 HU with one 450 HU pixel, 0.5 mm pixels, 3 mm slices:
        // area 9 × 0.25 = 2.25 mm², weight 4, factor 1 → 9.0.
        let (mut hu, mut mask) = grid(2);
        for y in 5..8 {
            for x in 5..8 {
                hu[[1, y, x]] = 350;
                mask[[1, y, x]] = Vessel::LAD.label();
            }
        }
        hu[[1, 6, 6]] = 450;
        let s = score(hu.view(), mask.view(), [3.0, 0.5, 0.5]);
        assert_eq!(s.lesions.len(), 1);
        let l = &s.lesions[0];
        assert_eq!((l.vessel, l.slice, l.peak_hu), (Vessel::LAD, 1, 450));
        assert!((l.area_mm2 - 2.25).abs() < 1e-12);
        assert!((s.agatston_total - 9.0).abs() < 1e-12);
        assert!((s.per_vessel.LAD - 9.0).abs() < 1e-12);
        assert!((s.volume_mm3 - 9.0 * 0.25 * 3.0).abs() < 1e-12);
        assert_eq!(s.risk_category, "1-10");
        assert_eq!(s.cac_drs, "A1/N1");
    }

    #[test]
    fn slice_spacing_scales_total_and_small_lesions_drop() {
        let (mut hu, mut mask) = grid(1);
        // 2×2 block at 1.5 mm spacing: 4 × 0.25 = 1 mm² (kept, boundary inclusive).
        for (y, x) in [(2, 2), (2, 3), (3, 2), (3, 3)] {
            hu[[0, y, x]] = 250;
            mask[[0, y, x]] = Vessel::RCA.label();
        }
        // A lone pixel elsewhere: 0.25 mm² < 1 mm², dropped.
        hu[[0, 15, 15]] = 1000;
        mask[[0, 15, 15]] = Vessel::LM.label();
        let s = score(hu.view(), mask.view(), [1.5, 0.5, 0.5]);
        assert_eq!(s.lesions.len(), 1);
        assert!((s.agatston_total - 1.0 * 2.0 * 0.5).abs() < 1e-12);
    }

    #[test]
    fn below_threshold_and_unmasked_pixels_do_not_count() {
        let (mut hu, mut mask) = grid(1);
        for y in 0..5 {
            for x in 0..5 {
                hu[[0, y, x]] = 129;
                mask[[0, y, x]] = 2;
            }
        }
        for y in 10..15 {
            for x in 10..15 {
                hu[[0, y, x]] = 800; // bright but outside the mask: aorta, bone, noise
            }
        }
        let s = score(hu.view(), mask.view(), [3.0, 0.7, 0.7]);
        assert_eq!(s.agatston_total, 0.0);
    }

    #[test]
    fn diagonal_pixels_join_and_majority_vessel_wins() {
        let (mut hu, mut mask) = grid(1);
        for (i, (y, x)) in [(4, 4), (5, 5), (6, 6), (7, 7)].iter().enumerate() {
            hu[[0, *y, *x]] = 200;
            mask[[0, *y, *x]] = if i == 0 { 3 } else { 4 };
        }
        let s = score(hu.view(), mask.view(), [3.0, 1.0, 1.0]);
        assert_eq!(s.lesions.len(), 1);
        assert_eq!(s.lesions[0].vessel, Vessel::RCA);
        assert_eq!(s.lesions[0].area_mm2, 4.0);
    }

    #[test]
    fn categories_at_their_bounds() {
        assert_eq!(risk_category(0.0), "0");
        assert_eq!(risk_category(0.4), "1-10");
        assert_eq!(risk_category(10.0), "1-10");
        assert_eq!(risk_category(10.01), "11-100");
        assert_eq!(risk_category(100.0), "11-100");
        assert_eq!(risk_category(400.0), "101-400");
        assert_eq!(risk_category(400.5), ">400");
        let pv = PerVessel {
            LM: 1.0,
            LAD: 0.0,
            LCX: 2.0,
            RCA: 0.0,
        };
        assert_eq!(cac_drs(99.9, &pv), "A1/N2");
        assert_eq!(cac_drs(100.0, &pv), "A2/N2");
        assert_eq!(cac_drs(300.0, &pv), "A3/N2");
    }
}
