//! `cacd score INPUT... --out DIR`: one study from DICOM files or folders.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::EngineArgs;
use crate::pipeline::{self, Outcome, Pipeline};
use crate::result::ResultJson;

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// DICOM files or folders (searched recursively), in any order.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder: result.json, seg.dcm, sr.dcm, summary.dcm.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Also write the heart outline (the heart stage's mask, 3 mm grid) as NIfTI to FILE, to
    /// look at beside the study.
    #[arg(long, value_name = "FILE")]
    pub heart_mask: Option<PathBuf>,
}

/// Runs the command; `Ok(false)` means the study was rejected (result.json says why).
pub fn run(args: ScoreArgs) -> Result<bool> {
    let cfg = args.engine.pipeline_config();
    let pipeline = Pipeline::load(&cfg).context("loading the models")?;
    let outcome = pipeline.score(&args.inputs, 1);
    pipeline::write_outcome(&outcome, &args.out)
        .with_context(|| format!("writing results to {}", args.out.display()))?;
    if let Some(path) = &args.heart_mask {
        write_heart_mask(&args.inputs, path)?;
    }
    match &outcome {
        Outcome::Scored(s) => {
            print!("{}", summary(&s.result));
            println!("results: {}", args.out.display());
            Ok(true)
        }
        Outcome::NotScored(n) => {
            eprintln!(
                "not scored: {}",
                n.result.reason.as_deref().unwrap_or("no reason given")
            );
            println!(
                "results (SR and summary saying why): {}",
                args.out.display()
            );
            Ok(false)
        }
        Outcome::Failed(r) => {
            // Not the study's fault: a non-zero exit either way, and the reason says ours.
            anyhow::bail!(
                "scoring failed: {}",
                r.reason.as_deref().unwrap_or("no reason given")
            )
        }
        Outcome::Rejected(r) => {
            eprintln!(
                "rejected: {}",
                r.reason.as_deref().unwrap_or("no reason given")
            );
            Ok(false)
        }
    }
}

/// Outlines the heart again (the pipeline keeps no copy) and writes it as NIfTI.
fn write_heart_mask(inputs: &[PathBuf], path: &std::path::Path) -> Result<()> {
    let volume =
        crate::assemble::assemble_paths(inputs).context("assembling for the heart mask")?;
    match crate::heart::outline(&volume) {
        Ok(h) => std::fs::write(path, h.to_nifti())
            .with_context(|| format!("writing {}", path.display())),
        Err(e) => {
            eprintln!("heart mask: none written ({e})");
            Ok(())
        }
    }
}

/// A few lines a person reads at the terminal.
pub fn summary(r: &ResultJson) -> String {
    let mut s = String::new();
    let total = r.agatston_total.unwrap_or(0.0);
    s += &format!(
        "Agatston {total:.1}  volume {:.1} mm3  risk category {}  CAC-DRS {}\n",
        r.volume_mm3.unwrap_or(0.0),
        r.risk_category.as_deref().unwrap_or("-"),
        r.cac_drs.as_deref().unwrap_or("-"),
    );
    if let Some(pv) = &r.per_vessel {
        s += &format!(
            "  LM {:.1}  LAD {:.1}  LCX {:.1}  RCA {:.1}  ({} lesions)\n",
            pv.LM,
            pv.LAD,
            pv.LCX,
            pv.RCA,
            r.lesions.as_ref().map_or(0, |l| l.len())
        );
    }
    if let Some(m) = &r.model {
        let t = &r.timings_ms;
        s += &format!(
            "  model {} {} ({}, {})  ms: assemble {} preprocess {} infer {} score {} encode {}\n",
            m.name,
            m.version,
            m.precision,
            m.engine,
            t.assemble,
            t.preprocess,
            t.infer,
            t.score,
            t.encode
        );
    }
    for w in &r.quality.warnings {
        s += &format!("  warning: {w}\n");
    }
    s
}
