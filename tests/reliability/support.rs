//! Shared parts of the reliability tests: configs, a DCMTK sender that reports which instances
//! were acknowledged, a storescp that keeps duplicates, filesystem mounts, RSS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cacd_e2e::*;

pub const STORESCU: &str = "/usr/bin/storescu";
pub const ECHOSCU: &str = "/usr/bin/echoscu";

/// Longer runs under `CACD_SOAK=1` (scripts/reliability --soak).
pub fn soak() -> bool {
    std::env::var_os("CACD_SOAK").is_some_and(|v| v != "0")
}

/// `bounded` in CI, `soaked` under --soak.
pub fn rounds(bounded: usize, soaked: usize) -> usize {
    if soak() {
        soaked
    } else {
        bounded
    }
}

/// Whether the tests that score can run (trained models present).
pub fn no_models() -> bool {
    if models_present() {
        return false;
    }
    eprintln!("skipped: no trained model (models/manifest.toml); set CACD_MODEL_DIR to run");
    true
}

/// A daemon config on loopback. `extra` is appended as is (tables of its own); the `[receive]`
/// table is `receive` (the test-friendly watermark when empty).
pub fn config(
    dir: &Path,
    data: &Path,
    port: u16,
    status: u16,
    dests: &[(&str, u16)],
    receive: &str,
    extra: &str,
) -> PathBuf {
    // The disk-warning threshold off (the CI disk is nearly full), in the test's own [health]
    // table when it has one (TOML refuses a table twice).
    let (health, extra) = match extra.find("[health]\n") {
        Some(at) => {
            let end = at + "[health]\n".len();
            (
                String::new(),
                format!(
                    "{}disk_warn_free_percent = 0.0\n{}",
                    &extra[..end],
                    &extra[end..]
                ),
            )
        }
        None => (
            "[health]\ndisk_warn_free_percent = 0.0\n".to_string(),
            extra.to_string(),
        ),
    };
    let receive = if receive.is_empty() {
        TEST_RECEIVE.to_string()
    } else {
        format!("[receive]\n{receive}\n")
    };
    let mut text = format!(
        r#"
ae_title = "CACD"
listen = "127.0.0.1:{port}"
status = "127.0.0.1:{status}"
data_dir = "{data}"
quiet_period_s = 1.5
[[peer]]
ae = "CT01"
host = "127.0.0.1"
[forward]
backoff_initial_s = 1
backoff_max_s = 4
connect_timeout_s = 3
{health}
{receive}
{extra}
"#,
        data = data.display()
    );
    for (ae, p) in dests {
        text.push_str(&format!(
            "[[destination]]\nae = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {p}\n"
        ));
    }
    let path = dir.join("cacd.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// What one storescu run did, file by file.
#[derive(Debug, Default)]
pub struct Sent {
    /// Files answered with Success.
    pub acked: Vec<PathBuf>,
    /// Files answered with a failure status, with DCMTK's status text.
    pub refused: Vec<(PathBuf, String)>,
    /// Response times (request sent → response received), where the log had both.
    pub response_ms: Vec<f64>,
}

/// log4cplus layout with milliseconds, so request/response pairs can be timed.
const TIMED_LOG: &str = "log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%q} %m%n
";

fn clock_ms(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let mut parts = stamp.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

/// Sends `files` on one association as CT01 and reports, per file, DCMTK's answer.
pub fn send(port: u16, files: &[PathBuf]) -> Sent {
    // One file per call: concurrent senders rewriting a shared one can hand storescu a
    // half-written log config (seen under the load test: one sender of eight sent nothing).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log_cfg =
        std::env::temp_dir().join(format!("cacd-storescu-log-{}-{n}.cfg", std::process::id()));
    std::fs::write(&log_cfg, TIMED_LOG).expect("writing the storescu log config");
    let out = Command::new(STORESCU)
        .arg("-lc")
        .arg(&log_cfg)
        .args([
            "-aet", "CT01", "-aec", "CACD", "-to", "20", "-ta", "20", "-td", "60",
        ])
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files)
        .output()
        .expect("running storescu");
    let _ = std::fs::remove_file(&log_cfg);
    parse_storescu(&text(&out))
}

fn parse_storescu(log: &str) -> Sent {
    let mut sent = Sent::default();
    let mut current: Option<PathBuf> = None;
    let mut requested: Option<f64> = None;
    for line in log.lines() {
        if let Some(i) = line.find("Sending file: ") {
            current = Some(PathBuf::from(line[i + 14..].trim()));
        } else if line.contains("Sending Store Request") {
            requested = clock_ms(line);
        } else if let Some(i) = line.find("Received Store Response (") {
            let status = line[i + 25..].trim_end_matches(')').to_string();
            if let (Some(a), Some(b)) = (requested.take(), clock_ms(line)) {
                sent.response_ms.push(b - a);
            }
            if let Some(f) = current.take() {
                if status.starts_with("Success") {
                    sent.acked.push(f);
                } else {
                    sent.refused.push((f, status));
                }
            }
        }
    }
    sent
}

/// The SOP Instance UID of a file, read with dicom-object (no process per file).
pub fn sop_uid(file: &Path) -> String {
    let obj = dicom_object::open_file(file).expect("reading a DICOM file");
    obj.element_by_name("SOPInstanceUID")
        .expect("SOPInstanceUID")
        .to_str()
        .expect("SOPInstanceUID text")
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// SOP Instance UIDs of the instances stored under a data directory (the store names each file
/// by its UID).
pub fn stored_uids(data: &Path) -> BTreeSet<String> {
    dicom_files_below(&data.join("studies"))
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .collect()
}

/// storescp that keeps every copy it receives (`-uf`): a resend shows as a second file.
pub struct Receiver {
    _scp: StoreScp,
    pub dir: PathBuf,
}

impl Receiver {
    pub fn start(port: u16, dir: &Path) -> Receiver {
        Receiver {
            _scp: StoreScp::start_with(port, dir, &["-uf"]),
            dir: dir.to_path_buf(),
        }
    }

    /// How many copies of each SOP Instance UID arrived.
    pub fn copies(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for f in files_below(&self.dir) {
            if f.extension().is_some_and(|e| e == "tmp") {
                continue;
            }
            *m.entry(sop_uid(&f)).or_insert(0) += 1;
        }
        m
    }
}

/// Result SOP Instance UIDs the daemon wrote for the final version of each series.
pub fn final_result_uids(data: &Path) -> BTreeSet<String> {
    let q = cacd::queue::Queue::open(data).expect("queue opens");
    let mut out = BTreeSet::new();
    for rec in q.all_series().expect("series") {
        let store = cacd::store::Store::open(data).expect("store opens");
        let dir = store
            .outbox_series_dir(&rec.study_uid, &rec.series_uid)
            .join(format!("v{}", rec.version));
        for f in files_below(&dir) {
            if f.extension().is_some_and(|e| e == "dcm") {
                out.insert(sop_uid(&f));
            }
        }
    }
    out
}

/// Queue state of every series.
pub fn states(data: &Path) -> Vec<cacd::queue::SeriesState> {
    let q = cacd::queue::Queue::open(data).expect("queue opens");
    q.all_series()
        .expect("series")
        .into_iter()
        .map(|r| r.state)
        .collect()
}

/// `/api/status` of a running daemon.
pub fn status_json(status_port: u16) -> Option<serde_json::Value> {
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:{status_port}/api/status"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Series per queue state from the status port (the database is the daemon's while it runs).
pub fn queue_counts(status_port: u16) -> BTreeMap<String, u64> {
    status_json(status_port)
        .and_then(|v| {
            v["queue"].as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether nothing is pending: every series the daemon still knows is delivered (pruned series
/// are forgotten, so the count alone cannot say how many were delivered).
pub fn nothing_pending(status_port: u16) -> bool {
    let c = queue_counts(status_port);
    let delivered = c.get("delivered").copied().unwrap_or(0);
    delivered > 0 && c.values().sum::<u64>() == delivered
}

/// `df` and `du` of the data directory, for failure messages.
pub fn disk_usage(data: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "df -k '{0}'; du -sk '{0}'/* 2>/dev/null",
            data.display()
        ))
        .output();
    out.map(|o| text(&o)).unwrap_or_default()
}

/// Delivered series count from the status port.
pub fn delivered(status_port: u16) -> u64 {
    status_json(status_port)
        .and_then(|v| v["queue"]["delivered"].as_u64())
        .unwrap_or(0)
}

/// The live child processes of `pid` (the daemon's scoring worker).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/<p>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split
            // after its closing parenthesis.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    let mut f = rest.split_whitespace();
                    let state = f.next()?;
                    let ppid: u32 = f.next()?.parse().ok()?;
                    Some(ppid == pid && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Peak resident memory of a process (VmHWM), bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// C-ECHO as CT01; true on success.
pub fn echo(port: u16) -> bool {
    Command::new(ECHOSCU)
        .args(["-aet", "CT01", "-aec", "CACD", "-to", "10", "127.0.0.1"])
        .arg(port.to_string())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A filesystem mounted for one test (tmpfs or a loop-mounted ext4 image); unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mount {
    /// `mount` with `args`, or None (with the reason printed) where this machine does not let
    /// the test mount (not root, no loop devices).
    pub fn new(dir: &Path, args: &[&str]) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let out = Command::new("mount").args(args).arg(dir).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount ({}) — needs root and {}",
                text(&out).trim(),
                args.join(" ")
            );
            return None;
        }
        Some(Mount {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    pub fn unmount(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a daemon killed a moment ago may still hold a file open.
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A small deterministic generator for random delays and bytes (the tests must be repeatable
/// from their printed seed; a crate for this would be one more dependency for ten lines).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The seed of this run: `CACD_SEED` or the clock (printed, so a failure can be replayed).
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("CACD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {s} (CACD_SEED={s} replays it)");
    s
}

/// The percentile `p` (0–100) of `v` (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// One reliability test at a time, even under `cargo test`'s parallel runner: they load the
/// machine on purpose, and the load test's timings must not include another test's work.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `curl` against the status port: (HTTP code, body).
pub fn http(status: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("/usr/bin/curl");
    c.args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    c.arg(format!("http://127.0.0.1:{status}{path}"));
    let out = c.output().expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A PACS that answers 0xC000 to one SOP class (pynetdicom, `tests/peers/refusing_pacs.py`)
/// until `accept_all` is called; its `log` holds one line per C-STORE: status, class, UID.
pub struct RefusingPacs {
    child: std::process::Child,
    pub dir: PathBuf,
}

impl RefusingPacs {
    pub fn start(port: u16, dir: &Path, refused_class: &str) -> RefusingPacs {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/refusing_pacs.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .arg(refused_class)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 for the pynetdicom PACS");
        let pacs = RefusingPacs {
            child,
            dir: dir.to_path_buf(),
        };
        assert!(
            wait_until(std::time::Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "the pynetdicom PACS did not listen (pip install pynetdicom: scripts/install-test-deps)"
        );
        pacs
    }

    /// From now on the refused class is taken too.
    pub fn accept_all(&self) {
        std::fs::write(self.dir.join("accept-all"), b"").expect("accept-all flag");
    }

    /// (status, SOP class UID, SOP Instance UID) per C-STORE received, in order.
    pub fn log(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for RefusingPacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
