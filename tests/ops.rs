//! Field and fleet operations against the real binary: the simulated status LED driven through
//! every state by causing each condition, the status port (JSON, Prometheus, HTML in headless
//! Chromium), systemd notifications on a socket of our own, reports to a local HTTPS receiver
//! whose CA is made here, and no patient data of a phantom in logs, status or reports.
//!
//! The tests that need a loaded model say so and return when `models/manifest.toml` is absent.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacd::health::{State, LED_TABLE};
use cacd_e2e::*;
use serde_json::Value;

const STORESCU: &str = "/usr/bin/storescu";
const TOKEN: &str = "0123456789abcdef-service";

fn skip() -> bool {
    if models_present() {
        return false;
    }
    eprintln!("skipped: no trained model (models/manifest.toml); set CACD_MODEL_DIR to run");
    true
}

fn model_dir() -> PathBuf {
    std::env::var_os("CACD_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// A config on loopback with a simulated LED recorded to `dir/led.txt`; `extra` is appended.
/// Adds `key` under `[table]` in `extra` unless `extra` sets it already. The tests must not
/// depend on the free space of the machine they run on (CI's disk is nearly full), so each
/// config lowers the disk thresholds unless the test is about them.
fn with_default(extra: &str, table: &str, key: &str, line: &str) -> String {
    if extra.contains(key) {
        return extra.to_string();
    }
    let header = format!("[{table}]\n");
    match extra.find(&header) {
        Some(at) => {
            let end = at + header.len();
            format!("{}{line}\n{}", &extra[..end], &extra[end..])
        }
        None => format!("{extra}\n{header}{line}\n"),
    }
}

fn config(dir: &Path, port: u16, status: u16, extra: &str) -> PathBuf {
    let extra = with_default(
        extra,
        "health",
        "disk_warn_free_percent",
        "disk_warn_free_percent = 0.0",
    );
    let extra = with_default(
        &extra,
        "receive",
        "min_free_bytes",
        "min_free_bytes = 1048576\nmin_free_percent = 0.0",
    );
    let text = format!(
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
backoff_max_s = 2
connect_timeout_s = 2
[led]
kind = "sim"
record = "{led}"
{extra}
"#,
        data = dir.join("data").display(),
        led = dir.join("led.txt").display(),
    );
    let path = dir.join("cacd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn send(port: u16, files: &[PathBuf]) {
    let mut c = Command::new(STORESCU);
    c.args([
        "-aet",
        "CT01",
        "-aec",
        "CACD",
        "127.0.0.1",
        &port.to_string(),
    ])
    .args(files);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
}

/// `curl` against the status port: (HTTP code, body).
fn http(status: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("/usr/bin/curl");
    c.args(["-s", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    c.arg(format!("http://127.0.0.1:{status}{path}"));
    let out = c.output().expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn status_json(status: u16) -> Option<Value> {
    let (code, body) = http(status, "GET", "/api/status", None);
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn state_of(status: u16) -> Option<String> {
    status_json(status).and_then(|v| v["health"]["state"].as_str().map(String::from))
}

fn wait_state(status: u16, want: &str, limit: Duration) -> bool {
    wait_until(limit, || state_of(status).as_deref() == Some(want))
}

/// The states a recorded LED file went through, mapped back with the LED table.
fn led_states(file: &Path) -> Vec<State> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, pattern, colour) = (f.next()?, f.next()?, f.next()?);
            LED_TABLE
                .iter()
                .find(|r| r.pattern.describe() == pattern && r.colour.name() == colour)
                .map(|r| r.state)
        })
        .collect()
}

/// The phantom's patient identifiers as its DICOM files hold them.
fn patient_values(study: &Path) -> Vec<String> {
    let f = dicom_files(study)
        .into_iter()
        .next()
        .expect("phantom files");
    let vals: Vec<String> = [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
    ]
    .iter()
    .map(|t| dcm_value(&f, t).unwrap_or_default())
    .collect();
    for v in &vals {
        assert!(
            v.len() >= 6,
            "phantom attribute too short to search for: {vals:?}"
        );
    }
    vals
}

fn assert_no_patient_data(what: &str, text: &str, values: &[String]) {
    for v in values {
        assert!(
            !text.contains(v.as_str()),
            "{what} contains patient data `{v}`"
        );
    }
}

fn series_delivered(status: u16, n: u64) -> bool {
    status_json(status).is_some_and(|v| v["queue"]["delivered"].as_u64() == Some(n))
}

#[test]
fn led_follows_the_conditions_status_port_and_browser() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (port, status, pacs) = (free_port(), free_port(), free_port());
    let extra = format!(
        r#"[health]
interval_s = 0.25
pacs_unreachable_s = 1
probe_interval_s = 0.5
identify_s = 2
service_token = "{TOKEN}"
[[destination]]
ae = "RECV"
host = "127.0.0.1"
port = {pacs}
"#
    );
    let cfg = config(tmp.path(), port, status, &extra);
    let study = phantom_whole_heart(tmp.path(), 4242);
    let patient = patient_values(&study);
    let scp = StoreScp::start(pacs, &tmp.path().join("pacs"));
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));
    assert!(
        wait_state(status, "ready", Duration::from_secs(180)),
        "never ready: {:?}",
        status_json(status)
    );
    assert_eq!(http(status, "GET", "/readyz", None).0, 200);
    assert_eq!(http(status, "GET", "/healthz", None).0, 200);

    // Receiving, then scoring, then delivered.
    let files = dicom_files(&study);
    send(port, &files);
    assert!(
        wait_until(Duration::from_secs(300), || series_delivered(status, 1)),
        "{:?}",
        status_json(status)
    );
    assert!(wait_state(status, "ready", Duration::from_secs(20)));

    // The PACS goes away: degraded once it has been unreachable past the threshold.
    drop(scp);
    assert!(wait_state(status, "degraded", Duration::from_secs(20)));
    let v = status_json(status).unwrap();
    let reasons = v["health"]["reasons"].to_string();
    assert!(reasons.contains("unreachable"), "{reasons}");
    assert_eq!(v["destinations"][0]["reachable"], false);
    let _scp = StoreScp::start(pacs, &tmp.path().join("pacs"));
    assert!(wait_state(status, "ready", Duration::from_secs(20)));

    // Identify needs the service token.
    assert_eq!(http(status, "POST", "/api/identify", None).0, 401);
    assert_eq!(
        http(status, "POST", "/api/identify", Some("wrong-token-xxxxxxx")).0,
        401
    );
    assert_eq!(http(status, "POST", "/api/identify", Some(TOKEN)).0, 200);
    assert!(wait_state(status, "identify", Duration::from_secs(5)));
    assert!(wait_state(status, "ready", Duration::from_secs(10)));

    // The LED went through every state these conditions cause, booting first.
    let states = led_states(&tmp.path().join("led.txt"));
    assert_eq!(states.first(), Some(&State::Booting), "{states:?}");
    for s in [
        State::Ready,
        State::Receiving,
        State::Scoring,
        State::Degraded,
        State::Identify,
    ] {
        assert!(states.contains(&s), "{s:?} missing in {states:?}");
    }
    assert_eq!(states.last(), Some(&State::Ready));

    // Status JSON and metrics.
    let v = status_json(status).unwrap();
    assert_eq!(
        v["received"]["instances"].as_u64(),
        Some(files.len() as u64)
    );
    assert!(v["engine"]["sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
    let s0 = &v["series"][0];
    assert_eq!(s0["series_hash"].as_str().map(str::len), Some(12));
    assert!(s0["risk_category"].is_string(), "{s0}");
    assert!(v["led"]["history"].as_array().is_some_and(|h| h.len() >= 6));
    let (code, metrics) = http(status, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        format!("cacd_instances_received_total {}", files.len()),
        "cacd_series{state=\"delivered\"} 1".to_string(),
        "cacd_stage_latency_seconds_count{stage=\"infer\"} 1".to_string(),
        "cacd_health_state{state=\"ready\"} 1".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "`{line}` missing:\n{metrics}"
        );
    }
    assert!(metrics.contains("cacd_forward_attempts_total{destination=\"RECV@127.0.0.1:"));
    assert!(metrics.contains("cacd_bytes_received_total "));
    assert!(metrics.contains("cacd_disk_free_bytes "));

    // The page in a real browser: rendered DOM, and a screenshot to look at.
    let url = format!("http://127.0.0.1:{status}/");
    let dom = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains(r#"<h1 id="state">ready</h1>"#), "{dom}");
    assert!(dom.contains(s0["series_hash"].as_str().unwrap()), "{dom}");
    assert!(
        dom.contains(r#"<td id="ready" class="ok">yes</td>"#),
        "{dom}"
    );
    assert!(dom.contains("RECV@127.0.0.1"), "{dom}");
    let shot = std::env::var_os("CACD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("status.png"));
    let st = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1280,1000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .stderr(Stdio::null())
        .status()
        .expect("chromium screenshot");
    assert!(st.success() && shot.is_file());

    // No patient data anywhere we serve or log.
    for path in ["/", "/api/status", "/metrics"] {
        assert_no_patient_data(path, &http(status, "GET", path, None).1, &patient);
    }
    assert_no_patient_data("the HTML in Chromium", &dom, &patient);
    let log = serve.log.lock().unwrap().join("\n");
    assert!(
        log.contains("stage=score") || log.contains("stage=\"score\""),
        "structured fields missing in the log"
    );
    assert_no_patient_data("the log", &log, &patient);
    serve.terminate();
}

#[test]
fn disk_watermark_and_missing_gpu_degrade() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (port, status) = (free_port(), free_port());
    // More free space demanded than any disk here has: the disk is "full".
    let extra = "[receive]\nmin_free_bytes = 1000000000000000\n[health]\ninterval_s = 0.25\nexpect_gpu = true\n";
    let cfg = config(tmp.path(), port, status, extra);
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));
    assert!(wait_state(status, "degraded", Duration::from_secs(180)));
    let reasons = status_json(status).unwrap()["health"]["reasons"].to_string();
    assert!(reasons.contains("disk"), "{reasons}");
    if !cacd_hal::sensors::gpu_present() {
        assert!(reasons.contains("GPU"), "{reasons}");
    }
    assert_eq!(
        http(status, "GET", "/readyz", None).0,
        200,
        "degraded still serves"
    );
    serve.terminate();
    let states = led_states(&tmp.path().join("led.txt"));
    assert!(states.contains(&State::Degraded), "{states:?}");
}

/// Binds a notify socket and collects what the daemon sends to it.
struct Notify {
    sock: UnixDatagram,
    got: Vec<String>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            sock,
            got: Vec::new(),
        }
    }
    fn drain(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        &self.got
    }
    fn has(&mut self, needle: &str) -> bool {
        self.drain()
            .iter()
            .any(|m| m.lines().any(|l| l.starts_with(needle)))
    }
}

fn start_notified(cfg: &Path, notify: &Path) -> std::process::Child {
    // systemd sets WATCHDOG_PID to the service's PID and sd-notify ignores WATCHDOG_USEC
    // without it; `exec` from a shell is how the test learns the PID before the start.
    Command::new("/bin/sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\"")
        .arg(cacd_bin())
        .arg(cfg)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "1000000")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cacd serve")
}

#[test]
fn model_hash_mismatch_is_a_fault_without_ready_and_a_good_model_notifies_ready() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the models with one byte of the calcium network changed.
    let bad = tmp.path().join("models-bad");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            std::fs::copy(&p, bad.join(e.file_name())).unwrap();
        }
    }
    let onnx = bad.join("calcium_int8.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(&onnx, bytes).unwrap();

    let (port, status) = (free_port(), free_port());
    let extra = format!(
        "[health]\ninterval_s = 0.25\n[pipeline]\nmodel_dir = \"{}\"\n",
        bad.display()
    );
    let cfg = config(tmp.path(), port, status, &extra);
    let mut notify = Notify::bind(&tmp.path().join("notify.sock"));
    let mut child = start_notified(&cfg, &tmp.path().join("notify.sock"));
    let fault = wait_until(Duration::from_secs(60), || {
        state_of(status).as_deref() == Some("fault")
    });
    let v = status_json(status);
    let _ = child.kill();
    let _ = child.wait();
    assert!(fault, "{v:?}");
    let reasons = v.unwrap()["health"]["reasons"].to_string();
    assert!(reasons.contains("sha256"), "{reasons}");
    assert!(notify.has("STATUS=fault"), "{:?}", notify.got);
    assert!(
        !notify.has("READY=1"),
        "READY=1 with a bad model: {:?}",
        notify.got
    );
    assert!(led_states(&tmp.path().join("led.txt")).contains(&State::Fault));

    // The good models: READY=1 once everything is up, then watchdog pings.
    let tmp2 = tempfile::tempdir().unwrap();
    let (port, status) = (free_port(), free_port());
    let cfg = config(tmp2.path(), port, status, "[health]\ninterval_s = 0.25\n");
    let mut notify = Notify::bind(&tmp2.path().join("notify.sock"));
    let mut child = start_notified(&cfg, &tmp2.path().join("notify.sock"));
    let ready = wait_until(Duration::from_secs(180), || notify.has("READY=1"));
    // READY=1 came only after the listener and the status port were up.
    let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let readyz = http(status, "GET", "/readyz", None).0;
    std::thread::sleep(Duration::from_millis(1500));
    let watchdog = notify.has("WATCHDOG=1");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "{:?}", notify.got);
    assert!(listening);
    assert_eq!(readyz, 200);
    assert!(watchdog, "{:?}", notify.got);
    assert!(notify.got.iter().any(|m| m.contains("STATUS=")));
}

/// `cacd serve` that must fail to start: returns its exit status and the LED's last state.
fn failing_start(dir: &Path, cfg: &Path) -> (bool, Option<State>, String) {
    let out = Command::new(cacd_bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .output()
        .expect("cacd serve");
    (
        out.status.success(),
        led_states(&dir.join("led.txt")).last().copied(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn invalid_config_and_unopenable_database_show_a_fault_before_exit() {
    let tmp = tempfile::tempdir().unwrap();
    // A value that cannot work.
    let d1 = tmp.path().join("bad-value");
    std::fs::create_dir_all(&d1).unwrap();
    let cfg = config(
        &d1,
        free_port(),
        free_port(),
        "[health]\npacs_unreachable_s = -5\n",
    );
    let (ok, led, err) = failing_start(&d1, &cfg);
    assert!(!ok && err.contains("health.pacs_unreachable_s"), "{err}");
    assert_eq!(led, Some(State::Fault));
    // An unknown key: the file does not parse, its [led] section is still used.
    let d2 = tmp.path().join("unknown-key");
    std::fs::create_dir_all(&d2).unwrap();
    let cfg = config(
        &d2,
        free_port(),
        free_port(),
        "[reports]\nurl_typo = \"x\"\n",
    );
    let (ok, led, err) = failing_start(&d2, &cfg);
    assert!(!ok && err.contains("url_typo"), "{err}");
    assert_eq!(led, Some(State::Fault));
    // The queue database is not a database.
    let d3 = tmp.path().join("bad-db");
    std::fs::create_dir_all(d3.join("data")).unwrap();
    std::fs::write(d3.join("data/queue.redb"), vec![0x5au8; 8192]).unwrap();
    let cfg = config(&d3, free_port(), free_port(), "");
    let (ok, led, err) = failing_start(&d3, &cfg);
    assert!(!ok, "{err}");
    assert!(err.contains("queue"), "{err}");
    let states = led_states(&d3.join("led.txt"));
    assert_eq!(states.first(), Some(&State::Booting), "{states:?}");
    assert_eq!(led, Some(State::Fault), "{states:?}");
}

/// A local HTTPS receiver for reports: a CA and a server certificate made here, every POST
/// recorded (Authorization header and JSON body), answered 200.
struct HttpsReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Posts = Arc<Mutex<Vec<(String, Value)>>>;

struct TestCa {
    ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn make_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cacd test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

fn read_request(s: &mut impl Read) -> Option<(String, Value)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length")?.parse().ok()?;
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).ok()?;
    Some((header("authorization").unwrap_or_default(), body))
}

impl HttpsReceiver {
    fn start(port: u16, ca: &TestCa, posts: Posts) -> HttpsReceiver {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(ca.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key_der.clone())),
            )
            .unwrap();
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = sock.set_nonblocking(false);
                let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, sock);
                if let Some(req) = read_request(&mut tls) {
                    posts.lock().unwrap().push(req);
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        HttpsReceiver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kinds(posts: &Posts, kind: &str) -> Vec<Value> {
    posts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| b["type"] == kind)
        .map(|(_, b)| b.clone())
        .collect()
}

/// The `required` keys of the schema's branch `title`, plus the common ones.
fn required_keys(title: &str) -> Vec<String> {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/report.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut keys: Vec<String> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let branch = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["title"] == title)
        .unwrap();
    keys.extend(
        branch["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k.as_str().map(String::from)),
    );
    keys
}

#[test]
fn reports_reach_an_https_receiver_across_an_outage_and_a_restart() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca();
    std::fs::write(tmp.path().join("ca.pem"), &ca.ca_pem).unwrap();
    let (port, status, rport) = (free_port(), free_port(), free_port());
    let extra = format!(
        r#"[health]
interval_s = 0.25
[reports]
url = "https://127.0.0.1:{rport}/ingest"
ca = "{ca}"
token = "report-token-123"
heartbeat_s = 1
backoff_initial_s = 0.2
backoff_max_s = 1
timeout_s = 3
box_id = "ops-test-box"
"#,
        ca = tmp.path().join("ca.pem").display()
    );
    let cfg = config(tmp.path(), port, status, &extra);
    let study = phantom(tmp.path(), 4343, 40);
    let patient = patient_values(&study);
    let posts: Posts = Arc::new(Mutex::new(Vec::new()));
    let receiver = HttpsReceiver::start(rport, &ca, posts.clone());
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));
    assert!(wait_until(Duration::from_secs(60), || !kinds(
        &posts,
        "heartbeat"
    )
    .is_empty()));
    assert!(posts
        .lock()
        .unwrap()
        .iter()
        .all(|(auth, _)| auth == "Bearer report-token-123"));

    // The receiver goes away; a study is scored meanwhile and the daemon restarts.
    drop(receiver);
    send(port, &dicom_files(&study));
    assert!(wait_until(Duration::from_secs(300), || series_delivered(
        status, 1
    )));
    assert!(wait_until(Duration::from_secs(10), || status_json(status)
        .is_some_and(
            |v| v["reports_pending"].as_u64().unwrap_or(0) >= 3
        )));
    let log1 = serve.log.lock().unwrap().join("\n");
    serve.terminate();
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(kinds(&posts, "result").is_empty());

    // Back up: everything queued arrives.
    let _receiver = HttpsReceiver::start(rport, &ca, posts.clone());
    assert!(
        wait_until(Duration::from_secs(60), || status_json(status)
            .is_some_and(|v| v["reports_pending"].as_u64() == Some(0))
            && !kinds(&posts, "result").is_empty()),
        "{:?}",
        status_json(status)
    );
    let seqs: BTreeSet<u64> = posts
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, b)| b["seq"].as_u64())
        .collect();
    let max = *seqs.iter().max().unwrap();
    assert_eq!(
        seqs,
        (1..=max).collect::<BTreeSet<u64>>(),
        "a report was lost"
    );
    assert!(kinds(&posts, "heartbeat").len() >= 4);

    let result = kinds(&posts, "result").remove(0);
    for k in required_keys("result") {
        assert!(
            result.get(&k).is_some(),
            "result report lacks `{k}`: {result}"
        );
    }
    assert_eq!(result["box_id"], "ops-test-box");
    assert_eq!(result["status"], "scored");
    assert!(result.get("patient").is_none() && result.get("study_instance_uid").is_none());
    let hb = kinds(&posts, "heartbeat").pop().unwrap();
    for k in required_keys("heartbeat") {
        assert!(hb.get(&k).is_some(), "heartbeat lacks `{k}`: {hb}");
    }
    assert!(hb["model"]["sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));

    // No patient data in what was pushed or logged.
    let all = posts
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_no_patient_data("the pushed reports", &all, &patient);
    let log2 = serve.log.lock().unwrap().join("\n");
    assert_no_patient_data("the log", &format!("{log1}\n{log2}"), &patient);
    serve.terminate();
}
