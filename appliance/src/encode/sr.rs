//! Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) following TID 1500 Measurement Report.
//!
//! Content tree:
//! ```text
//! CONTAINER Imaging Measurement Report (TID 1500)
//!   HAS CONCEPT MOD  Language = English (United States)
//!   HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Manufacturer/Model/Serial
//!   HAS CONCEPT MOD  Procedure reported = Cardiac CT for calcium scoring
//!   CONTAINS Image Library → Image Library Group → IMAGE (every source instance)
//!   CONTAINS Imaging Measurements
//!     Measurement Group per vessel (TID 1411 with the SEG segment; TID 1501 without):
//!       tracking id/UID, finding = calcification, finding site = vessel,
//!       [Referenced Segment, Source series for segmentation], algorithm (TID 4019),
//!       NUM Coronary artery calcium score (method Agatston), NUM Calcium Volume
//!       (method Volume scoring), NUM lesion count
//!     Measurement Group "all coronary arteries" (TID 1501): totals, risk category, CAC-DRS
//!   CONTAINS Qualitative Evaluations: intended-use banner, quality warnings,
//!     "No coronary calcium detected; no segmentation created" when there is none
//! A study the quality gate refused (contrast, coverage) gets no Imaging Measurements: its
//! Qualitative Evaluations say "Not scored: <reason>".
//! ```
//! Risk category, CAC-DRS, lesion count and the notes have no standard concept codes: they are
//! TEXT/NUM items named with cacd's private scheme 99CACD (declared in
//! CodingSchemeIdentificationSequence).

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::seg::tracking_uid;
use super::{
    algorithm_parameters, code, codes, common_modules, ds, name_uid, object_of, put_seq, put_str,
    segmented_vessels, source_instance_refs, source_instances, Code, Context, EncodeError,
    EncodeInput, SeriesSpec, SR_SERIES_NUMBER,
};
use crate::score::Vessel;

const REPORT: Code = code("126000", "DCM", "Imaging Measurement Report");
const LANGUAGE: Code = code("121049", "DCM", "Language of Content Item and Descendants");
const ENGLISH_US: Code = code("en-US", "RFC5646", "English (United States)");
const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
const DEVICE: Code = code("121007", "DCM", "Device");
const DEVICE_UID: Code = code("121012", "DCM", "Device Observer UID");
const DEVICE_NAME: Code = code("121013", "DCM", "Device Observer Name");
const DEVICE_MANUFACTURER: Code = code("121014", "DCM", "Device Observer Manufacturer");
const DEVICE_MODEL: Code = code("121015", "DCM", "Device Observer Model Name");
const DEVICE_SERIAL: Code = code("121016", "DCM", "Device Observer Serial Number");
const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
const IMAGE_LIBRARY: Code = code("111028", "DCM", "Image Library");
const IMAGE_LIBRARY_GROUP: Code = code("126200", "DCM", "Image Library Group");
const MODALITY: Code = code("121139", "DCM", "Modality");
const CT: Code = code("CT", "DCM", "Computed Tomography");
const FRAME_OF_REFERENCE: Code = code("112227", "DCM", "Frame of Reference UID");
const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");
const TRACKING_ID: Code = code("112039", "DCM", "Tracking Identifier");
const TRACKING_UID: Code = code("112040", "DCM", "Tracking Unique Identifier");
const FINDING: Code = code("121071", "DCM", "Finding");
const FINDING_SITE: Code = code("363698007", "SCT", "Finding Site");
const REFERENCED_SEGMENT: Code = code("121191", "DCM", "Referenced Segment");
const SOURCE_SERIES: Code = code("121232", "DCM", "Source series for segmentation");
const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");
const MEASUREMENT_METHOD: Code = code("370129005", "SCT", "Measurement Method");
const QUALITATIVE_EVALUATIONS: Code = code("C0034375", "UMLS", "Qualitative Evaluations");
// UCUM units. Agatston scores are dimensionless: the UCUM annotation {Agatston} means "1".
const UNIT_AGATSTON: Code = code("{Agatston}", "UCUM", "Agatston score");
const UNIT_MM3: Code = code("mm3", "UCUM", "cubic millimeter");
const UNIT_LESIONS: Code = code("{lesions}", "UCUM", "lesions");

/// The note the SR carries when the study has no calcium.
pub const NO_CALCIUM_TEXT: &str = "No coronary calcium detected; no segmentation created";
/// The note that opens the reason of a study the quality gate refused.
pub const NOT_SCORED_TEXT: &str = "Not scored";

/// Builds the SR data set; `has_seg` says whether a SEG was produced (its segments are then
/// referenced from the per-vessel measurement groups).
pub(crate) fn build(
    input: &EncodeInput,
    ctx: &Context,
    has_seg: bool,
) -> Result<InMemDicomObject, EncodeError> {
    let volume = input.volume;
    let meta = &volume.meta;
    let series_description = format!("CAC report ({})", input.model.name);
    let mut o = common_modules(
        input,
        ctx,
        &SeriesSpec {
            sop_class_uid: uids::COMPREHENSIVE_SR_STORAGE,
            sop_instance_uid: &ctx.sr_uid,
            series_instance_uid: &ctx.sr_series_uid,
            series_number: SR_SERIES_NUMBER,
            modality: "SR",
            series_description: &series_description,
        },
    );
    put_seq(
        &mut o,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        super::coding_scheme_identification(),
    );
    // SR Document Series / General
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    );
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new());
    put_str(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(
            &meta.study_instance_uid,
            &meta.series_instance_uid,
            source_instance_refs(volume),
        )],
    );
    if has_seg {
        let seg_ref = object_of(&[
            (
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                uids::SEGMENTATION_STORAGE,
            ),
            (
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                ctx.seg_uid.as_str(),
            ),
        ]);
        put_seq(
            &mut o,
            tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
            vec![evidence(
                &meta.study_instance_uid,
                &ctx.seg_series_uid,
                vec![seg_ref],
            )],
        );
    }

    // SR Document Content: the root container.
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![REPORT.item()],
    );
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(
        &mut o,
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![template("1500")],
    );

    let options = input.options;
    let mut content = vec![
        code_item(HAS_CONCEPT_MOD, LANGUAGE, ENGLISH_US),
        code_item(HAS_OBS_CONTEXT, OBSERVER_TYPE, DEVICE),
        uidref(
            HAS_OBS_CONTEXT,
            DEVICE_UID,
            &name_uid(&format!("device {}", options.device_name)),
        ),
        text(HAS_OBS_CONTEXT, DEVICE_NAME, &options.device_name),
        text(HAS_OBS_CONTEXT, DEVICE_MANUFACTURER, "cacd"),
        text(HAS_OBS_CONTEXT, DEVICE_MODEL, "cacd"),
        text(HAS_OBS_CONTEXT, DEVICE_SERIAL, &options.device_name),
        code_item(
            HAS_CONCEPT_MOD,
            PROCEDURE_REPORTED,
            codes::CARDIAC_CT_CALCIUM,
        ),
        image_library(input),
    ];

    // A refused study has no measurements: the report says why instead.
    if input.refusal.is_none() {
        let segmented = if has_seg {
            segmented_vessels(input.scores)
        } else {
            Vec::new()
        };
        let mut groups: Vec<InMemDicomObject> = Vessel::ALL
            .into_iter()
            .map(|v| {
                let segment = segmented.iter().position(|s| *s == v).map(|i| i as u16 + 1);
                vessel_group(input, ctx, v, segment)
            })
            .collect();
        groups.push(total_group(input, ctx));
        content.push(container(CONTAINS, IMAGING_MEASUREMENTS, None, groups));
    }

    let mut notes = vec![text(CONTAINS, codes::BANNER, &options.banner)];
    if let Some(reason) = input.refusal {
        notes.push(text(
            CONTAINS,
            codes::RESULT_NOTE,
            &format!("{NOT_SCORED_TEXT}: {reason}"),
        ));
    } else if !has_seg {
        notes.push(text(CONTAINS, codes::RESULT_NOTE, NO_CALCIUM_TEXT));
    }
    notes.extend(
        input
            .warnings
            .iter()
            .map(|w| text(CONTAINS, codes::QUALITY_WARNING, w)),
    );
    content.push(container(CONTAINS, QUALITATIVE_EVALUATIONS, None, notes));

    put_seq(&mut o, tags::CONTENT_SEQUENCE, content);
    Ok(o)
}

/// `{StudyInstanceUID, ReferencedSeriesSequence {SeriesInstanceUID, ReferencedSOPSequence}}`.
fn evidence(study: &str, series: &str, instances: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut s = InMemDicomObject::new_empty();
    put_str(&mut s, tags::SERIES_INSTANCE_UID, VR::UI, series);
    put_seq(&mut s, tags::REFERENCED_SOP_SEQUENCE, instances);
    let mut st = InMemDicomObject::new_empty();
    put_str(&mut st, tags::STUDY_INSTANCE_UID, VR::UI, study);
    put_seq(&mut st, tags::REFERENCED_SERIES_SEQUENCE, vec![s]);
    st
}

/// TID 1600 Image Library: one group for the source series, one entry per source instance.
fn image_library(input: &EncodeInput) -> InMemDicomObject {
    let volume = input.volume;
    let mut entries = vec![code_item(HAS_ACQ_CONTEXT, MODALITY, CT)];
    if !volume.meta.frame_of_reference_uid.is_empty() {
        entries.push(uidref(
            HAS_ACQ_CONTEXT,
            FRAME_OF_REFERENCE,
            &volume.meta.frame_of_reference_uid,
        ));
    }
    entries.extend(
        source_instances(volume)
            .into_iter()
            .map(|u| image(CONTAINS, None, &volume.meta.sop_class_uid, u, None)),
    );
    let group = container(CONTAINS, IMAGE_LIBRARY_GROUP, None, entries);
    container(CONTAINS, IMAGE_LIBRARY, None, vec![group])
}

/// Measurement group of one vessel; TID 1411 (volumetric, referencing its SEG segment) when
/// `segment` is given, TID 1501 otherwise.
fn vessel_group(
    input: &EncodeInput,
    ctx: &Context,
    vessel: Vessel,
    segment: Option<u16>,
) -> InMemDicomObject {
    let scores = input.scores;
    let lesions = scores.lesions.iter().filter(|l| l.vessel == vessel).count();
    let mut items = vec![
        text(
            HAS_OBS_CONTEXT,
            TRACKING_ID,
            &format!("{} calcium", vessel.name()),
        ),
        uidref(
            HAS_OBS_CONTEXT,
            TRACKING_UID,
            &tracking_uid(input, ctx, vessel),
        ),
        code_item(CONTAINS, FINDING, codes::CALCIFICATION),
        code_item(HAS_CONCEPT_MOD, FINDING_SITE, codes::vessel(vessel)),
    ];
    if let Some(number) = segment {
        items.push(image(
            CONTAINS,
            Some(REFERENCED_SEGMENT),
            uids::SEGMENTATION_STORAGE,
            &ctx.seg_uid,
            Some(number),
        ));
        items.push(uidref(
            CONTAINS,
            SOURCE_SERIES,
            &input.volume.meta.series_instance_uid,
        ));
    }
    items.extend(algorithm(input));
    items.extend(measurements(
        scores.per_vessel.get(vessel),
        scores.per_vessel_volume_mm3.get(vessel),
        lesions,
    ));
    let template_id = if segment.is_some() { "1411" } else { "1501" };
    container(CONTAINS, MEASUREMENT_GROUP, Some(template_id), items)
}

/// TID 1501 group for all coronary arteries: totals, risk category, CAC-DRS.
fn total_group(input: &EncodeInput, ctx: &Context) -> InMemDicomObject {
    let s = input.scores;
    let mut items = vec![
        text(
            HAS_OBS_CONTEXT,
            TRACKING_ID,
            "Coronary calcium, all arteries",
        ),
        uidref(
            HAS_OBS_CONTEXT,
            TRACKING_UID,
            &ctx.uid(input, "tracking-total"),
        ),
        code_item(CONTAINS, FINDING, codes::CALCIFICATION),
        code_item(HAS_CONCEPT_MOD, FINDING_SITE, codes::CORONARY_ARTERY),
    ];
    items.extend(algorithm(input));
    items.extend(measurements(
        s.agatston_total,
        s.volume_mm3,
        s.lesions.len(),
    ));
    items.push(text(CONTAINS, codes::RISK_CATEGORY, &s.risk_category));
    items.push(text(CONTAINS, codes::CAC_DRS, &s.cac_drs));
    container(CONTAINS, MEASUREMENT_GROUP, Some("1501"), items)
}

/// TID 4019 Algorithm Identification.
fn algorithm(input: &EncodeInput) -> Vec<InMemDicomObject> {
    let m = input.model;
    vec![
        text(HAS_CONCEPT_MOD, ALGORITHM_NAME, &m.name),
        text(HAS_CONCEPT_MOD, ALGORITHM_VERSION, &m.version),
        text(
            HAS_CONCEPT_MOD,
            ALGORITHM_PARAMETERS,
            &algorithm_parameters(m),
        ),
    ]
}

/// Agatston score, calcium volume, lesion count.
fn measurements(agatston: f64, volume_mm3: f64, lesions: usize) -> Vec<InMemDicomObject> {
    vec![
        num(
            codes::CAC_SCORE,
            agatston,
            UNIT_AGATSTON,
            vec![code_item(
                HAS_CONCEPT_MOD,
                MEASUREMENT_METHOD,
                codes::AGATSTON_METHOD,
            )],
        ),
        num(
            codes::CALCIUM_VOLUME,
            volume_mm3,
            UNIT_MM3,
            vec![code_item(
                HAS_CONCEPT_MOD,
                MEASUREMENT_METHOD,
                codes::VOLUME_METHOD,
            )],
        ),
        num(
            codes::LESION_COUNT,
            lesions as f64,
            UNIT_LESIONS,
            Vec::new(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Content item builders

const CONTAINS: &str = "CONTAINS";
const HAS_OBS_CONTEXT: &str = "HAS OBS CONTEXT";
const HAS_CONCEPT_MOD: &str = "HAS CONCEPT MOD";
const HAS_ACQ_CONTEXT: &str = "HAS ACQ CONTEXT";

fn template(id: &str) -> InMemDicomObject {
    object_of(&[
        (tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
        (tags::TEMPLATE_IDENTIFIER, VR::CS, id),
    ])
}

fn item(relationship: &str, value_type: &str, concept: Option<Code>) -> InMemDicomObject {
    let mut o = object_of(&[
        (tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        (tags::VALUE_TYPE, VR::CS, value_type),
    ]);
    if let Some(c) = concept {
        put_seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![c.item()]);
    }
    o
}

fn container(
    relationship: &str,
    concept: Code,
    template_id: Option<&str>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut o = item(relationship, "CONTAINER", Some(concept));
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if let Some(t) = template_id {
        put_seq(&mut o, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template(t)]);
    }
    if !children.is_empty() {
        put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    }
    o
}

fn text(relationship: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut o = item(relationship, "TEXT", Some(concept));
    put_str(&mut o, tags::TEXT_VALUE, VR::UT, value);
    o
}

fn code_item(relationship: &str, concept: Code, value: Code) -> InMemDicomObject {
    let mut o = item(relationship, "CODE", Some(concept));
    put_seq(&mut o, tags::CONCEPT_CODE_SEQUENCE, vec![value.item()]);
    o
}

fn uidref(relationship: &str, concept: Code, uid: &str) -> InMemDicomObject {
    let mut o = item(relationship, "UIDREF", Some(concept));
    put_str(&mut o, tags::UID, VR::UI, uid);
    o
}

fn num(concept: Code, value: f64, unit: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = item(CONTAINS, "NUM", Some(concept));
    let mut mv = InMemDicomObject::new_empty();
    put_str(&mut mv, tags::NUMERIC_VALUE, VR::DS, &ds(value));
    put_seq(
        &mut mv,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![unit.item()],
    );
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    if !children.is_empty() {
        put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    }
    o
}

fn image(
    relationship: &str,
    concept: Option<Code>,
    sop_class: &str,
    sop_instance: &str,
    segment: Option<u16>,
) -> InMemDicomObject {
    let mut o = item(relationship, "IMAGE", concept);
    let mut r = object_of(&[
        (tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop_class),
        (tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop_instance),
    ]);
    if let Some(n) = segment {
        super::put_us(&mut r, tags::REFERENCED_SEGMENT_NUMBER, n);
    }
    put_seq(&mut o, tags::REFERENCED_SOP_SEQUENCE, vec![r]);
    o
}

// ---------------------------------------------------------------------------------------
// Superseding an earlier result version

/// The note a report carries when it supersedes an earlier result version of the same series.
pub const SUPERSEDES_TEXT: &str = "Supersedes result version";

/// The SR of an earlier result version, as a later one references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    pub version: u32,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

impl Predecessor {
    /// The identity of the SR in `sr` (its data set), of result version `version`.
    pub fn of(sr: &InMemDicomObject, version: u32) -> Result<Predecessor, EncodeError> {
        let get = |tag, name: &str| {
            sr.element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| EncodeError::InvalidInput(format!("earlier SR without {name}")))
        };
        Ok(Predecessor {
            version,
            study_uid: get(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            series_uid: get(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            sop_class_uid: get(tags::SOP_CLASS_UID, "SOPClassUID")?,
            sop_instance_uid: get(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        })
    }
}

/// Marks an encoded SR as superseding `p`: the Predecessor Documents Sequence (PS3.3
/// C.17.2.3) references the earlier SR, and the Qualitative Evaluations say "Supersedes result
/// version N". Applying it again gives the same data set.
pub fn supersede(sr: &mut InMemDicomObject, p: &Predecessor) {
    let reference = object_of(&[
        (
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            p.sop_class_uid.as_str(),
        ),
        (
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            p.sop_instance_uid.as_str(),
        ),
    ]);
    put_seq(
        sr,
        tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
        vec![evidence(&p.study_uid, &p.series_uid, vec![reference])],
    );
    let note = format!("{SUPERSEDES_TEXT} {}", p.version);
    let _ = sr.update_value(tags::CONTENT_SEQUENCE, |v| {
        let Some(items) = v.items_mut() else { return };
        let qualitative = items.iter_mut().find(|i| {
            i.element(tags::CONCEPT_NAME_CODE_SEQUENCE)
                .ok()
                .and_then(|e| e.items())
                .and_then(|c| c.first())
                .and_then(|c| c.element(tags::CODE_VALUE).ok())
                .and_then(|e| e.to_str().ok())
                .is_some_and(|s| s.trim_end() == QUALITATIVE_EVALUATIONS.value)
        });
        let Some(q) = qualitative else { return };
        let _ = q.update_value(tags::CONTENT_SEQUENCE, |v| {
            let Some(notes) = v.items_mut() else { return };
            notes.retain(|n| {
                !n.element(tags::TEXT_VALUE)
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|t| t.starts_with(SUPERSEDES_TEXT))
            });
            notes.insert(0, text(CONTAINS, codes::RESULT_NOTE, &note));
        });
    });
}
