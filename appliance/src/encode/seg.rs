//! Segmentation IOD (SOP class 1.2.840.10008.5.1.4.1.1.66.4), BINARY: one segment per
//! coronary artery with calcium, one frame per (segment, source slice) that has pixels.
//!
//! The mask is exactly the lesion pixels of [`crate::score::Scores`]: pixel `(y, x)` of slice
//! `z` is bit `y * columns + x` of the frame for that slice (rows = y, columns = x, never
//! transposed). Frames are listed segment by segment, slices ascending, and every frame carries
//! its own source reference and plane position, so skipping empty slices cannot shift them.

use std::collections::BTreeMap;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{
    algorithm_parameters, codes, common_modules, ds, object_of, put_seq, put_str, put_strs, put_us,
    segmented_vessels, source_instance_refs, source_is_multiframe, truncate, vessel_colour,
    Context, EncodeError, EncodeInput, SeriesSpec, SEG_SERIES_NUMBER,
};
use crate::score::Vessel;

/// Builds the SEG data set, or `None` when no lesion has pixels.
pub(crate) fn build(
    input: &EncodeInput,
    ctx: &Context,
) -> Result<Option<InMemDicomObject>, EncodeError> {
    let vessels = segmented_vessels(input.scores);
    if vessels.is_empty() {
        return Ok(None);
    }
    let volume = input.volume;
    let meta = &volume.meta;
    if meta.frame_of_reference_uid.is_empty() {
        return Err(EncodeError::InvalidInput(
            "source series has no FrameOfReferenceUID; a SEG cannot be placed".into(),
        ));
    }
    let (_, rows, cols) = volume.dims();
    let frame_pixels = rows * cols;

    // (segment number, slice) → mask of that frame. BTreeMap order is the frame order.
    let mut frames: BTreeMap<(u16, usize), Vec<bool>> = BTreeMap::new();
    for lesion in &input.scores.lesions {
        let Some(idx) = vessels.iter().position(|v| *v == lesion.vessel) else {
            continue;
        };
        if lesion.pixels.is_empty() {
            continue;
        }
        let mask = frames
            .entry((idx as u16 + 1, lesion.slice))
            .or_insert_with(|| vec![false; frame_pixels]);
        for &(y, x) in &lesion.pixels {
            mask[y as usize * cols + x as usize] = true;
        }
    }

    // Dimension index of a plane position: its ordinal among the distinct slices in the SEG.
    let mut slices_used: Vec<usize> = frames.keys().map(|(_, z)| *z).collect();
    slices_used.sort_unstable();
    slices_used.dedup();
    let position_index = |z: usize| slices_used.binary_search(&z).map_or(0, |i| i + 1);

    let multiframe = source_is_multiframe(volume);
    let g = &volume.geometry;
    let mut per_frame = Vec::with_capacity(frames.len());
    let mut bits = vec![0u8; (frames.len() * frame_pixels).div_ceil(8)];
    for (frame_no, ((segment, z), mask)) in frames.iter().enumerate() {
        // Bit-pack contiguously across frames, least significant bit first.
        let base = frame_no * frame_pixels;
        for (i, _) in mask.iter().enumerate().filter(|(_, on)| **on) {
            let bit = base + i;
            bits[bit / 8] |= 1 << (bit % 8);
        }

        let mut source = object_of(&[
            (
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                meta.sop_class_uid.as_str(),
            ),
            (
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                volume.sop_instance_uids[*z].as_str(),
            ),
        ]);
        if multiframe {
            put_str(
                &mut source,
                tags::REFERENCED_FRAME_NUMBER,
                VR::IS,
                &volume.source_frames[*z].to_string(),
            );
        }
        // The mask lies on the source pixel grid (readers such as highdicom index by it).
        put_str(
            &mut source,
            tags::SPATIAL_LOCATIONS_PRESERVED,
            VR::CS,
            "YES",
        );
        put_seq(
            &mut source,
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![codes::SOURCE_IMAGE_PURPOSE.item()],
        );
        let mut derivation = InMemDicomObject::new_empty();
        put_seq(
            &mut derivation,
            tags::DERIVATION_CODE_SEQUENCE,
            vec![codes::SEGMENTATION_DERIVATION.item()],
        );
        put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);

        let mut content = InMemDicomObject::new_empty();
        content.put(DataElement::new(
            tags::DIMENSION_INDEX_VALUES,
            VR::UL,
            PrimitiveValue::U32(
                [u32::from(*segment), position_index(*z) as u32]
                    .into_iter()
                    .collect(),
            ),
        ));

        let p = g.index_to_patient(*z as f64, 0.0, 0.0);
        let mut position = InMemDicomObject::new_empty();
        put_strs(
            &mut position,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &p.map(ds),
        );

        let mut seg_id = InMemDicomObject::new_empty();
        put_us(&mut seg_id, tags::REFERENCED_SEGMENT_NUMBER, *segment);

        let mut item = InMemDicomObject::new_empty();
        put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
        put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
        put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
        put_seq(
            &mut item,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![seg_id],
        );
        per_frame.push(item);
    }
    if bits.len() % 2 == 1 {
        bits.push(0); // even value length
    }

    let series_description = format!("CAC segmentation ({})", input.model.name);
    let mut o = common_modules(
        input,
        ctx,
        &SeriesSpec {
            sop_class_uid: uids::SEGMENTATION_STORAGE,
            sop_instance_uid: &ctx.seg_uid,
            series_instance_uid: &ctx.seg_series_uid,
            series_number: SEG_SERIES_NUMBER,
            modality: "SEG",
            series_description: &series_description,
        },
    );

    // Frame of Reference
    put_str(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &meta.frame_of_reference_uid,
    );
    put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");

    // Segmentation Image + Image Pixel
    put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "CORONARY_CALCIUM");
    put_str(
        &mut o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Coronary artery calcium lesions scored by cacd (Agatston)",
    );
    put_str(
        &mut o,
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        // Family-name component only; a PN without '^' reads as the retired free-text form.
        &format!("{}^", truncate(&input.options.device_name, 63)),
    );
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_us(&mut o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_us(&mut o, tags::ROWS, rows as u16);
    put_us(&mut o, tags::COLUMNS, cols as u16);
    put_us(&mut o, tags::BITS_ALLOCATED, 1);
    put_us(&mut o, tags::BITS_STORED, 1);
    put_us(&mut o, tags::HIGH_BIT, 0);
    put_us(&mut o, tags::PIXEL_REPRESENTATION, 0);
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_seq(
        &mut o,
        tags::SEGMENT_SEQUENCE,
        vessels
            .iter()
            .enumerate()
            .map(|(i, v)| segment_item(input, ctx, i as u16 + 1, *v))
            .collect(),
    );

    // Multi-frame Functional Groups
    put_str(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    put_seq(
        &mut o,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(input)],
    );
    put_seq(
        &mut o,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );

    // Multi-frame Dimension: segment, then plane position.
    let dim_org = ctx.uid(input, "seg-dimension-organization");
    let mut org = InMemDicomObject::new_empty();
    put_str(&mut org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_org);
    put_seq(&mut o, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org]);
    put_str(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    let dim = |pointer, group, label: &str| {
        let mut d = InMemDicomObject::new_empty();
        put_str(&mut d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_org);
        d.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            PrimitiveValue::from(pointer),
        ));
        d.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            PrimitiveValue::from(group),
        ));
        put_str(&mut d, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        d
    };
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dim(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            dim(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    );

    // Common Instance Reference: the whole source series.
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &meta.series_instance_uid,
    );
    put_seq(
        &mut series,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        source_instance_refs(volume),
    );
    put_seq(&mut o, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);

    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(bits),
    ));
    Ok(Some(o))
}

/// Plane orientation and pixel measures, the same for every frame.
fn shared_groups(input: &EncodeInput) -> InMemDicomObject {
    let g = &input.volume.geometry;
    let mut orientation = InMemDicomObject::new_empty();
    let iop: Vec<String> = g
        .row_dir
        .iter()
        .chain(g.col_dir.iter())
        .map(|v| ds(*v))
        .collect();
    put_strs(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &iop,
    );

    let mut measures = InMemDicomObject::new_empty();
    // PixelSpacing is (row spacing = y, column spacing = x).
    put_strs(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &[ds(g.spacing[1]), ds(g.spacing[2])],
    );
    let thickness = input
        .volume
        .meta
        .slice_thickness_mm
        .filter(|t| *t > 0.0)
        .unwrap_or(g.spacing[0]);
    put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, &ds(thickness));
    put_str(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(g.spacing[0]),
    );

    let mut shared = InMemDicomObject::new_empty();
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    shared
}

/// One item of SegmentSequence.
fn segment_item(
    input: &EncodeInput,
    ctx: &Context,
    number: u16,
    vessel: Vessel,
) -> InMemDicomObject {
    let model = input.model;
    let label = format!("{} calcium", vessel.name());
    let mut s = InMemDicomObject::new_empty();
    put_us(&mut s, tags::SEGMENT_NUMBER, number);
    put_str(&mut s, tags::SEGMENT_LABEL, VR::LO, &label);
    put_str(
        &mut s,
        tags::SEGMENT_DESCRIPTION,
        VR::ST,
        &format!(
            "Calcified lesions of the {} (Agatston, HU ≥ 130)",
            codes::vessel(vessel).meaning
        ),
    );
    put_seq(
        &mut s,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![codes::MORPH_ABNORMAL.item()],
    );
    put_seq(
        &mut s,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![codes::CALCIFICATION.item()],
    );
    put_seq(
        &mut s,
        tags::ANATOMIC_REGION_SEQUENCE,
        vec![codes::vessel(vessel).item()],
    );
    put_str(&mut s, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(
        &mut s,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &truncate(&model.name, 64),
    );

    let mut algo = InMemDicomObject::new_empty();
    put_seq(
        &mut algo,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![codes::AI_FAMILY.item()],
    );
    put_str(
        &mut algo,
        tags::ALGORITHM_NAME,
        VR::LO,
        &truncate(&model.name, 64),
    );
    put_str(
        &mut algo,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &truncate(&model.version, 64),
    );
    put_str(
        &mut algo,
        tags::ALGORITHM_PARAMETERS,
        VR::LT,
        &algorithm_parameters(model),
    );
    put_seq(
        &mut s,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![algo],
    );

    // Tracking identifiers shared with the SR's measurement group of the same vessel.
    put_str(&mut s, tags::TRACKING_ID, VR::UT, &label);
    put_str(
        &mut s,
        tags::TRACKING_UID,
        VR::UI,
        &tracking_uid(input, ctx, vessel),
    );
    s.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        VR::US,
        PrimitiveValue::U16(
            srgb_to_dicom_lab(vessel_colour(vessel))
                .into_iter()
                .collect(),
        ),
    ));
    s
}

/// Tracking UID of a vessel's calcium, shared by the SEG segment and the SR group.
pub(crate) fn tracking_uid(input: &EncodeInput, ctx: &Context, vessel: Vessel) -> String {
    ctx.uid(input, &format!("tracking-{}", vessel.name()))
}

/// sRGB → CIELab (D65) scaled as DICOM stores it: L 0..100 → 0..65535, a/b −128..127 →
/// 0..65535 (PS3.3 C.10.7.1.1). Written by hand: a dozen lines of the standard formulas.
pub(crate) fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    let lin = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    let l = 116.0 * fy - 16.0;
    let a = 500.0 * (fx - fy);
    let bb = 200.0 * (fy - fz);
    let scale = |v: f64, lo: f64, hi: f64| {
        (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 65535.0).round() as u16
    };
    [
        scale(l, 0.0, 100.0),
        scale(a, -128.0, 127.0),
        scale(bb, -128.0, 127.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::srgb_to_dicom_lab;

    #[test]
    fn lab_of_white_and_black() {
        let w = srgb_to_dicom_lab([255, 255, 255]);
        assert!(
            w[0] > 65500 && (w[1] as i32 - 32896).abs() < 200 && (w[2] as i32 - 32896).abs() < 200
        );
        assert_eq!(srgb_to_dicom_lab([0, 0, 0])[0], 0);
    }
}
