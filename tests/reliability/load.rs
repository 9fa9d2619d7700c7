//! Load: 8 scanners at once, each sending several studies on its own associations; all
//! received, scored and delivered. Reports p50/p99 C-STORE response time (DCMTK's own log
//! timestamps), peak RSS of the daemon, and checks the log carries no patient identifiers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cacd_e2e::*;

use crate::support::*;

#[test]
fn eight_concurrent_senders_are_all_received_scored_and_delivered() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let senders = 8;
    let per_sender = rounds(1, 4);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "max_associations = 8\nmin_free_bytes = 1048576\nmin_free_percent = 0.0",
        "",
    );
    let studies: Vec<Vec<Vec<PathBuf>>> = (0..senders)
        .map(|s| {
            (0..per_sender)
                .map(|k| dicom_files(&phantom(tmp.path(), 5000 + (s * 100 + k) as u64, 30)))
                .collect()
        })
        .collect();
    let mut patient: Vec<String> = Vec::new();
    for f in studies.iter().flatten().map(|s| &s[0]) {
        for tag in [
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
        ] {
            if let Some(v) = dcm_value(f, tag).filter(|v| v.len() >= 6) {
                patient.push(v);
            }
        }
    }
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let serve = Serve::start(&cfg, port, &data);
    let t = Instant::now();
    let handles: Vec<_> = studies
        .into_iter()
        .map(|mine| {
            std::thread::spawn(move || {
                let mut out = Sent::default();
                for files in mine {
                    let s = send(port, &files);
                    out.acked.extend(s.acked);
                    out.refused.extend(s.refused);
                    out.response_ms.extend(s.response_ms);
                }
                out
            })
        })
        .collect();
    let mut all = Sent::default();
    for h in handles {
        let s = h.join().expect("sender");
        all.acked.extend(s.acked);
        all.refused.extend(s.refused);
        all.response_ms.extend(s.response_ms);
    }
    let received_in = t.elapsed();
    let n_series = (senders * per_sender) as u64;
    assert!(
        all.refused.is_empty(),
        "refused under load: {:?}",
        all.refused
    );
    assert_eq!(all.acked.len(), n_series as usize * 30);
    assert!(
        wait_until(Duration::from_secs(1800), || delivered(status) == n_series),
        "not all delivered: {:?}",
        status_json(status).map(|v| v["queue"].clone())
    );
    let done_in = t.elapsed();
    // The daemon and its scoring worker (a child process) are measured apart.
    let peak = peak_rss(serve.child.id()).unwrap_or(0);
    let worker_peak: u64 = children(serve.child.id())
        .into_iter()
        .filter_map(peak_rss)
        .max()
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let log = serve.log.lock().unwrap().join("\n");
    serve.terminate();
    for v in &patient {
        assert!(!log.contains(v.as_str()), "the log names a patient: {v}");
    }
    let copies = receiver.copies();
    assert!(final_result_uids(&data)
        .iter()
        .all(|u| copies.contains_key(u)));
    assert_eq!(stored_uids(&data).len(), n_series as usize * 30);
    eprintln!(
        "load: {senders} senders x {per_sender} studies x 30 instances; received in {:.1} s, \
         all delivered in {:.1} s; C-STORE response p50 {:.1} ms, p99 {:.1} ms (n = {}); \
         peak RSS {} MiB (daemon), {} MiB (scoring worker)",
        received_in.as_secs_f64(),
        done_in.as_secs_f64(),
        percentile(&all.response_ms, 50.0),
        percentile(&all.response_ms, 99.0),
        all.response_ms.len(),
        peak >> 20,
        worker_peak >> 20
    );
}
