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

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ModelError;

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
    /// Calcium segmenter only: a lesion whose mean calcium probability (1 − background,
    /// averaged over its pixels) is below this is dropped. Calibrated per model on held-out
    /// phantoms, so it lives with the model; absent = 0 (keep every lesion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lesion_confidence: Option<f64>,
    /// Calcium segmenter only: a lesion whose peak stands out from its surroundings by less
    /// than this many times the study's noise σ is dropped (cacd's `refine` stage); absent =
    /// 0 (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lesion_contrast_sigma: Option<f64>,
    /// Calcium segmenter only: the contrast threshold (in σ) for lesions of at least
    /// [`ModelEntry::large_lesion_area_mm2`], in place of `min_lesion_contrast_sigma`. Noise
    /// blobs are 2–4 pixels; a faint true plaque is larger, so it may stand out less.
    /// Absent = one threshold for every lesion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lesion_contrast_sigma_large: Option<f64>,
    /// Calcium segmenter only: the area (mm², on its slice) from which a lesion counts as
    /// large for `min_lesion_contrast_sigma_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_lesion_area_mm2: Option<f64>,
}

/// The roles the pipeline knows how to use.
pub const ROLES: [&str; 2] = ["heart", "calcium"];
/// The numeric precisions an artifact may be stored in.
pub const PRECISIONS: [&str; 2] = ["fp32", "int8"];

impl Manifest {
    /// Reads and validates a manifest file. Model files named in it are relative to the
    /// manifest's folder (see [`Manifest::model_dir`]).
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Manifest {
            path: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ModelError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest {
            path: origin.to_string(),
            reason: format!("not a valid manifest: {}", e.to_string().trim_end()),
        })?;
        manifest.validate().map_err(|reason| ModelError::Manifest {
            path: origin.to_string(),
            reason,
        })?;
        Ok(manifest)
    }

    /// The folder model files are resolved against: the manifest's own folder.
    pub fn model_dir(manifest_path: &Path) -> PathBuf {
        match manifest_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Checks every entry; the first problem found is returned as a readable sentence.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("lists no [[model]] entries".into());
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (i, m) in self.models.iter().enumerate() {
            m.validate()
                .map_err(|e| format!("model #{} ({:?}): {e}", i + 1, m.name))?;
            let key = (m.role.as_str(), m.precision.as_str());
            if seen.contains(&key) {
                return Err(format!(
                    "model #{} ({:?}): a second {} model in {}; role and precision must pick one model",
                    i + 1,
                    m.name,
                    m.role,
                    m.precision
                ));
            }
            seen.push(key);
        }
        Ok(())
    }

    /// The model for `role` ("heart" | "calcium") at `precision` ("fp32" | "int8").
    pub fn find(&self, role: &str, precision: &str) -> Option<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.role == role && m.precision == precision)
    }
}

impl ModelEntry {
    /// Checks one entry on its own; returns a readable sentence on the first problem.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("file", &self.file),
            ("input_name", &self.input_name),
            ("output_name", &self.output_name),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{field} is empty"));
            }
        }
        if !ROLES.contains(&self.role.as_str()) {
            return Err(format!(
                "role {:?} is not one of {}",
                self.role,
                ROLES.join(", ")
            ));
        }
        if !PRECISIONS.contains(&self.precision.as_str()) {
            return Err(format!(
                "precision {:?} is not one of {}",
                self.precision,
                PRECISIONS.join(", ")
            ));
        }
        // The file must stay inside the model folder: no absolute paths, no `..`.
        let file = Path::new(&self.file);
        if !file
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "file {:?} must be a relative path inside the manifest's folder",
                self.file
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sha256 must be 64 hexadecimal digits, got {:?}",
                self.sha256
            ));
        }
        if self.shape.contains(&0) {
            return Err(format!("shape {:?} has a zero extent", self.shape));
        }
        // Guard the product used to size buffers against absurd values.
        if self
            .shape
            .iter()
            .try_fold(self.channels.max(1), |acc, &d| acc.checked_mul(d))
            .is_none_or(|n| n > MAX_INPUT_ELEMENTS)
        {
            return Err(format!(
                "shape {:?} × {} channels is larger than {MAX_INPUT_ELEMENTS} elements",
                self.shape, self.channels
            ));
        }
        if self.channels == 0 {
            return Err("channels is 0".into());
        }
        // The refine thresholds: a NaN would silently turn a rule off (no comparison holds).
        if let Some(c) = self.min_lesion_confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(format!("min_lesion_confidence {c} must be within 0..=1"));
            }
        }
        for (name, value) in [
            ("min_lesion_contrast_sigma", self.min_lesion_contrast_sigma),
            (
                "min_lesion_contrast_sigma_large",
                self.min_lesion_contrast_sigma_large,
            ),
            ("large_lesion_area_mm2", self.large_lesion_area_mm2),
        ] {
            if let Some(k) = value {
                if !k.is_finite() || k < 0.0 {
                    return Err(format!("{name} {k} must be finite and >= 0"));
                }
            }
        }
        if self.min_lesion_contrast_sigma_large.is_some() != self.large_lesion_area_mm2.is_some() {
            return Err(
                "min_lesion_contrast_sigma_large and large_lesion_area_mm2 go together".into(),
            );
        }
        if self.spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!(
                "spacing_mm {:?} must be finite and > 0",
                self.spacing_mm
            ));
        }
        let [lo, hi] = self.hu_clip;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(format!(
                "hu_clip {:?} must be two finite numbers, low < high",
                self.hu_clip
            ));
        }
        if !self.hu_scale.is_finite() || self.hu_scale <= 0.0 {
            return Err(format!("hu_scale {} must be finite and > 0", self.hu_scale));
        }
        if self.labels.len() < 2 {
            return Err(format!(
                "labels {:?} must name at least two output channels",
                self.labels
            ));
        }
        for (i, l) in self.labels.iter().enumerate() {
            if l.trim().is_empty() {
                return Err(format!("label #{} is empty", i + 1));
            }
            if self.labels[..i].contains(l) {
                return Err(format!("label {l:?} appears twice"));
            }
        }
        Ok(())
    }

    /// The input tensor shape the model takes: `[1, channels, z, y, x]`.
    pub fn input_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.shape;
        [1, self.channels, d, h, w]
    }

    /// The output tensor shape the model gives: `[1, labels, z, y, x]`.
    pub fn output_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.shape;
        [1, self.labels.len(), d, h, w]
    }
}

/// Largest model input accepted (elements): 64 Mi f32 = 256 MiB.
pub const MAX_INPUT_ELEMENTS: usize = 64 << 20;

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads `entry.file` from `model_dir` and checks its sha256 against the manifest. Returns the
/// bytes only when they match, so a caller never parses an unverified model.
pub fn verify(entry: &ModelEntry, model_dir: &Path) -> Result<Vec<u8>, ModelError> {
    let path = model_dir.join(&entry.file);
    let bytes = std::fs::read(&path).map_err(|e| ModelError::Load {
        file: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(entry.sha256.trim()) {
        return Err(ModelError::HashMismatch {
            file: path.display().to_string(),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(bytes)
}
