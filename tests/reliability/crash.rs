//! Crash: series sent while the daemon is SIGKILLed at random moments (receiving, scoring,
//! forwarding) and restarted at once. After every kill, before the restart, every instance
//! acknowledged so far must be on disk; at the end every series is delivered and every result
//! of its final version is at the receiver.
//!
//! Scorer crash: the scoring worker (a child process) is SIGKILLed mid-study; the daemon goes
//! on receiving, the study is scored again, and a study that kills the worker every time is
//! failed after `max_scoring_attempts` with the reason, without holding up the next one.

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
    // The kills land in scoring too, several times on the same series, with the default
    // poison-study guard (3 scorer crashes): a kill of the whole daemon is not a scorer crash
    // and must not count (it did, before scoring moved into a child process).
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        "",
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

/// Waits until the daemon has a series in `scoring` and a live worker, lets the worker get
/// into the study, and sends it `signal` (`-KILL`, `-STOP`). Returns the worker's pid.
fn signal_worker_mid_study(serve: &Serve, status: u16, signal: &str) -> u32 {
    let mut victim = None;
    assert!(
        wait_until(Duration::from_secs(120), || {
            let scoring = queue_counts(status).get("scoring").copied().unwrap_or(0) > 0;
            victim = children(serve.child.id()).first().copied();
            scoring && victim.is_some()
        }),
        "no scoring run with a worker: {:?}",
        queue_counts(status)
    );
    let pid = victim.unwrap();
    // Let the worker get into the study (it answers nothing until it is done).
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    pid
}

#[test]
fn a_scorer_crash_costs_one_attempt_never_the_daemon() {
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
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let serve = Serve::start(&cfg, port, &data);

    // One crash: scored again and delivered.
    let first = dicom_files(&phantom_whole_heart(tmp.path(), 4300));
    assert_eq!(send(port, &first).acked.len(), first.len());
    let killed = signal_worker_mid_study(&serve, status, "-KILL");
    assert!(
        wait_until(Duration::from_secs(300), || delivered(status) == 1),
        "not delivered after one worker crash: {:?}",
        queue_counts(status)
    );
    assert!(serve.log_contains("the scorer crashed on this series"));
    assert!(serve.log_contains("scoring worker restarted"));
    assert!(!children(serve.child.id()).contains(&killed));

    // A study that kills the worker every time: failed after 3 crashes, with the reason,
    // while the daemon keeps receiving.
    let poison = dicom_files(&phantom_whole_heart(tmp.path(), 4301));
    assert_eq!(send(port, &poison).acked.len(), poison.len());
    for _ in 0..3 {
        let pid = signal_worker_mid_study(&serve, status, "-KILL");
        assert!(wait_until(Duration::from_secs(30), || !children(
            serve.child.id()
        )
        .contains(&pid)));
    }
    assert!(
        wait_until(Duration::from_secs(60), || queue_counts(status)
            .get("failed")
            == Some(&1)),
        "the poison study was not failed: {:?}",
        queue_counts(status)
    );
    let reason = status_json(status)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("crashed 3 times"),
        "reason not shown: {reason}"
    );
    let next = dicom_files(&phantom_whole_heart(tmp.path(), 4302));
    assert_eq!(
        send(port, &next).acked.len(),
        next.len(),
        "receiving goes on"
    );
    assert!(
        wait_until(Duration::from_secs(300), || delivered(status) == 2),
        "the study after the poison one was not delivered: {:?}",
        queue_counts(status)
    );
    serve.terminate();
    let copies = receiver.copies();
    assert!(final_result_uids(&data)
        .iter()
        .all(|u| copies.contains_key(u)));
}

#[test]
fn a_hung_scorer_is_stopped_at_the_time_limit_and_the_study_scored_again() {
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
        "[pipeline]\nscore_timeout_s = 20\n",
    );
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let serve = Serve::start(&cfg, port, &data);
    let files = dicom_files(&phantom_whole_heart(tmp.path(), 4310));
    assert_eq!(send(port, &files).acked.len(), files.len());
    // SIGSTOP: the worker neither answers nor dies, as a wedged inference engine would.
    let pid = signal_worker_mid_study(&serve, status, "-STOP");
    assert!(
        wait_until(Duration::from_secs(300), || delivered(status) == 1),
        "not delivered after a hung worker: {:?}",
        queue_counts(status)
    );
    assert!(serve.log_contains("scoring ran past the time limit"));
    assert!(
        !children(serve.child.id()).contains(&pid),
        "the hung worker was stopped"
    );
    serve.terminate();
    assert!(final_result_uids(&data)
        .iter()
        .all(|u| receiver.copies().contains_key(u)));
}
