//! One study through the compute stages: assemble → preprocess → infer → score → encode.
//!
//! The same function serves `cacd score`, `cacd batch` and `cacd serve`; only the caller
//! differs. Loading the models (hash check, ONNX optimisation) happens once in
//! [`Pipeline::load`]; [`Pipeline::score`] is blocking and CPU-heavy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cacd_models::{EngineKind, EngineOptions, Precision};

use crate::assemble::{self, Refused};
use crate::encode::{self, EncodeInput, EncodeOptions, Encoded};
pub use crate::fsutil::write_atomic;
use crate::infer::Segmenter;
use crate::refine;
use crate::result::{HeartFacts, ModelInfo, Quality, ResultJson, Timings};
use crate::score::{self, Scores};
use crate::volume::Volume;
use crate::{gate, heart};

/// How to run the models.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PipelineConfig {
    pub engine: EngineKind,
    /// "int8" (default: what the appliance ships) or "fp32".
    pub precision: Precision,
    /// Folder with `manifest.toml` and the ONNX artifacts.
    pub model_dir: PathBuf,
    /// libonnxruntime for the `onnxruntime` engine (else `ORT_DYLIB_PATH`).
    pub ort_dylib: Option<PathBuf>,
    pub threads: usize,
    /// GPU settings of the `tensorrt` engine.
    pub gpu: cacd_models::GpuOptions,
    /// Preprocess on the GPU when the build has feature `cuda-base` and a device is usable.
    pub gpu_preprocess: bool,
    pub encode: EncodeOptions,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            engine: EngineKind::Tract,
            precision: Precision::Int8,
            model_dir: default_model_dir(),
            ort_dylib: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            gpu: cacd_models::GpuOptions::default(),
            gpu_preprocess: true,
            encode: EncodeOptions::default(),
        }
    }
}

/// Where the models are when nobody says: `$CACD_MODEL_DIR`, then `../share/cacd/models`
/// next to the executable (installed layout), then the source tree's `models/`.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CACD_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            let installed = prefix.join("share/cacd/models");
            if installed.join("manifest.toml").is_file() {
                return installed;
            }
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("loading models from {dir}: {source}")]
    Models {
        dir: String,
        #[source]
        source: crate::infer::InferError,
    },
    #[error("writing results to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding DICOM results: {0}")]
    Encode(#[from] encode::EncodeError),
}

/// A scored series with everything the encoders and the caller need.
pub struct Scored {
    pub result: ResultJson,
    pub volume: Volume,
    pub scores: Scores,
    pub encoded: Encoded,
}

/// A study the quality gate refused: result.json says why, and an SR and a summary image
/// say so to the PACS (no SEG, no score).
pub struct NotScored {
    pub result: ResultJson,
    pub encoded: Encoded,
}

/// What became of one study. (A rejection is small and the others boxed; the size
/// difference left is a `ResultJson`, not worth another allocation.)
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Scored(Box<Scored>),
    /// Refused by the quality gate (contrast, coverage): results say so, without a score.
    NotScored(Box<NotScored>),
    /// Refused before there was a volume (not CT, too thick, gaps...): result.json only.
    Rejected(ResultJson),
    /// A failure of ours (engine, model output, encoder), not of the study: result.json says
    /// so (`status = "failed"`); the caller retries and, if it persists, holds the series for
    /// a person. Never counted as the study's fault.
    Failed(ResultJson),
}

impl Outcome {
    pub fn result(&self) -> &ResultJson {
        match self {
            Outcome::Scored(s) => &s.result,
            Outcome::NotScored(n) => &n.result,
            Outcome::Rejected(r) | Outcome::Failed(r) => r,
        }
    }
}

/// Loaded, verified models plus the options of the encoders.
pub struct Pipeline {
    segmenter: Segmenter,
    encode: EncodeOptions,
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

impl Pipeline {
    /// Loads and verifies the models (refuses a model whose hash differs from the manifest).
    pub fn load(cfg: &PipelineConfig) -> Result<Pipeline, PipelineError> {
        let opts = EngineOptions {
            threads: cfg.threads.max(1),
            ort_dylib: cfg.ort_dylib.clone(),
            gpu: cfg.gpu.clone(),
        };
        let mut segmenter =
            Segmenter::load(&cfg.model_dir, cfg.precision.as_str(), cfg.engine, &opts).map_err(
                |source| PipelineError::Models {
                    dir: cfg.model_dir.display().to_string(),
                    source,
                },
            )?;
        if cfg.gpu_preprocess {
            segmenter.use_gpu_preprocessing();
        }
        Ok(Pipeline {
            segmenter,
            encode: cfg.encode.clone(),
        })
    }

    pub fn model_info(&self) -> ModelInfo {
        self.segmenter.model_info()
    }

    /// Scores one study from DICOM files or folders. Never panics on input data: every
    /// refusal comes back as [`Outcome::Rejected`] with a one-line reason.
    pub fn score(&self, inputs: &[PathBuf], result_version: u32) -> Outcome {
        let t = Instant::now();
        let volume = match assemble::assemble_identified(inputs) {
            Ok(a) => a.volume,
            Err(r) => return Outcome::Rejected(rejected_from(&r)),
        };
        let assemble_ms = ms(t);
        self.score_volume(volume, assemble_ms, result_version)
    }

    /// The stages after assembly, for callers that already hold a `Volume`.
    pub fn score_volume(&self, volume: Volume, assemble_ms: u64, result_version: u32) -> Outcome {
        let meta = volume.meta.clone();
        let t = Instant::now();
        let heart = heart::outline(&volume);
        let verdict = gate::check(&volume, &heart);
        let heart_ms = ms(t);
        if let Some((code, reason)) = &verdict.refusal {
            tracing::info!(code = code.code(), "quality gate: not scored");
            return self.not_scored(
                volume,
                heart.as_ref().ok(),
                &verdict,
                (*code, reason),
                Timings {
                    assemble: assemble_ms,
                    preprocess: heart_ms,
                    ..Timings::default()
                },
                result_version,
            );
        }
        let Ok(heart) = heart else {
            unreachable!("the gate refuses every study without a heart")
        };
        let seg = match self.segmenter.segment(&volume, &heart) {
            Ok(s) => s,
            // The locator finding no heart is about the study; anything else is ours.
            Err(e @ crate::infer::InferError::HeartNotFound) => {
                return Outcome::Rejected(ResultJson::rejected(
                    &meta.study_instance_uid,
                    &meta.series_instance_uid,
                    &e.to_string(),
                ))
            }
            Err(e) => {
                return Outcome::Failed(ResultJson::failed(
                    &meta.study_instance_uid,
                    &meta.series_instance_uid,
                    &format!("segmentation failed: {e}"),
                ))
            }
        };

        let t = Instant::now();
        let mut scores = score::score(volume.hu.view(), seg.mask.view(), volume.geometry.spacing);
        for lesion in &mut scores.lesions {
            lesion.confidence = Some(seg.lesion_confidence(lesion));
            let slice = volume.hu.index_axis(ndarray::Axis(0), lesion.slice);
            lesion.contrast_hu = Some(refine::lesion_contrast(
                slice,
                &lesion.pixels,
                lesion.peak_hu,
            ));
        }
        let score_ms = ms(t);

        let mut quality = quality_of(&volume, seg.noise_hu, self.segmenter.rules());
        quality.warnings.extend(verdict.warnings.iter().cloned());
        quality.heart = Some(HeartFacts::of(&heart));
        let mut model = self.segmenter.model_info();
        model.preprocessing = Some(seg.preprocess_device.to_string());

        let t = Instant::now();
        let encoded = match encode::encode_all(&EncodeInput {
            volume: &volume,
            scores: &scores,
            model: &model,
            result_version,
            warnings: &quality.warnings,
            options: &self.encode,
            refusal: None,
        }) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Failed(ResultJson::failed(
                    &meta.study_instance_uid,
                    &meta.series_instance_uid,
                    &format!("encoding results failed: {e}"),
                ))
            }
        };
        let encode_ms = ms(t);

        let timings = Timings {
            assemble: assemble_ms,
            preprocess: seg.preprocess_ms + heart_ms,
            infer: seg.infer_ms,
            score: score_ms,
            encode: encode_ms,
        };
        let result = ResultJson::scored(
            &meta.study_instance_uid,
            &meta.series_instance_uid,
            &scores,
            quality,
            model,
            timings,
            result_version,
        );
        Outcome::Scored(Box::new(Scored {
            result,
            volume,
            scores,
            encoded,
        }))
    }
}

impl Pipeline {
    /// The results of a study the quality gate refused: result.json with the reason and its
    /// code, an SR and a summary image saying "not scored" and why.
    fn not_scored(
        &self,
        volume: Volume,
        heart: Option<&heart::Heart>,
        verdict: &gate::Verdict,
        (code, reason): (gate::Refusal, &str),
        mut timings: Timings,
        result_version: u32,
    ) -> Outcome {
        let meta = &volume.meta;
        let mut quality = quality_of(&volume, None, self.segmenter.rules());
        quality.warnings.extend(verdict.warnings.iter().cloned());
        quality.heart = heart.map(HeartFacts::of);
        let mut model = self.segmenter.model_info();
        model.preprocessing = None;
        let empty = score::score(
            volume.hu.slice(ndarray::s![0..0, .., ..]),
            ndarray::Array3::<u8>::zeros((0, volume.hu.dim().1, volume.hu.dim().2)).view(),
            volume.geometry.spacing,
        );
        let t = Instant::now();
        let encoded = match encode::encode_all(&EncodeInput {
            volume: &volume,
            scores: &empty,
            model: &model,
            result_version,
            warnings: &quality.warnings,
            options: &self.encode,
            refusal: Some(reason),
        }) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Failed(ResultJson::failed(
                    &meta.study_instance_uid,
                    &meta.series_instance_uid,
                    &format!("encoding results failed: {e}"),
                ))
            }
        };
        timings.encode = ms(t);
        let mut result =
            ResultJson::rejected(&meta.study_instance_uid, &meta.series_instance_uid, reason);
        result.reason_code = Some(code.code().to_string());
        result.quality = quality;
        result.model = Some(model);
        result.timings_ms = timings;
        result.result_version = result_version;
        Outcome::NotScored(Box::new(NotScored { result, encoded }))
    }
}

fn rejected_from(r: &Refused) -> ResultJson {
    ResultJson::rejected(
        &r.study_instance_uid,
        &r.series_instance_uid,
        &r.error.reason(),
    )
}

/// Image noise (HU) above which result.json warns that faint calcium goes uncounted.
const HIGH_NOISE_HU: f64 = 35.0;

/// Quality facts and warnings a reader of the score should know.
fn quality_of(volume: &Volume, noise_hu: Option<f64>, rules: &refine::Rules) -> Quality {
    let spacing = volume.geometry.spacing[0];
    let mut warnings = Vec::new();
    match volume.meta.kvp {
        Some(kvp) if (kvp - 120.0).abs() > 0.5 => warnings.push(format!(
            "tube voltage {kvp} kVp: the Agatston method is defined at 120 kVp; scores are not directly comparable"
        )),
        None => warnings.push("tube voltage (KVP) missing: assumed 120 kVp".into()),
        _ => {}
    }
    if let Some(th) = volume.meta.slice_thickness_mm {
        if th > spacing * 1.2 {
            warnings.push(format!(
                "slice thickness {th} mm exceeds slice spacing {spacing:.2} mm (overlapping reconstruction): scored on spacing"
            ));
        }
    }
    // Thicker than 3 mm is the quality gate's warning.
    if spacing < 2.5 - 1e-6 {
        warnings.push(format!(
            "slice spacing {spacing:.2} mm differs from the 2.5–3 mm the Agatston reference populations used"
        ));
    }
    if let Some(sigma) = noise_hu.filter(|s| *s > HIGH_NOISE_HU && rules.min_contrast_sigma > 0.0) {
        let large = if rules.min_contrast_sigma_large > 0.0 {
            format!(
                " ({:.0} HU from {:.1} mm²)",
                rules.min_contrast_sigma_large * sigma,
                rules.large_area_mm2
            )
        } else {
            String::new()
        };
        warnings.push(format!(
            "image noise σ {sigma:.0} HU: calcifications peaking less than {:.0} HU{large} above their surroundings are not counted",
            rules.min_contrast_sigma * sigma
        ));
    }
    Quality {
        slice_thickness_mm: volume.meta.slice_thickness_mm,
        slice_spacing_mm: Some((spacing * 1000.0).round() / 1000.0),
        kvp: volume.meta.kvp,
        noise_hu: noise_hu.map(|n| (n * 10.0).round() / 10.0),
        warnings,
        heart: None,
    }
}

/// Writes `result.json` and, for a scored series, `seg.dcm` (when there is calcium),
/// `sr.dcm` and `summary.dcm` into `dir` (for a series the quality gate refused, the SR and
/// summary that say so). Returns the DICOM files written (what a
/// forwarder sends). Each file goes to a temp name, is fsynced and renamed; new folders are
/// fsynced into their parents.
pub fn write_outcome(outcome: &Outcome, dir: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let werr = |path: &Path| {
        let path = path.display().to_string();
        move |source| PipelineError::Write { path, source }
    };
    crate::fsutil::create_dir_durable(dir).map_err(werr(dir))?;
    let mut dicom = Vec::new();
    let encoded = match outcome {
        Outcome::Scored(s) => Some(&s.encoded),
        Outcome::NotScored(n) => Some(&n.encoded),
        Outcome::Rejected(_) | Outcome::Failed(_) => None,
    };
    if let Some(encoded) = encoded {
        let mut objects = vec![("sr.dcm", &encoded.sr), ("summary.dcm", &encoded.summary)];
        if let Some(seg) = &encoded.seg {
            objects.insert(0, ("seg.dcm", seg));
        } else {
            // A re-score without calcium (or refused) must not leave an older SEG beside it.
            let _ = std::fs::remove_file(dir.join("seg.dcm"));
        }
        for (name, obj) in objects {
            let path = dir.join(name);
            encode::write_dicom(obj, &path)?;
            dicom.push(path);
        }
    } else {
        // A re-score that is now rejected must not leave stale results beside it.
        for name in ["seg.dcm", "sr.dcm", "summary.dcm"] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    let json = serde_json::to_vec_pretty(outcome.result())
        .map_err(|e| werr(dir)(std::io::Error::other(e)))?;
    write_atomic(&dir.join("result.json"), &json).map_err(werr(&dir.join("result.json")))?;
    Ok(dicom)
}
