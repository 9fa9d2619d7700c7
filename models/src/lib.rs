//! cacd's model artifacts, their manifest, and the inference engines that run them.
//!
//! The public surface other crates rely on is fixed here: [`Tensor`], [`Engine`],
//! [`manifest::Manifest`] / [`manifest::ModelEntry`], [`EngineKind`] and [`load_engine`].

pub mod manifest;

pub use manifest::{Manifest, ModelEntry};

/// A dense f32 tensor in row-major (C) order, e.g. `[1, C, D, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Which inference engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// tract-onnx: pure Rust, no set-up; the default.
    Tract,
    /// ONNX Runtime through `ort` (feature `onnxruntime`), CPU provider.
    OnnxRuntime,
}

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
    #[error("model {file}: sha256 {actual} does not match the manifest's {expected}; refusing to load")]
    HashMismatch { file: String, expected: String, actual: String },
    #[error("model {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("engine {0} is not available in this build or on this machine: {1}")]
    Unavailable(&'static str, String),
}

/// A loaded, verified model ready to run. Implementations are thread-safe so one loaded model
/// serves every study.
pub trait Engine: Send + Sync {
    /// Short engine name reported in result.json `model.engine`, e.g. `tract-cpu`, `ort-cpu`.
    fn engine_name(&self) -> &'static str;
    /// Runs the model on one input tensor and returns its one output tensor.
    fn run(&self, input: &Tensor) -> Result<Tensor, ModelError>;
}
