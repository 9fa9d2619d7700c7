//! Stage "infer": the two-network segmentation of docs/ARCHITECTURE.md.
//!
//! heart locator on the coarse grid → heart box → fine crop centred on it → per-vessel calcium
//! segmenter → class probabilities mapped back to the native grid (HU ≥ 130 voxels only).
//!
//! The resampling and mask mapping run on the GPU when the build has feature `cuda-base` and
//! [`Segmenter::use_gpu_preprocessing`] found a device (bit-identical to the CPU path, see
//! `tests/gpu_parity.rs`); any GPU failure during a study logs a line and redoes that study's
//! preprocessing on the CPU.

use crate::heart::Heart;
use crate::preprocess::{self, GridSpec, HeartBox, PreprocessError};
use crate::refine::{self, Rules};
use crate::result::ModelInfo;
use crate::score::Lesion;
use crate::volume::Volume;
use cacd_models::{
    load_engine, Engine, EngineKind, EngineOptions, Manifest, ModelEntry, ModelError,
};
use ndarray::Array3;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Labels the calcium model must output, in this order (0 = background, then `Vessel` labels).
pub const CALCIUM_LABELS: [&str; 5] = ["background", "LM", "LAD", "LCX", "RCA"];

/// The optional sixth label of a calcium model: calcium that is not coronary (aortic wall and
/// valve, mitral annulus). Such a model names what it must not call a vessel; the mask maps
/// the class to background and the calcium probability leaves it out.
pub const NON_CORONARY_LABEL: &str = "non-coronary";

/// Output channel (and training label) of [`NON_CORONARY_LABEL`]: right after the vessels.
pub const NON_CORONARY_CLASS: u8 = CALCIUM_LABELS.len() as u8;

/// Whether `labels` is what a calcium model may output: [`CALCIUM_LABELS`], optionally followed
/// by [`NON_CORONARY_LABEL`].
pub fn calcium_labels_supported(labels: &[String]) -> bool {
    let vessels = labels.len() >= CALCIUM_LABELS.len()
        && labels.iter().zip(CALCIUM_LABELS).all(|(a, b)| a == b);
    vessels
        && match &labels[CALCIUM_LABELS.len()..] {
            [] => true,
            [extra] => extra == NON_CORONARY_LABEL,
            _ => false,
        }
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("model manifest: {0}")]
    Manifest(String),
    #[error("model grid: {0}")]
    Grid(#[from] PreprocessError),
    #[error("heart not found: no heart-sized region in the scanned volume")]
    HeartNotFound,
    #[error("model output shape {actual:?}, expected {expected:?}")]
    OutputShape {
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// The engine returned values that are not probabilities (NaN or infinite: a broken
    /// model file, an overflow in reduced precision, a faulty accelerator). Read as they are,
    /// they would pass for "no heart" or "no calcium", a result about the study.
    #[error("{model} returned {bad} of {total} values that are not numbers")]
    OutputNotFinite {
        model: String,
        bad: usize,
        total: usize,
    },
}

/// The mask of one study and how it was found.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// Native grid `[z, y, x]`: 0, or a `Vessel` label for calcium candidates (HU ≥ 130).
    pub mask: Array3<u8>,
    pub heart: HeartBox,
    /// Probability of coronary calcium (1 − background) at each labelled voxel `[z, y, x]`.
    pub calcium_prob: HashMap<[usize; 3], f32>,
    /// Image noise σ (HU) measured on the study's soft tissue ([`refine::noise_sigma`]).
    pub noise_hu: Option<f64>,
    /// Where this study's resampling ran: "gpu" or "cpu".
    pub preprocess_device: &'static str,
    pub preprocess_ms: u64,
    pub infer_ms: u64,
}

impl Segmentation {
    /// Mean calcium probability over a lesion's pixels (0 for a pixel the map lacks).
    pub fn lesion_confidence(&self, lesion: &Lesion) -> f64 {
        lesion_confidence(&self.calcium_prob, lesion)
    }
}

fn lesion_confidence(calcium_prob: &HashMap<[usize; 3], f32>, lesion: &Lesion) -> f64 {
    if lesion.pixels.is_empty() {
        return 0.0;
    }
    let sum: f64 = lesion
        .pixels
        .iter()
        .map(|&(y, x)| {
            let p = calcium_prob.get(&[lesion.slice, y as usize, x as usize]);
            f64::from(p.copied().unwrap_or(0.0))
        })
        .sum();
    sum / lesion.pixels.len() as f64
}

/// What the networks produced before the mask rules: the mask, the segmenter's probabilities
/// and the grid they lie on.
struct RawSegmentation {
    seg: Segmentation,
    probs: cacd_models::Tensor,
    grid: preprocess::FineGrid,
}

impl RawSegmentation {
    /// `pre_us` / `inf_us`: microseconds spent preprocessing and in the engines.
    fn new(
        mask: Array3<u8>,
        heart: HeartBox,
        probs: cacd_models::Tensor,
        grid: preprocess::FineGrid,
        device: &'static str,
        pre_us: u128,
        inf_us: u128,
    ) -> Self {
        RawSegmentation {
            seg: Segmentation {
                mask,
                heart,
                calcium_prob: HashMap::new(),
                noise_hu: None,
                preprocess_device: device,
                preprocess_ms: (pre_us / 1000) as u64,
                infer_ms: (inf_us / 1000) as u64,
            },
            probs,
            grid,
        }
    }
}

/// Both networks, loaded and verified once, serving every study.
pub struct Segmenter {
    heart: Box<dyn Engine>,
    calcium: Box<dyn Engine>,
    heart_entry: ModelEntry,
    calcium_entry: ModelEntry,
    heart_grid: GridSpec,
    calcium_grid: GridSpec,
    /// The `refine` thresholds the calcium model's manifest entry asks for.
    rules: Rules,
    /// GPU preprocessing, one study at a time (its device buffers are reused across studies).
    #[cfg(feature = "cuda-base")]
    gpu: Option<std::sync::Mutex<crate::gpu::GpuPreprocessor>>,
}

impl Segmenter {
    /// Loads `model_dir/manifest.toml` and the heart + calcium models at `precision`
    /// ("fp32" | "int8"), verifying each file's sha256 before parsing it.
    pub fn load(
        model_dir: &Path,
        precision: &str,
        kind: EngineKind,
        opts: &EngineOptions,
    ) -> Result<Segmenter, InferError> {
        let manifest = Manifest::load(&model_dir.join("manifest.toml"))?;
        Segmenter::from_manifest(model_dir, &manifest, precision, kind, opts)
    }

    /// As [`Segmenter::load`] with an already parsed manifest.
    pub fn from_manifest(
        model_dir: &Path,
        manifest: &Manifest,
        precision: &str,
        kind: EngineKind,
        opts: &EngineOptions,
    ) -> Result<Segmenter, InferError> {
        let find = |role: &str| {
            manifest.find(role, precision).cloned().ok_or_else(|| {
                InferError::Manifest(format!("no {role} model at precision {precision:?}"))
            })
        };
        let heart_entry = find("heart")?;
        let calcium_entry = find("calcium")?;
        if heart_entry.labels.len() != 2 {
            return Err(InferError::Manifest(format!(
                "heart model {} must output 2 channels (background, heart), lists {:?}",
                heart_entry.name, heart_entry.labels
            )));
        }
        if !calcium_labels_supported(&calcium_entry.labels) {
            return Err(InferError::Manifest(format!(
                "calcium model {} must output {CALCIUM_LABELS:?} (optionally then \
                 {NON_CORONARY_LABEL:?}), lists {:?}",
                calcium_entry.name, calcium_entry.labels
            )));
        }
        let heart_grid = GridSpec::from_entry(&heart_entry)?;
        let calcium_grid = GridSpec::from_entry(&calcium_entry)?;
        if calcium_grid.channels != 4 {
            return Err(InferError::Manifest(format!(
                "calcium model {} must take 4 channels (HU + z, y, x), takes {}",
                calcium_entry.name, calcium_grid.channels
            )));
        }
        let rules = Rules::from_entry(&calcium_entry);
        let heart = load_engine(kind, &heart_entry, model_dir, opts)?;
        let calcium = load_engine(kind, &calcium_entry, model_dir, opts)?;
        Ok(Segmenter {
            heart,
            calcium,
            heart_entry,
            calcium_entry,
            heart_grid,
            calcium_grid,
            rules,
            #[cfg(feature = "cuda-base")]
            gpu: None,
        })
    }

    /// Moves preprocessing to the GPU when one can be used (feature `cuda-base`); otherwise
    /// logs one line saying why and keeps the CPU path. Returns whether the GPU is used.
    pub fn use_gpu_preprocessing(&mut self) -> bool {
        #[cfg(feature = "cuda-base")]
        {
            // `GpuPreprocessor::new` logs the reason when it fails.
            if let Ok(g) = crate::gpu::GpuPreprocessor::new() {
                tracing::info!(device = %g.info().name, "GPU preprocessing on");
                self.gpu = Some(std::sync::Mutex::new(g));
            }
            self.gpu.is_some()
        }
        #[cfg(not(feature = "cuda-base"))]
        {
            tracing::info!("GPU preprocessing off: this build has no `cuda` feature");
            false
        }
    }

    /// Where preprocessing runs: "gpu" or "cpu".
    pub fn preprocessing_device(&self) -> &'static str {
        #[cfg(feature = "cuda-base")]
        if self.gpu.is_some() {
            return "gpu";
        }
        "cpu"
    }

    /// What result.json reports: the calcium segmenter's identity (it decides the scores).
    pub fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.calcium_entry.name.clone(),
            version: self.calcium_entry.version.clone(),
            sha256: self.calcium_entry.sha256.clone(),
            precision: self.calcium_entry.precision.clone(),
            engine: self.calcium.engine_name().to_string(),
            preprocessing: Some(self.preprocessing_device().to_string()),
        }
    }

    /// The heart locator's manifest entry.
    pub fn heart_entry(&self) -> &ModelEntry {
        &self.heart_entry
    }

    /// The `refine` thresholds in use (from the calcium model's manifest entry).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The calcium segmenter's manifest entry.
    pub fn calcium_entry(&self) -> &ModelEntry {
        &self.calcium_entry
    }

    /// Segments one study whose heart the outline stage found. Refuses with
    /// [`InferError::HeartNotFound`] when the locator finds no heart.
    pub fn segment(&self, vol: &Volume, heart: &Heart) -> Result<Segmentation, InferError> {
        let RawSegmentation {
            mut seg,
            probs,
            grid,
        } = self.segment_raw(vol, heart)?;
        let t = Instant::now();
        // Calcium outside the heart (plus its margin) is never coronary.
        let dropped = refine::gate_to_heart(vol, &mut seg.mask, heart);
        // One label per calcification the segmenter mostly called a vessel.
        let unified = refine::unify_calcifications(vol, &mut seg.mask, heart);
        tracing::debug!(dropped, unified, "labels gated to the heart and unified");
        // A six-class model's non-coronary label is not calcium to score (a five-class model
        // has none: no pass over the whole mask for it).
        if self.calcium_entry.labels.len() > usize::from(NON_CORONARY_CLASS) {
            seg.mask
                .mapv_inplace(|l| if l < NON_CORONARY_CLASS { l } else { 0 });
        }
        refine::drop_fragments(vol.hu.view(), seg.mask.view_mut());
        seg.calcium_prob = preprocess::calcium_prob_at_labels(&probs, &grid, seg.mask.view())?;
        seg.noise_hu = refine::noise_sigma(vol.hu.view());
        let confidence = |l: &Lesion| lesion_confidence(&seg.calcium_prob, l);
        refine::drop_faint_lesions(
            vol.hu.view(),
            vol.geometry.spacing,
            &mut seg.mask,
            confidence,
            seg.noise_hu,
            &self.rules,
        );
        seg.preprocess_ms += t.elapsed().as_millis() as u64;
        Ok(seg)
    }

    fn segment_raw(&self, vol: &Volume, heart: &Heart) -> Result<RawSegmentation, InferError> {
        #[cfg(feature = "cuda-base")]
        if let Some(gpu) = &self.gpu {
            let mut g = gpu.lock().unwrap_or_else(|p| p.into_inner());
            match self.segment_gpu(vol, heart, &mut g) {
                Ok(seg) => return Ok(seg),
                Err(GpuOr::Infer(e)) => return Err(e),
                Err(GpuOr::Gpu(e)) => {
                    tracing::warn!("GPU preprocessing failed, this study runs on the CPU: {e}")
                }
            }
        }
        self.segment_cpu(vol, heart)
    }

    /// [`Segmenter::segment`] with the resampling and mask mapping on the GPU.
    #[cfg(feature = "cuda-base")]
    fn segment_gpu(
        &self,
        vol: &Volume,
        outline: &Heart,
        g: &mut crate::gpu::GpuPreprocessor,
    ) -> Result<RawSegmentation, GpuOr> {
        let (mut pre, mut inf) = (0u128, 0u128);
        let t = Instant::now();
        g.upload_hu(vol.hu.view())?;
        pre += t.elapsed().as_micros();
        let coarse_grid = preprocess::ModelGrid::centred(vol, &self.heart_grid);
        let heart_prob = run_on_gpu_input(&*self.heart, g, vol, &coarse_grid, &mut pre, &mut inf)?;
        check_output(&heart_prob, &self.heart_entry)?;

        let t = Instant::now();
        let heart = preprocess::heart_box(&heart_prob, &coarse_grid, vol)
            .map_err(InferError::from)?
            .map(|b| crop_centre(b, outline))
            .ok_or(InferError::HeartNotFound)?;
        pre += t.elapsed().as_micros();
        let fine_grid = preprocess::ModelGrid::at_patient(vol, &self.calcium_grid, heart.centre_mm);
        let probs = run_on_gpu_input(&*self.calcium, g, vol, &fine_grid, &mut pre, &mut inf)?;
        check_output(&probs, &self.calcium_entry)?;

        let t = Instant::now();
        let mask = g.fine_to_native_mask(&probs, &fine_grid, vol)?;
        pre += t.elapsed().as_micros();
        Ok(RawSegmentation::new(
            mask, heart, probs, fine_grid, "gpu", pre, inf,
        ))
    }

    /// [`Segmenter::segment`] on the CPU (the reference path).
    fn segment_cpu(&self, vol: &Volume, outline: &Heart) -> Result<RawSegmentation, InferError> {
        let (mut pre, mut inf) = (0u128, 0u128);

        let t = Instant::now();
        let (coarse, coarse_grid) = preprocess::coarse_input(vol, &self.heart_grid);
        pre += t.elapsed().as_micros();

        let t = Instant::now();
        let heart_prob = self.heart.run(&coarse)?;
        inf += t.elapsed().as_micros();
        check_output(&heart_prob, &self.heart_entry)?;

        let t = Instant::now();
        let heart = preprocess::heart_box(&heart_prob, &coarse_grid, vol)?
            .map(|b| crop_centre(b, outline))
            .ok_or(InferError::HeartNotFound)?;
        let (fine, fine_grid) = preprocess::fine_input(vol, heart.centre_mm, &self.calcium_grid);
        pre += t.elapsed().as_micros();

        let t = Instant::now();
        let probs = self.calcium.run(&fine)?;
        inf += t.elapsed().as_micros();
        check_output(&probs, &self.calcium_entry)?;

        let t = Instant::now();
        let mask = preprocess::fine_to_native_mask(&probs, &fine_grid, vol)?;
        pre += t.elapsed().as_micros();

        Ok(RawSegmentation::new(
            mask, heart, probs, fine_grid, "cpu", pre, inf,
        ))
    }
}

/// Runs `engine` on the GPU preprocessing's model input for `grid`: read in place on the
/// device where the engine can (ONNX Runtime whose first provider is TensorRT or CUDA), else
/// downloaded into a host tensor (tract, the CPU provider, or an in-place run that failed).
/// Adds the time spent to `pre` and `inf`.
#[cfg(feature = "cuda-base")]
fn run_on_gpu_input(
    engine: &dyn Engine,
    g: &mut crate::gpu::GpuPreprocessor,
    vol: &Volume,
    grid: &preprocess::ModelGrid,
    pre: &mut u128,
    inf: &mut u128,
) -> Result<cacd_models::Tensor, GpuOr> {
    if engine.reads_in_place(g.memory()) {
        let t = Instant::now();
        let input = g.model_input_in_place(vol, grid)?;
        *pre += t.elapsed().as_micros();
        let t = Instant::now();
        // SAFETY: `input` describes the finished model input in `g`'s device buffer (its
        // stream synchronized); only the next model input writes that buffer, and `g`, held
        // mutably for this whole study, queues none while the engine runs.
        let ran = unsafe { engine.run_in_place(&input) };
        *inf += t.elapsed().as_micros();
        match ran {
            Ok(out) => return Ok(out),
            // A provider that turns out not to take device memory as promised costs this
            // study a download, not its result.
            Err(e) => tracing::warn!(
                error = %e,
                "the engine could not read the model input on the device; downloading it"
            ),
        }
    }
    let t = Instant::now();
    let input = g.model_input_for(vol, grid)?;
    *pre += t.elapsed().as_micros();
    let t = Instant::now();
    let out = engine.run(&input).map_err(InferError::from)?;
    *inf += t.elapsed().as_micros();
    Ok(out)
}

/// A GPU failure (the study is redone on the CPU) or a refusal that would happen on either.
#[cfg(feature = "cuda-base")]
enum GpuOr {
    Gpu(crate::gpu::GpuError),
    Infer(InferError),
}

#[cfg(feature = "cuda-base")]
impl From<crate::gpu::GpuError> for GpuOr {
    fn from(e: crate::gpu::GpuError) -> Self {
        GpuOr::Gpu(e)
    }
}

#[cfg(feature = "cuda-base")]
impl From<InferError> for GpuOr {
    fn from(e: InferError) -> Self {
        GpuOr::Infer(e)
    }
}

/// How far the locator's heart may lie from the outline's before the outline's centre is used.
const LOCATOR_AGREES_MM: f64 = 40.0;

/// The locator's box, centred on the outline instead when the two disagree by more than
/// [`LOCATOR_AGREES_MM`] (the locator learnt phantom anatomy; the outline follows the lungs).
fn crop_centre(mut b: HeartBox, outline: &Heart) -> HeartBox {
    let d: f64 = (0..3)
        .map(|a| (b.centre_mm[a] - outline.centre_mm[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    if d > LOCATOR_AGREES_MM {
        tracing::info!(
            distance_mm = d.round(),
            "heart locator and outline disagree: crop centred on the outline"
        );
        b.centre_mm = outline.centre_mm;
    }
    b
}

/// The engine's output is what the manifest promised: its shape, and numbers only.
fn check_output(t: &cacd_models::Tensor, e: &ModelEntry) -> Result<(), InferError> {
    let expected = e.output_shape().to_vec();
    if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
        return Err(InferError::OutputShape {
            expected,
            actual: t.shape.clone(),
        });
    }
    let bad = t.data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(InferError::OutputNotFinite {
            model: format!("{} {}", e.name, e.version),
            bad,
            total: t.data.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn calcium_models_have_five_labels_or_six_with_non_coronary() {
        assert!(calcium_labels_supported(&labels(&CALCIUM_LABELS)));
        let mut six = CALCIUM_LABELS.to_vec();
        six.push(NON_CORONARY_LABEL);
        assert!(calcium_labels_supported(&labels(&six)));
        six.push(NON_CORONARY_LABEL);
        assert!(!calcium_labels_supported(&labels(&six)), "seven labels");
        assert!(!calcium_labels_supported(&labels(&[
            "background",
            "LM",
            "LAD",
            "LCX",
            "RCA",
            "aorta"
        ])));
        assert!(!calcium_labels_supported(&labels(&[
            "background",
            "LAD",
            "LM",
            "LCX",
            "RCA"
        ])));
        assert!(!calcium_labels_supported(&labels(&["background", "LM"])));
    }
}
