//! The durable work queue (redb): one record per series and one per (series, destination).
//!
//! A series moves receiving → complete → scoring → scored → forwarding → delivered, or ends in
//! rejected / failed with a reason. Every transition is one write transaction committed with
//! `Durability::Immediate`, so after a crash each series resumes exactly where it stood:
//! scoring is redone with the same result version (same result UIDs), forwarding resends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SERIES: TableDefinition<&str, &str> = TableDefinition::new("series");
const INSTANCES: TableDefinition<&str, &str> = TableDefinition::new("instances");
const DELIVERIES: TableDefinition<&str, &str> = TableDefinition::new("deliveries");

/// A series that crashed (or hung) the scoring worker this many times is failed rather than
/// retried forever: a study that kills the scorer must not stall the queue behind it. Only
/// crashes the daemon saw count (the worker is a child process, `worker`); a power cut or a
/// SIGKILL of the whole service costs nothing, the run is simply redone after restart.
/// `pipeline.max_scoring_attempts` changes it.
pub const MAX_SCORING_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database: {0}")]
    Db(#[from] redb::Error),
    #[error("queue record {key}: {source}")]
    Record {
        key: String,
        source: serde_json::Error,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self { QueueError::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeriesState {
    Receiving,
    Complete,
    Scoring,
    Scored,
    Forwarding,
    Delivered,
    Rejected,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesRecord {
    pub study_uid: String,
    pub series_uid: String,
    pub state: SeriesState,
    /// Distinct instances received.
    pub instances: u64,
    pub last_instance_ms: u64,
    /// Bumped by every new instance: a scoring run started at an older generation is stale.
    pub generation: u64,
    /// Result version of the current (or last) scoring run; 0 before the first.
    pub version: u32,
    /// Scoring-worker crashes (or hangs) on the current version.
    pub scoring_attempts: u32,
    /// Why the series was rejected or failed.
    pub reason: Option<String>,
    /// Result DICOM files of the current version, to forward.
    pub results: Vec<PathBuf>,
    /// Headline of the current result (for logs and the status port).
    pub agatston_total: Option<f64>,
    pub updated_ms: u64,
    pub delivered_ms: Option<u64>,
    /// The latest result version of which a destination acknowledged an object (or that was
    /// kept in the outbox with no destination): what a PACS may hold.
    #[serde(default)]
    pub sent_version: Option<u32>,
    /// The version the current one supersedes: `sent_version` when this version's scoring
    /// started (its results reference that version's SR and say so).
    #[serde(default)]
    pub supersedes: Option<u32>,
}

impl SeriesRecord {
    /// When a series was finished with nothing left to do: delivered, or rejected (not
    /// scoreable, e.g. a localizer the scanner sent with the study: no result to deliver).
    /// Finished series are what housekeeping may remove; `failed` ones wait for an operator.
    pub fn finished_ms(&self) -> Option<u64> {
        match self.state {
            SeriesState::Delivered => self.delivered_ms,
            SeriesState::Rejected => Some(self.updated_ms),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub series_uid: String,
    pub destination: String,
    pub version: u32,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub updated_ms: u64,
    /// Result files of this version the destination has acknowledged (not sent again).
    #[serde(default)]
    pub sent: Vec<PathBuf>,
    /// Result files it refused for good, each with why (sent again only on an operator's
    /// retry).
    #[serde(default)]
    pub refused: Vec<(PathBuf, String)>,
}

impl Delivery {
    /// The result files still to send to this destination.
    pub fn to_send(&self, results: &[PathBuf]) -> Vec<PathBuf> {
        results
            .iter()
            .filter(|f| !self.sent.contains(f) && !self.refused.iter().any(|(r, _)| r == *f))
            .cloned()
            .collect()
    }
}

/// Which files one attempt delivered and which the destination refused.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub delivered: Vec<PathBuf>,
    pub refused: Vec<(PathBuf, String)>,
}

/// What an operator's retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retried {
    /// The refused deliveries go out again.
    Forwarding,
    /// The series is scored again (same version, so the same result UIDs).
    Scoring,
}

/// Why a retry was not done.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no series with this hash")]
    NotFound,
    #[error("the series is {0:?}, not failed")]
    NotFailed(SeriesState),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered,
    /// Try again at `retry_at_ms`.
    Transient {
        error: String,
        retry_at_ms: u64,
    },
    Permanent {
        error: String,
    },
}

/// What a scoring run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ScoringEnd {
    Scored {
        results: Vec<PathBuf>,
        agatston_total: Option<f64>,
        /// Set when the quality gate refused the study: its results (SR, summary) say why
        /// and carry no score.
        #[serde(default)]
        not_scored: Option<String>,
        /// The pipeline's stage timings (for the latency metrics; no file is re-read for them).
        #[serde(default)]
        timings: Option<crate::result::Timings>,
    },
    Rejected {
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// The scoring worker died or hung on this series: retried, and counted against
    /// `max_scoring_attempts`.
    Crashed {
        reason: String,
    },
    /// Scoring failed on our side (engine, model output, encoder): retried like a crash and
    /// counted against `max_scoring_attempts`, then `failed` with the reason — held for a
    /// person, never taken for the study's fault.
    Error {
        reason: String,
    },
}

/// Counts one more scoring attempt on the series' current version: back to (or left in)
/// `scoring` with `retrying(n, max)` as the reason while attempts are left, else `failed` with
/// `failing(n)`. Returns whether the series failed.
fn count_scoring_attempt(
    cur: &mut SeriesRecord,
    max_attempts: u32,
    retrying: impl FnOnce(u32, u32) -> String,
    failing: impl FnOnce(u32) -> String,
) -> bool {
    cur.scoring_attempts += 1;
    let n = cur.scoring_attempts;
    if n < max_attempts {
        cur.state = SeriesState::Scoring;
        cur.reason = Some(retrying(n, max_attempts));
        false
    } else {
        cur.state = SeriesState::Failed;
        cur.reason = Some(failing(n));
        true
    }
}

/// Handle to the queue; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Queue {
    db: Arc<Database>,
    max_scoring_attempts: u32,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn delivery_key(series_uid: &str, destination: &str) -> String {
    format!("{series_uid}\n{destination}")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T, QueueError> {
    serde_json::from_str(v).map_err(|source| QueueError::Record {
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<String, QueueError> {
    serde_json::to_string(v).map_err(|source| QueueError::Record {
        key: key.to_string(),
        source,
    })
}

/// Outcome of recording one received instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The same SOP Instance UID was already stored in the same series: nothing changes.
    Duplicate,
    /// The UIDs clash with what is stored: nothing changes, and the instance must be refused
    /// (answering Success would drop it silently).
    Conflict(Conflict),
}

/// A received instance whose UIDs clash with stored ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Its SOP Instance UID is already stored in another series (of this or another study).
    #[error("SOP Instance UID already stored in another series")]
    InstanceElsewhere { stored_series_uid: String },
    /// Its Series Instance UID is already stored under another study.
    #[error("Series Instance UID already stored under another study")]
    SeriesElsewhere { stored_study_uid: String },
}

/// Whether (study, series, sop) is new, a resend, or clashes with what `series`/`instances`
/// hold.
fn admission(
    series: &impl ReadableTable<&'static str, &'static str>,
    instances: &impl ReadableTable<&'static str, &'static str>,
    study_uid: &str,
    series_uid: &str,
    sop_instance_uid: &str,
) -> Result<Recorded, QueueError> {
    if let Some(owner) = instances.get(sop_instance_uid)? {
        let owner = owner.value();
        if owner != series_uid {
            return Ok(Recorded::Conflict(Conflict::InstanceElsewhere {
                stored_series_uid: owner.to_string(),
            }));
        }
    }
    if let Some(rec) = Queue::get_series(series, series_uid)? {
        if rec.study_uid != study_uid {
            return Ok(Recorded::Conflict(Conflict::SeriesElsewhere {
                stored_study_uid: rec.study_uid,
            }));
        }
    }
    Ok(match instances.get(sop_instance_uid)? {
        Some(_) => Recorded::Duplicate,
        None => Recorded::New,
    })
}

impl Queue {
    /// Opens (creating) `data_dir/queue.redb`.
    pub fn open(data_dir: &Path) -> Result<Queue, QueueError> {
        let db = Database::create(data_dir.join("queue.redb"))?;
        let q = Queue {
            db: Arc::new(db),
            max_scoring_attempts: MAX_SCORING_ATTEMPTS,
        };
        // Create the tables so read transactions never meet a missing one.
        q.write(|_, _, _| Ok(()))?;
        Ok(q)
    }

    /// How many interrupted scoring runs fail a series (default [`MAX_SCORING_ATTEMPTS`]).
    pub fn with_max_scoring_attempts(mut self, n: u32) -> Queue {
        self.max_scoring_attempts = n.max(1);
        self
    }

    /// The database, shared with the report outbox (its own tables in the same file).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Runs `f` in one durable write transaction over the three tables.
    fn write<R>(
        &self,
        f: impl FnOnce(
            &mut redb::Table<&str, &str>,
            &mut redb::Table<&str, &str>,
            &mut redb::Table<&str, &str>,
        ) -> Result<R, QueueError>,
    ) -> Result<R, QueueError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let r = {
            let mut series = tx.open_table(SERIES)?;
            let mut instances = tx.open_table(INSTANCES)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            f(&mut series, &mut instances, &mut deliveries)?
        };
        tx.commit()?;
        Ok(r)
    }

    fn get_series(
        table: &impl ReadableTable<&'static str, &'static str>,
        series_uid: &str,
    ) -> Result<Option<SeriesRecord>, QueueError> {
        match table.get(series_uid)? {
            Some(v) => Ok(Some(decode(series_uid, v.value())?)),
            None => Ok(None),
        }
    }

    fn put_series(
        table: &mut redb::Table<&str, &str>,
        rec: &mut SeriesRecord,
    ) -> Result<(), QueueError> {
        rec.updated_ms = now_ms();
        let v = encode(&rec.series_uid, rec)?;
        table.insert(rec.series_uid.as_str(), v.as_str())?;
        Ok(())
    }

    fn put_delivery(
        table: &mut redb::Table<&str, &str>,
        d: &mut Delivery,
    ) -> Result<(), QueueError> {
        d.updated_ms = now_ms();
        let key = delivery_key(&d.series_uid, &d.destination);
        let v = encode(&key, d)?;
        table.insert(key.as_str(), v.as_str())?;
        Ok(())
    }

    /// Records a stored instance. A new instance (re)opens its series for receiving, which
    /// after the quiet period leads to a (new) scoring run.
    ///
    /// One transaction per instance. Committing concurrent associations' records together
    /// (group commit) was built and measured: no gain on ext4, whose journal already merges
    /// concurrent fsyncs into one commit (BENCHMARKS.md, "Receive throughput").
    pub fn record_instance(
        &self,
        study_uid: &str,
        series_uid: &str,
        sop_instance_uid: &str,
    ) -> Result<Recorded, QueueError> {
        self.write(|series, instances, _| {
            match admission(series, instances, study_uid, series_uid, sop_instance_uid)? {
                Recorded::New => {}
                other => return Ok(other),
            }
            instances.insert(sop_instance_uid, series_uid)?;
            let now = now_ms();
            let mut rec = Self::get_series(series, series_uid)?.unwrap_or(SeriesRecord {
                study_uid: study_uid.to_string(),
                series_uid: series_uid.to_string(),
                state: SeriesState::Receiving,
                instances: 0,
                last_instance_ms: now,
                generation: 0,
                version: 0,
                scoring_attempts: 0,
                reason: None,
                results: Vec::new(),
                agatston_total: None,
                updated_ms: now,
                delivered_ms: None,
                sent_version: None,
                supersedes: None,
            });
            rec.instances += 1;
            rec.last_instance_ms = now;
            rec.generation += 1;
            if rec.state != SeriesState::Receiving {
                rec.state = SeriesState::Receiving;
                rec.reason = None;
                rec.delivered_ms = None;
            }
            Self::put_series(series, &mut rec)?;
            Ok(Recorded::New)
        })
    }

    /// Whether this SOP Instance UID is already stored.
    pub fn has_instance(&self, sop_instance_uid: &str) -> Result<bool, QueueError> {
        Ok(self.instance_series(sop_instance_uid)?.is_some())
    }

    /// The Series Instance UID this SOP Instance UID is stored under, if it is stored.
    pub fn instance_series(&self, sop_instance_uid: &str) -> Result<Option<String>, QueueError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INSTANCES)?;
        Ok(t.get(sop_instance_uid)?.map(|v| v.value().to_string()))
    }

    /// What [`Queue::record_instance`] would answer for this instance now, changing nothing:
    /// checked before a received instance is moved into place.
    pub fn admission(
        &self,
        study_uid: &str,
        series_uid: &str,
        sop_instance_uid: &str,
    ) -> Result<Recorded, QueueError> {
        let tx = self.db.begin_read()?;
        let series = tx.open_table(SERIES)?;
        let instances = tx.open_table(INSTANCES)?;
        admission(&series, &instances, study_uid, series_uid, sop_instance_uid)
    }

    /// Every series record.
    pub fn all_series(&self) -> Result<Vec<SeriesRecord>, QueueError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SERIES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn series(&self, series_uid: &str) -> Result<Option<SeriesRecord>, QueueError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SERIES)?;
        Self::get_series(&t, series_uid)
    }

    /// Every delivery record of one series.
    pub fn deliveries(&self, series_uid: &str) -> Result<Vec<Delivery>, QueueError> {
        Ok(self
            .all_deliveries()?
            .into_iter()
            .filter(|d| d.series_uid == series_uid)
            .collect())
    }

    pub fn all_deliveries(&self) -> Result<Vec<Delivery>, QueueError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Receiving series quiet for `quiet` become complete. Returns the series moved.
    pub fn complete_quiet(&self, quiet: Duration) -> Result<Vec<String>, QueueError> {
        let cutoff = now_ms().saturating_sub(quiet.as_millis() as u64);
        let due: Vec<SeriesRecord> = self
            .all_series()?
            .into_iter()
            .filter(|r| r.state == SeriesState::Receiving && r.last_instance_ms <= cutoff)
            .collect();
        let mut moved = Vec::new();
        for r in due {
            let done = self.write(|series, _, _| {
                match Self::get_series(series, &r.series_uid)? {
                    // Re-checked inside the transaction: an instance may have arrived since.
                    Some(mut cur)
                        if cur.state == SeriesState::Receiving
                            && cur.last_instance_ms <= cutoff =>
                    {
                        cur.state = SeriesState::Complete;
                        Self::put_series(series, &mut cur)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })?;
            if done {
                moved.push(r.series_uid);
            }
        }
        Ok(moved)
    }

    /// Picks the next series to score: one left in `scoring` by a restart or a worker crash
    /// (same version again), else the oldest `complete` one (next version). Returns the
    /// record as it now stands, in state `scoring`.
    pub fn start_scoring(&self) -> Result<Option<SeriesRecord>, QueueError> {
        let mut candidates: Vec<SeriesRecord> = self
            .all_series()?
            .into_iter()
            .filter(|r| matches!(r.state, SeriesState::Scoring | SeriesState::Complete))
            .collect();
        // Interrupted runs first, then in order of arrival.
        candidates.sort_by_key(|r| (r.state != SeriesState::Scoring, r.last_instance_ms));
        for c in candidates {
            let got = self.write(|series, _, _| {
                let Some(mut cur) = Self::get_series(series, &c.series_uid)? else {
                    return Ok(None);
                };
                match cur.state {
                    SeriesState::Complete => {
                        cur.version += 1;
                        cur.scoring_attempts = 0;
                        cur.supersedes = cur.sent_version.filter(|v| *v < cur.version);
                    }
                    SeriesState::Scoring => {}
                    _ => return Ok(None),
                }
                cur.state = SeriesState::Scoring;
                cur.reason = None;
                Self::put_series(series, &mut cur)?;
                Ok(Some(cur))
            })?;
            if got.is_some() {
                return Ok(got);
            }
        }
        Ok(None)
    }

    /// Ends a scoring run started at `generation`. Returns false (and changes nothing) when
    /// new instances arrived meanwhile: that run is stale and a new one will follow. A crash
    /// counts one attempt and leaves the series in `scoring` to be picked again (false) until
    /// `max_scoring_attempts`, when it is failed with the last crash's reason (true).
    pub fn finish_scoring(
        &self,
        series_uid: &str,
        generation: u64,
        end: ScoringEnd,
    ) -> Result<bool, QueueError> {
        let max_attempts = self.max_scoring_attempts;
        self.write(|series, _, _| {
            let Some(mut cur) = Self::get_series(series, series_uid)? else {
                return Ok(false);
            };
            if cur.state != SeriesState::Scoring || cur.generation != generation {
                return Ok(false);
            }
            match end {
                ScoringEnd::Scored {
                    results,
                    agatston_total,
                    not_scored,
                    ..
                } => {
                    cur.state = SeriesState::Scored;
                    cur.results = results;
                    cur.agatston_total = agatston_total;
                    cur.reason = not_scored;
                }
                ScoringEnd::Rejected { reason } => {
                    cur.state = SeriesState::Rejected;
                    cur.reason = Some(reason);
                }
                ScoringEnd::Failed { reason } => {
                    cur.state = SeriesState::Failed;
                    cur.reason = Some(reason);
                }
                ScoringEnd::Crashed { reason } => {
                    let failed = count_scoring_attempt(
                        &mut cur,
                        max_attempts,
                        |n, max| format!("scoring crashed ({n} of {max}): {reason}"),
                        |n| format!("scoring crashed {n} times; last: {reason}"),
                    );
                    if !failed {
                        Self::put_series(series, &mut cur)?;
                        return Ok(false);
                    }
                }
                ScoringEnd::Error { reason } => {
                    let failed = count_scoring_attempt(
                        &mut cur,
                        max_attempts,
                        |n, max| format!("scoring failed ({n} of {max}): {reason}"),
                        |n| format!("scoring failed {n} times; last: {reason}"),
                    );
                    if !failed {
                        Self::put_series(series, &mut cur)?;
                        return Ok(false);
                    }
                }
            }
            Self::put_series(series, &mut cur)?;
            Ok(true)
        })
    }

    /// Moves every `scored` series to `forwarding` with one pending delivery per destination
    /// (or straight to `delivered` when there is none: results stay in the outbox), and makes
    /// sure series already forwarding have a delivery record for every current destination.
    pub fn start_forwarding(&self, destinations: &[String]) -> Result<Vec<String>, QueueError> {
        let todo: Vec<SeriesRecord> = self
            .all_series()?
            .into_iter()
            .filter(|r| matches!(r.state, SeriesState::Scored | SeriesState::Forwarding))
            .collect();
        let mut moved = Vec::new();
        for r in todo {
            let changed = self.write(|series, _, deliveries| {
                let Some(mut cur) = Self::get_series(series, &r.series_uid)? else {
                    return Ok(false);
                };
                let fresh = match cur.state {
                    SeriesState::Scored => true,
                    SeriesState::Forwarding => false,
                    _ => return Ok(false),
                };
                let now = now_ms();
                for dest in destinations {
                    let key = delivery_key(&cur.series_uid, dest);
                    let existing: Option<Delivery> = match deliveries.get(key.as_str())? {
                        Some(v) => Some(decode(&key, v.value())?),
                        None => None,
                    };
                    if existing.as_ref().is_some_and(|d| d.version == cur.version) {
                        continue;
                    }
                    let mut d = Delivery {
                        series_uid: cur.series_uid.clone(),
                        destination: dest.clone(),
                        version: cur.version,
                        state: DeliveryState::Pending,
                        attempts: 0,
                        next_attempt_ms: now,
                        last_error: None,
                        updated_ms: now,
                        sent: Vec::new(),
                        refused: Vec::new(),
                    };
                    Self::put_delivery(deliveries, &mut d)?;
                }
                if fresh {
                    if destinations.is_empty() {
                        cur.state = SeriesState::Delivered;
                        cur.delivered_ms = Some(now);
                        cur.sent_version = Some(cur.version);
                    } else {
                        cur.state = SeriesState::Forwarding;
                    }
                    Self::put_series(series, &mut cur)?;
                }
                Ok(fresh)
            })?;
            if changed {
                moved.push(r.series_uid);
            }
        }
        Ok(moved)
    }

    /// Deliveries to `destination` that are due now, with the result files to send.
    pub fn due_deliveries(
        &self,
        destination: &str,
    ) -> Result<Vec<(Delivery, SeriesRecord)>, QueueError> {
        let now = now_ms();
        let tx = self.db.begin_read()?;
        let series = tx.open_table(SERIES)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for item in deliveries.iter()? {
            let (k, v) = item?;
            let d: Delivery = decode(k.value(), v.value())?;
            if d.destination != destination
                || d.state != DeliveryState::Pending
                || d.next_attempt_ms > now
            {
                continue;
            }
            if let Some(s) = Self::get_series(&series, &d.series_uid)? {
                if s.state == SeriesState::Forwarding && s.version == d.version {
                    out.push((d, s));
                }
            }
        }
        out.sort_by_key(|(d, _)| d.next_attempt_ms);
        Ok(out)
    }

    /// Records one delivery attempt and the files it delivered or saw refused; when every
    /// destination of the series has an end, the series becomes `delivered` (all delivered)
    /// or `failed` (the reasons of those that failed). An attempt that reached its end with
    /// files refused on the way is a failed delivery. Returns the series state afterwards.
    pub fn record_attempt(
        &self,
        series_uid: &str,
        destination: &str,
        version: u32,
        attempt: Attempt,
        progress: Progress,
    ) -> Result<Option<SeriesState>, QueueError> {
        self.write(|series, _, deliveries| {
            let key = delivery_key(series_uid, destination);
            let mut d: Delivery = match deliveries.get(key.as_str())? {
                Some(v) => decode(&key, v.value())?,
                None => return Ok(None),
            };
            if d.version != version || d.state != DeliveryState::Pending {
                return Ok(None);
            }
            d.attempts += 1;
            let any_delivered = !progress.delivered.is_empty();
            for f in progress.delivered {
                if !d.sent.contains(&f) {
                    d.sent.push(f);
                }
            }
            for (f, why) in progress.refused {
                d.refused.retain(|(r, _)| *r != f);
                d.refused.push((f, why));
            }
            match attempt {
                Attempt::Delivered if !d.refused.is_empty() => {
                    d.state = DeliveryState::Failed;
                    let whys: Vec<&str> = d.refused.iter().map(|(_, w)| w.as_str()).collect();
                    d.last_error = Some(format!("refused: {}", whys.join("; ")));
                }
                Attempt::Delivered => {
                    d.state = DeliveryState::Delivered;
                    d.last_error = None;
                }
                Attempt::Transient { error, retry_at_ms } => {
                    d.last_error = Some(error);
                    d.next_attempt_ms = retry_at_ms;
                }
                Attempt::Permanent { error } => {
                    d.state = DeliveryState::Failed;
                    d.last_error = Some(error);
                }
            }
            Self::put_delivery(deliveries, &mut d)?;
            let Some(mut cur) = Self::get_series(series, series_uid)? else {
                return Ok(None);
            };
            if any_delivered && cur.sent_version.is_none_or(|v| v < version) {
                cur.sent_version = Some(version);
                Self::put_series(series, &mut cur)?;
            }
            if cur.state != SeriesState::Forwarding || cur.version != version {
                return Ok(Some(cur.state));
            }
            let prefix = format!("{series_uid}\n");
            let mut all: Vec<Delivery> = Vec::new();
            for item in deliveries.range(prefix.as_str()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                all.push(decode(k.value(), v.value())?);
            }
            let current: Vec<&Delivery> = all.iter().filter(|d| d.version == version).collect();
            if current.iter().any(|d| d.state == DeliveryState::Pending) {
                return Ok(Some(cur.state));
            }
            let failed: Vec<String> = current
                .iter()
                .filter(|d| d.state == DeliveryState::Failed)
                .map(|d| {
                    format!(
                        "{}: {}",
                        d.destination,
                        d.last_error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            if failed.is_empty() {
                cur.state = SeriesState::Delivered;
                cur.delivered_ms = Some(now_ms());
            } else {
                cur.state = SeriesState::Failed;
                cur.reason = Some(failed.join("; "));
            }
            Self::put_series(series, &mut cur)?;
            Ok(Some(cur.state))
        })
    }

    /// An operator's retry of a `failed` series, named by its hash (`store::uid_hash`, as the
    /// status page shows it): deliveries that failed go out again (refused files included,
    /// files already delivered not), or, when scoring failed, the series is scored again at
    /// the same version with its attempts counted from zero.
    pub fn retry(&self, series_hash: &str) -> Result<(String, Retried), RetryError> {
        let Some(target) = self
            .all_series()?
            .into_iter()
            .find(|r| crate::store::uid_hash(&r.series_uid) == series_hash)
        else {
            return Err(RetryError::NotFound);
        };
        let uid = target.series_uid.clone();
        let done = self.write(|series, _, deliveries| {
            let Some(mut cur) = Self::get_series(series, &uid)? else {
                return Ok(Err(RetryError::NotFound));
            };
            if cur.state != SeriesState::Failed {
                return Ok(Err(RetryError::NotFailed(cur.state)));
            }
            let prefix = format!("{uid}\n");
            let mut failed: Vec<Delivery> = Vec::new();
            for item in deliveries.range(prefix.as_str()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let d: Delivery = decode(k.value(), v.value())?;
                if d.version == cur.version && d.state == DeliveryState::Failed {
                    failed.push(d);
                }
            }
            let now = now_ms();
            cur.reason = None;
            let how = if failed.is_empty() || cur.results.is_empty() {
                cur.scoring_attempts = 0;
                cur.state = if cur.version == 0 {
                    SeriesState::Complete
                } else {
                    SeriesState::Scoring
                };
                Retried::Scoring
            } else {
                for mut d in failed {
                    d.state = DeliveryState::Pending;
                    d.attempts = 0;
                    d.refused.clear();
                    d.last_error = None;
                    d.next_attempt_ms = now;
                    Self::put_delivery(deliveries, &mut d)?;
                }
                cur.state = SeriesState::Forwarding;
                Retried::Forwarding
            };
            Self::put_series(series, &mut cur)?;
            Ok(Ok(how))
        })??;
        Ok((uid, done))
    }

    /// Series in `failed`, with why (for health and the status page).
    pub fn failed(&self) -> Result<Vec<SeriesRecord>, QueueError> {
        Ok(self
            .all_series()?
            .into_iter()
            .filter(|r| r.state == SeriesState::Failed)
            .collect())
    }

    /// A result file of `version` was missing or unreadable when it was to be sent (a power
    /// cut, a hand in the outbox): the series goes back to `scoring` at the same version, so
    /// the results come back with the same UIDs and replace whatever was already delivered;
    /// its deliveries stay as they are and go on once the results are back. Counted as a
    /// scoring attempt, so results that keep vanishing end in `failed`, not in a loop.
    /// Returns the series state afterwards, or None when the series has moved on.
    pub fn rescore_missing(
        &self,
        series_uid: &str,
        version: u32,
        reason: &str,
    ) -> Result<Option<SeriesState>, QueueError> {
        let max_attempts = self.max_scoring_attempts;
        self.write(|series, _, _| {
            let Some(mut cur) = Self::get_series(series, series_uid)? else {
                return Ok(None);
            };
            if cur.state != SeriesState::Forwarding || cur.version != version {
                return Ok(None);
            }
            count_scoring_attempt(
                &mut cur,
                max_attempts,
                |n, max| format!("result files missing, scoring again ({n} of {max}): {reason}"),
                |n| format!("result files missing after {n} scoring attempts; last: {reason}"),
            );
            Self::put_series(series, &mut cur)?;
            Ok(Some(cur.state))
        })
    }

    /// Series finished (delivered or rejected) longer than `retention` ago.
    pub fn prunable(&self, retention: Duration) -> Result<Vec<SeriesRecord>, QueueError> {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        Ok(self
            .all_series()?
            .into_iter()
            .filter(|r| r.finished_ms().is_some_and(|t| t <= cutoff))
            .collect())
    }

    /// Forgets a series (after its files were removed), if it is still finished.
    pub fn remove_series(&self, series_uid: &str) -> Result<bool, QueueError> {
        self.write(|series, instances, deliveries| {
            match Self::get_series(series, series_uid)? {
                Some(cur) if cur.finished_ms().is_some() => {}
                _ => return Ok(false),
            }
            series.remove(series_uid)?;
            instances.retain(|_, s| s != series_uid)?;
            let prefix = format!("{series_uid}\n");
            deliveries.retain(|k, _| !k.starts_with(&prefix))?;
            Ok(true)
        })
    }

    /// Count of series per state, for logs and the status port.
    pub fn counts(&self) -> Result<BTreeMap<String, usize>, QueueError> {
        let mut m = BTreeMap::new();
        for r in self.all_series()? {
            let name = serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *m.entry(name).or_insert(0) += 1;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        (dir, q)
    }

    /// Eight threads recording at once (as eight associations do): each SOP Instance UID is
    /// New exactly once even when two threads send it at the same time, the series counts are
    /// exact, and everything is there after a reopen.
    #[test]
    fn concurrent_instance_records_are_each_counted_once() {
        let (dir, q) = q();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut new = 0;
                    for i in 0..60 {
                        // Threads t and t ^ 1 send the same instances of series t / 2.
                        let sop = format!("sop-{}-{i}", t / 2);
                        let series = format!("se-{}", t / 2);
                        match q.record_instance("st", &series, &sop).unwrap() {
                            Recorded::New => new += 1,
                            Recorded::Duplicate => {}
                            Recorded::Conflict(c) => panic!("{c}"),
                        }
                    }
                    new
                })
            })
            .collect();
        let new: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(new, 4 * 60, "each distinct instance New exactly once");
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        let all = q.all_series().unwrap();
        assert_eq!(all.len(), 4);
        for s in all {
            assert_eq!((s.instances, s.generation), (60, 60), "{}", s.series_uid);
        }
        for i in 0..60 {
            assert!(q.has_instance(&format!("sop-3-{i}")).unwrap());
        }
    }

    /// One answer per instance: a SOP Instance UID stored in one series and sent again in
    /// another, or a series UID sent again under another study, is a conflict (refused), never
    /// a silent duplicate; a resend into the same series is a duplicate.
    #[test]
    fn clashing_uids_are_conflicts_not_duplicates() {
        let (_dir, q) = q();
        assert_eq!(q.record_instance("st", "se", "i1").unwrap(), Recorded::New);
        let elsewhere = Recorded::Conflict(Conflict::InstanceElsewhere {
            stored_series_uid: "se".into(),
        });
        assert_eq!(q.admission("st2", "se2", "i1").unwrap(), elsewhere);
        assert_eq!(q.record_instance("st2", "se2", "i1").unwrap(), elsewhere);
        assert_eq!(q.record_instance("st", "se9", "i1").unwrap(), elsewhere);
        let other_study = Recorded::Conflict(Conflict::SeriesElsewhere {
            stored_study_uid: "st".into(),
        });
        assert_eq!(q.admission("st2", "se", "i2").unwrap(), other_study);
        assert_eq!(q.record_instance("st2", "se", "i2").unwrap(), other_study);
        assert_eq!(q.admission("st", "se", "i1").unwrap(), Recorded::Duplicate);
        assert_eq!(
            q.record_instance("st", "se", "i1").unwrap(),
            Recorded::Duplicate
        );
        assert!(q.series("se2").unwrap().is_none(), "nothing recorded");
        assert_eq!(q.series("se").unwrap().unwrap().instances, 1);
    }

    #[test]
    fn a_series_walks_the_whole_path_and_survives_reopen() {
        let (dir, q) = q();
        assert_eq!(q.record_instance("st", "se", "i1").unwrap(), Recorded::New);
        assert_eq!(q.record_instance("st", "se", "i2").unwrap(), Recorded::New);
        assert_eq!(
            q.record_instance("st", "se", "i1").unwrap(),
            Recorded::Duplicate
        );
        assert_eq!(q.series("se").unwrap().unwrap().instances, 2);
        assert!(q
            .complete_quiet(Duration::from_secs(60))
            .unwrap()
            .is_empty());
        assert_eq!(q.complete_quiet(Duration::ZERO).unwrap(), vec!["se"]);
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!(
            (s.state, s.version, s.scoring_attempts),
            (SeriesState::Scoring, 1, 0)
        );
        drop(q);
        // A restart during scoring: the same version is scored again, no attempt counted.
        let q = Queue::open(dir.path()).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.scoring_attempts), (1, 0));
        let end = ScoringEnd::Scored {
            results: vec![PathBuf::from("a.dcm")],
            agatston_total: Some(12.0),
            not_scored: None,
            timings: None,
        };
        assert!(q.finish_scoring("se", s.generation, end).unwrap());
        let dests = vec!["A".to_string(), "B".to_string()];
        assert_eq!(q.start_forwarding(&dests).unwrap(), vec!["se"]);
        assert_eq!(q.due_deliveries("A").unwrap().len(), 1);
        let st = q
            .record_attempt(
                "se",
                "A",
                1,
                Attempt::Transient {
                    error: "refused".into(),
                    retry_at_ms: now_ms() + 60_000,
                },
                Progress::default(),
            )
            .unwrap();
        assert_eq!(st, Some(SeriesState::Forwarding));
        assert!(q.due_deliveries("A").unwrap().is_empty(), "backing off");
        assert_eq!(
            q.record_attempt("se", "B", 1, Attempt::Delivered, Progress::default())
                .unwrap(),
            Some(SeriesState::Forwarding)
        );
        assert_eq!(
            q.record_attempt("se", "A", 1, Attempt::Delivered, Progress::default())
                .unwrap(),
            Some(SeriesState::Delivered)
        );
        let a = q
            .deliveries("se")
            .unwrap()
            .into_iter()
            .find(|d| d.destination == "A")
            .unwrap();
        assert_eq!(a.attempts, 2);
        assert_eq!(q.prunable(Duration::ZERO).unwrap().len(), 1);
        assert!(q.remove_series("se").unwrap());
        assert!(q.all_series().unwrap().is_empty());
        assert!(!q.has_instance("i1").unwrap());
    }

    #[test]
    fn late_instances_make_running_work_stale_and_bump_the_version() {
        let (_dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        q.record_instance("st", "se", "i2").unwrap();
        let end = ScoringEnd::Scored {
            results: vec![],
            agatston_total: None,
            not_scored: None,
            timings: None,
        };
        assert!(!q.finish_scoring("se", s.generation, end.clone()).unwrap());
        assert_eq!(
            q.series("se").unwrap().unwrap().state,
            SeriesState::Receiving
        );
        q.complete_quiet(Duration::ZERO).unwrap();
        let s2 = q.start_scoring().unwrap().unwrap();
        assert_eq!(s2.version, 2);
        assert!(q.finish_scoring("se", s2.generation, end).unwrap());
        // No destination: delivered locally.
        q.start_forwarding(&[]).unwrap();
        assert_eq!(
            q.series("se").unwrap().unwrap().state,
            SeriesState::Delivered
        );
        // An instance after delivery reopens the series.
        q.record_instance("st", "se", "i3").unwrap();
        assert_eq!(
            q.series("se").unwrap().unwrap().state,
            SeriesState::Receiving
        );
    }

    #[test]
    fn permanent_failure_at_one_destination_fails_the_series_with_reason() {
        let (_dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        let end = ScoringEnd::Scored {
            results: vec![],
            agatston_total: None,
            not_scored: None,
            timings: None,
        };
        q.finish_scoring("se", s.generation, end).unwrap();
        q.start_forwarding(&["A".into(), "B".into()]).unwrap();
        q.record_attempt(
            "se",
            "A",
            1,
            Attempt::Permanent {
                error: "called AE not recognised".into(),
            },
            Progress::default(),
        )
        .unwrap();
        let st = q
            .record_attempt("se", "B", 1, Attempt::Delivered, Progress::default())
            .unwrap();
        assert_eq!(st, Some(SeriesState::Failed));
        let r = q.series("se").unwrap().unwrap();
        assert!(r.reason.unwrap().contains("A: called AE not recognised"));
        assert!(
            q.prunable(Duration::ZERO).unwrap().is_empty(),
            "undelivered is never pruned"
        );
    }

    /// A destination that refuses one result object for good: the others are recorded as
    /// delivered, the delivery fails with the refusal, and an operator's retry sends only the
    /// refused object again (then the series is delivered).
    #[test]
    fn one_refused_object_fails_the_delivery_and_a_retry_sends_only_it() {
        let (_dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        let files: Vec<PathBuf> = ["seg.dcm", "sr.dcm", "summary.dcm"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let end = ScoringEnd::Scored {
            results: files.clone(),
            agatston_total: Some(3.0),
            not_scored: None,
            timings: None,
        };
        q.finish_scoring("se", s.generation, end).unwrap();
        q.start_forwarding(&["A".into()]).unwrap();
        let progress = Progress {
            delivered: vec![files[1].clone(), files[2].clone()],
            refused: vec![(files[0].clone(), "seg.dcm: C-STORE status 0xC000".into())],
        };
        let st = q
            .record_attempt("se", "A", 1, Attempt::Delivered, progress)
            .unwrap();
        assert_eq!(st, Some(SeriesState::Failed));
        let r = q.series("se").unwrap().unwrap();
        assert!(r.reason.unwrap().contains("seg.dcm: C-STORE status 0xC000"));
        assert_eq!(q.failed().unwrap().len(), 1);
        assert!(matches!(q.retry("nope"), Err(RetryError::NotFound)));
        let hash = crate::store::uid_hash("se");
        assert_eq!(
            q.retry(&hash).unwrap(),
            ("se".to_string(), Retried::Forwarding)
        );
        assert!(matches!(
            q.retry(&hash),
            Err(RetryError::NotFailed(SeriesState::Forwarding))
        ));
        let due = q.due_deliveries("A").unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.to_send(&due[0].1.results), vec![files[0].clone()]);
        let progress = Progress {
            delivered: vec![files[0].clone()],
            refused: vec![],
        };
        let st = q
            .record_attempt("se", "A", 1, Attempt::Delivered, progress)
            .unwrap();
        assert_eq!(st, Some(SeriesState::Delivered));
    }

    /// A series failed in scoring is retried by scoring it again, same version, attempts
    /// counted from zero.
    #[test]
    fn a_retry_of_a_scoring_failure_scores_again() {
        let (_dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        let end = ScoringEnd::Failed {
            reason: "writing results: disk full".into(),
        };
        q.finish_scoring("se", s.generation, end).unwrap();
        let hash = crate::store::uid_hash("se");
        assert_eq!(q.retry(&hash).unwrap().1, Retried::Scoring);
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.scoring_attempts), (1, 0));
    }

    /// A version scored after an earlier one reached a PACS supersedes it; one scored after
    /// a version that never left (stale, or refused everywhere) supersedes what did.
    #[test]
    fn a_new_version_supersedes_the_last_one_sent() {
        let (_dir, q) = q();
        let scored = || ScoringEnd::Scored {
            results: vec![PathBuf::from("sr.dcm")],
            agatston_total: Some(1.0),
            not_scored: None,
            timings: None,
        };
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.supersedes), (1, None));
        q.finish_scoring("se", s.generation, scored()).unwrap();
        q.start_forwarding(&["A".into()]).unwrap();
        let sent = Progress {
            delivered: vec![PathBuf::from("sr.dcm")],
            refused: vec![],
        };
        q.record_attempt("se", "A", 1, Attempt::Delivered, sent.clone())
            .unwrap();
        // Late instances: version 2 supersedes 1; a stale run (3) never sent: 4 supersedes 2.
        q.record_instance("st", "se", "i2").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.supersedes), (2, Some(1)));
        q.finish_scoring("se", s.generation, scored()).unwrap();
        q.start_forwarding(&["A".into()]).unwrap();
        q.record_attempt("se", "A", 2, Attempt::Delivered, sent)
            .unwrap();
        q.record_instance("st", "se", "i3").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.supersedes), (3, Some(2)));
        q.record_instance("st", "se", "i4").unwrap();
        assert!(!q.finish_scoring("se", s.generation, scored()).unwrap());
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.supersedes), (4, Some(2)));
    }

    #[test]
    fn a_series_that_keeps_crashing_the_scorer_fails_but_restarts_cost_nothing() {
        let (dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        // Restarts (power cuts, SIGKILL of the service) while scoring: never counted.
        let mut q = q;
        for _ in 0..5 {
            assert!(q.start_scoring().unwrap().is_some());
            drop(q);
            q = Queue::open(dir.path()).unwrap();
        }
        let crash = || ScoringEnd::Crashed {
            reason: "signal: 9 (SIGKILL)".into(),
        };
        for n in 1..MAX_SCORING_ATTEMPTS {
            let s = q.start_scoring().unwrap().unwrap();
            assert!(!q.finish_scoring("se", s.generation, crash()).unwrap());
            let r = q.series("se").unwrap().unwrap();
            assert_eq!((r.state, r.scoring_attempts), (SeriesState::Scoring, n));
        }
        let s = q.start_scoring().unwrap().unwrap();
        assert!(q.finish_scoring("se", s.generation, crash()).unwrap());
        let r = q.series("se").unwrap().unwrap();
        assert_eq!(r.state, SeriesState::Failed);
        assert!(
            r.reason.unwrap().contains("crashed 3 times"),
            "reason names the crashes"
        );
        assert!(q.start_scoring().unwrap().is_none());
        // New instances reopen it with a clean slate.
        q.record_instance("st", "se", "i2").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!((s.version, s.scoring_attempts), (2, 0));
    }

    /// A result file found missing at send time: back to `scoring` at the same version (same
    /// result UIDs), deliveries kept — the one already done stays done, the pending one goes
    /// on after the re-score — and results that keep vanishing end in `failed`.
    #[test]
    fn missing_result_files_send_the_series_back_to_scoring_not_to_failed() {
        let (_dir, q) = q();
        q.record_instance("st", "se", "i1").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let scored = || ScoringEnd::Scored {
            results: vec![PathBuf::from("v1/sr.dcm")],
            agatston_total: Some(12.0),
            not_scored: None,
            timings: None,
        };
        let s = q.start_scoring().unwrap().unwrap();
        q.finish_scoring("se", s.generation, scored()).unwrap();
        q.start_forwarding(&["A".into(), "B".into()]).unwrap();
        q.record_attempt("se", "A", 1, Attempt::Delivered, Progress::default())
            .unwrap();
        // Not for another version, nor while not forwarding.
        assert_eq!(q.rescore_missing("se", 2, "gone").unwrap(), None);
        let st = q.rescore_missing("se", 1, "v1/sr.dcm: not found").unwrap();
        assert_eq!(st, Some(SeriesState::Scoring));
        assert_eq!(q.rescore_missing("se", 1, "again").unwrap(), None);
        assert!(
            q.due_deliveries("B").unwrap().is_empty(),
            "nothing sent while scoring"
        );
        let s = q.start_scoring().unwrap().unwrap();
        assert_eq!(
            (s.version, s.scoring_attempts),
            (1, 1),
            "same version, counted"
        );
        assert!(q.finish_scoring("se", s.generation, scored()).unwrap());
        q.start_forwarding(&["A".into(), "B".into()]).unwrap();
        let due = q.due_deliveries("B").unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].0.attempts, 0,
            "finding the file missing was not an attempt"
        );
        assert!(
            q.due_deliveries("A").unwrap().is_empty(),
            "A already has version 1"
        );
        let st = q
            .record_attempt("se", "B", 1, Attempt::Delivered, Progress::default())
            .unwrap();
        assert_eq!(st, Some(SeriesState::Delivered));
        // Results that keep vanishing: failed after the scoring attempts, with the reason.
        q.record_instance("st", "se", "i2").unwrap();
        q.complete_quiet(Duration::ZERO).unwrap();
        let mut state = None;
        for _ in 0..MAX_SCORING_ATTEMPTS {
            let s = q.start_scoring().unwrap().unwrap();
            q.finish_scoring("se", s.generation, scored()).unwrap();
            q.start_forwarding(&["B".into()]).unwrap();
            state = q.rescore_missing("se", 2, "v2/sr.dcm: not found").unwrap();
        }
        assert_eq!(state, Some(SeriesState::Failed));
        let r = q.series("se").unwrap().unwrap();
        assert!(r.reason.unwrap().contains("result files missing"));
    }
}
