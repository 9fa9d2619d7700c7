//! cacd's model artifacts, their manifest, and the inference engines that run them.
//!
//! The public surface other crates rely on is fixed here: [`Tensor`], [`Engine`],
//! [`manifest::Manifest`] / [`manifest::ModelEntry`], [`EngineKind`] and [`load_engine`].

#[cfg(feature = "tensorrt")]
pub mod gpu_info;
pub mod manifest;
#[cfg(feature = "onnxruntime")]
pub mod ort_engine;
pub mod providers;
pub mod tract_engine;

use std::path::{Path, PathBuf};

pub use manifest::{sha256_hex, verify, Manifest, ModelEntry};

/// A dense f32 tensor in row-major (C) order, e.g. `[1, C, D, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Which inference engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EngineKind {
    /// tract-onnx: pure Rust, no set-up; the default.
    Tract,
    /// ONNX Runtime through `ort` (feature `onnxruntime`), CPU provider.
    OnnxRuntime,
    /// ONNX Runtime with TensorRT, then CUDA, then CPU (feature `tensorrt`): the Jetson's
    /// engine. Falls back, with a log line, to whichever provider registers.
    TensorRt,
}

/// Which of a model's files runs: the int8 (Q/DQ) one or the fp32 one. The manifest names
/// each file's precision as `int8` or `fp32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Int8,
    Fp32,
}

impl Precision {
    /// The manifest's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::Fp32 => "fp32",
        }
    }

    /// `int8` or `fp32`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "int8" => Some(Precision::Int8),
            "fp32" => Some(Precision::Fp32),
            _ => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    #[error(
        "model {file}: sha256 {actual} does not match the manifest's {expected}; refusing to load"
    )]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("model {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("engine {0} is not available in this build or on this machine: {1}")]
    Unavailable(&'static str, String),
}

/// Where a model input read in place lives (see [`InPlaceInput`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Host memory.
    Host,
    /// Memory of CUDA device `device` in the process's primary context (the context cudarc
    /// and ONNX Runtime's CUDA provider both use).
    Cuda { device: i32 },
}

/// A model input the engine reads where it already is, without a copy into a [`Tensor`]: the
/// GPU preprocessing's output buffer, so that a study's volume does not come back to the host
/// between preprocessing and inference. The caller owns the memory.
#[derive(Debug, Clone)]
pub struct InPlaceInput {
    pub memory: Memory,
    /// Address of the first of `shape.iter().product()` f32 values, in row-major order.
    pub address: u64,
    pub shape: Vec<usize>,
}

/// A loaded, verified model ready to run. Implementations are thread-safe so one loaded model
/// serves every study.
pub trait Engine: Send + Sync {
    /// Short engine name reported in result.json `model.engine`, e.g. `tract-cpu`, `ort-cpu`.
    fn engine_name(&self) -> &'static str;
    /// Runs the model on one input tensor and returns its one output tensor.
    fn run(&self, input: &Tensor) -> Result<Tensor, ModelError>;

    /// Whether [`Engine::run_in_place`] can read an input in `memory`. ONNX Runtime reads host
    /// memory in place with any provider and CUDA memory when its first provider is TensorRT
    /// or CUDA; tract reads only [`Tensor`]s.
    fn reads_in_place(&self, memory: Memory) -> bool {
        let _ = memory;
        false
    }

    /// Runs the model on an input read where it is (see [`InPlaceInput`]); the output comes
    /// back as a host [`Tensor`], as from [`Engine::run`].
    ///
    /// # Safety
    /// `input.address` must point to `input.shape.iter().product()` f32 values in
    /// `input.memory`, valid and left unchanged until this returns, with every write to them
    /// finished (a CUDA buffer's stream synchronized).
    unsafe fn run_in_place(&self, input: &InPlaceInput) -> Result<Tensor, ModelError> {
        let _ = input;
        Err(ModelError::Run(format!(
            "engine {} reads only host tensors",
            self.engine_name()
        )))
    }
}

/// How an engine is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Worker threads for one inference (tract: a private rayon pool; ORT: intra-op threads).
    /// 0 or 1 runs on the calling thread.
    pub threads: usize,
    /// The ONNX Runtime shared library (`libonnxruntime.so[.<ver>]`, ONNX Runtime >= 1.17).
    /// `None`: `ORT_DYLIB_PATH`; with neither, the ORT engine is `Unavailable`.
    pub ort_dylib: Option<PathBuf>,
    /// GPU settings of the `TensorRt` engine (ignored by the others).
    pub gpu: GpuOptions,
}

/// How the `TensorRt` engine uses the GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuOptions {
    pub device_id: i32,
    /// Let TensorRT run layers the model keeps in float at half precision.
    pub fp16: bool,
    /// Root of the TensorRT engine and timing caches (on the data partition); one folder per
    /// model sha256, TensorRT version and GPU name below it. `None`: no cache, engines are
    /// rebuilt at every start (minutes on a Jetson).
    pub trt_cache_dir: Option<PathBuf>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            device_id: 0,
            fp16: true,
            trt_cache_dir: None,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ort_dylib: std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            gpu: GpuOptions::default(),
        }
    }
}

impl EngineKind {
    /// The name [`Engine::engine_name`] reports for this kind.
    pub fn engine_name(self) -> &'static str {
        match self {
            EngineKind::Tract => tract_engine::ENGINE_NAME,
            EngineKind::OnnxRuntime => "ort-cpu",
            // What it asks for; the engine reports the provider it got.
            EngineKind::TensorRt => "ort-tensorrt",
        }
    }
}

/// Verifies `entry`'s file in `model_dir` against its sha256 (always, before any parsing), then
/// loads it into the engine `kind`.
pub fn load_engine(
    kind: EngineKind,
    entry: &ModelEntry,
    model_dir: &Path,
    opts: &EngineOptions,
) -> Result<Box<dyn Engine>, ModelError> {
    let bytes = verify(entry, model_dir)?;
    let file = model_dir.join(&entry.file).display().to_string();
    match kind {
        EngineKind::Tract => Ok(Box::new(tract_engine::TractEngine::from_verified_bytes(
            &bytes, entry, &file, opts,
        )?)),
        #[cfg(feature = "onnxruntime")]
        EngineKind::OnnxRuntime => Ok(Box::new(ort_engine::OrtEngine::from_verified_bytes(
            &bytes, entry, &file, opts, false,
        )?)),
        #[cfg(not(feature = "onnxruntime"))]
        EngineKind::OnnxRuntime => Err(ModelError::Unavailable(
            "ort-cpu",
            "this build has no ONNX Runtime support (build with feature `onnxruntime`)".into(),
        )),
        #[cfg(feature = "tensorrt")]
        EngineKind::TensorRt => Ok(Box::new(ort_engine::OrtEngine::from_verified_bytes(
            &bytes, entry, &file, opts, true,
        )?)),
        #[cfg(not(feature = "tensorrt"))]
        EngineKind::TensorRt => Err(ModelError::Unavailable(
            "ort-tensorrt",
            "this build has no TensorRT support (build with feature `tensorrt`)".into(),
        )),
    }
}

/// Checks an input shape against the shape the manifest promises the model takes.
pub(crate) fn check_shape(shape: &[usize], expected: &[usize; 5]) -> Result<(), ModelError> {
    if shape != expected.as_slice() {
        return Err(ModelError::Run(format!(
            "input shape {shape:?} differs from the model's {expected:?}"
        )));
    }
    Ok(())
}

/// Checks an input tensor against the shape the manifest promises the model takes.
pub(crate) fn check_input(input: &Tensor, expected: &[usize; 5]) -> Result<(), ModelError> {
    check_shape(&input.shape, expected)?;
    let n: usize = expected.iter().product();
    if input.data.len() != n {
        return Err(ModelError::Run(format!(
            "input has {} values, shape {:?} needs {n}",
            input.data.len(),
            input.shape
        )));
    }
    Ok(())
}
