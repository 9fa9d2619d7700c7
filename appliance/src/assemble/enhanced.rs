//! Multi-frame Enhanced CT: per-frame geometry and rescale from the Shared and Per-frame
//! Functional Groups (a per-frame macro overrides the shared one).

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::scan::{self, Frame};
use crate::volume::SeriesMeta;

/// More frames than this in one instance is a corrupt header, not a CT.
const MAX_FRAMES: usize = 100_000;

/// First item of a sequence element.
fn first_item(obj: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    obj.get(seq)?.items()?.first()
}

/// The macro item `seq` for one frame: from its per-frame group if present, else shared.
fn macro_item<'a>(
    per_frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    seq: Tag,
) -> Option<&'a InMemDicomObject> {
    per_frame
        .and_then(|p| first_item(p, seq))
        .or_else(|| shared.and_then(|s| first_item(s, seq)))
}

/// Per-frame geometry, and the largest |GantryDetectorTilt| stated; header problems as text.
pub type FramesAndTilt = (Result<Vec<Frame>, String>, Result<Option<f64>, String>);

/// Frames of an Enhanced CT instance, and the largest |GantryDetectorTilt| it states.
/// Also fills series facts the functional groups carry instead of the root (kVp, thickness).
pub fn frames(obj: &InMemDicomObject, meta: &mut SeriesMeta) -> FramesAndTilt {
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame: &[InMemDicomObject] = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let declared = match scan::int(obj, tags::NUMBER_OF_FRAMES) {
        Ok(n) => n,
        Err(e) => return (Err(e), Ok(None)),
    };
    let count = match declared {
        Some(n) if n < 1 || n as usize > MAX_FRAMES => {
            return (Err(format!("NumberOfFrames {n} out of range")), Ok(None))
        }
        Some(n) if !per_frame.is_empty() && n as usize != per_frame.len() => {
            return (
                Err(format!(
                    "NumberOfFrames {n} but {} per-frame functional groups",
                    per_frame.len()
                )),
                Ok(None),
            )
        }
        Some(n) => n as usize,
        None if !per_frame.is_empty() => per_frame.len(),
        None => return (Err("NumberOfFrames missing".into()), Ok(None)),
    };

    let mut frames = Vec::with_capacity(count);
    let mut tilt: Option<f64> = None;
    for i in 0..count {
        let pf = per_frame.get(i);
        let item = |seq: Tag| macro_item(pf, shared, seq);
        let position = item(tags::PLANE_POSITION_SEQUENCE)
            .ok_or_else(|| "PlanePositionSequence missing".to_string())
            .and_then(scan::position);
        let orientation = item(tags::PLANE_ORIENTATION_SEQUENCE)
            .ok_or_else(|| "PlaneOrientationSequence missing".to_string())
            .and_then(scan::orientation);
        let pixel_spacing = item(tags::PIXEL_MEASURES_SEQUENCE)
            .ok_or_else(|| "PixelMeasuresSequence missing".to_string())
            .and_then(scan::pixel_spacing);
        // Without the transformation macro, fall back to the root (identity if absent there too).
        let rescale = match item(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
            Some(m) => scan::rescale(m),
            None => scan::rescale(obj),
        };
        if let Some(acq) = item(tags::CT_ACQUISITION_DETAILS_SEQUENCE) {
            match scan::float(acq, tags::GANTRY_DETECTOR_TILT) {
                Ok(Some(t)) => tilt = Some(tilt.unwrap_or(0.0).max(t.abs())),
                Ok(None) => {}
                Err(e) => return (Err(e.clone()), Err(e)),
            }
        }
        if i == 0 {
            fill_meta(
                meta,
                item(tags::PIXEL_MEASURES_SEQUENCE),
                item(tags::CTX_RAY_DETAILS_SEQUENCE),
            );
        }
        frames.push(Frame {
            number: (i + 1) as u32,
            position,
            orientation,
            pixel_spacing,
            rescale,
        });
    }
    // A root-level tilt (rare in enhanced objects) counts too.
    let root_tilt = match scan::float(obj, tags::GANTRY_DETECTOR_TILT) {
        Ok(t) => t.map(f64::abs),
        Err(e) => return (Ok(frames), Err(e)),
    };
    let tilt = match (tilt, root_tilt) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (Ok(frames), Ok(tilt))
}

fn fill_meta(
    meta: &mut SeriesMeta,
    measures: Option<&InMemDicomObject>,
    xray: Option<&InMemDicomObject>,
) {
    if meta.slice_thickness_mm.is_none() {
        meta.slice_thickness_mm =
            measures.and_then(|m| scan::float(m, tags::SLICE_THICKNESS).ok().flatten());
    }
    if meta.kvp.is_none() {
        meta.kvp = xray.and_then(|x| scan::float(x, tags::KVP).ok().flatten());
    }
}
