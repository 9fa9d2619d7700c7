//! ONNX Runtime engine (feature `onnxruntime`): agreement with tract on the fixtures, hash
//! refusal, and a clear `Unavailable` when the library cannot be had. Needs ORT_DYLIB_PATH
//! (see README.md); without it the tests that need the library print why they skip.
#![cfg(feature = "onnxruntime")]

mod common;

use std::path::PathBuf;

use cacd_models::{
    load_engine, Engine, EngineKind, EngineOptions, InPlaceInput, Memory, ModelError, Tensor,
};
use common::*;

/// tract vs ORT, fp32: both f32 with different summation orders (measured ~1e-7).
const FP32_BOUND: f32 = 1e-4;

fn ort_library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            println!("skipped: ORT_DYLIB_PATH is not set (point it at libonnxruntime.so >= 1.17)");
            None
        }
    }
}

fn engines(variant: &str, precision: &str, lib: PathBuf) -> (Box<dyn Engine>, Box<dyn Engine>) {
    let (entry, dir) = fixture_entry(variant, precision);
    let opts = EngineOptions {
        threads: 2,
        ort_dylib: Some(lib),
        ..EngineOptions::default()
    };
    let ort = load_engine(EngineKind::OnnxRuntime, &entry, &dir, &opts)
        .unwrap_or_else(|e| panic!("ORT {variant} {precision}: {e}"));
    let tract = load_engine(EngineKind::Tract, &entry, &dir, &opts)
        .unwrap_or_else(|e| panic!("tract {variant} {precision}: {e}"));
    (ort, tract)
}

fn run_both(variant: &str, precision: &str) -> Option<(Tensor, Tensor)> {
    let lib = ort_library()?;
    let (ort, tract) = engines(variant, precision, lib);
    assert_eq!(ort.engine_name(), "ort-cpu");
    let (entry, _) = fixture_entry(variant, precision);
    let input = fixture_input(&entry);
    let a = ort.run(&input).unwrap_or_else(|e| panic!("{e}"));
    let b = tract.run(&input).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.shape, vec![1, 5, 16, 32, 32]);
    assert_eq!(a.shape, b.shape);
    assert!(softmax_sum_error(&a) < 1e-5);
    Some((a, b))
}

fn agree_fp32(variant: &str) {
    let Some((a, b)) = run_both(variant, "fp32") else {
        return;
    };
    let diff = max_diff(&a.data, &b.data);
    println!("{variant} fp32: ORT vs tract max abs diff {diff:.2e}");
    assert!(
        diff < FP32_BOUND,
        "{variant} fp32: ORT and tract differ by {diff}"
    );
    // The Rust ORT engine gives what the Python ORT gave when the fixtures were made.
    let (entry, _) = fixture_entry(variant, "fp32");
    let (stride, reference) = reference(&entry.file);
    let d = max_diff_sampled(&a.data, stride, &reference);
    assert!(
        d < 1e-5,
        "{variant} fp32: ORT differs from reference.json by {d}"
    );
}

/// int8 Q/DQ: ONNX Runtime runs the quantised convolutions in integer kernels chosen by CPU,
/// and they do not all agree. On the CPU that wrote reference.json (Intel, AVX-512) ORT and
/// tract met to ~1e-7; on an AMD EPYC with AVX2 only, ORT's results moved by up to 5e-3 from
/// reference.json and 9e-3 from tract on 90 % of the outputs (AVX2's u8×s8 multiply-add
/// saturates 16-bit pair sums, which ONNX Runtime documents for U8S8 models). So the check
/// is relative: ORT int8 must be nearer tract int8 than either is to fp32 — an engine that
/// skipped the Q/DQ would be at the fp32 distance — and a valid distribution.
fn agree_int8(variant: &str) {
    let Some((a, b)) = run_both(variant, "int8") else {
        return;
    };
    let Some((fp32, _)) = run_both(variant, "fp32") else {
        return;
    };
    let engines = mean_diff(&a.data, &b.data);
    let quantisation = mean_diff(&b.data, &fp32.data);
    println!(
        "{variant} int8: ORT vs tract mean |diff| {engines:.2e} (max {:.2e}); tract int8 vs fp32 \
         mean {quantisation:.2e}",
        max_diff(&a.data, &b.data)
    );
    assert!(
        quantisation > 5e-4,
        "{variant}: int8 and fp32 fixtures nearly equal"
    );
    assert!(
        engines < 0.6 * quantisation,
        "{variant} int8: ORT vs tract {engines:.2e} is not clearly under int8 vs fp32 {quantisation:.2e}"
    );
}

#[test]
fn fp32_resize_agrees_with_tract() {
    agree_fp32("resize");
}

#[test]
fn fp32_convtranspose_agrees_with_tract() {
    agree_fp32("convt");
}

#[test]
fn int8_resize_agrees_with_tract() {
    agree_int8("resize");
}

#[test]
fn int8_convtranspose_agrees_with_tract() {
    agree_int8("convt");
}

#[test]
fn tampered_model_is_refused() {
    // Verification comes before the library is even looked for, so this needs no ORT.
    let (entry, dir) = fixture_entry("convt", "fp32");
    let tmp = tampered_copy(&entry, &dir);
    let opts = EngineOptions {
        threads: 1,
        ort_dylib: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..EngineOptions::default()
    };
    match load_engine(EngineKind::OnnxRuntime, &entry, tmp.path(), &opts) {
        Err(ModelError::HashMismatch { .. }) => {}
        Err(e) => panic!("expected HashMismatch, got {e}"),
        Ok(_) => panic!("a tampered model was loaded"),
    }
}

#[test]
fn missing_library_is_unavailable() {
    let (entry, dir) = fixture_entry("resize", "fp32");
    let opts = EngineOptions {
        threads: 1,
        ort_dylib: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..EngineOptions::default()
    };
    match load_engine(EngineKind::OnnxRuntime, &entry, &dir, &opts) {
        // Another test in this process may already have loaded the real library, which then
        // stays in use (ort loads one per process).
        Ok(engine) => assert!(ort_library().is_some() && engine.engine_name() == "ort-cpu"),
        Err(ModelError::Unavailable(name, reason)) => {
            assert_eq!(name, "ort-cpu");
            assert!(
                reason.contains("/nonexistent/libonnxruntime.so"),
                "{reason}"
            );
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
}

/// An input read where it lies (`run_in_place`, the path the GPU preprocessing's device buffer
/// takes with the CUDA and TensorRT providers) gives what a `Tensor` run gives, bit for bit;
/// here over host memory, the variant CI can run: the same tensor-over-raw-memory code with a
/// CPU memory description. A wrong shape is refused before anything is read, and CUDA memory
/// is refused by an engine whose first provider is the CPU (it could not read it in place).
#[test]
fn input_read_in_place_gives_what_a_tensor_run_gives() {
    let Some(lib) = ort_library() else { return };
    for precision in ["fp32", "int8"] {
        let (ort, tract) = engines("resize", precision, lib.clone());
        let (entry, _) = fixture_entry("resize", precision);
        let input = fixture_input(&entry);
        let expected = ort.run(&input).unwrap_or_else(|e| panic!("{e}"));
        assert!(ort.reads_in_place(Memory::Host));
        assert!(!ort.reads_in_place(Memory::Cuda { device: 0 }));
        assert!(!tract.reads_in_place(Memory::Host));

        let mut data = input.data.clone();
        let in_place = InPlaceInput {
            memory: Memory::Host,
            address: data.as_mut_ptr() as u64,
            shape: input.shape.clone(),
        };
        // SAFETY: `data` holds the whole input and outlives the call; nothing writes to it.
        let got = unsafe { ort.run_in_place(&in_place) }.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.shape, expected.shape);
        assert_eq!(
            got.data, expected.data,
            "{precision}: in place differs from a tensor run"
        );
        assert_eq!(
            data, input.data,
            "{precision}: the engine wrote to its input"
        );

        let mut wrong = in_place.clone();
        wrong.shape[2] += 1;
        // SAFETY: refused on the shape before the address is read.
        let err = unsafe { ort.run_in_place(&wrong) }.unwrap_err();
        assert!(err.to_string().contains("input shape"), "{err}");
        let cuda = InPlaceInput {
            memory: Memory::Cuda { device: 0 },
            ..in_place.clone()
        };
        // SAFETY: refused (the CPU provider cannot read CUDA memory) before the address is read.
        let err = unsafe { ort.run_in_place(&cuda) }.unwrap_err();
        assert!(err.to_string().contains("in place"), "{err}");
        // SAFETY: tract refuses every in-place input without reading it.
        assert!(unsafe { tract.run_in_place(&in_place) }.is_err());
    }
}

/// The `tensorrt` engine on a library with only the CPU provider (the PyPI wheel CI uses):
/// TensorRT and CUDA are planned, found missing and skipped; the session runs on the CPU
/// through the same I/O-binding code the GPU uses, reports `ort-cpu`, and gives what the plain
/// CPU engine gives, bit for bit, in both precisions.
#[cfg(feature = "tensorrt")]
#[test]
fn tensorrt_engine_falls_back_to_the_cpu_provider_through_the_binding_path() {
    let Some(lib) = ort_library() else { return };
    let cache = tempfile::tempdir().unwrap();
    for precision in ["fp32", "int8"] {
        let (entry, dir) = fixture_entry("resize", precision);
        let mut opts = EngineOptions {
            threads: 2,
            ort_dylib: Some(lib.clone()),
            ..EngineOptions::default()
        };
        opts.gpu.trt_cache_dir = Some(cache.path().to_path_buf());
        let trt = load_engine(EngineKind::TensorRt, &entry, &dir, &opts)
            .unwrap_or_else(|e| panic!("tensorrt engine {precision}: {e}"));
        let cpu = load_engine(EngineKind::OnnxRuntime, &entry, &dir, &opts)
            .unwrap_or_else(|e| panic!("ORT {precision}: {e}"));
        // Where the library does have TensorRT (a GPU machine) the fallback is not what
        // happens; the CI wheel has none.
        use ort::ep::ExecutionProvider;
        if ort::ep::TensorRT::is_available().unwrap_or(false) {
            println!(
                "this ONNX Runtime has TensorRT: engine {}",
                trt.engine_name()
            );
            continue;
        }
        assert_eq!(trt.engine_name(), "ort-cpu", "{precision}");
        let input = fixture_input(&entry);
        let a = trt.run(&input).unwrap_or_else(|e| panic!("{e}"));
        let b = cpu.run(&input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.shape, b.shape);
        assert_eq!(
            a.data, b.data,
            "{precision}: binding path differs from plain run"
        );
        // Run twice: the binding is rebuilt per run and must not keep stale outputs.
        let again = trt.run(&input).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.data, a.data);
    }
}
