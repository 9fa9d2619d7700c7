//! `cacd serve`: wires the stages to the queue.
//!
//! - receive (tokio tasks) stores instances and records them in the queue;
//! - one scoring thread completes quiet series, scores them with the pipeline (blocking, CPU
//!   heavy, never on the receive path) and hands results to forwarding;
//! - one forwarding task per destination sends due deliveries, so one PACS that is down does
//!   not hold up another;
//! - housekeeping prunes delivered series after the retention period, and for space when the
//!   disk is under the receive watermark (`housekeeping`);
//! - field operations: the health loop (status LED, systemd READY/STATUS/WATCHDOG), the status
//!   port, and the report outbox with its sender and heartbeats (see `health`, `status`,
//!   `reports`).
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
use crate::health::{self, Monitor, SharedLed, State};
pub use crate::housekeeping::prune;
use crate::pipeline::{self, Outcome, Pipeline};
use crate::queue::{now_ms, Attempt, Progress, Queue, QueueError, ScoringEnd, SeriesRecord};
use crate::receive::{self, Receiver};
use crate::reports::{self, Outbox, ReportError};
use crate::result::ModelInfo;
use crate::status::{self, StatusCtx};
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
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error(transparent)]
    Reports(#[from] ReportError),
}

/// The status LED as `serve` opened it: the LED, a simulated LED's reader, and why the
/// configured LED could not be opened (if so).
pub type Led = (SharedLed, Option<cacd_hal::SimLedHandle>, Option<String>);

/// Turns a scored series into result files; the pipeline in production.
pub trait Scorer: Send + Sync + 'static {
    fn score_into(&self, inputs: &[PathBuf], version: u32, out_dir: &std::path::Path)
        -> ScoringEnd;
    /// The loaded models, for the status port and reports.
    fn model_info(&self) -> Option<ModelInfo> {
        None
    }
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
            (_, Err(e)) => ScoringEnd::Error {
                reason: format!("writing results: {e}"),
            },
            (Outcome::Rejected(r), Ok(_)) => ScoringEnd::Rejected {
                reason: r.reason.unwrap_or_else(|| "rejected".into()),
            },
            // Ours, not the study's: retried, then held for a person (never pruned).
            (Outcome::Failed(r), Ok(_)) => ScoringEnd::Error {
                reason: r.reason.unwrap_or_else(|| "scoring failed".into()),
            },
            (Outcome::Scored(s), Ok(files)) => ScoringEnd::Scored {
                results: files,
                agatston_total: s.result.agatston_total,
                not_scored: None,
                timings: Some(s.result.timings_ms),
            },
            // The PACS gets the SR and summary that say why; the queue keeps the reason.
            (Outcome::NotScored(n), Ok(files)) => ScoringEnd::Scored {
                results: files,
                agatston_total: None,
                not_scored: n.result.reason,
                timings: Some(n.result.timings_ms),
            },
        }
    }

    fn model_info(&self) -> Option<ModelInfo> {
        Some(Pipeline::model_info(self))
    }
}

/// What the stages share for field operations.
#[derive(Clone)]
struct Ops {
    cfg: Arc<Config>,
    monitor: Arc<Monitor>,
    store: Store,
    outbox: Option<Outbox>,
    report_notify: Arc<Notify>,
}

impl Ops {
    /// Queues a result report for a series that reached the end of scoring.
    fn report_result(&self, series_uid: &str, queue: &Queue) {
        let Some(outbox) = &self.outbox else { return };
        let rec = match queue.series(series_uid) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let body = reports::result_report(&self.cfg, &self.store, &rec);
        match outbox.push("result", body, &status::box_id(&self.cfg)) {
            Ok(seq) => {
                info!(stage = "report", series_hash = %store::uid_hash(series_uid), seq, "result report queued");
                self.report_notify.notify_one();
            }
            Err(e) => warn!(stage = "report", error = %e, "result report not queued"),
        }
    }
}

/// Builds the scorer; called on the scoring thread so that receiving starts at once and keeps
/// working while models load (or are missing: studies are kept and scored once they load).
pub type ScorerFactory = Box<dyn Fn() -> Result<Arc<dyn Scorer>, String> + Send>;

/// A running daemon (used by `serve` and, in-process, by `demo`).
pub struct Daemon {
    pub dicom_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub queue: Queue,
    pub store: Store,
    pub monitor: Arc<Monitor>,
    shutdown: watch::Sender<bool>,
    stop_scoring: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    budget: Duration,
}

/// Starts every stage with the LED from the config. Must run inside a tokio runtime.
pub async fn start(cfg: Config, scorer: ScorerFactory) -> Result<Daemon, DaemonError> {
    let led = health::led_or_sim(&cfg.led);
    start_with(cfg, scorer, led).await
}

/// Starts every stage, showing health on `led`. Must run inside a tokio runtime.
pub async fn start_with(
    cfg: Config,
    scorer: ScorerFactory,
    led: Led,
) -> Result<Daemon, DaemonError> {
    let cfg = Arc::new(cfg);
    let monitor = Arc::new(Monitor::default());
    let (led, sim, led_error) = led;
    health::show(&monitor, &led, State::Booting, led_error.clone());
    health::systemd::status("booting: opening the database");
    // A series counts as arriving (never pruned) until it has been quiet this long.
    let store = Store::open(&cfg.data_dir)?.with_assembly_window(cfg.quiet_period());
    let queue = Queue::open(&cfg.data_dir)?.with_max_scoring_attempts(
        cfg.pipeline
            .max_scoring_attempts
            .unwrap_or(crate::queue::MAX_SCORING_ATTEMPTS),
    );
    let counts = queue.counts()?;
    monitor.db_open.store(true, Ordering::SeqCst);
    info!(data = %cfg.data_dir.display(), ?counts, "queue opened; resuming");
    let outbox = match cfg.reports.url.is_empty() {
        true => None,
        false => Some(Outbox::open(queue.database(), cfg.reports.max_pending)?),
    };
    let receiver = Arc::new(Receiver::new(
        cfg.clone(),
        store.clone(),
        queue.clone(),
        monitor.clone(),
    )?);
    let listener = receive::bind(&cfg.listen).await?;
    let dicom_addr = listener.local_addr()?;
    let status_listener = status::bind(&cfg.status).await?;
    let status_addr = status_listener.local_addr()?;
    monitor.listener_bound.store(true, Ordering::SeqCst);
    let (tx, rx) = watch::channel(false);
    let budget = secs(cfg.housekeeping.shutdown_budget_s);
    let mut tasks = Vec::new();
    {
        let (m, rx) = (monitor.clone(), rx.clone());
        m.receiver_alive.store(true, Ordering::SeqCst);
        tasks.push(tokio::spawn(async move {
            receive::run(listener, receiver, rx, budget).await;
            m.receiver_alive.store(false, Ordering::SeqCst);
        }));
    }
    let report_notify = Arc::new(Notify::new());
    let ops = Ops {
        cfg: cfg.clone(),
        monitor: monitor.clone(),
        store: store.clone(),
        outbox: outbox.clone(),
        report_notify: report_notify.clone(),
    };
    let status_ctx = Arc::new(StatusCtx {
        cfg: cfg.clone(),
        monitor: monitor.clone(),
        queue: queue.clone(),
        store: store.clone(),
        outbox: outbox.clone(),
    });
    tasks.push(tokio::spawn(status::serve(
        status_listener,
        status_ctx.clone(),
        rx.clone(),
    )));
    tasks.push(tokio::spawn(health::run_loop(
        cfg.clone(),
        monitor.clone(),
        queue.clone(),
        led,
        sim,
        led_error,
        rx.clone(),
    )));
    if let Some(outbox) = &outbox {
        tasks.push(tokio::spawn(reports::run_sender(
            cfg.clone(),
            outbox.clone(),
            report_notify.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(reports::run_heartbeats(
            status_ctx,
            outbox.clone(),
            report_notify.clone(),
            rx.clone(),
        )));
    }

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
            monitor.clone(),
        )));
    }
    if ids.is_empty() {
        info!(outbox = %store.outbox_dir().display(), "no destination configured: results stay in the outbox");
    }

    let stop_scoring = Arc::new(AtomicBool::new(false));
    {
        let (cfg, queue, store, stop, ops) = (
            cfg.clone(),
            queue.clone(),
            store.clone(),
            stop_scoring.clone(),
            ops.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("cacd-scoring".into())
            .spawn(move || {
                let Some(scorer) = load_scorer(&scorer, &stop, &ops.monitor) else {
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
                    &ops,
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
        status_addr,
        queue,
        store,
        monitor,
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

/// Loads the scorer, retrying every 30 s until it loads or the daemon stops. While it does not
/// load (a model whose hash differs from the manifest, models missing) the box shows a fault.
fn load_scorer(
    factory: &ScorerFactory,
    stop: &AtomicBool,
    monitor: &Monitor,
) -> Option<Arc<dyn Scorer>> {
    loop {
        monitor.scoring_alive();
        match factory() {
            Ok(s) => {
                monitor.model_loaded(s.model_info().unwrap_or_else(|| ModelInfo {
                    name: "unknown".into(),
                    version: String::new(),
                    sha256: String::new(),
                    precision: String::new(),
                    engine: String::new(),
                    preprocessing: None,
                }));
                return Some(s);
            }
            Err(e) => {
                monitor.fault("model", format!("models: {e}"));
                error!(stage = "infer", error = %e, "cannot load the scoring pipeline; receiving continues, scoring waits (retry in 30 s)")
            }
        }
        for _ in 0..120 {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            monitor.scoring_alive();
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
    ops: &Ops,
) {
    let _guard = rt.enter();
    let quiet = cfg.quiet_period();
    // Resume: series left in `scored`/`forwarding` get their deliveries (re)created.
    if let Err(e) = queue.start_forwarding(dest_ids) {
        error!(error = %e, "queue: resuming forwarding failed");
    }
    notifies.iter().for_each(|n| n.notify_one());
    while !stop.load(Ordering::SeqCst) {
        ops.monitor.scoring_alive();
        let step = (|| -> Result<bool, QueueError> {
            for s in queue.complete_quiet(quiet)? {
                info!(stage = "receive", series_hash = %store::uid_hash(&s), "series complete");
            }
            let Some(rec) = queue.start_scoring()? else {
                return Ok(false);
            };
            ops.monitor.scoring_started();
            let done = score_one(queue, store, scorer, &rec, ops);
            ops.monitor.scoring_ended();
            done?;
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
    ops: &Ops,
) -> Result<(), QueueError> {
    let h = store::uid_hash(&rec.series_uid);
    let inputs = list_instances(&store.series_dir(&rec.study_uid, &rec.series_uid));
    let out = store.result_dir(&rec.study_uid, &rec.series_uid, rec.version);
    info!(stage = "score", series_hash = %h, version = rec.version, attempt = rec.scoring_attempts, instances = inputs.len(), "scoring");
    let t = std::time::Instant::now();
    let end = if inputs.is_empty() {
        ScoringEnd::Failed {
            reason: "no stored instances found for the series".into(),
        }
    } else {
        scorer.score_into(&inputs, rec.version, &out)
    };
    // A re-score supersedes what a PACS may hold: the new SR references the earlier one, the
    // summary says so. Done before the run is recorded, so a restart simply does it again.
    if let (ScoringEnd::Scored { .. }, Some(prev)) = (&end, rec.supersedes) {
        match supersede(store, rec, prev, &out) {
            Ok(()) => {
                info!(stage = "score", series_hash = %h, version = rec.version, supersedes = prev, "results supersede an earlier version")
            }
            Err(e) => {
                warn!(stage = "score", series_hash = %h, version = rec.version, supersedes = prev, error = %crate::uid::redact(&e), "results cannot reference the version they supersede")
            }
        }
    }
    // Reasons go to logs, the status page and reports: UIDs in them are hashed there (the
    // result files keep the full text for the PACS).
    let end = redacted(end);
    let ms = t.elapsed().as_millis();
    record_latencies(&ops.monitor, &end, t.elapsed());
    match &end {
        ScoringEnd::Scored {
            agatston_total,
            results,
            not_scored: None,
            ..
        } => {
            info!(stage = "score", series_hash = %h, version = rec.version, agatston = ?agatston_total, files = results.len(), ms, "scored")
        }
        ScoringEnd::Scored {
            results,
            not_scored: Some(reason),
            ..
        } => {
            info!(stage = "score", series_hash = %h, version = rec.version, %reason, files = results.len(), ms, "not scored (quality gate)")
        }
        ScoringEnd::Rejected { reason } => {
            info!(stage = "score", series_hash = %h, %reason, ms, "rejected")
        }
        ScoringEnd::Failed { reason } => {
            warn!(stage = "score", series_hash = %h, %reason, ms, "scoring failed")
        }
        ScoringEnd::Crashed { reason } => {
            warn!(stage = "score", series_hash = %h, %reason, ms, "the scorer crashed on this series")
        }
        ScoringEnd::Error { reason } => {
            warn!(stage = "score", series_hash = %h, %reason, ms, "scoring failed on our side; retried")
        }
    }
    let crashed = matches!(end, ScoringEnd::Crashed { .. } | ScoringEnd::Error { .. });
    if queue.finish_scoring(&rec.series_uid, rec.generation, end)? {
        ops.report_result(&rec.series_uid, queue);
    } else if crashed {
        // Counted; the series is scored again (or failed once the attempts are spent).
        std::thread::sleep(Duration::from_secs(1));
    } else {
        info!(stage = "score", series_hash = %h, "new instances arrived while scoring: result superseded");
    }
    Ok(())
}

/// Marks the results of `rec.version` in `out` as superseding version `prev` (its SR in the
/// outbox): the SR gets a Predecessor Documents Sequence and a note, the summary image says
/// "supersedes v<prev>", result.json gets `supersedes_version`. Each file is rewritten
/// atomically; doing it twice gives the same files.
fn supersede(
    store: &Store,
    rec: &SeriesRecord,
    prev: u32,
    out: &std::path::Path,
) -> Result<(), String> {
    use crate::encode::{self, sr, summary};
    let open = |p: &std::path::Path| {
        dicom_object::open_file(p).map_err(|e| format!("{}: {e}", forward::file_label(p)))
    };
    let prev_sr = store
        .result_dir(&rec.study_uid, &rec.series_uid, prev)
        .join("sr.dcm");
    let earlier = sr::Predecessor::of(&*open(&prev_sr)?, prev).map_err(|e| e.to_string())?;
    let sr_path = out.join("sr.dcm");
    let mut report = open(&sr_path)?;
    sr::supersede(&mut report, &earlier);
    encode::write_dicom(&report, &sr_path).map_err(|e| e.to_string())?;
    let summary_path = out.join("summary.dcm");
    if summary_path.exists() {
        let mut image = open(&summary_path)?;
        summary::supersede(&mut image, rec.version, prev).map_err(|e| e.to_string())?;
        encode::write_dicom(&image, &summary_path).map_err(|e| e.to_string())?;
    }
    let json_path = out.join("result.json");
    if let Ok(bytes) = std::fs::read(&json_path) {
        if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&bytes) {
            m.insert("supersedes_version".into(), prev.into());
            let text = serde_json::to_vec_pretty(&m).map_err(|e| e.to_string())?;
            crate::fsutil::write_atomic(&json_path, &text)
                .map_err(|e| format!("result.json: {e}"))?;
        }
    }
    Ok(())
}

/// `end` with every UID in its reason hashed (`uid::redact`).
fn redacted(end: ScoringEnd) -> ScoringEnd {
    use crate::uid::redact;
    match end {
        ScoringEnd::Scored {
            results,
            agatston_total,
            not_scored,
            timings,
        } => ScoringEnd::Scored {
            results,
            agatston_total,
            not_scored: not_scored.map(|r| redact(&r)),
            timings,
        },
        ScoringEnd::Rejected { reason } => ScoringEnd::Rejected {
            reason: redact(&reason),
        },
        ScoringEnd::Failed { reason } => ScoringEnd::Failed {
            reason: redact(&reason),
        },
        ScoringEnd::Crashed { reason } => ScoringEnd::Crashed {
            reason: redact(&reason),
        },
        ScoringEnd::Error { reason } => ScoringEnd::Error {
            reason: redact(&reason),
        },
    }
}

/// Stage latencies of one scoring run: the pipeline's own timings, as the scorer returned
/// them, and the whole run as `total`.
fn record_latencies(monitor: &Monitor, end: &ScoringEnd, total: Duration) {
    monitor.stage_latency("total", total.as_secs_f64());
    if let ScoringEnd::Scored {
        timings: Some(t), ..
    } = end
    {
        for (stage, ms) in [
            ("assemble", t.assemble),
            ("preprocess", t.preprocess),
            ("infer", t.infer),
            ("score", t.score),
            ("encode", t.encode),
        ] {
            monitor.stage_latency(stage, ms as f64 / 1000.0);
        }
    }
}

/// What one delivery attempt does to the queue.
enum Update {
    /// It reached the peer (or failed to): recorded against the delivery, with the files it
    /// delivered and those the peer refused.
    Attempt(Attempt, Progress),
    /// A result file was missing or unreadable, so nothing was sent: the series is scored
    /// again from its stored instances (same version, so the same result UIDs).
    Rescore(String),
}

/// Turns one association's [`forward::Batch`] into the queue update, with its log lines.
fn delivery_update(
    batch: forward::Batch,
    id: &str,
    h: &str,
    d: &crate::queue::Delivery,
    (initial, max): (Duration, Duration),
    monitor: &Monitor,
) -> Update {
    let attempt_no = d.attempts + 1;
    let progress = Progress {
        delivered: batch.delivered,
        refused: batch
            .refused
            .into_iter()
            .map(|(f, e)| (f, crate::uid::redact(&e)))
            .collect(),
    };
    for (f, error) in &progress.refused {
        error!(stage = "forward", destination = %id, series_hash = %h, file = %forward::file_label(f), %error, "result object refused for good by the destination; the others are still sent");
    }
    let attempt = match batch.stopped {
        None => {
            let ok = progress.refused.is_empty();
            let error = (!ok).then(|| "objects refused".to_string());
            monitor.forward_attempt(id, ok, true, error);
            if ok {
                info!(stage = "forward", destination = %id, series_hash = %h, version = d.version, attempt = attempt_no, files = progress.delivered.len(), "delivered");
            } else {
                warn!(stage = "forward", destination = %id, series_hash = %h, version = d.version, attempt = attempt_no, files = progress.delivered.len(), refused = progress.refused.len(), "delivered all but the refused objects");
            }
            Attempt::Delivered
        }
        Some(SendError::Transient(error)) => {
            let error = crate::uid::redact(&error);
            monitor.forward_attempt(id, false, false, Some(error.clone()));
            let wait = forward::backoff(initial, max, attempt_no);
            warn!(stage = "forward", destination = %id, series_hash = %h, attempt = attempt_no, sent = progress.delivered.len(), retry_in_s = wait.as_secs_f64(), %error, "delivery failed (transient)");
            Attempt::Transient {
                error,
                retry_at_ms: now_ms() + wait.as_millis() as u64,
            }
        }
        Some(SendError::Permanent(error)) => {
            let error = crate::uid::redact(&error);
            monitor.forward_attempt(id, false, true, Some(error.clone()));
            error!(stage = "forward", destination = %id, series_hash = %h, attempt = attempt_no, %error, "delivery failed (permanent); not retrying");
            Attempt::Permanent { error }
        }
        Some(SendError::ResultMissing(error)) => {
            // Nothing reached the peer: not an attempt (see `Update::Rescore`).
            warn!(stage = "forward", destination = %id, series_hash = %h, version = d.version, %error, "result file missing or unreadable; scoring the series again");
            return Update::Rescore(error);
        }
    };
    Update::Attempt(attempt, progress)
}

async fn forward_loop(
    cfg: Arc<Config>,
    queue: Queue,
    dest: Destination,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    monitor: Arc<Monitor>,
) {
    let id = dest.id();
    let opts = ScuOptions::from_config(&cfg);
    let backoff = (
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
            // Files this destination already acknowledged, or refused for good, are not sent
            // again (an operator's retry clears the refusals).
            let todo = d.to_send(&s.results);
            let batch = forward::store_each(&opts, &dest, &todo).await;
            let update = delivery_update(batch, &id, &h, &d, backoff, &monitor);
            let q = queue.clone();
            let (series_uid, idc, version) = (s.series_uid.clone(), id.clone(), d.version);
            match tokio::task::spawn_blocking(move || match update {
                Update::Attempt(attempt, progress) => {
                    q.record_attempt(&series_uid, &idc, version, attempt, progress)
                }
                Update::Rescore(reason) => q.rescore_missing(&series_uid, version, &reason),
            })
            .await
            {
                Ok(Ok(Some(state))) => {
                    info!(stage = "forward", series_hash = %h, ?state, "series state")
                }
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
        // Past retention, then for space: room is made before a sender meets a refusal
        // (receive also does this on demand).
        let (q, s, r) = (queue.clone(), store.clone(), cfg.receive.clone());
        let pruned = tokio::task::spawn_blocking(move || {
            [
                ("past retention", prune(&q, &s, retention)),
                (
                    "free space under the watermark",
                    crate::housekeeping::prune_for_space(
                        &q,
                        &s,
                        r.min_free_bytes,
                        r.min_free_percent,
                    ),
                ),
            ]
        })
        .await;
        for (why, result) in pruned.into_iter().flatten() {
            match result {
                Ok(0) => {}
                Ok(n) => info!(series = n, why, "pruned delivered series"),
                Err(e) => warn!(error = %e, "housekeeping failed"),
            }
        }
    }
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
    if let Some(v) = s
        .precision
        .as_deref()
        .and_then(cacd_models::Precision::parse)
    {
        p.precision = v;
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
/// A start that fails (database, listener, status port) shows a fault on `led` before the
/// error is returned; the kernel keeps a sysfs LED's pattern after the process exits.
pub fn serve(cfg: Config, pipeline_cfg: &pipeline::PipelineConfig, led: Led) -> anyhow::Result<()> {
    use anyhow::Context;
    let pipeline_cfg = pipeline_cfg.clone();
    let isolate = cfg.pipeline.isolate.unwrap_or(true);
    let timeout = secs(cfg.pipeline.score_timeout_s.unwrap_or(1800.0));
    let exe = std::env::current_exe().context("finding the cacd binary for the scoring worker")?;
    let factory: ScorerFactory = Box::new(move || {
        let s: Arc<dyn Scorer> = if isolate {
            Arc::new(crate::worker::IsolatedScorer::start(
                &exe,
                pipeline_cfg.clone(),
                timeout,
            )?)
        } else {
            Arc::new(Pipeline::load(&pipeline_cfg).map_err(|e| e.to_string())?)
        };
        if let Some(m) = s.model_info() {
            info!(model = %m.name, version = %m.version, engine = %m.engine, precision = %m.precision, isolate, "pipeline loaded");
        }
        Ok(s)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let fault_led = led.0.clone();
    rt.block_on(async move {
        let daemon = match start_with(cfg, factory, led).await {
            Ok(d) => d,
            Err(e) => {
                health::show_fault(&fault_led);
                health::systemd::status(&format!("fault: {e}"));
                return Err(e.into());
            }
        };
        info!(dicom = %daemon.dicom_addr, status = %daemon.status_addr, "cacd serve running");
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
