//! Outage: the PACS is down while studies arrive, then comes back. Everything is delivered
//! once it is up; attempts per minute stay bounded by the capped backoff; the status port shows
//! the destination unreachable and the series waiting while it is down.

use std::time::{Duration, Instant};

use cacd_e2e::*;

use crate::support::*;

#[test]
fn pacs_outage_delays_results_never_drops_them_and_shows_on_the_status_port() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let down_for = Duration::from_secs(rounds(45, 600) as u64);
    let n_series = rounds(2, 6);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        "[health]\nprobe_interval_s = 2\npacs_unreachable_s = 10\n",
    );
    let serve = Serve::start(&cfg, port, &data);
    let t0 = Instant::now();
    for i in 0..n_series {
        let files = dicom_files(&phantom(tmp.path(), 4800 + i as u64, 30));
        let sent = send(port, &files);
        assert_eq!(sent.acked.len(), files.len());
    }
    // While it is down: unreachable on the status port, series waiting, box degraded.
    assert!(
        wait_until(Duration::from_secs(300), || status_json(status)
            .is_some_and(|v| {
                v["destinations"][0]["reachable"] == serde_json::Value::Bool(false)
                    && v["queue"]["forwarding"].as_u64() == Some(n_series as u64)
            })),
        "the outage is not visible: {:?}",
        status_json(status)
    );
    assert!(
        wait_until(Duration::from_secs(60), || status_json(status)
            .is_some_and(|v| v["health"]["state"] == "degraded")),
        "not degraded while the PACS is unreachable"
    );
    let left = down_for.saturating_sub(t0.elapsed());
    std::thread::sleep(left);
    let outage = t0.elapsed();
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    assert!(
        wait_until(Duration::from_secs(120), || delivered(status)
            == n_series as u64),
        "not delivered after the outage"
    );
    let attempts: Vec<u64> = status_json(status)
        .map(|v| {
            v["destinations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["attempts"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(1));
    serve.terminate();
    let q = cacd::queue::Queue::open(&data).unwrap();
    let mut per_series = Vec::new();
    for s in q.all_series().unwrap() {
        for d in q.deliveries(&s.series_uid).unwrap() {
            per_series.push(d.attempts);
        }
    }
    drop(q);
    // Backoff 1, 2, 4, 4 ... s: at most one attempt per second at first, then one per 4 s.
    let minutes = outage.as_secs_f64() / 60.0;
    let bound = (4.0 + outage.as_secs_f64() / 4.0).ceil() as u32 + 2;
    assert!(
        per_series.iter().all(|&a| a >= 2 && a <= bound),
        "attempts {per_series:?} over {:.0} s (bound {bound})",
        outage.as_secs_f64()
    );
    let copies = receiver.copies();
    assert!(final_result_uids(&data)
        .iter()
        .all(|u| copies.contains_key(u)));
    eprintln!(
        "outage: {:.0} s down, {n_series} series; attempts per series {per_series:?} ({:.1}/min), \
         destination attempts on the status port {attempts:?}; all delivered",
        outage.as_secs_f64(),
        per_series.iter().copied().max().unwrap_or(0) as f64 / minutes
    );
}

/// Result files lost from the outbox while the PACS is down (a power cut that took them, a
/// hand that cleaned the folder): the series is scored again from its stored instances — not
/// failed — and, once the PACS is back, delivered with the same result UIDs.
#[test]
fn result_files_lost_before_delivery_are_scored_again_and_delivered() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        "",
    );
    let serve = Serve::start(&cfg, port, &data);
    let files = dicom_files(&phantom(tmp.path(), 4850, 30));
    assert_eq!(send(port, &files).acked.len(), files.len());
    assert!(
        wait_until(Duration::from_secs(300), || status_json(status)
            .is_some_and(|v| v["queue"]["forwarding"].as_u64() == Some(1))),
        "not waiting for the PACS: {:?}",
        status_json(status)
    );
    // Not Store::open here: it would clear the running daemon's temp folder.
    let dcm_below = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        files_below(dir)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "dcm"))
            .collect()
    };
    let outbox = data.join("outbox");
    let before: std::collections::BTreeSet<String> =
        dcm_below(&outbox).iter().map(|f| sop_uid(f)).collect();
    assert!(before.len() >= 2, "results in the outbox: {before:?}");
    for f in dcm_below(&outbox) {
        std::fs::remove_file(f).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(120), || dcm_below(&outbox).len()
            == before.len()),
        "the lost results were not written again"
    );
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    assert!(
        wait_until(Duration::from_secs(120), || delivered(status) == 1),
        "not delivered: {:?}",
        status_json(status)
    );
    std::thread::sleep(Duration::from_secs(1));
    serve.terminate();
    assert_eq!(states(&data), vec![cacd::queue::SeriesState::Delivered]);
    let after = final_result_uids(&data);
    assert_eq!(after, before, "scored again with the same result UIDs");
    let copies = receiver.copies();
    assert!(
        after.iter().all(|u| copies.get(u) == Some(&1)),
        "{copies:?}"
    );
    let q = cacd::queue::Queue::open(&data).unwrap();
    let rec = q.all_series().unwrap().remove(0);
    assert_eq!((rec.version, rec.scoring_attempts), (1, 1));
}
