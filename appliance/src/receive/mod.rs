//! Storage SCP: the accept loop, its limits and graceful shutdown (one task per association).
//!
//! - The source IP is checked at accept time, before any PDU is read.
//! - At most `receive.max_associations` associations run at once; one more is answered with
//!   A-ASSOCIATE-RJ (transient, local limit exceeded).
//! - On shutdown the listener closes, idle associations are aborted, and in-flight C-STOREs
//!   get until the budget runs out to finish.

mod association;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource,
};
use dicom_ul::Pdu;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

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

/// What every association handler shares.
pub struct Receiver {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub queue: Queue,
    /// Counts associations, instances and bytes for the status port.
    pub monitor: Arc<Monitor>,
    transfer_syntaxes: Vec<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Receiver {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        queue: Queue,
        monitor: Arc<Monitor>,
    ) -> Result<Receiver, ReceiveError> {
        let tls = tls::server_config(&cfg.tls)?;
        Ok(Receiver {
            cfg,
            store,
            queue,
            monitor,
            transfer_syntaxes: accepted_transfer_syntaxes(),
            tls,
        })
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

/// Accepts associations until `shutdown` turns true, then waits up to `budget` for the
/// associations still running.
pub async fn run(
    listener: TcpListener,
    rx: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
    budget: Duration,
) {
    let max = rx.cfg.receive.max_associations.max(1);
    let limit = Arc::new(Semaphore::new(max));
    // Connections being told "busy" are bounded too, so a flood cannot pile up tasks.
    let rejecting = Arc::new(Semaphore::new(max));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, ae = %rx.cfg.ae_title, tls = rx.tls.is_some(), "storage SCP listening");
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
            drop(socket);
            continue;
        }
        let _ = socket.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let rx = rx.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    rx.monitor.association_started();
                    association::run(socket, peer, &rx, shutdown).await;
                    rx.monitor.association_ended();
                    drop(permit);
                });
            }
            Err(_) => {
                warn!(peer = %peer, max, "association refused: too many at once");
                if let (Ok(p), None) = (rejecting.clone().try_acquire_owned(), &rx.tls) {
                    let timeout = secs(rx.cfg.receive.read_timeout_s);
                    tokio::spawn(async move {
                        reject_busy(socket, peer, timeout).await;
                        drop(p);
                    });
                }
            }
        }
    }
    drop(listener);
    info!("storage SCP stopped accepting; waiting for running associations");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(budget, limit.acquire_many(all)).await;
    match drained {
        Ok(_) => info!("all associations finished"),
        Err(_) => warn!("shutdown budget spent with associations still running"),
    }
}

/// Reads the A-ASSOCIATE-RQ and answers A-ASSOCIATE-RJ transient (local limit exceeded).
async fn reject_busy(mut socket: TcpStream, peer: SocketAddr, timeout: Duration) {
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let read = dicom_ul::association::read_pdu_from_wire_async(&mut socket, &mut buf, 16384, false);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Pdu::AssociationRQ(_))) => {}
        _ => return,
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if dicom_ul::write_pdu(&mut out, &rj).is_ok() {
        let _ = tokio::time::timeout(timeout, socket.write_all(&out)).await;
        let _ = socket.shutdown().await;
    }
    tracing::debug!(peer = %peer, "sent A-ASSOCIATE-RJ transient");
}
