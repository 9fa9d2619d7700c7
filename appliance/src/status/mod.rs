//! The status port (axum, default 127.0.0.1:8080):
//!
//! | path | what |
//! |---|---|
//! | `GET /` | HTML page for technicians (refreshes itself every 5 s) |
//! | `GET /api/status` | the same as JSON |
//! | `GET /metrics` | Prometheus text, `cacd_` prefix |
//! | `GET /healthz` | 200 while the pipeline is alive (receiver and scoring thread) |
//! | `GET /readyz` | 200 once booted and without a fault |
//! | `POST /api/identify` | blinks the LED in the identify pattern; bearer service token |
//! | `POST /api/series/{hash}/retry` | sends a failed series back to forwarding or scoring; bearer service token |
//!
//! Series appear with hashed UIDs only, and nothing read from a DICOM header is shown (UIDs in
//! reasons are hashed too, `uid::redact`), so no patient data is served.

mod page;
mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{secs, Config};
use crate::health::{DestStatus, Health, LedShown, Monitor};
use crate::queue::{Queue, SeriesRecord, SeriesState};
use crate::reports::Outbox;
use crate::result::ModelInfo;
use crate::store::{self, Store};

/// How many series the page and the JSON list.
pub const RECENT_SERIES: usize = 20;

/// What the handlers share.
pub struct StatusCtx {
    pub cfg: Arc<Config>,
    pub monitor: Arc<Monitor>,
    pub queue: Queue,
    pub store: Store,
    pub outbox: Option<Outbox>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesView {
    pub series_hash: String,
    pub study_hash: String,
    pub state: SeriesState,
    pub instances: u64,
    pub last_instance_at: Option<String>,
    pub updated_at: Option<String>,
    pub delivered_at: Option<String>,
    pub version: u32,
    pub agatston_total: Option<f64>,
    pub risk_category: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestView {
    pub id: String,
    #[serde(flatten)]
    pub status: DestStatus,
    pub failing_since: Option<String>,
    pub last_ok: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskView {
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub free_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TempView {
    pub zone: String,
    pub kind: String,
    pub celsius: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedView {
    #[serde(flatten)]
    pub shown: Option<LedShown>,
    /// Recorded changes of a simulated LED, oldest first.
    pub history: Option<Vec<LedEventView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedEventView {
    pub at_ms: u64,
    pub pattern: String,
    pub colour: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub instances: u64,
    pub bytes: u64,
    pub associations: u64,
}

/// Everything the page, the JSON and the heartbeat show.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub box_id: String,
    pub ae_title: String,
    pub started_at: Option<String>,
    pub uptime_s: f64,
    pub health: Health,
    pub ready: bool,
    pub pipeline_alive: bool,
    pub led: LedView,
    pub engine: Option<ModelInfo>,
    pub queue: BTreeMap<String, u64>,
    pub received: Received,
    pub series: Vec<SeriesView>,
    pub destinations: Vec<DestView>,
    pub disk: Option<DiskView>,
    pub memory: Option<MemView>,
    pub temperatures: Vec<TempView>,
    pub reports_pending: Option<u64>,
    pub receive_limits: ReceiveLimitsView,
}

/// The receive path's memory bound (from the `[receive]` limits) and what it holds now.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveLimitsView {
    pub memory_bound_bytes: u64,
    pub per_association_bytes: u64,
    pub per_pending_bytes: u64,
    pub pending_connections: u64,
    /// Refusals and violations since start: `family/reason` → count.
    pub refused: BTreeMap<String, u64>,
}

/// Memory as served (the hal type carries no serde).
#[derive(Debug, Clone, Serialize)]
pub struct MemView {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// RFC 3339 UTC time of a Unix ms timestamp.
pub fn iso(ms: u64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// This box's name: `reports.box_id`, else the host name.
pub fn box_id(cfg: &Config) -> String {
    cfg.reports.box_id.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// The headline of a series' current result: (agatston, risk category).
fn result_headline(store: &Store, r: &SeriesRecord) -> (Option<f64>, Option<String>) {
    if r.version == 0 {
        return (None, None);
    }
    let path = store
        .result_dir(&r.study_uid, &r.series_uid, r.version)
        .join("result.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return (r.agatston_total, None);
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    (
        v["agatston_total"].as_f64().or(r.agatston_total),
        v["risk_category"].as_str().map(String::from),
    )
}

/// Builds the snapshot (blocking: reads the queue and a few small files).
pub fn snapshot(ctx: &StatusCtx) -> Snapshot {
    let m = &ctx.monitor;
    let mut counts: BTreeMap<String, u64> = [
        "receiving",
        "complete",
        "scoring",
        "scored",
        "forwarding",
        "delivered",
        "rejected",
        "failed",
    ]
    .iter()
    .map(|s| (s.to_string(), 0))
    .collect();
    let mut all = match ctx.queue.all_series() {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "status: queue read failed");
            Vec::new()
        }
    };
    for r in &all {
        let key = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *counts.entry(key).or_default() += 1;
    }
    all.sort_by_key(|r| std::cmp::Reverse(r.updated_ms));
    let series = all
        .iter()
        .take(RECENT_SERIES)
        .map(|r| {
            let (agatston_total, risk_category) = result_headline(&ctx.store, r);
            SeriesView {
                series_hash: store::uid_hash(&r.series_uid),
                study_hash: store::uid_hash(&r.study_uid),
                state: r.state,
                instances: r.instances,
                last_instance_at: iso(r.last_instance_ms),
                updated_at: iso(r.updated_ms),
                delivered_at: r.delivered_ms.and_then(iso),
                version: r.version,
                agatston_total,
                risk_category,
                error: r.reason.as_deref().map(crate::uid::redact),
            }
        })
        .collect();
    let dests = m.destinations();
    let destinations = ctx
        .cfg
        .destinations
        .iter()
        .map(|d| {
            let status = dests.get(&d.id()).cloned().unwrap_or_default();
            DestView {
                id: d.id(),
                failing_since: status.failing_since_ms.and_then(iso),
                last_ok: status.last_ok_ms.and_then(iso),
                status,
            }
        })
        .collect();
    let disk = cacd_hal::sensors::disk_space(&ctx.cfg.data_dir)
        .ok()
        .map(|d| DiskView {
            path: ctx.cfg.data_dir.display().to_string(),
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes,
            free_percent: (d.free_percent() * 10.0).round() / 10.0,
        });
    let memory = cacd_hal::sensors::memory().ok().map(|x| MemView {
        total_bytes: x.total_bytes,
        available_bytes: x.available_bytes,
    });
    let temperatures = cacd_hal::sensors::temperatures()
        .into_iter()
        .map(|t| TempView {
            zone: t.zone,
            kind: t.kind,
            celsius: t.celsius,
        })
        .collect();
    let health = m.health();
    let history = m.sim_history().map(|ev| {
        ev.into_iter()
            .map(|e| LedEventView {
                at_ms: e.at_ms,
                pattern: e.pattern.describe(),
                colour: e.colour.name(),
            })
            .collect()
    });
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        box_id: box_id(&ctx.cfg),
        ae_title: ctx.cfg.ae_title.clone(),
        started_at: iso(m.started_ms),
        uptime_s: (m.uptime().as_secs_f64() * 10.0).round() / 10.0,
        ready: is_ready(&health, m),
        pipeline_alive: m.pipeline_alive(),
        health,
        led: LedView {
            shown: m.led(),
            history,
        },
        engine: m.model(),
        queue: counts,
        received: Received {
            instances: m.instances.load(std::sync::atomic::Ordering::Relaxed),
            bytes: m.bytes.load(std::sync::atomic::Ordering::Relaxed),
            associations: m.associations.load(std::sync::atomic::Ordering::Relaxed),
        },
        series,
        destinations,
        disk,
        memory,
        temperatures,
        reports_pending: ctx.outbox.as_ref().and_then(|o| o.len().ok()),
        receive_limits: {
            let b = ctx.cfg.receive.memory_bound();
            ReceiveLimitsView {
                memory_bound_bytes: b.total as u64,
                per_association_bytes: b.per_association as u64,
                per_pending_bytes: b.per_pending as u64,
                pending_connections: m.pending.load(std::sync::atomic::Ordering::Relaxed),
                refused: m
                    .receive_events()
                    .into_iter()
                    .map(|((f, r), n)| (format!("{f}/{r}"), n))
                    .collect(),
            }
        },
    }
}

fn is_ready(h: &Health, m: &Monitor) -> bool {
    use crate::health::State;
    m.booted() && m.faults().is_empty() && !matches!(h.state, State::Booting | State::Fault)
}

async fn snap(ctx: Arc<StatusCtx>) -> Result<Snapshot, StatusCode> {
    tokio::task::spawn_blocking(move || snapshot(&ctx))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn index(AxState(ctx): AxState<Arc<StatusCtx>>) -> Response {
    match snap(ctx).await {
        Ok(s) => Html(page::render(&s)).into_response(),
        Err(code) => code.into_response(),
    }
}

async fn api_status(AxState(ctx): AxState<Arc<StatusCtx>>) -> Response {
    match snap(ctx).await {
        Ok(s) => Json(s).into_response(),
        Err(code) => code.into_response(),
    }
}

async fn metrics(AxState(ctx): AxState<Arc<StatusCtx>>) -> Response {
    match snap(ctx.clone()).await {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus::render(&s, &ctx.monitor),
        )
            .into_response(),
        Err(code) => code.into_response(),
    }
}

async fn healthz(AxState(ctx): AxState<Arc<StatusCtx>>) -> Response {
    if ctx.monitor.pipeline_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "pipeline not alive\n").into_response()
    }
}

async fn readyz(AxState(ctx): AxState<Arc<StatusCtx>>) -> Response {
    let h = ctx.monitor.health();
    if is_ready(&h, &ctx.monitor) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", crate::health::status_line(&h)),
        )
            .into_response()
    }
}

/// Equal-time comparison, so the token cannot be guessed byte by byte from response times
/// (written by hand: a dozen lines do not need a crate).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The service token check of the POST endpoints: None when the request may go on, else the
/// response refusing it.
fn authorize(ctx: &StatusCtx, headers: &HeaderMap, what: &str) -> Option<Response> {
    let token = &ctx.cfg.health.service_token;
    if token.is_empty() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                format!("{what} is disabled: set health.service_token\n"),
            )
                .into_response(),
        );
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.trim().as_bytes(), token.as_bytes()) {
        warn!(
            stage = "status",
            what, "refused: missing or wrong service token"
        );
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "service token required\n",
            )
                .into_response(),
        );
    }
    None
}

async fn identify(AxState(ctx): AxState<Arc<StatusCtx>>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize(&ctx, &headers, "identify") {
        return refused;
    }
    let until = ctx.monitor.identify_for(secs(ctx.cfg.health.identify_s));
    info!(stage = "status", "identify requested");
    Json(serde_json::json!({ "identify_until": iso(until) })).into_response()
}

/// `POST /api/series/{hash}/retry`: a failed series goes back to forwarding (its refused or
/// failed deliveries) or to scoring; 404 for an unknown hash, 409 for a series not failed.
async fn retry(
    AxState(ctx): AxState<Arc<StatusCtx>>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize(&ctx, &headers, "retry") {
        return refused;
    }
    let queue = ctx.queue.clone();
    let h = hash.clone();
    let done = match tokio::task::spawn_blocking(move || queue.retry(&h)).await {
        Ok(r) => r,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match done {
        Ok((_, how)) => {
            info!(stage = "status", series_hash = %hash, ?how, "failed series retried by an operator");
            Json(serde_json::json!({ "series_hash": hash, "retried": how })).into_response()
        }
        Err(e @ crate::queue::RetryError::NotFound) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e @ crate::queue::RetryError::NotFailed(_)) => {
            (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(e) => {
            warn!(stage = "status", error = %e, "retry failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

pub fn router(ctx: Arc<StatusCtx>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/identify", post(identify))
        .route("/api/series/{hash}/retry", post(retry))
        .with_state(ctx)
}

#[derive(Debug, thiserror::Error)]
#[error("status port {addr}: {source}")]
pub struct StatusError {
    addr: String,
    source: std::io::Error,
}

/// Binds the status port (an error if it cannot: the caller decides).
pub async fn bind(addr: &str) -> Result<TcpListener, StatusError> {
    TcpListener::bind(addr).await.map_err(|source| StatusError {
        addr: addr.to_string(),
        source,
    })
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<StatusCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if let Some(a) = addr {
        info!(stage = "status", addr = %a, "status port listening");
    }
    let app = router(ctx);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
    if let Err(e) = r {
        warn!(stage = "status", error = %e, "status port stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abcdefabcdefabcd", b"abcdefabcdefabcd"));
        assert!(!same(b"abcdefabcdefabcd", b"abcdefabcdefabce"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            iso(1_700_000_000_000).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
    }
}
