//! One Storage SCP association: negotiation with access control, then C-ECHO and C-STORE.
//!
//! Each C-STORE is streamed into a temp file as its fragments arrive and answered only after
//! the instance is durable on disk and recorded in the queue (see `store`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, PresentationContextResultReason,
    UserIdentity,
};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Receiver;
use crate::config::{secs, Config};
use crate::dimse::{self, status, Command};
use crate::queue::Recorded;
use crate::store::{self, Incoming, StoreError};

/// Buffered dataset bytes are written to the temp file in chunks of about this size.
const FLUSH_BYTES: usize = 1 << 20;

/// Called AE must be ours; calling AE and source address must be a configured peer.
struct PeerAccess {
    cfg: Arc<Config>,
    ip: IpAddr,
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let called = called_ae_title.trim();
        let calling = calling_ae_title.trim();
        if called != this_ae_title.trim() {
            warn!(ip = %self.ip, calling, called, "association refused: called AE title is not ours");
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.cfg.peer_allowed(calling, self.ip) {
            warn!(ip = %self.ip, calling, "association refused: calling AE title not allowed from this address");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

fn options(
    rx: &Receiver,
    ip: IpAddr,
) -> ServerAssociationOptions<'static, PeerAccess, dicom_ul::association::server::DefaultNegotiation>
{
    let r = &rx.cfg.receive;
    let read = secs(r.read_timeout_s);
    let mut o = ServerAssociationOptions::new()
        .ae_access_control(PeerAccess {
            cfg: rx.cfg.clone(),
            ip,
        })
        .ae_title(rx.cfg.ae_title.clone())
        .max_pdu_length(r.max_pdu)
        // Peers sometimes send PDUs a little over what they negotiated; the length is still
        // bounded by dicom-ul's own maximum.
        .strict(false)
        // dicom-ul's own per-PDU limit is the longer of ours; the finer read/idle split is
        // applied around each receive below.
        .read_timeout(read.max(secs(r.idle_timeout_s)))
        .write_timeout(read)
        .with_abstract_syntax(dimse::VERIFICATION);
    for class in store::ACCEPTED_SOP_CLASSES {
        o = o.with_abstract_syntax(class);
    }
    for ts in &rx.transfer_syntaxes {
        o = o.with_transfer_syntax(ts.clone());
    }
    o
}

/// Establishes and serves one association; every failure ends in a log line.
pub(super) async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    rx: &Receiver,
    shutdown: watch::Receiver<bool>,
) {
    let opts = options(rx, peer.ip());
    let read = secs(rx.cfg.receive.read_timeout_s);
    match &rx.tls {
        Some(tls) => {
            let budget = read + secs(rx.cfg.tls.handshake_timeout_s);
            let opts = opts.tls_config(tls.clone());
            match tokio::time::timeout(budget, opts.establish_tls_async(socket)).await {
                Ok(Ok(assoc)) => serve(assoc, peer, rx, shutdown).await,
                Ok(Err(e)) => info!(peer = %peer, error = %e, "TLS association not established"),
                Err(_) => warn!(peer = %peer, "TLS handshake or association request timed out"),
            }
        }
        None => match tokio::time::timeout(read, opts.establish_async(socket)).await {
            Ok(Ok(assoc)) => serve(assoc, peer, rx, shutdown).await,
            Ok(Err(e)) => info!(peer = %peer, error = %e, "association not established"),
            Err(_) => warn!(peer = %peer, "association request timed out"),
        },
    }
}

/// Where the dataset of the C-STORE in progress goes.
enum Sink {
    /// Streaming into a temp file (taken out while a blocking write runs). Boxed: the open
    /// instance is large next to the other variants.
    File(Option<Box<Incoming>>),
    /// Already stored earlier: read and drop, answer success.
    Duplicate,
    /// Refused before any byte was stored: read and drop, answer this status.
    Refuse(u16, String),
}

/// The DIMSE message being received.
enum Pending {
    Idle,
    Command {
        pc: u8,
        buf: Vec<u8>,
    },
    Data {
        pc: u8,
        cmd: Command,
        sink: Sink,
        buf: Vec<u8>,
    },
}

struct Session<'a, S> {
    assoc: AsyncServerAssociation<S>,
    peer: SocketAddr,
    calling: String,
    rx: &'a Receiver,
    pending: Pending,
    stored: u64,
}

async fn serve<S>(
    assoc: AsyncServerAssociation<S>,
    peer: SocketAddr,
    rx: &Receiver,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let accepted = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .count();
    let calling = assoc.peer_ae_title().trim().to_string();
    info!(peer = %peer, calling = %calling, accepted_contexts = accepted, "association established");
    let mut s = Session {
        assoc,
        peer,
        calling,
        rx,
        pending: Pending::Idle,
        stored: 0,
    };
    let idle = secs(rx.cfg.receive.idle_timeout_s);
    let read = secs(rx.cfg.receive.read_timeout_s);
    loop {
        let busy = !matches!(s.pending, Pending::Idle);
        if !busy && *shutdown.borrow() {
            info!(peer = %peer, "shutting down: aborting idle association");
            let _ = s.assoc.abort().await;
            return;
        }
        let limit: Duration = if busy { read } else { idle };
        let received = tokio::select! {
            r = tokio::time::timeout(limit, s.assoc.receive()) => r,
            _ = shutdown.wait_for(|v| *v), if !busy => continue,
        };
        let pdu = match received {
            Ok(Ok(pdu)) => pdu,
            Ok(Err(e)) => {
                info!(peer = %peer, error = %e, stored = s.stored, "association ended");
                s.drop_pending();
                return;
            }
            Err(_) => {
                warn!(peer = %peer, busy, "association timed out; aborting");
                s.drop_pending();
                let _ = s.assoc.abort().await;
                return;
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    if let Err(reason) = s.on_pdv(pdv).await {
                        warn!(peer = %peer, %reason, "protocol error; aborting association");
                        s.drop_pending();
                        let _ = s.assoc.abort().await;
                        return;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                s.drop_pending();
                let _ = s.assoc.send(&Pdu::ReleaseRP).await;
                info!(peer = %peer, calling = %s.calling, stored = s.stored, "association released");
                return;
            }
            Pdu::AbortRQ { source } => {
                info!(peer = %peer, ?source, stored = s.stored, "association aborted by peer");
                s.drop_pending();
                return;
            }
            other => {
                warn!(peer = %peer, pdu = %other.short_description(), "unexpected PDU; aborting");
                s.drop_pending();
                let _ = s.assoc.abort().await;
                return;
            }
        }
    }
}

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The negotiated (abstract syntax, transfer syntax) of an accepted context.
    fn context(&self, pc: u8) -> Option<(String, String)> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|c| c.id == pc && c.reason == PresentationContextResultReason::Acceptance)
            .map(|c| (c.abstract_syntax.clone(), c.transfer_syntax.clone()))
    }

    fn drop_pending(&mut self) {
        if let Pending::Data {
            sink: Sink::File(Some(inc)),
            ..
        } = std::mem::replace(&mut self.pending, Pending::Idle)
        {
            inc.discard();
        }
    }

    async fn on_pdv(&mut self, pdv: PDataValue) -> Result<(), String> {
        let PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            mut data,
        } = pdv;
        match (value_type, &mut self.pending) {
            (PDataValueType::Command, Pending::Idle) => {
                self.pending = Pending::Command { pc, buf: data };
            }
            (PDataValueType::Command, Pending::Command { pc: p, buf }) if *p == pc => {
                buf.append(&mut data);
            }
            (PDataValueType::Data, Pending::Data { pc: p, buf, .. }) if *p == pc => {
                self.rx.monitor.bytes_received(data.len());
                buf.append(&mut data);
                if buf.len() >= FLUSH_BYTES && !is_last {
                    self.flush().await;
                }
            }
            _ => return Err("PDV out of order or on another presentation context".into()),
        }
        if !is_last {
            return Ok(());
        }
        match std::mem::replace(&mut self.pending, Pending::Idle) {
            Pending::Command { pc, buf } => self.on_command(pc, &buf).await,
            Pending::Data { pc, cmd, sink, buf } => {
                let (code, comment) = self.finish_store(&cmd, sink, buf).await;
                self.respond(
                    pc,
                    dimse::c_store_rsp(
                        cmd.message_id,
                        &cmd.sop_class_uid,
                        &cmd.sop_instance_uid,
                        code,
                        comment.as_deref(),
                    ),
                )
                .await
            }
            Pending::Idle => Ok(()),
        }
    }

    async fn respond(&mut self, pc: u8, command: Vec<u8>) -> Result<(), String> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        };
        self.assoc
            .send(&pdu)
            .await
            .map_err(|e| format!("sending response: {e}"))
    }

    async fn on_command(&mut self, pc: u8, bytes: &[u8]) -> Result<(), String> {
        let cmd = dimse::read_command(bytes).map_err(|e| e.to_string())?;
        let Some((abstract_syntax, ts)) = self.context(pc) else {
            return Err(format!("command on unaccepted presentation context {pc}"));
        };
        match cmd.field {
            dimse::C_ECHO_RQ => {
                debug!(peer = %self.peer, "C-ECHO");
                if cmd.has_dataset {
                    return Err("C-ECHO with a data set".into());
                }
                self.respond(pc, dimse::c_echo_rsp(cmd.message_id)).await
            }
            dimse::C_STORE_RQ if cmd.has_dataset => {
                let sink = self.open_sink(&cmd, &abstract_syntax, &ts).await;
                self.pending = Pending::Data {
                    pc,
                    cmd,
                    sink,
                    buf: Vec::with_capacity(64 * 1024),
                };
                Ok(())
            }
            other => Err(format!("unsupported DIMSE command 0x{other:04X}")),
        }
    }

    /// Decides where the coming dataset goes, before any of it arrives.
    async fn open_sink(&self, cmd: &Command, abstract_syntax: &str, ts: &str) -> Sink {
        let h = store::uid_hash(&cmd.sop_instance_uid);
        if cmd.sop_class_uid != abstract_syntax {
            warn!(peer = %self.peer, instance = %h, "C-STORE SOP class differs from its presentation context");
            return Sink::Refuse(
                status::DATASET_MISMATCH,
                "SOP class differs from presentation context".into(),
            );
        }
        if !store::ACCEPTED_SOP_CLASSES.contains(&cmd.sop_class_uid.as_str()) {
            return Sink::Refuse(
                status::SOP_CLASS_NOT_SUPPORTED,
                "SOP class not supported".into(),
            );
        }
        let r = &self.rx.cfg.receive;
        let (store, queue) = (self.rx.store.clone(), self.rx.queue.clone());
        let (min_bytes, min_pct) = (r.min_free_bytes, r.min_free_percent);
        let (class, inst, ts) = (
            cmd.sop_class_uid.clone(),
            cmd.sop_instance_uid.clone(),
            ts.to_string(),
        );
        let opened = tokio::task::spawn_blocking(move || {
            if queue.has_instance(&inst).unwrap_or(false) {
                return Ok(None);
            }
            if !store.has_room(min_bytes, min_pct) {
                // Old delivered studies go before a sender is refused.
                match crate::housekeeping::prune_for_space(&queue, &store, min_bytes, min_pct) {
                    Ok(n) if n > 0 => {
                        info!(series = n, "pruned delivered series to make room")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "pruning for space failed"),
                }
            }
            if !store.has_room(min_bytes, min_pct) {
                return Err(StoreError::Io {
                    path: store.root().display().to_string(),
                    source: std::io::Error::other("free space under the configured watermark"),
                });
            }
            store.begin(&class, &inst, &ts).map(Some)
        })
        .await;
        match opened {
            Ok(Ok(Some(inc))) => Sink::File(Some(Box::new(inc))),
            Ok(Ok(None)) => Sink::Duplicate,
            Ok(Err(e @ StoreError::Io { .. })) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "refusing C-STORE: cannot write");
                Sink::Refuse(status::OUT_OF_RESOURCES, "out of resources".into())
            }
            Ok(Err(e)) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "refusing C-STORE");
                Sink::Refuse(status::CANNOT_UNDERSTAND, e.to_string())
            }
            Err(e) => {
                warn!(error = %e, "store task failed");
                Sink::Refuse(status::OUT_OF_RESOURCES, "out of resources".into())
            }
        }
    }

    /// Writes buffered bytes of the current instance to its temp file off the async threads.
    async fn flush(&mut self) {
        let Pending::Data { sink, buf, cmd, .. } = &mut self.pending else {
            return;
        };
        let Sink::File(slot) = sink else {
            buf.clear();
            return;
        };
        let Some(mut inc) = slot.take() else { return };
        let chunk = std::mem::take(buf);
        let done = tokio::task::spawn_blocking(move || match inc.write(&chunk) {
            Ok(()) => Ok(inc),
            Err(e) => Err((e, inc)),
        })
        .await;
        match done {
            Ok(Ok(inc)) => *slot = Some(inc),
            Ok(Err((e, inc))) => {
                warn!(instance = %store::uid_hash(&cmd.sop_instance_uid), error = %e, "write failed");
                (*inc).discard();
                *sink = Sink::Refuse(status::OUT_OF_RESOURCES, "write failed".into());
            }
            Err(_) => *sink = Sink::Refuse(status::OUT_OF_RESOURCES, "write failed".into()),
        }
    }

    /// Completes the instance: write, fsync, check, move into place, record; returns the status.
    async fn finish_store(
        &mut self,
        cmd: &Command,
        sink: Sink,
        buf: Vec<u8>,
    ) -> (u16, Option<String>) {
        let h = store::uid_hash(&cmd.sop_instance_uid);
        let mut inc = match sink {
            Sink::Duplicate => {
                debug!(instance = %h, "duplicate instance acknowledged, not stored again");
                return (status::SUCCESS, None);
            }
            Sink::Refuse(code, why) => return (code, Some(why)),
            Sink::File(None) => return (status::OUT_OF_RESOURCES, Some("write failed".into())),
            Sink::File(Some(inc)) => *inc,
        };
        let (store, queue) = (self.rx.store.clone(), self.rx.queue.clone());
        let done = tokio::task::spawn_blocking(move || {
            inc.write(&buf).map_err(Failure::Store)?;
            let staged = inc.finish().map_err(Failure::Store)?;
            let _admitting = store.admitting();
            if queue
                .has_instance(&staged.sop_instance_uid)
                .map_err(Failure::Queue)?
            {
                staged.discard();
                return Ok(Recorded::Duplicate);
            }
            let (study, series, sop) = (
                staged.study_uid.clone(),
                staged.series_uid.clone(),
                staged.sop_instance_uid.clone(),
            );
            store.commit(staged).map_err(Failure::Store)?;
            queue
                .record_instance(&study, &series, &sop)
                .map_err(Failure::Queue)
        })
        .await;
        match done {
            Ok(Ok(rec)) => {
                self.stored += 1;
                if rec == Recorded::New {
                    self.rx.monitor.instance_stored();
                }
                debug!(instance = %h, ?rec, "instance stored");
                (status::SUCCESS, None)
            }
            Ok(Err(Failure::Store(e @ StoreError::Invalid(_)))) => {
                warn!(peer = %self.peer, calling = %self.calling, instance = %h, error = %e, "instance refused");
                (status::CANNOT_UNDERSTAND, Some(e.to_string()))
            }
            Ok(Err(e)) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "instance not stored");
                (status::OUT_OF_RESOURCES, Some("could not store".into()))
            }
            Err(e) => {
                warn!(instance = %h, error = %e, "store task failed");
                (status::OUT_OF_RESOURCES, Some("could not store".into()))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Queue(crate::queue::QueueError),
}
