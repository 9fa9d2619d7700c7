//! ONNX Runtime engine given files that are not ONNX Runtime: a clear `Unavailable`, no panic.
//! A test binary of its own, because ort keeps the first library it loads for the whole
//! process and these tests must run before any real one is loaded.
#![cfg(feature = "onnxruntime")]

mod common;

use std::path::PathBuf;

use cacd_models::{load_engine, EngineKind, EngineOptions, ModelError};
use common::*;

fn unavailable_reason(lib: PathBuf) -> String {
    let (entry, dir) = fixture_entry("resize", "fp32");
    let opts = EngineOptions {
        threads: 1,
        ort_dylib: Some(lib),
        ..EngineOptions::default()
    };
    match load_engine(EngineKind::OnnxRuntime, &entry, &dir, &opts) {
        Err(ModelError::Unavailable(name, reason)) => {
            assert_eq!(name, "ort-cpu");
            reason
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("loaded ONNX Runtime from a file that is not one"),
    }
}

#[test]
fn not_a_library_and_not_onnxruntime_are_unavailable() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = tmp.path().join("libonnxruntime.so");
    std::fs::write(&text, "not a shared object").unwrap_or_else(|e| panic!("{e}"));
    let reason = unavailable_reason(text);
    assert!(reason.contains("cannot load ONNX Runtime"), "{reason}");

    // A real shared library that is not ONNX Runtime.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    match libc {
        Some(libc) => {
            let reason = unavailable_reason(libc);
            assert!(reason.contains("OrtGetApiBase"), "{reason}");
        }
        None => println!("skipped the libc case: no libc.so.6 at the usual paths"),
    }
}
