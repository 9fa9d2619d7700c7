//! `cacd train-data` (hidden): model-grid training arrays from phantoms, made by exactly the
//! preprocessing functions inference uses, so the Python side never resamples anything.
//!
//! For each seed, in `OUT/s<seed>/`:
//! * `coarse_x.npy` `[1, D, H, W]` f32 — heart locator input;
//! * `coarse_y.npy` `[D, H, W]` u8 — heart mask on the coarse grid;
//! * `fine_x.npy` `[C, D, H, W]` f32 — calcium segmenter input, the crop centred on the
//!   heart box of the *true* coarse heart mask (found as inference finds it) plus a random
//!   jitter, so training covers the locator's error;
//! * `fine_y.npy` `[D, H, W]` u8 — vessel labels on the fine grid (footprint rule); with
//!   `--non-coronary-class` also [`NON_CORONARY_CLASS`] on the phantom's distractor
//!   calcifications where no vessel label is;
//! * `meta.json` — burden, slice spacing, truth total, jitter, crop centre.
//!
//! `OUT/grids.json` records the two grids used; `models/training/export.py` copies them into
//! the manifest so training and inference share one definition.
//!
//! Seeds ≥ 100000 are the accuracy benchmark's and are refused here.

use crate::phantom::{self, Burden, PhantomSpec};
use crate::preprocess::{self, GridSpec};
use cacd_models::{Manifest, Tensor};
use ndarray::{Array3, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// First seed of the benchmark range; never used for training.
pub const BENCHMARK_SEEDS_FROM: u64 = 100_000;

/// `fine_y` label of non-coronary calcification (the phantom's distractors) when
/// [`TrainDataOptions::non_coronary_class`] is set: a class of its own, so the segmenter is
/// taught what an ostial aortic-wall plaque is instead of only that it is not a vessel.
pub use crate::infer::NON_CORONARY_CLASS;

#[derive(Debug, thiserror::Error)]
pub enum TrainDataError {
    #[error(
        "seed range {0}..{1} is empty or reaches the benchmark seeds (≥ {BENCHMARK_SEEDS_FROM})"
    )]
    Seeds(u64, u64),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error(transparent)]
    Preprocess(#[from] preprocess::PreprocessError),
}

/// The grids of docs/ARCHITECTURE.md, used until a manifest exists to take them from.
pub fn default_grids() -> (GridSpec, GridSpec) {
    let heart = GridSpec {
        spacing: [4.0, 4.0, 4.0],
        shape: [64, 96, 96],
        channels: 1,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
    };
    let calcium = GridSpec {
        spacing: [2.0, 0.8, 0.8],
        shape: [64, 192, 192],
        channels: 4,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
    };
    (heart, calcium)
}

/// The grids of an existing manifest's fp32 heart and calcium entries.
pub fn grids_from_manifest(path: &Path) -> Result<(GridSpec, GridSpec), TrainDataError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let m: Manifest = toml::from_str(&text).map_err(|e| TrainDataError::Manifest(e.to_string()))?;
    let find = |role: &str| {
        m.models
            .iter()
            .find(|e| e.role == role && e.precision == "fp32")
            .ok_or_else(|| TrainDataError::Manifest(format!("no fp32 entry with role {role}")))
    };
    Ok((
        GridSpec::from_entry(find("heart")?)?,
        GridSpec::from_entry(find("calcium")?)?,
    ))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainDataError {
    TrainDataError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Options of one `train-data` run.
#[derive(Debug, Clone)]
pub struct TrainDataOptions {
    pub seeds: (u64, u64),
    pub out: PathBuf,
    /// Largest crop-centre jitter per axis (mm), uniform in ±J.
    pub jitter_mm: f64,
    pub heart: GridSpec,
    pub calcium: GridSpec,
    /// Write the distractors as [`NON_CORONARY_CLASS`] into `fine_y`.
    pub non_coronary_class: bool,
}

#[derive(Serialize)]
struct GridJson<'a> {
    spacing_mm: [f64; 3],
    shape: [usize; 3],
    channels: usize,
    hu_clip: [f32; 2],
    hu_scale: f32,
    labels: &'a [&'a str],
}

fn grid_json<'a>(g: &GridSpec, labels: &'a [&'a str]) -> GridJson<'a> {
    GridJson {
        spacing_mm: g.spacing,
        shape: g.shape,
        channels: g.channels,
        hu_clip: g.hu_clip,
        hu_scale: g.hu_scale,
        labels,
    }
}

#[derive(Serialize)]
struct SampleMeta {
    seed: u64,
    burden: Burden,
    slice_spacing_mm: f64,
    pixel_spacing_mm: f64,
    truth_total: f64,
    lesion_voxels_native: usize,
    lesion_voxels_fine: usize,
    jitter_mm: [f64; 3],
    crop_centre_mm: [f64; 3],
    /// Distractor calcifications (aortic wall/valve, mitral annulus, cartilage, lymph node)
    /// as fractional fine-grid indices `[z, y, x]`, for patch sampling.
    distractors_fine: Vec<[f64; 3]>,
    /// Fine voxels labelled [`NON_CORONARY_CLASS`] (0 unless that class was asked for).
    non_coronary_voxels_fine: usize,
}

/// Burden drawn per seed, weighted towards calcium present (the hard cases).
fn draw_burden(rng: &mut ChaCha20Rng) -> Burden {
    match rng.gen_range(0..20) {
        0..=2 => Burden::None,
        3..=8 => Burden::Low,
        9..=14 => Burden::Moderate,
        _ => Burden::High,
    }
}

fn write_npy<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(
    dir: &Path,
    name: &str,
    a: &ndarray::Array<A, D>,
) -> Result<(), TrainDataError> {
    let p = dir.join(name);
    ndarray_npy::write_npy(&p, a).map_err(|e| io_err(&p, e))
}

fn tensor4(t: Tensor) -> Result<Array4<f32>, TrainDataError> {
    let shape = (t.shape[1], t.shape[2], t.shape[3], t.shape[4]);
    Array4::from_shape_vec(shape, t.data)
        .map_err(|e| TrainDataError::Manifest(format!("tensor shape: {e}")))
}

/// Writes one seed's arrays; returns its number of lesion voxels on the fine grid.
pub fn write_seed(seed: u64, opts: &TrainDataOptions) -> Result<usize, TrainDataError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x7472_6169_6e21);
    let burden = draw_burden(&mut rng);
    let ph = phantom::generate(&PhantomSpec::new(seed, burden));
    let vol = &ph.volume;

    let (coarse_x, coarse_grid) = preprocess::coarse_input(vol, &opts.heart);
    let coarse_y = preprocess::mask_to_grid(ph.heart_mask.view(), &coarse_grid);

    // The crop centre as inference would find it from a perfect locator, plus jitter.
    let [d, h, w] = opts.heart.shape;
    let mut prob = Vec::with_capacity(2 * d * h * w);
    prob.extend(coarse_y.iter().map(|&v| 1.0 - v as f32));
    prob.extend(coarse_y.iter().map(|&v| v as f32));
    let prob = Tensor {
        shape: vec![1, 2, d, h, w],
        data: prob,
    };
    let centre = match preprocess::heart_box(&prob, &coarse_grid, vol)? {
        Some(b) => b.centre_mm,
        None => ph.info.heart_center_mm,
    };
    let jitter = [0; 3].map(|_: i32| rng.gen_range(-opts.jitter_mm..=opts.jitter_mm));
    let crop_centre = [
        centre[0] + jitter[0],
        centre[1] + jitter[1],
        centre[2] + jitter[2],
    ];
    let (fine_x, fine_grid) = preprocess::fine_input(vol, crop_centre, &opts.calcium);
    let mut fine_y: Array3<u8> = preprocess::labels_to_fine(ph.lesion_labels.view(), &fine_grid);
    let lesion_voxels_fine = fine_y.iter().filter(|&&v| v != 0).count();
    let mut non_coronary_voxels_fine = 0;
    if opts.non_coronary_class {
        // Footprint of the distractors alone; vessel labels keep every voxel they have.
        let nc = ph
            .distractor_mask
            .mapv(|m| if m != 0 { NON_CORONARY_CLASS } else { 0 });
        let nc_fine = preprocess::labels_to_fine(nc.view(), &fine_grid);
        for (y, &n) in fine_y.iter_mut().zip(nc_fine.iter()) {
            if *y == 0 && n != 0 {
                *y = n;
                non_coronary_voxels_fine += 1;
            }
        }
    }

    let dir = opts.out.join(format!("s{seed:05}"));
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    write_npy(&dir, "coarse_x.npy", &tensor4(coarse_x)?)?;
    write_npy(&dir, "coarse_y.npy", &coarse_y)?;
    write_npy(&dir, "fine_x.npy", &tensor4(fine_x)?)?;
    write_npy(&dir, "fine_y.npy", &fine_y)?;
    let distractors_fine = ph
        .info
        .distractors
        .iter()
        .map(|d| {
            let n = vol.geometry.patient_to_index(d.center_mm);
            [0, 1, 2].map(|a| fine_grid.from_native(a, n[a]))
        })
        .collect();
    let meta = SampleMeta {
        seed,
        burden,
        slice_spacing_mm: vol.geometry.spacing[0],
        pixel_spacing_mm: vol.geometry.spacing[2],
        truth_total: ph.truth.agatston_total,
        lesion_voxels_native: ph.lesion_labels.iter().filter(|&&v| v != 0).count(),
        lesion_voxels_fine,
        jitter_mm: jitter,
        crop_centre_mm: crop_centre,
        distractors_fine,
        non_coronary_voxels_fine,
    };
    let p = dir.join("meta.json");
    let text = serde_json::to_string_pretty(&meta).map_err(|e| io_err(&p, e))?;
    std::fs::write(&p, text).map_err(|e| io_err(&p, e))?;
    Ok(lesion_voxels_fine)
}

/// Runs `train-data` over a seed range `[a, b)`; seeds whose folder already holds
/// `meta.json` are skipped, so an interrupted run resumes.
pub fn run(opts: &TrainDataOptions) -> Result<(), TrainDataError> {
    let (a, b) = opts.seeds;
    if a >= b || b > BENCHMARK_SEEDS_FROM {
        return Err(TrainDataError::Seeds(a, b));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| io_err(&opts.out, e))?;
    // The labels the engine checks, plus the non-coronary class when it is written.
    let mut calcium_labels = crate::infer::CALCIUM_LABELS.to_vec();
    if opts.non_coronary_class {
        calcium_labels.push(crate::infer::NON_CORONARY_LABEL);
    }
    let grids = serde_json::json!({
        "heart": grid_json(&opts.heart, &["background", "heart"]),
        "calcium": grid_json(&opts.calcium, &calcium_labels),
    });
    let p = opts.out.join("grids.json");
    let text = serde_json::to_string_pretty(&grids).map_err(|e| io_err(&p, e))?;
    std::fs::write(&p, text).map_err(|e| io_err(&p, e))?;
    for seed in a..b {
        if opts
            .out
            .join(format!("s{seed:05}"))
            .join("meta.json")
            .exists()
        {
            continue;
        }
        let t = std::time::Instant::now();
        let n = write_seed(seed, opts)?;
        eprintln!(
            "seed {seed}: {n} fine lesion voxels, {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Parses `A..B` (half-open).
pub fn parse_seed_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a = a.trim().parse::<u64>().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.trim().parse::<u64>().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_and_benchmark_seeds_are_refused() {
        assert_eq!(parse_seed_range("3..17"), Ok((3, 17)));
        assert!(parse_seed_range("3-17").is_err());
        let (heart, calcium) = default_grids();
        let opts = TrainDataOptions {
            seeds: (99_990, 100_001),
            out: std::env::temp_dir().join("cacd-train-data-refused"),
            jitter_mm: 0.0,
            heart,
            calcium,
            non_coronary_class: false,
        };
        assert!(matches!(run(&opts), Err(TrainDataError::Seeds(..))));
    }

    /// With the non-coronary class the distractors appear as class 5 in fine_y, only where
    /// the plain run has background, and every vessel label stays as it was.
    #[test]
    fn non_coronary_class_labels_distractors_and_keeps_vessels() {
        let (heart, calcium) = default_grids();
        let base = std::env::temp_dir().join(format!("cacd-train-data-nc-{}", std::process::id()));
        let mut with_class = 0;
        for seed in 1..=4u64 {
            let mut fine_y = Vec::new();
            for nc in [false, true] {
                let opts = TrainDataOptions {
                    seeds: (seed, seed + 1),
                    out: base.join(format!("{nc}")),
                    jitter_mm: 0.0,
                    heart: heart.clone(),
                    calcium: calcium.clone(),
                    non_coronary_class: nc,
                };
                write_seed(seed, &opts).expect("seed written");
                let p = opts.out.join(format!("s{seed:05}")).join("fine_y.npy");
                let y: Array3<u8> = ndarray_npy::read_npy(&p).expect("fine_y readable");
                fine_y.push(y);
            }
            let (plain, labelled) = (&fine_y[0], &fine_y[1]);
            let mut fives = 0;
            for (&a, &b) in plain.iter().zip(labelled.iter()) {
                if a != 0 {
                    assert_eq!(a, b, "seed {seed}: a vessel voxel changed");
                } else {
                    assert!(b == 0 || b == NON_CORONARY_CLASS, "seed {seed}: label {b}");
                    fives += usize::from(b == NON_CORONARY_CLASS);
                }
            }
            assert!(plain.iter().all(|&v| v < NON_CORONARY_CLASS));
            with_class += usize::from(fives > 0);
        }
        let _ = std::fs::remove_dir_all(&base);
        assert!(
            with_class > 0,
            "no seed of 1..=4 had a distractor in its crop"
        );
    }
}
