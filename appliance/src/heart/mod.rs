//! Stage "heart": the heart within its pericardial sac, outlined without a network.
//!
//! DeepCAC's second stage segments the heart so that calcium outside it is never called
//! coronary. cacd's networks learnt their anatomy from phantoms; this stage instead follows
//! what every chest CT shows and no generator changes: the heart is the large soft-tissue mass
//! the lungs enclose, above the diaphragm, in front of the spine. On a 3 mm grid aligned with
//! the patient axes:
//!
//! 1. body (largest region above −500 HU, holes filled per slice) and lungs (air inside it);
//! 2. the mediastinum: per slice, the convex hull of the lungs, less lungs and bone, above
//!    −300 HU (fat included: the coronaries run in the epicardial fat);
//! 3. an opening with a 20 mm ball keeps the heart and drops what is narrower: descending
//!    aorta, oesophagus, fat strips;
//! 4. a watershed from a seed in the heart — the thickest part of the opened mediastinum at a
//!    slice both lungs flank (the ventricles; liver dome, great vessels and fat are thinner) —
//!    against a seed in the abdomen (slices below the lungs) parts heart from liver at the
//!    diaphragm (the abdomen's flood may not pass above the seed slice); below its widest
//!    section the heart stays within that section grown by 15 mm (the liver dome rises
//!    beside it, further out); above, it ends where its section falls under 60 % of the
//!    widest's area or 50 % of its width (the great vessels), plus 12 mm for the aortic root;
//! 5. nothing within 12 mm of the spine (calcification on the front of the vertebral bodies).
//!
//! The outline grown by [`MARGIN_MM`] is the gate of the calcium stage: a label outside it is
//! dropped. The median HU deep inside the outline is the blood pool the quality gate reads
//! for contrast.

mod ops;

use ops::Dims;

use crate::volume::Volume;

/// Grid step of the outline (mm), isotropic, aligned with the patient axes.
pub const GRID_MM: f64 = 3.0;
/// Calcium further than this from the outline is never coronary.
pub const MARGIN_MM: f64 = 10.0;
/// Nothing this close to the spine is heart.
pub const SPINE_CLEARANCE_MM: f64 = 12.0;
/// An outline smaller than this is no heart.
pub const MIN_HEART_ML: f64 = 150.0;

const BODY_HU: f32 = -500.0;
const LUNG_HU: f32 = -500.0;
const SOFT_MIN_HU: f32 = -300.0;
const BONE_HU: f32 = 250.0;
/// With contrast the blood pool passes [`BONE_HU`]: bone is then what encloses marrow above this.
const DENSE_BONE_HU: f32 = 600.0;
/// With contrast, a dense region is bone only when it reaches this close to the skin.
const BONE_FROM_SKIN_MM: f64 = 40.0;
/// Mediastinal HU above which the bone threshold moves to [`DENSE_BONE_HU`] (a first look at
/// the blood pool, before the heart is outlined).
const PRE_CONTRAST_HU: f64 = 110.0;
const MIN_LUNG_ML: f64 = 30.0;
/// Both lungs together at least this, and each at least [`MIN_LUNG_SECTION_MM2`] in some
/// slice: less is bowel gas or a scan below the chest.
const MIN_LUNGS_ML: f64 = 400.0;
const MIN_LUNG_SECTION_MM2: f64 = 3000.0;
const MIN_BONE_ML: f64 = 5.0;
const MIN_HULL_AREA_MM2: f64 = 1500.0;
const OPEN_RADIUS_MM: f64 = 20.0;
/// Seed slices: both lungs at least this share of their largest section.
const FLANKED: f64 = 0.3;
/// Abdomen slices: lungs under this share of their largest section.
const ABDOMEN_LUNG_SHARE: f64 = 0.15;
/// The heart ends above where its section falls under this share of the seed slice's.
const TOP_SHARE: f64 = 0.6;
const TOP_WIDTH_SHARE: f64 = 0.5;
/// Below the widest section the heart grows out of it by at most this.
const BELOW_GROWTH_MM: f64 = 15.0;
const TOP_MARGIN_MM: f64 = 12.0;
const SPINE_BAND_MM: f64 = 40.0;
/// Depth inside the outline where the blood pool is read.
const BLOOD_DEPTH_MM: f64 = 6.0;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeartError {
    #[error("no chest in the scanned range: no lungs found")]
    NoLungs,
    #[error("heart not found between the lungs")]
    NotFound,
}

/// A grid aligned with the patient axes (x left, y posterior, z superior), `GRID_MM` apart.
#[derive(Debug, Clone)]
pub struct PatientGrid {
    /// Patient position of voxel `[0, 0, 0]`'s centre (x, y, z).
    pub origin: [f64; 3],
    pub dims: Dims,
    pub spacing: f64,
}

impl PatientGrid {
    /// The voxel `[z, y, x]` holding patient point `p`, if inside.
    pub fn index_of(&self, p: [f64; 3]) -> Option<usize> {
        let f = |a: usize| ((p[a] - self.origin[a]) / self.spacing + 0.5).floor();
        let (x, y, z) = (f(0), f(1), f(2));
        let d = self.dims;
        if x < 0.0 || y < 0.0 || z < 0.0 || x >= d.w as f64 || y >= d.h as f64 || z >= d.d as f64 {
            return None;
        }
        Some(d.at(z as usize, y as usize, x as usize))
    }

    fn centre_of(&self, i: usize) -> [f64; 3] {
        let (z, y, x) = self.dims.zyx(i);
        [
            self.origin[0] + x as f64 * self.spacing,
            self.origin[1] + y as f64 * self.spacing,
            self.origin[2] + z as f64 * self.spacing,
        ]
    }
}

/// Where the scan ends in the heart, if it does.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    /// The heart reaches the first (lowest) slice: its section there as a share of its widest.
    pub cut_below: Option<f64>,
    /// The heart reaches the last (highest) slice: its section there as a share of its widest.
    pub cut_above: Option<f64>,
    /// Height of the outline (mm).
    pub height_mm: f64,
}

/// The outlined heart of one study.
#[derive(Debug, Clone)]
pub struct Heart {
    pub grid: PatientGrid,
    /// The outline on `grid`.
    pub mask: Vec<bool>,
    /// The outline grown by [`MARGIN_MM`], less the spine's clearance: where coronary calcium
    /// may be.
    pub gate: Vec<bool>,
    /// Median HU deep inside the outline (blood and myocardium; 30–60 HU without contrast).
    pub blood_pool_hu: f64,
    pub volume_ml: f64,
    /// Centre of the outline's bounding box (patient mm).
    pub centre_mm: [f64; 3],
    /// Bounding box size (mm), x, y, z.
    pub extent_mm: [f64; 3],
    pub coverage: Coverage,
}

impl Heart {
    /// Whether patient point `p` lies within the gate (the outline plus its margin).
    pub fn in_gate(&self, p: [f64; 3]) -> bool {
        self.grid.index_of(p).is_some_and(|i| self.gate[i])
    }

    /// Whether patient point `p` lies within the outline itself.
    pub fn contains(&self, p: [f64; 3]) -> bool {
        self.grid.index_of(p).is_some_and(|i| self.mask[i])
    }

    /// The outline as a NIfTI-1 file (uint8, 1 = heart), for looking at it beside the study.
    pub fn to_nifti(&self) -> Vec<u8> {
        let d = self.grid.dims;
        let mut h = vec![0u8; 352];
        let put_i16 =
            |h: &mut Vec<u8>, off: usize, v: i16| h[off..off + 2].copy_from_slice(&v.to_le_bytes());
        let put_f32 =
            |h: &mut Vec<u8>, off: usize, v: f32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        // dim: 3 axes, NIfTI order i = x, j = y, k = z.
        for (k, v) in [3, d.w, d.h, d.d, 1, 1, 1, 1].iter().enumerate() {
            put_i16(&mut h, 40 + 2 * k, *v as i16);
        }
        put_i16(&mut h, 70, 2); // datatype uint8
        put_i16(&mut h, 72, 8); // bitpix
        for (k, v) in [1.0, self.grid.spacing, self.grid.spacing, self.grid.spacing]
            .iter()
            .enumerate()
        {
            put_f32(&mut h, 76 + 4 * k, *v as f32);
        }
        put_f32(&mut h, 108, 352.0); // vox_offset
        put_f32(&mut h, 112, 1.0); // scl_slope
        h[123] = 2; // xyzt_units: mm
        put_i16(&mut h, 254, 1); // sform_code: scanner
                                 // sform rows map (i, j, k) to RAS: LPS x and y change sign.
        let s = self.grid.spacing as f32;
        let o = self.grid.origin;
        let rows = [
            [-s, 0.0, 0.0, -o[0] as f32],
            [0.0, -s, 0.0, -o[1] as f32],
            [0.0, 0.0, s, o[2] as f32],
        ];
        for (r, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                put_f32(&mut h, 280 + 16 * r + 4 * c, *v);
            }
        }
        h[344..348].copy_from_slice(b"n+1\0");
        h.extend(self.mask.iter().map(|&m| m as u8));
        h
    }
}

/// The study resampled onto a patient-aligned grid: in plane each cell is the mean HU of the
/// native pixels whose centres fall in it; along z, linear between the two nearest slices
/// (5 mm slices leave 3 mm layers without a slice of their own). Cells outside the scanned
/// range read as air and are not `covered`.
struct Coarse {
    grid: PatientGrid,
    hu: Vec<f32>,
    covered: Vec<bool>,
}

fn resample(vol: &Volume, spacing: f64) -> Coarse {
    let g = &vol.geometry;
    let (nz, ny, nx) = vol.dims();
    let mut lo = [f64::MAX; 3];
    let mut hi = [f64::MIN; 3];
    for &z in &[0.0, (nz.max(1) - 1) as f64] {
        for &y in &[0.0, (ny.max(1) - 1) as f64] {
            for &x in &[0.0, (nx.max(1) - 1) as f64] {
                let p = g.index_to_patient(z, y, x);
                for a in 0..3 {
                    lo[a] = lo[a].min(p[a]);
                    hi[a] = hi[a].max(p[a]);
                }
            }
        }
    }
    let n = |a: usize| (((hi[a] - lo[a]) / spacing).floor() as usize + 1).max(1);
    let dims = Dims {
        d: n(2),
        h: n(1),
        w: n(0),
    };
    let grid = PatientGrid {
        origin: lo,
        dims,
        spacing,
    };
    let plane = dims.plane();
    // Each native slice averaged in plane onto the coarse (y, x) cells; its patient z.
    let rd: [f64; 3] = std::array::from_fn(|a| g.row_dir[a] * g.spacing[2]);
    let cd: [f64; 3] = std::array::from_fn(|a| g.col_dir[a] * g.spacing[1]);
    let mut planes: Vec<(f64, Vec<f32>, Vec<bool>)> = Vec::with_capacity(nz);
    let (mut sum, mut count) = (vec![0f64; plane], vec![0u32; plane]);
    for z in 0..nz {
        sum.fill(0.0);
        count.fill(0);
        let p0 = g.index_to_patient(z as f64, 0.0, 0.0);
        for y in 0..ny {
            let row: [f64; 3] = std::array::from_fn(|a| p0[a] + y as f64 * cd[a]);
            for x in 0..nx {
                let px = row[0] + x as f64 * rd[0];
                let py = row[1] + x as f64 * rd[1];
                let cx = ((px - lo[0]) / spacing + 0.5).floor();
                let cy = ((py - lo[1]) / spacing + 0.5).floor();
                if cx >= 0.0 && cy >= 0.0 && (cx as usize) < dims.w && (cy as usize) < dims.h {
                    let i = cy as usize * dims.w + cx as usize;
                    sum[i] += f64::from(vol.hu[[z, y, x]]);
                    count[i] += 1;
                }
            }
        }
        let centre = g.index_to_patient(z as f64, (ny / 2) as f64, (nx / 2) as f64)[2];
        let mean = sum
            .iter()
            .zip(&count)
            .map(|(&s, &c)| {
                if c > 0 {
                    (s / c as f64) as f32
                } else {
                    -1000.0
                }
            })
            .collect();
        planes.push((centre, mean, count.iter().map(|&c| c > 0).collect()));
    }
    planes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut hu = vec![-1000f32; dims.len()];
    let mut covered = vec![false; dims.len()];
    let half = if planes.len() > 1 {
        (planes[planes.len() - 1].0 - planes[0].0) / (planes.len() - 1) as f64 / 2.0
    } else {
        g.spacing[0] / 2.0
    };
    for zc in 0..dims.d {
        let zp = lo[2] + zc as f64 * spacing;
        let (first, last) = (planes[0].0, planes[planes.len() - 1].0);
        if zp < first - half || zp > last + half {
            continue;
        }
        let k = planes.partition_point(|p| p.0 <= zp);
        let (a, b, w) = if k == 0 {
            (0, 0, 0.0)
        } else if k >= planes.len() {
            (planes.len() - 1, planes.len() - 1, 0.0)
        } else {
            let (za, zb) = (planes[k - 1].0, planes[k].0);
            (k - 1, k, ((zp - za) / (zb - za).max(1e-9)) as f32)
        };
        for i in 0..plane {
            let (va, ca) = (planes[a].1[i], planes[a].2[i]);
            let (vb, cb) = (planes[b].1[i], planes[b].2[i]);
            if ca || cb {
                hu[zc * plane + i] = (1.0 - w) * va + w * vb;
                covered[zc * plane + i] = ca && cb;
            }
        }
    }
    Coarse { grid, hu, covered }
}

fn area(mask: &[bool], dims: Dims, z: usize) -> usize {
    mask[z * dims.plane()..(z + 1) * dims.plane()]
        .iter()
        .filter(|&&b| b)
        .count()
}

fn median(mut v: Vec<f32>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    v.select_nth_unstable_by(mid, f32::total_cmp);
    Some(f64::from(v[mid]))
}

/// Outlines the heart of `vol` (see the module documentation).
pub fn outline(vol: &Volume) -> Result<Heart, HeartError> {
    let Coarse { grid, hu, covered } = resample(vol, GRID_MM);
    let dims = grid.dims;
    let s = grid.spacing;
    let voxel_ml = s * s * s / 1000.0;
    let ml = |v: f64| (v / voxel_ml).ceil() as usize;
    let plane = dims.plane();

    // 1. Body and lungs.
    let body: Vec<bool> = hu
        .iter()
        .zip(&covered)
        .map(|(&v, &c)| c && v > BODY_HU)
        .collect();
    let body = ops::fill_holes_2d(&ops::largest(&body, dims), dims);
    let air: Vec<bool> = hu
        .iter()
        .zip(&body)
        .map(|(&v, &b)| b && v < LUNG_HU)
        .collect();
    let lungs = ops::keep_large(&air, dims, ml(MIN_LUNG_ML));
    let lung_area: Vec<f64> = (0..dims.d)
        .map(|z| area(&lungs, dims, z) as f64 * s * s)
        .collect();
    let max_lung = lung_area.iter().cloned().fold(0.0, f64::max);
    if max_lung < MIN_HULL_AREA_MM2 {
        return Err(HeartError::NoLungs);
    }

    // Left and right by the body's middle (patient +x is left).
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (usize::MAX, 0, usize::MAX, 0);
    for (i, _) in body.iter().enumerate().filter(|(_, &b)| b) {
        let (_, y, x) = dims.zyx(i);
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    let xc = (xmin + xmax) / 2;
    let yc = (ymin + ymax) / 2;
    let side_area = |z: usize, left: bool| {
        let sl = &lungs[z * plane..(z + 1) * plane];
        sl.iter()
            .enumerate()
            .filter(|(i, &b)| b && ((i % dims.w) >= xc) == left)
            .count() as f64
    };
    let (al, ar): (Vec<f64>, Vec<f64>) = (0..dims.d)
        .map(|z| (side_area(z, true), side_area(z, false)))
        .unzip();
    let (al_max, ar_max) = (
        al.iter().cloned().fold(0.0, f64::max),
        ar.iter().cloned().fold(0.0, f64::max),
    );
    let lung_ml = lungs.iter().filter(|&&b| b).count() as f64 * voxel_ml;
    if lung_ml < MIN_LUNGS_ML || al_max.min(ar_max) * s * s < MIN_LUNG_SECTION_MM2 {
        return Err(HeartError::NoLungs);
    }
    let flanked: Vec<bool> = (0..dims.d)
        .map(|z| al[z] > FLANKED * al_max && ar[z] > FLANKED * ar_max)
        .collect();

    // 2. Mediastinum: hull of the lungs per slice.
    let mut hull = vec![false; dims.len()];
    for z in 0..dims.d {
        if lung_area[z] > MIN_HULL_AREA_MM2 {
            let h = ops::convex_hull_2d(&lungs[z * plane..(z + 1) * plane], dims.h, dims.w);
            hull[z * plane..(z + 1) * plane].copy_from_slice(&h);
        }
    }
    // A first look at the blood pool (anterior, central part of the hull at flanked slices):
    // with contrast it passes the bone threshold and must not be taken for bone.
    let mut pre = Vec::new();
    for z in (0..dims.d).filter(|&z| flanked[z]) {
        let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
        for i in (0..plane).filter(|&i| hull[z * plane + i]) {
            let (y, x) = (i / dims.w, i % dims.w);
            y0 = y0.min(y);
            y1 = y1.max(y);
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
        if y0 > y1 {
            continue;
        }
        let yl = y0 + (y1 - y0) * 6 / 10;
        let (xl, xr) = (x0 + (x1 - x0) / 5, x0 + (x1 - x0) * 4 / 5);
        for y in y0..yl {
            for x in xl..xr {
                let i = dims.at(z, y, x);
                if hull[i] && !lungs[i] && hu[i] > -50.0 && hu[i] < 1000.0 {
                    pre.push(hu[i]);
                }
            }
        }
    }
    let pre_blood = median(pre).unwrap_or(0.0);
    let bone = if pre_blood > PRE_CONTRAST_HU {
        // Undiluted contrast (superior vena cava, right atrium) is as dense as bone: bone is
        // what reaches towards the body wall (ribs, sternum, spine), contrast lies deep inside.
        let dense: Vec<bool> = hu.iter().map(|&v| v > DENSE_BONE_HU).collect();
        let dense = ops::fill_holes_2d(&dense, dims);
        let outside: Vec<bool> = body.iter().map(|&b| !b).collect();
        let from_skin = ops::distance_to(&outside, dims, s);
        let (labels, sizes) = ops::label(&dense, dims);
        let mut walled = vec![false; sizes.len()];
        for (i, &l) in labels.iter().enumerate() {
            if l != 0 && f64::from(from_skin[i]) <= BONE_FROM_SKIN_MM {
                walled[l as usize] = true;
            }
        }
        labels
            .iter()
            .map(|&l| l != 0 && walled[l as usize] && sizes[l as usize] >= ml(MIN_BONE_ML))
            .collect()
    } else {
        let raw: Vec<bool> = hu.iter().map(|&v| v > BONE_HU).collect();
        ops::keep_large(&raw, dims, ml(MIN_BONE_ML))
    };
    let near_bone = ops::dilate_3d(&bone, dims);
    let soft: Vec<bool> = (0..dims.len())
        .map(|i| body[i] && !lungs[i] && !near_bone[i] && hu[i] > SOFT_MIN_HU)
        .collect();
    let med: Vec<bool> = (0..dims.len()).map(|i| hull[i] && soft[i]).collect();

    // 3. Opening.
    let opened = ops::open_ball(&med, dims, s, OPEN_RADIUS_MM);

    // 4. Seeds and watershed.
    // The seed slice: the widest opened section where both lungs flank it, above the lowest
    // quarter of those slices (where the liver dome rises into the hull).
    // The seed: where the thickest soft-tissue mass between the lungs lies left of the body's
    // middle (the ventricles; the liver dome, which can be thicker, rises on the right; great
    // vessels and fat strips are thinner), at a slice both lungs flank.
    let flanked_z: Vec<usize> = (0..dims.d).filter(|&z| flanked[z]).collect();
    let outside: Vec<bool> = opened.iter().map(|&b| !b).collect();
    let depth = ops::distance_to(&outside, dims, s);
    let (seed, deepest) = (0..dims.len())
        .filter(|&i| opened[i] && flanked[i / plane] && i % dims.w >= xc)
        .map(|i| (i, depth[i]))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or(HeartError::NotFound)?;
    let zc = seed / plane;
    let mut markers = vec![0u8; dims.len()];
    for i in 0..dims.len() {
        if opened[i] && depth[i] > 0.7 * deepest {
            markers[i] = 1;
        }
    }
    // Only the part of those cores connected to the seed.
    let (core_labels, _) = ops::label(&markers.iter().map(|&m| m == 1).collect::<Vec<_>>(), dims);
    let seed_label = core_labels[seed];
    for (m, &l) in markers.iter_mut().zip(&core_labels) {
        if *m == 1 && l != seed_label {
            *m = 0;
        }
    }
    let mut domain = med.clone();
    if let Some(zt) = (0..zc)
        .filter(|&z| lung_area[z] < ABDOMEN_LUNG_SHARE * max_lung)
        .max()
    {
        for i in 0..(zt + 1) * plane {
            if soft[i] {
                domain[i] = true;
                if hu[i] > 0.0 {
                    markers[i] = 2;
                }
            }
        }
    }
    let smooth = ops::gaussian(&hu, dims, 1.0);
    let elevation = ops::gradient_magnitude(&smooth, dims);
    // The abdomen's flood competes with the heart's only below the seed slice (at the
    // diaphragm): where the heart rests on the liver without a fat plane, it would otherwise
    // run up into the heart before the heart's own flood got there.
    let below_seed = zc * plane;
    let basins = ops::watershed(&elevation, &markers, &domain, dims, |label, i| {
        label != 2 || i < below_seed
    });
    let heart: Vec<bool> = (0..dims.len())
        .map(|i| basins[i] == 1 && opened[i])
        .collect();
    let mut heart = ops::largest(&heart, dims);

    // Below the seed slice the heart only narrows; above, it ends at the great vessels.
    // The widest section of the watershed's heart among the flanked slices.
    // The reference section is the seed's (the ventricles at their thickest): below it the
    // liver dome can widen the mediastinum, so the widest section may not be the heart's.
    let zm = if area(&heart, dims, zc) > 0 {
        zc
    } else {
        flanked_z
            .iter()
            .copied()
            .max_by_key(|&z| area(&heart, dims, z))
            .unwrap_or(zc)
    };
    // Below it, each section lies within the one above grown by a voxel, and within the
    // widest grown by `BELOW_GROWTH_MM` (the right atrium reaches further right lower down;
    // the liver dome, rising beside the heart, is further out still).
    let mut bound = heart[zm * plane..(zm + 1) * plane].to_vec();
    for _ in 0..(BELOW_GROWTH_MM / s).round() as usize {
        bound = ops::dilate_2d(&bound, dims.h, dims.w);
    }
    for z in (0..zm).rev() {
        let above = ops::dilate_2d(&heart[(z + 1) * plane..(z + 2) * plane], dims.h, dims.w);
        for i in 0..plane {
            heart[z * plane + i] &= above[i] && bound[i];
        }
    }
    // Above it the heart ends where its section shrinks to the great vessels: under
    // `TOP_SHARE` of the widest section's area, or under `TOP_WIDTH_SHARE` of its width from
    // right to left (a tall, narrow column of mediastinal fat is no heart).
    let width = |z: usize| {
        let sl = &heart[z * plane..(z + 1) * plane];
        let (lo, hi) = sl
            .iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i % dims.w)
            .fold((usize::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
        if lo > hi {
            0.0
        } else {
            (hi - lo + 1) as f64
        }
    };
    let (widest_area, widest) = (area(&heart, dims, zm) as f64, width(zm));
    let mut top = zm;
    while top + 1 < dims.d
        && area(&heart, dims, top + 1) as f64 >= TOP_SHARE * widest_area
        && width(top + 1) >= TOP_WIDTH_SHARE * widest
    {
        top += 1;
    }
    let keep_to = top + (TOP_MARGIN_MM / s).round() as usize;
    tracing::debug!(zc, zm, top, d = dims.d, "heart: seed slice, widest, top");
    for z in (keep_to + 1)..dims.d {
        heart[z * plane..(z + 1) * plane].fill(false);
    }

    // 5. The spine's clearance.
    let band = (SPINE_BAND_MM / s).round() as usize;
    let spine: Vec<bool> = (0..dims.len())
        .map(|i| {
            let (_, y, x) = dims.zyx(i);
            bone[i] && y > yc && x + band >= xc && x <= xc + band
        })
        .collect();
    // Marrow in: the distance is to the vertebra's surface, wherever its cortex thins out.
    let spine = ops::fill_holes_2d(&ops::largest(&spine, dims), dims);
    let from_spine = ops::distance_to(&spine, dims, s);
    for (h, &d) in heart.iter_mut().zip(&from_spine) {
        *h &= f64::from(d) > SPINE_CLEARANCE_MM;
    }
    let heart = ops::largest(&heart, dims);
    let count = heart.iter().filter(|&&b| b).count();
    let volume_ml = count as f64 * voxel_ml;
    if volume_ml < MIN_HEART_ML {
        return Err(HeartError::NotFound);
    }

    // The gate, the blood pool, the box and the coverage.
    let from_heart = ops::distance_to(&heart, dims, s);
    let gate: Vec<bool> = (0..dims.len())
        .map(|i| {
            f64::from(from_heart[i]) <= MARGIN_MM && f64::from(from_spine[i]) > SPINE_CLEARANCE_MM
        })
        .collect();
    let outside: Vec<bool> = heart.iter().map(|&b| !b).collect();
    let depth = ops::distance_to(&outside, dims, s);
    let deep: Vec<f32> = (0..dims.len())
        .filter(|&i| heart[i] && f64::from(depth[i]) > BLOOD_DEPTH_MM && hu[i] > -30.0)
        .map(|i| hu[i])
        .collect();
    let inner: Vec<f32> = (0..dims.len())
        .filter(|&i| heart[i] && hu[i] > -30.0)
        .map(|i| hu[i])
        .collect();
    let blood_pool_hu = median(deep).or_else(|| median(inner)).unwrap_or(0.0);
    let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
    for i in (0..dims.len()).filter(|&i| heart[i]) {
        let p = grid.centre_of(i);
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let centre_mm = std::array::from_fn(|a| (lo[a] + hi[a]) / 2.0);
    let extent_mm = std::array::from_fn(|a| hi[a] - lo[a] + s);
    let layers: Vec<usize> = (0..dims.d)
        .filter(|&z| covered[z * plane..(z + 1) * plane].iter().any(|&c| c))
        .collect();
    let widest = (0..dims.d)
        .map(|z| area(&heart, dims, z))
        .max()
        .unwrap_or(0) as f64;
    let share = |z: usize| area(&heart, dims, z) as f64 / widest.max(1.0);
    // The heart reaches an end of the scan when it has a section in one of the two layers
    // (6 mm) next to it: the outline stops a little short of a cut heart.
    let near_end =
        |ls: &mut dyn Iterator<Item = usize>| ls.take(2).map(share).fold(0.0f64, f64::max);
    let coverage = Coverage {
        cut_below: Some(near_end(&mut layers.iter().copied())).filter(|&f| f > 0.0),
        cut_above: Some(near_end(&mut layers.iter().rev().copied())).filter(|&f| f > 0.0),
        height_mm: extent_mm[2],
    };
    Ok(Heart {
        grid,
        mask: heart,
        gate,
        blood_pool_hu,
        volume_ml,
        centre_mm,
        extent_mm,
        coverage,
    })
}
