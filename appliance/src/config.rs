//! The `serve` configuration: one TOML file (see deploy/cacd.example.toml), every key optional,
//! defaults that run with no file at all (CONTRACT.md), and validation that reports every
//! problem with its key (`cacd check-config`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Upper bound of `pipeline.score_timeout_s`: the health watchdog declares the pipeline hung at
/// 40 minutes of one scoring run, so the worker's own limit must strike first.
pub const MAX_SCORE_TIMEOUT_S: f64 = 2100.0;

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    /// One or more keys hold values that cannot work; each entry is `key: problem`.
    #[error("config {path}: {}", .problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

/// The whole `serve` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's AE title; the called AE of every association must match it.
    pub ae_title: String,
    /// DICOM listen address.
    pub listen: String,
    /// Status port address (served by the status module).
    pub status: String,
    /// Where studies, the queue and results live.
    pub data_dir: PathBuf,
    /// A series is complete after this many seconds without a new instance.
    pub quiet_period_s: f64,
    /// Accept any calling AE from any address (off by default: only `[[peer]]`s may send).
    pub accept_any: bool,
    pub receive: ReceiveConfig,
    pub tls: TlsConfig,
    pub forward: ForwardConfig,
    pub housekeeping: HousekeepingConfig,
    pub pipeline: PipelineSection,
    pub led: LedConfig,
    pub health: HealthConfig,
    pub reports: ReportsConfig,
    #[serde(rename = "peer")]
    pub peers: Vec<Peer>,
    #[serde(rename = "destination")]
    pub destinations: Vec<Destination>,
}

/// Storage SCP limits. Every length a peer declares is checked against one of these before
/// any byte of it is buffered; [`ReceiveConfig::memory_bound`] states what they add up to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiveConfig {
    /// Concurrent associations; one more is refused with A-ASSOCIATE-RJ (transient). A
    /// connection takes a slot only once its A-ASSOCIATE-RQ is complete and accepted.
    pub max_associations: usize,
    /// Largest PDU we accept, bytes (announced in the A-ASSOCIATE-AC).
    pub max_pdu: u32,
    /// Time allowed for the rest of a message once it has started, seconds.
    pub read_timeout_s: f64,
    /// Time an association may sit idle between messages, seconds.
    pub idle_timeout_s: f64,
    /// Time a new connection gets to complete its A-ASSOCIATE-RQ (TLS handshake aside),
    /// seconds.
    pub request_timeout_s: f64,
    /// Connections still before their association (TLS handshake, A-ASSOCIATE-RQ) at once,
    /// in total...
    pub max_pending: usize,
    /// ...and from one source address; more are closed at once.
    pub max_pending_per_source: usize,
    /// Largest A-ASSOCIATE-RQ PDU, bytes.
    pub max_associate_rq_bytes: u32,
    /// Largest DIMSE command set (all its fragments), bytes.
    pub max_command_bytes: u32,
    /// Largest data set of one instance, bytes (streamed to disk, not held in memory).
    pub max_instance_bytes: u64,
    /// Refuse instances (status A700) when free space falls under this many bytes...
    pub min_free_bytes: u64,
    /// ...or under this percentage of the file system.
    pub min_free_percent: f64,
}

/// DICOM over TLS for the Storage SCP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Optional PEM CA bundle: when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
    pub handshake_timeout_s: f64,
}

/// C-STORE SCU behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Calling AE title for outgoing associations (default: `ae_title`).
    pub calling_ae: Option<String>,
    pub backoff_initial_s: f64,
    pub backoff_max_s: f64,
    pub connect_timeout_s: f64,
    /// Time allowed for one DIMSE response.
    pub dimse_timeout_s: f64,
}

/// Retention and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HousekeepingConfig {
    /// Delivered studies (received instances and results) are removed after this many days.
    pub retention_days: f64,
    pub interval_s: f64,
    /// Time in-flight work gets after SIGTERM before the process exits anyway.
    pub shutdown_budget_s: f64,
}

/// The scoring pipeline's settings (mapped onto `pipeline::PipelineConfig`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// `tract`, `onnxruntime` or `tensorrt` (TensorRT engine caches go under
    /// `<data_dir>/trt-cache`).
    pub engine: Option<String>,
    /// `int8` (default) or `fp32`: which of the manifest's files runs.
    pub precision: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub ort_dylib: Option<PathBuf>,
    pub threads: Option<usize>,
    /// `tensorrt`: the CUDA device (default 0).
    pub gpu_device: Option<i32>,
    /// Preprocess on the GPU when the build has feature `cuda` and a device is usable
    /// (default true; the CPU path gives the same masks).
    pub gpu_preprocess: Option<bool>,
    /// `tensorrt`: let TensorRT run float layers at half precision (default true).
    pub fp16: Option<bool>,
    /// A series that crashed or hung the scoring worker this many times is failed
    /// (default 3): the guard against a study that crashes the scorer every time. Restarts
    /// of the daemon itself (power cuts) are not counted.
    pub max_scoring_attempts: Option<u32>,
    /// Score in a child process (`cacd score-worker`; default true), so that a crash, a hang
    /// or running out of memory costs one attempt of one study, never the daemon.
    pub isolate: Option<bool>,
    /// Longest one study may take in the worker before it is stopped and the attempt counted
    /// as a crash, seconds (default 1800). Also bounds the models' load at start.
    pub score_timeout_s: Option<f64>,
}

/// Which status LED drives the box's front panel (see README "Status LED").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LedKind {
    /// No hardware: the pattern is recorded (and shown on the status page).
    #[default]
    Sim,
    /// Kernel LED class, /sys/class/leds/<name>.
    Sysfs,
    /// GPIO character device line(s).
    Gpio,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LedConfig {
    pub kind: LedKind,
    /// sysfs: the (green or only) LED's name under /sys/class/leds.
    pub name: Option<String>,
    /// sysfs: the red half of a bi-colour LED.
    pub red: Option<String>,
    /// sysfs: another root than /sys/class/leds (tests).
    pub sysfs_root: Option<PathBuf>,
    /// gpio: the chip, e.g. /dev/gpiochip0.
    pub chip: Option<PathBuf>,
    /// gpio: the line offset of the (green or only) LED.
    pub line: Option<u32>,
    /// gpio: the line offset of the red half.
    pub red_line: Option<u32>,
    /// gpio: the LED lights when the line is low.
    pub active_low: bool,
    /// sim: also write every change to this file.
    pub record: Option<PathBuf>,
}

/// Thresholds of the health states and the status port's service token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often health is evaluated (LED, systemd STATUS= and WATCHDOG=1), seconds.
    pub interval_s: f64,
    /// A destination failing for this long makes the box degraded.
    pub pacs_unreachable_s: f64,
    /// Destinations are checked with C-ECHO this often (and by every delivery).
    pub probe_interval_s: f64,
    /// Degraded below this much free disk (percent), before receiving stops at the
    /// receive watermark.
    pub disk_warn_free_percent: f64,
    /// The box is meant to have a GPU: its absence (scoring on the CPU) is degraded.
    pub expect_gpu: bool,
    /// How long `POST /api/identify` blinks the LED, seconds.
    pub identify_s: f64,
    /// Bearer token for `POST /api/identify`; empty: identify is disabled.
    pub service_token: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_s: 1.0,
            pacs_unreachable_s: 300.0,
            probe_interval_s: 60.0,
            disk_warn_free_percent: 10.0,
            expect_gpu: false,
            identify_s: 30.0,
            service_token: String::new(),
        }
    }
}

/// Reports pushed to central IT over HTTPS (off while `url` is empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// https://… endpoint that receives every report as a JSON POST.
    pub url: String,
    /// PEM CA bundle that signed the receiver's certificate (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// Bearer token sent with every report.
    pub token: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Heartbeat period, seconds.
    pub heartbeat_s: f64,
    pub backoff_initial_s: f64,
    pub backoff_max_s: f64,
    pub timeout_s: f64,
    /// Include patient name, ID, birth date, accession number and the UIDs in result
    /// reports. Off: reports carry hashed identifiers only.
    pub include_patient_data: bool,
    /// Reports kept at most while the receiver is away; the oldest go first beyond this.
    pub max_pending: u64,
    /// This box's name in reports (default: the host name).
    pub box_id: Option<String>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            url: String::new(),
            ca: None,
            token: None,
            client_cert: None,
            client_key: None,
            heartbeat_s: 3600.0,
            backoff_initial_s: 5.0,
            backoff_max_s: 600.0,
            timeout_s: 15.0,
            include_patient_data: false,
            max_pending: 100_000,
            box_id: None,
        }
    }
}

/// A sender allowed to store to us: calling AE title and source address (IP or CIDR).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub ae: String,
    pub host: String,
}

/// A PACS that gets every result.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub ae: String,
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Stable name used as the per-destination key in the queue.
    pub fn id(&self) -> String {
        format!("{}@{}:{}", self.ae, self.host, self.port)
    }

    /// Parses `AE@HOST:PORT` (the `--forward` flag).
    pub fn parse(s: &str) -> Result<Destination, String> {
        let (ae, rest) = s
            .split_once('@')
            .ok_or_else(|| format!("`{s}`: expected AE@HOST:PORT"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: expected AE@HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}`: port `{port}` is not a number 1-65535"))?;
        let d = Destination {
            ae: ae.to_string(),
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        };
        let mut problems = Vec::new();
        check_destination("--forward", &d, &mut problems);
        match problems.is_empty() {
            true => Ok(d),
            false => Err(problems.join("; ")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ae_title: "CACD".into(),
            listen: "0.0.0.0:11112".into(),
            status: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./var/cacd"),
            quiet_period_s: 30.0,
            accept_any: false,
            receive: ReceiveConfig::default(),
            tls: TlsConfig::default(),
            forward: ForwardConfig::default(),
            housekeeping: HousekeepingConfig::default(),
            pipeline: PipelineSection::default(),
            led: LedConfig::default(),
            health: HealthConfig::default(),
            reports: ReportsConfig::default(),
            peers: Vec::new(),
            destinations: Vec::new(),
        }
    }
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        ReceiveConfig {
            max_associations: 8,
            max_pdu: 65536,
            read_timeout_s: 30.0,
            idle_timeout_s: 120.0,
            request_timeout_s: 5.0,
            max_pending: 64,
            max_pending_per_source: 16,
            max_associate_rq_bytes: 65536,
            max_command_bytes: 16384,
            max_instance_bytes: 2 << 30,
            min_free_bytes: 1 << 30,
            min_free_percent: 5.0,
        }
    }
}

/// A P-DATA-TF may run this far past the `max_pdu` we announced: some peers count the PDV
/// headers (or the PDU header) against it. Still checked before anything is read.
pub const PDU_SLACK: u32 = 4096;
/// Dataset bytes of one instance are written to disk once this many are buffered.
pub const FLUSH_BYTES: usize = 1 << 20;
/// The write buffer of an instance's temp file (`store::Incoming`).
pub const FILE_BUFFER_BYTES: usize = 256 * 1024;
/// What a TLS session holds (rustls' record buffers, both directions), allowed per connection.
pub const TLS_BUFFER_BYTES: usize = 64 * 1024;
/// The read buffer in front of each connection's PDU reader.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// The most the receive path can hold in memory for peers' bytes, by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// One established association: its PDU buffer, command set, data-set buffer and file
    /// buffer (and TLS).
    pub per_association: usize,
    /// One connection before its association: the A-ASSOCIATE-RQ (and TLS).
    pub per_pending: usize,
    /// `max_associations` × per association + `max_pending` × per pending.
    pub total: usize,
}

impl ReceiveConfig {
    /// The longest P-DATA-TF accepted.
    pub fn max_p_data(&self) -> u32 {
        self.max_pdu.saturating_add(PDU_SLACK)
    }

    /// What [`MemoryBound`] says the limits add up to.
    pub fn memory_bound(&self) -> MemoryBound {
        let pdu = self.max_p_data() as usize;
        // The read buffer and the PDU being read, the command set, the data-set buffer
        // (flushed at FLUSH_BYTES, so at most one PDU past it), the temp file's write buffer,
        // TLS.
        let per_association = READ_BUFFER_BYTES
            + pdu
            + self.max_command_bytes as usize
            + (FLUSH_BYTES + pdu)
            + FILE_BUFFER_BYTES
            + TLS_BUFFER_BYTES;
        let per_pending =
            READ_BUFFER_BYTES + self.max_associate_rq_bytes as usize + TLS_BUFFER_BYTES;
        MemoryBound {
            per_association,
            per_pending,
            total: self.max_associations.saturating_mul(per_association)
                + self.max_pending.saturating_mul(per_pending),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            cert: None,
            key: None,
            client_ca: None,
            handshake_timeout_s: 10.0,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            calling_ae: None,
            backoff_initial_s: 10.0,
            backoff_max_s: 600.0,
            connect_timeout_s: 10.0,
            dimse_timeout_s: 60.0,
        }
    }
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        HousekeepingConfig {
            retention_days: 30.0,
            interval_s: 300.0,
            shutdown_budget_s: 8.0,
        }
    }
}

/// Smallest PDU the standard allows an acceptor to announce that still makes sense, and the
/// largest dicom-ul reads.
const MIN_PDU: u32 = 4096;
const MAX_PDU: u32 = 131_072;
/// An A-ASSOCIATE-RQ with one presentation context fits in 1 KiB; 128 contexts of long UIDs
/// in 40 KiB.
const MIN_ASSOCIATE_RQ: u32 = 1024;
const MAX_ASSOCIATE_RQ: u32 = 1 << 20;
/// A C-STORE-RQ command set is a few hundred bytes.
const MIN_COMMAND: u32 = 512;
const MAX_COMMAND: u32 = 1 << 20;
const MIN_INSTANCE: u64 = 1 << 20;

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    /// Parses TOML text without validating values.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// Every problem with this configuration, each as `key: what is wrong`; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = check_ae("ae_title", &self.ae_title) {
            p.push(e);
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "listen: `{}` is not an IP:PORT address",
                self.listen
            ));
        }
        if self.status.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "status: `{}` is not an IP:PORT address",
                self.status
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".into());
        }
        positive(&mut p, "quiet_period_s", self.quiet_period_s);
        let r = &self.receive;
        if r.max_associations == 0 {
            p.push("receive.max_associations: must be at least 1".into());
        }
        if !(MIN_PDU..=MAX_PDU).contains(&r.max_pdu) {
            p.push(format!(
                "receive.max_pdu: {} is outside {MIN_PDU}..={MAX_PDU}",
                r.max_pdu
            ));
        }
        positive(&mut p, "receive.read_timeout_s", r.read_timeout_s);
        positive(&mut p, "receive.idle_timeout_s", r.idle_timeout_s);
        positive(&mut p, "receive.request_timeout_s", r.request_timeout_s);
        if r.max_pending == 0 {
            p.push("receive.max_pending: must be at least 1".into());
        }
        if r.max_pending_per_source == 0 || r.max_pending_per_source > r.max_pending {
            p.push(format!(
                "receive.max_pending_per_source: {} is outside 1..=receive.max_pending ({})",
                r.max_pending_per_source, r.max_pending
            ));
        }
        if !(MIN_ASSOCIATE_RQ..=MAX_ASSOCIATE_RQ).contains(&r.max_associate_rq_bytes) {
            p.push(format!(
                "receive.max_associate_rq_bytes: {} is outside {MIN_ASSOCIATE_RQ}..={MAX_ASSOCIATE_RQ}",
                r.max_associate_rq_bytes
            ));
        }
        if !(MIN_COMMAND..=MAX_COMMAND).contains(&r.max_command_bytes) {
            p.push(format!(
                "receive.max_command_bytes: {} is outside {MIN_COMMAND}..={MAX_COMMAND}",
                r.max_command_bytes
            ));
        }
        if r.max_instance_bytes < MIN_INSTANCE {
            p.push(format!(
                "receive.max_instance_bytes: {} is under {MIN_INSTANCE}",
                r.max_instance_bytes
            ));
        }
        if !(0.0..100.0).contains(&r.min_free_percent) {
            p.push(format!(
                "receive.min_free_percent: {} is outside 0..100",
                r.min_free_percent
            ));
        }
        if self.tls.enabled {
            if self.tls.cert.is_none() {
                p.push("tls.cert: required when tls.enabled = true".into());
            }
            if self.tls.key.is_none() {
                p.push("tls.key: required when tls.enabled = true".into());
            }
            for (key, path) in [
                ("tls.cert", &self.tls.cert),
                ("tls.key", &self.tls.key),
                ("tls.client_ca", &self.tls.client_ca),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        p.push(format!("{key}: {} is not a readable file", path.display()));
                    }
                }
            }
        }
        if self.tls.handshake_timeout_s < 0.0 || !self.tls.handshake_timeout_s.is_finite() {
            p.push("tls.handshake_timeout_s: must be a positive number".into());
        }
        let f = &self.forward;
        if let Some(ae) = &f.calling_ae {
            if let Err(e) = check_ae("forward.calling_ae", ae) {
                p.push(e);
            }
        }
        positive(&mut p, "forward.backoff_initial_s", f.backoff_initial_s);
        positive(&mut p, "forward.backoff_max_s", f.backoff_max_s);
        if f.backoff_max_s < f.backoff_initial_s {
            p.push("forward.backoff_max_s: must not be below forward.backoff_initial_s".into());
        }
        positive(&mut p, "forward.connect_timeout_s", f.connect_timeout_s);
        positive(&mut p, "forward.dimse_timeout_s", f.dimse_timeout_s);
        let h = &self.housekeeping;
        positive(&mut p, "housekeeping.retention_days", h.retention_days);
        positive(&mut p, "housekeeping.interval_s", h.interval_s);
        positive(
            &mut p,
            "housekeeping.shutdown_budget_s",
            h.shutdown_budget_s,
        );
        if let Some(engine) = &self.pipeline.engine {
            if parse_engine(engine).is_none() {
                p.push(format!(
                    "pipeline.engine: `{engine}` is not one of tract, onnxruntime, tensorrt"
                ));
            }
        }
        if let Some(precision) = &self.pipeline.precision {
            if cacd_models::Precision::parse(precision).is_none() {
                p.push(format!(
                    "pipeline.precision: `{precision}` is not one of int8, fp32"
                ));
            }
        }
        if self.pipeline.threads == Some(0) {
            p.push("pipeline.threads: must be at least 1".into());
        }
        if let Some(t) = self.pipeline.score_timeout_s {
            positive(&mut p, "pipeline.score_timeout_s", t);
            if t > MAX_SCORE_TIMEOUT_S {
                p.push(format!(
                    "pipeline.score_timeout_s: {t} is over {MAX_SCORE_TIMEOUT_S} (the watchdog \
                     counts a longer scoring run as a hung pipeline)"
                ));
            }
        }
        if self.pipeline.max_scoring_attempts == Some(0) {
            p.push("pipeline.max_scoring_attempts: must be at least 1".into());
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if let Err(e) = check_ae(&format!("peer[{i}].ae"), &peer.ae) {
                p.push(e);
            }
            if HostMatch::parse(&peer.host).is_none() {
                p.push(format!(
                    "peer[{i}].host: `{}` is not an IP address or CIDR block",
                    peer.host
                ));
            }
        }
        for (i, d) in self.destinations.iter().enumerate() {
            check_destination(&format!("destination[{i}]"), d, &mut p);
        }
        self.ops_problems(&mut p);
        p
    }

    /// `[led]`, `[health]` and `[reports]`.
    fn ops_problems(&self, p: &mut Vec<String>) {
        let l = &self.led;
        let only = |p: &mut Vec<String>, key: &str, set: bool, kinds: &str| {
            if set {
                p.push(format!("led.{key}: only used with led.kind = {kinds}"));
            }
        };
        match l.kind {
            LedKind::Sim => {}
            LedKind::Sysfs => {
                let root = l
                    .sysfs_root
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(cacd_hal::sysfs::SYSFS_LEDS));
                match &l.name {
                    None => p.push("led.name: required when led.kind = \"sysfs\"".into()),
                    Some(n) if !root.join(n).join("brightness").exists() => p.push(format!(
                        "led.name: no LED `{n}` under {} (no brightness file)",
                        root.display()
                    )),
                    Some(_) => {}
                }
                if let Some(n) = &l.red {
                    if !root.join(n).join("brightness").exists() {
                        p.push(format!("led.red: no LED `{n}` under {}", root.display()));
                    }
                }
            }
            LedKind::Gpio => {
                match &l.chip {
                    None => p.push("led.chip: required when led.kind = \"gpio\"".into()),
                    Some(c) if !c.exists() => {
                        p.push(format!("led.chip: {} does not exist", c.display()))
                    }
                    Some(_) => {}
                }
                if l.line.is_none() {
                    p.push("led.line: required when led.kind = \"gpio\"".into());
                }
                if l.red_line.is_some() && l.red_line == l.line {
                    p.push("led.red_line: must differ from led.line".into());
                }
            }
        }
        let sysfs = l.kind == LedKind::Sysfs;
        let gpio = l.kind == LedKind::Gpio;
        only(p, "name", l.name.is_some() && !sysfs, "\"sysfs\"");
        only(p, "red", l.red.is_some() && !sysfs, "\"sysfs\"");
        only(
            p,
            "sysfs_root",
            l.sysfs_root.is_some() && !sysfs,
            "\"sysfs\"",
        );
        only(p, "chip", l.chip.is_some() && !gpio, "\"gpio\"");
        only(p, "line", l.line.is_some() && !gpio, "\"gpio\"");
        only(p, "red_line", l.red_line.is_some() && !gpio, "\"gpio\"");
        only(p, "active_low", l.active_low && !gpio, "\"gpio\"");
        only(
            p,
            "record",
            l.record.is_some() && l.kind != LedKind::Sim,
            "\"sim\"",
        );

        let h = &self.health;
        positive(p, "health.interval_s", h.interval_s);
        positive(p, "health.pacs_unreachable_s", h.pacs_unreachable_s);
        positive(p, "health.probe_interval_s", h.probe_interval_s);
        positive(p, "health.identify_s", h.identify_s);
        if !(0.0..100.0).contains(&h.disk_warn_free_percent) {
            p.push(format!(
                "health.disk_warn_free_percent: {} is outside 0..100",
                h.disk_warn_free_percent
            ));
        }
        if !h.service_token.is_empty() && h.service_token.len() < 16 {
            p.push("health.service_token: use at least 16 characters (or leave it empty to disable identify)".into());
        }

        let r = &self.reports;
        let on = !r.url.is_empty();
        if on && !r.url.starts_with("https://") {
            p.push(format!("reports.url: `{}` must start with https://", r.url));
        }
        if on && r.url.len() <= "https://".len() {
            p.push("reports.url: no host".into());
        }
        for (key, path) in [
            ("reports.ca", &r.ca),
            ("reports.client_cert", &r.client_cert),
            ("reports.client_key", &r.client_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    p.push(format!("{key}: {} is not a readable file", path.display()));
                }
            }
        }
        if r.client_cert.is_some() != r.client_key.is_some() {
            p.push("reports.client_key: client_cert and client_key go together".into());
        }
        positive(p, "reports.heartbeat_s", r.heartbeat_s);
        positive(p, "reports.backoff_initial_s", r.backoff_initial_s);
        positive(p, "reports.backoff_max_s", r.backoff_max_s);
        if r.backoff_max_s < r.backoff_initial_s {
            p.push("reports.backoff_max_s: must not be below reports.backoff_initial_s".into());
        }
        positive(p, "reports.timeout_s", r.timeout_s);
        if r.max_pending == 0 {
            p.push("reports.max_pending: must be at least 1".into());
        }
    }

    /// Settings that run but are probably not what the operator wants, each with its key.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.accept_any && self.peers.is_empty() {
            w.push(
                "peer: no [[peer]] is configured and accept_any is false, so no sender can store"
                    .into(),
            );
        }
        w
    }

    /// This node's calling AE for outgoing associations.
    pub fn calling_ae(&self) -> &str {
        self.forward.calling_ae.as_deref().unwrap_or(&self.ae_title)
    }

    pub fn quiet_period(&self) -> Duration {
        secs(self.quiet_period_s)
    }

    /// Whether `calling_ae` connecting from `ip` is an allowed sender.
    pub fn peer_allowed(&self, calling_ae: &str, ip: IpAddr) -> bool {
        self.accept_any
            || self.peers.iter().any(|p| {
                p.ae == calling_ae && HostMatch::parse(&p.host).is_some_and(|m| m.contains(ip))
            })
    }

    /// Whether any peer may connect from `ip` (checked at accept time, before any PDU).
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.accept_any
            || self
                .peers
                .iter()
                .any(|p| HostMatch::parse(&p.host).is_some_and(|m| m.contains(ip)))
    }
}

/// `Duration` from seconds that validation has already checked to be finite and non-negative.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Maps the config's engine name onto the models crate's kind.
pub fn parse_engine(s: &str) -> Option<cacd_models::EngineKind> {
    match s {
        "tract" | "tract-cpu" => Some(cacd_models::EngineKind::Tract),
        "onnxruntime" | "ort" | "ort-cpu" => Some(cacd_models::EngineKind::OnnxRuntime),
        "tensorrt" | "ort-tensorrt" => Some(cacd_models::EngineKind::TensorRt),
        _ => None,
    }
}

fn positive(p: &mut Vec<String>, key: &str, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        p.push(format!("{key}: must be a positive number, got {v}"));
    }
}

/// AE titles: 1-16 characters of the default character repertoire, no backslash, not all
/// spaces (PS3.5 Table 6.2-1).
fn check_ae(key: &str, ae: &str) -> Result<(), String> {
    if ae.trim().is_empty() || ae.len() > 16 {
        return Err(format!("{key}: `{ae}` must be 1-16 characters"));
    }
    if ae.chars().any(|c| !(' '..='~').contains(&c) || c == '\\') {
        return Err(format!(
            "{key}: `{ae}` may hold only printable ASCII without backslash"
        ));
    }
    Ok(())
}

fn check_destination(key: &str, d: &Destination, p: &mut Vec<String>) {
    if let Err(e) = check_ae(&format!("{key}.ae"), &d.ae) {
        p.push(e);
    }
    if d.host.trim().is_empty() {
        p.push(format!("{key}.host: must not be empty"));
    }
    if d.port == 0 {
        p.push(format!("{key}.port: must be 1-65535"));
    }
}

/// An IP address or a CIDR block (written by hand: two dozen lines do not need a crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMatch {
    net: IpAddr,
    prefix: u8,
}

impl HostMatch {
    pub fn parse(s: &str) -> Option<HostMatch> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(HostMatch { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_and_need_a_peer() {
        let c = Config::default();
        assert_eq!(c.ae_title, "CACD");
        assert_eq!(c.listen, "0.0.0.0:11112");
        assert_eq!(c.status, "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./var/cacd"));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("peer:"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            ae_title = "THIS AE TITLE IS FAR TOO LONG"
            listen = "nowhere"
            quiet_period_s = -1
            accept_any = true
            [receive]
            max_pdu = 10
            [forward]
            backoff_initial_s = 10
            backoff_max_s = 5
            [pipeline]
            engine = "cuda-magic"
            precision = "fp16"
            [[peer]]
            ae = "CT"
            host = "10.0.0.0/99"
            [[destination]]
            ae = "PACS"
            host = ""
            port = 0
        "#;
        let p = Config::parse(text).unwrap().problems();
        for key in [
            "ae_title:",
            "listen:",
            "quiet_period_s:",
            "receive.max_pdu:",
            "forward.backoff_max_s:",
            "pipeline.engine:",
            "pipeline.precision:",
            "peer[0].host:",
            "destination[0].host:",
            "destination[0].port:",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(key)),
                "{key} missing in {p:?}"
            );
        }
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../deploy/cacd.example.toml");
        let c = Config::parse(text).unwrap();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.peers.len(), 2);
    }

    #[test]
    fn ops_sections_are_checked_with_their_keys() {
        let text = r#"
            [led]
            kind = "gpio"
            name = "green:status"
            [health]
            pacs_unreachable_s = 0
            service_token = "short"
            [reports]
            url = "http://it.example/cacd"
            client_cert = "/nonexistent/cert.pem"
            heartbeat_s = -1
        "#;
        let p = Config::parse(text).unwrap().problems();
        for key in [
            "led.chip:",
            "led.line:",
            "led.name:",
            "health.pacs_unreachable_s:",
            "health.service_token:",
            "reports.url:",
            "reports.client_cert:",
            "reports.client_key:",
            "reports.heartbeat_s:",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(key)),
                "{key} missing in {p:?}"
            );
        }
        let e = Config::parse("[led]\nkind = \"blinkenlights\"").unwrap_err();
        assert!(e.contains("blinkenlights"), "{e}");
        let e = Config::parse("[reports]\nurl_typo = \"x\"").unwrap_err();
        assert!(e.contains("url_typo"), "{e}");
        // A sysfs LED must exist.
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("green:status")).unwrap();
        std::fs::write(t.path().join("green:status/brightness"), "0").unwrap();
        let ok = format!(
            "[led]\nkind = \"sysfs\"\nname = \"green:status\"\nsysfs_root = \"{}\"",
            t.path().display()
        );
        assert!(Config::parse(&ok).unwrap().problems().is_empty());
        let bad = ok.replace("green:status\"\n", "amber:status\"\n");
        let p = Config::parse(&bad).unwrap().problems();
        assert!(p.iter().any(|l| l.starts_with("led.name:")), "{p:?}");
    }

    #[test]
    fn receive_limits_are_checked_and_add_up_to_the_stated_bound() {
        let m = ReceiveConfig::default().memory_bound();
        assert_eq!(m.per_association, 1_548_288);
        assert_eq!(m.per_pending, 147_456);
        assert_eq!(m.total, 8 * 1_548_288 + 64 * 147_456);
        assert!(
            m.total < 24 << 20,
            "defaults fit a Jetson with room to spare"
        );
        let p = Config::parse(
            "[receive]\nmax_pending = 4\nmax_pending_per_source = 5\nmax_command_bytes = 10\n\
             max_associate_rq_bytes = 4294967295\nrequest_timeout_s = 0\nmax_instance_bytes = 1",
        )
        .unwrap()
        .problems();
        for key in [
            "receive.max_pending_per_source:",
            "receive.max_command_bytes:",
            "receive.max_associate_rq_bytes:",
            "receive.request_timeout_s:",
            "receive.max_instance_bytes:",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(key)),
                "{key} missing in {p:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::parse("quiet_period = 3").unwrap_err();
        assert!(e.contains("quiet_period"), "{e}");
    }

    #[test]
    fn peers_match_ae_and_address() {
        let c = Config::parse(
            r#"
            [[peer]]
            ae = "CT01"
            host = "127.0.0.1"
            [[peer]]
            ae = "CT02"
            host = "10.1.0.0/16"
        "#,
        )
        .unwrap();
        assert!(c.problems().is_empty());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(c.peer_allowed("CT01", lo));
        assert!(!c.peer_allowed("CT01", lo2));
        assert!(!c.peer_allowed("CT02", lo));
        assert!(c.peer_allowed("CT02", "10.1.200.3".parse().unwrap()));
        assert!(!c.ip_allowed("10.2.0.1".parse().unwrap()));
        assert!(c.ip_allowed("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn forward_flag_parses() {
        let d = Destination::parse("PACS@10.0.0.9:104").unwrap();
        assert_eq!(d.id(), "PACS@10.0.0.9:104");
        assert!(Destination::parse("PACS10.0.0.9:104").is_err());
        assert!(Destination::parse("PACS@host:0").is_err());
        assert!(Destination::parse("@host:104").is_err());
    }
}
