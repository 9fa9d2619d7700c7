//! Retention pruning (`daemon::prune`): delivered series older than the retention go, with
//! their instances and results; nothing undelivered is ever touched, and a delivered series
//! younger than the retention stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cacd::daemon::prune;
use cacd::queue::{Queue, ScoringEnd, SeriesState};
use cacd::store::Store;

fn files_in(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        std::fs::write(dir.join(n), b"x").unwrap();
    }
}

/// Walks a series from first instance to `delivered` (no destinations: results stay in the
/// outbox), with its instance and result files on disk.
fn delivered(q: &Queue, store: &Store, study: &str, series: &str) -> (PathBuf, PathBuf) {
    q.record_instance(study, series, &format!("{series}.1"))
        .unwrap();
    let dirs = (
        store.series_dir(study, series),
        store.outbox_series_dir(study, series),
    );
    files_in(&dirs.0, &["1.dcm"]);
    files_in(
        &dirs.1,
        &["seg.dcm", "sr.dcm", "summary.dcm", "result.json"],
    );
    assert_eq!(q.complete_quiet(Duration::ZERO).unwrap(), vec![series]);
    let s = q.start_scoring().unwrap().unwrap();
    let end = ScoringEnd::Scored {
        results: vec![dirs.1.join("seg.dcm")],
        agatston_total: Some(1.0),
        not_scored: None,
        timings: None,
    };
    assert!(q.finish_scoring(series, s.generation, end).unwrap());
    q.start_forwarding(&[]).unwrap();
    assert_eq!(
        q.series(series).unwrap().unwrap().state,
        SeriesState::Delivered
    );
    dirs
}

#[test]
fn prune_removes_old_delivered_series_and_never_anything_undelivered() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path()).unwrap();
    let store = Store::open(tmp.path()).unwrap();

    let (old_in, old_out) = delivered(&q, &store, "1.2.3", "1.2.3.1");
    // Same study, still receiving: its files and the study folder must stay.
    q.record_instance("1.2.3", "1.2.3.2", "1.2.3.2.1").unwrap();
    let receiving = store.series_dir("1.2.3", "1.2.3.2");
    files_in(&receiving, &["1.dcm"]);

    // A retention longer than the series' age keeps it.
    assert_eq!(prune(&q, &store, Duration::from_secs(3600)).unwrap(), 0);
    assert!(old_in.join("1.dcm").exists() && old_out.join("sr.dcm").exists());

    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(prune(&q, &store, Duration::from_millis(10)).unwrap(), 1);
    assert!(!old_in.exists(), "delivered instances removed");
    assert!(!old_out.exists(), "delivered results removed");
    assert!(q.series("1.2.3.1").unwrap().is_none(), "queue forgot it");
    assert!(!q.has_instance("1.2.3.1.1").unwrap());
    assert!(receiving.join("1.dcm").exists(), "undelivered series kept");
    assert!(
        store.study_dir("1.2.3").exists(),
        "study with a live series kept"
    );
    assert_eq!(
        q.series("1.2.3.2").unwrap().unwrap().state,
        SeriesState::Receiving
    );
    // Undelivered series are never prunable, whatever their age.
    assert_eq!(prune(&q, &store, Duration::ZERO).unwrap(), 0);
    assert!(receiving.join("1.dcm").exists());
}

#[test]
fn prune_for_space_removes_delivered_series_only_while_the_disk_is_short() {
    use cacd::housekeeping::prune_for_space;
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path()).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let (a_in, _) = delivered(&q, &store, "1.2.4", "1.2.4.1");
    std::thread::sleep(Duration::from_millis(5));
    let (b_in, _) = delivered(&q, &store, "1.2.5", "1.2.5.1");
    q.record_instance("1.2.6", "1.2.6.1", "1.2.6.1.1").unwrap();
    let receiving = store.series_dir("1.2.6", "1.2.6.1");
    files_in(&receiving, &["1.dcm"]);

    // Room under the watermark: nothing goes, however old.
    assert_eq!(prune_for_space(&q, &store, 0, 0.0).unwrap(), 0);
    assert!(a_in.exists() && b_in.exists());

    // A watermark no disk meets: every delivered series goes, the undelivered one stays.
    assert_eq!(prune_for_space(&q, &store, u64::MAX, 0.0).unwrap(), 2);
    assert!(!a_in.exists() && !b_in.exists());
    assert!(receiving.join("1.dcm").exists(), "undelivered series kept");
    assert_eq!(
        q.series("1.2.6.1").unwrap().unwrap().state,
        SeriesState::Receiving
    );
    assert_eq!(prune_for_space(&q, &store, u64::MAX, 0.0).unwrap(), 0);
}

/// Walks a series to the end of scoring with `end` (rejected or failed).
fn scored_as(q: &Queue, store: &Store, study: &str, series: &str, end: ScoringEnd) -> PathBuf {
    q.record_instance(study, series, &format!("{series}.1"))
        .unwrap();
    let dir = store.series_dir(study, series);
    files_in(&dir, &["1.dcm"]);
    assert_eq!(q.complete_quiet(Duration::ZERO).unwrap(), vec![series]);
    let s = q.start_scoring().unwrap().unwrap();
    assert!(q.finish_scoring(series, s.generation, end).unwrap());
    dir
}

#[test]
fn rejected_series_are_pruned_like_delivered_ones_and_failed_ones_are_kept() {
    // Every study brings a localizer the scanner sends along; it is rejected (not
    // scoreable) and owes nobody a result. Kept forever, such series would fill the disk.
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path()).unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let rejected = scored_as(
        &q,
        &store,
        "1.3.1",
        "1.3.1.1",
        ScoringEnd::Rejected {
            reason: "no axial series".into(),
        },
    );
    let failed = scored_as(
        &q,
        &store,
        "1.3.2",
        "1.3.2.1",
        ScoringEnd::Failed {
            reason: "writing results: disk error".into(),
        },
    );
    assert_eq!(prune(&q, &store, Duration::from_secs(3600)).unwrap(), 0);
    assert!(rejected.join("1.dcm").exists());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(prune(&q, &store, Duration::from_millis(10)).unwrap(), 1);
    assert!(
        !rejected.exists(),
        "rejected series removed after the retention"
    );
    assert!(q.series("1.3.1.1").unwrap().is_none());
    assert!(
        failed.join("1.dcm").exists(),
        "a failed series waits for an operator"
    );
    assert_eq!(
        q.series("1.3.2.1").unwrap().unwrap().state,
        SeriesState::Failed
    );

    // For space too, and still never the failed one.
    let rejected2 = scored_as(
        &q,
        &store,
        "1.3.3",
        "1.3.3.1",
        ScoringEnd::Rejected {
            reason: "gantry tilt".into(),
        },
    );
    assert_eq!(
        cacd::housekeeping::prune_for_space(&q, &store, u64::MAX, 0.0).unwrap(),
        1
    );
    assert!(!rejected2.exists());
    assert!(failed.join("1.dcm").exists());
}
