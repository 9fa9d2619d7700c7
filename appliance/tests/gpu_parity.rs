//! GPU preprocessing against the CPU reference (`cacd::preprocess`, the assembler's rescale).
//!
//! Error bounds (the kernels replicate the CPU's operation order without FMA contraction, so
//! in practice every comparison is exact; the bounds are what the tests enforce):
//! - raw → HU rescale and HU clip/normalise: bit-identical;
//! - resampling to the coarse and fine grids (incl. coordinate channels): relative error
//!   ≤ 1e-4 of max(|cpu|, 1) per element (the number of elements that differ at all is printed);
//! - fine → native labels: identical, except at argmax ties, i.e. native voxels whose two
//!   largest interpolated class probabilities (recomputed here in f64) differ by ≤ 1e-5.
//!
//! Without a usable GPU (no libcuda / libnvrtc / device) every test prints why and returns.
#![cfg(feature = "cuda-base")]

use cacd::gpu::{rescale_cpu, GatherKernels, GpuError, GpuPreprocessor, RawPixels, Rescale};
use cacd::preprocess::{
    coarse_input, fine_input, fine_to_native_mask, FineGrid, GridSpec, ModelGrid, CANDIDATE_HU,
};
use cacd::volume::{Geometry, SeriesMeta, Volume};
use cacd_models::Tensor;
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpu(test: &str) -> Option<GpuPreprocessor> {
    match GpuPreprocessor::on_device(0) {
        Ok(g) => {
            eprintln!(
                "{test}: on {} (sm_{}{}), arch {:?}, compile {:.0} ms",
                g.info().name,
                g.info().compute_capability.0,
                g.info().compute_capability.1,
                g.info().arch,
                g.info().compile_ms
            );
            Some(g)
        }
        Err(e) => {
            eprintln!("SKIP {test}: no usable GPU: {e}");
            None
        }
    }
}

/// A random CT-like volume: air, soft tissue, and a few percent of bright (≥ 130 HU) voxels.
fn volume(dims: (usize, usize, usize), spacing: [f64; 3], seed: u64) -> Volume {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hu = Array3::from_shape_simple_fn(dims, || {
        let r: f64 = rng.gen();
        if r < 0.3 {
            rng.gen_range(-1024..-900)
        } else if r < 0.9 {
            rng.gen_range(-100..120)
        } else {
            rng.gen_range(130..2500)
        }
    });
    Volume {
        hu,
        geometry: Geometry::axial(spacing, [-120.5, -200.25, 310.0]),
        meta: SeriesMeta::default(),
        sop_instance_uids: vec![String::new(); dims.0],
        source_frames: vec![1; dims.0],
    }
}

fn spec(spacing: [f64; 3], shape: [usize; 3], channels: usize) -> GridSpec {
    GridSpec {
        spacing,
        shape,
        channels,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
    }
}

fn upload(g: &mut GpuPreprocessor, vol: &Volume) {
    g.upload_hu(vol.hu.view()).expect("upload HU");
}

/// Asserts the resampling bound; returns (elements differing at all, max relative error).
fn compare_inputs(what: &str, cpu: &Tensor, gpu: &Tensor) -> (usize, f64) {
    assert_eq!(cpu.shape, gpu.shape, "{what}: shape");
    assert_eq!(cpu.data.len(), gpu.data.len(), "{what}: length");
    let mut differ = 0;
    let mut worst = 0f64;
    for (i, (&c, &g)) in cpu.data.iter().zip(&gpu.data).enumerate() {
        if c.to_bits() != g.to_bits() {
            differ += 1;
        }
        let rel = (c as f64 - g as f64).abs() / (c.abs() as f64).max(1.0);
        assert!(rel <= 1e-4, "{what}: element {i}: cpu {c} gpu {g}");
        worst = worst.max(rel);
    }
    eprintln!(
        "{what}: {} elements, {differ} not bit-identical, max relative error {worst:e}",
        cpu.data.len()
    );
    (differ, worst)
}

#[test]
fn rescale_is_exact() {
    let Some(mut g) = gpu("rescale_is_exact") else {
        return;
    };
    let dims = [37usize, 61, 83];
    let n: usize = dims.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let signed: Vec<i16> = (0..n).map(|_| rng.gen()).collect();
    let unsigned: Vec<u16> = (0..n).map(|_| rng.gen()).collect();
    let rescales = [
        Rescale {
            slope: 1.0,
            intercept: -1024.0,
        }, // integer path
        Rescale {
            slope: 1.0,
            intercept: 0.0,
        }, // identity (unsigned saturates)
        Rescale {
            slope: 0.5,
            intercept: -1024.5,
        }, // exact halves: rounding direction
        Rescale {
            slope: 2.5,
            intercept: -1000.25,
        }, // saturates both ways
        Rescale {
            slope: -0.37,
            intercept: 12.125,
        }, // negative slope
        Rescale {
            slope: 1.0,
            intercept: -8192.5,
        }, // slope 1, fractional intercept: f64 path
    ];
    for r in rescales {
        for raw in [RawPixels::Signed(&signed), RawPixels::Unsigned(&unsigned)] {
            g.upload_raw(raw, dims, r).expect("upload raw");
            let got = g.hu_to_host().expect("download");
            let want = rescale_cpu(raw, r);
            let bad = want.iter().zip(got.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(
                bad,
                0,
                "{r:?} {}: {bad} of {n} differ",
                matches!(raw, RawPixels::Signed(_))
            );
        }
    }
    // The reference is the assembler's formula: round half away from zero, then saturate.
    let r = Rescale {
        slope: 0.5,
        intercept: -1024.5,
    };
    assert_eq!(r.apply(1), -1024);
    assert_eq!(r.apply(2), -1024); // -1023.5 → -1024
                                   // Mismatched length is an error, not a panic.
    assert!(matches!(
        g.upload_raw(RawPixels::Signed(&signed[..n - 1]), dims, r),
        Err(GpuError::Input(_))
    ));
}

#[test]
fn clip_and_normalise_is_exact() {
    let Some(mut g) = gpu("clip_and_normalise_is_exact") else {
        return;
    };
    let vol = volume((37, 61, 83), [2.5, 0.7, 0.7], 11);
    upload(&mut g, &vol);
    for (lo, hi, scale) in [
        (-1000.0f32, 2000.0f32, 1000.0f32),
        (-200.0, 600.0, 400.0),
        (0.0, 3.0, 3.0),
    ] {
        let got = g.hu_to_unit(lo, hi, scale).expect("hu_to_unit");
        assert_eq!(got.len(), vol.hu.len());
        for (i, (&h, &v)) in vol.hu.iter().zip(&got).enumerate() {
            let want = (h as f32).clamp(lo, hi) / scale;
            assert_eq!(
                want.to_bits(),
                v.to_bits(),
                "at {i}: HU {h}: cpu {want} gpu {v}"
            );
        }
    }
}

#[test]
fn coarse_and_fine_inputs_match_the_cpu() {
    let Some(mut g) = gpu("coarse_and_fine_inputs_match_the_cpu") else {
        return;
    };
    // Odd sizes and spacings; grids that reach outside the volume (pad) on every side.
    let cases = [
        ((37, 61, 83), [2.5, 0.7, 0.7], 1u64),
        ((83, 37, 61), [1.0, 0.93, 0.61], 2),
        ((5, 9, 7), [3.0, 1.7, 1.3], 3),
    ];
    // Every kernel set (GatherKernels), and fine widths with
    // and without the 16-byte-store path (w % 4 == 0).
    for kernels in GatherKernels::ALL {
        g.set_gather_kernels(kernels);
        for ((d, h, w), sp, seed) in cases {
            let vol = volume((d, h, w), sp, seed);
            upload(&mut g, &vol);
            let coarse = spec([4.0, 4.0, 4.0], [16, 24, 20], 1);
            let (cpu, cgrid) = coarse_input(&vol, &coarse);
            let (gpu_t, ggrid) = g.coarse_input(&vol, &coarse).expect("gpu coarse");
            assert_eq!(cgrid, ggrid);
            compare_inputs(
                &format!("coarse {d}x{h}x{w} kernels={kernels:?}"),
                &cpu,
                &gpu_t,
            );

            for fine_shape in [[21, 33, 35], [21, 33, 36]] {
                let fine = spec([2.0, 0.8, 0.8], fine_shape, 4);
                let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
                for _ in 0..3 {
                    // Centres inside, near and beyond the volume's faces.
                    let idx = [
                        rng.gen_range(-0.3..1.3) * d as f64,
                        rng.gen_range(-0.3..1.3) * h as f64,
                        rng.gen_range(-0.3..1.3) * w as f64,
                    ];
                    let centre = vol.geometry.index_to_patient(idx[0], idx[1], idx[2]);
                    let (cpu, _) = fine_input(&vol, centre, &fine);
                    let (gpu_t, _) = g.fine_input(&vol, centre, &fine).expect("gpu fine");
                    compare_inputs(
                        &format!(
                            "fine {fine_shape:?} on {d}x{h}x{w} at {idx:.1?} kernels={kernels:?}"
                        ),
                        &cpu,
                        &gpu_t,
                    );
                }
            }
        }
    }
    g.set_gather_kernels(GatherKernels::DEFAULT);
    // A volume that is not the resident one is refused.
    let other = volume((4, 4, 4), [1.0, 1.0, 1.0], 9);
    assert!(matches!(
        g.coarse_input(&other, &spec([4.0, 4.0, 4.0], [4, 4, 4], 1)),
        Err(GpuError::NotResident { .. })
    ));
}

/// Random softmax probabilities `[1, k, D, H, W]`.
fn probs(shape: [usize; 3], k: usize, seed: u64) -> Tensor {
    let [d, h, w] = shape;
    let plane = d * h * w;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0f32; k * plane];
    for i in 0..plane {
        let logits: Vec<f32> = (0..k).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let sum: f32 = logits.iter().map(|l| l.exp()).sum();
        for c in 0..k {
            data[c * plane + i] = logits[c].exp() / sum;
        }
    }
    Tensor {
        shape: vec![1, k, d, h, w],
        data,
    }
}

/// Gap between the two largest class probabilities at native voxel (z, y, x), in f64.
fn top2_gap(p: &Tensor, grid: &FineGrid, z: usize, y: usize, x: usize) -> f64 {
    let [d, h, w] = grid.spec.shape;
    let k = p.shape[1];
    let mut t = [(0usize, 0usize, 0f64); 3];
    for (a, i) in [z, y, x].into_iter().enumerate() {
        let n = [d, h, w][a];
        let f = grid.from_native(a, i as f64).clamp(0.0, (n - 1) as f64);
        let i0 = (f.floor() as usize).min(n - 1);
        t[a] = (i0, (i0 + 1).min(n - 1), f - i0 as f64);
    }
    let mut v: Vec<f64> = (0..k)
        .map(|c| {
            let mut s = 0.0;
            for (cz, wz) in [(t[0].0, 1.0 - t[0].2), (t[0].1, t[0].2)] {
                for (cy, wy) in [(t[1].0, 1.0 - t[1].2), (t[1].1, t[1].2)] {
                    for (cx, wx) in [(t[2].0, 1.0 - t[2].2), (t[2].1, t[2].2)] {
                        s += wz * wy * wx * p.data[((c * d + cz) * h + cy) * w + cx] as f64;
                    }
                }
            }
            s
        })
        .collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

#[test]
fn native_mask_matches_the_cpu() {
    let Some(mut g) = gpu("native_mask_matches_the_cpu") else {
        return;
    };
    let cases = [
        ((37, 61, 83), [2.5, 0.7, 0.7], [18.0, 30.0, 41.0], 5usize),
        ((37, 61, 83), [1.0, 0.5, 0.5], [2.0, 60.0, -3.0], 5), // crop over a corner
        ((61, 83, 37), [0.8, 0.6, 0.9], [30.0, 40.0, 18.0], 3),
    ];
    let fine = spec([2.0, 0.8, 0.8], [21, 33, 35], 4);
    // Every kernel set: warp-compacted and one thread per voxel.
    for kernels in GatherKernels::ALL {
        g.set_gather_kernels(kernels);
        for (i, (dims, sp, idx, k)) in cases.into_iter().enumerate() {
            let vol = volume(dims, sp, 20 + i as u64);
            upload(&mut g, &vol);
            let centre = vol.geometry.index_to_patient(idx[0], idx[1], idx[2]);
            let grid = ModelGrid::at_patient(&vol, &fine, centre);
            let p = probs(fine.shape, k, 40 + i as u64);
            let cpu = fine_to_native_mask(&p, &grid, &vol).expect("cpu mask");
            let gpu_m = g.fine_to_native_mask(&p, &grid, &vol).expect("gpu mask");
            assert_eq!(cpu.dim(), gpu_m.dim());
            let mut differ = 0;
            for ((z, y, x), &c) in cpu.indexed_iter() {
                let gv = gpu_m[[z, y, x]];
                if c != gv {
                    differ += 1;
                    let gap = top2_gap(&p, &grid, z, y, x);
                    assert!(
                        vol.hu[[z, y, x]] >= CANDIDATE_HU && gap <= 1e-5,
                        "case {i} at {z},{y},{x}: cpu {c} gpu {gv}, top-2 gap {gap:e}"
                    );
                }
            }
            let labelled = cpu.iter().filter(|&&v| v != 0).count();
            eprintln!("mask case {i} kernels={kernels:?}: {labelled} labelled voxels, {differ} differ (ties)");
            assert!(labelled > 0, "case {i} exercises nothing");
        }
    }
    g.set_gather_kernels(GatherKernels::DEFAULT);
    // A crop entirely outside the volume gives an all-zero mask, like the CPU.
    let vol = volume((37, 61, 83), [2.5, 0.7, 0.7], 30);
    upload(&mut g, &vol);
    let far = vol.geometry.index_to_patient(-500.0, -500.0, -500.0);
    let grid = ModelGrid::at_patient(&vol, &fine, far);
    let p = probs(fine.shape, 5, 50);
    let m = g.fine_to_native_mask(&p, &grid, &vol).expect("gpu mask");
    assert!(m.iter().all(|&v| v == 0));
    assert_eq!(m, fine_to_native_mask(&p, &grid, &vol).expect("cpu mask"));
    // Wrong probability shape: an error, as on the CPU.
    let bad = Tensor {
        shape: vec![1, 5, 2, 2, 2],
        data: vec![0.2; 40],
    };
    assert!(g.fine_to_native_mask(&bad, &grid, &vol).is_err());
}

#[test]
fn buffers_are_reused_across_studies_of_different_sizes() {
    let Some(mut g) = gpu("buffers_are_reused_across_studies_of_different_sizes") else {
        return;
    };
    let fine = spec([2.0, 0.8, 0.8], [21, 33, 35], 4);
    let mut peak = (0, 0);
    for (i, dims) in [(61, 83, 37), (9, 11, 13), (37, 61, 83), (9, 11, 13)]
        .into_iter()
        .enumerate()
    {
        let vol = volume(dims, [1.25, 0.66, 0.66], 60 + i as u64);
        upload(&mut g, &vol);
        let c = [
            dims.0 as f64 / 2.0,
            dims.1 as f64 / 2.0,
            dims.2 as f64 / 2.0,
        ];
        let centre = vol.geometry.index_to_patient(c[0], c[1], c[2]);
        let (cpu_in, grid) = fine_input(&vol, centre, &fine);
        let (gpu_in, _) = g.fine_input(&vol, centre, &fine).expect("gpu fine");
        compare_inputs(&format!("study {i}"), &cpu_in, &gpu_in);
        let p = probs(fine.shape, 5, 70 + i as u64);
        assert_eq!(
            g.fine_to_native_mask(&p, &grid, &vol).expect("gpu mask"),
            fine_to_native_mask(&p, &grid, &vol).expect("cpu mask"),
            "study {i}"
        );
        let f = g.footprint();
        if i >= 3 {
            // The last study is no larger than an earlier one: nothing new was allocated.
            assert_eq!(f, peak, "study {i} grew the pool");
        }
        peak = (peak.0.max(f.0), peak.1.max(f.1));
    }
}

#[test]
fn nothing_resident_is_an_error() {
    let Some(mut g) = gpu("nothing_resident_is_an_error") else {
        return;
    };
    let vol = volume((5, 5, 5), [1.0, 1.0, 1.0], 1);
    assert!(matches!(
        g.coarse_input(&vol, &spec([4.0, 4.0, 4.0], [4, 4, 4], 1)),
        Err(GpuError::NoVolume)
    ));
    assert!(matches!(
        g.hu_to_unit(-1000.0, 2000.0, 1000.0),
        Err(GpuError::NoVolume)
    ));
}
