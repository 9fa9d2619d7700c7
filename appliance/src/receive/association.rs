//! One connection: its A-ASSOCIATE-RQ (access control, negotiation, an association slot),
//! then the association's C-ECHOs and C-STOREs until release, abort or a time limit.
//!
//! Each C-STORE's data set is streamed into a temp file as its fragments arrive and answered
//! only after the instance is durable on disk and recorded in the queue (see `store`). Every
//! way an association ends is a PDU (A-RELEASE-RP, A-ABORT, A-ASSOCIATE-RJ) and a log line,
//! never a bare close; a broken protocol or limit is also counted (`Monitor::receive_event`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::acse::{self, Accepted, Offer};
use super::admit::Ticket;
use super::message::{Assembler, Step};
use super::pdu::{self, AbortReason, PduReader, Phase, ReadError, Reject, Violation};
use super::Receiver;
use crate::config::{secs, FLUSH_BYTES, READ_BUFFER_BYTES};
use crate::dimse::{self, status, Command};
use crate::queue::Recorded;
use crate::store::{self, uid_hash, Incoming, StoreError};

/// Why a session stops.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("{0}")]
    Io(String),
}

/// Reads the A-ASSOCIATE-RQ within `receive.request_timeout_s`, decides, and serves the
/// association; `ticket` (the pending place) is given back once the association exists.
pub(super) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    rx: Arc<Receiver>,
    slots: Arc<Semaphore>,
    ticket: Ticket,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (r, mut w) = tokio::io::split(stream);
    // Headers and small PDUs come out of this buffer, not a read call each.
    let mut reader = PduReader::new(BufReader::with_capacity(READ_BUFFER_BYTES, r));
    let cfg = &rx.cfg.receive;
    let request = secs(cfg.request_timeout_s);
    let write = secs(cfg.read_timeout_s);
    let limits = rx.pdu_limits();
    // The whole request within the request timeout, however slowly its bytes come.
    let whole = tokio::time::timeout(
        request,
        reader.next(Phase::Request, &limits, request, request),
    );
    let header = tokio::select! {
        h = whole => h.unwrap_or(Err(ReadError::Timeout(request))),
        _ = shutdown.wait_for(|v| *v) => return,
    };
    let refuse = |reason: &'static str| rx.monitor.receive_event("connections", reason);
    // Lines about connections that never became associations are rate-limited (a flood would
    // be a log flood too); /metrics counts every one.
    let log = || rx.log_budget.take();
    let rq = match header.and_then(|_| Ok(acse::parse_rq(reader.body())?)) {
        Ok(rq) => rq,
        Err(ReadError::Closed) => {
            debug!(peer = %peer, "connection closed before an association request");
            refuse("closed_before_request");
            return;
        }
        Err(ReadError::Timeout(t)) => {
            if log() {
                warn!(peer = %peer, limit_s = t.as_secs_f64(), "association request not complete in time; aborting");
            }
            refuse("request_timeout");
            let _ = pdu::send(&mut w, &pdu::abort(AbortReason::NotSpecified), write).await;
            return;
        }
        Err(ReadError::Truncated) => {
            if log() {
                info!(peer = %peer, "connection closed inside its association request");
            }
            refuse("truncated_request");
            return;
        }
        Err(ReadError::Violation(v)) => {
            if log() {
                warn!(peer = %peer, violation = %v, "invalid association request; aborting");
            }
            rx.monitor.receive_event("violations", v.metric());
            let _ = pdu::send(&mut w, &pdu::abort(v.reason()), write).await;
            return;
        }
        Err(ReadError::Io(e)) => {
            if log() {
                info!(peer = %peer, error = %e, "connection lost before an association");
            }
            refuse("io_error");
            return;
        }
    };
    let (called, calling) = (rq.called(), rq.calling());
    let rejected = if called != rx.cfg.ae_title.trim() {
        warn!(peer = %peer, calling = %calling, called = %called, "association refused: called AE title is not ours");
        Some((Reject::CALLED_AE_NOT_RECOGNIZED, "called_ae"))
    } else if !rx.cfg.peer_allowed(&calling, peer.ip()) {
        warn!(peer = %peer, calling = %calling, "association refused: calling AE title not allowed from this address");
        Some((Reject::CALLING_AE_NOT_RECOGNIZED, "calling_ae"))
    } else {
        None
    };
    if let Some((rj, why)) = rejected {
        refuse(why);
        let _ = pdu::send(&mut w, &rj.pdu(), write).await;
        return;
    }
    let syntaxes = rx.abstract_syntaxes();
    let offer = Offer {
        abstract_syntaxes: &syntaxes,
        transfer_syntaxes: &rx.transfer_syntaxes,
        max_pdu: cfg.max_pdu,
        implementation_class_uid: store::IMPLEMENTATION_CLASS_UID,
        implementation_version: store::IMPLEMENTATION_VERSION,
    };
    let negotiated = match acse::negotiate(&rq, &offer) {
        Ok(n) => n,
        Err(rj) => {
            warn!(peer = %peer, calling = %calling, version = rq.protocol_version, "association refused: protocol version or application context not supported");
            refuse("negotiation");
            let _ = pdu::send(&mut w, &rj.pdu(), write).await;
            return;
        }
    };
    let Ok(slot) = slots.try_acquire_owned() else {
        warn!(peer = %peer, calling = %calling, max = cfg.max_associations, "association refused: too many at once");
        refuse("association_limit");
        let _ = pdu::send(&mut w, &Reject::LOCAL_LIMIT_EXCEEDED.pdu(), write).await;
        return;
    };
    if let Err(e) = pdu::send(&mut w, &acse::associate_ac(&rq, &negotiated, &offer), write).await {
        info!(peer = %peer, error = %e, "association not established: sending A-ASSOCIATE-AC");
        return;
    }
    drop(ticket);
    info!(peer = %peer, calling = %calling, accepted_contexts = negotiated.accepted.len(), "association established");
    rx.monitor.association_started();
    let mut s = Session {
        reader,
        writer: w,
        peer,
        calling,
        rx: rx.clone(),
        contexts: negotiated.accepted,
        assembler: Assembler::new(cfg.max_command_bytes as usize, cfg.max_instance_bytes),
        current: None,
        stored: 0,
        _slot: slot,
    };
    s.serve(shutdown).await;
    rx.monitor.association_ended();
}

/// Where the data set of the C-STORE in progress goes.
enum Sink {
    /// Streaming into a temp file (taken out while a blocking write runs). Boxed: the open
    /// instance is large next to the other variant.
    File(Option<Box<Incoming>>),
    /// Refused before any byte was stored: read and drop, answer this status.
    Refuse(u16, String),
}

/// The C-STORE whose data set is arriving.
struct Current {
    pc: u8,
    cmd: Command,
    sink: Sink,
    buf: Vec<u8>,
}

struct Session<S> {
    reader: PduReader<BufReader<ReadHalf<S>>>,
    writer: WriteHalf<S>,
    peer: SocketAddr,
    calling: String,
    rx: Arc<Receiver>,
    contexts: Vec<Accepted>,
    assembler: Assembler,
    current: Option<Current>,
    stored: u64,
    /// The association slot, given back when the session ends.
    _slot: OwnedSemaphorePermit,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self, mut shutdown: watch::Receiver<bool>) {
        let cfg = &self.rx.cfg.receive;
        let (idle, read) = (secs(cfg.idle_timeout_s), secs(cfg.read_timeout_s));
        let limits = self.rx.pdu_limits();
        let peer = self.peer;
        loop {
            let busy = self.assembler.busy();
            if !busy && *shutdown.borrow() {
                info!(peer = %peer, "shutting down: aborting idle association");
                self.abort(AbortReason::NotSpecified).await;
                return;
            }
            let wait = if busy { read } else { idle };
            let next = tokio::select! {
                r = self.reader.next(Phase::Established, &limits, wait, read) => r,
                _ = shutdown.wait_for(|v| *v), if !busy => continue,
            };
            let header = match next {
                Ok(h) => h,
                Err(ReadError::Closed) => {
                    info!(peer = %peer, stored = self.stored, busy, "connection closed by the peer without release");
                    return;
                }
                Err(ReadError::Timeout(t)) => {
                    warn!(peer = %peer, busy, limit_s = t.as_secs_f64(), stored = self.stored, "association timed out; aborting");
                    let why = if busy { "read_timeout" } else { "idle_timeout" };
                    self.rx.monitor.receive_event("connections", why);
                    self.abort(AbortReason::NotSpecified).await;
                    return;
                }
                Err(ReadError::Violation(v)) => return self.violation(v).await,
                Err(ReadError::Truncated) => {
                    info!(peer = %peer, stored = self.stored, busy, "connection closed by the peer inside a PDU");
                    return;
                }
                Err(ReadError::Io(e)) => {
                    info!(peer = %peer, error = %e, stored = self.stored, "association lost");
                    return;
                }
            };
            match header.kind {
                pdu::P_DATA_TF => {
                    let body = self.reader.take_body();
                    let done = self.on_p_data(&body).await;
                    self.reader.restore(body);
                    match done {
                        Ok(()) => {}
                        Err(Stop::Violation(v)) => return self.violation(v).await,
                        Err(Stop::Io(e)) => {
                            info!(peer = %peer, error = %e, stored = self.stored, "association lost");
                            return;
                        }
                    }
                }
                pdu::RELEASE_RQ => {
                    let busy = self.assembler.busy();
                    let write = secs(self.rx.cfg.receive.read_timeout_s);
                    let _ = pdu::send(&mut self.writer, &pdu::release_rp(), write).await;
                    info!(peer = %peer, calling = %self.calling, stored = self.stored, busy, "association released");
                    return;
                }
                _ => {
                    info!(peer = %peer, stored = self.stored, "association aborted by the peer");
                    return;
                }
            }
        }
    }

    /// Ends the association for a broken protocol or limit: A-ABORT, log line, counter.
    async fn violation(&mut self, v: Violation) {
        warn!(peer = %self.peer, calling = %self.calling, violation = %v, stored = self.stored, "protocol violation; aborting association");
        self.rx.monitor.receive_event("violations", v.metric());
        self.abort(v.reason()).await;
    }

    async fn abort(&mut self, reason: AbortReason) {
        self.current = None;
        let write = secs(self.rx.cfg.receive.read_timeout_s);
        let _ = pdu::send(&mut self.writer, &pdu::abort(reason), write).await;
    }

    async fn on_p_data(&mut self, body: &[u8]) -> Result<(), Stop> {
        for pdv in pdu::pdvs(body) {
            let pdv = pdv?;
            if !self.contexts.iter().any(|c| c.id == pdv.pc) {
                return Err(Violation::Invalid(format!(
                    "PDV on presentation context {}, which was not accepted",
                    pdv.pc
                ))
                .into());
            }
            match self.assembler.feed(pdv)? {
                Step::More => {}
                Step::Command { pc, bytes } => self.on_command(pc, &bytes).await?,
                Step::Data { data, last } => self.on_data(data, last).await?,
            }
        }
        Ok(())
    }

    async fn respond(&mut self, pc: u8, command: Vec<u8>) -> Result<(), Stop> {
        let write = secs(self.rx.cfg.receive.read_timeout_s);
        pdu::send(&mut self.writer, &pdu::p_data_command(pc, &command), write)
            .await
            .map_err(|e| Stop::Io(format!("sending a response: {e}")))
    }

    async fn on_command(&mut self, pc: u8, bytes: &[u8]) -> Result<(), Stop> {
        let cmd = dimse::read_command(bytes)
            .map_err(|e| Violation::Invalid(format!("command set: {e}")))?;
        let Some(ctx) = self.contexts.iter().find(|c| c.id == pc).cloned() else {
            return Err(Violation::Invalid(format!("command on context {pc}")).into());
        };
        match cmd.field {
            dimse::C_ECHO_RQ if !cmd.has_dataset => {
                debug!(peer = %self.peer, "C-ECHO");
                self.respond(pc, dimse::c_echo_rsp(cmd.message_id)).await
            }
            dimse::C_STORE_RQ if cmd.has_dataset => {
                let sink = self.open_sink(&cmd, &ctx).await;
                self.current = Some(Current {
                    pc,
                    cmd,
                    sink,
                    buf: Vec::with_capacity(64 * 1024),
                });
                self.assembler.expect_data(pc);
                Ok(())
            }
            other => Err(Violation::Invalid(format!(
                "DIMSE command 0x{other:04X} (with data set: {}) is not served",
                cmd.has_dataset
            ))
            .into()),
        }
    }

    /// Decides where the coming data set goes, before any of it arrives.
    async fn open_sink(&self, cmd: &Command, ctx: &Accepted) -> Sink {
        let h = uid_hash(&cmd.sop_instance_uid);
        let refuse = |reason: &'static str, code: u16, comment: String| {
            self.rx.monitor.receive_event("instances", reason);
            Sink::Refuse(code, comment)
        };
        if let Err(e) = crate::uid::check(&cmd.sop_instance_uid) {
            warn!(peer = %self.peer, calling = %self.calling, instance = %h, error = %e, "C-STORE refused: the SOP Instance UID is not a UID");
            return refuse(
                "invalid_uid",
                status::CANNOT_UNDERSTAND,
                format!("SOP Instance UID {e}"),
            );
        }
        if cmd.sop_class_uid != ctx.abstract_syntax {
            warn!(peer = %self.peer, instance = %h, "C-STORE SOP class differs from its presentation context");
            return refuse(
                "class_mismatch",
                status::DATASET_MISMATCH,
                "SOP class differs from presentation context".into(),
            );
        }
        if !store::ACCEPTED_SOP_CLASSES.contains(&cmd.sop_class_uid.as_str()) {
            return refuse(
                "sop_class",
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
            ctx.transfer_syntax.clone(),
        );
        let opened = tokio::task::spawn_blocking(move || {
            // A resend of a stored instance needs no room: it is only checked against what is
            // stored (same series: Success; another: refused), then dropped. Its series counts
            // as arriving from now on, so housekeeping leaves it alone while the resend goes on
            // (settled under the admission lock when the instance is complete).
            let known = queue.instance_series(&inst).unwrap_or(None);
            if let Some(series) = &known {
                store.arrived(series);
            }
            if known.is_none() && !store.has_room(min_bytes, min_pct) {
                // Old delivered studies go before a sender is refused.
                match crate::housekeeping::prune_for_space(&queue, &store, min_bytes, min_pct) {
                    Ok(n) if n > 0 => {
                        info!(series = n, "pruned delivered series to make room")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "pruning for space failed"),
                }
                if !store.has_room(min_bytes, min_pct) {
                    return Err(StoreError::Io {
                        path: store.root().display().to_string(),
                        source: std::io::Error::other("free space under the configured watermark"),
                    });
                }
            }
            store.begin(&class, &inst, &ts)
        })
        .await;
        match opened {
            Ok(Ok(inc)) => Sink::File(Some(Box::new(inc))),
            Ok(Err(e @ StoreError::Io { .. })) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "refusing C-STORE: cannot write");
                refuse(
                    "out_of_resources",
                    status::OUT_OF_RESOURCES,
                    "out of resources".into(),
                )
            }
            Ok(Err(e)) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "refusing C-STORE");
                refuse("invalid", status::CANNOT_UNDERSTAND, e.to_string())
            }
            Err(e) => {
                warn!(error = %e, "store task failed");
                refuse(
                    "out_of_resources",
                    status::OUT_OF_RESOURCES,
                    "out of resources".into(),
                )
            }
        }
    }

    async fn on_data(&mut self, data: &[u8], last: bool) -> Result<(), Stop> {
        self.rx.monitor.bytes_received(data.len());
        let Some(cur) = self.current.as_mut() else {
            return Err(Violation::Unexpected("data set without a C-STORE").into());
        };
        if let Sink::File(_) = cur.sink {
            cur.buf.extend_from_slice(data);
        }
        if !last {
            if cur.buf.len() >= FLUSH_BYTES {
                self.flush().await;
            }
            return Ok(());
        }
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let (code, comment) = self.finish_store(&cur.cmd, cur.sink, cur.buf).await;
        self.respond(
            cur.pc,
            dimse::c_store_rsp(
                cur.cmd.message_id,
                &cur.cmd.sop_class_uid,
                &cur.cmd.sop_instance_uid,
                code,
                comment.as_deref(),
            ),
        )
        .await
    }

    /// Writes buffered bytes of the current instance to its temp file off the async threads.
    async fn flush(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Sink::File(slot) = &mut cur.sink else {
            cur.buf.clear();
            return;
        };
        let Some(mut inc) = slot.take() else { return };
        let chunk = std::mem::take(&mut cur.buf);
        let done = tokio::task::spawn_blocking(move || {
            let r = inc.write(&chunk);
            (r, inc, chunk)
        })
        .await;
        match done {
            Ok((Ok(()), inc, mut chunk)) => {
                *slot = Some(inc);
                // The buffer goes back for the next fragments (no reallocation per flush).
                chunk.clear();
                cur.buf = chunk;
            }
            Ok((Err(e), _inc, _)) => {
                // Dropping `_inc` removes its temp file.
                warn!(instance = %uid_hash(&cur.cmd.sop_instance_uid), error = %e, "write failed");
                self.rx
                    .monitor
                    .receive_event("instances", "out_of_resources");
                cur.sink = Sink::Refuse(status::OUT_OF_RESOURCES, "write failed".into());
            }
            Err(_) => {
                cur.sink = Sink::Refuse(status::OUT_OF_RESOURCES, "write failed".into());
            }
        }
    }

    /// Completes the instance: write, fsync, check, compare with what is stored, move into
    /// place, record; returns the status.
    async fn finish_store(
        &mut self,
        cmd: &Command,
        sink: Sink,
        buf: Vec<u8>,
    ) -> (u16, Option<String>) {
        let h = uid_hash(&cmd.sop_instance_uid);
        let mut inc = match sink {
            Sink::Refuse(code, why) => return (code, Some(why)),
            Sink::File(None) => return (status::OUT_OF_RESOURCES, Some("write failed".into())),
            Sink::File(Some(inc)) => *inc,
        };
        let (store, queue) = (self.rx.store.clone(), self.rx.queue.clone());
        let done = tokio::task::spawn_blocking(move || {
            inc.write(&buf).map_err(Failure::Store)?;
            let staged = inc.finish().map_err(Failure::Store)?;
            let _admitting = store.admitting();
            let (study, series, sop) = (
                staged.study_uid.clone(),
                staged.series_uid.clone(),
                staged.sop_instance_uid.clone(),
            );
            let admitted = queue
                .admission(&study, &series, &sop)
                .map_err(Failure::Queue)?;
            // New or a resend: either way the series is arriving, and a prune (which waits for
            // `_admitting`) must not remove it under the sender — a resend acknowledged here
            // as already stored would otherwise be lost with it, and the rest of the resend
            // would become a new, partial series.
            if matches!(admitted, Recorded::New | Recorded::Duplicate) {
                store.arrived(&series);
            }
            match admitted {
                Recorded::New => {}
                // A resend (Duplicate) or a clash (Conflict): the temp file goes with `staged`.
                other => return Ok((other, series)),
            }
            let dest = store.commit(staged).map_err(Failure::Store)?;
            let rec = queue
                .record_instance(&study, &series, &sop)
                .map_err(Failure::Queue)?;
            if let Recorded::Conflict(_) = rec {
                // Another association stored the same UID elsewhere since the check above.
                let _ = std::fs::remove_file(&dest);
            }
            Ok((rec, series))
        })
        .await;
        match done {
            Ok(Ok((Recorded::New, _))) => {
                self.stored += 1;
                self.rx.monitor.instance_stored();
                debug!(instance = %h, "instance stored");
                (status::SUCCESS, None)
            }
            Ok(Ok((Recorded::Duplicate, _))) => {
                debug!(instance = %h, "resend of a stored instance acknowledged, not stored again");
                (status::SUCCESS, None)
            }
            Ok(Ok((Recorded::Conflict(c), series))) => {
                let stored_in = match &c {
                    crate::queue::Conflict::InstanceElsewhere { stored_series_uid } => {
                        uid_hash(stored_series_uid)
                    }
                    crate::queue::Conflict::SeriesElsewhere { stored_study_uid } => {
                        uid_hash(stored_study_uid)
                    }
                };
                warn!(peer = %self.peer, calling = %self.calling, instance = %h, series = %uid_hash(&series), stored_in = %stored_in, conflict = %c, "instance refused: its UIDs clash with a stored instance");
                self.rx.monitor.receive_event("instances", "uid_conflict");
                (status::CANNOT_UNDERSTAND, Some(c.to_string()))
            }
            Ok(Err(Failure::Store(e @ StoreError::Invalid(_)))) => {
                warn!(peer = %self.peer, calling = %self.calling, instance = %h, error = %crate::uid::redact(&e.to_string()), "instance refused");
                self.rx.monitor.receive_event("instances", "invalid");
                (status::CANNOT_UNDERSTAND, Some(e.to_string()))
            }
            Ok(Err(e)) => {
                warn!(peer = %self.peer, instance = %h, error = %e, "instance not stored");
                self.rx
                    .monitor
                    .receive_event("instances", "out_of_resources");
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
