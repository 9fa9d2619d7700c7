//! `cacd batch ROOT --out DIR [--shard I/N]`: score every study under ROOT.
//!
//! Studies are found by reading headers only. Shard `I/N` takes the studies whose
//! StudyInstanceUID hashes to `I` modulo `N`, so any N shards are disjoint and together cover
//! every study, whatever order the file system lists them in (Kubernetes Indexed Jobs, Slurm
//! arrays). A study whose `result.json` exists is skipped: `write_outcome` writes it last,
//! atomically, so its presence means the study finished and a killed batch resumes where it was.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use sha2::{Digest, Sha256};

use super::EngineArgs;
use crate::pipeline::{self, Outcome, Pipeline};

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Folder searched recursively for DICOM files.
    pub root: PathBuf,
    /// Output folder: one sub-folder per study, plus summary-<I>-of-<N>.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// This worker's share, I/N with 0 ≤ I < N (default 0/1: everything).
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    pub shard: Shard,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("shard {s:?}: expected I/N, e.g. 0/4"))?;
    let index: u64 = i
        .trim()
        .parse()
        .map_err(|_| format!("shard index {i:?} is not a number"))?;
    let count: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("shard count {n:?} is not a number"))?;
    if count == 0 || index >= count {
        return Err(format!("shard {s:?}: need 0 <= I < N"));
    }
    Ok(Shard { index, count })
}

impl Shard {
    /// Whether this shard owns a study.
    pub fn owns(&self, study_instance_uid: &str) -> bool {
        let h = Sha256::digest(study_instance_uid.trim_end_matches(['\0', ' ']).as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        u64::from_be_bytes(b) % self.count == self.index
    }
}

/// The output folder name of a study: a hash, so no identifier leaks into paths.
pub fn study_dir_name(study_instance_uid: &str) -> String {
    let h = Sha256::digest(study_instance_uid.trim_end_matches(['\0', ' ']).as_bytes());
    hex::encode(&h[..12])
}

/// StudyInstanceUID → its files, from headers only. Non-DICOM files are skipped.
pub fn find_studies(root: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut studies: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(obj) = dicom_object::OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(&path)
            else {
                continue;
            };
            let Some(uid) = obj
                .element_opt(tags::STUDY_INSTANCE_UID)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            else {
                continue;
            };
            studies.entry(uid).or_default().push(path);
        }
    }
    Ok(studies)
}

pub fn run(args: BatchArgs) -> Result<()> {
    if !args.root.is_dir() {
        bail!("{} is not a folder", args.root.display());
    }
    let all = find_studies(&args.root)?;
    let mine: Vec<_> = all
        .into_iter()
        .filter(|(uid, _)| args.shard.owns(uid))
        .collect();
    let cfg = args.engine.pipeline_config();
    let pipeline = Pipeline::load(&cfg).context("loading the models")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let tty = std::io::stderr().is_terminal();
    let total = mine.len();
    let (mut done, mut skipped, mut rejected) = (0usize, 0usize, 0usize);
    for (i, (uid, files)) in mine.iter().enumerate() {
        let dir = args.out.join(study_dir_name(uid));
        if dir.join("result.json").is_file() {
            skipped += 1;
        } else {
            let outcome = pipeline.score(files, 1);
            pipeline::write_outcome(&outcome, &dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            match outcome {
                Outcome::Scored(_) => done += 1,
                Outcome::Rejected(_) => rejected += 1,
            }
        }
        progress(tty, i + 1, total, done, skipped, rejected);
    }
    if tty {
        eprintln!();
    }
    let csv = write_summary_csv(&args.out, &mine, args.shard)?;
    println!(
        "shard {}/{}: {total} studies ({done} scored, {rejected} rejected, {skipped} already done); summary {}",
        args.shard.index,
        args.shard.count,
        csv.display()
    );
    Ok(())
}

fn progress(tty: bool, i: usize, total: usize, done: usize, skipped: usize, rejected: usize) {
    let mut err = std::io::stderr();
    if tty {
        let width = 30;
        let filled = (i * width).checked_div(total).unwrap_or(width);
        let _ = write!(
            err,
            "\r[{}{}] {i}/{total}  scored {done}  rejected {rejected}  skipped {skipped}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = err.flush();
    } else {
        let _ = writeln!(
            err,
            "progress {i}/{total} scored {done} rejected {rejected} skipped {skipped}"
        );
    }
}

/// One row per study of this shard, from the result.json files on disk (so a resumed run
/// lists the studies an earlier run finished too).
fn write_summary_csv(
    out: &Path,
    studies: &[(String, Vec<PathBuf>)],
    shard: Shard,
) -> Result<PathBuf> {
    let mut csv = String::from(
        "study,status,agatston_total,volume_mm3,LM,LAD,LCX,RCA,risk_category,cac_drs,reason\n",
    );
    for (uid, _) in studies {
        let name = study_dir_name(uid);
        let path = out.join(&name).join("result.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let r: crate::result::ResultJson = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let pv = r.per_vessel.unwrap_or_default();
        let reason = r.reason.unwrap_or_default().replace(['"', '\n'], " ");
        csv += &format!(
            "{name},{},{},{},{},{},{},{},{},{},\"{reason}\"\n",
            r.status,
            r.agatston_total.map(|v| v.to_string()).unwrap_or_default(),
            r.volume_mm3.map(|v| v.to_string()).unwrap_or_default(),
            pv.LM,
            pv.LAD,
            pv.LCX,
            pv.RCA,
            r.risk_category.unwrap_or_default(),
            r.cac_drs.unwrap_or_default(),
        );
    }
    let path = out.join(format!("summary-{}-of-{}.csv", shard.index, shard.count));
    pipeline::write_atomic(&path, csv.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_everything() {
        let uids: Vec<String> = (0..500)
            .map(|i| format!("1.2.826.0.1.3680043.{i}"))
            .collect();
        for n in 1..=7u64 {
            for uid in &uids {
                let owners = (0..n)
                    .filter(|&i| Shard { index: i, count: n }.owns(uid))
                    .count();
                assert_eq!(owners, 1, "{uid} owned by {owners} of {n} shards");
            }
        }
        // And the split is not degenerate.
        let s0 = uids
            .iter()
            .filter(|u| Shard { index: 0, count: 4 }.owns(u))
            .count();
        assert!((80..170).contains(&s0), "shard 0 of 4 got {s0} of 500");
    }

    #[test]
    fn shard_syntax() {
        assert_eq!(parse_shard("2/5"), Ok(Shard { index: 2, count: 5 }));
        assert!(parse_shard("5/5").is_err());
        assert!(parse_shard("0/0").is_err());
        assert!(parse_shard("x/2").is_err());
        assert!(parse_shard("3").is_err());
    }
}
