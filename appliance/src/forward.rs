//! C-STORE SCU (results to every destination) and the retry policy.
//!
//! A failure is transient (connection refused or timed out, A-ASSOCIATE-RJ transient, status
//! A7xx "out of resources", an aborted association) and retried with capped exponential
//! backoff, or permanent (A-ASSOCIATE-RJ permanent such as an unknown called AE, no accepted
//! presentation context, any other failure status such as A9xx / Cxxx) and not retried.
//! A result file of our own that is missing or unreadable is neither: nothing was sent, and
//! the daemon scores the series again from its stored instances (`ResultMissing`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{
    AssociationRJResult, PDataValue, PDataValueType, PresentationContextResultReason,
};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{secs, Config, Destination};
use crate::dimse::{self, EXPLICIT_VR_LE, IMPLICIT_VR_LE};

/// How a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
    /// A result file to send is missing or unreadable (e.g. after a power cut, or removed by
    /// hand): regenerate it rather than fail the series.
    #[error("result file missing or unreadable: {0}")]
    ResultMissing(String),
}

/// SCU settings taken from the config.
#[derive(Debug, Clone)]
pub struct ScuOptions {
    pub calling_ae: String,
    pub connect_timeout: Duration,
    pub dimse_timeout: Duration,
    pub max_pdu: u32,
}

impl ScuOptions {
    pub fn from_config(cfg: &Config) -> ScuOptions {
        ScuOptions {
            calling_ae: cfg.calling_ae().to_string(),
            connect_timeout: secs(cfg.forward.connect_timeout_s),
            dimse_timeout: secs(cfg.forward.dimse_timeout_s),
            max_pdu: cfg.receive.max_pdu,
        }
    }
}

/// Capped exponential backoff: the wait after the `attempts`-th failed attempt.
pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    initial.saturating_mul(factor).min(max)
}

/// One file ready to send.
struct Outgoing {
    path: PathBuf,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: String,
}

/// A result file that cannot be read, named without its folders (they are the study and
/// series UIDs, which logs only give as hashes).
fn result_missing(path: &Path, e: impl std::fmt::Display) -> SendError {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = e.to_string().replace(&path.display().to_string(), &name);
    SendError::ResultMissing(format!("{name}: {text}"))
}

fn read_meta(path: &PathBuf) -> Result<Outgoing, SendError> {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| result_missing(path, e))?;
    let meta = obj.meta();
    let t = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Ok(Outgoing {
        path: path.clone(),
        sop_class_uid: t(meta.media_storage_sop_class_uid()),
        sop_instance_uid: t(meta.media_storage_sop_instance_uid()),
        transfer_syntax: t(meta.transfer_syntax()),
    })
}

/// The dataset of `path` encoded in `ts_uid` (transcoding between uncompressed syntaxes).
fn encode_dataset(path: &PathBuf, ts_uid: &str) -> Result<Vec<u8>, SendError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| SendError::Permanent(format!("unknown transfer syntax {ts_uid}")))?;
    let obj = dicom_object::open_file(path).map_err(|e| result_missing(path, e))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| SendError::Permanent(format!("encoding {}: {e}", file_label(path))))?;
    Ok(out)
}

fn classify_establish(e: dicom_ul::association::Error) -> SendError {
    use dicom_ul::association::Error as E;
    match &e {
        E::Rejected { association_rj, .. } => match association_rj.result {
            AssociationRJResult::Transient => SendError::Transient(format!(
                "association rejected (transient): {}",
                association_rj.source
            )),
            AssociationRJResult::Permanent => SendError::Permanent(format!(
                "association rejected (permanent): {}",
                association_rj.source
            )),
        },
        E::NoAcceptedPresentationContexts { .. } => {
            SendError::Permanent("peer accepted none of the proposed SOP classes".into())
        }
        E::MissingAbstractSyntax { .. } | E::ToAddress { .. } => {
            SendError::Permanent(e.to_string())
        }
        _ => SendError::Transient(format!("association: {e}")),
    }
}

/// Stores `files` at `dest` over one association. Ok only when every file got a success (or
/// warning) status.
pub async fn store_files(
    opts: &ScuOptions,
    dest: &Destination,
    files: &[PathBuf],
) -> Result<(), SendError> {
    let batch = store_each(opts, dest, files).await;
    if let Some(e) = batch.stopped {
        return Err(e);
    }
    match batch.refused.first() {
        Some((_, e)) => Err(SendError::Permanent(e.clone())),
        None => Ok(()),
    }
}

/// What one association did with each file.
#[derive(Debug, Default)]
pub struct Batch {
    /// Answered with success (or a warning).
    pub delivered: Vec<PathBuf>,
    /// Refused for good by the peer, each with why (a failure status other than A7xx, or its
    /// SOP class not accepted): the other files are still sent.
    pub refused: Vec<(PathBuf, String)>,
    /// Why the batch stopped before every file was answered (the association could not be
    /// made or broke, the peer is out of resources, a result file is missing): the files in
    /// neither list were not sent.
    pub stopped: Option<SendError>,
}

/// The short name of a result file for reasons and logs (its folders are the study and
/// series UIDs).
pub fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Stores `files` at `dest` over one association, each on its own: a permanent refusal of one
/// object does not stop the others.
pub async fn store_each(opts: &ScuOptions, dest: &Destination, files: &[PathBuf]) -> Batch {
    let mut batch = Batch::default();
    if files.is_empty() {
        return batch;
    }
    if let Err(e) = send_batch(opts, dest, files, &mut batch).await {
        batch.stopped = Some(e);
    }
    batch
}

async fn send_batch(
    opts: &ScuOptions,
    dest: &Destination,
    files: &[PathBuf],
    batch: &mut Batch,
) -> Result<(), SendError> {
    let files_owned = files.to_vec();
    let outgoing: Vec<Outgoing> = tokio::task::spawn_blocking(move || {
        files_owned
            .iter()
            .map(read_meta)
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| SendError::Transient(format!("reading results: {e}")))??;

    // Propose exactly the classes we send, each with its file's syntax plus explicit and
    // implicit VR little endian.
    let mut contexts: BTreeSet<(String, Vec<String>)> = BTreeSet::new();
    for o in &outgoing {
        let mut ts = vec![o.transfer_syntax.clone()];
        for u in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
            if !ts.iter().any(|t| t == u) {
                ts.push(u.to_string());
            }
        }
        contexts.insert((o.sop_class_uid.clone(), ts));
    }
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(opts.calling_ae.clone())
        .called_ae_title(dest.ae.clone())
        .max_pdu_length(opts.max_pdu)
        .connection_timeout(opts.connect_timeout)
        .read_timeout(opts.dimse_timeout)
        .write_timeout(opts.dimse_timeout);
    for (class, ts) in &contexts {
        options = options.with_presentation_context(class.clone(), ts.clone());
    }
    let addr = format!("{}:{}", dest.host, dest.port);
    let establish = options.establish_async(addr);
    let mut scu =
        match tokio::time::timeout(opts.connect_timeout + opts.dimse_timeout, establish).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(classify_establish(e)),
            Err(_) => return Err(SendError::Transient("association request timed out".into())),
        };
    let mut result = Ok(());
    for (i, o) in outgoing.iter().enumerate() {
        let message_id = u16::try_from(i + 1).unwrap_or(u16::MAX);
        match send_one(&mut scu, o, message_id, opts.dimse_timeout).await {
            Ok(()) => batch.delivered.push(o.path.clone()),
            // This object is refused for good; the association goes on with the next.
            Err(SendError::Permanent(e)) => batch
                .refused
                .push((o.path.clone(), format!("{}: {e}", file_label(&o.path)))),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match &result {
        Ok(()) => {
            let _ = tokio::time::timeout(opts.dimse_timeout, scu.release()).await;
        }
        Err(_) => {
            let _ = tokio::time::timeout(opts.dimse_timeout, scu.abort()).await;
        }
    }
    result
}

async fn send_one(
    scu: &mut AsyncClientAssociation<TcpStream>,
    o: &Outgoing,
    message_id: u16,
    timeout: Duration,
) -> Result<(), SendError> {
    // The first accepted context for this class; prefer the file's own syntax.
    let accepted: Vec<_> = scu
        .presentation_contexts()
        .iter()
        .filter(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && pc.abstract_syntax == o.sop_class_uid
        })
        .cloned()
        .collect();
    let pc = accepted
        .iter()
        .find(|pc| pc.transfer_syntax == o.transfer_syntax)
        .or_else(|| accepted.first())
        .ok_or_else(|| SendError::Permanent(format!("peer refused SOP class {}", o.sop_class_uid)))?
        .clone();
    let path = o.path.clone();
    let ts = pc.transfer_syntax.clone();
    let data = tokio::task::spawn_blocking(move || encode_dataset(&path, &ts))
        .await
        .map_err(|e| SendError::Transient(format!("encoding result: {e}")))??;
    let cmd = dimse::c_store_rq(&o.sop_class_uid, &o.sop_instance_uid, message_id);
    let io = |e: dicom_ul::association::Error| SendError::Transient(format!("sending: {e}"));
    scu.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc.id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    })
    .await
    .map_err(io)?;
    {
        let mut writer = scu.send_pdata(pc.id);
        tokio::time::timeout(timeout, writer.write_all(&data))
            .await
            .map_err(|_| SendError::Transient("sending data timed out".into()))?
            .map_err(|e| SendError::Transient(format!("sending data: {e}")))?;
        tokio::time::timeout(timeout, writer.finish())
            .await
            .map_err(|_| SendError::Transient("sending data timed out".into()))?
            .map_err(|e| SendError::Transient(format!("sending data: {e}")))?;
    }
    let rsp = tokio::time::timeout(timeout, scu.receive())
        .await
        .map_err(|_| SendError::Transient("no C-STORE response in time".into()))?
        .map_err(|e| SendError::Transient(format!("waiting for C-STORE response: {e}")))?;
    let Pdu::PData { data } = rsp else {
        return Err(SendError::Transient(format!(
            "unexpected reply {}",
            rsp.short_description()
        )));
    };
    let mut cmd_bytes = Vec::new();
    for pdv in data {
        if pdv.value_type == PDataValueType::Command {
            cmd_bytes.extend_from_slice(&pdv.data);
        }
    }
    let rsp = dimse::read_command(&cmd_bytes).map_err(|e| SendError::Transient(e.to_string()))?;
    let status = rsp
        .status
        .ok_or_else(|| SendError::Transient("C-STORE response without status".into()))?;
    classify_status(status, rsp.error_comment.as_deref())
}

/// Success and warnings deliver; A7xx (out of resources) is transient; every other failure is
/// permanent for this object.
pub fn classify_status(status: u16, comment: Option<&str>) -> Result<(), SendError> {
    let detail = |kind: &str| {
        format!(
            "C-STORE status 0x{status:04X} ({kind}){}",
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        )
    };
    match status {
        0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => Ok(()),
        0xA700..=0xA7FF => Err(SendError::Transient(detail("out of resources"))),
        0xA900..=0xA9FF => Err(SendError::Permanent(detail(
            "data set does not match SOP class",
        ))),
        0xC000..=0xCFFF => Err(SendError::Permanent(detail("cannot understand"))),
        _ => Err(SendError::Permanent(detail("failure"))),
    }
}

/// Sends C-ECHO to `dest` (used by `demo` to wait for its receiver).
pub async fn echo(opts: &ScuOptions, dest: &Destination) -> Result<(), SendError> {
    let mut scu = ClientAssociationOptions::new()
        .calling_ae_title(opts.calling_ae.clone())
        .called_ae_title(dest.ae.clone())
        .connection_timeout(opts.connect_timeout)
        .read_timeout(opts.dimse_timeout)
        .with_presentation_context(dimse::VERIFICATION, vec![IMPLICIT_VR_LE, EXPLICIT_VR_LE])
        .establish_async(format!("{}:{}", dest.host, dest.port))
        .await
        .map_err(classify_establish)?;
    let pc = scu
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .ok_or_else(|| SendError::Permanent("verification not accepted".into()))?;
    scu.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: dimse::c_echo_rq(1),
        }],
    })
    .await
    .map_err(|e| SendError::Transient(e.to_string()))?;
    let rsp = scu
        .receive()
        .await
        .map_err(|e| SendError::Transient(e.to_string()))?;
    let _ = scu.release().await;
    match rsp {
        Pdu::PData { .. } => Ok(()),
        other => Err(SendError::Transient(format!(
            "unexpected reply {}",
            other.short_description()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (i, m) = (Duration::from_secs(2), Duration::from_secs(30));
        let got: Vec<u64> = (1..=7).map(|a| backoff(i, m, a).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(i, m, 1000), m);
    }

    #[test]
    fn statuses_split_into_retry_and_give_up() {
        assert!(classify_status(0x0000, None).is_ok());
        assert!(classify_status(0xB007, None).is_ok());
        assert!(matches!(
            classify_status(0xA700, None),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            classify_status(0xA900, None),
            Err(SendError::Permanent(_))
        ));
        assert!(
            matches!(classify_status(0xC123, Some("bad")), Err(SendError::Permanent(m)) if m.contains("bad"))
        );
        assert!(matches!(
            classify_status(0x0122, None),
            Err(SendError::Permanent(_))
        ));
    }
}
