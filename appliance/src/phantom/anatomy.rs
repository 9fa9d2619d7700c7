//! The randomised patient: body habitus, chest wall, spine, ribs, sternum, lungs, diaphragm,
//! great vessels, airways and a tilted heart with its coronary tree, plus the distractor
//! calcifications (aortic wall, aortic valve, mitral annulus, costal cartilage).
//!
//! Everything is in patient coordinates (DICOM LPS, mm): +x patient left, +y posterior,
//! +z head. The heart has its own frame: `eu` along the long axis from base to apex
//! (anterior-left-inferior), `en` the septal normal (towards the left ventricle, left-posterior),
//! `es = eu × en` along the anterior interventricular groove (superior-anterior).

use super::geom::*;
use rand::Rng;
use std::f64::consts::PI;

/// Heart geometry: an ellipsoidal pericardial sac in a tilted frame.
#[derive(Debug, Clone)]
pub struct Heart {
    pub c: V3,
    pub eu: V3,
    pub es: V3,
    pub en: V3,
    /// Pericardium semi-axes along `eu`, `es`, `en`.
    pub a: f64,
    pub b: f64,
    pub cc: f64,
    /// Epicardial fat thickness between pericardium and myocardium (mm).
    pub epi: f64,
    /// Paracardiac (pericardial) fat outside the sac (mm).
    pub peri_fat: f64,
    /// Long-axis coordinate of the atrioventricular groove.
    pub u_av: f64,
    /// Polar angle (from the base pole) of the AV groove.
    pub alpha_av: f64,
    /// Taper: cross-sections scale by `1 - cone * u / a` (wide base, narrow apex).
    pub cone: f64,
}

impl Heart {
    pub fn to_local(&self, p: V3) -> V3 {
        let d = sub(p, self.c);
        [dot(d, self.eu), dot(d, self.es), dot(d, self.en)]
    }

    /// Cross-section scale at long-axis coordinate `u`.
    pub fn taper(&self, u: f64) -> f64 {
        1.0 - self.cone * (u / self.a).clamp(-1.0, 1.0)
    }

    /// Normalised squared radius of a local point on the sac shrunk by `d` mm (≤ 1 inside).
    pub fn rho2(&self, l: V3, d: f64) -> f64 {
        let g = self.taper(l[0]);
        (l[0] / (self.a - d)).powi(2)
            + (l[1] / (g * (self.b - d))).powi(2)
            + (l[2] / (g * (self.cc - d))).powi(2)
    }

    pub fn to_patient(&self, l: V3) -> V3 {
        add(
            self.c,
            add(
                add(scale(self.eu, l[0]), scale(self.es, l[1])),
                scale(self.en, l[2]),
            ),
        )
    }

    /// Point at depth `d` below the pericardial surface, polar angle `alpha` from the base
    /// pole (0 base, π apex) and azimuth `beta` round the long axis (0 anterior IV groove,
    /// π/2 left ventricle, π posterior IV groove, −π/2 right ventricle).
    pub fn surface(&self, alpha: f64, beta: f64, d: f64) -> V3 {
        let u = -(self.a - d) * alpha.cos();
        let g = self.taper(u);
        self.to_patient([
            u,
            g * (self.b - d) * alpha.sin() * beta.cos(),
            g * (self.cc - d) * alpha.sin() * beta.sin(),
        ])
    }

    /// Axis-aligned half extents of the sac plus its fat.
    pub fn half_extent(&self) -> V3 {
        // The fat pad is off-centre towards the apex and front (see render::SliceCtx::heart).
        let f = 1.2 * self.peri_fat;
        let g = 1.0 + self.cone;
        let r = [self.a + f, g * self.b + f, g * self.cc + f];
        let ax = [self.eu, self.es, self.en];
        let mut e = [0.0; 3];
        for (i, ei) in e.iter_mut().enumerate() {
            *ei = (0..3)
                .map(|k| (ax[k][i] * r[k]).powi(2))
                .sum::<f64>()
                .sqrt();
        }
        e
    }
}

/// One coronary artery centreline.
#[derive(Debug, Clone)]
pub struct Coronary {
    pub label: u8,
    pub path: Path,
}

/// What a distractor calcification is (reported in `truth.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistractorKind {
    AorticWall,
    AorticValve,
    MitralAnnulus,
    CostalCartilage,
    LymphNode,
}

#[derive(Debug, Clone)]
pub struct Distractor {
    pub kind: DistractorKind,
    pub calc: Calc,
}

/// Everything that describes one simulated patient.
#[derive(Debug, Clone)]
pub struct Patient {
    // Body outline: an ellipse, flatter at the back; layers shrink it.
    pub body_c: [f64; 2],
    pub body_ax: f64,
    pub body_ay_ant: f64,
    pub body_ay_post: f64,
    pub fat: f64,
    pub fat_hu: f64,
    pub muscle_hu: f64,
    // Thoracic cavity (inside the ribs).
    pub cav_c: [f64; 2],
    pub cav_ax: f64,
    pub cav_ay_ant: f64,
    pub cav_ay_post: f64,
    /// Midline x.
    pub xm: f64,
    // Spine.
    pub vert_y: f64,
    pub vert_r: f64,
    pub level_h: f64,
    pub level_phase: f64,
    pub disc_h: f64,
    pub cortical_hu: f64,
    pub cancellous_hu: f64,
    // Ribs: posterior end of rib k at z = rib_z0 - k * rib_spacing, dropping by rib_drop
    // towards the front.
    pub rib_z0: f64,
    pub rib_spacing: f64,
    pub rib_drop: f64,
    pub rib_rr: f64,
    pub rib_rz: f64,
    pub cartilage_hu: f64,
    // Sternum.
    pub sternum_y: f64,
    pub sternum_hw: f64,
    pub sternum_ht: f64,
    pub sternum_zmin: f64,
    pub manubrium_z: f64,
    // Heart, diaphragm domes (x, y, z apex, curvature), lungs.
    pub heart: Heart,
    pub dome_r: [f64; 4],
    pub dome_l: [f64; 4],
    pub lung_hu: f64,
    pub lung_gradient: f64,
    pub liver_hu: f64,
    /// Mediastinal half width at the heart and above it.
    pub med_w_low: f64,
    pub med_w_high: f64,
    pub med_z_high: f64,
    /// Patient table top y at the midline.
    pub table_y: f64,
    pub table_hu: f64,
    // Tubes and calcifications.
    pub tubes: Vec<Seg>,
    pub coronaries: Vec<Coronary>,
    pub distractors: Vec<Distractor>,
    /// Centre and radius of the aortic root (sinus level).
    pub aorta_root: V3,
    pub aorta_root_r: f64,
    /// Overall z extent of the heart with its fat.
    pub heart_z: [f64; 2],
    /// Lung hila (where the pulmonary arteries end and the lung vessel trees start).
    pub hila: Vec<V3>,
    /// The aorta's centreline (valve level → root → arch → descending).
    pub aorta: Path,
}

fn uni<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    rng.gen_range(lo..hi)
}

/// Size class of the patient, 0 (small) … 1 (large); correlates the body measures.
pub fn draw_patient<R: Rng>(rng: &mut R, habitus: f64) -> Patient {
    let h = habitus;
    let body_ax = 135.0 + 50.0 * h + uni(rng, -8.0, 8.0);
    let body_ay_ant = 100.0 + 35.0 * h + uni(rng, -6.0, 6.0);
    let body_ay_post = body_ay_ant * uni(rng, 0.85, 0.95);
    let fat = 5.0 + 28.0 * h * h + uni(rng, 0.0, 6.0);
    let muscle = uni(rng, 8.0, 15.0);
    let body_c = [uni(rng, -12.0, 12.0), uni(rng, -15.0, 10.0)];
    let xm = body_c[0] + uni(rng, -4.0, 4.0);
    let wall = fat + muscle;
    let cav_ax = body_ax - wall - uni(rng, 0.0, 6.0);
    let cav_ay_ant = body_ay_ant - wall;
    let cav_ay_post = body_ay_post - wall - uni(rng, 5.0, 15.0);
    let cav_c = [body_c[0], body_c[1] + uni(rng, -4.0, 4.0)];

    // Spine: vertebral body half inside the cavity at the back.
    let vert_r = uni(rng, 15.0, 20.0);
    let vert_y = cav_c[1] + cav_ay_post - vert_r * 0.55;
    let cortical_hu = uni(rng, 650.0, 1100.0);
    let cancellous_hu = uni(rng, 140.0, 300.0);

    // Heart: size, orientation and position.
    let hs = uni(rng, 0.88, 1.08) * (1.0 + 0.06 * h);
    let a = 56.0 * hs;
    let b = 40.0 * hs;
    let cc = 44.0 * hs;
    let phi = uni(rng, 35.0, 60.0).to_radians(); // azimuth of the long axis from anterior to left
    let theta = uni(rng, 15.0, 38.0).to_radians(); // downward tilt of the long axis
    let roll = uni(rng, -15.0, 15.0).to_radians();
    let hdir = [phi.sin(), -phi.cos(), 0.0];
    let eu = normalize(add(scale(hdir, theta.cos()), [0.0, 0.0, -theta.sin()]));
    let n0 = normalize([phi.cos(), phi.sin(), 0.0]);
    let n0 = normalize(sub(n0, scale(eu, dot(n0, eu))));
    let en = rotate(n0, eu, roll);
    let es = cross(eu, en);
    let epi = uni(rng, 0.8, 2.0) + 2.0 * h;
    let peri_fat = uni(rng, 3.0, 8.0) + 10.0 * h;
    let alpha_av = uni(rng, 0.34, 0.39) * PI;
    let u_av = -a * alpha_av.cos();
    let mut heart = Heart {
        c: [0.0; 3],
        eu,
        es,
        en,
        a,
        b,
        cc,
        epi,
        peri_fat,
        u_av,
        alpha_av,
        cone: uni(rng, 0.08, 0.22),
    };
    // Place the heart: left of the midline, its front against (or near) the anterior chest
    // wall so ribs, cartilage and sternum may touch its contour.
    let ext = heart.half_extent();
    let gap = uni(rng, -4.0, 14.0);
    let hx = xm + uni(rng, 8.0, 38.0);
    let hy = cav_c[1] - cav_ay_ant + ext[1] + gap;
    let hz = uni(rng, -260.0, -120.0);
    heart.c = [hx, hy, hz];
    let heart_z = [hz - ext[2], hz + ext[2]];

    // Diaphragm: the heart sits on the left dome; the right dome (liver) is higher.
    let dome_r = [
        xm - cav_ax * uni(rng, 0.35, 0.55),
        cav_c[1] + uni(rng, -5.0, 20.0),
        heart_z[0] + uni(rng, 12.0, 30.0),
        uni(rng, 0.0035, 0.006),
    ];
    let dome_l = [
        xm + cav_ax * uni(rng, 0.35, 0.55),
        cav_c[1] + uni(rng, 0.0, 25.0),
        heart_z[0] + uni(rng, -8.0, 8.0),
        uni(rng, 0.0035, 0.006),
    ];

    // Vertebral levels and ribs relative to the heart.
    let level_h = uni(rng, 23.0, 27.0);
    let level_phase = uni(rng, 0.0, level_h);
    let disc_h = uni(rng, 4.0, 6.5);
    let rib_spacing = uni(rng, 22.0, 27.0);
    let rib_z0 = heart_z[1] + uni(rng, 70.0, 110.0);
    let rib_drop = uni(rng, 90.0, 130.0);

    let sternum_ht = uni(rng, 4.5, 7.0);
    let sternum_y = cav_c[1] - cav_ay_ant - sternum_ht - 1.0;
    let sternum_zmin = heart_z[0] + uni(rng, 5.0, 30.0);
    let manubrium_z = heart_z[1] + uni(rng, 10.0, 35.0);

    let mut p = Patient {
        body_c,
        body_ax,
        body_ay_ant,
        body_ay_post,
        fat,
        fat_hu: uni(rng, -115.0, -85.0),
        muscle_hu: uni(rng, 40.0, 60.0),
        cav_c,
        cav_ax,
        cav_ay_ant,
        cav_ay_post,
        xm,
        vert_y,
        vert_r,
        level_h,
        level_phase,
        disc_h,
        cortical_hu,
        cancellous_hu,
        rib_z0,
        rib_spacing,
        rib_drop,
        rib_rr: uni(rng, 3.2, 4.5),
        rib_rz: uni(rng, 5.0, 7.0),
        cartilage_hu: uni(rng, 90.0, 140.0),
        sternum_y,
        sternum_hw: uni(rng, 11.0, 16.0),
        sternum_ht,
        sternum_zmin,
        manubrium_z,
        heart,
        dome_r,
        dome_l,
        lung_hu: uni(rng, -880.0, -820.0),
        lung_gradient: uni(rng, 0.2, 0.6),
        liver_hu: uni(rng, 50.0, 65.0),
        med_w_low: uni(rng, 5.0, 11.0),
        med_w_high: uni(rng, 18.0, 30.0),
        med_z_high: heart_z[1] - uni(rng, 0.0, 15.0),
        table_y: body_c[1] + body_ay_post + uni(rng, 3.0, 12.0),
        table_hu: uni(rng, 80.0, 250.0),
        tubes: Vec::new(),
        coronaries: Vec::new(),
        distractors: Vec::new(),
        aorta_root: [0.0; 3],
        aorta_root_r: 0.0,
        heart_z,
        hila: Vec::new(),
        aorta: Path::new(Vec::new(), Vec::new()),
    };
    build_vessels(&mut p, rng, h);
    build_lung_vessels(&mut p, rng);
    build_distractors(&mut p, rng, h);
    p
}

/// A coronary along the heart surface, sampled every ~1.5 mm, radius tapering `r0 → r1`.
fn surface_path(
    heart: &Heart,
    n: usize,
    depth: impl Fn(f64) -> f64,
    angles: impl Fn(f64) -> (f64, f64),
    r0: f64,
    r1: f64,
) -> (Vec<V3>, Vec<f64>) {
    let mut pts = Vec::with_capacity(n + 1);
    let mut rad = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (al, be) = angles(t);
        let r = r0 + (r1 - r0) * t;
        pts.push(heart.surface(al, be, depth(r)));
        rad.push(r);
    }
    (pts, rad)
}

fn build_vessels<R: Rng>(p: &mut Patient, rng: &mut R, h: f64) {
    let heart = p.heart.clone();
    // Vessel centre depth below the pericardium: inside the epicardial fat, never outside the
    // sac (the carve around the lumen makes the groove).
    let depth = |r: f64| r + 1.2;
    let av = heart.alpha_av;

    // Aortic root at the base, superior-anterior-right of the heart centre.
    let root_r = uni(rng, 13.0, 16.0) + 2.0 * h;
    let root = heart.surface(0.22 * PI, uni(rng, -0.3, 0.0), root_r * 0.8);
    p.aorta_root = root;
    p.aorta_root_r = root_r;

    // LM → bifurcation in the left AV groove near the anterior IV groove.
    let bif_beta = uni(rng, 0.25, 0.5);
    let r_lm = uni(rng, 1.8, 2.2);
    let bif = heart.surface(av, bif_beta, depth(r_lm));
    let lm_dir = normalize(sub(bif, root));
    let lm_start = add(root, scale(lm_dir, root_r - 1.0));
    let mut lm_pts = Vec::new();
    let mut lm_rad = Vec::new();
    let n_lm = ((norm(sub(bif, lm_start)) / 1.5).ceil() as usize).max(2);
    for i in 0..=n_lm {
        let t = i as f64 / n_lm as f64;
        lm_pts.push(lerp(lm_start, bif, t));
        lm_rad.push(r_lm);
    }
    p.coronaries.push(Coronary {
        label: 1,
        path: Path::new(lm_pts, lm_rad),
    });

    // LAD: from the bifurcation into the anterior interventricular groove, down to the apex.
    let lad_beta = uni(rng, -0.12, 0.08);
    let lad_end = uni(rng, 0.88, 0.95) * PI;
    let wav = uni(rng, 0.0, 0.06);
    let (pts, rad) = surface_path(
        &heart,
        70,
        depth,
        |t| {
            let k = (t / 0.15).min(1.0);
            let be = bif_beta
                + (lad_beta - bif_beta) * (1.0 - (1.0 - k).powi(2))
                + wav * (t * 9.0).sin();
            (av + (lad_end - av) * t, be)
        },
        r_lm * 0.85,
        uni(rng, 0.8, 1.1),
    );
    p.coronaries.push(Coronary {
        label: 2,
        path: Path::new(pts, rad),
    });

    // LCX: round the left AV groove towards the posterior (crux side).
    let lcx_end = uni(rng, 0.7, 0.9) * PI;
    let (pts, rad) = surface_path(
        &heart,
        60,
        depth,
        |t| (av + 0.04 * PI * t, bif_beta + (lcx_end - bif_beta) * t),
        r_lm * 0.8,
        uni(rng, 0.9, 1.2),
    );
    p.coronaries.push(Coronary {
        label: 3,
        path: Path::new(pts, rad),
    });

    // RCA: right side of the root, forward and down the right AV groove to the crux, then the
    // posterior descending branch down the posterior interventricular groove.
    let r_rca = uni(rng, 1.6, 2.0);
    let rca_beta0 = -uni(rng, 0.9, 1.2);
    let first = heart.surface(av, rca_beta0, depth(r_rca));
    let rca_dir = normalize(sub(first, root));
    let rca_start = add(root, scale(rca_dir, root_r - 1.0));
    let mut pts = Vec::new();
    let mut rad = Vec::new();
    let n0 = ((norm(sub(first, rca_start)) / 1.5).ceil() as usize).max(2);
    for i in 0..n0 {
        pts.push(lerp(rca_start, first, i as f64 / n0 as f64));
        rad.push(r_rca);
    }
    let crux = -PI + uni(rng, -0.1, 0.15);
    let (g_pts, g_rad) = surface_path(
        &heart,
        70,
        depth,
        |t| {
            (
                av + 0.03 * PI * (t * PI).sin(),
                rca_beta0 + (crux - rca_beta0) * t,
            )
        },
        r_rca,
        r_rca * 0.8,
    );
    pts.extend(g_pts);
    rad.extend(g_rad);
    let pda_end = uni(rng, 0.65, 0.8) * PI;
    let (d_pts, d_rad) = surface_path(
        &heart,
        30,
        depth,
        |t| (av + (pda_end - av) * t, crux),
        r_rca * 0.8,
        0.9,
    );
    pts.extend(d_pts.into_iter().skip(1));
    rad.extend(d_rad.into_iter().skip(1));
    p.coronaries.push(Coronary {
        label: 4,
        path: Path::new(pts, rad),
    });

    for c in &p.coronaries {
        let segs = c.path.segments(TubeClass::Coronary, c.label);
        p.tubes.extend(segs);
    }

    // Aorta: valve level → root → ascending (up, slightly right-anterior) → arch → descending
    // beside the spine, down past the diaphragm.
    let asc_r = root_r * uni(rng, 0.95, 1.05);
    let desc_r = asc_r * uni(rng, 0.7, 0.82);
    let lvot = add(root, scale(heart.eu, 10.0));
    let asc_top = add(
        root,
        [
            uni(rng, -10.0, 0.0),
            -uni(rng, 18.0, 30.0), // the ascending aorta climbs forwards, in front of the trachea
            uni(rng, 45.0, 65.0),
        ],
    );
    let desc_x = p.xm + p.vert_r + desc_r * 0.6 + uni(rng, 0.0, 6.0);
    let desc_y = p.vert_y - p.vert_r * 0.5 - uni(rng, 0.0, 6.0);
    let desc_top = [desc_x, desc_y, asc_top[2]];
    let mut aorta = vec![lvot, root, asc_top];
    let mid = lerp(asc_top, desc_top, 0.5);
    let half = norm(sub(desc_top, asc_top)) * 0.5;
    let dir = normalize(sub(desc_top, asc_top));
    let rise = half * uni(rng, 0.5, 0.8);
    for i in 1..12 {
        let t = PI * i as f64 / 12.0;
        let q = add(mid, scale(dir, -half * t.cos()));
        aorta.push(add(q, [0.0, 0.0, rise * t.sin()]));
    }
    aorta.push(desc_top);
    aorta.push([
        desc_x + uni(rng, -3.0, 3.0),
        desc_y - 8.0,
        p.heart_z[0] - 120.0,
    ]);
    let n = aorta.len();
    let radii: Vec<f64> = (0..n)
        .map(|i| {
            if i <= 2 {
                asc_r
            } else {
                asc_r + (desc_r - asc_r) * ((i - 2) as f64 / (n - 3) as f64).min(1.0)
            }
        })
        .collect();
    let aorta_path = Path::new(aorta, radii);
    p.tubes
        .extend(aorta_path.segments(TubeClass::GreatVessel, 0));
    p.aorta = aorta_path;

    // Pulmonary trunk from the right-ventricular outflow, up-left-back, splitting to the hila.
    let rvot = heart.surface(0.25 * PI, uni(rng, 0.1, 0.4), 8.0);
    let pa_bif = add(
        rvot,
        [
            uni(rng, 10.0, 20.0),
            uni(rng, 15.0, 25.0),
            uni(rng, 25.0, 40.0),
        ],
    );
    let pa_r = uni(rng, 11.0, 14.0);
    let hilum_z = pa_bif[2] - uni(rng, 5.0, 15.0);
    let hilum_l = [
        p.xm + uni(rng, 40.0, 55.0),
        p.vert_y - p.vert_r - uni(rng, 15.0, 30.0),
        hilum_z,
    ];
    let hilum_r = [
        p.xm - uni(rng, 40.0, 55.0),
        p.vert_y - p.vert_r - uni(rng, 15.0, 30.0),
        hilum_z,
    ];
    let lpa_r = pa_r * 0.72;
    for (a, b, ra, rb) in [
        (rvot, pa_bif, pa_r, pa_r),
        (pa_bif, hilum_l, lpa_r, lpa_r * 0.8),
        (pa_bif, hilum_r, lpa_r, lpa_r * 0.8),
    ] {
        p.tubes.push(Seg {
            a,
            b,
            ra,
            rb,
            class: TubeClass::GreatVessel,
            label: 0,
        });
    }
    p.hila = vec![hilum_l, hilum_r];
    // Superior vena cava: right of the ascending aorta, down into the right atrium.
    let ra_pt = heart.surface(0.3 * PI, -PI * 0.6, 10.0);
    let svc_r = uni(rng, 8.0, 11.0);
    let svc_top = [
        asc_top[0] - asc_r - svc_r - uni(rng, 2.0, 8.0),
        asc_top[1] + 5.0,
        p.heart_z[1] + 150.0,
    ];
    let svc_mid = [svc_top[0], svc_top[1], ra_pt[2] + 25.0];
    p.tubes.push(Seg {
        a: svc_top,
        b: svc_mid,
        ra: svc_r,
        rb: svc_r,
        class: TubeClass::GreatVessel,
        label: 0,
    });
    p.tubes.push(Seg {
        a: svc_mid,
        b: ra_pt,
        ra: svc_r,
        rb: svc_r,
        class: TubeClass::GreatVessel,
        label: 0,
    });

    // Trachea down to the carina, main bronchi to the hila.
    let tr_r = uni(rng, 7.5, 10.0);
    let carina = [
        p.xm + uni(rng, -2.0, 4.0),
        p.vert_y - p.vert_r - tr_r - uni(rng, 4.0, 10.0),
        hilum_z + uni(rng, 10.0, 20.0),
    ];
    let tr_top = [carina[0], carina[1] - 5.0, p.heart_z[1] + 200.0];
    p.tubes.push(Seg {
        a: tr_top,
        b: carina,
        ra: tr_r,
        rb: tr_r,
        class: TubeClass::Airway,
        label: 0,
    });
    for (hl, f) in [(hilum_l, 1.0), (hilum_r, -1.0)] {
        let end = add(hl, [f * 10.0, 8.0, -8.0]);
        p.tubes.push(Seg {
            a: carina,
            b: end,
            ra: tr_r * 0.7,
            rb: tr_r * 0.55,
            class: TubeClass::Airway,
            label: 0,
        });
    }
}

/// Pulmonary vessels: a random branching tree from each hilum into its lung.
fn build_lung_vessels<R: Rng>(p: &mut Patient, rng: &mut R) {
    let hila = p.hila.clone();
    for hil in hila {
        let side = if hil[0] > p.xm { 1.0 } else { -1.0 };
        let mut stack: Vec<(V3, V3, f64, u32)> = Vec::new();
        for _ in 0..7 {
            let d = normalize([
                side * uni(rng, 0.3, 1.0),
                uni(rng, -0.6, 0.6),
                uni(rng, -1.0, 1.0),
            ]);
            stack.push((hil, d, uni(rng, 3.5, 5.0), 0));
        }
        while let Some((start, dir, r, gen)) = stack.pop() {
            let len = uni(rng, 14.0, 28.0) * (1.0 - 0.08 * gen as f64);
            let end = add(start, scale(dir, len));
            let r_end = r * 0.85;
            p.tubes.push(Seg {
                a: start,
                b: end,
                ra: r,
                rb: r_end,
                class: TubeClass::LungVessel,
                label: 0,
            });
            if gen < 6 && r_end > 0.5 {
                for _ in 0..2 {
                    let axis = perpendicular(dir);
                    let axis = rotate(axis, dir, uni(rng, 0.0, 2.0 * PI));
                    let nd = normalize(rotate(dir, axis, uni(rng, 0.3, 0.7)));
                    stack.push((end, nd, r_end * uni(rng, 0.7, 0.85), gen + 1));
                }
            }
        }
    }
}

fn calc_sphere(center: V3, main_axis: V3, radii: [f64; 3], peak: f64) -> Calc {
    let a0 = normalize(main_axis);
    let a1 = perpendicular(a0);
    let a2 = cross(a0, a1);
    Calc {
        center,
        axes: [a0, a1, a2],
        radii,
        peak_hu: peak,
    }
}

/// Minimum distance from `q` to any coronary tube surface.
fn coronary_clearance(p: &Patient, q: V3) -> f64 {
    p.tubes
        .iter()
        .filter(|t| t.class == TubeClass::Coronary)
        .map(|t| t.signed_distance(q))
        .fold(f64::INFINITY, f64::min)
}

/// Gap (mm) kept between a non-coronary calcification's extent and every coronary's wall.
/// Calcium touching a coronary is, on the image, calcium of that coronary (a reader and the
/// scoring convention count it), so a distractor drawn there would be truth that contradicts
/// the picture. Near the ostia the distractors still come within this gap of the vessels.
const CORONARY_GAP_MM: f64 = 1.5;

fn build_distractors<R: Rng>(p: &mut Patient, rng: &mut R, h: f64) {
    let heart = p.heart.clone();
    let age = uni(rng, 0.0, 1.0).max(h * 0.5);
    let root = p.aorta_root;
    let root_r = p.aorta_root_r;
    let mut out = Vec::new();

    // Aortic valve: nodules on the cusps just below the coronary ostia.
    if rng.gen_bool(0.35 + 0.4 * age) {
        let k = rng.gen_range(1..=4);
        for _ in 0..k {
            let ang = uni(rng, 0.0, 2.0 * PI);
            let mut rr = root_r * uni(rng, 0.3, 0.7);
            let dz = uni(rng, -9.0, -2.0);
            let s = uni(rng, 1.0, 3.5);
            // Clear of the coronaries (see CORONARY_GAP_MM): towards the root's axis.
            let at = |rr: f64| add(root, [rr * ang.cos(), rr * ang.sin(), dz]);
            while rr > 0.0 && coronary_clearance(p, at(rr)) <= s + CORONARY_GAP_MM {
                rr -= 0.5;
            }
            let c = at(rr.max(0.0));
            out.push(Distractor {
                kind: DistractorKind::AorticValve,
                calc: calc_sphere(
                    c,
                    [ang.cos(), ang.sin(), 0.3],
                    [s, s * 0.7, s * 0.6],
                    uni(rng, 250.0, 1200.0),
                ),
            });
        }
    }
    // Aortic wall: plaques on the root/ascending wall (near the ostia), arch and descending.
    if rng.gen_bool(0.45 + 0.5 * age) {
        let aorta = p.aorta.segments(TubeClass::GreatVessel, 0);
        let k = rng.gen_range(1..=7);
        for _ in 0..k {
            let seg = &aorta[rng.gen_range(0..aorta.len())];
            let t = uni(rng, 0.0, 1.0);
            let c0 = lerp(seg.a, seg.b, t);
            let r = seg.ra + (seg.rb - seg.ra) * t;
            let tan = normalize(sub(seg.b, seg.a));
            let mut rad_dir = rotate(perpendicular(tan), tan, uni(rng, 0.0, 2.0 * PI));
            let len = uni(rng, 1.5, 6.0);
            let calc = calc_sphere(
                c0,
                tan,
                [len, len * uni(rng, 0.6, 1.0), uni(rng, 0.7, 1.5)],
                uni(rng, 200.0, 1100.0),
            );
            // Clear of the coronaries (see CORONARY_GAP_MM): round the wall in 15° steps, so
            // a plaque by an ostium stays beside it; none of the 24 places clear: no plaque.
            let mut c = add(c0, scale(rad_dir, r - 0.8));
            let mut turns = 0;
            while coronary_clearance(p, c) <= len + CORONARY_GAP_MM && turns < 24 {
                rad_dir = rotate(rad_dir, tan, PI / 12.0);
                c = add(c0, scale(rad_dir, r - 0.8));
                turns += 1;
            }
            if turns == 24 {
                continue;
            }
            // Rotate the thin axis to the wall normal.
            let a2 = rad_dir;
            let a0 = tan;
            let a1 = cross(a2, a0);
            out.push(Distractor {
                kind: DistractorKind::AorticWall,
                calc: Calc {
                    center: c,
                    axes: [a0, a1, a2],
                    ..calc
                },
            });
        }
    }
    // Mitral annulus: an arc of the ring in the AV plane on the left-ventricular side, its
    // posterior part close to the LCX in the left AV groove.
    if rng.gen_bool(0.3 + 0.4 * age) {
        let ring_c = heart.to_patient([heart.u_av + 4.0, -0.1 * heart.b, 0.42 * heart.cc]);
        let ring_r = uni(rng, 12.0, 16.0);
        let g0 = uni(rng, 0.2, 0.6) * PI;
        let span = uni(rng, 0.3, 1.1) * PI;
        let thick = uni(rng, 1.2, 2.5);
        let peak = uni(rng, 300.0, 1100.0);
        let n = (span * ring_r / (thick * 1.5)).ceil() as usize;
        for i in 0..=n {
            let g = g0 + span * (i as f64 / n as f64 - 0.5);
            let dir = add(scale(heart.es, g.cos()), scale(heart.en, g.sin()));
            let mut c = add(ring_c, scale(dir, ring_r));
            // Keep it off the LCX: move inwards until the bead clears every coronary.
            for _ in 0..20 {
                if coronary_clearance(p, c) > thick * 1.3 + CORONARY_GAP_MM {
                    break;
                }
                c = add(c, scale(dir, -1.0));
            }
            let tan = cross(heart.eu, dir);
            out.push(Distractor {
                kind: DistractorKind::MitralAnnulus,
                calc: calc_sphere(
                    c,
                    tan,
                    [thick * 1.3, thick, thick],
                    peak * uni(rng, 0.8, 1.0),
                ),
            });
        }
    }
    // Costal cartilage calcification next to the sternum, sometimes against the heart.
    if rng.gen_bool(0.3 + 0.4 * age) {
        let k = rng.gen_range(1..=4);
        for _ in 0..k {
            let side = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            let c = [
                p.xm + side * uni(rng, 15.0, 40.0),
                p.cav_c[1] - p.cav_ay_ant - uni(rng, 1.0, 5.0),
                uni(rng, p.heart_z[0], p.heart_z[1]),
            ];
            let s = uni(rng, 1.0, 3.0);
            out.push(Distractor {
                kind: DistractorKind::CostalCartilage,
                calc: calc_sphere(
                    c,
                    [side, 0.0, -0.5],
                    [s * 2.0, s, s],
                    uni(rng, 200.0, 700.0),
                ),
            });
        }
    }
    // A calcified mediastinal/hilar lymph node.
    if rng.gen_bool(0.2) {
        let c = add(
            root,
            [
                uni(rng, -10.0, 30.0),
                uni(rng, 20.0, 40.0),
                uni(rng, 10.0, 40.0),
            ],
        );
        let s = uni(rng, 2.0, 5.0);
        out.push(Distractor {
            kind: DistractorKind::LymphNode,
            calc: calc_sphere(
                c,
                [1.0, 0.0, 0.0],
                [s, s * 0.8, s * 0.9],
                uni(rng, 300.0, 1000.0),
            ),
        });
    }
    p.distractors = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Aortic wall and valve plaques and the mitral annulus come near the coronaries (by the
    /// ostia, along the AV groove) but never touch them: calcium touching a coronary would be
    /// that coronary's calcium on the image, whatever the truth says.
    #[test]
    fn distractors_near_the_heart_keep_clear_of_the_coronaries() {
        let mut near = 0;
        for seed in 0..150 {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let p = draw_patient(&mut rng, 0.5);
            for d in &p.distractors {
                let checked = matches!(
                    d.kind,
                    DistractorKind::AorticWall
                        | DistractorKind::AorticValve
                        | DistractorKind::MitralAnnulus
                );
                if !checked {
                    continue;
                }
                let extent = d.calc.radii.iter().cloned().fold(0.0, f64::max);
                let gap = coronary_clearance(&p, d.calc.center) - extent;
                assert!(
                    gap > CORONARY_GAP_MM - 1e-9,
                    "seed {seed}: {:?} gap {gap:.2} mm",
                    d.kind
                );
                near += usize::from(gap < 5.0);
            }
        }
        assert!(
            near > 10,
            "only {near} distractors within 5 mm of a coronary: too easy"
        );
    }

    #[test]
    fn heart_axis_points_anterior_left_inferior() {
        for seed in 0..20 {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let p = draw_patient(&mut rng, 0.5);
            let h = &p.heart;
            assert!(
                h.eu[0] > 0.3 && h.eu[1] < -0.2 && h.eu[2] < -0.1,
                "{:?}",
                h.eu
            );
            // Apex left of the aortic root, root above the heart centre.
            let apex = h.surface(PI, 0.0, 0.0);
            assert!(apex[0] > p.aorta_root[0] && p.aorta_root[2] > h.c[2]);
        }
    }

    #[test]
    fn coronaries_run_inside_the_pericardium_and_leave_the_root_on_the_right_sides() {
        for seed in 0..20 {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let p = draw_patient(&mut rng, 0.5);
            let h = &p.heart;
            for c in &p.coronaries {
                for q in &c.path.points {
                    assert!(
                        h.rho2(h.to_local(*q), 0.0) < 1.0,
                        "vessel {} leaves the sac",
                        c.label
                    );
                }
            }
            let lm0 = p.coronaries[0].path.points[0];
            let rca0 = p.coronaries[3].path.points[0];
            assert!(lm0[0] > rca0[0], "LM ostium must be left of the RCA ostium");
            // LM is short (5–25 mm).
            let l = p.coronaries[0].path.length();
            assert!((3.0..30.0).contains(&l), "LM length {l}");
        }
    }
}
