//! Health: what the appliance observes about itself, the state that follows (a pure function),
//! and the status LED pattern of each state.
//!
//! - [`Monitor`] collects observations from every stage (receive, scoring, forwarding, start-up)
//!   through atomics and small locks; the status port and the reports read it.
//! - [`evaluate`] maps [`Conditions`] to a [`Health`]: one [`State`] plus every reason.
//! - [`LED_TABLE`] is the one table of states, patterns and meanings (README "Status LED" is
//!   generated from it and a test keeps the two equal).
//! - [`run_loop`] ticks once a second: evaluates, drives the LED, tells systemd (READY=1 once,
//!   STATUS= on change, WATCHDOG=1 while the pipeline is alive) and probes destinations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cacd_hal::{Colour, LedError, Pattern, SimLed, SimLedHandle, StatusLed};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{secs, Config, Destination, LedConfig, LedKind};
use crate::forward::{self, ScuOptions};
use crate::queue::{now_ms, Queue};
use crate::result::ModelInfo;

/// What the box is doing, as the LED shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Booting,
    Ready,
    Receiving,
    Scoring,
    Degraded,
    Fault,
    Identify,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Booting => "booting",
            State::Ready => "ready",
            State::Receiving => "receiving",
            State::Scoring => "scoring",
            State::Degraded => "degraded",
            State::Fault => "fault",
            State::Identify => "identify",
        }
    }

    /// The row of [`LED_TABLE`] for this state.
    pub fn led(&self) -> &'static LedRow {
        // Every state has exactly one row (checked by a test); the fallback is never taken.
        LED_TABLE
            .iter()
            .find(|r| r.state == *self)
            .unwrap_or(&LED_TABLE[0])
    }
}

/// One row of the status LED table.
#[derive(Debug, Clone, Copy)]
pub struct LedRow {
    pub state: State,
    pub pattern: Pattern,
    pub colour: Colour,
    pub meaning: &'static str,
    pub cause: &'static str,
}

/// States in order of precedence, highest first: identify beats everything (a technician asked
/// for it), a fault beats booting, degraded beats activity, activity beats ready.
pub const LED_TABLE: [LedRow; 7] = [
    LedRow {
        state: State::Identify,
        pattern: Pattern::DoubleBlink {
            on_ms: 100,
            gap_ms: 100,
            off_ms: 300,
        },
        colour: Colour::Red,
        meaning: "this is the box a technician asked to find",
        cause: "`POST /api/identify` with the service token; lasts `health.identify_s`",
    },
    LedRow {
        state: State::Fault,
        pattern: Pattern::Blink {
            on_ms: 150,
            off_ms: 850,
        },
        colour: Colour::Red,
        meaning: "cannot work; needs service",
        cause: "invalid config, model hash mismatch or models missing, database cannot open",
    },
    LedRow {
        state: State::Booting,
        pattern: Pattern::Blink {
            on_ms: 1000,
            off_ms: 1000,
        },
        colour: Colour::Amber,
        meaning: "starting",
        cause: "database, models or DICOM listener not all up yet (no READY=1 yet)",
    },
    LedRow {
        state: State::Degraded,
        pattern: Pattern::DoubleBlink {
            on_ms: 150,
            gap_ms: 150,
            off_ms: 1550,
        },
        colour: Colour::Amber,
        meaning: "working, but something needs attention",
        cause: "a PACS unreachable longer than `health.pacs_unreachable_s`, a series failed (the status page says why; `POST /api/series/{hash}/retry` sends it again), disk under the watermark, GPU expected but absent (scoring on the CPU)",
    },
    LedRow {
        state: State::Scoring,
        pattern: Pattern::Blink {
            on_ms: 500,
            off_ms: 500,
        },
        colour: Colour::Green,
        meaning: "scoring a series",
        cause: "the scoring stage is running",
    },
    LedRow {
        state: State::Receiving,
        pattern: Pattern::Blink {
            on_ms: 100,
            off_ms: 100,
        },
        colour: Colour::Green,
        meaning: "receiving images",
        cause: "an association is open or an instance arrived in the last 3 s",
    },
    LedRow {
        state: State::Ready,
        pattern: Pattern::Solid,
        colour: Colour::Green,
        meaning: "healthy and idle",
        cause: "everything up, nothing wrong, nothing to do",
    },
];

/// The README's "Status LED" table, generated from [`LED_TABLE`].
pub fn led_table_markdown() -> String {
    let mut s = String::from(
        "| state | LED (single colour) | colour (bi-colour LED) | means | when |\n|---|---|---|---|---|\n",
    );
    for r in LED_TABLE.iter() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.state.name(),
            r.pattern.describe(),
            r.colour.name(),
            r.meaning,
            r.cause
        ));
    }
    s
}

/// What is observed at one moment; the input of [`evaluate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// Reasons the box cannot work (invalid config, model, database).
    pub faults: Vec<String>,
    /// Database open, models verified and loaded, DICOM listener bound.
    pub booted: bool,
    /// Destinations unreachable for longer than the threshold.
    pub unreachable: Vec<String>,
    /// Series in `failed`, each as "series <hash> failed: <why>".
    pub failed: Vec<String>,
    /// Disk under a watermark (the reason), if so.
    pub disk_low: Option<String>,
    /// A GPU is expected but absent, so scoring runs on the CPU.
    pub gpu_fallback: bool,
    pub receiving: bool,
    pub scoring: bool,
    pub identify: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub state: State,
    /// Every fault and degradation, also those a higher state hides.
    pub reasons: Vec<String>,
}

/// The state for `c` and every reason behind it (pure; see [`LED_TABLE`] for precedence).
pub fn evaluate(c: &Conditions) -> Health {
    let mut reasons: Vec<String> = c.faults.clone();
    let mut degraded: Vec<String> = c
        .unreachable
        .iter()
        .map(|d| format!("destination {d} unreachable"))
        .collect();
    degraded.extend(c.failed.iter().cloned());
    degraded.extend(c.disk_low.clone());
    if c.gpu_fallback {
        degraded.push("GPU expected but not available: scoring on the CPU".into());
    }
    let state = if c.identify {
        State::Identify
    } else if !c.faults.is_empty() {
        State::Fault
    } else if !c.booted {
        State::Booting
    } else if !degraded.is_empty() {
        State::Degraded
    } else if c.scoring {
        State::Scoring
    } else if c.receiving {
        State::Receiving
    } else {
        State::Ready
    };
    reasons.extend(degraded);
    Health { state, reasons }
}

/// Upper bounds of the stage latency histograms, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_s += secs;
    }
}

/// Reachability and counters of one destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestStatus {
    pub attempts: u64,
    pub failures: u64,
    pub reachable: Option<bool>,
    pub last_ok_ms: Option<u64>,
    /// First failure since the last success.
    pub failing_since_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_check_ms: Option<u64>,
}

impl DestStatus {
    fn seen(&mut self, ok: bool, error: Option<String>) {
        let now = now_ms();
        self.last_check_ms = Some(now);
        self.reachable = Some(ok);
        if ok {
            self.last_ok_ms = Some(now);
            self.failing_since_ms = None;
            self.last_error = None;
        } else {
            self.failing_since_ms.get_or_insert(now);
            self.last_error = error;
        }
    }
}

/// What the LED shows now.
#[derive(Debug, Clone, Serialize)]
pub struct LedShown {
    pub state: State,
    pub pattern: String,
    pub colour: &'static str,
    pub device: String,
    pub error: Option<String>,
}

/// Observations shared by every stage; cheap to update from any thread.
pub struct Monitor {
    started: Instant,
    pub started_ms: u64,
    pub instances: AtomicU64,
    pub bytes: AtomicU64,
    pub associations: AtomicU64,
    last_instance_ms: AtomicU64,
    /// When the current scoring run started; 0 when none runs.
    scoring_since_ms: AtomicU64,
    /// Last sign of life of the scoring thread.
    scoring_heartbeat_ms: AtomicU64,
    pub receiver_alive: AtomicBool,
    /// Connections before their association (TLS handshake, A-ASSOCIATE-RQ).
    pub pending: Arc<AtomicU64>,
    /// What the receive path refused or ended, by (family, reason): `violations` (protocol
    /// or limit broken: A-ABORT), `connections` (not let in or not associated), `instances`
    /// (a C-STORE answered with an error status).
    receive_events: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub db_open: AtomicBool,
    pub listener_bound: AtomicBool,
    model: Mutex<Option<ModelInfo>>,
    faults: Mutex<BTreeMap<&'static str, String>>,
    identify_until_ms: AtomicU64,
    stages: Mutex<BTreeMap<String, Histogram>>,
    destinations: Mutex<BTreeMap<String, DestStatus>>,
    /// Failed series as the health loop last read them from the queue.
    failed: Mutex<Vec<String>>,
    health: Mutex<Health>,
    led: Mutex<Option<LedShown>>,
    sim: Mutex<Option<SimLedHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Monitor {
    fn default() -> Self {
        let now = now_ms();
        Monitor {
            started: Instant::now(),
            started_ms: now,
            instances: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            associations: AtomicU64::new(0),
            last_instance_ms: AtomicU64::new(0),
            scoring_since_ms: AtomicU64::new(0),
            scoring_heartbeat_ms: AtomicU64::new(now),
            receiver_alive: AtomicBool::new(false),
            pending: Arc::new(AtomicU64::new(0)),
            receive_events: Mutex::new(BTreeMap::new()),
            db_open: AtomicBool::new(false),
            listener_bound: AtomicBool::new(false),
            model: Mutex::new(None),
            faults: Mutex::new(BTreeMap::new()),
            identify_until_ms: AtomicU64::new(0),
            stages: Mutex::new(BTreeMap::new()),
            destinations: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(Vec::new()),
            health: Mutex::new(Health {
                state: State::Booting,
                reasons: Vec::new(),
            }),
            led: Mutex::new(None),
            sim: Mutex::new(None),
        }
    }
}

/// How long after the last instance the box still counts as receiving.
const RECEIVING_LINGER_MS: u64 = 3000;
/// The scoring thread must show life this often when it is not inside a scoring run...
const SCORING_HEARTBEAT_MS: u64 = 30_000;
/// ...and one scoring run may take this long before the pipeline counts as stuck: longer than
/// the scoring worker's own time limit (`pipeline.score_timeout_s`, at most
/// [`crate::config::MAX_SCORE_TIMEOUT_S`]), which stops a hung study first.
const MAX_SCORING_MS: u64 = 40 * 60_000;

impl Monitor {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    // --- receive
    pub fn association_started(&self) {
        self.associations.fetch_add(1, Ordering::Relaxed);
    }
    pub fn association_ended(&self) {
        let _ = self
            .associations
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
    /// Counts one refusal or violation (see the `receive_events` field).
    pub fn receive_event(&self, family: &'static str, reason: &'static str) {
        *lock(&self.receive_events)
            .entry((family, reason))
            .or_insert(0) += 1;
    }
    pub fn receive_events(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        lock(&self.receive_events).clone()
    }
    pub fn bytes_received(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn instance_stored(&self) {
        self.instances.fetch_add(1, Ordering::Relaxed);
        self.last_instance_ms.store(now_ms(), Ordering::Relaxed);
    }

    // --- scoring
    pub fn scoring_alive(&self) {
        self.scoring_heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn scoring_started(&self) {
        self.scoring_since_ms.store(now_ms(), Ordering::Relaxed);
        self.scoring_alive();
    }
    pub fn scoring_ended(&self) {
        self.scoring_since_ms.store(0, Ordering::Relaxed);
        self.scoring_alive();
    }
    pub fn stage_latency(&self, stage: &str, secs: f64) {
        lock(&self.stages)
            .entry(stage.to_string())
            .or_default()
            .observe(secs);
    }
    pub fn stages(&self) -> BTreeMap<String, Histogram> {
        lock(&self.stages).clone()
    }
    pub fn model_loaded(&self, m: ModelInfo) {
        *lock(&self.model) = Some(m);
        self.clear_fault("model");
    }
    pub fn model(&self) -> Option<ModelInfo> {
        lock(&self.model).clone()
    }

    // --- faults
    pub fn fault(&self, key: &'static str, reason: String) {
        lock(&self.faults).insert(key, reason);
    }
    pub fn clear_fault(&self, key: &'static str) {
        lock(&self.faults).remove(key);
    }
    pub fn faults(&self) -> Vec<String> {
        lock(&self.faults).values().cloned().collect()
    }

    // --- forwarding
    /// One delivery attempt; `reached`: the PACS answered (a permanent refusal answers too).
    pub fn forward_attempt(&self, dest: &str, ok: bool, reached: bool, error: Option<String>) {
        let mut d = lock(&self.destinations);
        let s = d.entry(dest.to_string()).or_default();
        s.attempts += 1;
        if !ok {
            s.failures += 1;
        }
        s.seen(reached, error);
    }
    /// A C-ECHO probe's answer.
    pub fn probe(&self, dest: &str, ok: bool, error: Option<String>) {
        lock(&self.destinations)
            .entry(dest.to_string())
            .or_default()
            .seen(ok, error);
    }
    pub fn destinations(&self) -> BTreeMap<String, DestStatus> {
        lock(&self.destinations).clone()
    }

    // --- failed series
    /// The failed series (hash and why), as read from the queue.
    pub fn set_failed(&self, failed: Vec<String>) {
        *lock(&self.failed) = failed;
    }

    // --- identify
    pub fn identify_for(&self, d: Duration) -> u64 {
        let until = now_ms() + d.as_millis() as u64;
        self.identify_until_ms.store(until, Ordering::Relaxed);
        until
    }

    // --- results of the health loop
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }
    pub fn led(&self) -> Option<LedShown> {
        lock(&self.led).clone()
    }
    pub fn sim_history(&self) -> Option<Vec<cacd_hal::LedEvent>> {
        lock(&self.sim).as_ref().map(|h| h.events())
    }
    pub fn booted(&self) -> bool {
        self.db_open.load(Ordering::Relaxed)
            && self.listener_bound.load(Ordering::Relaxed)
            && self.model().is_some()
    }

    /// Receiving and scoring stages both alive (the watchdog condition).
    pub fn pipeline_alive(&self) -> bool {
        let now = now_ms();
        let since = self.scoring_since_ms.load(Ordering::Relaxed);
        let beat = self.scoring_heartbeat_ms.load(Ordering::Relaxed);
        let scoring_ok = if since != 0 {
            now.saturating_sub(since) < MAX_SCORING_MS
        } else {
            now.saturating_sub(beat) < SCORING_HEARTBEAT_MS
        };
        self.receiver_alive.load(Ordering::Relaxed) && scoring_ok
    }

    /// Everything [`evaluate`] needs, from these observations and the config's thresholds.
    pub fn conditions(&self, cfg: &Config) -> Conditions {
        let now = now_ms();
        let threshold = (cfg.health.pacs_unreachable_s * 1000.0) as u64;
        let unreachable = lock(&self.destinations)
            .iter()
            .filter(|(_, s)| {
                s.failing_since_ms
                    .is_some_and(|t| now.saturating_sub(t) >= threshold)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let last = self.last_instance_ms.load(Ordering::Relaxed);
        Conditions {
            faults: self.faults(),
            booted: self.booted(),
            unreachable,
            failed: lock(&self.failed).clone(),
            disk_low: disk_low(cfg),
            gpu_fallback: cfg.health.expect_gpu && !cacd_hal::sensors::gpu_present(),
            receiving: self.associations.load(Ordering::Relaxed) > 0
                || (last != 0 && now.saturating_sub(last) < RECEIVING_LINGER_MS),
            scoring: self.scoring_since_ms.load(Ordering::Relaxed) != 0,
            identify: now < self.identify_until_ms.load(Ordering::Relaxed),
        }
    }
}

/// Why the data disk is too full, if it is: under the receive watermark (the box refuses
/// studies) or under `health.disk_warn_free_percent` (it soon will).
pub fn disk_low(cfg: &Config) -> Option<String> {
    let d = match cacd_hal::sensors::disk_space(&cfg.data_dir) {
        Ok(d) => d,
        Err(e) => return Some(format!("disk: {e}")),
    };
    let pct = d.free_percent();
    let r = &cfg.receive;
    if d.free_bytes < r.min_free_bytes || pct < r.min_free_percent {
        Some(format!(
            "disk: {} MB free ({pct:.1} %) is under the receive watermark; new studies are refused",
            d.free_bytes / 1_000_000
        ))
    } else if pct < cfg.health.disk_warn_free_percent {
        Some(format!(
            "disk: {pct:.1} % free is under health.disk_warn_free_percent ({})",
            cfg.health.disk_warn_free_percent
        ))
    } else {
        None
    }
}

/// The LED shared by the health loop and `serve` (which shows a fault itself before exiting).
pub type SharedLed = Arc<Mutex<Box<dyn StatusLed>>>;

/// Opens the configured LED. A simulated LED also hands back its reader.
pub fn open_led(cfg: &LedConfig) -> Result<(Box<dyn StatusLed>, Option<SimLedHandle>), LedError> {
    match cfg.kind {
        LedKind::Sim => {
            let led = SimLed::new(cfg.record.clone());
            let h = led.handle();
            Ok((Box::new(led), Some(h)))
        }
        LedKind::Sysfs => {
            let led = cacd_hal::SysfsLed::open(&cacd_hal::SysfsLedConfig {
                root: cfg
                    .sysfs_root
                    .clone()
                    .unwrap_or_else(|| cacd_hal::sysfs::SYSFS_LEDS.into()),
                name: cfg.name.clone().unwrap_or_default(),
                red: cfg.red.clone(),
            })?;
            Ok((Box::new(led), None))
        }
        LedKind::Gpio => {
            let led = cacd_hal::GpioLed::open(&cacd_hal::GpioLedConfig {
                chip: cfg.chip.clone().unwrap_or_default(),
                line: cfg.line.unwrap_or(0),
                red_line: cfg.red_line,
                active_low: cfg.active_low,
            })?;
            Ok((Box::new(led), None))
        }
    }
}

/// Opens the configured LED, falling back to a simulated one (with the error kept for the
/// status page) so that a missing LED never stops the daemon.
pub fn led_or_sim(cfg: &LedConfig) -> (SharedLed, Option<SimLedHandle>, Option<String>) {
    match open_led(cfg) {
        Ok((led, h)) => (Arc::new(Mutex::new(led)), h, None),
        Err(e) => {
            warn!(error = %e, "status LED unavailable; using a simulated one");
            let led = SimLed::new(None);
            let h = led.handle();
            (
                Arc::new(Mutex::new(Box::new(led) as Box<dyn StatusLed>)),
                Some(h),
                Some(e.to_string()),
            )
        }
    }
}

/// Shows `state` on the LED and records what is shown.
pub fn show(monitor: &Monitor, led: &SharedLed, state: State, led_error: Option<String>) {
    let row = state.led();
    let mut l = lock(led);
    let error = match l.set(row.pattern, row.colour) {
        Ok(()) => led_error,
        Err(e) => {
            warn!(error = %e, state = state.name(), "status LED write failed");
            Some(e.to_string())
        }
    };
    *lock(&monitor.led) = Some(LedShown {
        state,
        pattern: row.pattern.describe(),
        colour: row.colour.name(),
        device: l.describe(),
        error,
    });
}

/// The `[led]` section of a config file that failed to load (bad values, unknown keys
/// elsewhere), so that the fault can still be shown on the board's LED; the default LED when
/// even that cannot be read.
pub fn led_config_of_broken_file(path: &std::path::Path) -> LedConfig {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if let Ok(c) = Config::parse(&text) {
        return c.led;
    }
    toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("led").cloned())
        .and_then(|v| v.try_into::<LedConfig>().ok())
        .unwrap_or_default()
}

/// Shows a fault on the LED right away (used by `serve` before it exits on a fatal error).
pub fn show_fault(led: &SharedLed) {
    let row = State::Fault.led();
    let _ = lock(led).set(row.pattern, row.colour);
}

/// Tells systemd (when NOTIFY_SOCKET is set; otherwise these are no-ops).
pub mod systemd {
    use sd_notify::NotifyState;

    pub fn ready(status: &str) {
        let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
    }
    pub fn status(status: &str) {
        let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
    }
    pub fn watchdog() {
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
    }
    pub fn stopping() {
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    }
    /// The watchdog interval systemd expects pings within, when it wants any.
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let mut usec = 0u64;
        sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| std::time::Duration::from_micros(usec))
    }
}

/// The one-line STATUS= text.
pub fn status_line(h: &Health) -> String {
    match h.reasons.first() {
        Some(r) if h.reasons.len() > 1 => {
            format!("{}: {r} (+{} more)", h.state.name(), h.reasons.len() - 1)
        }
        Some(r) => format!("{}: {r}", h.state.name()),
        None => h.state.name().to_string(),
    }
}

/// "series <hash> failed: <why>" for each failed series (identifiers hashed, also in the why).
pub fn failed_reasons(queue: &Queue) -> Vec<String> {
    match queue.failed() {
        Ok(v) => v
            .iter()
            .map(|r| {
                format!(
                    "series {} failed: {}",
                    crate::store::uid_hash(&r.series_uid),
                    crate::uid::redact(r.reason.as_deref().unwrap_or("no reason recorded"))
                )
            })
            .collect(),
        Err(e) => vec![format!("queue: {e}")],
    }
}

/// The health loop: once a second until shutdown.
pub async fn run_loop(
    cfg: Arc<Config>,
    monitor: Arc<Monitor>,
    queue: Queue,
    led: SharedLed,
    sim: Option<SimLedHandle>,
    led_error: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    *lock(&monitor.sim) = sim;
    let tick = Duration::from_millis(250).max(secs(cfg.health.interval_s));
    let probe_every = secs(cfg.health.probe_interval_s);
    let watchdog = systemd::watchdog_interval();
    let mut last_state: Option<State> = None;
    let mut last_line = String::new();
    let mut ready_sent = false;
    let mut last_probe: Option<Instant> = None;
    let scu = ScuOptions::from_config(&cfg);
    loop {
        let q = queue.clone();
        if let Ok(failed) = tokio::task::spawn_blocking(move || failed_reasons(&q)).await {
            monitor.set_failed(failed);
        }
        let h = evaluate(&monitor.conditions(&cfg));
        if last_state != Some(h.state) {
            show(&monitor, &led, h.state, led_error.clone());
            info!(stage = "health", state = h.state.name(), reasons = ?h.reasons, "health state");
            last_state = Some(h.state);
        }
        let line = status_line(&h);
        if !ready_sent && monitor.booted() {
            systemd::ready(&line);
            ready_sent = true;
            info!(
                stage = "health",
                "ready: database open, models loaded, listener bound"
            );
        } else if line != last_line {
            systemd::status(&line);
        }
        last_line = line;
        *lock(&monitor.health) = h;
        if watchdog.is_some() && monitor.pipeline_alive() {
            systemd::watchdog();
        }
        if !cfg.destinations.is_empty() && last_probe.is_none_or(|t| t.elapsed() >= probe_every) {
            last_probe = Some(Instant::now());
            for d in cfg.destinations.clone() {
                tokio::spawn(probe(scu.clone(), d, monitor.clone()));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|v| *v) => {
                systemd::stopping();
                // A clean stop turns the LED off; after a crash the last pattern stays.
                let _ = lock(&led).set(Pattern::Off, Colour::Green);
                return;
            }
        }
    }
}

async fn probe(scu: ScuOptions, dest: Destination, monitor: Arc<Monitor>) {
    let r = forward::echo(&scu, &dest).await;
    monitor.probe(&dest.id(), r.is_ok(), r.err().map(|e| e.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booted() -> Conditions {
        Conditions {
            booted: true,
            ..Conditions::default()
        }
    }

    #[test]
    fn each_condition_gives_its_state() {
        assert_eq!(evaluate(&Conditions::default()).state, State::Booting);
        assert_eq!(evaluate(&booted()).state, State::Ready);
        let c = Conditions {
            receiving: true,
            ..booted()
        };
        assert_eq!(evaluate(&c).state, State::Receiving);
        let c = Conditions {
            scoring: true,
            receiving: true,
            ..booted()
        };
        assert_eq!(evaluate(&c).state, State::Scoring);
        for c in [
            Conditions {
                unreachable: vec!["PACS@h:104".into()],
                scoring: true,
                ..booted()
            },
            Conditions {
                disk_low: Some("disk: full".into()),
                ..booted()
            },
            Conditions {
                gpu_fallback: true,
                ..booted()
            },
            Conditions {
                failed: vec!["series 0123456789ab failed: RECV: refused".into()],
                ..booted()
            },
        ] {
            let h = evaluate(&c);
            assert_eq!(h.state, State::Degraded, "{c:?}");
            assert_eq!(h.reasons.len(), 1);
        }
        // A fault beats booting and degraded; identify beats a fault.
        let c = Conditions {
            faults: vec!["model: sha256 mismatch".into()],
            gpu_fallback: true,
            ..Conditions::default()
        };
        let h = evaluate(&c);
        assert_eq!(h.state, State::Fault);
        assert_eq!(h.reasons.len(), 2);
        let c = Conditions {
            identify: true,
            ..c
        };
        assert_eq!(evaluate(&c).state, State::Identify);
        assert_eq!(
            status_line(&evaluate(&c)),
            "identify: model: sha256 mismatch (+1 more)"
        );
    }

    #[test]
    fn every_state_has_one_distinct_led_pattern() {
        let states = [
            State::Booting,
            State::Ready,
            State::Receiving,
            State::Scoring,
            State::Degraded,
            State::Fault,
            State::Identify,
        ];
        for s in states {
            assert_eq!(LED_TABLE.iter().filter(|r| r.state == s).count(), 1);
            assert_eq!(s.led().state, s);
        }
        // On a single-colour LED every state must still look different.
        let mut seen = std::collections::HashSet::new();
        for r in LED_TABLE.iter() {
            assert!(seen.insert(r.pattern), "{:?} repeats a pattern", r.state);
        }
    }

    #[test]
    fn the_readme_holds_the_led_table() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&led_table_markdown()),
            "README.md \"Status LED\" differs from health::LED_TABLE; paste:\n{}",
            led_table_markdown()
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.07);
        h.observe(3.0);
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets[0], 0); // 0.01
        assert_eq!(h.buckets[2], 1); // 0.1
        assert_eq!(h.buckets[7], 2); // 5.0
        assert!((h.sum_s - 3.07).abs() < 1e-9);
    }

    #[test]
    fn destination_reachability_follows_answers() {
        let m = Monitor::default();
        m.probe("A", false, Some("refused".into()));
        m.forward_attempt("A", false, false, Some("refused".into()));
        let d = m.destinations()["A"].clone();
        assert_eq!((d.attempts, d.failures, d.reachable), (1, 1, Some(false)));
        assert!(d.failing_since_ms.is_some());
        m.forward_attempt("A", true, true, None);
        let d = m.destinations()["A"].clone();
        assert_eq!(d.reachable, Some(true));
        assert!(d.failing_since_ms.is_none());
    }
}
