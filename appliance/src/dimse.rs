//! The few DIMSE messages `serve` speaks (C-ECHO, C-STORE) over dicom-ul PDUs: command sets
//! are always implicit VR little endian (PS3.7 6.3.1).

use dicom_core::{dicom_value, DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATASET: u16 = 0x0101;

pub const VERIFICATION: &str = uids::VERIFICATION;
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// C-STORE statuses we answer with (PS3.4 B.2.3).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (disk full, write failed).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATASET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
}

#[derive(Debug, thiserror::Error)]
#[error("DIMSE command: {0}")]
pub struct DimseError(pub String);

/// The fields of a command set that we use.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub responded_to: u16,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub has_dataset: bool,
    pub status: Option<u16>,
    pub error_comment: Option<String>,
}

fn trim(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).to_string()
}

/// Parses a command set. Its element lengths are walked first (`lengths`): the parser sizes a
/// value's buffer from its declared length, so a 16 KiB command declaring a 4 GB element would
/// otherwise make it allocate 4 GB.
pub fn read_command(bytes: &[u8]) -> Result<Command, DimseError> {
    crate::lengths::check(
        &mut &bytes[..],
        crate::lengths::Encoding::of(IMPLICIT_VR_LE),
    )
    .map_err(|e| DimseError(e.to_string()))?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| DimseError(e.to_string()))?;
    let u16_of = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u16>().ok())
    };
    let str_of = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| trim(&s)))
    };
    let field = u16_of(tags::COMMAND_FIELD).ok_or_else(|| DimseError("no CommandField".into()))?;
    Ok(Command {
        field,
        message_id: u16_of(tags::MESSAGE_ID).unwrap_or(0),
        responded_to: u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap_or(0),
        sop_class_uid: str_of(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default(),
        sop_instance_uid: str_of(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default(),
        has_dataset: u16_of(tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATASET),
        status: u16_of(tags::STATUS),
        error_comment: str_of(tags::ERROR_COMMENT),
    })
}

fn encode(obj: InMemDicomObject) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing a small in-memory command set into a Vec cannot fail short of allocation failure;
    // an empty buffer would be refused by the peer, never silently accepted.
    let _ = obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased());
    out
}

pub fn c_echo_rq(message_id: u16) -> Vec<u8> {
    encode(InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, VERIFICATION),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_ECHO_RQ])),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [message_id])),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [NO_DATASET]),
        ),
    ]))
}

pub fn c_echo_rsp(responded_to: u16) -> Vec<u8> {
    encode(InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, VERIFICATION),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_ECHO_RSP])),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            dicom_value!(U16, [responded_to]),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [NO_DATASET]),
        ),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status::SUCCESS])),
    ]))
}

pub fn c_store_rq(sop_class_uid: &str, sop_instance_uid: &str, message_id: u16) -> Vec<u8> {
    encode(InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, sop_class_uid),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_STORE_RQ])),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [message_id])),
        DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0x0000])),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [0x0000]),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, sop_instance_uid),
        ),
    ]))
}

pub fn c_store_rsp(
    responded_to: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    status: u16,
    comment: Option<&str>,
) -> Vec<u8> {
    let mut elems = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, sop_class_uid),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            dicom_value!(U16, [C_STORE_RSP]),
        ),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            dicom_value!(U16, [responded_to]),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [NO_DATASET]),
        ),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status])),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, sop_instance_uid),
        ),
    ];
    if let Some(c) = comment {
        // ErrorComment is LO: at most 64 characters.
        let c: String = c.chars().take(64).collect();
        elems.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            dicom_value!(Str, c),
        ));
    }
    encode(InMemDicomObject::command_from_element_iter(elems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let c = read_command(&c_store_rq("1.2.840.10008.5.1.4.1.1.2", "1.2.3", 7)).unwrap();
        assert_eq!(
            (c.field, c.message_id, c.has_dataset),
            (C_STORE_RQ, 7, true)
        );
        assert_eq!(c.sop_instance_uid, "1.2.3");
        let r = read_command(&c_store_rsp(
            7,
            "1.2",
            "1.2.3",
            status::OUT_OF_RESOURCES,
            Some("disk full"),
        ))
        .unwrap();
        assert_eq!(
            (r.field, r.responded_to, r.status),
            (C_STORE_RSP, 7, Some(0xA700))
        );
        assert!(!r.has_dataset);
        assert_eq!(r.error_comment.as_deref(), Some("disk full"));
        let e = read_command(&c_echo_rq(3)).unwrap();
        assert_eq!((e.field, e.has_dataset), (C_ECHO_RQ, false));
        assert!(read_command(b"\x01\x02garbage").is_err());
        // An element declaring 4 GB in a few bytes: refused without allocating it.
        let mut lying = c_echo_rq(3);
        lying.extend_from_slice(&[0x00, 0x00, 0x00, 0x09, 0xF0, 0xFF, 0xFF, 0xFF, 0, 0]);
        assert!(read_command(&lying).is_err());
    }
}
