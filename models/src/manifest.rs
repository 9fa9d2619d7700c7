//! `models/manifest.toml`: what each artifact is and what it expects.
//!
//! ```toml
//! [[model]]
//! name = "cacd-heart-locator"      # stable name reported in result.json
//! role = "heart"                   # "heart" (coarse localisation) | "calcium" (per-vessel segmentation)
//! version = "1.0.0"
//! file = "heart_fp32.onnx"         # relative to the manifest's folder
//! sha256 = "…"                     # the engine refuses a file whose hash differs
//! precision = "fp32"               # "fp32" | "int8"
//! input_name = "input"
//! output_name = "output"
//! spacing_mm = [4.0, 4.0, 4.0]     # model grid spacing, [z, y, x]
//! shape = [64, 96, 96]             # model grid shape, [z, y, x]
//! channels = 1                     # input channels
//! hu_clip = [-1000.0, 2000.0]      # HU clipped to this range, then
//! hu_scale = 1000.0                # divided by this
//! labels = ["background", "heart"] # output channels, in order
//! training = "…"                   # how it was trained (script, seeds, data)
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    pub role: String,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub precision: String,
    pub input_name: String,
    pub output_name: String,
    pub spacing_mm: [f64; 3],
    pub shape: [usize; 3],
    pub channels: usize,
    pub hu_clip: [f32; 2],
    pub hu_scale: f32,
    pub labels: Vec<String>,
    pub training: String,
}
