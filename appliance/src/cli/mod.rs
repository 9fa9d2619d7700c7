//! Command-line front ends of the pipeline. Each command is a thin layer: parse, call the
//! stages, report with context.

pub mod batch;
pub mod dashboard;
pub mod score;

use std::path::PathBuf;

use cacd_models::EngineKind;

use crate::pipeline::PipelineConfig;

/// Which engine and model precision to run (shared by every command that scores).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Inference engine: tract (pure Rust, default), onnxruntime (CPU; needs the
    /// `onnxruntime` build feature and libonnxruntime) or tensorrt (TensorRT, then CUDA,
    /// then CPU; needs the `tensorrt` build feature).
    #[arg(long, value_enum, default_value_t = EngineChoice::Tract)]
    pub engine: EngineChoice,
    /// Model precision.
    #[arg(long, value_enum, default_value_t = Precision::Int8)]
    pub precision: Precision,
    /// Folder with manifest.toml and the ONNX artifacts.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH).
    #[arg(long)]
    pub ort_dylib: Option<PathBuf>,
    /// Inference threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// tensorrt: folder for TensorRT engine and timing caches (none: rebuilt every run).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    Tract,
    Onnxruntime,
    Tensorrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    Int8,
    Fp32,
}

impl EngineArgs {
    pub fn pipeline_config(&self) -> PipelineConfig {
        let mut cfg = PipelineConfig {
            engine: match self.engine {
                EngineChoice::Tract => EngineKind::Tract,
                EngineChoice::Onnxruntime => EngineKind::OnnxRuntime,
                EngineChoice::Tensorrt => EngineKind::TensorRt,
            },
            precision: match self.precision {
                Precision::Int8 => cacd_models::Precision::Int8,
                Precision::Fp32 => cacd_models::Precision::Fp32,
            },
            ort_dylib: self.ort_dylib.clone(),
            ..PipelineConfig::default()
        };
        if let Some(dir) = &self.model_dir {
            cfg.model_dir = dir.clone();
        }
        cfg.gpu.trt_cache_dir = self.trt_cache.clone();
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg
    }
}
