//! `cacd serve` as a Storage SCP against DCMTK: C-ECHO, C-STORE of a whole series (durable,
//! deduplicated), access control at association and at accept time, the association cap, and
//! a graceful SIGTERM. Needs no model: receiving never depends on scoring.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cacd_e2e::*;

const ECHOSCU: &str = "/usr/bin/echoscu";
const STORESCU: &str = "/usr/bin/storescu";

fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    let status = free_port();
    let text = format!(
        r#"
ae_title = "CACD"
listen = "127.0.0.1:{port}"
status = "127.0.0.1:{status}"
data_dir = "{data}"
quiet_period_s = 1.0
[[peer]]
ae = "CT01"
host = "127.0.0.1"
{TEST_RECEIVE}{extra}
"#,
        data = data.display()
    );
    let path = dir.join("cacd.toml");
    std::fs::write(&path, text).unwrap();
    let ok = Command::new(cacd_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(ok.status.success(), "check-config: {}", text_of(&ok));
    path
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

fn echo(port: u16, calling: &str, called: &str) -> std::process::Output {
    run(Command::new(ECHOSCU).args([
        "-aet",
        calling,
        "-aec",
        called,
        "127.0.0.1",
        &port.to_string(),
    ]))
}

#[test]
fn receives_stores_durably_and_refuses_strangers() {
    let tmp = tempfile::tempdir().unwrap();
    let study = phantom(tmp.path(), 11, 24);
    let files = dicom_files(&study);
    assert!(files.len() >= 24);
    let port = free_port();
    let cfg = config(tmp.path(), port, "");
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));

    // C-ECHO from a configured peer; refused for an unknown calling AE or a wrong called AE.
    assert!(echo(port, "CT01", "CACD").status.success());
    let bad_calling = echo(port, "STRANGER", "CACD");
    assert!(!bad_calling.status.success());
    assert!(
        text(&bad_calling).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&bad_calling)
    );
    let bad_called = echo(port, "CT01", "NOTUS");
    assert!(!bad_called.status.success());
    assert!(
        text(&bad_called).contains("Called AE Title Not Recognized"),
        "{}",
        text(&bad_called)
    );

    // An address that is not a peer's is dropped at accept time, before any PDU: the socket
    // just closes (loopback accepts any 127/8 source address).
    let sock = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let s = socket_from(sock, port);
    let mut s = s.expect("connect from 127.0.0.2");
    let _ = s.write_all(&[0x01, 0x00]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "a stranger's connection must be closed without a reply"
    );
    assert!(serve.log_contains("source address is not a configured peer"));

    // C-STORE the series; every acknowledged instance is on disk, in the study/series tree.
    let mut store = Command::new(STORESCU);
    store
        .args([
            "-aet",
            "CT01",
            "-aec",
            "CACD",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(&files);
    let out = run(&mut store);
    assert!(out.status.success(), "{}", text(&out));
    let stored = dicom_files_below(&tmp.path().join("data/studies"));
    assert_eq!(stored.len(), files.len());
    // The same instances again: stored once.
    assert!(run(&mut store).status.success());
    assert_eq!(
        dicom_files_below(&tmp.path().join("data/studies")).len(),
        files.len()
    );

    let took = serve.terminate();
    assert!(took < Duration::from_secs(10), "SIGTERM exit took {took:?}");
    let q = cacd::queue::Queue::open(&tmp.path().join("data")).unwrap();
    let series = q.all_series().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].instances as usize, files.len());
    // The stored files parse and keep the sender's transfer syntax and UIDs.
    let first = dicom_files(&study)[0].clone();
    let sent = run(Command::new("/usr/bin/dcmdump")
        .args(["+P", "0008,0018", "+P", "0020,000d"])
        .arg(&first));
    let sop_line = text(&sent);
    assert!(stored.iter().any(|p| {
        let d = run(Command::new("/usr/bin/dcmdump")
            .args(["+P", "0008,0018", "+P", "0020,000d"])
            .arg(p));
        text(&d) == sop_line
    }));
}

fn socket_from(local: std::net::SocketAddr, port: u16) -> std::io::Result<std::net::TcpStream> {
    // std cannot bind before connect; tokio's TcpSocket can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(local)?;
        let stream = s.connect(([127, 0, 0, 1], port).into()).await?;
        stream.into_std()
    })
    .and_then(|s| {
        s.set_nonblocking(false)?;
        Ok(s)
    })
}

#[test]
fn over_the_association_cap_is_refused_transient() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(
        tmp.path(),
        port,
        "max_associations = 1\nread_timeout_s = 20\n",
    );
    let serve = Serve::start(&cfg, port, &tmp.path().join("data"));
    // Connections that never complete their association request hold no slot (they wait in
    // the pending pool): the echo still gets the only one.
    let half_open: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let through = echo(port, "CT01", "CACD");
    assert!(through.status.success(), "{}", text(&through));
    // A real association holds the slot: the next one is refused, transient.
    let held = cacd_e2e::wire::associate(port);
    let busy = echo(port, "CT01", "CACD");
    assert!(!busy.status.success());
    assert!(
        text(&busy).contains("Rejected Transient"),
        "{}",
        text(&busy)
    );
    drop(held);
    drop(half_open);
    assert!(wait_until(Duration::from_secs(10), || echo(
        port, "CT01", "CACD"
    )
    .status
    .success()));
    drop(serve);
}

#[test]
fn sigkill_during_receive_keeps_every_acknowledged_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let study = phantom(tmp.path(), 12, 160);
    let files = dicom_files(&study);
    let port = free_port();
    let cfg = config(tmp.path(), port, "");
    let data = tmp.path().join("data");
    let serve = Serve::start(&cfg, port, &data);
    let sender = Command::new(STORESCU)
        .args([
            "-v",
            "-aet",
            "CT01",
            "-aec",
            "CACD",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(&files)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the daemon mid-series, as a power cut would. Poll tightly: at wait_until's 200 ms
    // a fast machine had stored the whole series before the first look.
    let t = std::time::Instant::now();
    while dicom_files_below(&data.join("studies")).len() < 5
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    serve.kill();
    let out = sender.wait_with_output().unwrap();
    let acked = text(&out)
        .matches("Received Store Response (Success)")
        .count();
    let on_disk = dicom_files_below(&data.join("studies"));
    assert!(
        acked > 0 && acked < files.len(),
        "the kill should land mid-series (acked {acked})"
    );
    assert!(
        on_disk.len() >= acked,
        "acknowledged {acked}, on disk {}",
        on_disk.len()
    );
    // Every file on disk is complete and parses.
    for f in &on_disk {
        assert!(
            dcm_value(f, "0008,0018").is_some_and(|v| !v.is_empty()),
            "{}",
            f.display()
        );
    }
    // Restart and send everything again: the series completes, each instance stored once.
    let serve = Serve::start(&cfg, port, &data);
    let mut again = Command::new(STORESCU);
    again
        .args([
            "-aet",
            "CT01",
            "-aec",
            "CACD",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(&files);
    assert!(run(&mut again).status.success());
    assert_eq!(dicom_files_below(&data.join("studies")).len(), files.len());
    serve.terminate();
    let q = cacd::queue::Queue::open(&data).unwrap();
    let series = q.all_series().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].instances as usize, files.len());
}
