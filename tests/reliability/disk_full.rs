//! Disk full: the data directory is a 96 MiB tmpfs, the receive watermark 24 MiB.
//! 1. With the PACS down nothing can be delivered or pruned: series are sent until instances
//!    are refused with A700; everything acknowledged stays on disk; the daemon keeps answering.
//! 2. The PACS comes back: series are delivered, delivered series are pruned for space, the
//!    scanner resends what was refused and it is accepted; everything ends delivered.
//! 3. With the PACS up, more series than the disk holds at once are sent: delivered series are
//!    pruned before any refusal, so none is refused.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cacd_e2e::*;

use crate::support::*;

const WATERMARK: &str = "min_free_bytes = 25165824\nmin_free_percent = 0.0";

#[test]
fn full_disk_refuses_keeps_what_it_accepted_prunes_delivered_first_and_recovers() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Mount::new(
        &tmp.path().join("disk"),
        &["-t", "tmpfs", "-o", "size=96m", "tmpfs"],
    ) else {
        return;
    };
    let data = disk.dir.join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        WATERMARK,
        "[housekeeping]\ninterval_s = 1\n",
    );
    let first: Vec<Vec<PathBuf>> = (0..5)
        .map(|i| dicom_files(&phantom(tmp.path(), 4500 + i, 30)))
        .collect();
    let serve = Serve::start(&cfg, port, &data);

    // 1. PACS down: fill the disk.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut refused = 0;
    let mut statuses = BTreeSet::new();
    for files in &first {
        let sent = send(port, files);
        acked.extend(sent.acked.iter().map(|f| sop_uid(f)));
        refused += sent.refused.len();
        statuses.extend(sent.refused.iter().map(|(_, s)| s.clone()));
    }
    assert!(refused > 0, "a 96 MiB disk took 5 series of 30 slices");
    eprintln!("disk_full: after phase 1\n{}", disk_usage(&data));
    assert!(
        statuses
            .iter()
            .all(|s| s.contains("OutOfResources") || s.contains("A7")),
        "refusals must be A700 (out of resources): {statuses:?}"
    );
    let on_disk = stored_uids(&data);
    assert!(acked.is_subset(&on_disk), "acknowledged instances missing");
    assert!(
        echo(port),
        "the daemon stops answering when the disk is full"
    );
    // The technician sees it: health and the status LED degraded, the reason named.
    assert!(
        wait_until(Duration::from_secs(15), || status_json(status).is_some_and(
            |v| {
                v["health"]["state"] == "degraded"
                    && v["led"]["state"] == "degraded"
                    && v["health"]["reasons"]
                        .to_string()
                        .contains("receive watermark")
            }
        )),
        "a full disk is not shown: {:?}",
        status_json(status).map(|v| (v["health"].clone(), v["led"]["state"].clone()))
    );
    assert!(serve.log_contains("free space under the configured watermark"));
    let phase1 = (acked.len(), refused);

    // 2. PACS back: deliveries free the disk; resend until everything is accepted.
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let t = Instant::now();
    let mut resends = 0;
    for files in &first {
        loop {
            let sent = send(port, files);
            resends += 1;
            acked.extend(sent.acked.iter().map(|f| sop_uid(f)));
            if sent.refused.is_empty() && sent.acked.len() == files.len() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "service did not return after space was freed"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    assert!(
        wait_until(Duration::from_secs(600), || nothing_pending(status)),
        "not everything delivered: {:?}",
        queue_counts(status)
    );
    assert!(serve.log_contains("pruned delivered series"));

    // 3. PACS up: more data than the disk holds; delivered series make room, nothing refused.
    let more: Vec<Vec<PathBuf>> = (0..rounds(4, 20) as u64)
        .map(|i| dicom_files(&phantom(tmp.path(), 4600 + i, 30)))
        .collect();
    let mut refused3 = Vec::new();
    for files in &more {
        let sent = send(port, files);
        acked.extend(sent.acked.iter().map(|f| sop_uid(f)));
        refused3.extend(sent.refused);
        // Let it score and deliver before the next study, as a scanner's pace would.
        wait_until(Duration::from_secs(300), || nothing_pending(status));
    }
    assert!(
        refused3.is_empty(),
        "refused while delivered series could have been pruned: {refused3:?}"
    );
    assert!(
        wait_until(Duration::from_secs(300), || nothing_pending(status)),
        "{:?}",
        queue_counts(status)
    );
    std::thread::sleep(Duration::from_secs(1));
    serve.terminate();

    // Nothing lost: every series sent was delivered (results of every final version at the
    // receiver); what is no longer on disk was pruned after delivery.
    let copies = receiver.copies();
    let sent_series = first.len() + more.len();
    let total: usize = first.iter().chain(&more).map(Vec::len).sum();
    assert_eq!(acked.len(), total);
    assert!(final_result_uids(&data)
        .iter()
        .all(|u| copies.contains_key(u)));
    // Every scored series sends an SR and a summary (and a SEG when it has calcium).
    assert!(
        copies.len() >= 2 * sent_series,
        "{} result objects at the receiver for {sent_series} series",
        copies.len()
    );
    eprintln!(
        "disk_full: phase 1 {} acknowledged, {} refused (A700); phase 2 {} storescu runs until \
         all accepted; phase 3 {} series, 0 refused; {} series still on disk at the end",
        phase1.0,
        phase1.1,
        resends,
        more.len(),
        states(&data).len()
    );
}

/// The disk fills under the writes themselves (no watermark to refuse first): every refused
/// instance is answered A700 and its temp file removed at once, not at the next restart; what
/// was acknowledged is on disk; the daemon keeps answering.
#[test]
fn writes_failing_on_a_full_disk_leave_no_temp_files() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Mount::new(
        &tmp.path().join("disk"),
        &["-t", "tmpfs", "-o", "size=12m", "tmpfs"],
    ) else {
        return;
    };
    let data = disk.dir.join("data");
    let (port, status) = (free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[],
        "min_free_bytes = 0\nmin_free_percent = 0.0",
        "",
    );
    let series: Vec<Vec<PathBuf>> = (0..2)
        .map(|i| dicom_files(&phantom(tmp.path(), 4550 + i, 30)))
        .collect();
    let serve = Serve::start(&cfg, port, &data);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut refused = Vec::new();
    for files in &series {
        // Without halting at the first refusal: every instance meets the full disk.
        let out = run(std::process::Command::new(STORESCU)
            .args(["-nh", "-aet", "CT01", "-aec", "CACD", "-v", "127.0.0.1"])
            .arg(port.to_string())
            .args(files));
        let log = text(&out);
        let mut current = None;
        for line in log.lines() {
            if let Some(i) = line.find("Sending file: ") {
                current = Some(PathBuf::from(line[i + 14..].trim()));
            } else if line.contains("Received Store Response") {
                if let Some(f) = current.take() {
                    if line.contains("Success") {
                        acked.insert(sop_uid(&f));
                    } else {
                        refused.push(line.to_string());
                    }
                }
            }
        }
    }
    let part = files_below(&data.join("tmp"));
    eprintln!(
        "disk full (writes): {} acknowledged, {} refused; temp files left: {}",
        acked.len(),
        refused.len(),
        part.len()
    );
    assert!(
        !refused.is_empty(),
        "a 12 MiB disk took 2 series of 30 slices"
    );
    assert!(
        refused.iter().all(|s| s.contains("OutOfResources")),
        "{refused:?}"
    );
    assert!(
        part.is_empty(),
        "temp files left after failed writes: {part:?}"
    );
    assert!(
        acked.is_subset(&stored_uids(&data)),
        "acknowledged instances missing"
    );
    assert!(echo(port), "the daemon stopped answering");
    serve.terminate();
}
