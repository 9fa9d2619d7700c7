//! Housekeeping: frees disk by removing finished series (instances and results): delivered
//! ones, and rejected ones (not scoreable, such as the localizer every study brings along;
//! they owe nobody a result) — after the retention period, and oldest-finished first whenever
//! free space falls under the receive watermark, so a full disk costs old, finished studies
//! before it costs a refusal. Nothing undelivered is ever removed, nor a failed series (it
//! waits for an operator), nor a series whose instances are arriving: a scanner resending a
//! delivered study is answered "already stored" for each instance it resends, and removing the
//! series under it would drop those acknowledged instances and turn the rest of the resend
//! into a new, partial series (`Store::arriving`).

use std::path::PathBuf;
use std::time::Duration;

use crate::queue::{Queue, QueueError, SeriesRecord};
use crate::store::{uid_hash, Store};
use tracing::debug;

/// Removes series finished longer than `retention` ago. Returns how many series went.
pub fn prune(queue: &Queue, store: &Store, retention: Duration) -> Result<usize, QueueError> {
    let _no_admissions = store.pruning();
    let mut n = 0;
    for rec in queue.prunable(retention)? {
        n += usize::from(remove_finished(queue, store, &rec)?);
    }
    Ok(n)
}

/// Removes finished series, the longest-finished first, until the store has room under the
/// watermark or none is left. Returns how many series went.
pub fn prune_for_space(
    queue: &Queue,
    store: &Store,
    min_free_bytes: u64,
    min_free_percent: f64,
) -> Result<usize, QueueError> {
    if store.has_room(min_free_bytes, min_free_percent) {
        return Ok(0);
    }
    let _no_admissions = store.pruning();
    let mut finished = queue.prunable(Duration::ZERO)?;
    finished.sort_by_key(|r| r.finished_ms());
    let mut n = 0;
    for rec in finished {
        if store.has_room(min_free_bytes, min_free_percent) {
            break;
        }
        n += usize::from(remove_finished(queue, store, &rec)?);
    }
    Ok(n)
}

/// Files first, then the queue record: a crash in between leaves a finished record without
/// files, which the next prune removes, rather than files no record points to. The caller holds
/// `Store::pruning`, so the state read here cannot change before the record goes, and no
/// instance is being admitted: a series that had one within the assembly window (new or a
/// resend, `Store::arrived`) is kept, as its sender may still be sending the rest.
fn remove_finished(queue: &Queue, store: &Store, rec: &SeriesRecord) -> Result<bool, QueueError> {
    match queue.series(&rec.series_uid)? {
        Some(cur) if cur.finished_ms().is_some() => {}
        _ => return Ok(false),
    }
    if store.arriving(&rec.series_uid) {
        debug!(series_hash = %uid_hash(&rec.series_uid), "finished series kept: its instances are arriving");
        return Ok(false);
    }
    let series_dir = store.series_dir(&rec.study_uid, &rec.series_uid);
    let outbox = store.outbox_series_dir(&rec.study_uid, &rec.series_uid);
    let _ = std::fs::remove_dir_all(&series_dir);
    let _ = std::fs::remove_dir_all(&outbox);
    // Study folders go when their last series went (remove_dir refuses a non-empty one).
    for dir in [
        store.study_dir(&rec.study_uid),
        outbox.parent().map(PathBuf::from).unwrap_or_default(),
    ] {
        let _ = std::fs::remove_dir(dir);
    }
    queue.remove_series(&rec.series_uid)
}
