//! `cacd-gpu-bench`: times the GPU preprocessing kernels against (a) the device's measured
//! copy bandwidth, (b) the CPU reference (`cacd::preprocess`) on the same machine, and writes
//! the grid set-up for `bench/gpu/torch_ref.py` (c). See bench/gpu/README.md.
//!
//! Bandwidth convention: a device-to-device copy of B bytes moves 2·B (read + write); a
//! kernel's effective bandwidth is (bytes it must read + bytes it writes) / time, with the
//! byte counts stated per kernel in the output.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cacd::gpu::{
    input_taps, mask_box, rescale_cpu, GatherKernels, GpuPreprocessor, RawPixels, Rescale,
};
use cacd::phantom::{Burden, PhantomSpec};
use cacd::preprocess::{
    coarse_input, fine_input, fine_to_native_mask, GridSpec, ModelGrid, CANDIDATE_HU,
};
use cacd::volume::{Geometry, SeriesMeta, Volume};
use cacd_models::Tensor;
use clap::Parser;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::compile_ptx;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "GPU preprocessing bench: kernels vs copy bandwidth, CPU path, PyTorch config")]
struct Args {
    /// Volume dims z,y,x (int16 stored values).
    #[arg(long, default_value = "300,512,512", value_delimiter = ',')]
    dims: Vec<usize>,
    /// Native spacing z,y,x in mm.
    #[arg(long, default_value = "1.0,0.7,0.7", value_delimiter = ',')]
    spacing: Vec<f64>,
    /// Timed repetitions per GPU measurement (after 3 warm-up runs).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Repetitions of the CPU path (best is reported).
    #[arg(long, default_value_t = 2)]
    cpu_reps: usize,
    /// Write all numbers as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the grid set-up torch_ref.py reproduces here.
    #[arg(long)]
    config_out: Option<PathBuf>,
    /// Use `cacd phantom` SEED (moderate burden, slice spacing and count from --spacing and
    /// --dims, 512x512) instead of the synthetic volume, with the fine crop on its heart: bone
    /// and calcium cluster there, where the synthetic volume scatters its bright voxels.
    #[arg(long)]
    phantom: Option<u64>,
    /// How GPU work is timed: each call on an idle stream (`isolated`, host launch latency
    /// included) or queued behind an L2 flush and a spin (`queued`: device time, cold L2).
    #[arg(long, value_enum, default_value_t = Timing::Isolated)]
    timing: Timing,
}

/// The grids of docs/ARCHITECTURE.md (what models/manifest.toml declares).
fn coarse_spec() -> GridSpec {
    GridSpec {
        spacing: [4.0, 4.0, 4.0],
        shape: [64, 96, 96],
        channels: 1,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
    }
}

fn fine_spec() -> GridSpec {
    GridSpec {
        spacing: [2.0, 0.8, 0.8],
        shape: [64, 192, 192],
        channels: 4,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
    }
}

const CLASSES: usize = 5;

/// Cheap deterministic hash (splitmix64) for synthetic data.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Stored values (HU + 1024) of a chest-like phantom: air outside an elliptic body, soft
/// tissue inside, ~3 % bright voxels (bone / calcium) so the mask kernel has candidates.
fn raw_volume(d: usize, h: usize, w: usize) -> Vec<i16> {
    let mut v = vec![0i16; d * h * w];
    for (i, o) in v.iter_mut().enumerate() {
        let (y, x) = ((i / w) % h, i % w);
        let ny = (y as f64 - h as f64 / 2.0) / (0.38 * h as f64);
        let nx = (x as f64 - w as f64 / 2.0) / (0.46 * w as f64);
        let r = mix(i as u64);
        let hu = if ny * ny + nx * nx > 1.0 {
            -1000 + (r % 40) as i32 - 20
        } else if r % 100 < 3 {
            130 + (r >> 8) as i32 % 1400
        } else {
            (r >> 8) as i32 % 120 - 60
        };
        *o = (hu + 1024) as i16;
    }
    v
}

/// Random softmax class probabilities on the fine grid.
fn probs(shape: [usize; 3], k: usize) -> Tensor {
    let plane: usize = shape.iter().product();
    let mut data = vec![0f32; k * plane];
    for i in 0..plane {
        let e: Vec<f32> = (0..k)
            .map(|c| ((mix((i * k + c) as u64 ^ 0xABCD) % 6000) as f32 / 1000.0 - 3.0).exp())
            .collect();
        let s: f32 = e.iter().sum();
        for c in 0..k {
            data[c * plane + i] = e[c] / s;
        }
    }
    Tensor {
        shape: vec![1, k, shape[0], shape[1], shape[2]],
        data,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// How a GPU measurement is timed (`--timing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Timing {
    /// Each repetition launched on an idle stream: event, the work, event. The host's launch
    /// latency and any host work inside the call fall between the events, and the L2 may still
    /// hold the previous repetition's data (the figures of the runs before 2026-11-28).
    Isolated,
    /// Each repetition queued behind an L2 flush (a read-only pass over 256 MB) and a spin
    /// kernel, so event, work and event are all enqueued before the GPU reaches them: the
    /// work's device time alone, from a cold L2 (nvbench's method). Calls whose enqueueing
    /// took longer than the spin are counted and reported.
    Queued,
}

/// Spin and L2-flush kernels for `Timing::Queued` (compiled here: they are the bench's).
const TIMER_SOURCE: &str = r#"
extern "C" __global__ void cacd_bench_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
// Reads every 16 bytes of `p` (replacing the L2's lines with clean ones: a memset would leave
// dirty lines whose write-back lands inside the next measurement).
extern "C" __global__ void cacd_bench_touch(const uint4* p, unsigned long long n, unsigned* sink) {
    unsigned acc = 0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        uint4 v = __ldcg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9E3779B9u) sink[0] = acc;  // never true on the zeroed buffer; keeps the loads
}
"#;

/// The spin each queued repetition waits behind: long enough for the host to enqueue the
/// events and the work (checked per repetition).
const SPIN_NS: u64 = 300_000;
/// The L2 flush buffer: several times the L2 of any current GPU (H100 50 MB, H200 60 MB).
const FLUSH_BYTES: usize = 256 << 20;

struct Timer {
    mode: Timing,
    spin: CudaFunction,
    touch: CudaFunction,
    flush: CudaSlice<u8>,
    sink: CudaSlice<u32>,
    /// Queued repetitions whose enqueueing outlasted the spin (their figure includes host time).
    late: usize,
}

impl Timer {
    fn new(g: &GpuPreprocessor, mode: Timing) -> Result<Self> {
        let ptx = compile_ptx(TIMER_SOURCE).context("NVRTC: bench timer kernels")?;
        let module = g.context().load_module(ptx).context("bench timer module")?;
        let stream = g.stream();
        Ok(Self {
            mode,
            spin: module.load_function("cacd_bench_spin")?,
            touch: module.load_function("cacd_bench_touch")?,
            flush: stream.alloc_zeros::<u8>(FLUSH_BYTES)?,
            sink: stream.alloc_zeros::<u32>(1)?,
            late: 0,
        })
    }

    /// Queues the L2 flush and the spin on `g`'s stream.
    fn queue_flush_and_spin(&mut self, g: &GpuPreprocessor) -> Result<()> {
        let stream = g.stream();
        let n16 = (FLUSH_BYTES / 16) as u64;
        let mut b = stream.launch_builder(&self.touch);
        b.arg(&self.flush).arg(&n16).arg(&mut self.sink);
        // SAFETY: the buffer holds FLUSH_BYTES (n16 uint4), the sink one u32.
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (1024, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        let mut b = stream.launch_builder(&self.spin);
        b.arg(&SPIN_NS);
        // SAFETY: one u64 argument.
        unsafe { b.launch(LaunchConfig::for_num_elems(1)) }?;
        Ok(())
    }

    /// Median device time (ms, CUDA events) of `f`'s queued work over `reps` after 3
    /// warm-ups, timed as `self.mode` says.
    fn time(
        &mut self,
        g: &mut GpuPreprocessor,
        reps: usize,
        mut f: impl FnMut(&mut GpuPreprocessor) -> Result<()>,
    ) -> Result<f64> {
        for _ in 0..3 {
            f(g)?;
        }
        g.synchronize()?;
        let ctx = g.context().clone();
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let queued = self.mode == Timing::Queued;
            if queued {
                self.queue_flush_and_spin(g)?;
            }
            let t = Instant::now();
            start.record(g.stream())?;
            f(g)?;
            end.record(g.stream())?;
            if queued && t.elapsed().as_nanos() as u64 >= SPIN_NS / 2 {
                self.late += 1;
            }
            end.synchronize()?;
            ms.push(start.elapsed_ms(&end)? as f64);
        }
        Ok(median(ms))
    }
}

/// Median wall time (ms) of `f` (which must synchronise) over `reps` after 2 warm-ups.
fn time_wall(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ms))
}

/// A measurement that failed is reported and becomes NaN, so the other numbers still come.
fn or_nan(name: &str, r: Result<f64>) -> f64 {
    r.unwrap_or_else(|e| {
        println!("!! {name} failed: {e:#}");
        f64::NAN
    })
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        out = Some(r);
    }
    match out {
        Some(r) => (best, r),
        None => unreachable!("at least one repetition runs"),
    }
}

/// DRAM moves whole 32-byte sectors: a gather's compulsory read traffic is the set of
/// distinct sectors its taps touch, not 2 B per tap (taps 4–6 voxels apart each cost a
/// sector). Both counts are reported.
const SECTOR: usize = 32;

/// Compulsory bytes read by the resampling kernel on a `dims` int16 volume: distinct
/// (z, y, x-sector) triples over the grid's tap tables (`{i0, i1, w, coord}` per index).
fn resample_read_sectors(taps: &[i32], shape: [usize; 3]) -> f64 {
    let mut axes: Vec<std::collections::BTreeSet<i64>> = Vec::new();
    let mut off = 0;
    for (axis, &n) in shape.iter().enumerate() {
        let mut set = std::collections::BTreeSet::new();
        for k in 0..n {
            for i in [taps[4 * (off + k)], taps[4 * (off + k) + 1]] {
                if i >= 0 {
                    // x: the sector index (16 int16 per sector); z, y: the index itself.
                    set.insert(if axis == 2 {
                        i64::from(i) * 2 / SECTOR as i64
                    } else {
                        i64::from(i)
                    });
                }
            }
        }
        off += n;
        axes.push(set);
    }
    (axes[0].len() * axes[1].len() * axes[2].len() * SECTOR) as f64
}

/// Compulsory bytes of the mask kernel: the box's HU rows (whole sectors), one label byte per
/// box voxel, and the distinct probability sectors (times K classes) the 8 corners of every
/// candidate voxel touch.
fn mask_traffic(vol: &Volume, grid: &ModelGrid, k: usize) -> (f64, usize) {
    let (d, h, w) = vol.dims();
    let Some((mbox, taps)) = mask_box(grid, [d, h, w]) else {
        return (0.0, 0);
    };
    let [bd, bh, bw] = mbox.len;
    let [bz0, by0, bx0] = mbox.start;
    let [_, fh, fw] = grid.spec.shape;
    let fplane: usize = grid.spec.shape.iter().product();
    let per_sector = SECTOR / 4;
    let mut touched = vec![false; fplane.div_ceil(per_sector)];
    let tap = |i: usize| (taps[4 * i] as usize, taps[4 * i + 1] as usize);
    for zi in 0..bd {
        let (z0, z1) = tap(zi);
        for yi in 0..bh {
            let (y0, y1) = tap(bd + yi);
            for xi in 0..bw {
                if vol.hu[[bz0 + zi, by0 + yi, bx0 + xi]] < CANDIDATE_HU {
                    continue;
                }
                let (x0, x1) = tap(bd + bh + xi);
                for z in [z0, z1] {
                    for y in [y0, y1] {
                        for x in [x0, x1] {
                            touched[((z * fh + y) * fw + x) / per_sector] = true;
                        }
                    }
                }
            }
        }
    }
    let prob_sectors = touched.iter().filter(|&&t| t).count();
    let row_sectors = (bx0 + bw).div_ceil(SECTOR / 2) - bx0 / (SECTOR / 2);
    let hu_bytes = bd * bh * row_sectors * SECTOR;
    let bytes = hu_bytes + mbox.voxels() + prob_sectors * SECTOR * k;
    (bytes as f64, mbox.voxels())
}

struct Row {
    name: String,
    ms: f64,
    bytes: f64,
    /// Time of a device copy moving the same number of bytes, where measured.
    same_copy_ms: Option<f64>,
    note: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (Ok([d, h, w]), Ok(spacing)) = (
        <[usize; 3]>::try_from(a.dims.as_slice()),
        <[f64; 3]>::try_from(a.spacing.as_slice()),
    ) else {
        bail!("--dims and --spacing take three values each (z,y,x)");
    };
    let reps = a.reps.max(1);
    // The volume: synthetic stored values, or a phantom's HU as stored values (+1024).
    let (raw, [d, h, w], geometry, heart_mm) = match a.phantom {
        Some(seed) => {
            let mut spec = PhantomSpec::new(seed, Burden::Moderate);
            spec.thickness_mm = Some(spacing[0]);
            spec.slices = Some(d);
            let t = Instant::now();
            let ph = cacd::phantom::generate(&spec);
            let (pd, ph_, pw) = ph.volume.dims();
            println!(
                "phantom seed {seed}: {pd}x{ph_}x{pw}, noise sigma {:.0} HU, generated in {:.1} s",
                ph.info.noise_sigma_hu,
                t.elapsed().as_secs_f64()
            );
            let raw: Vec<i16> = ph
                .volume
                .hu
                .iter()
                .map(|&v| v.saturating_add(1024))
                .collect();
            (
                raw,
                [pd, ph_, pw],
                ph.volume.geometry.clone(),
                Some(ph.info.heart_center_mm),
            )
        }
        None => (
            raw_volume(d, h, w),
            [d, h, w],
            Geometry::axial(spacing, [-179.0, -150.0, -1200.0]),
            None,
        ),
    };
    let n = d * h * w;
    println!(
        "== cacd-gpu-bench: {d}x{h}x{w} int16 ({:.0} MB), spacing {:?} mm, {}",
        n as f64 * 2e-6,
        geometry.spacing,
        if a.phantom.is_some() {
            "phantom"
        } else {
            "synthetic (3 % bright voxels at random)"
        }
    );

    let rescale = Rescale {
        slope: 1.0,
        intercept: -1024.0,
    };
    let rescale_f64 = Rescale {
        slope: 0.999,
        intercept: -1023.5,
    };
    let coarse = coarse_spec();
    let fine = fine_spec();

    // CPU path first: it also yields the Volume (geometry) the GPU calls take.
    println!(
        "-- CPU path (cacd::preprocess, one thread), best of {}",
        a.cpu_reps.max(1)
    );
    let (cpu_rescale_ms, hu) =
        best_of(a.cpu_reps, || rescale_cpu(RawPixels::Signed(&raw), rescale));
    let hu = ndarray::Array3::from_shape_vec((d, h, w), hu).context("volume shape")?;
    let vol = Volume {
        hu,
        geometry,
        meta: SeriesMeta::default(),
        sop_instance_uids: vec![String::new(); d],
        source_frames: vec![1; d],
    };
    // The phantom's heart, or a heart-like centre a little anterior-left of the middle.
    let centre_idx = [d as f64 * 0.55, h as f64 * 0.45, w as f64 * 0.55];
    let centre_mm = heart_mm.unwrap_or_else(|| {
        vol.geometry
            .index_to_patient(centre_idx[0], centre_idx[1], centre_idx[2])
    });
    let (cpu_coarse_ms, (cpu_coarse, coarse_grid)) =
        best_of(a.cpu_reps, || coarse_input(&vol, &coarse));
    let (cpu_fine_ms, (cpu_fine, fine_grid)) =
        best_of(a.cpu_reps, || fine_input(&vol, centre_mm, &fine));
    let p = probs(fine.shape, CLASSES);
    let (cpu_mask_ms, cpu_mask) = best_of(a.cpu_reps, || fine_to_native_mask(&p, &fine_grid, &vol));
    let cpu_mask = cpu_mask?;
    let cpu_total = cpu_rescale_ms + cpu_coarse_ms + cpu_fine_ms + cpu_mask_ms;
    for (name, ms) in [
        ("rescale raw->HU", cpu_rescale_ms),
        ("coarse input", cpu_coarse_ms),
        ("fine input (4 ch)", cpu_fine_ms),
        ("fine->native mask", cpu_mask_ms),
        ("total", cpu_total),
    ] {
        println!("cpu  {name:<22} {ms:>10.2} ms");
    }

    let coarse_plane = coarse.shape.iter().product::<usize>() as f64;
    let fine_plane = fine.shape.iter().product::<usize>() as f64;
    // Compulsory traffic by sectors (see SECTOR); the per-tap counts above stay for comparison
    // with the earlier runs.
    let sector_bytes = |grid: &ModelGrid| {
        input_taps(grid, [d, h, w]).map_or(f64::NAN, |t| resample_read_sectors(&t, grid.spec.shape))
    };
    let coarse_sector_bytes = sector_bytes(&coarse_grid) + coarse_plane * 4.0;
    let fine_sector_bytes = sector_bytes(&fine_grid) + fine_plane * 16.0;
    let (mask_sector_bytes, _) = mask_traffic(&vol, &fine_grid, CLASSES);
    println!(
        "compulsory traffic by 32-B sectors: coarse {:.1} MB, fine {:.1} MB, mask {:.1} MB",
        coarse_sector_bytes / 1e6,
        fine_sector_bytes / 1e6,
        mask_sector_bytes / 1e6
    );

    let t0 = Instant::now();
    let mut g = GpuPreprocessor::on_device(0).context("GPU preprocessor")?;
    let info = g.info().clone();
    println!(
        "device: {} (sm_{}{}), NVRTC arch {:?}, start-up (NVRTC compile + module load) {:.0} ms, context+compile {:.0} ms",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.arch,
        info.compile_ms,
        t0.elapsed().as_secs_f64() * 1e3
    );

    let mut timer = Timer::new(&g, a.timing)?;
    println!("timing: {:?}", a.timing);

    // (a) the bandwidth floor: device-to-device copy of the raw volume's bytes.
    let bytes = n * 2;
    let stream = g.stream().clone();
    let src = stream.alloc_zeros::<u8>(bytes)?;
    let mut dst = stream.alloc_zeros::<u8>(bytes)?;
    let copy_ms = or_nan(
        "copy",
        timer.time(&mut g, reps, |_| {
            stream.memcpy_dtod(&src, &mut dst)?;
            Ok(())
        }),
    );
    drop((src, dst));
    let copy_gbs = 2.0 * bytes as f64 / copy_ms / 1e6;
    println!(
        "-- GPU kernels (median of {reps}, CUDA events, {} timing)",
        match a.timing {
            Timing::Isolated => "isolated",
            Timing::Queued => "queued: device time behind an L2 flush and a spin",
        }
    );
    println!(
        "copy floor: cuMemcpyDtoD {:.0} MB: {copy_ms:.3} ms = {copy_gbs:.0} GB/s (read + write)",
        bytes as f64 / 1e6
    );

    // Per-kernel device times. The raw volume is staged once (as a decoder writing into the
    // pinned staging memory would leave it).
    g.stage_signed(n)?.copy_from_slice(&raw);
    let upload_ms = or_nan(
        "upload_ms",
        timer.time(&mut g, reps, |g| Ok(g.upload_staged(true, n)?)),
    );
    let rescale_ms = or_nan(
        "rescale_ms",
        timer.time(&mut g, reps, |g| Ok(g.enqueue_rescale([d, h, w], rescale)?)),
    );
    let rescale_f64_ms = or_nan(
        "rescale_f64_ms",
        timer.time(&mut g, reps, |g| {
            Ok(g.enqueue_rescale([d, h, w], rescale_f64)?)
        }),
    );
    if let Err(e) = g.enqueue_rescale([d, h, w], rescale) {
        println!("!! rescale failed: {e}");
    }
    let unit_ms = or_nan(
        "unit_ms",
        timer.time(&mut g, reps, |g| {
            g.enqueue_hu_to_unit(coarse.hu_clip[0], coarse.hu_clip[1], coarse.hu_scale)?;
            Ok(())
        }),
    );
    // Every implementation of the gather kernels (GatherKernels); the product uses DEFAULT.
    let k = g.upload_probs(&p, &fine_grid).unwrap_or_else(|e| {
        println!("!! probability upload failed: {e}");
        CLASSES
    });
    let mut mbox = None;
    let mut gather_ms = Vec::new();
    for v in GatherKernels::ALL {
        g.set_gather_kernels(v);
        gather_ms.push([
            or_nan(
                "coarse_ms",
                timer.time(&mut g, reps, |g| {
                    g.enqueue_model_input(&coarse_grid)?;
                    Ok(())
                }),
            ),
            or_nan(
                "fine_ms",
                timer.time(&mut g, reps, |g| {
                    g.enqueue_model_input(&fine_grid)?;
                    Ok(())
                }),
            ),
            or_nan(
                "mask_ms",
                timer.time(&mut g, reps, |g| {
                    mbox = g.enqueue_mask(&fine_grid, k)?;
                    Ok(())
                }),
            ),
        ]);
    }
    g.set_gather_kernels(GatherKernels::DEFAULT);
    let def = GatherKernels::ALL
        .iter()
        .position(|&v| v == GatherKernels::DEFAULT)
        .unwrap_or(0);
    let [coarse_ms, fine_ms, mask_ms] = gather_ms[def];
    // A copy moving as many bytes as each gather kernel must: the floor at that size, where
    // launch and ramp-up costs weigh as they do on the kernel (the 157 MB copy above is the
    // asymptotic floor).
    let mut same_size_copy = |moved: f64| -> f64 {
        let half = (moved / 2.0) as usize;
        let mut run = || -> Result<f64> {
            let src = stream.alloc_zeros::<u8>(half.max(1))?;
            let mut dst = stream.alloc_zeros::<u8>(half.max(1))?;
            timer.time(&mut g, reps, |_| {
                stream.memcpy_dtod(&src, &mut dst)?;
                Ok(())
            })
        };
        or_nan("same-size copy", run())
    };
    let same_copy = [
        same_size_copy(coarse_sector_bytes),
        same_size_copy(fine_sector_bytes),
        same_size_copy(mask_sector_bytes),
    ];
    let box_voxels = mbox.map_or(0, |b| b.voxels());
    let candidates = cpu_mask.len() - cpu_mask.iter().filter(|&&v| v == 0).count();
    let rows = [
        Row {
            name: "H2D upload (pinned)".into(),
            ms: upload_ms,
            bytes: bytes as f64,
            same_copy_ms: None,
            note: "PCIe/host link, not HBM".into(),
        },
        Row {
            name: "rescale int16 (slope 1)".into(),
            ms: rescale_ms,
            bytes: 4.0 * n as f64,
            same_copy_ms: None,
            note: "2 B in + 2 B out per voxel".into(),
        },
        Row {
            name: "rescale int16 (f64 path)".into(),
            ms: rescale_f64_ms,
            bytes: 4.0 * n as f64,
            same_copy_ms: None,
            note: "fractional slope".into(),
        },
        Row {
            name: "clip+normalise -> f32".into(),
            ms: unit_ms,
            bytes: 6.0 * n as f64,
            same_copy_ms: None,
            note: "2 B in + 4 B out per voxel".into(),
        },
    ];
    let mut rows: Vec<Row> = rows.into_iter().collect();
    for (v, ms) in GatherKernels::ALL.iter().zip(&gather_ms) {
        let tag = if *v == GatherKernels::DEFAULT {
            " *"
        } else {
            ""
        };
        let kernels = [
            ("coarse 64x96x96x1", coarse_sector_bytes, format!("distinct 32-B sectors read + 4 B out per output; per-tap count {:.1} MB", coarse_plane * 20.0 / 1e6)),
            ("fine 64x192x192x4", fine_sector_bytes, format!("distinct 32-B sectors read + 16 B out per output; per-tap count {:.1} MB", fine_plane * 32.0 / 1e6)),
            ("mask", mask_sector_bytes, format!("box HU sectors + 1 B out per box voxel ({box_voxels}) + distinct probability sectors x K")),
        ];
        for (i, (name, bytes, note)) in kernels.into_iter().enumerate() {
            rows.push(Row {
                name: format!("{name} {v:?}{tag}"),
                ms: ms[i],
                bytes,
                same_copy_ms: Some(same_copy[i]),
                note,
            });
        }
    }
    let mut kernel_json = Vec::new();
    for r in &rows {
        let gbs = r.bytes / r.ms / 1e6;
        let pct = 100.0 * gbs / copy_gbs;
        let same = r.same_copy_ms.map(|c| 100.0 * c / r.ms);
        let same_txt = same.map_or(String::new(), |p| format!(", {p:.0} % of a same-size copy"));
        println!(
            "gpu  {:<30} {:>9.4} ms {:>8.0} GB/s {:>5.0} % of copy{same_txt}   ({:.1} MB; {})",
            r.name,
            r.ms,
            gbs,
            pct,
            r.bytes / 1e6,
            r.note
        );
        kernel_json.push(
            json!({"name": r.name, "ms": r.ms, "bytes": r.bytes, "gbs": gbs, "pct_of_copy": pct,
            "same_size_copy_ms": r.same_copy_ms, "pct_of_same_size_copy": same, "note": r.note}),
        );
    }

    // The whole GPU preprocessing of one study, wall clock, as the pipeline calls it.
    println!("-- GPU whole preprocessing (wall clock, median of {reps}; raw values already in pinned memory)");
    let mut parts = [0f64; 4];
    let mut gpu_coarse = None;
    let mut gpu_fine = None;
    let mut gpu_mask = None;
    let total_ms = or_nan(
        "whole preprocessing",
        time_wall(reps, || {
            let t = Instant::now();
            g.rescale_staged(true, [d, h, w], rescale)?;
            g.synchronize()?;
            let t1 = Instant::now();
            let c = g.coarse_input(&vol, &coarse)?;
            let t2 = Instant::now();
            let f = g.fine_input(&vol, centre_mm, &fine)?;
            let t3 = Instant::now();
            let m = g.fine_to_native_mask(&p, &f.1, &vol)?;
            let t4 = Instant::now();
            parts = [
                (t1 - t).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3,
                (t4 - t3).as_secs_f64() * 1e3,
            ];
            gpu_coarse = Some(c.0);
            gpu_fine = Some(f.0);
            gpu_mask = Some(m);
            Ok(())
        }),
    );
    let staging_ms = or_nan(
        "staging copy",
        time_wall(reps.min(5), || {
            g.stage_signed(n)?.copy_from_slice(&raw);
            Ok(())
        }),
    );
    for (name, ms) in [
        ("upload + rescale", parts[0]),
        ("coarse input + download", parts[1]),
        ("fine input + download", parts[2]),
        ("probs up + mask + down", parts[3]),
    ] {
        println!("gpu  {name:<26} {ms:>9.3} ms (last run)");
    }
    let device_ms = rescale_ms + coarse_ms + fine_ms + mask_ms;
    println!("gpu  total (median)               {total_ms:>9.3} ms   -> {:.1}x the CPU path ({cpu_total:.1} ms)", cpu_total / total_ms);
    println!(
        "gpu  kernels only (sum)           {device_ms:>9.3} ms   -> {:.1}x",
        cpu_total / device_ms
    );
    println!("host copy of decoded pixels into pinned staging (avoidable: decode into it) {staging_ms:.2} ms");

    // Parity at full size (the small-volume proofs are in tests/gpu_parity.rs).
    let exact = |c: &Tensor, g: &Option<Tensor>| {
        g.as_ref().map(|g| {
            let differ = c
                .data
                .iter()
                .zip(&g.data)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let worst = c
                .data
                .iter()
                .zip(&g.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            (differ, worst)
        })
    };
    let coarse_par = exact(&cpu_coarse, &gpu_coarse);
    let fine_par = exact(&cpu_fine, &gpu_fine);
    let mask_differ = gpu_mask.as_ref().map(|m| {
        m.iter()
            .zip(cpu_mask.iter())
            .filter(|(a, b)| a != b)
            .count()
    });
    println!(
        "parity at full size: coarse (differing, max abs) {coarse_par:?}, fine {fine_par:?}, mask labels differing {mask_differ:?} of {} labelled (threshold {CANDIDATE_HU} HU)",
        candidates
    );
    // The other kernel sets at full size too.
    let mut other_parity = Vec::new();
    for v in GatherKernels::ALL
        .into_iter()
        .filter(|&v| v != GatherKernels::DEFAULT)
    {
        g.set_gather_kernels(v);
        let r = (|| -> Result<_> {
            let c = g.coarse_input(&vol, &coarse)?;
            let f = g.fine_input(&vol, centre_mm, &fine)?;
            let m = g.fine_to_native_mask(&p, &f.1, &vol)?;
            let mask_differ = m
                .iter()
                .zip(cpu_mask.iter())
                .filter(|(a, b)| a != b)
                .count();
            Ok((
                exact(&cpu_coarse, &Some(c.0)),
                exact(&cpu_fine, &Some(f.0)),
                mask_differ,
            ))
        })();
        match &r {
            Ok(b) => println!("parity at full size, {v:?} kernels: coarse {:?}, fine {:?}, mask labels differing {}", b.0, b.1, b.2),
            Err(e) => println!("!! {v:?} kernels at full size failed: {e:#}"),
        }
        other_parity.push(json!({"kernels": format!("{v:?}"), "parity": r.ok().map(|b| json!({"coarse": b.0, "fine": b.1, "mask_differ": b.2}))}));
    }
    g.set_gather_kernels(GatherKernels::DEFAULT);
    if a.timing == Timing::Queued {
        println!(
            "queued repetitions whose enqueueing took over half the spin (figure may include host time): {}",
            timer.late
        );
    }
    let (dev_bytes, pinned_bytes) = g.footprint();
    println!(
        "buffer pool: {:.0} MB device, {:.0} MB pinned host",
        dev_bytes as f64 / 1e6,
        pinned_bytes as f64 / 1e6
    );

    let report = json!({
        "device": info.name,
        "compute_capability": [info.compute_capability.0, info.compute_capability.1],
        "nvrtc_arch": info.arch,
        "compile_ms": info.compile_ms,
        "dims": [d, h, w],
        "timing": format!("{:?}", a.timing).to_lowercase(),
        "late_queued_reps": timer.late,
        "volume": a.phantom.map_or("synthetic".to_string(), |s| format!("phantom {s}")),
        "copy": {"bytes": bytes, "ms": copy_ms, "gbs": copy_gbs},
        "kernels": kernel_json,
        "gpu_total_ms": total_ms,
        "gpu_kernels_ms": device_ms,
        "gpu_parts_ms": {"upload_rescale": parts[0], "coarse": parts[1], "fine": parts[2], "mask": parts[3]},
        "staging_copy_ms": staging_ms,
        "cpu_ms": {"rescale": cpu_rescale_ms, "coarse": cpu_coarse_ms, "fine": cpu_fine_ms, "mask": cpu_mask_ms, "total": cpu_total},
        "speedup_vs_cpu": cpu_total / total_ms,
        "parity": {"coarse": coarse_par, "fine": fine_par, "mask_differ": mask_differ},
        "parity_other_kernels": other_parity,
        // By kernel name, for the comparison with torch_ref.py.
        "ours_ms": {"rescale": rescale_ms, "clip_normalise": unit_ms, "coarse": coarse_ms, "fine": fine_ms, "mask": mask_ms, "copy": copy_ms},
    });
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.config_out {
        let grid_json = |gr: &ModelGrid| {
            json!({"spacing": gr.spec.spacing, "shape": gr.spec.shape, "channels": gr.spec.channels,
                   "centre_index": gr.centre_index, "native_spacing": gr.native_spacing,
                   "hu_clip": gr.spec.hu_clip, "hu_scale": gr.spec.hu_scale})
        };
        let cfg = json!({
            "dims": [d, h, w],
            "rescale": {"slope": rescale.slope, "intercept": rescale.intercept},
            "rescale_f64": {"slope": rescale_f64.slope, "intercept": rescale_f64.intercept},
            "coarse": grid_json(&coarse_grid),
            "fine": grid_json(&fine_grid),
            "classes": CLASSES,
            "candidate_hu": CANDIDATE_HU,
            "pad_hu": cacd::preprocess::PAD_HU,
            "reps": reps,
        });
        std::fs::write(path, serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
