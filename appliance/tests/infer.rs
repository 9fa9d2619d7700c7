//! The committed models through the real inference path (tract), on phantoms with known truth.
//!
//! * `one_phantom_per_burden_scores_in_the_true_category` — the acceptance check run by
//!   `cargo test`: four held-out phantoms (seeds outside training and the benchmark).
//! * `int8_stays_close_to_fp32` — both precisions on one phantom; totals within a stated bound.
//! * `six_class_network_scores_vessels_only` — the six-class fixture network (`models/six-class/`)
//!   through the same path: no non-coronary label in the mask, the four categories right.
//! * `heldout_accuracy` (ignored; `cargo test --release -p cacd --test infer -- --ignored
//!   --nocapture`) — the quick accuracy report on `CACD_EVAL_SEEDS` (default 90000..90012)
//!   used while training; prints category agreement, relative errors and false positives.
//!
//! `CACD_MODEL_DIR` overrides the model folder (default: the repository's `models/`).

use cacd::infer::Segmenter;
use cacd::phantom::{self, Burden, PhantomSpec};
use cacd::score::{self, risk_category};
use cacd_models::{EngineKind, EngineOptions};
use std::path::PathBuf;
use std::time::Instant;

fn model_dir() -> PathBuf {
    std::env::var_os("CACD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

fn segmenter(precision: &str) -> Segmenter {
    Segmenter::load(
        &model_dir(),
        precision,
        EngineKind::Tract,
        &EngineOptions::default(),
    )
    .expect("committed models load and verify")
}

struct Run {
    truth: f64,
    predicted: f64,
    truth_cat: &'static str,
    cat: &'static str,
    ms: u128,
    /// Distance (mm) from the located heart box centre to the phantom's heart centre.
    heart_err_mm: f64,
}

fn run(seg: &Segmenter, spec: &PhantomSpec) -> Run {
    let ph = phantom::generate(spec);
    let t = Instant::now();
    let s = seg
        .segment(
            &ph.volume,
            &cacd::heart::outline(&ph.volume).expect("heart outlined"),
        )
        .expect("heart found");
    let ms = t.elapsed().as_millis();
    let sc = score::score(
        ph.volume.hu.view(),
        s.mask.view(),
        ph.volume.geometry.spacing,
    );
    Run {
        truth: ph.truth.agatston_total,
        predicted: sc.agatston_total,
        truth_cat: risk_category(ph.truth.agatston_total),
        cat: risk_category(sc.agatston_total),
        ms,
        heart_err_mm: (0..3)
            .map(|a| (s.heart.centre_mm[a] - ph.info.heart_center_mm[a]).powi(2))
            .sum::<f64>()
            .sqrt(),
    }
}

/// Held-out seeds: 95000+ are used neither for training (0–9999), nor for the quick eval and
/// the refine calibration (90000+), nor by the benchmark (100000+).
// Was ignored until the refine stage's noise and confidence rules: before them the Low
// phantom of seed 95001 scored 104.3 against a truth of 63.9. bench/accuracy measures how
// often the category is missed over 60 phantoms (BENCHMARKS.md).
#[test]
fn one_phantom_per_burden_scores_in_the_true_category() {
    let seg = segmenter("int8");
    for (i, burden) in [Burden::None, Burden::Low, Burden::Moderate, Burden::High]
        .into_iter()
        .enumerate()
    {
        let r = run(&seg, &PhantomSpec::new(95_000 + i as u64, burden));
        eprintln!(
            "{burden:?}: truth {:.1} ({}), predicted {:.1} ({}), {} ms",
            r.truth, r.truth_cat, r.predicted, r.cat, r.ms
        );
        if burden == Burden::None {
            assert!(
                r.predicted <= 10.0,
                "calcium-free phantom scored {:.1}",
                r.predicted
            );
        } else {
            assert_eq!(
                r.cat, r.truth_cat,
                "{burden:?}: {:.1} vs truth {:.1}",
                r.predicted, r.truth
            );
        }
    }
}

#[test]
fn int8_stays_close_to_fp32() {
    let spec = PhantomSpec::new(95_010, Burden::Moderate);
    let a = run(&segmenter("fp32"), &spec);
    let b = run(&segmenter("int8"), &spec);
    eprintln!(
        "fp32 {:.1}, int8 {:.1}, truth {:.1}",
        a.predicted, b.predicted, a.truth
    );
    // Bound: 10 % of the fp32 total or 10 Agatston units, whichever is larger (measured on
    // seeds 90000..90012: int8 − fp32 within −11 … +20 units, ≤ 7 %).
    let bound = (0.10 * a.predicted).max(10.0);
    assert!(
        (a.predicted - b.predicted).abs() <= bound,
        "fp32 {:.1} vs int8 {:.1}",
        a.predicted,
        b.predicted
    );
}

#[test]
#[ignore = "accuracy report for model development; slow"]
fn heldout_accuracy() {
    let seeds = std::env::var("CACD_EVAL_SEEDS").unwrap_or_else(|_| "90000..90012".into());
    let (a, b) = cacd::train_data::parse_seed_range(&seeds).expect("CACD_EVAL_SEEDS is A..B");
    let precision = std::env::var("CACD_EVAL_PRECISION").unwrap_or_else(|_| "int8".into());
    let seg = segmenter(&precision);
    let burdens = [Burden::None, Burden::Low, Burden::Moderate, Burden::High];
    let (mut agree, mut n, mut fp_none) = (0, 0, 0);
    let mut rel = Vec::new();
    for seed in a..b {
        let burden = burdens[(seed % 4) as usize];
        let r = run(&seg, &PhantomSpec::new(seed, burden));
        n += 1;
        agree += (r.cat == r.truth_cat) as usize;
        if burden == Burden::None && r.predicted > 10.0 {
            fp_none += 1;
        }
        if r.truth > 0.0 {
            rel.push((r.predicted - r.truth) / r.truth);
        }
        eprintln!(
            "seed {seed} {burden:?}: truth {:.1} ({}) predicted {:.1} ({}) {} ms, heart centre off by {:.1} mm",
            r.truth, r.truth_cat, r.predicted, r.cat, r.ms, r.heart_err_mm
        );
    }
    rel.sort_by(|x, y| x.total_cmp(y));
    let med = rel.get(rel.len() / 2).copied().unwrap_or(0.0);
    let mean_abs = rel.iter().map(|r| r.abs()).sum::<f64>() / rel.len().max(1) as f64;
    eprintln!(
        "{precision}: category agreement {agree}/{n}, median relative error {med:+.3}, mean |relative error| {mean_abs:.3}, none-burden > 10: {fp_none}"
    );
}

/// `Segmenter::use_gpu_preprocessing`: where a GPU is usable (feature `cuda`, a device) the
/// study's resampling and mask mapping run there and give the CPU path's mask voxel for voxel;
/// where none is (CI), the call says so and the same segmenter keeps the CPU path.
#[test]
fn gpu_preprocessing_gives_the_cpu_mask_or_falls_back_to_the_cpu() {
    let spec = PhantomSpec {
        thickness_mm: Some(3.0),
        ..PhantomSpec::new(95_010, Burden::Moderate)
    };
    let ph = phantom::generate(&spec);
    let cpu = segmenter("fp32");
    assert_eq!(cpu.preprocessing_device(), "cpu");
    let mut gpu = segmenter("fp32");
    let on = gpu.use_gpu_preprocessing();
    assert_eq!(gpu.preprocessing_device(), if on { "gpu" } else { "cpu" });
    if !cfg!(feature = "cuda-base") {
        assert!(
            !on,
            "a build without the cuda feature cannot preprocess on a GPU"
        );
    }
    println!("GPU preprocessing: {}", gpu.preprocessing_device());
    let a = cpu
        .segment(
            &ph.volume,
            &cacd::heart::outline(&ph.volume).expect("heart outlined"),
        )
        .expect("heart found");
    let b = gpu
        .segment(
            &ph.volume,
            &cacd::heart::outline(&ph.volume).expect("heart outlined"),
        )
        .expect("heart found");
    assert_eq!(a.heart.centre_mm, b.heart.centre_mm);
    assert!(a.mask == b.mask, "GPU and CPU masks differ");
}

/// A six-class calcium network (background, four vessels, non-coronary; `models/six-class/`,
/// trained by models/training/README.md "A six-class segmenter", not the shipped one) through
/// the same path: the engine accepts its labels, the mask never carries the non-coronary
/// label, and on the four held-out phantoms of the acceptance test it gets the categories.
#[test]
fn six_class_network_scores_vessels_only() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/six-class");
    let seg = Segmenter::load(&dir, "int8", EngineKind::Tract, &EngineOptions::default())
        .expect("six-class models load and verify");
    assert_eq!(seg.calcium_entry().labels.len(), 6);
    for (i, burden) in [Burden::None, Burden::Low, Burden::Moderate, Burden::High]
        .into_iter()
        .enumerate()
    {
        let ph = phantom::generate(&PhantomSpec::new(95_000 + i as u64, burden));
        let s = seg
            .segment(
                &ph.volume,
                &cacd::heart::outline(&ph.volume).expect("heart outlined"),
            )
            .expect("heart found");
        let labels: std::collections::BTreeSet<u8> = s.mask.iter().copied().collect();
        assert!(
            labels.iter().all(|&l| l <= 4),
            "{burden:?}: mask labels {labels:?}"
        );
        assert!(s.calcium_prob.values().all(|p| (0.0..=1.0).contains(p)));
        let sc = score::score(
            ph.volume.hu.view(),
            s.mask.view(),
            ph.volume.geometry.spacing,
        );
        eprintln!(
            "{burden:?}: truth {:.1}, six-class {:.1}",
            ph.truth.agatston_total, sc.agatston_total
        );
        assert_eq!(
            risk_category(sc.agatston_total),
            risk_category(ph.truth.agatston_total),
            "{burden:?}: {:.1} vs truth {:.1}",
            sc.agatston_total,
            ph.truth.agatston_total
        );
    }
}
