//! Coronary plaques and the burden calibration: plaques are drawn on the coronary centrelines,
//! rendered, scored on the ground-truth mask, and resized/added/removed deterministically
//! until the truth lands in the requested burden's category near a target drawn from the seed.

use super::anatomy::Patient;
use super::geom::*;
use super::render::{apply_plaques, CalcItem, Grid, Rendered};
use super::Burden;
use crate::score;
use ndarray::ArrayView3;
use rand::Rng;
use std::f64::consts::PI;

/// One plaque in centreline terms (so it can be resized in place).
#[derive(Debug, Clone)]
pub struct Plaque {
    /// Index into `Patient::coronaries`.
    pub vessel: usize,
    /// Arc length of the centre along the vessel (mm).
    pub s: f64,
    /// Length along the vessel (mm), 1–8.
    pub len: f64,
    /// Peak density (HU), 150–1200.
    pub peak: f64,
    /// Angle of the plaque round the vessel wall.
    pub ang: f64,
    /// How far the plaque sits off the centre, as a fraction of the radius.
    pub ecc: f64,
    /// Dense, confluent calcification along a stretch of the vessel (as heavy disease looks on
    /// real chest CT: LM and proximal segments calcified round most of their wall, bulging
    /// past it, up to 1600 HU, touching the aortic root at the ostia), drawn as a chain of
    /// ellipsoids every [`HEAVY_STEP_MM`] along the centreline.
    pub heavy: bool,
}

pub const MIN_LEN: f64 = 1.0;
pub const MAX_LEN: f64 = 8.0;
pub const HEAVY_MIN_LEN: f64 = 8.0;
pub const HEAVY_MAX_LEN: f64 = 32.0;
const HEAVY_STEP_MM: f64 = 2.0;

impl Plaque {
    fn len_range(&self) -> (f64, f64) {
        if self.heavy {
            (HEAVY_MIN_LEN, HEAVY_MAX_LEN)
        } else {
            (MIN_LEN, MAX_LEN)
        }
    }

    /// The ellipsoids that draw the plaque: one, or a chain along the vessel for a heavy one.
    pub fn items(&self, p: &Patient) -> Vec<CalcItem> {
        if !self.heavy {
            return vec![self.calc(p)];
        }
        let cor = &p.coronaries[self.vessel];
        let l = cor.path.length();
        let s0 = (self.s - self.len * 0.5).max(0.0);
        let s1 = (self.s + self.len * 0.5).min(l);
        let n = ((s1 - s0) / HEAVY_STEP_MM).ceil().max(1.0) as usize;
        (0..=n)
            .map(|i| {
                let s = s0 + (s1 - s0) * i as f64 / n as f64;
                let (c0, tan, r) = cor.path.at(s);
                // A slowly turning wall position and density along the chain (deterministic
                // in the plaque's own numbers, so a resize keeps its look).
                let phase = self.ang + 0.9 * (s * 0.31 + self.ecc * 7.0).sin();
                let rad = rotate(perpendicular(tan), tan, phase);
                let circ = cross(tan, rad);
                let wobble = 0.5 + 0.5 * (s * 0.53 + self.ang).sin();
                let half_thick = r * (0.6 + 0.5 * wobble) + 0.4;
                let half_width = r * (0.9 + 0.6 * wobble) + 0.5;
                let off = self.ecc * r * 0.5;
                CalcItem {
                    calc: Calc {
                        center: add(c0, scale(rad, off)),
                        axes: [tan, rad, circ],
                        radii: [HEAVY_STEP_MM * 0.9, half_thick, half_width],
                        peak_hu: self.peak * (0.75 + 0.25 * wobble),
                    },
                    label: cor.label,
                }
            })
            .collect()
    }

    pub fn calc(&self, p: &Patient) -> CalcItem {
        let cor = &p.coronaries[self.vessel];
        let (c0, tan, r) = cor.path.at(self.s);
        let rad = rotate(perpendicular(tan), tan, self.ang);
        let circ = cross(tan, rad);
        // Thickness (radial) and width (round the wall) grow with length but stay within the
        // vessel wall: centre offset + radial half-thickness ≤ r + 0.5.
        let half_thick = (self.len * 0.3).clamp(0.4, r * 0.9);
        let off = (self.ecc * r).min((r + 0.5 - half_thick).max(0.0));
        let half_width = (self.len * 0.4).clamp(0.5, r + 0.6);
        CalcItem {
            calc: Calc {
                center: add(c0, scale(rad, off)),
                axes: [tan, rad, circ],
                radii: [self.len * 0.5, half_thick, half_width],
                peak_hu: self.peak,
            },
            label: cor.label,
        }
    }
}

/// Target total and plaque count range for a burden level.
fn targets<R: Rng>(rng: &mut R, b: Burden) -> Option<(f64, usize)> {
    let lu = |rng: &mut R, lo: f64, hi: f64| (rng.gen_range(lo.ln()..hi.ln())).exp();
    match b {
        Burden::None => None,
        Burden::Low => Some((lu(rng, 3.0, 85.0), rng.gen_range(1..=3))),
        Burden::Moderate => Some((lu(rng, 140.0, 360.0), rng.gen_range(3..=7))),
        Burden::High => Some((lu(rng, 480.0, 3000.0), rng.gen_range(6..=14))),
    }
}

fn in_category(b: Burden, total: f64) -> bool {
    match b {
        Burden::None => total == 0.0,
        Burden::Low => total > 0.0 && total <= 100.0,
        Burden::Moderate => total > 100.0 && total <= 400.0,
        Burden::High => total > 400.0,
    }
}

/// Draws a new plaque on a vessel point inside `[zlo, zhi]` away from other plaques and
/// distractors. `None` when no place is found.
fn draw_plaque<R: Rng>(
    rng: &mut R,
    p: &Patient,
    existing: &[Plaque],
    zlo: f64,
    zhi: f64,
    len: f64,
) -> Option<Plaque> {
    // LAD most often, then RCA, LCX, LM.
    let weights = [0.12, 0.4, 0.2, 0.28];
    for _ in 0..80 {
        let mut u: f64 = rng.gen();
        let mut vessel = 0;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                vessel = i;
                break;
            }
            u -= w;
            vessel = i;
        }
        let cor = &p.coronaries[vessel];
        let l = cor.path.length();
        // Proximal segments carry most calcium.
        let s = l * (0.03 + 0.8 * rng.gen::<f64>().powf(1.6));
        let (c, _, _) = cor.path.at(s);
        if c[2] < zlo + len * 0.5 + 1.0 || c[2] > zhi - len * 0.5 - 1.0 {
            continue;
        }
        let clash = existing.iter().any(|q| {
            let (qc, _, _) = p.coronaries[q.vessel].path.at(q.s);
            norm(sub(qc, c)) < (q.len + len) * 0.5 + 1.5
        }) || p.distractors.iter().any(|d| {
            let r = d.calc.radii.iter().cloned().fold(0.0, f64::max);
            norm(sub(d.calc.center, c)) < r + len * 0.5 + 3.0
        });
        if clash {
            continue;
        }
        return Some(Plaque {
            vessel,
            s,
            len,
            peak: rng.gen_range(150.0..1200.0),
            ang: rng.gen_range(0.0..2.0 * PI),
            ecc: rng.gen_range(0.0..0.6),
            heavy: false,
        });
    }
    None
}

/// Draws a heavy plaque on the proximal part of a vessel (LM and the first third of LAD, LCX
/// and RCA), from the ostium for about a third of them. `None` when none fits in `[zlo, zhi]`.
fn draw_heavy<R: Rng>(
    rng: &mut R,
    p: &Patient,
    existing: &[Plaque],
    zlo: f64,
    zhi: f64,
) -> Option<Plaque> {
    // LM, LAD, LCX, RCA.
    let weights = [0.3, 0.3, 0.2, 0.2];
    for _ in 0..60 {
        let mut u: f64 = rng.gen();
        let mut vessel = 0;
        for (i, w) in weights.iter().enumerate() {
            vessel = i;
            if u < *w {
                break;
            }
            u -= w;
        }
        let cor = &p.coronaries[vessel];
        let l = cor.path.length();
        let len = rng
            .gen_range(HEAVY_MIN_LEN..HEAVY_MAX_LEN * 0.8)
            .min(if vessel == 0 { l } else { l * 0.4 });
        let ostial = vessel == 0 || rng.gen_bool(0.3);
        let s = if ostial {
            len * 0.5
        } else {
            len * 0.5 + rng.gen_range(0.0..(l * 0.35).max(1.0))
        };
        let (c, _, _) = cor.path.at(s);
        if c[2] < zlo + 2.0 || c[2] > zhi - 2.0 {
            continue;
        }
        let clash = existing
            .iter()
            .any(|q| q.vessel == vessel && (q.s - s).abs() < (q.len + len) * 0.5 + 1.0);
        if clash {
            continue;
        }
        return Some(Plaque {
            vessel,
            s,
            len,
            peak: rng.gen_range(450.0..1600.0),
            ang: rng.gen_range(0.0..2.0 * PI),
            ecc: rng.gen_range(0.0..0.5),
            heavy: true,
        });
    }
    None
}

/// Agatston total over the slices that hold labels (labels are zero elsewhere, so this equals
/// the total over the whole volume, at a fraction of the cost).
fn slab_total(
    g: &Grid,
    hu: &[i16],
    labels: &[u8],
    touched: &[usize],
    dims: (usize, usize, usize),
) -> f64 {
    let n = g.nx * g.ny;
    let (Some(k0), Some(k1)) = (
        touched.iter().map(|i| i / n).min(),
        touched.iter().map(|i| i / n).max(),
    ) else {
        return 0.0;
    };
    let slab = (k1 - k0 + 1, dims.1, dims.2);
    match (
        ArrayView3::from_shape(slab, &hu[k0 * n..(k1 + 1) * n]),
        ArrayView3::from_shape(slab, &labels[k0 * n..(k1 + 1) * n]),
    ) {
        (Ok(h), Ok(l)) => score::score(h, l, g.spacing).agatston_total,
        _ => 0.0,
    }
}

/// Result of the calibration.
pub struct Calibrated {
    pub plaques: Vec<Plaque>,
    pub target: Option<f64>,
    pub iterations: usize,
}

/// Places plaques for `burden` and renders them into `hu`/`labels`, adjusting until the truth
/// lands in the burden's category (near a target drawn from `rng`).
#[allow(clippy::too_many_arguments)]
pub fn calibrate<R: Rng>(
    rng: &mut R,
    burden: Burden,
    p: &Patient,
    g: &Grid,
    rendered: &Rendered,
    hu: &mut [i16],
    labels: &mut [u8],
    hu_max: i16,
) -> Calibrated {
    let Some((target, n0)) = targets(rng, burden) else {
        return Calibrated {
            plaques: Vec::new(),
            target: None,
            iterations: 0,
        };
    };
    let zlo = g.z(0) - g.spacing[0] * 0.5;
    let zhi = g.z(g.nz - 1) + g.spacing[0] * 0.5;
    let mut plaques: Vec<Plaque> = Vec::new();
    // Heavy disease: dense, confluent proximal calcification in most high-burden hearts and
    // some moderate ones.
    let heavy = match burden {
        Burden::High => rng
            .gen_range(0..=3usize)
            .max(usize::from(rng.gen_bool(0.8))),
        Burden::Moderate => usize::from(rng.gen_bool(0.3)),
        _ => 0,
    };
    for _ in 0..heavy {
        if let Some(pl) = draw_heavy(rng, p, &plaques, zlo, zhi) {
            plaques.push(pl);
        }
    }
    // Initial sizes from the target: per-plaque share of the score ≈ 4·len²·0.35·len/3.
    let share = target / n0 as f64;
    let len0 = (share / 0.5).cbrt().clamp(MIN_LEN, MAX_LEN);
    for _ in 0..n0.saturating_sub(plaques.len()) {
        let len = (len0 * rng.gen_range(0.7..1.3)).clamp(MIN_LEN, MAX_LEN);
        if let Some(pl) = draw_plaque(rng, p, &plaques, zlo, zhi, len) {
            plaques.push(pl);
        }
    }
    let mut touched = Vec::new();
    let dims = (g.nz, g.ny, g.nx);
    let mut iterations = 0;
    let mut best: Option<(f64, Vec<Plaque>)> = None;
    for it in 0..24 {
        iterations = it + 1;
        let items: Vec<CalcItem> = plaques.iter().flat_map(|q| q.items(p)).collect();
        apply_plaques(&items, g, rendered, hu, labels, &mut touched, hu_max);
        let total = slab_total(g, hu, labels, &touched, dims);
        let ok = in_category(burden, total);
        let ratio = target / total.max(0.5);
        if ok {
            let err = ratio.ln().abs();
            if best.as_ref().is_none_or(|(e, _)| err < *e) {
                best = Some((err, plaques.clone()));
            }
            if err < 0.4 || it >= 8 {
                break;
            }
        }
        // Adjust: resize all plaques towards the target; add or remove when sizes saturate.
        let f = ratio.powf(0.4).clamp(0.5, 2.0);
        let mut saturated = true;
        for q in plaques.iter_mut() {
            let (lo, hi) = q.len_range();
            // Heavy plaques keep their length longer: the small ones take most of the change.
            let fq = if q.heavy { f.sqrt() } else { f };
            let nl = (q.len * fq).clamp(lo, hi);
            if (nl - q.len).abs() > 1e-6 {
                saturated = false;
            }
            q.len = nl;
            if total <= 0.0 {
                // Invisible plaques: make them denser too.
                q.peak = (q.peak * 1.3).min(1200.0);
            }
        }
        if saturated || plaques.is_empty() {
            if ratio > 1.0 {
                let len = if plaques.is_empty() {
                    len0
                } else {
                    MAX_LEN * 0.7
                };
                if let Some(pl) = draw_plaque(rng, p, &plaques, zlo, zhi, len) {
                    plaques.push(pl);
                }
            } else if plaques.len() > 1 {
                plaques.pop();
            } else if let Some(q) = plaques.first_mut().filter(|q| q.heavy) {
                // One heavy plaque too much for the category: a plain one instead.
                q.heavy = false;
                q.len = q.len.min(MAX_LEN);
            }
        }
    }
    // Make sure the rendered state is the best in-category set seen (if the last was not).
    if let Some((_, bp)) = best {
        let items: Vec<CalcItem> = bp.iter().flat_map(|q| q.items(p)).collect();
        apply_plaques(&items, g, rendered, hu, labels, &mut touched, hu_max);
        plaques = bp;
    }
    Calibrated {
        plaques,
        target: Some(target),
        iterations,
    }
}
