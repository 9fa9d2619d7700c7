//! Stage "encode": the DICOM objects a PACS shows for one scored series.
//!
//! Three objects per result, all in the source study, each in its own new series:
//! * [`seg`] — a binary Segmentation with one segment per coronary artery that has calcium
//!   (none when the study has no calcium);
//! * [`sr`] — a Comprehensive SR following TID 1500 (Measurement Report);
//! * [`summary`] — a Secondary Capture key image a radiologist reads at a glance.
//!
//! dicom-rs has no IOD builders, so the modules are written here on `InMemDicomObject`.
//! Every UID is derived from (source series, result version, model sha256, what) by
//! [`result_uid`], so resending a result after a crash replaces the earlier copy in the PACS
//! instead of duplicating it.

pub mod seg;
pub mod sr;
pub mod summary;

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use sha2::{Digest, Sha256};

use crate::result::ModelInfo;
use crate::score::{Scores, Vessel};
use crate::volume::Volume;

/// Site-configurable parts of the results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncodeOptions {
    /// Shown across the top of the summary image and stated in the SR.
    pub banner: String,
    /// Name of this appliance (SR device observer name, station name, device serial number).
    pub device_name: String,
    pub institution_name: Option<String>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            banner: "Research use only — not for diagnostic use".to_string(),
            device_name: "cacd".to_string(),
            institution_name: None,
        }
    }
}

/// Everything the encoders read.
#[derive(Debug, Clone, Copy)]
pub struct EncodeInput<'a> {
    /// The source series: HU, geometry, header facts, source SOP instances per slice.
    pub volume: &'a Volume,
    /// The scores; their lesion pixels are the lesion mask the SEG encodes.
    pub scores: &'a Scores,
    pub model: &'a ModelInfo,
    /// 1 for the first scoring of a series, +1 for each re-score.
    pub result_version: u32,
    /// Quality warnings, reported in the SR and on the summary image.
    pub warnings: &'a [String],
    pub options: &'a EncodeOptions,
    /// Why the study was not scored (the quality gate refused it): the SR and the summary
    /// say so and carry no score; `scores` is then empty and no SEG is made.
    pub refusal: Option<&'a str>,
}

/// The three result objects (`seg` is `None` when there is no calcium).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub seg: Option<DefaultDicomObject>,
    pub sr: DefaultDicomObject,
    pub summary: DefaultDicomObject,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode results: {0}")]
    InvalidInput(String),
    #[error("cannot build the DICOM file meta group: {0}")]
    Meta(String),
    #[error("cannot serialise DICOM object: {0}")]
    Write(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded font unusable: {0}")]
    Font(String),
}

/// Series numbers of the results; far from the scanner's usual 1–20 and distinct per object.
pub const SEG_SERIES_NUMBER: i32 = 9701;
pub const SR_SERIES_NUMBER: i32 = 9702;
pub const SUMMARY_SERIES_NUMBER: i32 = 9703;

/// Private coding scheme for concepts with no standard code (risk category, CAC-DRS, lesion
/// count, quality warnings). Declared in the SR's CodingSchemeIdentificationSequence.
pub const CACD_SCHEME: &str = "99CACD";

/// The deterministic UID of one result object: `2.25.<decimal of the first 128 bits of
/// sha256(source series UID, result version, model sha256, what)>` — at most 44 characters.
pub fn result_uid(
    source_series_uid: &str,
    result_version: u32,
    model_sha256: &str,
    what: &str,
) -> String {
    let mut h = Sha256::new();
    // NUL separators: no two different tuples hash the same bytes.
    for part in [
        source_series_uid,
        &result_version.to_string(),
        model_sha256,
        what,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// A UID that names a thing rather than a result (this appliance as an SR device observer,
/// the implementation class): `2.25.<128 bits of sha256("cacd-name", name)>`.
pub(crate) fn name_uid(name: &str) -> String {
    result_uid("cacd-name", 0, "", name)
}

/// Writes a DICOM file safely: to a temporary name beside `path`, fsync, rename over `path`.
pub fn write_dicom(obj: &DefaultDicomObject, path: &Path) -> Result<(), EncodeError> {
    let io_err = |source| EncodeError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes)
        .map_err(|e| EncodeError::Write(e.to_string()))?;
    crate::fsutil::write_atomic(path, &bytes).map_err(io_err)?;
    Ok(())
}

/// Encodes the three result objects of one scored series.
pub fn encode_all(input: &EncodeInput) -> Result<Encoded, EncodeError> {
    let ctx = Context::new(input)?;
    let seg = seg::build(input, &ctx)?;
    let sr = sr::build(input, &ctx, seg.is_some())?;
    let summary = summary::build(input, &ctx)?;
    Ok(Encoded {
        seg: seg.map(|o| finish(o, &ctx)).transpose()?,
        sr: finish(sr, &ctx)?,
        summary: finish(summary, &ctx)?,
    })
}

/// Facts shared by the three encoders: derived UIDs and the creation time.
pub(crate) struct Context {
    pub seg_series_uid: String,
    pub seg_uid: String,
    pub sr_series_uid: String,
    pub sr_uid: String,
    pub summary_series_uid: String,
    pub summary_uid: String,
    /// DA and TM of this encoding (UTC).
    pub date: String,
    pub time: String,
}

impl Context {
    fn new(input: &EncodeInput) -> Result<Self, EncodeError> {
        validate(input)?;
        let src = &input.volume.meta.series_instance_uid;
        let uid = |what: &str| result_uid(src, input.result_version, &input.model.sha256, what);
        let now = chrono::Utc::now();
        Ok(Context {
            seg_series_uid: uid("seg-series"),
            seg_uid: uid("seg"),
            sr_series_uid: uid("sr-series"),
            sr_uid: uid("sr"),
            summary_series_uid: uid("summary-series"),
            summary_uid: uid("summary"),
            date: now.format("%Y%m%d").to_string(),
            time: now.format("%H%M%S").to_string(),
        })
    }

    pub fn uid(&self, input: &EncodeInput, what: &str) -> String {
        result_uid(
            &input.volume.meta.series_instance_uid,
            input.result_version,
            &input.model.sha256,
            what,
        )
    }
}

/// Refuses inputs the objects could not reference correctly.
fn validate(input: &EncodeInput) -> Result<(), EncodeError> {
    let v = input.volume;
    let (slices, rows, cols) = v.dims();
    let bad = |m: String| Err(EncodeError::InvalidInput(m));
    if v.meta.study_instance_uid.is_empty() || v.meta.series_instance_uid.is_empty() {
        return bad("source study or series UID is empty".into());
    }
    if v.meta.sop_class_uid.is_empty() {
        return bad("source SOP class UID is empty".into());
    }
    if slices == 0 || rows == 0 || cols == 0 {
        return bad(format!("empty volume {slices}×{rows}×{cols}"));
    }
    if rows > u16::MAX as usize || cols > u16::MAX as usize {
        return bad(format!("image {rows}×{cols} too large for DICOM"));
    }
    if v.sop_instance_uids.len() != slices || v.source_frames.len() != slices {
        return bad(format!(
            "{} SOP instance UIDs and {} frame numbers for {slices} slices",
            v.sop_instance_uids.len(),
            v.source_frames.len()
        ));
    }
    if v.sop_instance_uids.iter().any(|u| u.is_empty()) {
        return bad("a source slice has no SOP instance UID".into());
    }
    for l in &input.scores.lesions {
        if l.slice >= slices {
            return bad(format!("lesion on slice {} of {slices}", l.slice));
        }
        if let Some(&(y, x)) = l
            .pixels
            .iter()
            .find(|(y, x)| *y as usize >= rows || *x as usize >= cols)
        {
            return bad(format!("lesion pixel ({y}, {x}) outside {rows}×{cols}"));
        }
    }
    Ok(())
}

/// Wraps a data set into a file object: explicit VR little endian, cacd's implementation UID.
fn finish(obj: InMemDicomObject, _ctx: &Context) -> Result<DefaultDicomObject, EncodeError> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(name_uid("cacd implementation"))
            .implementation_version_name(implementation_version_name()),
    )
    .map_err(|e| EncodeError::Meta(e.to_string()))
}

fn implementation_version_name() -> String {
    // SH, 16 characters at most.
    truncate(&format!("CACD_{}", env!("CARGO_PKG_VERSION")), 16)
}

// ---------------------------------------------------------------------------------------
// Element helpers

/// Cuts a string to at most `max` characters (DICOM length limits count characters for
/// the single-byte repertoire and bytes for UTF-8; we cut at `max` bytes on a char boundary).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub(crate) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_strs<S: AsRef<str>>(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[S]) {
    let v = PrimitiveValue::Strs(values.iter().map(|s| s.as_ref().to_string()).collect());
    obj.put(DataElement::new(tag, vr, v));
}

pub(crate) fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_us(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// An object built from `(tag, VR, string)` triples.
pub(crate) fn object_of(elements: &[(Tag, VR, &str)]) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    for (t, vr, s) in elements {
        put_str(&mut o, *t, *vr, s);
    }
    o
}

/// A Decimal String of at most 16 characters, as precise as fits.
pub(crate) fn ds(x: f64) -> String {
    if !x.is_finite() {
        return "0".to_string();
    }
    for decimals in (0..=6).rev() {
        let mut s = format!("{x:.decimals$}");
        if s.contains('.') {
            while s.ends_with('0') {
                s.pop();
            }
            if s.ends_with('.') {
                s.pop();
            }
        }
        if s == "-0" {
            s = "0".to_string();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{x:.6e}")
}

/// A coded concept: one item of a code sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

pub(crate) const fn code(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme,
        meaning,
    }
}

impl Code {
    pub fn item(&self) -> InMemDicomObject {
        object_of(&[
            (tags::CODE_VALUE, VR::SH, self.value),
            (tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme),
            (tags::CODE_MEANING, VR::LO, self.meaning),
        ])
    }
}

/// The codes of CONTRACT.md ("DICOM codes for results") and the few more the objects need.
pub(crate) mod codes {
    use super::{code, Code, CACD_SCHEME};
    use crate::score::Vessel;

    pub const CAC_SCORE: Code = code("450360000", "SCT", "Coronary artery calcium score");
    pub const AGATSTON_METHOD: Code = code("112055", "DCM", "Agatston scoring method");
    pub const VOLUME_METHOD: Code = code("112056", "DCM", "Volume scoring method");
    pub const CALCIUM_VOLUME: Code = code("122660", "DCM", "Calcium Volume");
    pub const MORPH_ABNORMAL: Code = code("49755003", "SCT", "Morphologically abnormal structure");
    pub const CALCIFICATION: Code = code("18115005", "SCT", "Pathologic calcification");
    pub const CORONARY_ARTERY: Code = code("41801008", "SCT", "Coronary artery");
    pub const AI_FAMILY: Code = code("123110", "DCM", "Artificial Intelligence");
    pub const SEGMENTATION_DERIVATION: Code = code("113076", "DCM", "Segmentation");
    pub const SOURCE_IMAGE_PURPOSE: Code = code(
        "121322",
        "DCM",
        "Source image for image processing operation",
    );
    pub const CARDIAC_CT_CALCIUM: Code = code("426005005", "SCT", "Cardiac CT for calcium scoring");

    // No standard codes exist for these: cacd's private scheme 99CACD.
    pub const RISK_CATEGORY: Code = code("RISKCAT", CACD_SCHEME, "Agatston risk category");
    pub const CAC_DRS: Code = code("CACDRS", CACD_SCHEME, "CAC-DRS category");
    pub const LESION_COUNT: Code = code("LESIONS", CACD_SCHEME, "Calcified lesion count");
    pub const QUALITY_WARNING: Code = code("QUALWARN", CACD_SCHEME, "Image quality warning");
    pub const RESULT_NOTE: Code = code("NOTE", CACD_SCHEME, "Result note");
    pub const BANNER: Code = code("BANNER", CACD_SCHEME, "Intended use statement");

    pub fn vessel(v: Vessel) -> Code {
        match v {
            Vessel::LM => code("3227004", "SCT", "Left Main Coronary Artery"),
            Vessel::LAD => code(
                "59438005",
                "SCT",
                "Left Anterior Descending Coronary Artery",
            ),
            Vessel::LCX => code("57396003", "SCT", "Circumflex Coronary Artery"),
            Vessel::RCA => code("13647002", "SCT", "Right Coronary Artery"),
        }
    }
}

/// CodingSchemeIdentificationSequence declaring the private scheme (only the SR uses it).
pub(crate) fn coding_scheme_identification() -> Vec<InMemDicomObject> {
    vec![object_of(&[
        (tags::CODING_SCHEME_DESIGNATOR, VR::SH, CACD_SCHEME),
        (tags::CODING_SCHEME_NAME, VR::ST, "cacd local codes"),
        (tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION, VR::ST, "cacd"),
    ])]
}

/// Display colour of each vessel (sRGB), shared by the SEG and the summary legend.
pub fn vessel_colour(v: Vessel) -> [u8; 3] {
    match v {
        Vessel::LM => [255, 214, 0],
        Vessel::LAD => [255, 72, 72],
        Vessel::LCX => [64, 170, 255],
        Vessel::RCA => [60, 220, 110],
    }
}

/// Vessels with at least one lesion pixel, in LM, LAD, LCX, RCA order: the SEG's segments
/// (segment number = position + 1).
pub(crate) fn segmented_vessels(scores: &Scores) -> Vec<Vessel> {
    Vessel::ALL
        .into_iter()
        .filter(|v| {
            scores
                .lesions
                .iter()
                .any(|l| l.vessel == *v && !l.pixels.is_empty())
        })
        .collect()
}

/// Whether slice references need a frame number (multi-frame source such as Enhanced CT).
pub(crate) fn source_is_multiframe(volume: &Volume) -> bool {
    const MULTIFRAME_CT: [&str; 2] = [
        uids::ENHANCED_CT_IMAGE_STORAGE,
        uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    ];
    MULTIFRAME_CT.contains(&volume.meta.sop_class_uid.as_str())
        || volume.source_frames.iter().any(|f| *f != 1)
}

/// The distinct source SOP instances in slice order.
pub(crate) fn source_instances(volume: &Volume) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    volume
        .sop_instance_uids
        .iter()
        .map(String::as_str)
        .filter(|u| seen.insert(*u))
        .collect()
}

/// `{ReferencedSOPClassUID, ReferencedSOPInstanceUID}` items for every source instance.
pub(crate) fn source_instance_refs(volume: &Volume) -> Vec<InMemDicomObject> {
    source_instances(volume)
        .into_iter()
        .map(|u| {
            object_of(&[
                (
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    volume.meta.sop_class_uid.as_str(),
                ),
                (tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, u),
            ])
        })
        .collect()
}

/// Which result object a common-module header is for.
pub(crate) struct SeriesSpec<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub series_instance_uid: &'a str,
    pub series_number: i32,
    pub modality: &'a str,
    pub series_description: &'a str,
}

/// Patient, General Study, General Series, General Equipment, Enhanced General Equipment and
/// SOP Common, with patient/study copied from the source series.
pub(crate) fn common_modules(
    input: &EncodeInput,
    ctx: &Context,
    spec: &SeriesSpec,
) -> InMemDicomObject {
    let m = &input.volume.meta;
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let mut o = InMemDicomObject::new_empty();
    // UTF-8: names from the source may use any repertoire, and the banner has an em dash.
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    // SOP Common
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, spec.sop_class_uid);
    put_str(
        &mut o,
        tags::SOP_INSTANCE_UID,
        VR::UI,
        spec.sop_instance_uid,
    );
    put_str(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, &ctx.date);
    put_str(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, &ctx.time);
    put_str(&mut o, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000");
    // Patient
    put_str(&mut o, tags::PATIENT_NAME, VR::PN, &opt(&m.patient_name));
    put_str(&mut o, tags::PATIENT_ID, VR::LO, &opt(&m.patient_id));
    put_str(
        &mut o,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &opt(&m.patient_birth_date),
    );
    put_str(&mut o, tags::PATIENT_SEX, VR::CS, &opt(&m.patient_sex));
    // General Study
    put_str(
        &mut o,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &m.study_instance_uid,
    );
    put_str(&mut o, tags::STUDY_DATE, VR::DA, &opt(&m.study_date));
    put_str(&mut o, tags::STUDY_TIME, VR::TM, &opt(&m.study_time));
    put_str(
        &mut o,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &opt(&m.referring_physician_name),
    );
    put_str(&mut o, tags::STUDY_ID, VR::SH, &opt(&m.study_id));
    put_str(
        &mut o,
        tags::ACCESSION_NUMBER,
        VR::SH,
        &opt(&m.accession_number),
    );
    // General Series
    put_str(&mut o, tags::MODALITY, VR::CS, spec.modality);
    put_str(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        spec.series_instance_uid,
    );
    put_str(
        &mut o,
        tags::SERIES_NUMBER,
        VR::IS,
        &spec.series_number.to_string(),
    );
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &truncate(spec.series_description, 64),
    );
    put_str(&mut o, tags::SERIES_DATE, VR::DA, &ctx.date);
    put_str(&mut o, tags::SERIES_TIME, VR::TM, &ctx.time);
    // General Equipment + Enhanced General Equipment. The appliance has no hardware serial
    // number; its configured device name identifies it.
    put_str(&mut o, tags::MANUFACTURER, VR::LO, "cacd");
    put_str(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "cacd");
    put_str(
        &mut o,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &truncate(&input.options.device_name, 64),
    );
    put_str(
        &mut o,
        tags::STATION_NAME,
        VR::SH,
        &truncate(&input.options.device_name, 16),
    );
    put_strs(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &software_versions(input.model),
    );
    if let Some(inst) = &input.options.institution_name {
        put_str(&mut o, tags::INSTITUTION_NAME, VR::LO, &truncate(inst, 64));
    }
    // General Image / content identification
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &ctx.date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &ctx.time);
    o
}

/// SoftwareVersions: cacd's version, then the model's.
pub(crate) fn software_versions(model: &ModelInfo) -> Vec<String> {
    vec![
        truncate(&format!("cacd {}", env!("CARGO_PKG_VERSION")), 64),
        truncate(&format!("{} {}", model.name, model.version), 64),
    ]
}

/// Algorithm parameters as one LT/TEXT string.
pub(crate) fn algorithm_parameters(model: &ModelInfo) -> String {
    format!(
        "model_sha256={}; precision={}; engine={}",
        model.sha256, model.precision, model.engine
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_uid_is_short_valid_and_keyed_on_every_part() {
        let a = result_uid("1.2.3", 1, "abc", "seg");
        assert!(a.starts_with("2.25.") && a.len() <= 64);
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
        assert_eq!(a, result_uid("1.2.3", 1, "abc", "seg"));
        for other in [
            result_uid("1.2.4", 1, "abc", "seg"),
            result_uid("1.2.3", 2, "abc", "seg"),
            result_uid("1.2.3", 1, "abd", "seg"),
            result_uid("1.2.3", 1, "abc", "sr"),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(123.0), "123");
        assert_eq!(ds(-172.65625), "-172.65625");
        assert_eq!(ds(1.0 / 3.0), "0.333333");
        assert!(ds(-123_456_789.123_457).len() <= 16);
        assert!(ds(1e300).len() <= 16);
    }
}
