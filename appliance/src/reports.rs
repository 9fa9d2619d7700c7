//! Reports pushed to central IT: a summary of every finished series and a periodic heartbeat,
//! each one JSON POST over HTTPS (reqwest + rustls; CA bundle, bearer token or client
//! certificate from `[reports]`). Schema: deploy/report.schema.json.
//!
//! Reports go through a durable outbox: a table in the queue's redb database, written with
//! immediate durability before anything is sent, and removed only after the receiver answered
//! 2xx. So a receiver outage or a restart loses none; the sender retries the oldest report
//! with capped exponential backoff, in order. Delivery is at least once: every report carries
//! `box_id` and a sequence number `seq` (never reused) for the receiver to drop repeats.
//!
//! No patient data by default: series are named by hashed UIDs. Only with
//! `reports.include_patient_data = true` do result reports carry the UIDs and the patient's
//! name, ID, birth date and accession number.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::{secs, Config, ReportsConfig};
use crate::forward;
use crate::queue::{now_ms, SeriesRecord, SeriesState};
use crate::status::{self, StatusCtx};
use crate::store::{self, Store};

const REPORTS: TableDefinition<u64, &str> = TableDefinition::new("reports");
const META: TableDefinition<&str, u64> = TableDefinition::new("reports_meta");
const NEXT_SEQ: &str = "next_seq";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report outbox: {0}")]
    Db(#[from] redb::Error),
    #[error("report outbox record {seq}: {source}")]
    Record { seq: u64, source: serde_json::Error },
    #[error("reports: {0}")]
    Client(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ReportError {
            fn from(e: $t) -> Self { ReportError::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One report waiting to be sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub kind: String,
    pub body: Value,
    pub attempts: u32,
    pub created_ms: u64,
    pub last_error: Option<String>,
}

/// The durable outbox (cheap to clone).
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    max_pending: u64,
}

impl Outbox {
    pub fn open(db: Arc<Database>, max_pending: u64) -> Result<Outbox, ReportError> {
        let o = Outbox {
            db,
            max_pending: max_pending.max(1),
        };
        let tx = o.db.begin_write()?;
        {
            tx.open_table(REPORTS)?;
            tx.open_table(META)?;
        }
        tx.commit()?;
        Ok(o)
    }

    /// Stores a report durably; returns its sequence number. Beyond `max_pending` the oldest
    /// reports are dropped (and logged), so an outbox whose receiver never returns stays
    /// bounded.
    pub fn push(&self, kind: &str, mut body: Value, box_id: &str) -> Result<u64, ReportError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let (seq, dropped) = {
            let mut meta = tx.open_table(META)?;
            let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1);
            meta.insert(NEXT_SEQ, seq + 1)?;
            if let Value::Object(m) = &mut body {
                m.insert("seq".into(), json!(seq));
                m.insert("box_id".into(), json!(box_id));
                m.insert("type".into(), json!(kind));
            }
            let e = Entry {
                kind: kind.to_string(),
                body,
                attempts: 0,
                created_ms: now_ms(),
                last_error: None,
            };
            let text =
                serde_json::to_string(&e).map_err(|source| ReportError::Record { seq, source })?;
            let mut t = tx.open_table(REPORTS)?;
            t.insert(seq, text.as_str())?;
            let mut dropped = 0;
            while t.len()? > self.max_pending {
                if t.pop_first()?.is_none() {
                    break;
                }
                dropped += 1;
            }
            (seq, dropped)
        };
        tx.commit()?;
        if dropped > 0 {
            warn!(
                stage = "report",
                dropped, "report outbox full: oldest reports dropped"
            );
        }
        Ok(seq)
    }

    /// The oldest waiting report.
    pub fn oldest(&self) -> Result<Option<(u64, Entry)>, ReportError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPORTS)?;
        let Some((k, v)) = t.first()? else {
            return Ok(None);
        };
        let seq = k.value();
        let e = serde_json::from_str(v.value())
            .map_err(|source| ReportError::Record { seq, source })?;
        Ok(Some((seq, e)))
    }

    pub fn remove(&self, seq: u64) -> Result<(), ReportError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.open_table(REPORTS)?.remove(seq)?;
        tx.commit()?;
        Ok(())
    }

    /// Notes a failed attempt on the report (for the status page and logs).
    pub fn failed(&self, seq: u64, error: &str) -> Result<u32, ReportError> {
        let tx = self.db.begin_write()?;
        let n = {
            let mut t = tx.open_table(REPORTS)?;
            let cur = t.get(seq)?.map(|v| v.value().to_string());
            match cur {
                Some(text) => {
                    let mut e: Entry = serde_json::from_str(&text)
                        .map_err(|source| ReportError::Record { seq, source })?;
                    e.attempts += 1;
                    e.last_error = Some(error.to_string());
                    let text = serde_json::to_string(&e)
                        .map_err(|source| ReportError::Record { seq, source })?;
                    t.insert(seq, text.as_str())?;
                    e.attempts
                }
                None => 0,
            }
        };
        tx.commit()?;
        Ok(n)
    }

    pub fn len(&self) -> Result<u64, ReportError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(REPORTS)?.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, ReportError> {
        Ok(self.len()? == 0)
    }
}

/// The HTTPS client from `[reports]`.
pub fn client(r: &ReportsConfig) -> Result<reqwest::Client, ReportError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ReportError::Client(format!("{}: {e}", p.display())))
    };
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .timeout(secs(r.timeout_s))
        .connect_timeout(secs(r.timeout_s))
        .user_agent(concat!("cacd/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &r.ca {
        // A configured CA is the only trust anchor: the receiver is central IT's own.
        b = b.tls_built_in_root_certs(false);
        for c in reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|e| ReportError::Client(format!("reports.ca: {e}")))?
        {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&r.client_cert, &r.client_key) {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| ReportError::Client(format!("reports.client_cert/client_key: {e}")))?;
        b = b.identity(id);
    }
    b.build().map_err(|e| ReportError::Client(e.to_string()))
}

async fn post(client: &reqwest::Client, r: &ReportsConfig, body: &Value) -> Result<(), String> {
    let mut req = client
        .post(&r.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(t) = &r.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        // reqwest's Display hides the cause (refused, certificate...), which is the useful part.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
    })?;
    let st = resp.status();
    if st.is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {st}"))
    }
}

/// Sends the outbox, oldest first, until shutdown. A failure backs off (capped) before the
/// same report is tried again, so order is kept and a receiver that is down is not hammered.
pub async fn run_sender(
    cfg: Arc<Config>,
    outbox: Outbox,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let r = &cfg.reports;
    let client = match client(r) {
        Ok(c) => c,
        Err(e) => {
            warn!(stage = "report", error = %e, "reports cannot be sent; they stay in the outbox");
            return;
        }
    };
    let (initial, max) = (secs(r.backoff_initial_s), secs(r.backoff_max_s));
    let mut streak = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let o = outbox.clone();
        let next = tokio::task::spawn_blocking(move || o.oldest()).await;
        let (seq, entry) = match next {
            Ok(Ok(Some(x))) => x,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
                continue;
            }
            Ok(Err(e)) => {
                warn!(stage = "report", error = %e, "report outbox unreadable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        match post(&client, r, &entry.body).await {
            Ok(()) => {
                streak = 0;
                let o = outbox.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || o.remove(seq)).await {
                    warn!(stage = "report", seq, error = %e, "sent report not removed (it may be sent twice)");
                }
                info!(stage = "report", seq, kind = %entry.kind, "report sent");
            }
            Err(error) => {
                streak = streak.saturating_add(1);
                let wait = forward::backoff(initial, max, streak);
                let o = outbox.clone();
                let err = error.clone();
                let _ = tokio::task::spawn_blocking(move || o.failed(seq, &err)).await;
                warn!(stage = "report", seq, retry_in_s = wait.as_secs_f64(), %error, "report not sent");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
            }
        }
    }
}

/// Queues a heartbeat at start and then every `reports.heartbeat_s`.
pub async fn run_heartbeats(
    ctx: Arc<StatusCtx>,
    outbox: Outbox,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = secs(ctx.cfg.reports.heartbeat_s);
    loop {
        let (c, o) = (ctx.clone(), outbox.clone());
        let pushed = tokio::task::spawn_blocking(move || {
            let body = heartbeat(&c);
            o.push("heartbeat", body, &status::box_id(&c.cfg))
        })
        .await;
        match pushed {
            Ok(Ok(_)) => notify.notify_one(),
            Ok(Err(e)) => warn!(stage = "report", error = %e, "heartbeat not queued"),
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

/// The heartbeat body: health, counts, disk, memory, temperatures, versions, model.
pub fn heartbeat(ctx: &StatusCtx) -> Value {
    let s = status::snapshot(ctx);
    json!({
        "created_at": status::iso(now_ms()),
        "version": s.version,
        "uptime_s": s.uptime_s,
        "health": { "state": s.health.state, "reasons": s.health.reasons, "ready": s.ready,
                    "pipeline_alive": s.pipeline_alive },
        "model": s.engine,
        "queue": s.queue,
        "received": s.received,
        "destinations": s.destinations.iter().map(|d| json!({
            "id": d.id, "reachable": d.status.reachable, "failing_since": d.failing_since,
            "attempts": d.status.attempts, "failures": d.status.failures,
        })).collect::<Vec<_>>(),
        "disk": s.disk,
        "memory": s.memory,
        "temperatures": s.temperatures,
    })
}

/// Patient attributes of the first stored instance of a series (only read when the config
/// allows them in reports).
fn patient_of(store: &Store, rec: &SeriesRecord) -> Value {
    use dicom_dictionary_std::tags;
    let files = store::list_instances(&store.series_dir(&rec.study_uid, &rec.series_uid));
    let Some(obj) = files.first().and_then(|f| {
        dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(f)
            .ok()
    }) else {
        return Value::Null;
    };
    let get = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
    };
    json!({
        "name": get(tags::PATIENT_NAME),
        "id": get(tags::PATIENT_ID),
        "birth_date": get(tags::PATIENT_BIRTH_DATE),
        "accession_number": get(tags::ACCESSION_NUMBER),
    })
}

/// The result report of a series that reached an end (scored, rejected or failed), built from
/// its result.json where there is one.
pub fn result_report(cfg: &Config, store: &Store, rec: &SeriesRecord) -> Value {
    let dir = store.result_dir(&rec.study_uid, &rec.series_uid, rec.version);
    let r: Value = std::fs::read(dir.join("result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let status = match rec.state {
        SeriesState::Rejected => "rejected",
        SeriesState::Failed => "failed",
        _ => "scored",
    };
    let mut body = json!({
        "created_at": status::iso(now_ms()),
        "version": env!("CARGO_PKG_VERSION"),
        "series_hash": store::uid_hash(&rec.series_uid),
        "study_hash": store::uid_hash(&rec.study_uid),
        "result_version": rec.version,
        "instances": rec.instances,
        "status": status,
        "reason": rec.reason.as_deref().map(|r| if cfg.reports.include_patient_data {
            r.to_string()
        } else {
            crate::uid::redact(r)
        }),
        "agatston_total": r.get("agatston_total"),
        "volume_mm3": r.get("volume_mm3"),
        "per_vessel": r.get("per_vessel"),
        "lesion_count": r.get("lesions").and_then(|l| l.as_array()).map(|a| a.len()),
        "risk_category": r.get("risk_category"),
        "cac_drs": r.get("cac_drs"),
        "quality": r.get("quality"),
        "model": r.get("model"),
        "timings_ms": r.get("timings_ms"),
    });
    if cfg.reports.include_patient_data {
        if let Value::Object(m) = &mut body {
            m.insert("study_instance_uid".into(), json!(rec.study_uid));
            m.insert("series_instance_uid".into(), json!(rec.series_uid));
            m.insert("patient".into(), patient_of(store, rec));
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(dir: &Path, max: u64) -> Outbox {
        let db = Database::create(dir.join("q.redb")).unwrap();
        Outbox::open(Arc::new(db), max).unwrap()
    }

    #[test]
    fn outbox_keeps_order_survives_reopen_and_never_reuses_a_seq() {
        let t = tempfile::tempdir().unwrap();
        {
            let o = outbox(t.path(), 100);
            assert_eq!(o.push("heartbeat", json!({}), "box").unwrap(), 1);
            assert_eq!(o.push("result", json!({"a": 1}), "box").unwrap(), 2);
            let (seq, e) = o.oldest().unwrap().unwrap();
            assert_eq!((seq, e.kind.as_str()), (1, "heartbeat"));
            assert_eq!(e.body["seq"], 1);
            assert_eq!(e.body["box_id"], "box");
            assert_eq!(o.failed(1, "down").unwrap(), 1);
            o.remove(1).unwrap();
        }
        let o = outbox(t.path(), 100);
        assert_eq!(o.len().unwrap(), 1);
        let (seq, e) = o.oldest().unwrap().unwrap();
        assert_eq!((seq, e.body["a"].as_i64()), (2, Some(1)));
        o.remove(2).unwrap();
        assert!(o.is_empty().unwrap());
        assert_eq!(o.push("heartbeat", json!({}), "box").unwrap(), 3);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest() {
        let t = tempfile::tempdir().unwrap();
        let o = outbox(t.path(), 3);
        for _ in 0..5 {
            o.push("heartbeat", json!({}), "b").unwrap();
        }
        assert_eq!(o.len().unwrap(), 3);
        assert_eq!(o.oldest().unwrap().unwrap().0, 3);
    }
}
