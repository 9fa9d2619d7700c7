//! Voxelisation of a [`Patient`] on an axial grid, calcifications with partial volume, and
//! low-dose noise.
//!
//! Big smooth anatomy is sampled once per voxel (at its centre; tubes get a soft edge from
//! their signed distance). Calcifications — coronary plaques and distractors — are
//! supersampled inside their bounding boxes only, so a voxel holds the average over its
//! footprint (slab thickness = slice spacing) and thick slices blur small plaques as
//! scanners do. Noise is Gaussian, blurred by a small separable kernel (slightly correlated
//! like filtered back-projection noise), drawn per slice from its own ChaCha stream so the
//! result does not depend on thread scheduling.

use super::anatomy::{Heart, Patient};
use super::geom::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::collections::HashMap;

/// HU of blood and myocardium without contrast.
const BLOOD_HU: f32 = 38.0;
const MYO_HU: f32 = 47.0;
const AIR_HU: f32 = -1000.0;
/// Coronary voxels whose noise-free value is remembered for plaque re-rendering: within this
/// distance (mm) of a coronary lumen surface. Covers a plaque plus half a thick voxel.
const RECORD_MM: f64 = 5.0;
/// Carve of epicardial fat round every coronary lumen (mm beyond the lumen).
const CARVE_MM: f64 = 2.5;

/// The voxel grid: centres at `origin + (x dx, y dy, z dz)`, axial orientation.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub nz: usize,
    pub ny: usize,
    pub nx: usize,
    /// `[dz, dy, dx]` mm.
    pub spacing: [f64; 3],
    /// Centre of voxel `[0, 0, 0]` (x, y, z).
    pub origin: V3,
}

impl Grid {
    pub fn x(&self, ix: usize) -> f64 {
        self.origin[0] + ix as f64 * self.spacing[2]
    }
    pub fn y(&self, iy: usize) -> f64 {
        self.origin[1] + iy as f64 * self.spacing[1]
    }
    pub fn z(&self, iz: usize) -> f64 {
        self.origin[2] + iz as f64 * self.spacing[0]
    }
}

/// Noise model of one phantom.
#[derive(Debug, Clone, Copy)]
pub struct NoiseModel {
    /// Standard deviation of the final noise (HU) in the body.
    pub sigma: f64,
    /// Side weight of the 3-tap blur `[c, 1, c]` (0 = white noise).
    pub corr: f64,
    pub seed: u64,
}

/// One calcification to draw, with the ground-truth label it carries (0 = distractor).
#[derive(Debug, Clone)]
pub struct CalcItem {
    pub calc: Calc,
    pub label: u8,
}

/// Output of the anatomy pass.
pub struct Rendered {
    /// HU per slice, `nz` slices of `ny * nx`, row-major.
    pub hu: Vec<i16>,
    pub heart: Vec<u8>,
    /// 1 where a distractor calcification (aortic wall or valve, mitral annulus, cartilage,
    /// lymph node) touches the voxel, else 0 — a training target, never part of the truth.
    pub distractor: Vec<u8>,
    /// Flat index → (noise-free value including distractors, noise) near the coronaries.
    pub record: HashMap<usize, (f32, f32)>,
}

struct TubeBufs {
    cor: Vec<f32>,
    cor_label: Vec<u8>,
    gv: Vec<f32>,
    aw: Vec<f32>,
    lv: Vec<f32>,
}

/// Distance buffers of every tube class for one slice (signed distance to the nearest tube
/// surface, mm; +inf where none is near).
fn rasterise_tubes(p: &Patient, g: &Grid, z: f64) -> TubeBufs {
    let n = g.nx * g.ny;
    let mut b = TubeBufs {
        cor: vec![f32::INFINITY; n],
        cor_label: vec![0; n],
        gv: vec![f32::INFINITY; n],
        aw: vec![f32::INFINITY; n],
        lv: vec![f32::INFINITY; n],
    };
    let px = g.spacing[2].max(g.spacing[1]);
    for seg in &p.tubes {
        let margin = match seg.class {
            TubeClass::Coronary => RECORD_MM,
            TubeClass::Airway => 2.0,
            _ => px,
        };
        let r = seg.rmax() + margin;
        let (za, zb) = (seg.a[2], seg.b[2]);
        if z < za.min(zb) - r || z > za.max(zb) + r {
            continue;
        }
        // Part of the segment within |dz| ≤ r of this plane.
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        let dzs = zb - za;
        if dzs.abs() > 1e-9 {
            let ta = (z - r - za) / dzs;
            let tb = (z + r - za) / dzs;
            t0 = ta.min(tb).max(0.0);
            t1 = ta.max(tb).min(1.0);
            if t0 > t1 {
                continue;
            }
        }
        let pa = lerp(seg.a, seg.b, t0);
        let pb = lerp(seg.a, seg.b, t1);
        let x0 = pa[0].min(pb[0]) - r;
        let x1 = pa[0].max(pb[0]) + r;
        let y0 = pa[1].min(pb[1]) - r;
        let y1 = pa[1].max(pb[1]) + r;
        let ix0 = ((x0 - g.origin[0]) / g.spacing[2]).floor().max(0.0) as usize;
        let ix1 =
            (((x1 - g.origin[0]) / g.spacing[2]).ceil().max(-1.0) as i64).min(g.nx as i64 - 1);
        let iy0 = ((y0 - g.origin[1]) / g.spacing[1]).floor().max(0.0) as usize;
        let iy1 =
            (((y1 - g.origin[1]) / g.spacing[1]).ceil().max(-1.0) as i64).min(g.ny as i64 - 1);
        if ix1 < 0 || iy1 < 0 {
            continue;
        }
        let buf = match seg.class {
            TubeClass::Coronary => &mut b.cor,
            TubeClass::GreatVessel => &mut b.gv,
            TubeClass::Airway => &mut b.aw,
            TubeClass::LungVessel => &mut b.lv,
        };
        for iy in iy0..=iy1 as usize {
            let y = g.y(iy);
            for ix in ix0..=ix1 as usize {
                let d = seg.signed_distance([g.x(ix), y, z]) as f32;
                let i = iy * g.nx + ix;
                if d < buf[i] {
                    buf[i] = d;
                    if seg.class == TubeClass::Coronary {
                        b.cor_label[i] = seg.label;
                    }
                }
            }
        }
    }
    b
}

/// Blend weight of a tube at signed distance `d` (soft edge one pixel wide).
fn edge(d: f32, px: f32) -> f32 {
    (0.5 - d / px).clamp(0.0, 1.0)
}

/// Per-slice constants.
struct SliceCtx<'a> {
    p: &'a Patient,
    z: f64,
    disc: bool,
    /// Position within the vertebral level (0 at the disc).
    level_pos: f64,
    sternum_hw: f64,
    med_w: f64,
    heart_box: [f64; 4],
    px: f32,
    /// Separable lung texture factors per column and row.
    tex_x: Vec<f32>,
    tex_y: Vec<f32>,
}

impl<'a> SliceCtx<'a> {
    fn new(p: &'a Patient, g: &Grid, z: f64) -> Self {
        let level_pos = (z - p.level_phase).rem_euclid(p.level_h);
        let sternum_hw = if z < p.sternum_zmin {
            0.0
        } else if z > p.manubrium_z {
            p.sternum_hw * 1.8
        } else {
            p.sternum_hw
        };
        let t = ((z - p.med_z_high) / 20.0).clamp(0.0, 1.0);
        let med_w = p.med_w_low + (p.med_w_high - p.med_w_low) * t;
        let e = p.heart.half_extent();
        let c = p.heart.c;
        let heart_box = if (z - c[2]).abs() <= e[2] {
            [c[0] - e[0], c[0] + e[0], c[1] - e[1], c[1] + e[1]]
        } else {
            [1.0, -1.0, 1.0, -1.0]
        };
        SliceCtx {
            p,
            z,
            disc: level_pos < p.disc_h,
            level_pos,
            sternum_hw,
            med_w,
            heart_box,
            px: g.spacing[2] as f32,
            tex_x: (0..g.nx)
                .map(|ix| (g.x(ix) * 0.09 + z * 0.05).sin() as f32)
                .collect(),
            tex_y: (0..g.ny)
                .map(|iy| (g.y(iy) * 0.11 - z * 0.07).cos() as f32)
                .collect(),
        }
    }

    /// Noise-free HU at `(x, y)`, whether the point is in the heart mask, and the noise
    /// scale factor there.
    fn value(&self, x: f64, y: f64, i: usize, t: &TubeBufs) -> (f32, bool, f32) {
        let p = self.p;
        let dx = x - p.body_c[0];
        let dy = y - p.body_c[1];
        let ay = if dy > 0.0 {
            p.body_ay_post
        } else {
            p.body_ay_ant
        };
        let r_body = (dx / p.body_ax).powi(2) + (dy / ay).powi(2);
        if r_body > 1.0 {
            return (self.outside(x, y), false, 0.7);
        }
        let nf = 1.0 + 0.15 * (1.0 - r_body as f32);
        // Subcutaneous fat, skin.
        let (fx, fy) = (p.body_ax - p.fat, ay - p.fat);
        let r_fat = (dx / fx).powi(2) + (dy / fy).powi(2);
        if r_fat > 1.0 {
            let skin = (p.body_ax - 1.5, ay - 1.5);
            if (dx / skin.0).powi(2) + (dy / skin.1).powi(2) > 1.0 {
                return (20.0, false, nf);
            }
            return (p.fat_hu as f32, false, nf);
        }
        if let Some(v) = self.spine(x, y) {
            return (v, false, nf);
        }
        let cdx = x - p.cav_c[0];
        let cdy = y - p.cav_c[1];
        let cay = if cdy > 0.0 {
            p.cav_ay_post
        } else {
            p.cav_ay_ant
        };
        let rho2 = (cdx / p.cav_ax).powi(2) + (cdy / cay).powi(2);
        if rho2 > 0.8 {
            if let Some(v) = self.rib(cdx, cdy, rho2) {
                return (v, false, nf);
            }
        }
        if let Some(v) = self.sternum(x, y) {
            return (v, false, nf);
        }
        if rho2 > 1.0 {
            return (p.muscle_hu as f32, false, nf);
        }
        // Thoracic cavity.
        let b = &self.heart_box;
        if x >= b[0] && x <= b[1] && y >= b[2] && y <= b[3] {
            if let Some((v, m)) = self.heart(&p.heart, [x, y, self.z], i, t) {
                return (v, m, nf);
            }
        }
        let z_d = dome(p.dome_r, x, y).max(dome(p.dome_l, x, y));
        let mut v = if self.z < z_d {
            if x < p.xm + 25.0 {
                p.liver_hu as f32
            } else {
                44.0
            }
        } else if (x - p.xm).abs() < self.med_w {
            // Mediastinal fat with a little soft tissue.
            (p.fat_hu + 25.0) as f32
        } else {
            // Lung, denser towards the back (dependent), with faint texture and vessels.
            let grad = (cdy / cay) as f32 * 60.0 * p.lung_gradient as f32;
            let tex = 12.0 * self.tex_x[i % self.tex_x.len()] * self.tex_y[i / self.tex_x.len()];
            let lung = p.lung_hu as f32 + grad + tex;
            let w = edge(t.lv[i], self.px);
            lung * (1.0 - w) + BLOOD_HU * w
        };
        let w = edge(t.gv[i], self.px);
        if w > 0.0 {
            v = v * (1.0 - w) + BLOOD_HU * w;
        }
        let a = t.aw[i];
        if a < 1.5 {
            v = if a < -1.5 { AIR_HU } else { 25.0 };
        }
        (v, false, nf)
    }

    fn outside(&self, x: f64, y: f64) -> f32 {
        let p = self.p;
        let dx = x - p.body_c[0];
        if dx.abs() < 230.0 {
            let top = p.table_y + 0.0012 * dx * dx;
            let d = y - top;
            if (0.0..2.5).contains(&d) || (28.0..30.5).contains(&d) {
                return p.table_hu as f32;
            }
            if (2.5..28.0).contains(&d) {
                return -940.0;
            }
        }
        AIR_HU
    }

    fn spine(&self, x: f64, y: f64) -> Option<f32> {
        let p = self.p;
        let dx = x - p.xm;
        if dx.abs() > 40.0 || y < p.vert_y - p.vert_r - 4.0 {
            return None;
        }
        let dy = y - p.vert_y;
        let r = (dx * dx + dy * dy).sqrt();
        let cort = p.cortical_hu as f32;
        let canc = p.cancellous_hu as f32
            + 40.0 * ((x * 0.7).sin() * (y * 0.6 + self.z * 0.5).cos()) as f32;
        if r < p.vert_r {
            if self.disc {
                return Some(85.0);
            }
            // Endplates are dense too.
            if r > p.vert_r - 1.6
                || self.level_pos < p.disc_h + 1.0
                || self.level_pos > p.level_h - 1.0
            {
                return Some(cort);
            }
            return Some(canc);
        }
        if r < p.vert_r + 3.0 {
            return Some(p.muscle_hu as f32);
        }
        // Posterior elements round the spinal canal.
        let cy = p.vert_y + p.vert_r + 8.0;
        let ddy = y - cy;
        let rc = (dx * dx + ddy * ddy).sqrt();
        if rc < 7.0 {
            return Some(12.0);
        }
        let upper = self.level_pos > p.disc_h + 0.2 * p.level_h;
        if rc < 12.5 && ddy > -6.0 && upper {
            return Some(if rc > 11.0 { cort * 0.8 } else { canc });
        }
        // Transverse processes and spinous process.
        if upper && ddy.abs() < 4.5 && (7.0..28.0).contains(&dx.abs()) {
            return Some(if ddy.abs() > 3.0 { cort * 0.7 } else { canc });
        }
        if upper && dx.abs() < 3.5 && (10.0..38.0).contains(&ddy) {
            return Some(if dx.abs() > 2.2 { cort * 0.7 } else { canc });
        }
        None
    }

    fn rib(&self, cdx: f64, cdy: f64, rho2: f64) -> Option<f32> {
        let p = self.p;
        let rho = rho2.sqrt();
        let dist = (cdx * cdx + cdy * cdy).sqrt();
        if dist < 1e-6 {
            return None;
        }
        let r_edge = dist / rho;
        let d_rad = dist - (r_edge + p.rib_rr + 0.5);
        if d_rad.abs() > p.rib_rr {
            return None;
        }
        let psi = cdx.abs().atan2(cdy); // 0 posterior … π anterior
        if psi < 0.2 {
            return None;
        }
        // Ribs fall steeply at the side and run almost level at the back and the front.
        let t = ((psi / std::f64::consts::PI - 0.12) / 0.6).clamp(0.0, 1.0);
        let drop = p.rib_drop * t * t * (3.0 - 2.0 * t);
        let kf = (p.rib_z0 - drop - self.z) / p.rib_spacing;
        let k = kf.round();
        if !(0.0..12.0).contains(&k) {
            return None;
        }
        let dz = self.z - (p.rib_z0 - k * p.rib_spacing - drop);
        let q = (d_rad / p.rib_rr).powi(2) + (dz / p.rib_rz).powi(2);
        if q > 1.0 {
            return None;
        }
        let pi = std::f64::consts::PI;
        let (bone_end, cart_end) = match k as i32 {
            0..=6 => (0.72 * pi, pi - 0.12),
            7..=9 => (0.66 * pi, 0.8 * pi),
            _ => (0.55 * pi, 0.55 * pi),
        };
        if psi > cart_end {
            return None;
        }
        if psi > bone_end {
            return Some(p.cartilage_hu as f32);
        }
        let shell = (1.0 - 1.4 / p.rib_rr).max(0.2);
        Some(if q > shell * shell {
            p.cortical_hu as f32 * 0.9
        } else {
            p.cancellous_hu as f32 * 0.9
        })
    }

    fn sternum(&self, x: f64, y: f64) -> Option<f32> {
        let p = self.p;
        if self.sternum_hw <= 0.0 {
            return None;
        }
        let q = ((x - p.xm) / self.sternum_hw).powi(2) + ((y - p.sternum_y) / p.sternum_ht).powi(2);
        if q > 1.0 {
            return None;
        }
        let shell = 1.0 - 1.5 / p.sternum_ht;
        Some(if q > shell * shell {
            p.cortical_hu as f32 * 0.85
        } else {
            p.cancellous_hu as f32
        })
    }

    /// Heart with epicardial/pericardial fat and the coronaries; `None` outside its fat.
    fn heart(&self, h: &Heart, q: V3, i: usize, t: &TubeBufs) -> Option<(f32, bool)> {
        let l = h.to_local(q);
        let r_p = h.rho2(l, 0.0);
        let inside = r_p <= 1.0;
        let cd = t.cor[i];
        if !inside && cd > 0.5 * self.px {
            // Pericardial fat pad: thickest over the apex and the front (sternocostal face),
            // thin or absent behind, where lung touches the pericardium.
            let pf = h.peri_fat;
            let g = h.taper(l[0]);
            let r_pf = ((l[0] - 0.35 * pf) / (h.a + 0.8 * pf)).powi(2)
                + ((l[1] - 0.3 * pf) / (g * h.b + 0.7 * pf)).powi(2)
                + ((l[2] + 0.3 * pf) / (g * h.cc + 0.4 * pf)).powi(2);
            if r_pf > 1.0 {
                return None;
            }
        }
        let fat = self.p.fat_hu as f32;
        let mut v = if !inside {
            fat
        } else {
            let r_m = h.rho2(l, h.epi);
            let groove = (l[0] - h.u_av).abs() < 5.0 && r_m > 0.8;
            if r_m > 1.0 || groove {
                // Epicardial fat (the thin pericardium itself is not resolved at low dose).
                fat
            } else {
                // Left-ventricular cavity: blood a little below the myocardium.
                let lv = ((l[0] - 0.15 * h.a) / (0.55 * h.a)).powi(2)
                    + ((l[1] + 0.05 * h.b) / (0.42 * h.b)).powi(2)
                    + ((l[2] - 0.35 * h.cc) / (0.4 * h.cc)).powi(2);
                if lv < 1.0 || l[0] < h.u_av {
                    BLOOD_HU
                } else {
                    MYO_HU
                }
            }
        };
        if (cd as f64) < CARVE_MM {
            v = fat;
        }
        let w = edge(cd, self.px);
        if w > 0.0 {
            v = v * (1.0 - w) + 40.0 * w;
        }
        Some((v, inside || cd <= 0.0))
    }
}

fn dome(d: [f64; 4], x: f64, y: f64) -> f64 {
    d[2] - d[3] * ((x - d[0]).powi(2) + ((y - d[1]) * 0.8).powi(2))
}

/// Supersampling counts for calcifications: ≈0.15 mm in-plane, ≈0.25 mm along z.
fn sub_counts(g: &Grid) -> (usize, usize, usize) {
    let sx = ((g.spacing[2] / 0.17).ceil() as usize).clamp(3, 6);
    let sy = ((g.spacing[1] / 0.17).ceil() as usize).clamp(3, 6);
    let sz = ((g.spacing[0] / 0.25).ceil() as usize).clamp(3, 14);
    (sz, sy, sx)
}

/// One voxel touched by calcifications: flat in-slice index, value sum over the samples that
/// hit calcium, hits, total samples, and the label with most hits (0 for distractors).
pub struct CalcHit {
    pub pix: usize,
    pub dens_sum: f64,
    pub hits: u32,
    pub samples: u32,
    pub label: u8,
}

/// Supersamples the calcifications that reach slice `k`. Overlapping ones take the densest
/// value per sample (no double counting).
pub fn calc_hits(items: &[&CalcItem], g: &Grid, k: usize) -> Vec<CalcHit> {
    let z = g.z(k);
    let dz = g.spacing[0];
    let mut boxes = Vec::new();
    for it in items {
        let e = it.calc.half_extent();
        let c = it.calc.center;
        if (c[2] - z).abs() > e[2] + dz * 0.5 {
            continue;
        }
        let ix0 = ((c[0] - e[0] - g.origin[0]) / g.spacing[2] - 0.5)
            .floor()
            .max(0.0) as usize;
        let ix1 = ((c[0] + e[0] - g.origin[0]) / g.spacing[2] + 0.5).ceil();
        let iy0 = ((c[1] - e[1] - g.origin[1]) / g.spacing[1] - 0.5)
            .floor()
            .max(0.0) as usize;
        let iy1 = ((c[1] + e[1] - g.origin[1]) / g.spacing[1] + 0.5).ceil();
        if ix1 < 0.0 || iy1 < 0.0 {
            continue;
        }
        let ix1 = (ix1 as usize).min(g.nx - 1);
        let iy1 = (iy1 as usize).min(g.ny - 1);
        if ix0 > ix1 || iy0 > iy1 {
            continue;
        }
        boxes.push((*it, ix0, ix1, iy0, iy1));
    }
    if boxes.is_empty() {
        return Vec::new();
    }
    let (sz, sy, sx) = sub_counts(g);
    let mut pixels: Vec<usize> = Vec::new();
    for (_, ix0, ix1, iy0, iy1) in &boxes {
        for iy in *iy0..=*iy1 {
            for ix in *ix0..=*ix1 {
                pixels.push(iy * g.nx + ix);
            }
        }
    }
    pixels.sort_unstable();
    pixels.dedup();
    let samples = (sz * sy * sx) as u32;
    let mut out = Vec::new();
    let mut cand: Vec<&CalcItem> = Vec::new();
    for pix in pixels {
        let (iy, ix) = (pix / g.nx, pix % g.nx);
        let (x, y) = (g.x(ix), g.y(iy));
        cand.clear();
        for (it, ix0, ix1, iy0, iy1) in &boxes {
            if ix >= *ix0 && ix <= *ix1 && iy >= *iy0 && iy <= *iy1 {
                // Quick reject: voxel centre far outside the ellipsoid grown by the voxel.
                let c = &it.calc;
                let grow = 0.5
                    * (g.spacing[0].powi(2) + g.spacing[1].powi(2) + g.spacing[2].powi(2)).sqrt();
                let d = sub([x, y, z], c.center);
                let mut q = 0.0;
                for kk in 0..3 {
                    let cpt = dot(d, c.axes[kk]) / (c.radii[kk] + grow);
                    q += cpt * cpt;
                }
                if q <= 1.0 {
                    cand.push(it);
                }
            }
        }
        if cand.is_empty() {
            continue;
        }
        let mut dens_sum = 0.0;
        let mut hits = 0u32;
        let mut votes = [0u32; 5];
        for a in 0..sz {
            let pz = z + dz * ((a as f64 + 0.5) / sz as f64 - 0.5);
            for b in 0..sy {
                let py = y + g.spacing[1] * ((b as f64 + 0.5) / sy as f64 - 0.5);
                for c in 0..sx {
                    let pxx = x + g.spacing[2] * ((c as f64 + 0.5) / sx as f64 - 0.5);
                    let mut best: Option<(f64, u8)> = None;
                    for it in &cand {
                        let q2 = it.calc.q2([pxx, py, pz]);
                        if q2 <= 1.0 {
                            let d = it.calc.density(q2);
                            if best.is_none_or(|(bd, _)| d > bd) {
                                best = Some((d, it.label));
                            }
                        }
                    }
                    if let Some((d, lab)) = best {
                        dens_sum += d;
                        hits += 1;
                        votes[(lab as usize).min(4)] += 1;
                    }
                }
            }
        }
        if hits == 0 {
            continue;
        }
        let label = (1..5)
            .max_by_key(|&l| votes[l])
            .filter(|&l| votes[l] > 0)
            .unwrap_or(0) as u8;
        out.push(CalcHit {
            pix,
            dens_sum,
            hits,
            samples,
            label,
        });
    }
    out
}

/// Value of a voxel whose calcium-free value is `base` after the calcium hits.
pub fn with_calc(base: f32, h: &CalcHit) -> f32 {
    let n = h.samples as f64;
    ((base as f64) * (n - h.hits as f64) / n + h.dens_sum / n) as f32
}

pub fn quantise(v: f32, hu_max: i16) -> i16 {
    v.round().clamp(-1024.0, hu_max as f32) as i16
}

/// Renders the anatomy, distractors and noise. Coronary plaques come later (see
/// [`apply_plaques`]) so the burden can be calibrated without rendering everything again.
pub fn render(
    p: &Patient,
    g: &Grid,
    noise: &NoiseModel,
    distractors: &[CalcItem],
    hu_max: i16,
) -> Rendered {
    let n = g.nx * g.ny;
    let mut hu = vec![0i16; g.nz * n];
    let mut heart = vec![0u8; g.nz * n];
    let mut distractor = vec![0u8; g.nz * n];
    let dref: Vec<&CalcItem> = distractors.iter().collect();
    let records: Vec<Vec<(usize, (f32, f32))>> = hu
        .par_chunks_mut(n)
        .zip(heart.par_chunks_mut(n))
        .zip(distractor.par_chunks_mut(n))
        .enumerate()
        .map(|(k, ((hu_s, heart_s), distractor_s))| {
            let z = g.z(k);
            let tubes = rasterise_tubes(p, g, z);
            let ctx = SliceCtx::new(p, g, z);
            let mut vals = vec![0f32; n];
            let mut nfac = vec![0f32; n];
            for iy in 0..g.ny {
                let y = g.y(iy);
                for ix in 0..g.nx {
                    let i = iy * g.nx + ix;
                    let (v, m, f) = ctx.value(g.x(ix), y, i, &tubes);
                    vals[i] = v;
                    nfac[i] = f;
                    heart_s[i] = m as u8;
                }
            }
            for h in calc_hits(&dref, g, k) {
                vals[h.pix] = with_calc(vals[h.pix], &h);
                distractor_s[h.pix] = 1;
            }
            let nz = slice_noise(noise, k, g.ny, g.nx);
            let mut rec = Vec::new();
            for i in 0..n {
                let e = nz[i] * nfac[i];
                if (tubes.cor[i] as f64) < RECORD_MM {
                    rec.push((k * n + i, (vals[i], e)));
                }
                hu_s[i] = quantise(vals[i] + e, hu_max);
            }
            rec
        })
        .collect();
    let record = records.into_iter().flatten().collect();
    Rendered {
        hu,
        heart,
        distractor,
        record,
    }
}

/// Correlated Gaussian noise for slice `k` (σ = `noise.sigma` before the body factor).
fn slice_noise(noise: &NoiseModel, k: usize, ny: usize, nx: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(noise.seed);
    rng.set_stream(k as u64 + 1);
    let n = nx * ny;
    let white: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let c = noise.corr as f32;
    // Separable [c, 1, c] blur; variance of the result (1 + 2c²)² for unit white noise.
    let mut tmp = vec![0f32; n];
    for y in 0..ny {
        let row = &white[y * nx..(y + 1) * nx];
        for x in 0..nx {
            let l = if x > 0 { row[x - 1] } else { row[x] };
            let r = if x + 1 < nx { row[x + 1] } else { row[x] };
            tmp[y * nx + x] = row[x] + c * (l + r);
        }
    }
    let gain = noise.sigma as f32 / (1.0 + 2.0 * c * c);
    let mut out = vec![0f32; n];
    for y in 0..ny {
        let up = if y > 0 { y - 1 } else { y };
        let dn = if y + 1 < ny { y + 1 } else { y };
        for x in 0..nx {
            out[y * nx + x] = gain * (tmp[y * nx + x] + c * (tmp[up * nx + x] + tmp[dn * nx + x]));
        }
    }
    out
}

/// Draws coronary plaques into `hu`/`labels` (flat `[z][y][x]`), first restoring every voxel a
/// previous call touched (`touched`), so the burden loop can redraw them.
pub fn apply_plaques(
    plaques: &[CalcItem],
    g: &Grid,
    r: &Rendered,
    hu: &mut [i16],
    labels: &mut [u8],
    touched: &mut Vec<usize>,
    hu_max: i16,
) {
    for &i in touched.iter() {
        if let Some((b, e)) = r.record.get(&i) {
            hu[i] = quantise(b + e, hu_max);
        } else {
            hu[i] = r.hu[i];
        }
        labels[i] = 0;
    }
    touched.clear();
    let refs: Vec<&CalcItem> = plaques.iter().collect();
    let n = g.nx * g.ny;
    let per_slice: Vec<(usize, Vec<CalcHit>)> = (0..g.nz)
        .into_par_iter()
        .map(|k| (k, calc_hits(&refs, g, k)))
        .filter(|(_, h)| !h.is_empty())
        .collect();
    for (k, hits) in per_slice {
        for h in hits {
            let i = k * n + h.pix;
            let (base, e) = r.record.get(&i).copied().unwrap_or((r.hu[i] as f32, 0.0));
            hu[i] = quantise(with_calc(base, &h) + e, hu_max);
            labels[i] = h.label;
            touched.push(i);
        }
    }
}
