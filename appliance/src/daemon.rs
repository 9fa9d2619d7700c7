//! `cacd serve`: wires the stages to the queue.
//!
//! - receive (tokio tasks) stores instances and records them in the queue;
//! - one scoring thread completes quiet series, scores them with the pipeline (blocking, CPU
//!   heavy, never on the receive path) and hands results to forwarding;
//! - one forwarding task per destination sends due deliveries, so one PACS that is down does
//!   not hold up another;
//! - housekeeping prunes delivered series after the retention period.
//!
//! Everything that matters is in the queue, so a restart resumes where the last run stood.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{secs, Config, Destination};
use crate::forward::{self, ScuOptions, SendError};
use crate::pipeline::{self, Outcome, Pipeline};
use crate::queue::{now_ms, Attempt, Queue, QueueError, ScoringEnd, SeriesRecord};
use crate::receive::{self, Receiver};
use crate::store::{self, list_instances, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Receive(#[from] receive::ReceiveError),
    #[error("DICOM listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Turns a scored series into result files; the pipeline in production.
pub trait Scorer: Send + Sync + 'static {
    fn score_into(&self, inputs: &[PathBuf], version: u32, out_dir: &std::path::Path)
        -> ScoringEnd;
}

impl Scorer for Pipeline {
    fn score_into(
        &self,
        inputs: &[PathBuf],
        version: u32,
        out_dir: &std::path::Path,
    ) -> ScoringEnd {
        let outcome = self.score(inputs, version);
        let written = pipeline::write_outcome(&outcome, out_dir);
        match (outcome, written) {
            (_, Err(e)) => ScoringEnd::Failed {
                reason: format!("writing results: {e}"),
            },
            (Outcome::Rejected(r), Ok(_)) => ScoringEnd::Rejected {
                reason: r.reason.unwrap_or_else(|| "rejected".into()),
            },
            (Outcome::Scored(s), Ok(files)) => ScoringEnd::Scored {
                results: files,
                agatston_total: s.result.agatston_total,
            },
        }
    }
}

/// Builds the scorer; called on the scoring thread so that receiving starts at once and keeps
/// working while models load (or are missing: studies are kept and scored once they load).
pub type ScorerFactory = Box<dyn Fn() -> Result<Arc<dyn Scorer>, String> + Send>;

/// A running daemon (used by `serve` and, in-process, by `demo`).
pub struct Daemon {
    pub dicom_addr: SocketAddr,
    pub queue: Queue,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    stop_scoring: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    budget: Duration,
}

/// Starts every stage. Must run inside a tokio runtime.
pub async fn start(cfg: Config, scorer: ScorerFactory) -> Result<Daemon, DaemonError> {
    let cfg = Arc::new(cfg);
    let store = Store::open(&cfg.data_dir)?;
    let queue = Queue::open(&cfg.data_dir)?;
    let counts = queue.counts()?;
    info!(data = %cfg.data_dir.display(), ?counts, "queue opened; resuming");
    let receiver = Arc::new(Receiver::new(cfg.clone(), store.clone(), queue.clone())?);
    let listener = receive::bind(&cfg.listen).await?;
    let dicom_addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let budget = secs(cfg.housekeeping.shutdown_budget_s);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(receive::run(
        listener,
        receiver,
        rx.clone(),
        budget,
    )));

    // One notifier per destination: the scoring thread pokes them when results are ready.
    let dests: Vec<(Destination, Arc<Notify>)> = cfg
        .destinations
        .iter()
        .map(|d| (d.clone(), Arc::new(Notify::new())))
        .collect();
    let ids: Vec<String> = dests.iter().map(|(d, _)| d.id()).collect();
    let notifies: Vec<Arc<Notify>> = dests.iter().map(|(_, n)| n.clone()).collect();
    for (dest, notify) in dests {
        tasks.push(tokio::spawn(forward_loop(
            cfg.clone(),
            queue.clone(),
            dest,
            notify,
            rx.clone(),
        )));
    }
    if ids.is_empty() {
        info!(outbox = %store.outbox_dir().display(), "no destination configured: results stay in the outbox");
    }

    let stop_scoring = Arc::new(AtomicBool::new(false));
    {
        let (cfg, queue, store, stop) = (
            cfg.clone(),
            queue.clone(),
            store.clone(),
            stop_scoring.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("cacd-scoring".into())
            .spawn(move || {
                let Some(scorer) = load_scorer(&scorer, &stop) else {
                    return;
                };
                scoring_loop(
                    &cfg,
                    &queue,
                    &store,
                    scorer.as_ref(),
                    &ids,
                    &notifies,
                    &stop,
                    &handle,
                )
            })?;
    }
    tasks.push(tokio::spawn(housekeeping_loop(
        cfg.clone(),
        queue.clone(),
        store.clone(),
        rx,
    )));
    Ok(Daemon {
        dicom_addr,
        queue,
        store,
        shutdown: tx,
        stop_scoring,
        tasks,
        budget,
    })
}

impl Daemon {
    /// Stops accepting, lets in-flight work finish within the budget, and returns. A scoring
    /// run still going is left to the queue: the next start scores that series again.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.stop_scoring.store(true, Ordering::SeqCst);
        let all = futures_join(self.tasks);
        if tokio::time::timeout(self.budget + Duration::from_millis(500), all)
            .await
            .is_err()
        {
            warn!("shutdown budget spent; exiting with work in flight (it resumes on restart)");
        }
        info!("stopped");
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Loads the scorer, retrying every 30 s until it loads or the daemon stops.
fn load_scorer(factory: &ScorerFactory, stop: &AtomicBool) -> Option<Arc<dyn Scorer>> {
    loop {
        match factory() {
            Ok(s) => return Some(s),
            Err(e) => {
                error!(error = %e, "cannot load the scoring pipeline; receiving continues, scoring waits (retry in 30 s)")
            }
        }
        for _ in 0..120 {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scoring_loop(
    cfg: &Config,
    queue: &Queue,
    store: &Store,
    scorer: &dyn Scorer,
    dest_ids: &[String],
    notifies: &[Arc<Notify>],
    stop: &AtomicBool,
    rt: &tokio::runtime::Handle,
) {
    let _guard = rt.enter();
    let quiet = cfg.quiet_period();
    // Resume: series left in `scored`/`forwarding` get their deliveries (re)created.
    if let Err(e) = queue.start_forwarding(dest_ids) {
        error!(error = %e, "queue: resuming forwarding failed");
    }
    notifies.iter().for_each(|n| n.notify_one());
    while !stop.load(Ordering::SeqCst) {
        let step = (|| -> Result<bool, QueueError> {
            for s in queue.complete_quiet(quiet)? {
                info!(series = %store::uid_hash(&s), "series complete");
            }
            let Some(rec) = queue.start_scoring()? else {
                return Ok(false);
            };
            score_one(queue, store, scorer, &rec)?;
            if !queue.start_forwarding(dest_ids)?.is_empty() {
                notifies.iter().for_each(|n| n.notify_one());
            }
            Ok(true)
        })();
        match step {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_millis(250)),
            Err(e) => {
                error!(error = %e, "queue error in the scoring loop; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn score_one(
    queue: &Queue,
    store: &Store,
    scorer: &dyn Scorer,
    rec: &SeriesRecord,
) -> Result<(), QueueError> {
    let h = store::uid_hash(&rec.series_uid);
    let inputs = list_instances(&store.series_dir(&rec.study_uid, &rec.series_uid));
    let out = store
        .outbox_series_dir(&rec.study_uid, &rec.series_uid)
        .join(format!("v{}", rec.version));
    info!(series = %h, version = rec.version, attempt = rec.scoring_attempts, instances = inputs.len(), "scoring");
    let t = std::time::Instant::now();
    let end = if inputs.is_empty() {
        ScoringEnd::Failed {
            reason: "no stored instances found for the series".into(),
        }
    } else {
        scorer.score_into(&inputs, rec.version, &out)
    };
    let ms = t.elapsed().as_millis();
    match &end {
        ScoringEnd::Scored {
            agatston_total,
            results,
        } => {
            info!(series = %h, version = rec.version, agatston = ?agatston_total, files = results.len(), ms, "scored")
        }
        ScoringEnd::Rejected { reason } => info!(series = %h, %reason, ms, "rejected"),
        ScoringEnd::Failed { reason } => warn!(series = %h, %reason, ms, "scoring failed"),
    }
    if !queue.finish_scoring(&rec.series_uid, rec.generation, end)? {
        info!(series = %h, "new instances arrived while scoring: result superseded");
    }
    Ok(())
}

async fn forward_loop(
    cfg: Arc<Config>,
    queue: Queue,
    dest: Destination,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = dest.id();
    let opts = ScuOptions::from_config(&cfg);
    let (initial, max) = (
        secs(cfg.forward.backoff_initial_s),
        secs(cfg.forward.backoff_max_s),
    );
    loop {
        if *shutdown.borrow() {
            return;
        }
        let q = queue.clone();
        let idc = id.clone();
        let due = match tokio::task::spawn_blocking(move || q.due_deliveries(&idc)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                error!(destination = %id, error = %e, "queue read failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        for (d, s) in due {
            if *shutdown.borrow() {
                return;
            }
            let h = store::uid_hash(&s.series_uid);
            let attempt_no = d.attempts + 1;
            let attempt = match forward::store_files(&opts, &dest, &s.results).await {
                Ok(()) => {
                    info!(destination = %id, series = %h, version = d.version, attempt = attempt_no, files = s.results.len(), "delivered");
                    Attempt::Delivered
                }
                Err(SendError::Transient(error)) => {
                    let wait = forward::backoff(initial, max, attempt_no);
                    warn!(destination = %id, series = %h, attempt = attempt_no, retry_in_s = wait.as_secs_f64(), %error, "delivery failed (transient)");
                    Attempt::Transient {
                        error,
                        retry_at_ms: now_ms() + wait.as_millis() as u64,
                    }
                }
                Err(SendError::Permanent(error)) => {
                    error!(destination = %id, series = %h, attempt = attempt_no, %error, "delivery failed (permanent); not retrying");
                    Attempt::Permanent { error }
                }
            };
            let q = queue.clone();
            let (series_uid, idc, version) = (s.series_uid.clone(), id.clone(), d.version);
            match tokio::task::spawn_blocking(move || {
                q.record_attempt(&series_uid, &idc, version, attempt)
            })
            .await
            {
                Ok(Ok(Some(state))) => info!(series = %h, ?state, "series state"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "queue write failed; the delivery will be retried")
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

async fn housekeeping_loop(
    cfg: Arc<Config>,
    queue: Queue,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) {
    let retention = secs(cfg.housekeeping.retention_days * 86_400.0);
    let interval = secs(cfg.housekeeping.interval_s);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let (q, s) = (queue.clone(), store.clone());
        let pruned = tokio::task::spawn_blocking(move || prune(&q, &s, retention)).await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(series = n, "pruned delivered series past retention"),
            Ok(Err(e)) => warn!(error = %e, "housekeeping failed"),
            Err(_) => {}
        }
    }
}

/// Removes delivered series older than `retention` (instances and results); never anything
/// undelivered. Returns how many series went.
pub fn prune(queue: &Queue, store: &Store, retention: Duration) -> Result<usize, QueueError> {
    let mut n = 0;
    for rec in queue.prunable(retention)? {
        let series_dir = store.series_dir(&rec.study_uid, &rec.series_uid);
        let outbox = store.outbox_series_dir(&rec.study_uid, &rec.series_uid);
        let _ = std::fs::remove_dir_all(&series_dir);
        let _ = std::fs::remove_dir_all(&outbox);
        // Study folders go when their last series went.
        for dir in [
            store.study_dir(&rec.study_uid),
            outbox.parent().map(PathBuf::from).unwrap_or_default(),
        ] {
            let _ = std::fs::remove_dir(dir);
        }
        if queue.remove_series(&rec.series_uid)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Maps `[pipeline]` onto the pipeline's own settings (defaults for keys not given).
pub fn pipeline_config(cfg: &Config) -> pipeline::PipelineConfig {
    let mut p = pipeline::PipelineConfig::default();
    let s = &cfg.pipeline;
    // TensorRT engines take minutes to build on a Jetson: cache them on the data partition.
    p.gpu.trt_cache_dir = Some(cfg.data_dir.join("trt-cache"));
    if let Some(id) = s.gpu_device {
        p.gpu.device_id = id;
    }
    if let Some(fp16) = s.fp16 {
        p.gpu.fp16 = fp16;
    }
    if let Some(on) = s.gpu_preprocess {
        p.gpu_preprocess = on;
    }
    if let Some(kind) = s.engine.as_deref().and_then(crate::config::parse_engine) {
        p.engine = kind;
    }
    if let Some(v) = &s.precision {
        p.precision = v.clone();
    }
    if let Some(v) = &s.model_dir {
        p.model_dir = v.clone();
    }
    if s.ort_dylib.is_some() {
        p.ort_dylib = s.ort_dylib.clone();
    }
    if let Some(t) = s.threads {
        p.threads = t;
    }
    p
}

/// `cacd serve`: loads the pipeline, runs until SIGTERM/SIGINT, then shuts down gracefully.
pub fn serve(cfg: Config, pipeline_cfg: &pipeline::PipelineConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let pipeline_cfg = pipeline_cfg.clone();
    let factory: ScorerFactory = Box::new(move || {
        let p = Pipeline::load(&pipeline_cfg).map_err(|e| e.to_string())?;
        let m = p.model_info();
        info!(model = %m.name, version = %m.version, engine = %m.engine, precision = %m.precision, "pipeline loaded");
        Ok(Arc::new(p) as Arc<dyn Scorer>)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = start(cfg, factory).await?;
        info!(dicom = %daemon.dicom_addr, "cacd serve running");
        wait_for_signal().await?;
        info!("signal received: stopping");
        daemon.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })?;
    // Don't wait for a scoring run in progress: it is redone after restart.
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
