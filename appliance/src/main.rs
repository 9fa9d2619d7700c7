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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Phantom(args) => cacd::phantom::run(args),
    }
}
