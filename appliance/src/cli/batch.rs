//! `cacd batch ROOT --out DIR [--shard I/N]`: score every study under ROOT.
//!
//! Studies are found by reading headers only. Shard `I/N` takes the studies whose
//! StudyInstanceUID hashes to `I` modulo `N`, so any N shards are disjoint and together cover
//! every study, whatever order the file system lists them in (Kubernetes Indexed Jobs, Slurm
//! arrays). A study whose `result.json` exists is skipped: `write_outcome` writes it last,
//! atomically, so its presence means the study finished and a killed batch resumes where it was.
//!
//! At the end each shard writes `summary-I-of-N.csv` (its own studies) and, through
//! [`super::dashboard`], `index.html` + `summary.csv` over every study in DIR whichever shard
//! scored it; `--index-only` rewrites just those (after the last shard), `--list` prints the
//! shard's studies without scoring.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use sha2::{Digest, Sha256};

use super::{dashboard, EngineArgs};
use crate::pipeline::{self, Outcome, Pipeline};

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Folder searched recursively for DICOM files (not needed with --index-only).
    #[arg(required_unless_present = "index_only")]
    pub root: Option<PathBuf>,
    /// Output folder: one sub-folder per study, summary-<I>-of-<N>.csv for this shard, and
    /// index.html + summary.csv over every study in it (all shards).
    #[arg(long)]
    pub out: PathBuf,
    /// This worker's share, I/N with 0 ≤ I < N (default 0/1: everything).
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    pub shard: Shard,
    /// Print this shard's studies (output folder name, StudyInstanceUID, file count) and exit
    /// without scoring.
    #[arg(long, conflicts_with = "index_only")]
    pub list: bool,
    /// Only rebuild index.html, summary.csv and missing thumbnails from the results in --out
    /// (e.g. once every shard has finished).
    #[arg(long)]
    pub index_only: bool,
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
    if args.index_only {
        return write_dashboard(&args.out);
    }
    let Some(root) = &args.root else {
        bail!("ROOT is required unless --index-only is given");
    };
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let all = find_studies(root)?;
    let mine: Vec<_> = all
        .into_iter()
        .filter(|(uid, _)| args.shard.owns(uid))
        .collect();
    if args.list {
        let mut out = std::io::stdout().lock();
        for (uid, files) in &mine {
            writeln!(out, "{} {uid} {}", study_dir_name(uid), files.len())?;
        }
        return Ok(());
    }
    let cfg = args.engine.pipeline_config();
    let pipeline = Pipeline::load(&cfg).context("loading the models")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut progress = Progress::new(mine.len());
    for (uid, files) in &mine {
        let dir = args.out.join(study_dir_name(uid));
        if dir.join("result.json").is_file() {
            progress.skipped += 1;
        } else {
            let outcome = pipeline.score(files, 1);
            pipeline::write_outcome(&outcome, &dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            match outcome {
                Outcome::Scored(_) => progress.scored += 1,
                Outcome::Rejected(_) | Outcome::NotScored(_) => progress.rejected += 1,
                // Ours: stop, so a broken engine does not mark a whole archive as refused.
                Outcome::Failed(r) => anyhow::bail!(
                    "scoring study {uid} failed: {}",
                    r.reason.as_deref().unwrap_or("no reason given")
                ),
            }
            // The thumbnail is for the dashboard only: a failure is reported, not fatal
            // (write_index retries it).
            if let Err(e) = dashboard::ensure_thumbnail(&dir) {
                tracing::warn!("thumbnail: {e}");
            }
        }
        progress.step();
    }
    progress.finish();
    let csv = write_summary_csv(&args.out, &mine, args.shard)?;
    println!(
        "shard {}/{}: {} studies ({} scored, {} rejected, {} already done); summary {}",
        args.shard.index,
        args.shard.count,
        mine.len(),
        progress.scored,
        progress.rejected,
        progress.skipped,
        csv.display()
    );
    write_dashboard(&args.out)
}

/// index.html + summary.csv over every study in `out` (every shard's).
fn write_dashboard(out: &Path) -> Result<()> {
    if !out.is_dir() {
        bail!("{} is not a folder", out.display());
    }
    let s = dashboard::write_index(out)
        .with_context(|| format!("writing the dashboard in {}", out.display()))?;
    for p in &s.problems {
        tracing::warn!("dashboard: {p}");
    }
    println!(
        "dashboard: {} studies in {} (all shards so far); {}",
        s.studies,
        s.index.display(),
        s.csv.display()
    );
    Ok(())
}

/// A progress bar on a terminal (redrawn in place), plain lines otherwise (logs, CI, kubectl
/// logs). Written by hand: a dozen lines, not worth a dependency.
struct Progress {
    total: usize,
    i: usize,
    scored: usize,
    rejected: usize,
    skipped: usize,
    tty: bool,
    start: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            i: 0,
            scored: 0,
            rejected: 0,
            skipped: 0,
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
        }
    }

    /// Seconds left, from the pace of the studies actually scored (skipped ones are free).
    fn eta_s(&self) -> Option<u64> {
        let worked = self.scored + self.rejected;
        if worked == 0 {
            return None;
        }
        let per = self.start.elapsed().as_secs_f64() / worked as f64;
        Some((per * (self.total - self.i) as f64).round() as u64)
    }

    fn step(&mut self) {
        self.i += 1;
        let eta = self
            .eta_s()
            .map(|s| format!("{}:{:02}", s / 60, s % 60))
            .unwrap_or_else(|| "?".into());
        let (i, total) = (self.i, self.total);
        let mut err = std::io::stderr();
        if self.tty {
            let width = 30;
            let filled = (i * width).checked_div(total).unwrap_or(width);
            let _ = write!(
                err,
                "\r[{}{}] {i}/{total}  scored {}  rejected {}  skipped {}  eta {eta}  ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.scored,
                self.rejected,
                self.skipped,
            );
            let _ = err.flush();
        } else {
            let _ = writeln!(
                err,
                "progress {i}/{total} scored {} rejected {} skipped {} elapsed {}s eta {eta}",
                self.scored,
                self.rejected,
                self.skipped,
                self.start.elapsed().as_secs(),
            );
        }
    }

    fn finish(&self) {
        if self.tty && self.total > 0 {
            eprintln!();
        }
    }
}

/// One row per study of this shard, from the result.json files on disk (so a resumed run
/// lists the studies an earlier run finished too).
fn write_summary_csv(
    out: &Path,
    studies: &[(String, Vec<PathBuf>)],
    shard: Shard,
) -> Result<PathBuf> {
    let mut csv = String::from(dashboard::CSV_HEADER);
    for (uid, _) in studies {
        let name = study_dir_name(uid);
        let path = out.join(&name).join("result.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let r: crate::result::ResultJson = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        csv += &dashboard::csv_row(&name, &r);
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

    proptest::proptest! {
        /// "Any N": for random counts up to 10 000 and random UIDs (padding included, as
        /// DICOM pads odd-length UIDs), exactly one shard owns each study.
        #[test]
        fn exactly_one_shard_owns_each_study(
            count in 1u64..10_000,
            uids in proptest::collection::vec("[0-9]{1,10}(\\.[0-9]{1,10}){1,6}\\x00?", 1..20),
        ) {
            for uid in &uids {
                let owner = (0..count).filter(|&i| Shard { index: i, count }.owns(uid)).count();
                proptest::prop_assert_eq!(owner, 1);
                // The padded and unpadded forms of a UID land in the same shard.
                let bare = uid.trim_end_matches('\0');
                let i = (0..count).find(|&i| Shard { index: i, count }.owns(bare));
                let same = i.is_some_and(|i| Shard { index: i, count }.owns(uid));
                proptest::prop_assert!(same, "{:?} and {:?} in different shards", uid, bare);
            }
        }
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
