//! Helpers shared by the cacd-models integration tests: the committed fixtures
//! (tests/fixtures, made by make_fixtures.py) and their deterministic input.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use cacd_models::{Manifest, ModelEntry, Tensor};

/// The two fixture variants: upsampling by ONNX Resize (nearest) and by ConvTranspose.
pub const VARIANTS: [&str; 2] = ["resize", "convt"];

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The manifest of one fixture variant and the folder its files are in.
pub fn fixture_manifest(variant: &str) -> (Manifest, PathBuf) {
    let path = fixture_dir().join(format!("manifest_{variant}.toml"));
    let manifest = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (manifest, Manifest::model_dir(&path))
}

pub fn fixture_entry(variant: &str, precision: &str) -> (ModelEntry, PathBuf) {
    let (manifest, dir) = fixture_manifest(variant);
    let entry = manifest
        .find("calcium", precision)
        .unwrap_or_else(|| panic!("fixture {variant} has no {precision} model"))
        .clone();
    (entry, dir)
}

/// Same input as make_fixtures.py `fixture_input`: integer hashing and power-of-two scaling
/// only, so Python and Rust build identical f32 values.
pub fn fixture_input(entry: &ModelEntry) -> Tensor {
    let shape = entry.input_shape().to_vec();
    let n: usize = shape.iter().product();
    let data = (0..n as u64)
        .map(|i| {
            let h = i.wrapping_mul(2_654_435_761) % (1u64 << 32);
            (h as f64 / 4_294_967_296.0 * 4.0 - 2.0) as f32
        })
        .collect();
    Tensor { shape, data }
}

/// ONNX Runtime's output for `file` on `fixture_input`, every `stride`-th value.
pub fn reference(file: &str) -> (usize, Vec<f32>) {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json"))
        .unwrap_or_else(|e| panic!("reference.json: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let stride = v["stride"].as_u64().unwrap_or_else(|| panic!("no stride")) as usize;
    let values = v["outputs"][file]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("reference.json has no values for {file}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect();
    (stride, values)
}

/// Largest |a - b| over the sampled positions.
pub fn max_diff_sampled(out: &[f32], stride: usize, reference: &[f32]) -> f32 {
    let sampled: Vec<f32> = out.iter().step_by(stride).copied().collect();
    assert_eq!(sampled.len(), reference.len(), "sample counts differ");
    sampled
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Mean |a - b| over two whole outputs.
pub fn mean_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output lengths differ");
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum();
    (sum / a.len() as f64) as f32
}

/// Largest |a - b| over two whole outputs.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest |Σ_c p_c - 1| over all voxels of a `[1, C, D, H, W]` softmax output.
pub fn softmax_sum_error(t: &Tensor) -> f32 {
    let c = t.shape[1];
    let voxels: usize = t.shape[2..].iter().product();
    (0..voxels)
        .map(|v| {
            let s: f32 = (0..c).map(|k| t.data[k * voxels + v]).sum();
            (s - 1.0).abs()
        })
        .fold(0.0, f32::max)
}

/// Copies a fixture into a fresh folder with one byte of its weights changed, keeping its
/// manifest entry (and so its now-wrong sha256).
pub fn tampered_copy(entry: &ModelEntry, dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = std::fs::read(dir.join(&entry.file)).unwrap_or_else(|e| panic!("{e}"));
    // The middle of the file is weight data; flipping a low bit there keeps the model
    // parseable and runnable, so only the hash check can catch it.
    let ix = bytes.len() / 2;
    bytes[ix] ^= 1;
    std::fs::write(tmp.path().join(&entry.file), bytes).unwrap_or_else(|e| panic!("{e}"));
    tmp
}
