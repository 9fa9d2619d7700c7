//! ONNX Runtime through `ort` 2.0.0-rc.15 with `load-dynamic`: the shared library is opened
//! at run time from [`EngineOptions::ort_dylib`] or `ORT_DYLIB_PATH`.
//!
//! ort rc.15 (default features, as the workspace pins it) needs ONNX Runtime API 17, i.e.
//! ONNX Runtime >= 1.17; older libraries are refused with `Unavailable`.
//!
//! Two engines share this code: `onnxruntime` (the CPU provider alone, so its figures stay
//! CPU figures) and, with feature `tensorrt`, the accelerated engine: TensorRT → CUDA → CPU as
//! [`crate::providers`] plans it, run through an I/O binding.

use std::path::PathBuf;
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorRef, TensorRefMut};

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};

use crate::providers::{Plan, Provider};
use crate::{
    check_input, check_shape, Engine, EngineOptions, InPlaceInput, Memory, ModelEntry, ModelError,
    Tensor,
};

const NAME: &str = "ort-cpu";

/// The CPU provider, last in every chain. The arena keeps activation buffers between runs:
/// each study reuses the same shapes.
fn cpu_provider() -> ExecutionProviderDispatch {
    ep::CPU::default().with_arena_allocator(true).build()
}

/// The providers the loaded library was built with (asked per provider cacd can configure).
#[cfg(feature = "tensorrt")]
fn available_providers() -> Vec<String> {
    use ort::ep::ExecutionProvider;
    let mut out = Vec::new();
    for (p, available) in [
        (Provider::TensorRt, ep::TensorRT::is_available()),
        (Provider::Cuda, ep::CUDA::is_available()),
        (Provider::Cpu, ep::CPU::is_available()),
    ] {
        match available {
            Ok(true) => out.push(p.ort_name().to_string()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot ask ONNX Runtime for {}: {e}", p.ort_name()),
        }
    }
    out
}

/// Without the `tensorrt` feature only the CPU provider is ever planned.
#[cfg(not(feature = "tensorrt"))]
fn available_providers() -> Vec<String> {
    vec![Provider::Cpu.ort_name().to_string()]
}

/// The configured TensorRT or CUDA provider (their options come from [`EngineOptions`]).
/// Without the `tensorrt` feature no plan contains them (see [`crate::load_engine`]).
#[cfg(not(feature = "tensorrt"))]
fn gpu_provider(
    _p: Provider,
    _entry: &ModelEntry,
    _opts: &EngineOptions,
) -> Option<ExecutionProviderDispatch> {
    None
}

/// The configured TensorRT or CUDA provider (their options come from [`EngineOptions`]).
#[cfg(feature = "tensorrt")]
fn gpu_provider(
    p: Provider,
    entry: &ModelEntry,
    opts: &EngineOptions,
) -> Option<ExecutionProviderDispatch> {
    match p {
        Provider::TensorRt => {
            // int8 comes from the model's Q/DQ nodes (explicit quantisation, no calibration
            // table); fp16 lets TensorRT run the layers left in float at half precision.
            let mut trt = ep::TensorRT::default()
                .with_device_id(opts.gpu.device_id)
                .with_int8(entry.precision == "int8")
                .with_fp16(opts.gpu.fp16);
            if let Some(root) = &opts.gpu.trt_cache_dir {
                let key = crate::gpu_info::cache_key(&entry.sha256, opts.gpu.device_id);
                let dir = key.dir(root);
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => {
                        let d = dir.display().to_string();
                        trt = trt
                            .with_engine_cache(true)
                            .with_engine_cache_path(&d)
                            .with_timing_cache(true)
                            .with_timing_cache_path(&d);
                        tracing::info!(cache = %d, "TensorRT engine and timing caches");
                    }
                    // Without a cache TensorRT still works; it rebuilds the engine each start.
                    Err(e) => tracing::warn!(
                        "TensorRT cache {} cannot be created ({e}); engines are rebuilt at each start",
                        dir.display()
                    ),
                }
            }
            Some(trt.build().error_on_failure())
        }
        Provider::Cuda => Some(
            ep::CUDA::default()
                .with_device_id(opts.gpu.device_id)
                .build()
                .error_on_failure(),
        ),
        Provider::Cpu => None,
    }
}

/// Builds a session on the planned providers. A GPU provider whose registration fails is
/// dropped from the plan with the reason; if the session still cannot be built with the GPU
/// providers that registered, it is built again on the CPU alone, so a broken GPU set-up
/// degrades to the CPU engine instead of stopping the appliance.
fn build_session(
    env: &Environment,
    bytes: &[u8],
    entry: &ModelEntry,
    opts: &EngineOptions,
    plan: &mut Plan,
) -> Result<Session, String> {
    let base = || -> Result<ort::session::builder::SessionBuilder, String> {
        Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_intra_threads(opts.threads.max(1))
            .map_err(|e| e.to_string())
    };
    let mut builder = base()?;
    for p in plan.chain.clone() {
        if let Some(provider) = gpu_provider(p, entry, opts) {
            if let Err(e) = provider.register(&mut builder) {
                plan.registration_failed(p, e.to_string());
            }
        }
    }
    cpu_provider()
        .register(&mut builder)
        .map_err(|e| e.to_string())?;
    match builder.commit_from_memory(bytes) {
        Ok(s) => Ok(s),
        Err(e) if plan.primary() != Provider::Cpu => {
            for p in plan.chain.clone() {
                if p != Provider::Cpu {
                    plan.registration_failed(p, format!("session creation failed: {e}"));
                }
            }
            let mut builder = base()?;
            cpu_provider()
                .register(&mut builder)
                .map_err(|e| e.to_string())?;
            builder.commit_from_memory(bytes).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The one ONNX Runtime environment of the process (ort allows only one), with the library
/// it was loaded from. Only success is kept, so a wrong path can be corrected by a later call.
static ENVIRONMENT: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

/// Loads the ONNX Runtime library (once per process) and returns the environment.
fn environment(opts: &EngineOptions) -> Result<Environment, ModelError> {
    let unavailable = |reason: String| ModelError::Unavailable(NAME, reason);
    let wanted = library_path(opts)?;
    let mut slot = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((env, loaded)) = slot.as_ref() {
        // ort keeps the first library for the life of the process.
        if wanted.canonicalize().ok().as_deref() != Some(loaded.as_path()) {
            tracing::warn!(
                wanted = %wanted.display(),
                loaded = %loaded.display(),
                "ONNX Runtime is already loaded from another file; using that one"
            );
        }
        return Ok(env.clone());
    }
    // An absolute path: ort resolves relative ones against the executable's folder.
    let lib = wanted.canonicalize().map_err(|e| {
        unavailable(format!(
            "ONNX Runtime library {} cannot be opened: {e}; set ORT_DYLIB_PATH to libonnxruntime.so",
            wanted.display()
        ))
    })?;
    let env = ort::init_from(&lib)
        .map_err(|e| unavailable(format!("cannot load ONNX Runtime: {e}")))?
        .with_name("cacd")
        .build()
        .map_err(|e| unavailable(format!("cannot create the ONNX Runtime environment: {e}")))?;
    *slot = Some((env.clone(), lib));
    Ok(env)
}

fn library_path(opts: &EngineOptions) -> Result<PathBuf, ModelError> {
    opts.ort_dylib
        .clone()
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| {
            ModelError::Unavailable(
                NAME,
                "no ONNX Runtime library given: set ORT_DYLIB_PATH (or EngineOptions::ort_dylib) \
                 to libonnxruntime.so, e.g. the one in the onnxruntime wheel's capi/ folder"
                    .into(),
            )
        })
}

/// An ONNX Runtime session for one verified model.
pub struct OrtEngine {
    // `Session::run` takes `&mut self`; studies share one loaded model, so runs queue here
    // (each run is itself spread over `threads` intra-op threads).
    session: Mutex<Session>,
    name: &'static str,
    input_name: String,
    output_name: String,
    input_shape: [usize; 5],
    output_shape: [usize; 5],
    /// The accelerated engine runs through an I/O binding (inputs and outputs placed on the
    /// devices the providers want); the CPU engine through a plain run.
    bound: bool,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("name", &self.name)
            .field("input_shape", &self.input_shape)
            .field("output_shape", &self.output_shape)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// Builds a session from model bytes that [`crate::verify`] already checked. `file` only
    /// names the model in errors. Prefer [`crate::load_engine`], which verifies first.
    /// `accelerated`: ask for TensorRT, then CUDA, then CPU (the `tensorrt` engine); else the
    /// CPU provider alone.
    pub fn from_verified_bytes(
        bytes: &[u8],
        entry: &ModelEntry,
        file: &str,
        opts: &EngineOptions,
        accelerated: bool,
    ) -> Result<OrtEngine, ModelError> {
        let env = environment(opts)?;
        let load_err = |e: String| ModelError::Load {
            file: file.to_string(),
            reason: format!("onnxruntime: {e}"),
        };
        let mut plan = Plan::new(accelerated, &available_providers());
        let session = build_session(&env, bytes, entry, opts, &mut plan).map_err(load_err)?;
        let name = plan.primary().engine_name();
        if accelerated && plan.primary() != Provider::TensorRt {
            tracing::warn!(model = %entry.name, "{}; running on {name}", plan.describe());
        } else {
            tracing::info!(model = %entry.name, "{}", plan.describe());
        }

        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        if inputs != [entry.input_name.as_str()] {
            return Err(load_err(format!(
                "model inputs are {inputs:?}, the manifest expects one named {:?}",
                entry.input_name
            )));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !outputs.contains(&entry.output_name.as_str()) {
            return Err(load_err(format!(
                "model outputs are {outputs:?}, none is the manifest's {:?}",
                entry.output_name
            )));
        }
        Ok(OrtEngine {
            session: Mutex::new(session),
            name,
            input_name: entry.input_name.clone(),
            output_name: entry.output_name.clone(),
            input_shape: entry.input_shape(),
            output_shape: entry.output_shape(),
            bound: accelerated,
        })
    }

    /// The library the process's ONNX Runtime was loaded from, once one is.
    pub fn loaded_library() -> Option<PathBuf> {
        ENVIRONMENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|(_, p)| p.clone())
    }
}

impl Engine for OrtEngine {
    fn engine_name(&self) -> &'static str {
        self.name
    }

    fn run(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        check_input(input, &self.input_shape)?;
        let value = TensorRef::from_array_view((self.input_shape, input.data.as_slice()))
            .map_err(run_err)?;
        // A panic while another run held the lock leaves the session itself intact.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let binding;
        let outputs = if self.bound {
            // The accelerated path: ONNX Runtime moves the input to the device the first
            // provider wants and leaves the probabilities in host memory for the CPU stages.
            // With the CPU provider (CI) this is the same code with no copies across devices.
            //
            // The input is bound as an owned tensor: ort rc.15 clones a borrowed one on
            // binding, and that clone deadlocks on its own copy-session lock (seen here with
            // the CPU provider). One host copy of the input; a device input is owned anyway.
            let owned = ort::value::Tensor::from_array((self.input_shape, input.data.clone()))
                .map_err(run_err)?;
            binding = {
                let mut b = session.create_binding().map_err(run_err)?;
                b.bind_input(self.input_name.as_str(), &owned)
                    .map_err(run_err)?;
                let host = memory_info(Memory::Host)?;
                b.bind_output_to_device(self.output_name.as_str(), &host)
                    .map_err(run_err)?;
                b
            };
            session.run_binding(&binding).map_err(run_err)?
        } else {
            session
                .run(ort::inputs![self.input_name.as_str() => value])
                .map_err(run_err)?
        };
        self.output(&outputs)
    }

    fn reads_in_place(&self, memory: Memory) -> bool {
        match memory {
            Memory::Host => true,
            // The first provider reads CUDA memory in place; the CPU provider would need a
            // copy to the host first, which the caller's download does better (pinned).
            Memory::Cuda { .. } => matches!(self.name, "ort-tensorrt" | "ort-cuda"),
        }
    }

    /// A plain run on a tensor made over the caller's memory (`TensorRefMut::from_raw` with
    /// the memory's description): ONNX Runtime hands an input already on the first provider's
    /// device to it as is, and returns the outputs in host memory. No I/O binding: ort rc.15
    /// clones a borrowed value on binding (see `run`), which would copy the input it is meant
    /// to leave in place. With host memory and the CPU provider (CI) this is the same code.
    unsafe fn run_in_place(&self, input: &InPlaceInput) -> Result<Tensor, ModelError> {
        check_shape(&input.shape, &self.input_shape)?;
        if !self.reads_in_place(input.memory) {
            return Err(ModelError::Run(format!(
                "engine {} cannot read {:?} memory in place",
                self.name, input.memory
            )));
        }
        let info = memory_info(input.memory)?;
        let shape = ort::value::Shape::new(self.input_shape.map(|d| d as i64));
        // SAFETY: the caller guarantees `address` holds the input's f32 values in `memory`,
        // valid and unchanged until this returns; the tensor does not outlive this call.
        let value =
            unsafe { TensorRefMut::<f32>::from_raw(info, input.address as usize as *mut _, shape) }
                .map_err(run_err)?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => value])
            .map_err(run_err)?;
        self.output(&outputs)
    }
}

fn run_err(e: ort::Error) -> ModelError {
    ModelError::Run(format!("onnxruntime: {e}"))
}

/// ONNX Runtime's description of `memory` (device memory of the CPU or of a CUDA device).
fn memory_info(memory: Memory) -> Result<MemoryInfo<'static>, ModelError> {
    let (device, id) = match memory {
        Memory::Host => (AllocationDevice::CPU, 0),
        Memory::Cuda { device } => (AllocationDevice::CUDA, device),
    };
    MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default).map_err(run_err)
}

impl OrtEngine {
    /// The manifest's output, checked against its shape, as a host tensor.
    fn output(&self, outputs: &SessionOutputs<'_>) -> Result<Tensor, ModelError> {
        let out = outputs.get(&self.output_name).ok_or_else(|| {
            ModelError::Run(format!("onnxruntime gave no output {:?}", self.output_name))
        })?;
        let (shape, data) = out.try_extract_tensor::<f32>().map_err(run_err)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if shape != self.output_shape {
            return Err(ModelError::Run(format!(
                "output shape {shape:?} differs from the manifest's {:?}",
                self.output_shape
            )));
        }
        Ok(Tensor {
            shape,
            data: data.to_vec(),
        })
    }
}
