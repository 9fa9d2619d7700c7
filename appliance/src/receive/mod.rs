//! Storage SCP: the accept loop, its limits and graceful shutdown (one task per connection).
//!
//! - The source IP is checked at accept time, before any byte is read.
//! - A new connection takes a pending place (`admit`: `receive.max_pending` in all,
//!   `receive.max_pending_per_source` per address; beyond them it is closed at once) and has
//!   `receive.request_timeout_s` to complete its A-ASSOCIATE-RQ (after the TLS handshake).
//! - Only an accepted A-ASSOCIATE-RQ takes one of `receive.max_associations` slots; with none
//!   free it is answered A-ASSOCIATE-RJ (transient, local limit exceeded).
//! - Every PDU's length is checked before its body is read (`pdu`), the request is parsed
//!   strictly (`acse`), DIMSE messages are reassembled with bounded memory (`message`); the
//!   receive path's memory is bounded by `ReceiveConfig::memory_bound`.
//! - On shutdown the listener closes, pending connections are dropped, idle associations are
//!   aborted, and in-flight C-STOREs get until the budget runs out to finish.

mod acse;
mod admit;
mod association;
mod message;
mod pdu;
pub mod tls;

/// The hand-written protocol layers, for the fuzz target and the tests: PDU reading,
/// A-ASSOCIATE-RQ parsing and negotiation, DIMSE message reassembly.
pub mod wire {
    pub use super::acse::{
        associate_ac, negotiate, parse_rq, Accepted, AssociateRq, Offer, Proposed,
    };
    pub use super::message::{Assembler, Step};
    pub use super::pdu::{
        admit, pdvs, AbortReason, Header, Limits, PduReader, Pdv, Phase, ReadError, Violation,
    };
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{secs, Config};
use crate::health::Monitor;
use crate::queue::Queue;
use crate::store::Store;

/// Transfer syntaxes we may accept for CT images; only those the linked codecs can decode
/// fully are offered (JPEG-LS needs the `jpegls` feature, for instance).
const CANDIDATE_TRANSFER_SYNTAXES: [&str; 10] = [
    "1.2.840.10008.1.2",      // implicit VR little endian
    "1.2.840.10008.1.2.1",    // explicit VR little endian
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
    "1.2.840.10008.1.2.5",    // RLE lossless
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.70", // JPEG lossless SV1
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
];

/// The transfer syntaxes this build accepts for CT images.
pub fn accepted_transfer_syntaxes() -> Vec<String> {
    CANDIDATE_TRANSFER_SYNTAXES
        .iter()
        .filter(|uid| {
            TransferSyntaxRegistry
                .get(uid)
                .is_some_and(|ts| ts.can_decode_all())
        })
        .map(|s| s.to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("DICOM listener {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// What every connection shares.
pub struct Receiver {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub queue: Queue,
    /// Counts associations, instances, bytes and refusals for the status port.
    pub monitor: Arc<Monitor>,
    transfer_syntaxes: Vec<String>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log_budget: LogBudget,
}

/// At most `LINES` log lines per `WINDOW_MS` about connections that never became
/// associations; the first line of a window says how many the last one suppressed.
struct LogBudget {
    window_start_ms: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    const LINES: u64 = 20;
    const WINDOW_MS: u64 = 10_000;

    fn new() -> LogBudget {
        LogBudget {
            window_start_ms: std::sync::atomic::AtomicU64::new(0),
            used: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::queue::now_ms();
        let start = self.window_start_ms.load(Relaxed);
        if now.saturating_sub(start) >= Self::WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Relaxed, Relaxed)
                .is_ok()
        {
            let used = self.used.swap(0, Relaxed);
            if used > Self::LINES {
                warn!(
                    suppressed = used - Self::LINES,
                    "more connections failed before their association than are logged; /metrics counts them all"
                );
            }
        }
        self.used.fetch_add(1, Relaxed) < Self::LINES
    }
}

impl Receiver {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        queue: Queue,
        monitor: Arc<Monitor>,
    ) -> Result<Receiver, ReceiveError> {
        let tls = tls::server_config(&cfg.tls)?.map(tokio_rustls::TlsAcceptor::from);
        Ok(Receiver {
            cfg,
            store,
            queue,
            monitor,
            transfer_syntaxes: accepted_transfer_syntaxes(),
            tls,
            log_budget: LogBudget::new(),
        })
    }

    fn pdu_limits(&self) -> pdu::Limits {
        pdu::Limits {
            max_associate_rq: self.cfg.receive.max_associate_rq_bytes,
            max_p_data: self.cfg.receive.max_p_data(),
        }
    }

    /// Verification and the storage classes we take.
    fn abstract_syntaxes(&self) -> Vec<&'static str> {
        let mut v = vec![crate::dimse::VERIFICATION];
        v.extend(crate::store::ACCEPTED_SOP_CLASSES);
        v
    }
}

/// Binds the DICOM listener.
pub async fn bind(addr: &str) -> Result<TcpListener, ReceiveError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiveError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Accepts connections until `shutdown` turns true, then waits up to `budget` for the
/// associations still running.
pub async fn run(
    listener: TcpListener,
    rx: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
    budget: Duration,
) {
    let r = &rx.cfg.receive;
    let max = r.max_associations.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let pending = admit::Pending::new(
        r.max_pending,
        r.max_pending_per_source,
        rx.monitor.pending.clone(),
    );
    if let Ok(addr) = listener.local_addr() {
        let m = r.memory_bound();
        info!(%addr, ae = %rx.cfg.ae_title, tls = rx.tls.is_some(), max_associations = max,
            max_pending = r.max_pending, memory_bound_mib = m.total.div_ceil(1 << 20),
            "storage SCP listening");
    }
    let mut accept_errors = 0u32;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (socket, peer) = match accepted {
            Ok(x) => {
                accept_errors = 0;
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                accept_errors = (accept_errors + 1).min(6);
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50 << accept_errors)).await;
                continue;
            }
        };
        if !rx.cfg.ip_allowed(peer.ip()) {
            warn!(peer = %peer, "connection refused: source address is not a configured peer");
            rx.monitor.receive_event("connections", "address");
            drop(socket);
            continue;
        }
        let ticket = match pending.enter(peer.ip()) {
            Ok(t) => t,
            Err(full) => {
                // A flood: one line per refusal would be a log flood too.
                debug!(peer = %peer, why = full.metric(), "connection closed: too many pending");
                rx.monitor.receive_event("connections", full.metric());
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let (rx, slots, shutdown) = (rx.clone(), slots.clone(), shutdown.clone());
        tokio::spawn(connection(socket, peer, rx, slots, ticket, shutdown));
    }
    drop(listener);
    info!("storage SCP stopped accepting; waiting for running associations");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(budget, slots.acquire_many(all)).await;
    match drained {
        Ok(_) => info!("all associations finished"),
        Err(_) => warn!("shutdown budget spent with associations still running"),
    }
}

/// One connection: the TLS handshake when configured, then the association.
async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    rx: Arc<Receiver>,
    slots: Arc<Semaphore>,
    ticket: admit::Ticket,
    shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = rx.tls.clone() else {
        return association::run(socket, peer, rx, slots, ticket, shutdown).await;
    };
    let limit = secs(rx.cfg.tls.handshake_timeout_s);
    match tokio::time::timeout(limit, tls.accept(socket)).await {
        Ok(Ok(stream)) => association::run(stream, peer, rx, slots, ticket, shutdown).await,
        Ok(Err(e)) => {
            info!(peer = %peer, error = %e, "TLS handshake failed");
            rx.monitor.receive_event("connections", "tls_handshake");
        }
        Err(_) => {
            warn!(peer = %peer, "TLS handshake timed out");
            rx.monitor.receive_event("connections", "tls_handshake");
        }
    }
}
