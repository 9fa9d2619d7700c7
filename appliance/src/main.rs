//! The `cacd` command line (see docs/CONTRACT.md).

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cacd",
    version,
    about = "Coronary artery calcium scoring appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The appliance daemon: DICOM in, scores out (flags override the config file).
    Serve(ServeArgs),
    /// Validate a config file; print every problem with its key.
    CheckConfig { file: std::path::PathBuf },
    /// The whole loop on this machine with no set-up: phantom → serve → receiver → summary.
    Demo(cacd::demo::DemoArgs),
    /// Score one study from DICOM files or folders; writes result.json and the DICOM results.
    Score(cacd::cli::score::ScoreArgs),
    /// Score every study under ROOT (shard I/N of them); resumable.
    Batch(cacd::cli::batch::BatchArgs),
    /// Write a synthetic low-dose chest CT study (DICOM series + truth.json).
    Phantom(cacd::phantom::PhantomArgs),
    /// Model-grid training arrays from phantoms (for models/training; not for operators).
    #[command(hide = true)]
    TrainData(TrainDataArgs),
    /// The scoring child process `serve` runs (JSON lines on stdin/stdout; not for operators).
    #[command(hide = true)]
    ScoreWorker,
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
    /// Label the distractor calcifications (aortic wall and valve, mitral annulus, cartilage,
    /// lymph nodes) as a sixth class, "non-coronary", in fine_y (vessels keep their voxels).
    #[arg(long)]
    non_coronary_class: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config (see deploy/cacd.example.toml).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// DICOM listen address, e.g. 0.0.0.0:11112.
    #[arg(long)]
    listen: Option<String>,
    /// Our AE title.
    #[arg(long)]
    ae: Option<String>,
    /// Data directory (studies, queue, outbox).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Also forward results to AE@HOST:PORT (repeatable).
    #[arg(long, value_parser = cacd::config::Destination::parse)]
    forward: Vec<cacd::config::Destination>,
    /// Status port address.
    #[arg(long)]
    status: Option<String>,
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(path) => match cacd::config::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                // Invalid config: the LED shows a fault (as far as its own section is readable).
                let (led, _, _) =
                    cacd::health::led_or_sim(&cacd::health::led_config_of_broken_file(path));
                cacd::health::show_fault(&led);
                cacd::health::systemd::status(&format!("fault: {e}"));
                return Err(e.into());
            }
        },
        None => cacd::config::Config::default(),
    };
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.ae {
        cfg.ae_title = v;
    }
    if let Some(v) = a.data {
        cfg.data_dir = v;
    }
    if let Some(v) = a.status {
        cfg.status = v;
    }
    for d in a.forward {
        if !cfg.destinations.contains(&d) {
            cfg.destinations.push(d);
        }
    }
    let led = cacd::health::led_or_sim(&cfg.led);
    let problems = cfg.problems();
    if !problems.is_empty() {
        cacd::health::show_fault(&led.0);
        let e = format!("invalid settings: {}", problems.join("; "));
        cacd::health::systemd::status(&format!("fault: {e}"));
        anyhow::bail!(e);
    }
    for w in cfg.warnings() {
        tracing::warn!("config: {w}");
    }
    let pipeline = cacd::daemon::pipeline_config(&cfg);
    cacd::daemon::serve(cfg, &pipeline, led)
}

fn check_config(file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cfg = match cacd::config::Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            println!("{}: {e}", file.display());
            std::process::exit(1);
        }
    };
    let problems = cfg.problems();
    for p in &problems {
        println!("{p}");
    }
    for w in cfg.warnings() {
        println!("warning: {w}");
    }
    if !problems.is_empty() {
        std::process::exit(1);
    }
    let m = cfg.receive.memory_bound();
    println!(
        "receive memory bound: {} KiB per association, {} KiB per pending connection, {} MiB in all",
        m.per_association >> 10,
        m.per_pending >> 10,
        m.total.div_ceil(1 << 20)
    );
    println!("{}: ok", file.display());
    Ok(())
}

/// Logs to journald when systemd started us with the journal as our output (JOURNAL_STREAM),
/// with every event field as a journal field (`stage` → STAGE, `series_hash` → SERIES_HASH);
/// to stderr otherwise. tracing-journald rather than systemd-journal-logger: every module logs
/// through `tracing` with structured fields, and this layer keeps those fields as journal
/// fields, where a `log` logger would get them flattened into the message.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = || EnvFilter::try_from_env("CACD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("cacd".into());
            if tracing_subscriber::registry()
                .with(filter())
                .with(layer)
                .try_init()
                .is_ok()
            {
                return;
            }
        }
    }
    let filter = filter();
    // Colour only for a person at a terminal: `cacd score 2>log` writes plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            init_logging();
            serve(a)
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo(a) => {
            if std::env::var_os("CACD_LOG").is_some() {
                init_logging();
            }
            cacd::demo::run(
                a,
                cacd::daemon::pipeline_config(&cacd::config::Config::default()),
            )
        }
        Command::Score(args) => {
            init_logging();
            if cacd::cli::score::run(args)? {
                Ok(())
            } else {
                // Rejected: the reason is printed and in result.json.
                std::process::exit(2)
            }
        }
        Command::Batch(args) => {
            init_logging();
            cacd::cli::batch::run(args)
        }
        Command::Phantom(args) => cacd::phantom::run(args),
        Command::ScoreWorker => {
            init_logging();
            cacd::worker::run()
        }
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
                non_coronary_class: a.non_coronary_class,
            };
            Ok(cacd::train_data::run(&opts)?)
        }
    }
}
