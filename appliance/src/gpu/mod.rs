//! GPU preprocessing (feature `cuda`, or `cuda-base` with `$CUDARC_CUDA_VERSION`): the
//! operations of [`crate::preprocess`] (and the assembler's raw → HU rescale) as CUDA
//! kernels, so a study stays on the GPU from decoded pixels until the label mask comes back.
//!
//! The CPU functions are the reference; every kernel reproduces them bit for bit (same grid
//! definitions, same taps computed on the host in f64, same f32 operation order without FMA
//! contraction, same pad value and argmax tie rule). `tests/gpu_parity.rs` checks that.
//!
//! Start-up compiles the kernels once with NVRTC for the device's own architecture; device
//! buffers and pinned upload buffers are kept and reused from study to study.
//!
//! Without the CUDA driver library or NVRTC (or without a device), [`GpuPreprocessor::new`]
//! logs one line and returns [`GpuError::Unavailable`]: the caller uses the CPU path. cudarc
//! panics on its first call when a library is missing, so the libraries are probed first, and
//! every call into cudarc is additionally run under `catch_unwind` (a driver older than the
//! bindings can lack a symbol, which cudarc also reports by panicking).

mod buffers;
pub mod kernels;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use cacd_models::{InPlaceInput, Memory, Tensor};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

use crate::preprocess::{FineGrid, GridSpec, ModelGrid, PreprocessError, CANDIDATE_HU, PAD_HU};
use crate::volume::Volume;
use buffers::Pool;

/// Why the GPU path cannot do something; every variant means "use the CPU path".
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("GPU preprocessing unavailable: {0}")]
    Unavailable(String),
    #[error("CUDA call failed ({what}): {reason}")]
    Driver { what: &'static str, reason: String },
    #[error("NVRTC could not compile the preprocessing kernels: {0}")]
    Compile(String),
    #[error("the CUDA library panicked ({what}): {reason}")]
    Panicked { what: &'static str, reason: String },
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("invalid GPU preprocessing input: {0}")]
    Input(String),
    #[error("no HU volume is resident on the GPU (upload one first)")]
    NoVolume,
    #[error("volume {given:?} is not the one resident on the GPU {resident:?}")]
    NotResident {
        given: [usize; 3],
        resident: [usize; 3],
    },
}

trait DriverContext<T> {
    fn during(self, what: &'static str) -> Result<T, GpuError>;
}

impl<T> DriverContext<T> for Result<T, DriverError> {
    fn during(self, what: &'static str) -> Result<T, GpuError> {
        self.map_err(|e| GpuError::Driver {
            what,
            reason: format!("{e:?}"),
        })
    }
}

/// Runs `f`, turning a panic inside cudarc into [`GpuError::Panicked`].
fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let reason = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(GpuError::Panicked { what, reason })
        }
    }
}

/// Checks that the CUDA driver library and NVRTC can be loaded, without touching any other
/// cudarc call (those panic when a library is missing).
pub fn libraries_present() -> Result<(), GpuError> {
    guarded("library probe", || {
        // SAFETY: both functions only try to dlopen the libraries by their usual names.
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        match (driver, nvrtc) {
            (true, true) => Ok(()),
            (false, _) => Err(GpuError::Unavailable(
                "libcuda (the NVIDIA driver library) not found on the library path".into(),
            )),
            (true, false) => Err(GpuError::Unavailable(
                "libnvrtc (CUDA runtime compiler) not found; add the CUDA toolkit's lib folder \
                 to LD_LIBRARY_PATH"
                    .into(),
            )),
        }
    })
}

/// Raw stored pixel values as decoded, before the modality rescale.
#[derive(Debug, Clone, Copy)]
pub enum RawPixels<'a> {
    /// PixelRepresentation 1.
    Signed(&'a [i16]),
    /// PixelRepresentation 0.
    Unsigned(&'a [u16]),
}

impl RawPixels<'_> {
    pub fn len(&self) -> usize {
        match self {
            RawPixels::Signed(v) => v.len(),
            RawPixels::Unsigned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Modality LUT: HU = stored × slope + intercept, rounded half away from zero, saturated to
/// i16 (the convention of [`Volume::hu`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Rescale {
    /// The integer offset when the rescale is an exact integer shift (slope 1, integral
    /// intercept): the kernel then skips the f64 arithmetic, with identical results.
    fn integer_offset(&self) -> Option<i32> {
        (self.slope == 1.0 && self.intercept.fract() == 0.0 && self.intercept.abs() <= 1e6)
            .then_some(self.intercept as i32)
    }

    /// HU of one stored value (the CPU reference of the rescale kernel).
    pub fn apply(&self, stored: i32) -> i16 {
        // `as` saturates to the i16 range.
        (stored as f64 * self.slope + self.intercept).round() as i16
    }
}

/// The rescale on the CPU, element by element ([`Rescale::apply`]).
pub fn rescale_cpu(raw: RawPixels<'_>, r: Rescale) -> Vec<i16> {
    match raw {
        RawPixels::Signed(v) => v.iter().map(|&s| r.apply(s as i32)).collect(),
        RawPixels::Unsigned(v) => v.iter().map(|&s| r.apply(s as i32)).collect(),
    }
}

/// Facts about the device the preprocessor runs on.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The `--gpu-architecture` NVRTC compiled for (`None`: NVRTC's default, JIT by driver).
    pub arch: Option<String>,
    /// NVRTC compile + module load time at start-up (ms).
    pub compile_ms: f64,
}

struct Kernels {
    rescale_s16: CudaFunction,
    rescale_u16: CudaFunction,
    hu_to_unit: CudaFunction,
    resample_input: CudaFunction,
    fine_to_native: CudaFunction,
    resample_input_x4: CudaFunction,
    fine_to_native_compact: CudaFunction,
    fine_to_native_rows: CudaFunction,
    mask_scan: CudaFunction,
    mask_label: CudaFunction,
}

/// Which implementation of the gather kernels (resampling onto the model grids, labels back
/// onto the native grid) runs. All give bit-identical results; the bench compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherKernels {
    /// One output per thread, one thread per box voxel: the straightforward kernels.
    Baseline,
    /// Resampling with 4 consecutive x outputs per thread; labels compacted per warp over
    /// chunks of 256 box voxels.
    WarpChunks,
    /// Resampling as `WarpChunks`; labels compacted per box row, one warp per row (rows wider
    /// than 512 voxels fall back to `WarpChunks`).
    WarpRows,
    /// Per grid the faster resampling: one output per thread on 1-channel grids (the coarse
    /// grid: 4 per thread left too few threads in flight, 21–41 % slower by device time on an
    /// H100 and an H200), 4 per thread on 4-channel ones; labels as `WarpRows`.
    Mixed,
    /// Resampling as `Mixed`; labels in two passes: a row scan that writes the zeros and lists
    /// the candidates, then the list labelled with every lane busy (rows wider than 512
    /// voxels fall back to `WarpChunks`).
    TwoPass,
}

impl GatherKernels {
    /// The set the product uses (fastest in the GPU bench, BENCHMARKS.md).
    pub const DEFAULT: GatherKernels = GatherKernels::Mixed;
    pub const ALL: [GatherKernels; 5] = [
        GatherKernels::Baseline,
        GatherKernels::WarpChunks,
        GatherKernels::WarpRows,
        GatherKernels::Mixed,
        GatherKernels::TwoPass,
    ];
}

/// The native-grid box a fine crop covers, and the labels computed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskBox {
    /// First native index `[z, y, x]` of the box.
    pub start: [usize; 3],
    /// Box extent `[z, y, x]` (all ≥ 1).
    pub len: [usize; 3],
}

impl MaskBox {
    pub fn voxels(&self) -> usize {
        self.len.iter().product()
    }
}

/// CUDA implementation of the preprocessing stage. One per process (or per GPU); not `Sync`:
/// a study is preprocessed by one thread at a time.
pub struct GpuPreprocessor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    pool: Pool,
    /// Dims `[z, y, x]` of the HU volume in `pool.hu`, if one is resident.
    resident: Option<[usize; 3]>,
    /// (signed, count) of the raw values in `pool.raw_s16` / `pool.raw_u16`.
    raw_on_device: Option<(bool, usize)>,
    /// The gather kernels in use ([`GatherKernels::DEFAULT`] unless the bench changes it).
    gather: GatherKernels,
    info: DeviceInfo,
}

/// Largest extent accepted along one axis (kernel indices are 32-bit).
const MAX_EXTENT: usize = i32::MAX as usize;

fn check_dims(dims: [usize; 3], len: usize) -> Result<usize, GpuError> {
    if dims.contains(&0) || dims.iter().any(|&d| d > MAX_EXTENT) {
        return Err(GpuError::Input(format!(
            "volume dims {dims:?} out of range"
        )));
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| GpuError::Input(format!("volume dims {dims:?} overflow")))?;
    if n != len {
        return Err(GpuError::Input(format!(
            "{len} pixels do not fill dims {dims:?} ({n})"
        )));
    }
    Ok(n)
}

fn elementwise_cfg(n: usize) -> LaunchConfig {
    let threads = n.div_ceil(kernels::PER_THREAD);
    LaunchConfig {
        grid_dim: (
            threads.div_ceil(kernels::BLOCK as usize).max(1) as u32,
            1,
            1,
        ),
        block_dim: (kernels::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The resident HU volume and the uploaded class probabilities the mask kernels read.
fn mask_inputs<'a>(
    hu: &'a buffers::DeviceBuf<i16>,
    probs: &'a buffers::DeviceBuf<f32>,
) -> Result<(&'a CudaSlice<i16>, &'a CudaSlice<f32>), GpuError> {
    let hu = hu.get().ok_or(GpuError::NoVolume)?;
    let probs = probs.get().ok_or_else(|| {
        GpuError::Input("no class probabilities uploaded (upload_probs first)".into())
    })?;
    Ok((hu, probs))
}

/// The row mask kernels' launch: one warp per box row, BLOCK / 32 rows per block, blockIdx.y
/// the box slice (the caller checks bw <= MASK_ROW_MAX and bd <= 65 535).
fn rows_cfg(mbox: &MaskBox) -> LaunchConfig {
    let warps = kernels::BLOCK as usize / 32;
    LaunchConfig {
        grid_dim: (mbox.len[1].div_ceil(warps) as u32, mbox.len[0] as u32, 1),
        block_dim: (kernels::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per voxel of `slices` slices of `per_slice` voxels (slice = blockIdx.y).
fn slab_cfg(per_slice: usize, slices: usize) -> Result<LaunchConfig, GpuError> {
    if per_slice >= u32::MAX as usize || slices > 65_535 {
        return Err(GpuError::Input(format!(
            "{slices} slices of {per_slice} voxels exceed the kernel launch limits"
        )));
    }
    Ok(LaunchConfig {
        grid_dim: (
            per_slice.div_ceil(kernels::BLOCK as usize).max(1) as u32,
            slices.max(1) as u32,
            1,
        ),
        block_dim: (kernels::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Host copy on all cores: large copies into and out of pinned memory are otherwise the
/// slowest part of a study (and first-touch page faults of a fresh destination parallelise).
fn par_copy<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    const CHUNK: usize = 1 << 18;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Coordinate channel value of model index `k` on an axis of `n` voxels (as the CPU).
fn coord(k: usize, n: usize) -> f32 {
    (2.0 * k as f64 / (n as f64 - 1.0) - 1.0) as f32
}

/// Tap tables of a model grid on a native volume of `dims`: per axis and model index
/// `{i0, i1, bits(w1), bits(coord)}`, with the CPU's rule (a tap outside the volume is -1 and
/// takes the pad value). Public for the bench, which derives the kernel's compulsory memory
/// traffic from them.
pub fn input_taps(grid: &ModelGrid, dims: [usize; 3]) -> Result<Vec<i32>, GpuError> {
    let mut t = Vec::with_capacity(4 * grid.spec.shape.iter().sum::<usize>());
    for (axis, &n_src) in dims.iter().enumerate() {
        let n_out = grid.spec.shape[axis];
        for k in 0..n_out {
            let s = grid.to_native(axis, k as f64);
            if !s.is_finite() {
                return Err(GpuError::Input(format!(
                    "model grid position along axis {axis} is not finite: {grid:?}"
                )));
            }
            let f = s.floor();
            let w1 = (s - f) as f32;
            let idx = |i: f64| {
                if i >= 0.0 && i < n_src as f64 {
                    i as i32
                } else {
                    -1
                }
            };
            t.extend([
                idx(f),
                idx(f + 1.0),
                w1.to_bits() as i32,
                coord(k, n_out).to_bits() as i32,
            ]);
        }
    }
    Ok(t)
}

/// The native box a fine grid covers and its tap tables into the fine grid (per box index
/// `{i0, i1, bits(w), 0}`), with the CPU's rules; `None` when the crop misses the volume.
pub fn mask_box(grid: &FineGrid, dims: [usize; 3]) -> Option<(MaskBox, Vec<i32>)> {
    let mut start = [0usize; 3];
    let mut len = [0usize; 3];
    let mut taps = Vec::new();
    for (a, &n_native) in dims.iter().enumerate() {
        let n = grid.spec.shape[a];
        let lo = grid.to_native(a, 0.0).ceil().max(0.0);
        let hi = grid
            .to_native(a, n as f64 - 1.0)
            .floor()
            .min(n_native as f64 - 1.0);
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return None;
        }
        let (lo, hi) = (lo as usize, hi as usize);
        start[a] = lo;
        len[a] = hi - lo + 1;
        for i in lo..=hi {
            // The CPU mapping's own tap, so the kernel interpolates bit-identically.
            let (i0, i1, w) = crate::preprocess::fine_tap(grid, a, i);
            taps.extend([i0 as i32, i1 as i32, w.to_bits() as i32, 0]);
        }
    }
    Some((MaskBox { start, len }, taps))
}

impl GpuPreprocessor {
    /// The preprocessor on device 0. On failure logs one line (why, and that the CPU path is
    /// used) and returns the error; never panics.
    pub fn new() -> Result<Self, GpuError> {
        Self::on_device(0).inspect_err(|e| {
            tracing::warn!("GPU preprocessing off, using the CPU path: {e}");
        })
    }

    /// The preprocessor on device `ordinal` (no logging).
    pub fn on_device(ordinal: usize) -> Result<Self, GpuError> {
        libraries_present()?;
        guarded("start-up", || Self::start(ordinal))
    }

    fn start(ordinal: usize) -> Result<Self, GpuError> {
        let count = CudaContext::device_count().map_err(|e| {
            GpuError::Unavailable(format!("the CUDA driver reports no usable device: {e:?}"))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::Unavailable(format!(
                "no CUDA device {ordinal} ({count} present)"
            )));
        }
        let ctx = CudaContext::new(ordinal).during("context creation")?;
        // One stream, used in order for everything: cudarc's cross-stream event tracking is
        // not needed and costs two event records per launch.
        // SAFETY: no buffer of this context is ever used on a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().during("device name")?;
        let cc = ctx.compute_capability().during("compute capability")?;
        let t0 = Instant::now();
        let (module, arch) = Self::compile(&ctx, cc)?;
        let load = |name: &str| {
            module.load_function(name).map_err(|e| GpuError::Driver {
                what: "kernel lookup",
                reason: format!("{name}: {e:?}"),
            })
        };
        let kernels = Kernels {
            rescale_s16: load(kernels::RESCALE_S16)?,
            rescale_u16: load(kernels::RESCALE_U16)?,
            hu_to_unit: load(kernels::HU_TO_UNIT)?,
            resample_input: load(kernels::RESAMPLE_INPUT)?,
            fine_to_native: load(kernels::FINE_TO_NATIVE)?,
            resample_input_x4: load(kernels::RESAMPLE_INPUT_X4)?,
            fine_to_native_compact: load(kernels::FINE_TO_NATIVE_COMPACT)?,
            fine_to_native_rows: load(kernels::FINE_TO_NATIVE_ROWS)?,
            mask_scan: load(kernels::MASK_SCAN)?,
            mask_label: load(kernels::MASK_LABEL)?,
        };
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            "GPU preprocessing on {name} (sm_{}{}), kernels compiled for {} in {compile_ms:.0} ms",
            cc.0,
            cc.1,
            arch.as_deref().unwrap_or("NVRTC's default architecture")
        );
        Ok(GpuPreprocessor {
            ctx,
            stream,
            kernels,
            pool: Pool::new(),
            resident: None,
            raw_on_device: None,
            gather: GatherKernels::DEFAULT,
            info: DeviceInfo {
                name,
                compute_capability: cc,
                arch,
                compile_ms,
            },
        })
    }

    /// NVRTC for the device's own virtual architecture (so the driver's JIT has nothing to
    /// guess); when this NVRTC does not know the architecture, its default instead.
    fn compile(
        ctx: &Arc<CudaContext>,
        cc: (i32, i32),
    ) -> Result<(Arc<cudarc::driver::CudaModule>, Option<String>), GpuError> {
        let arch = format!("compute_{}{}", cc.0, cc.1);
        let opts = |arch: Option<&str>| CompileOptions {
            options: arch
                .map(|a| vec![format!("--gpu-architecture={a}")])
                .unwrap_or_default(),
            name: Some("cacd_preprocess.cu".into()),
            ..Default::default()
        };
        let (ptx, arch) = match compile_ptx_with_opts(kernels::SOURCE, opts(Some(&arch))) {
            Ok(ptx) => (ptx, Some(arch)),
            Err(first) => match compile_ptx_with_opts(kernels::SOURCE, opts(None)) {
                Ok(ptx) => (ptx, None),
                Err(e) => {
                    return Err(GpuError::Compile(format!(
                        "for {arch}: {first:?}; default arch: {e:?}"
                    )))
                }
            },
        };
        let module = ctx.load_module(ptx).during("module load")?;
        Ok((module, arch))
    }

    /// Chooses the gather kernels (same results, bit for bit); for the bench's comparison
    /// and the parity tests.
    pub fn set_gather_kernels(&mut self, k: GatherKernels) {
        self.gather = k;
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context, for callers that time work with events (the bench).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The one stream all work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// (device bytes, pinned host bytes) held by the buffer pool.
    pub fn footprint(&self) -> (usize, usize) {
        self.pool.footprint()
    }

    /// Dims `[z, y, x]` of the resident HU volume.
    pub fn resident_dims(&self) -> Option<[usize; 3]> {
        self.resident
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        guarded("synchronize", || {
            self.stream.synchronize().during("synchronize")
        })
    }

    /// Pinned staging memory for `len` signed stored values: decode straight into it, then
    /// call [`GpuPreprocessor::rescale_staged`] (saves a host copy and uploads at full speed).
    /// Waits for queued work first: an upload may still be reading the staging memory.
    pub fn stage_signed(&mut self, len: usize) -> Result<&mut [i16], GpuError> {
        let (ctx, stream, pool) = (&self.ctx, &self.stream, &mut self.pool);
        guarded("staging", || {
            stream.synchronize().during("synchronize")?;
            let b = pool.stage_s16.ensure(ctx, len).during("pinned alloc")?;
            let s = b.as_mut_slice().during("pinned wait")?;
            Ok(&mut s[..len])
        })
    }

    /// As [`GpuPreprocessor::stage_signed`], for unsigned stored values.
    pub fn stage_unsigned(&mut self, len: usize) -> Result<&mut [u16], GpuError> {
        let (ctx, stream, pool) = (&self.ctx, &self.stream, &mut self.pool);
        guarded("staging", || {
            stream.synchronize().during("synchronize")?;
            let b = pool.stage_u16.ensure(ctx, len).during("pinned alloc")?;
            let s = b.as_mut_slice().during("pinned wait")?;
            Ok(&mut s[..len])
        })
    }

    /// Queues upload of the staged raw values (`signed` picks the staging buffer) and their
    /// rescale into the resident HU volume. Does not wait.
    pub fn rescale_staged(
        &mut self,
        signed: bool,
        dims: [usize; 3],
        rescale: Rescale,
    ) -> Result<(), GpuError> {
        let n = check_dims(dims, dims.iter().product())?;
        self.upload_staged(signed, n)?;
        self.enqueue_rescale(dims, rescale)
    }

    /// Queues the copy of `n` staged raw values (`signed` picks the staging buffer) to the
    /// device. Does not wait.
    pub fn upload_staged(&mut self, signed: bool, n: usize) -> Result<(), GpuError> {
        self.raw_on_device = None;
        let (stream, pool) = (&self.stream, &mut self.pool);
        guarded("upload", || {
            // The staging memory is pinned, so this is a true async DMA; the stage_*
            // functions synchronise before handing the memory out again.
            if signed {
                let src = pool.stage_s16.host(n)?;
                let raw = pool.raw_s16.ensure(stream, n).during("device alloc")?;
                stream
                    .memcpy_htod(src, &mut raw.slice_mut(..n))
                    .during("upload")
            } else {
                let src = pool.stage_u16.host(n)?;
                let raw = pool.raw_u16.ensure(stream, n).during("device alloc")?;
                stream
                    .memcpy_htod(src, &mut raw.slice_mut(..n))
                    .during("upload")
            }
        })?;
        self.raw_on_device = Some((signed, n));
        Ok(())
    }

    /// Queues the rescale of the uploaded raw values ([`Self::upload_staged`]) into the
    /// resident HU volume of `dims`. Does not wait.
    pub fn enqueue_rescale(&mut self, dims: [usize; 3], rescale: Rescale) -> Result<(), GpuError> {
        let n = check_dims(dims, dims.iter().product())?;
        if !(rescale.slope.is_finite() && rescale.intercept.is_finite()) {
            return Err(GpuError::Input(format!(
                "rescale {rescale:?} is not finite"
            )));
        }
        let signed = match self.raw_on_device {
            Some((signed, len)) if len == n => signed,
            _ => {
                return Err(GpuError::Input(format!(
                    "{n} raw values were not uploaded (stage and upload_staged first)"
                )))
            }
        };
        self.resident = None;
        let (stream, pool, k) = (&self.stream, &mut self.pool, &self.kernels);
        guarded("rescale", || {
            let hu = pool.hu.ensure(stream, n).during("device alloc")?;
            let (int_path, int_offset) = match rescale.integer_offset() {
                Some(o) => (1i32, o),
                None => (0i32, 0i32),
            };
            let n64 = n as u64;
            let (f, raw_s16, raw_u16) = if signed {
                (&k.rescale_s16, pool.raw_s16.get(), None)
            } else {
                (&k.rescale_u16, None, pool.raw_u16.get())
            };
            let mut b = stream.launch_builder(f);
            match (raw_s16, raw_u16) {
                (Some(raw), _) => b.arg(raw),
                (None, Some(raw)) => b.arg(raw),
                (None, None) => return Err(GpuError::Input("raw values were not uploaded".into())),
            };
            b.arg(&mut *hu).arg(&n64);
            b.arg(&rescale.slope).arg(&rescale.intercept);
            b.arg(&int_path).arg(&int_offset);
            // SAFETY: argument types match the kernel signature; raw and hu hold ≥ n.
            unsafe { b.launch(elementwise_cfg(n)) }.during("rescale launch")?;
            Ok(())
        })?;
        self.resident = Some(dims);
        Ok(())
    }

    /// Uploads decoded raw values (copied into pinned staging first) and rescales them into
    /// the resident HU volume. Does not wait.
    pub fn upload_raw(
        &mut self,
        raw: RawPixels<'_>,
        dims: [usize; 3],
        rescale: Rescale,
    ) -> Result<(), GpuError> {
        check_dims(dims, raw.len())?;
        match raw {
            RawPixels::Signed(v) => par_copy(self.stage_signed(v.len())?, v),
            RawPixels::Unsigned(v) => par_copy(self.stage_unsigned(v.len())?, v),
        }
        self.rescale_staged(matches!(raw, RawPixels::Signed(_)), dims, rescale)
    }

    /// Makes an HU volume computed on the CPU resident (e.g. from the assembler). Does not wait.
    pub fn upload_hu(&mut self, hu: ArrayView3<i16>) -> Result<(), GpuError> {
        let (d, h, w) = hu.dim();
        let dims = [d, h, w];
        let n = check_dims(dims, hu.len())?;
        self.resident = None;
        let std = hu.as_standard_layout();
        let Some(src) = std.as_slice() else {
            return Err(GpuError::Input("HU volume is not contiguous".into()));
        };
        par_copy(self.stage_signed(n)?, src);
        let (stream, pool) = (&self.stream, &mut self.pool);
        guarded("upload", || {
            let dst = pool.hu.ensure(stream, n).during("device alloc")?;
            let staged = pool.stage_s16.host(n)?;
            stream
                .memcpy_htod(staged, &mut dst.slice_mut(..n))
                .during("upload")
        })?;
        self.resident = Some(dims);
        Ok(())
    }

    fn resident_hu(&self) -> Result<([usize; 3], &CudaSlice<i16>), GpuError> {
        match (self.resident, self.pool.hu.get()) {
            (Some(d), Some(b)) => Ok((d, b)),
            _ => Err(GpuError::NoVolume),
        }
    }

    fn check_resident(&self, vol: &Volume) -> Result<(), GpuError> {
        let (d, h, w) = vol.dims();
        let (resident, _) = self.resident_hu()?;
        if resident != [d, h, w] {
            return Err(GpuError::NotResident {
                given: [d, h, w],
                resident,
            });
        }
        Ok(())
    }

    /// The resident HU volume, copied back to the host.
    pub fn hu_to_host(&mut self) -> Result<Array3<i16>, GpuError> {
        let (dims, hu) = self.resident_hu()?;
        let n: usize = dims.iter().product();
        let v = guarded("download", || {
            let v = self.stream.clone_dtoh(&hu.slice(..n)).during("download")?;
            self.stream.synchronize().during("synchronize")?;
            Ok(v)
        })?;
        Array3::from_shape_vec((dims[0], dims[1], dims[2]), v)
            .map_err(|e| GpuError::Input(format!("HU download: {e}")))
    }

    /// Queues clip + normalise of the whole resident volume into the device buffer `unit`;
    /// returns its element count. Does not wait.
    pub fn enqueue_hu_to_unit(&mut self, lo: f32, hi: f32, scale: f32) -> Result<usize, GpuError> {
        let (dims, _) = self.resident_hu()?;
        let n: usize = dims.iter().product();
        let (stream, pool, k) = (&self.stream, &mut self.pool, &self.kernels);
        guarded("hu_to_unit", || {
            let out = pool.unit.ensure(stream, n).during("device alloc")?;
            let hu = pool.hu.get().ok_or(GpuError::NoVolume)?;
            let n64 = n as u64;
            let mut b = stream.launch_builder(&k.hu_to_unit);
            b.arg(hu)
                .arg(&mut *out)
                .arg(&n64)
                .arg(&lo)
                .arg(&hi)
                .arg(&scale);
            // SAFETY: argument types match; hu and out hold ≥ n.
            unsafe { b.launch(elementwise_cfg(n)) }.during("hu_to_unit launch")?;
            Ok(n)
        })
    }

    /// HU clipped to `[lo, hi]` and divided by `scale`, over the whole resident volume.
    pub fn hu_to_unit(&mut self, lo: f32, hi: f32, scale: f32) -> Result<Vec<f32>, GpuError> {
        let n = self.enqueue_hu_to_unit(lo, hi, scale)?;
        let (stream, pool) = (&self.stream, &self.pool);
        guarded("download", || {
            let out = pool.unit.get().ok_or(GpuError::NoVolume)?;
            let v = stream.clone_dtoh(&out.slice(..n)).during("download")?;
            stream.synchronize().during("synchronize")?;
            Ok(v)
        })
    }

    /// Queues the model input of `grid` (trilinear resampling of the resident volume with pad
    /// [`PAD_HU`], HU clip/scale, coordinate channels when the spec has 4) into the device
    /// buffer `model`; returns its element count. Does not wait.
    pub fn enqueue_model_input(&mut self, grid: &ModelGrid) -> Result<usize, GpuError> {
        let (dims, _) = self.resident_hu()?;
        let spec = &grid.spec;
        if !(spec.channels == 1 || spec.channels == 4) || spec.shape.iter().any(|&n| n < 2) {
            return Err(PreprocessError::Grid(format!("{spec:?}")).into());
        }
        let taps = input_taps(grid, dims)?;
        let [d, h, w] = spec.shape;
        let plane = d * h * w;
        let total = plane * spec.channels;
        let (cfg, kernel) = match self.gather {
            GatherKernels::Baseline => (slab_cfg(h * w, d)?, &self.kernels.resample_input),
            GatherKernels::Mixed | GatherKernels::TwoPass if spec.channels == 1 => {
                (slab_cfg(h * w, d)?, &self.kernels.resample_input)
            }
            GatherKernels::WarpChunks
            | GatherKernels::WarpRows
            | GatherKernels::Mixed
            | GatherKernels::TwoPass => (
                slab_cfg(h * w.div_ceil(4), d)?,
                &self.kernels.resample_input_x4,
            ),
        };
        let (stream, pool) = (&self.stream, &mut self.pool);
        guarded("model input", || {
            let tap_buf = pool.input_taps.load(stream, taps).during("tap upload")?;
            let out = pool.model.ensure(stream, total).during("device alloc")?;
            let hu = pool.hu.get().ok_or(GpuError::NoVolume)?;
            let (nh, nw) = (dims[1] as i32, dims[2] as i32);
            let (di, hi_, wi, ch) = (d as i32, h as i32, w as i32, spec.channels as i32);
            let (pad, lo, hi, scale) = (PAD_HU, spec.hu_clip[0], spec.hu_clip[1], spec.hu_scale);
            let mut b = stream.launch_builder(kernel);
            b.arg(hu).arg(&nh).arg(&nw).arg(tap_buf);
            b.arg(&di).arg(&hi_).arg(&wi).arg(&ch);
            b.arg(&pad).arg(&lo).arg(&hi).arg(&scale).arg(&mut *out);
            // SAFETY: argument types match; taps hold d + h + w int4 entries, out ≥ total.
            unsafe { b.launch(cfg) }.during("resample launch")?;
            Ok(total)
        })
    }

    /// The `[1, C, D, H, W]` model input of `grid` (see [`Self::enqueue_model_input`]).
    pub fn model_input(&mut self, grid: &ModelGrid) -> Result<Tensor, GpuError> {
        let total = self.enqueue_model_input(grid)?;
        let (ctx, stream, pool) = (&self.ctx, &self.stream, &mut self.pool);
        let data = guarded("download", || {
            // Through pinned memory (full-speed DMA; a pageable download of a fresh Vec ran
            // at ~1 GB/s on the H100 machine), then a parallel copy into the tensor.
            let out = pool.model.get().ok_or(GpuError::NoVolume)?;
            let host = pool.down_f32.ensure(ctx, total).during("pinned alloc")?;
            stream
                .memcpy_dtoh(&out.slice(..total), host)
                .during("download")?;
            stream.synchronize().during("synchronize")?;
            let src = &host.as_slice().during("pinned wait")?[..total];
            let mut v = vec![0f32; total];
            par_copy(&mut v, src);
            Ok(v)
        })?;
        let [d, h, w] = grid.spec.shape;
        Ok(Tensor {
            shape: vec![1, grid.spec.channels, d, h, w],
            data,
        })
    }

    /// Where this preprocessor's buffers live (for [`cacd_models::Engine::reads_in_place`]).
    pub fn memory(&self) -> Memory {
        Memory::Cuda {
            device: self.ctx.ordinal() as i32,
        }
    }

    /// The model input of `grid` (see [`Self::enqueue_model_input`]) left in the device
    /// buffer, finished, and described for an engine that reads CUDA memory in place: the
    /// study's volume does not come back to the host before inference. `vol` must be the
    /// resident volume. The description is valid until the next model input is queued.
    pub fn model_input_in_place(
        &mut self,
        vol: &Volume,
        grid: &ModelGrid,
    ) -> Result<InPlaceInput, GpuError> {
        self.check_resident(vol)?;
        self.enqueue_model_input(grid)?;
        // The engine reads on its own stream: the input must be complete first.
        self.synchronize()?;
        let memory = self.memory();
        let out = self.pool.model.get().ok_or(GpuError::NoVolume)?;
        // Event tracking is off (one stream), so the guard records nothing.
        let (address, _no_event) = out.device_ptr(&self.stream);
        let [d, h, w] = grid.spec.shape;
        Ok(InPlaceInput {
            memory,
            address,
            shape: vec![1, grid.spec.channels, d, h, w],
        })
    }

    /// The model input of `grid` downloaded into a host tensor; `vol` must be the resident
    /// volume.
    pub fn model_input_for(&mut self, vol: &Volume, grid: &ModelGrid) -> Result<Tensor, GpuError> {
        self.check_resident(vol)?;
        self.model_input(grid)
    }

    /// GPU [`crate::preprocess::coarse_input`]; `vol` must be the resident volume.
    pub fn coarse_input(
        &mut self,
        vol: &Volume,
        spec: &GridSpec,
    ) -> Result<(Tensor, ModelGrid), GpuError> {
        let grid = ModelGrid::centred(vol, spec);
        Ok((self.model_input_for(vol, &grid)?, grid))
    }

    /// GPU [`crate::preprocess::fine_input`]; `vol` must be the resident volume.
    pub fn fine_input(
        &mut self,
        vol: &Volume,
        centre_mm: [f64; 3],
        spec: &GridSpec,
    ) -> Result<(Tensor, FineGrid), GpuError> {
        let grid = ModelGrid::at_patient(vol, spec, centre_mm);
        Ok((self.model_input_for(vol, &grid)?, grid))
    }

    /// Queues upload of the segmenter's output `[1, K, D, H, W]` (checked against `grid` as
    /// the CPU does) through pinned staging; returns K. Does not wait.
    pub fn upload_probs(&mut self, probs: &Tensor, grid: &FineGrid) -> Result<usize, GpuError> {
        let k = crate::preprocess::check_probs(probs, grid)?;
        let n = probs.data.len();
        let (ctx, stream, pool) = (&self.ctx, &self.stream, &mut self.pool);
        guarded("probability upload", || {
            // The previous upload from this staging memory may still be running.
            stream.synchronize().during("synchronize")?;
            let staged = pool.stage_f32.ensure(ctx, n).during("pinned alloc")?;
            par_copy(
                &mut staged.as_mut_slice().during("pinned wait")?[..n],
                &probs.data,
            );
            let dst = pool.probs.ensure(stream, n).during("device alloc")?;
            let src = pool.stage_f32.host(n)?;
            stream
                .memcpy_htod(src, &mut dst.slice_mut(..n))
                .during("upload")?;
            Ok(k)
        })
    }

    /// Queues the label computation over the crop's native box from the uploaded
    /// probabilities (`k` classes, [`Self::upload_probs`]) into the device buffer `mask`.
    /// `None` when the crop misses the volume. Does not wait.
    pub fn enqueue_mask(&mut self, grid: &FineGrid, k: usize) -> Result<Option<MaskBox>, GpuError> {
        let (dims, _) = self.resident_hu()?;
        let Some((mbox, taps)) = mask_box(grid, dims) else {
            return Ok(None);
        };
        let [d, h, w] = grid.spec.shape;
        if d * h * w > u32::MAX as usize {
            return Err(GpuError::Input(format!(
                "fine grid {:?} too large for the mask kernel's 32-bit offsets",
                grid.spec.shape
            )));
        }
        let n = mbox.voxels();
        let row_kernels = mbox.len[2] <= kernels::MASK_ROW_MAX && mbox.len[0] <= 65_535;
        if self.gather == GatherKernels::TwoPass && row_kernels && n < u32::MAX as usize {
            return self.enqueue_mask_two_pass(grid, k, dims, mbox, taps);
        }
        let rows =
            matches!(self.gather, GatherKernels::WarpRows | GatherKernels::Mixed) && row_kernels;
        let warps = kernels::BLOCK as usize / 32;
        let (cfg, kernel) = if rows {
            (rows_cfg(&mbox), &self.kernels.fine_to_native_rows)
        } else if self.gather == GatherKernels::Baseline || n >= u32::MAX as usize - 4096 {
            // (The compact kernel indexes box voxels and warp bases past the end in 32 bits.)
            let cfg = slab_cfg(mbox.len[1] * mbox.len[2], mbox.len[0])?;
            (cfg, &self.kernels.fine_to_native)
        } else {
            // One warp per MASK_WARP_VOXELS box voxels, BLOCK / 32 warps per block.
            let cfg = LaunchConfig {
                grid_dim: (
                    n.div_ceil(kernels::MASK_WARP_VOXELS * warps).max(1) as u32,
                    1,
                    1,
                ),
                block_dim: (kernels::BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            (cfg, &self.kernels.fine_to_native_compact)
        };
        let (stream, pool) = (&self.stream, &mut self.pool);
        guarded("mask", || {
            let tap_buf = pool.mask_taps.load(stream, taps).during("tap upload")?;
            let out = pool.mask.ensure(stream, n).during("device alloc")?;
            let (hu, probs) = mask_inputs(&pool.hu, &pool.probs)?;
            let (nh, nw) = (dims[1] as i32, dims[2] as i32);
            let (ki, di, hi, wi) = (k as i32, d as i32, h as i32, w as i32);
            let thr: i16 = CANDIDATE_HU;
            let [bz0, by0, bx0] = mbox.start.map(|v| v as i32);
            let [bd, bh, bw] = mbox.len.map(|v| v as i32);
            let mut b = stream.launch_builder(kernel);
            b.arg(hu).arg(&nh).arg(&nw).arg(tap_buf).arg(probs);
            b.arg(&ki).arg(&di).arg(&hi).arg(&wi).arg(&thr);
            b.arg(&bz0).arg(&by0).arg(&bx0).arg(&bd).arg(&bh).arg(&bw);
            b.arg(&mut *out);
            // SAFETY: argument types match; taps hold bd + bh + bw int4 entries whose indices
            // lie inside the fine grid; probs hold k·d·h·w; out ≥ the box's voxels.
            unsafe { b.launch(cfg) }.during("mask launch")?;
            Ok(Some(mbox))
        })
    }

    /// The labels of `mbox` in two passes (`GatherKernels::TwoPass`): `mask_scan` over the
    /// box rows, then `mask_label` over the candidates it listed.
    fn enqueue_mask_two_pass(
        &mut self,
        grid: &FineGrid,
        k: usize,
        dims: [usize; 3],
        mbox: MaskBox,
        taps: Vec<i32>,
    ) -> Result<Option<MaskBox>, GpuError> {
        let [d, h, w] = grid.spec.shape;
        let n = mbox.voxels();
        let scan_cfg = rows_cfg(&mbox);
        let label_cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(kernels::BLOCK as usize)
                    .clamp(1, kernels::MASK_LABEL_MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (kernels::BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let kern = &self.kernels;
        let (stream, pool) = (&self.stream, &mut self.pool);
        guarded("mask", || {
            let tap_buf = pool.mask_taps.load(stream, taps).during("tap upload")?;
            let out = pool.mask.ensure(stream, n).during("device alloc")?;
            let cands = pool.mask_cands.ensure(stream, n).during("device alloc")?;
            let count = pool.mask_count.ensure(stream, 1).during("device alloc")?;
            stream.memset_zeros(&mut *count).during("count reset")?;
            let (hu, probs) = mask_inputs(&pool.hu, &pool.probs)?;
            let (nh, nw) = (dims[1] as i32, dims[2] as i32);
            let (ki, di, hi, wi) = (k as i32, d as i32, h as i32, w as i32);
            let thr: i16 = CANDIDATE_HU;
            let [bz0, by0, bx0] = mbox.start.map(|v| v as i32);
            let [bd, bh, bw] = mbox.len.map(|v| v as i32);
            let mut b = stream.launch_builder(&kern.mask_scan);
            b.arg(hu).arg(&nh).arg(&nw).arg(&thr);
            b.arg(&bz0).arg(&by0).arg(&bx0).arg(&bd).arg(&bh).arg(&bw);
            b.arg(&mut *out).arg(&mut *cands).arg(&mut *count);
            // SAFETY: argument types match; out and cands hold ≥ the box's voxels (< 2^32),
            // count one u32, zeroed above on the same stream.
            unsafe { b.launch(scan_cfg) }.during("mask scan launch")?;
            let mut b = stream.launch_builder(&kern.mask_label);
            b.arg(tap_buf).arg(probs);
            b.arg(&ki)
                .arg(&di)
                .arg(&hi)
                .arg(&wi)
                .arg(&bd)
                .arg(&bh)
                .arg(&bw);
            b.arg(&*cands).arg(&*count).arg(&mut *out);
            // SAFETY: argument types match; taps hold bd + bh + bw int4 entries whose indices
            // lie inside the fine grid; probs hold k·d·h·w; the list holds *count box offsets.
            unsafe { b.launch(label_cfg) }.during("mask label launch")?;
            Ok(Some(mbox))
        })
    }

    /// Downloads the labels of `mbox` into a zeroed native-size mask.
    pub fn fetch_mask(&mut self, mbox: Option<MaskBox>) -> Result<Array3<u8>, GpuError> {
        let (dims, _) = self.resident_hu()?;
        let mut mask = Array3::<u8>::zeros((dims[0], dims[1], dims[2]));
        let Some(mbox) = mbox else {
            return Ok(mask);
        };
        let n = mbox.voxels();
        let [z0, y0, x0] = mbox.start;
        let [bd, bh, bw] = mbox.len;
        let slice_len = dims[1] * dims[2];
        let (ctx, stream, pool) = (&self.ctx, &self.stream, &mut self.pool);
        guarded("download", || {
            let out = pool.mask.get().ok_or(GpuError::NoVolume)?;
            let host = pool.down_u8.ensure(ctx, n).during("pinned alloc")?;
            stream
                .memcpy_dtoh(&out.slice(..n), host)
                .during("download")?;
            stream.synchronize().during("synchronize")?;
            let labels = &host.as_slice().during("pinned wait")?[..n];
            let Some(m) = mask.as_slice_mut() else {
                return Err(GpuError::Input("mask array not contiguous".into()));
            };
            // Scatter the box rows into the native volume, one slice per task.
            m.par_chunks_mut(slice_len)
                .skip(z0)
                .take(bd)
                .zip(labels.par_chunks(bh * bw))
                .for_each(|(dst, src)| {
                    for (r, row) in src.chunks_exact(bw).enumerate() {
                        let o = (y0 + r) * dims[2] + x0;
                        dst[o..o + bw].copy_from_slice(row);
                    }
                });
            Ok(())
        })?;
        Ok(mask)
    }

    /// GPU [`crate::preprocess::fine_to_native_mask`]; `vol` must be the resident volume.
    pub fn fine_to_native_mask(
        &mut self,
        probs: &Tensor,
        grid: &FineGrid,
        vol: &Volume,
    ) -> Result<Array3<u8>, GpuError> {
        self.check_resident(vol)?;
        let k = self.upload_probs(probs, grid)?;
        let mbox = self.enqueue_mask(grid, k)?;
        self.fetch_mask(mbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_reference_rounds_half_away_and_saturates() {
        let r = Rescale {
            slope: 0.5,
            intercept: -1024.0,
        };
        assert_eq!(r.apply(1), -1024); // -1023.5 → -1024 (half away from zero)
        assert_eq!(r.apply(3), -1023); // -1022.5 → -1023
        assert_eq!(r.apply(-3), -1026); // -1025.5 → -1026
        let big = Rescale {
            slope: 10.0,
            intercept: 0.0,
        };
        assert_eq!(big.apply(4000), i16::MAX);
        assert_eq!(big.apply(-4000), i16::MIN);
        assert_eq!(
            Rescale {
                slope: 1.0,
                intercept: -1024.0
            }
            .integer_offset(),
            Some(-1024)
        );
        assert_eq!(r.integer_offset(), None);
    }

    #[test]
    fn kernels_compile_with_nvrtc() {
        // NVRTC needs no GPU: wherever libnvrtc loads, the source must compile for the
        // targets we ship (JetPack 6 Orin sm_87, H100 sm_90, JetPack 7 Thor sm_110).
        // SAFETY: only probes for the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("SKIP kernels_compile_with_nvrtc: libnvrtc not on the library path");
            return;
        }
        for arch in ["compute_87", "compute_90", "compute_110"] {
            let opts = CompileOptions {
                options: vec![format!("--gpu-architecture={arch}")],
                ..Default::default()
            };
            match compile_ptx_with_opts(kernels::SOURCE, opts) {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    for name in [
                        kernels::RESCALE_S16,
                        kernels::RESCALE_U16,
                        kernels::HU_TO_UNIT,
                        kernels::RESAMPLE_INPUT,
                        kernels::FINE_TO_NATIVE,
                    ] {
                        assert!(text.contains(&format!(".entry {name}(")), "{arch}: {name}");
                    }
                    // No FMA contraction in the resampling / mask arithmetic (CPU parity).
                    assert!(!text.contains("fma.rn.f32"), "{arch}: f32 FMA in the PTX");
                }
                // An older NVRTC may not know the newest architecture.
                Err(e) if arch == "compute_110" => eprintln!("{arch} not supported here: {e:?}"),
                Err(e) => panic!("{arch}: {e:?}"),
            }
        }
    }

    #[test]
    fn missing_libraries_give_an_error_not_a_panic() {
        // Here (no GPU) this is Unavailable; on a GPU machine it must succeed. Either way the
        // call returns.
        match GpuPreprocessor::on_device(0) {
            Ok(g) => assert!(!g.info().name.is_empty()),
            Err(e) => assert!(matches!(
                e,
                GpuError::Unavailable(_) | GpuError::Compile(_) | GpuError::Driver { .. }
            )),
        }
    }
}
