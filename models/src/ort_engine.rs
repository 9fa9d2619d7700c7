//! ONNX Runtime through `ort` 2.0.0-rc.15 with `load-dynamic`: the shared library is opened
//! at run time from [`EngineOptions::ort_dylib`] or `ORT_DYLIB_PATH`.
//!
//! ort rc.15 (default features, as the workspace pins it) needs ONNX Runtime API 17, i.e.
//! ONNX Runtime >= 1.17; older libraries are refused with `Unavailable`.

use std::path::PathBuf;
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::value::TensorRef;

use crate::{check_input, Engine, EngineOptions, ModelEntry, ModelError, Tensor};

const NAME: &str = "ort-cpu";

/// The execution providers a session asks for, best first; ONNX Runtime assigns each node
/// to the first one that can run it, and CPU runs everything. This is the one place a later
/// `tensorrt` / `cuda` feature adds `ep::TensorRT` then `ep::CUDA` in front of CPU (and
/// reports their name instead of "ort-cpu").
fn execution_providers() -> (Vec<ExecutionProviderDispatch>, &'static str) {
    // The arena keeps activation buffers between runs: each study reuses the same shapes.
    (
        vec![ep::CPU::default().with_arena_allocator(true).build()],
        NAME,
    )
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
    pub fn from_verified_bytes(
        bytes: &[u8],
        entry: &ModelEntry,
        file: &str,
        opts: &EngineOptions,
    ) -> Result<OrtEngine, ModelError> {
        let env = environment(opts)?;
        let load_err = |e: String| ModelError::Load {
            file: file.to_string(),
            reason: format!("onnxruntime: {e}"),
        };
        let (providers, name) = execution_providers();
        let session = Session::builder(&env)
            .map_err(|e| load_err(e.to_string()))?
            .with_execution_providers(providers)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(opts.threads.max(1))
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| load_err(e.to_string()))?;

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
        let run_err = |e: ort::Error| ModelError::Run(format!("onnxruntime: {e}"));
        let value = TensorRef::from_array_view((self.input_shape, input.data.as_slice()))
            .map_err(run_err)?;
        // A panic while another run held the lock leaves the session itself intact.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => value])
            .map_err(run_err)?;
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
