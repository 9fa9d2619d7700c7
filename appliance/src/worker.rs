//! Scoring in a child process (`cacd score-worker`), the daemon's production scorer.
//!
//! Why: a study that crashes the pipeline (a decoder bug, an engine abort), hangs it, or makes
//! it run out of memory must cost that study one attempt, never the daemon: receiving and
//! forwarding go on, and the daemon *sees* the crash, so the poison-study guard
//! (`pipeline.max_scoring_attempts`) counts only real scorer crashes. A power cut or a SIGKILL
//! of the whole service is not counted; its run is simply redone after the restart.
//!
//! The worker loads the models once and scores series one after another. Protocol: JSON lines.
//! The daemon writes [`Request`]s to the worker's stdin; the worker answers each with one
//! [`Reply`] on stdout, prefixed with [`PREFIX`] (anything else on stdout, say from a
//! library, goes to the log rather than being misread). Logs go to stderr, which the worker
//! shares with the daemon (journald under systemd). The worker exits as soon as its stdin
//! closes, i.e. when the daemon is gone, even in the middle of a study: results are written
//! atomically, and the restarted daemon scores the series again.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::daemon::Scorer;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::queue::ScoringEnd;
use crate::result::ModelInfo;

/// Marks the worker's protocol lines on its stdout.
pub const PREFIX: &str = "cacd-worker ";

/// Daemon → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Load (and verify) the models; the first request.
    Load(PipelineConfig),
    /// Score one series into `out_dir`.
    Score {
        inputs: Vec<PathBuf>,
        version: u32,
        out_dir: PathBuf,
    },
}

/// Worker → daemon, one per request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Loaded(ModelInfo),
    LoadFailed(String),
    Scored(ScoringEnd),
}

/// `cacd score-worker`: the child's main loop (not for operators).
pub fn run() -> anyhow::Result<()> {
    // If memory runs out, the kernel should pick the worker (one study lost for this attempt)
    // rather than the daemon. Raising one's own score needs no privilege.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "500") {
        warn!(error = %e, "worker: could not raise oom_score_adj");
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    if tx.send(req).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    error!(error = %e, "worker: unreadable request; exiting");
                    std::process::exit(2);
                }
            }
        }
        // The daemon closed our stdin (it stopped or died): stop now, even mid-study.
        std::process::exit(0);
    });
    let mut pipeline: Option<Pipeline> = None;
    let mut out = std::io::stdout().lock();
    for req in rx {
        let reply = match req {
            Request::Load(cfg) => match Pipeline::load(&cfg) {
                Ok(p) => {
                    let m = p.model_info();
                    pipeline = Some(p);
                    Reply::Loaded(m)
                }
                Err(e) => Reply::LoadFailed(e.to_string()),
            },
            Request::Score {
                inputs,
                version,
                out_dir,
            } => Reply::Scored(match &pipeline {
                Some(p) => p.score_into(&inputs, version, &out_dir),
                None => ScoringEnd::Failed {
                    reason: "the worker was asked to score before loading models".into(),
                },
            }),
        };
        writeln!(out, "{PREFIX}{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

/// What the reader thread passes on from the worker's stdout.
type Replies = Receiver<Reply>;

struct Running {
    child: Child,
    stdin: ChildStdin,
    replies: Replies,
}

impl Running {
    /// Stops the worker (if it still runs) and says how it ended.
    fn end(mut self) -> String {
        drop(self.stdin);
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(st) => st.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    fn send(&mut self, req: &Request) -> std::io::Result<()> {
        let line = serde_json::to_string(req).map_err(std::io::Error::other)?;
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()
    }

    /// Peak resident memory of the worker so far (Linux), for the log.
    fn peak_rss_mb(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = s
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024)
    }
}

/// The daemon's handle on the worker: spawns it, restarts it after a crash, kills it when a
/// study runs past the time limit.
pub struct IsolatedScorer {
    exe: PathBuf,
    cfg: PipelineConfig,
    timeout: Duration,
    model: ModelInfo,
    running: Mutex<Option<Running>>,
}

impl IsolatedScorer {
    /// Starts the worker from `exe` (the `cacd` binary) and waits until it has loaded and
    /// verified the models. `timeout` bounds one study (and the model load, which with
    /// TensorRT may build an engine for minutes on first start).
    pub fn start(exe: &Path, cfg: PipelineConfig, timeout: Duration) -> Result<Self, String> {
        let (running, model) = spawn(exe, &cfg, timeout)?;
        info!(pid = running.child.id(), "scoring worker started");
        Ok(IsolatedScorer {
            exe: exe.to_path_buf(),
            cfg,
            timeout,
            model,
            running: Mutex::new(Some(running)),
        })
    }
}

fn spawn(
    exe: &Path,
    cfg: &PipelineConfig,
    timeout: Duration,
) -> Result<(Running, ModelInfo), String> {
    let mut child = Command::new(exe)
        .arg("score-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // systemd's notify socket and watchdog are the daemon's alone.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .spawn()
        .map_err(|e| format!("cannot start the scoring worker {}: {e}", exe.display()))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err("the scoring worker has no pipes".into());
    };
    let (tx, replies) = mpsc::channel();
    let pid = child.id();
    std::thread::Builder::new()
        .name("cacd-worker-out".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix(PREFIX).map(serde_json::from_str::<Reply>) {
                    Some(Ok(r)) => {
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => warn!(pid, error = %e, "scoring worker: unreadable reply"),
                    None => {
                        info!(pid, output = %crate::uid::redact(&line), "scoring worker output")
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the worker's reader: {e}"))?;
    let mut running = Running {
        child,
        stdin,
        replies,
    };
    if let Err(e) = running.send(&Request::Load(cfg.clone())) {
        return Err(format!(
            "the scoring worker died at start ({}): {e}",
            running.end()
        ));
    }
    match running.replies.recv_timeout(timeout) {
        Ok(Reply::Loaded(m)) => Ok((running, m)),
        Ok(Reply::LoadFailed(e)) => {
            running.end();
            Err(e)
        }
        Ok(other) => {
            running.end();
            Err(format!("the scoring worker answered {other:?} to Load"))
        }
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "the scoring worker did not load the models in {} s ({})",
            timeout.as_secs(),
            running.end()
        )),
        Err(RecvTimeoutError::Disconnected) => Err(format!(
            "the scoring worker died while loading the models ({})",
            running.end()
        )),
    }
}

impl Scorer for IsolatedScorer {
    fn score_into(&self, inputs: &[PathBuf], version: u32, out_dir: &Path) -> ScoringEnd {
        let mut slot = match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut running = match slot.take() {
            Some(r) => r,
            None => match spawn(&self.exe, &self.cfg, self.timeout) {
                Ok((r, _)) => {
                    info!(pid = r.child.id(), "scoring worker restarted");
                    r
                }
                Err(reason) => return ScoringEnd::Crashed { reason },
            },
        };
        let req = Request::Score {
            inputs: inputs.to_vec(),
            version,
            out_dir: out_dir.to_path_buf(),
        };
        if let Err(e) = running.send(&req) {
            let how = running.end();
            return ScoringEnd::Crashed {
                reason: format!("the scoring worker was gone ({how}): {e}"),
            };
        }
        match running.replies.recv_timeout(self.timeout) {
            Ok(Reply::Scored(end)) => {
                if let Some(mb) = running.peak_rss_mb() {
                    info!(
                        stage = "score",
                        worker_peak_rss_mb = mb,
                        "scoring worker memory"
                    );
                }
                *slot = Some(running);
                end
            }
            Ok(other) => {
                let how = running.end();
                ScoringEnd::Crashed {
                    reason: format!("the scoring worker answered {other:?} ({how})"),
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let how = running.end();
                warn!(
                    stage = "score",
                    "scoring ran past the time limit; worker stopped"
                );
                ScoringEnd::Crashed {
                    reason: format!(
                        "scoring took longer than {} s; the worker was stopped ({how})",
                        self.timeout.as_secs()
                    ),
                }
            }
            Err(RecvTimeoutError::Disconnected) => ScoringEnd::Crashed {
                reason: format!("the scoring worker died ({})", running.end()),
            },
        }
    }

    fn model_info(&self) -> Option<ModelInfo> {
        Some(self.model.clone())
    }
}

impl Drop for IsolatedScorer {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.running.lock() {
            if let Some(r) = slot.take() {
                r.end();
            }
        }
    }
}
