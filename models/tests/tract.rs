//! The tract engine on the committed fixtures: fp32 and int8 Q/DQ, both upsampling variants.
//! Reference values are ONNX Runtime's (reference.json, written by make_fixtures.py).

mod common;

use cacd_models::{load_engine, EngineKind, EngineOptions, ModelError, Tensor};
use common::*;

/// tract fp32 against ORT fp32 on the same model and input: both compute in f32 with
/// different summation orders; on ~100-tap convolutions and softmax outputs in [0, 1] that
/// stays well under 1e-4.
const FP32_BOUND: f32 = 1e-4;
/// tract int8 against ORT int8 on the same Q/DQ graph: measured ~1e-7 (both land on the
/// same quantised values). The bound leaves room for a float sum that falls on a rounding
/// boundary on another CPU and moves one activation by one quantisation step, yet stays
/// well under the int8-vs-fp32 gap (~0.015), so an engine that skipped the Q/DQ would fail.
const INT8_BOUND: f32 = 5e-3;

fn opts(threads: usize) -> EngineOptions {
    EngineOptions {
        threads,
        ort_dylib: None,
        ..EngineOptions::default()
    }
}

fn run_fixture(variant: &str, precision: &str, threads: usize) -> Result<Tensor, ModelError> {
    let (entry, dir) = fixture_entry(variant, precision);
    let engine = load_engine(EngineKind::Tract, &entry, &dir, &opts(threads))?;
    assert_eq!(engine.engine_name(), "tract-cpu");
    engine.run(&fixture_input(&entry))
}

fn check_against_reference(variant: &str, precision: &str, bound: f32) {
    let (entry, _) = fixture_entry(variant, precision);
    let out =
        run_fixture(variant, precision, 1).unwrap_or_else(|e| panic!("{variant} {precision}: {e}"));
    assert_eq!(out.shape, vec![1, 5, 16, 32, 32]);
    assert_eq!(out.data.len(), 5 * 16 * 32 * 32);
    let sum_err = softmax_sum_error(&out);
    assert!(
        sum_err < 1e-5,
        "{variant} {precision}: softmax sums off by {sum_err}"
    );
    assert!(out.data.iter().all(|p| (0.0..=1.0).contains(p)));
    let (stride, reference) = reference(&entry.file);
    let diff = max_diff_sampled(&out.data, stride, &reference);
    println!("{variant} {precision}: tract vs ORT (sampled) max abs diff {diff:.2e}");
    assert!(
        diff < bound,
        "{variant} {precision}: tract differs from ORT by {diff}"
    );
}

#[test]
fn fp32_resize_matches_onnxruntime() {
    check_against_reference("resize", "fp32", FP32_BOUND);
}

#[test]
fn fp32_convtranspose_matches_onnxruntime() {
    check_against_reference("convt", "fp32", FP32_BOUND);
}

#[test]
fn int8_resize_matches_onnxruntime() {
    check_against_reference("resize", "int8", INT8_BOUND);
}

#[test]
fn int8_convtranspose_matches_onnxruntime() {
    check_against_reference("convt", "int8", INT8_BOUND);
}

#[test]
fn int8_stays_close_to_fp32() {
    for variant in VARIANTS {
        let fp32 = run_fixture(variant, "fp32", 1).unwrap_or_else(|e| panic!("{e}"));
        let int8 = run_fixture(variant, "int8", 1).unwrap_or_else(|e| panic!("{e}"));
        let diff = max_diff(&fp32.data, &int8.data);
        println!("{variant}: tract int8 vs fp32 max abs diff {diff:.3}");
        assert!(diff < 0.1, "{variant}: int8 strays {diff} from fp32");
    }
}

#[test]
fn threads_do_not_change_the_result() {
    let one = run_fixture("resize", "fp32", 1).unwrap_or_else(|e| panic!("{e}"));
    let four = run_fixture("resize", "fp32", 4).unwrap_or_else(|e| panic!("{e}"));
    let diff = max_diff(&one.data, &four.data);
    assert!(diff < 1e-6, "4 threads differ from 1 by {diff}");
}

#[test]
fn tampered_model_is_refused() {
    for precision in ["fp32", "int8"] {
        let (entry, dir) = fixture_entry("resize", precision);
        let tmp = tampered_copy(&entry, &dir);
        match load_engine(EngineKind::Tract, &entry, tmp.path(), &opts(1)) {
            Err(ModelError::HashMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, entry.sha256);
                assert_ne!(actual, entry.sha256);
            }
            Err(e) => panic!("expected HashMismatch, got {e}"),
            Ok(_) => panic!("a tampered {precision} model was loaded"),
        }
    }
}

#[test]
fn wrong_input_shape_is_an_error() {
    let (entry, dir) = fixture_entry("resize", "fp32");
    let engine =
        load_engine(EngineKind::Tract, &entry, &dir, &opts(1)).unwrap_or_else(|e| panic!("{e}"));
    let mut input = fixture_input(&entry);
    input.shape[2] = 8;
    assert!(matches!(engine.run(&input), Err(ModelError::Run(_))));
    let mut input = fixture_input(&entry);
    input.data.pop();
    assert!(matches!(engine.run(&input), Err(ModelError::Run(_))));
}

#[test]
fn manifest_disagreeing_with_the_graph_is_a_load_error() {
    let (entry, dir) = fixture_entry("resize", "fp32");
    let mut wrong_name = entry.clone();
    wrong_name.input_name = "image".into();
    let err = load_engine(EngineKind::Tract, &wrong_name, &dir, &opts(1)).err();
    assert!(matches!(err, Some(ModelError::Load { .. })), "{err:?}");

    // Six labels promise six output channels; the graph has five.
    let mut wrong_labels = entry.clone();
    wrong_labels.labels.push("extra".into());
    let err = load_engine(EngineKind::Tract, &wrong_labels, &dir, &opts(1)).err();
    assert!(matches!(err, Some(ModelError::Load { .. })), "{err:?}");
}

#[test]
fn engine_is_shared_across_threads() {
    let (entry, dir) = fixture_entry("convt", "fp32");
    let engine =
        load_engine(EngineKind::Tract, &entry, &dir, &opts(1)).unwrap_or_else(|e| panic!("{e}"));
    let input = fixture_input(&entry);
    let first = engine.run(&input).unwrap_or_else(|e| panic!("{e}"));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| engine.run(&input))).collect();
        for h in handles {
            let out = h.join().unwrap_or_else(|_| panic!("thread panicked"));
            assert_eq!(out.unwrap_or_else(|e| panic!("{e}")).data, first.data);
        }
    });
}
