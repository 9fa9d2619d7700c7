//! The `cacd` command line (see ../shared/CONTRACT.md).

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cacd", version, about = "Coronary artery calcium scoring appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic low-dose chest CT study (DICOM series + truth.json).
    Phantom(cacd::phantom::PhantomArgs),
    /// Model-grid training arrays from phantoms (for models/training; not for operators).
    #[command(hide = true)]
    TrainData(TrainDataArgs),
}

#[derive(clap::Args)]
struct TrainDataArgs {
    /// Half-open seed range A..B (seeds >= 100000 are the benchmark's and are refused).
    #[arg(long, value_parser = cacd::train_data::parse_seed_range)]
    seeds: (u64, u64),
    #[arg(long)]
    out: std::path::PathBuf,
    /// Largest crop-centre jitter per axis, mm.
    #[arg(long, default_value_t = 8.0)]
    jitter_mm: f64,
    /// Take the grids from this manifest instead of docs/ARCHITECTURE.md's defaults.
    #[arg(long)]
    manifest: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Phantom(args) => cacd::phantom::run(args),
        Command::TrainData(a) => {
            let (heart, calcium) = match &a.manifest {
                Some(m) => cacd::train_data::grids_from_manifest(m)?,
                None => cacd::train_data::default_grids(),
            };
            let opts = cacd::train_data::TrainDataOptions {
                seeds: a.seeds,
                out: a.out,
                jitter_mm: a.jitter_mm,
                heart,
                calcium,
            };
            Ok(cacd::train_data::run(&opts)?)
        }
    }
}
