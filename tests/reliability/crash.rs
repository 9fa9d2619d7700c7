//! Crash: series sent while the daemon is SIGKILLed at random moments (receiving, scoring,
//! forwarding) and restarted at once. After every kill, before the restart, every instance
//! acknowledged so far must be on disk; at the end every series is delivered and every result
//! of its final version is at the receiver.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cacd::queue::SeriesState;
use cacd_e2e::*;

use crate::support::*;

#[derive(Default)]
struct Progress {
    acked: BTreeSet<String>,
    sending: bool,
    done: bool,
    runs: usize,
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let mut rng = Rng::new(seed("crash"));
    let n_series = rounds(3, 8);
    let kills = rounds(5, 40);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    // The kills here land in scoring on purpose, several times on the same series; the guard
    // against a study that crashes the scorer (failed after 3 interrupted runs by default)
    // cannot tell them from such crashes and would fail that series. Allow every kill.
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        &format!("[pipeline]\nmax_scoring_attempts = {}\n", kills + 2),
    );
    let series: Vec<Vec<PathBuf>> = (0..n_series)
        .map(|i| dicom_files(&phantom(tmp.path(), 4100 + i as u64, 30)))
        .collect();
    let total: usize = series.iter().map(Vec::len).sum();
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));

    // The scanner: sends each series until every instance of it was acknowledged, resending
    // the whole series after a failed association (as a scanner's retry does).
    let progress = Arc::new(Mutex::new(Progress::default()));
    let sender = {
        let (progress, series) = (progress.clone(), series.clone());
        std::thread::spawn(move || {
            for files in &series {
                let want: BTreeSet<String> = files.iter().map(|f| sop_uid(f)).collect();
                loop {
                    progress.lock().unwrap().sending = true;
                    let sent = send(port, files);
                    let mut p = progress.lock().unwrap();
                    p.sending = false;
                    p.runs += 1;
                    p.acked.extend(sent.acked.iter().map(|f| sop_uid(f)));
                    if want.is_subset(&p.acked) {
                        break;
                    }
                    drop(p);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            progress.lock().unwrap().done = true;
        })
    };

    let mut serve = Serve::start(&cfg, port, &data);
    let mut at_kill: Vec<String> = Vec::new();
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(4000)));
        serve.kill();
        // The sender's association dropped with the daemon; let it finish its run so its
        // acknowledgements are all counted, then check them against the disk.
        let t = Instant::now();
        while progress.lock().unwrap().sending && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let acked = progress.lock().unwrap().acked.clone();
        let on_disk = stored_uids(&data);
        let missing: Vec<_> = acked.difference(&on_disk).collect();
        assert!(
            missing.is_empty(),
            "kill {k}: {} acknowledged instances not on disk",
            missing.len()
        );
        let mut counts: Vec<String> = states(&data).iter().map(|s| format!("{s:?}")).collect();
        counts.sort();
        at_kill.push(format!("{} acked, series {:?}", acked.len(), counts));
        serve = Serve::start(&cfg, port, &data);
    }
    sender.join().expect("sender");
    let runs = progress.lock().unwrap().runs;

    // Everything delivered in the end.
    assert!(
        wait_until(Duration::from_secs(600), || delivered(status)
            == n_series as u64),
        "not all delivered: {:?}",
        status_json(status).map(|v| v["queue"].clone())
    );
    std::thread::sleep(Duration::from_secs(2));
    serve.terminate();
    assert_eq!(progress.lock().unwrap().acked.len(), total);
    assert_eq!(
        stored_uids(&data).len(),
        total,
        "every instance stored once"
    );
    assert!(states(&data).iter().all(|s| *s == SeriesState::Delivered));
    let copies = receiver.copies();
    let wanted = final_result_uids(&data);
    let missing: Vec<_> = wanted.iter().filter(|u| !copies.contains_key(*u)).collect();
    assert!(missing.is_empty(), "results never received: {missing:?}");
    let resent = copies.values().filter(|&&n| n > 1).count();
    eprintln!(
        "crash: {n_series} series, {total} instances, {kills} kills, {runs} storescu runs; \
         at each kill: {at_kill:?}; {} result objects at the receiver ({} of the final versions), \
         {resent} received more than once (a resend after a kill: same UID, replaces)",
        copies.len(),
        wanted.len()
    );
}
