//! Runs one ONNX model through an engine on a deterministic input and reports what came out:
//! a quick check that a newly exported network loads and runs in cacd's engines.
//!
//! cargo run --release -p cacd-models --example probe -- MODEL.onnx C D H W \
//!     [--engine tract|ort] [--threads N] [--labels K (5)] [--out OUT.f32] [--runs N]
//!
//! `--runs N` times N runs after the first and prints their median, min and max
//! (bench/inference uses it).
//!
//! The input is make_fixtures.py's `fixture_input` pattern; `--out` writes the output as raw
//! little-endian f32 (C order) for comparison in Python. The file's hash is not checked here:
//! the probe builds its own manifest entry from the file it is given.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use cacd_models::{load_engine, sha256_hex, EngineKind, EngineOptions, ModelEntry, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let (mut kind, mut threads, mut out, mut labels) = (EngineKind::Tract, 1usize, None, None);
    let mut runs = 0usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--engine" => {
                kind = match it.next().map(String::as_str) {
                    Some("tract") => EngineKind::Tract,
                    Some("ort") => EngineKind::OnnxRuntime,
                    other => bail!("--engine tract|ort, got {other:?}"),
                }
            }
            "--threads" => threads = it.next().context("--threads N")?.parse()?,
            "--labels" => labels = Some(it.next().context("--labels K")?.parse::<usize>()?),
            "--out" => out = Some(it.next().context("--out FILE")?.clone()),
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            _ => positional.push(a.clone()),
        }
    }
    let [model, c, d, h, w] = positional.as_slice() else {
        bail!("usage: probe MODEL.onnx C D H W [--engine tract|ort] [--threads N] [--labels K] [--out F]");
    };
    let path = Path::new(model);
    let bytes = std::fs::read(path).with_context(|| format!("reading {model}"))?;
    let (c, d, h, w): (usize, usize, usize, usize) =
        (c.parse()?, d.parse()?, h.parse()?, w.parse()?);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .context("model path has no file name")?
        .to_string_lossy()
        .to_string();

    let mut entry = ModelEntry {
        name: "probe".into(),
        role: "calcium".into(),
        version: "0".into(),
        file,
        sha256: sha256_hex(&bytes),
        precision: "fp32".into(),
        input_name: "input".into(),
        output_name: "output".into(),
        spacing_mm: [1.0, 1.0, 1.0],
        shape: [d, h, w],
        channels: c,
        hu_clip: [-1000.0, 2000.0],
        hu_scale: 1000.0,
        labels: (0..5).map(|i| format!("class{i}")).collect(),
        training: String::new(),
        min_lesion_confidence: None,
        min_lesion_contrast_sigma: None,
        min_lesion_contrast_sigma_large: None,
        large_lesion_area_mm2: None,
    };
    if let Some(k) = labels {
        entry.labels = (0..k).map(|i| format!("class{i}")).collect();
    }
    let opts = EngineOptions {
        threads,
        ..EngineOptions::default()
    };
    let t0 = Instant::now();
    let engine = load_engine(kind, &entry, dir, &opts)?;
    let load = t0.elapsed();

    let n = c * d * h * w;
    let input = Tensor {
        shape: entry.input_shape().to_vec(),
        data: (0..n as u64)
            .map(|i| {
                let v = i.wrapping_mul(2_654_435_761) % (1u64 << 32);
                (v as f64 / 4_294_967_296.0 * 4.0 - 2.0) as f32
            })
            .collect(),
    };
    let t1 = Instant::now();
    let output = engine.run(&input)?;
    let run = t1.elapsed();

    let k = output.shape[1];
    let voxels: usize = output.shape[2..].iter().product();
    let sum_err = (0..voxels)
        .map(|v| ((0..k).map(|j| output.data[j * voxels + v]).sum::<f32>() - 1.0).abs())
        .fold(0.0f32, f32::max);
    let (lo, hi) = output
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    println!(
        "{}: load {:.2?}, run {:.2?} ({} threads); output {:?}, range [{lo}, {hi}], max |sum-1| {sum_err:.2e}",
        engine.engine_name(),
        load,
        run,
        threads,
        output.shape
    );
    if runs > 0 {
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                engine.run(&input).map(|_| t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_, _>>()?;
        ms.sort_by(f64::total_cmp);
        println!(
            "timed runs: {runs}, median {:.1} ms, min {:.1} ms, max {:.1} ms",
            ms[runs / 2],
            ms[0],
            ms[runs - 1]
        );
    }
    if let Some(out) = out {
        let raw: Vec<u8> = output.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&out, raw).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
