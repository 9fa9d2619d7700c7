//! The default engine: tract-onnx, pure Rust, nothing to install.
//!
//! Threads: tract-linalg 0.23 can spread matrix products (every Conv becomes one), packing,
//! element-wise ops, reductions and softmax over a rayon pool when its `multithread-mm`
//! feature is on (this crate turns it on). The pool is chosen per plan through
//! `RunOptions::executor`; without one tract runs on the calling thread.

use std::io::Cursor;
use std::sync::Arc;

use tract_onnx::prelude::tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use crate::{check_input, Engine, EngineOptions, ModelEntry, ModelError, Tensor as CTensor};

/// Name reported in result.json `model.engine`.
pub const ENGINE_NAME: &str = "tract-cpu";

/// A tract plan optimised for the manifest's fixed input shape.
pub struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    input_shape: [usize; 5],
    output_shape: [usize; 5],
}

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine")
            .field("input_shape", &self.input_shape)
            .field("output_shape", &self.output_shape)
            .finish_non_exhaustive()
    }
}

impl TractEngine {
    /// Builds the engine from model bytes that [`crate::verify`] already checked. `file` only
    /// names the model in errors. Prefer [`crate::load_engine`], which verifies first.
    pub fn from_verified_bytes(
        bytes: &[u8],
        entry: &ModelEntry,
        file: &str,
        opts: &EngineOptions,
    ) -> Result<TractEngine, ModelError> {
        let load_err = |stage: &str, e: TractError| ModelError::Load {
            file: file.to_string(),
            reason: format!("tract: {stage}: {e:#}"),
        };
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(bytes))
            .map_err(|e| load_err("parse", e))?;

        // The graph must have exactly the input and output the manifest names.
        let inputs = model.input_outlets().map_err(|e| load_err("inputs", e))?;
        let input_names: Vec<String> = inputs
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        if input_names != [entry.input_name.as_str()] {
            return Err(ModelError::Load {
                file: file.to_string(),
                reason: format!(
                    "model inputs are {input_names:?}, the manifest expects one named {:?}",
                    entry.input_name
                ),
            });
        }
        let outputs = model
            .output_outlets()
            .map_err(|e| load_err("outputs", e))?
            .to_vec();
        // ONNX output names are tensor names; tract keeps them as outlet labels.
        let output_names: Vec<String> = outputs
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .unwrap_or(&model.node(o.node).name)
                    .to_string()
            })
            .collect();
        let Some(out_ix) = output_names.iter().position(|n| n == &entry.output_name) else {
            return Err(ModelError::Load {
                file: file.to_string(),
                reason: format!(
                    "model outputs are {output_names:?}, none is the manifest's {:?}",
                    entry.output_name
                ),
            });
        };
        model
            .select_output_outlets(&[outputs[out_ix]])
            .map_err(|e| load_err("select output", e))?;

        // Fixing the input fact lets tract resolve every shape and pick kernels for it.
        let input_shape = entry.input_shape();
        model
            .set_input_fact(0, f32::fact(input_shape).into())
            .map_err(|e| load_err("input fact", e))?;
        let typed = model
            .into_optimized()
            .map_err(|e| load_err("optimise", e))?;

        let output_shape = entry.output_shape();
        let fact = typed
            .output_fact(0)
            .map_err(|e| load_err("output fact", e))?;
        let concrete = fact.shape.as_concrete().map(|s| s.to_vec());
        if fact.datum_type != f32::datum_type() || concrete.as_deref() != Some(&output_shape[..]) {
            return Err(ModelError::Load {
                file: file.to_string(),
                reason: format!(
                    "model output is {fact:?}, the manifest promises f32 {output_shape:?}"
                ),
            });
        }

        let options = RunOptions {
            executor: executor(opts.threads, file)?,
            ..RunOptions::default()
        };
        let plan = typed
            .into_runnable_with_options(&options)
            .map_err(|e| load_err("plan", e))?;
        Ok(TractEngine {
            plan,
            input_shape,
            output_shape,
        })
    }
}

/// A private pool of `threads` workers, or none (calling thread) for 0 or 1.
fn executor(threads: usize, file: &str) -> Result<Option<Executor>, ModelError> {
    if threads <= 1 {
        return Ok(None);
    }
    // Built here rather than with `Executor::multithread`, which panics when the OS refuses
    // threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cacd-tract-{i}"))
        .num_threads(threads)
        .build()
        .map_err(|e| ModelError::Load {
            file: file.to_string(),
            reason: format!("cannot start {threads} tract worker threads: {e}"),
        })?;
    Ok(Some(Executor::MultiThread(Arc::new(pool))))
}

impl Engine for TractEngine {
    fn engine_name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn run(&self, input: &CTensor) -> Result<CTensor, ModelError> {
        check_input(input, &self.input_shape)?;
        let tensor = tract_onnx::prelude::Tensor::from_shape(&self.input_shape, &input.data)
            .map_err(|e| ModelError::Run(format!("tract input: {e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| ModelError::Run(format!("tract: {e:#}")))?;
        let out = outputs
            .first()
            .ok_or_else(|| ModelError::Run("tract returned no output".into()))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Run(format!("tract output: {e:#}")))?;
        if view.shape() != self.output_shape {
            return Err(ModelError::Run(format!(
                "output shape {:?} differs from the manifest's {:?}",
                view.shape(),
                self.output_shape
            )));
        }
        Ok(CTensor {
            shape: view.shape().to_vec(),
            // `iter` walks in logical (C) order whatever the strides.
            data: view.iter().copied().collect(),
        })
    }
}
