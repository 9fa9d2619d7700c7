//! Series choice: every series is checked on its headers alone, in the order of the rules
//! (CT, storage class, ORIGINAL, consistent geometry, axial, spacing, then stack checks). The
//! thinnest series that passes all of them is scored; when none does, the refusal is the one of
//! the series that got furthest (then thinnest, then most slices).

use std::collections::BTreeMap;

use dicom_dictionary_std::uids;

use super::geometry::{self, Orientation};
use super::scan::{Instance, Rescale};
use super::{AssembleError, MAX_VOXELS};
use crate::volume::{Geometry, SeriesMeta};

/// Thickest slice spacing scored (mm), and the slack allowed for rounding in positions. Much
/// routine chest CT is kept at 5 mm only; above 3 mm the score carries a warning (pipeline).
pub const MAX_SPACING_MM: f64 = 5.0;
const SPACING_SLACK_MM: f64 = 0.05;
/// Fewest slices scored.
pub const MIN_SLICES: usize = 16;
/// GantryDetectorTilt at or below this (degrees) counts as no tilt.
const TILT_TOLERANCE_DEG: f64 = 0.01;
/// Pixel spacings within this (mm) are the same.
const PIXEL_SPACING_TOLERANCE_MM: f64 = 1e-3;

/// One frame of one instance, placed along the slice normal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceRef {
    /// Index into the scanned instances.
    pub instance: usize,
    /// 0-based frame index within that instance.
    pub frame: usize,
    pub rescale: Rescale,
    /// Distance along the slice normal (mm).
    pub distance: f64,
}

/// The chosen series, ready to decode.
#[derive(Debug, Clone)]
pub struct Plan {
    pub series_uid: String,
    /// One per distinct position, in ascending order along the normal.
    pub slices: Vec<SliceRef>,
    /// Other frames found at the position of `slices[i]`: `(i, others)`. They must hold the
    /// same image as `slices[i]` or the series is refused.
    pub duplicates: Vec<(usize, Vec<SliceRef>)>,
    pub rows: usize,
    pub cols: usize,
    pub geometry: Geometry,
    pub meta: SeriesMeta,
}

/// How far a series got through the rules before it was refused.
#[derive(Debug)]
struct Rejection {
    stage: u8,
    spacing: Option<f64>,
    slices: usize,
    error: AssembleError,
}

fn reject(stage: u8, error: AssembleError) -> Rejection {
    Rejection {
        stage,
        spacing: None,
        slices: 0,
        error,
    }
}

/// Choose the series to score among all scanned instances (which must not be empty).
pub fn choose(instances: &[Instance]) -> Result<Plan, AssembleError> {
    let mut series: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, inst) in instances.iter().enumerate() {
        series.entry(inst.series_uid.as_str()).or_default().push(i);
    }
    let mut passed: Vec<Plan> = Vec::new();
    let mut best_rejection: Option<Rejection> = None;
    for (uid, members) in series {
        // Some scanners file the scout in the axial series: drop localizer images, refuse
        // the series as a localizer only when nothing else is left.
        let is_localizer = |i: &usize| instances[*i].image_type.iter().any(|t| t == "LOCALIZER");
        let axial: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !is_localizer(i))
            .collect();
        if !axial.is_empty() && axial.len() < members.len() {
            tracing::info!(
                series = uid,
                dropped = members.len() - axial.len(),
                "assemble: localizer images inside a series ignored"
            );
        }
        let members = if axial.is_empty() { members } else { axial };
        match evaluate(uid, &members, instances) {
            Ok(plan) => passed.push(plan),
            Err(r) => {
                tracing::debug!(series = uid, reason = %r.error, "assemble: series not eligible");
                if best_rejection.as_ref().is_none_or(|b| further(&r, b)) {
                    best_rejection = Some(r);
                }
            }
        }
    }
    // Thinnest first; equal spacing (within rounding): more slices first.
    passed.sort_by(|a, b| {
        let (sa, sb) = (a.geometry.spacing[0], b.geometry.spacing[0]);
        if (sa - sb).abs() > 1e-3 {
            sa.total_cmp(&sb)
        } else {
            b.slices.len().cmp(&a.slices.len())
        }
    });
    if let Some(plan) = passed.into_iter().next() {
        return Ok(plan);
    }
    Err(match best_rejection {
        Some(r) => r.error,
        // Unreachable with at least one instance, but stay total.
        None => AssembleError::NoDicom {
            files: 0,
            non_dicom: 0,
            unreadable: 0,
            non_image: 0,
        },
    })
}

/// Is rejection `a` from a series closer to scorable than `b`?
fn further(a: &Rejection, b: &Rejection) -> bool {
    if a.stage != b.stage {
        return a.stage > b.stage;
    }
    match (a.spacing, b.spacing) {
        (Some(x), Some(y)) if (x - y).abs() > 1e-3 => return x < y,
        (Some(_), None) => return true,
        (None, Some(_)) => return false,
        _ => {}
    }
    a.slices > b.slices
}

fn evaluate(uid: &str, members: &[usize], all: &[Instance]) -> Result<Plan, Rejection> {
    let insts: Vec<&Instance> = members.iter().map(|&i| &all[i]).collect();
    let uid_s = uid.to_string();
    let bad = |inst: &Instance, detail: String| AssembleError::BadHeader {
        series_uid: uid_s.clone(),
        sop_instance_uid: inst.sop_instance_uid.clone(),
        detail,
    };
    let inconsistent = |detail: String| AssembleError::InconsistentGeometry {
        series_uid: uid_s.clone(),
        detail,
    };

    // Stage 0-2: what the series is.
    if let Some(i) = insts.iter().find(|i| i.modality != "CT") {
        let modality = if i.modality.is_empty() {
            "(none)".to_string()
        } else {
            i.modality.clone()
        };
        return Err(reject(
            0,
            AssembleError::NotCt {
                series_uid: uid_s,
                modality,
            },
        ));
    }
    if let Some(i) = insts.iter().find(|i| {
        i.sop_class_uid != uids::CT_IMAGE_STORAGE
            && i.sop_class_uid != uids::ENHANCED_CT_IMAGE_STORAGE
    }) {
        return Err(reject(
            1,
            AssembleError::UnsupportedSopClass {
                series_uid: uid_s,
                sop_class_uid: i.sop_class_uid.clone(),
            },
        ));
    }
    if insts
        .iter()
        .any(|i| i.image_type.iter().any(|t| t == "LOCALIZER"))
    {
        return Err(reject(2, AssembleError::Localizer { series_uid: uid_s }));
    }
    if let Some(i) = insts
        .iter()
        .find(|i| i.image_type.first().map(String::as_str) != Some("ORIGINAL"))
    {
        let image_type = if i.image_type.is_empty() {
            "(none)".to_string()
        } else {
            i.image_type.join("\\")
        };
        return Err(reject(
            2,
            AssembleError::NotOriginal {
                series_uid: uid_s,
                image_type,
            },
        ));
    }

    // Stage 3: every frame has usable, consistent geometry.
    struct Placed {
        inst: usize,
        frame: usize,
        position: geometry::Vec3,
        rescale: Rescale,
    }
    let first = insts[0];
    let format0 = first
        .pixel
        .as_ref()
        .map_err(|e| reject(3, bad(first, e.clone())))?;
    let mut orientation0: Option<Orientation> = None;
    let mut spacing0: Option<[f64; 2]> = None;
    let mut placed: Vec<Placed> = Vec::new();
    let mut max_tilt: f64 = 0.0;
    for (k, inst) in insts.iter().enumerate() {
        let format = inst
            .pixel
            .as_ref()
            .map_err(|e| reject(3, bad(inst, e.clone())))?;
        if (format.rows, format.cols) != (format0.rows, format0.cols) {
            return Err(reject(
                3,
                inconsistent(format!(
                    "image size {}×{} in {} but {}×{} in {}",
                    format0.rows,
                    format0.cols,
                    first.sop_instance_uid,
                    format.rows,
                    format.cols,
                    inst.sop_instance_uid
                )),
            ));
        }
        if inst.frame_of_reference != first.frame_of_reference {
            return Err(reject(
                3,
                inconsistent(format!(
                    "FrameOfReferenceUID differs between {} and {}",
                    first.sop_instance_uid, inst.sop_instance_uid
                )),
            ));
        }
        let tilt = inst
            .gantry_tilt
            .as_ref()
            .map_err(|e| reject(3, bad(inst, e.clone())))?;
        max_tilt = max_tilt.max(tilt.unwrap_or(0.0));
        let frames = inst
            .frames
            .as_ref()
            .map_err(|e| reject(3, bad(inst, e.clone())))?;
        for (f, frame) in frames.iter().enumerate() {
            let at = |e: &String| {
                let e = if frames.len() > 1 {
                    format!("frame {}: {e}", frame.number)
                } else {
                    e.clone()
                };
                reject(3, bad(inst, e))
            };
            let position = *frame.position.as_ref().map_err(at)?;
            let orientation = *frame.orientation.as_ref().map_err(at)?;
            let spacing = *frame.pixel_spacing.as_ref().map_err(at)?;
            let rescale = *frame.rescale.as_ref().map_err(at)?;
            match orientation0 {
                None => orientation0 = Some(orientation),
                Some(o) if !o.approx_eq(&orientation) => {
                    return Err(reject(
                        3,
                        inconsistent(format!(
                            "ImageOrientationPatient differs in {}",
                            inst.sop_instance_uid
                        )),
                    ))
                }
                Some(_) => {}
            }
            match spacing0 {
                None => spacing0 = Some(spacing),
                Some(s)
                    if (s[0] - spacing[0]).abs() > PIXEL_SPACING_TOLERANCE_MM
                        || (s[1] - spacing[1]).abs() > PIXEL_SPACING_TOLERANCE_MM =>
                {
                    return Err(reject(
                        3,
                        inconsistent(format!(
                            "PixelSpacing {:.3}\\{:.3} in {} but {:.3}\\{:.3} in {}",
                            s[0],
                            s[1],
                            first.sop_instance_uid,
                            spacing[0],
                            spacing[1],
                            inst.sop_instance_uid
                        )),
                    ))
                }
                Some(_) => {}
            }
            placed.push(Placed {
                inst: members[k],
                frame: f,
                position,
                rescale,
            });
        }
    }
    let (Some(orientation), Some(pixel_spacing)) = (orientation0, spacing0) else {
        return Err(reject(3, bad(first, "no frames".into())));
    };

    // Stage 4: axial.
    if !orientation.is_axial() {
        return Err(reject(
            4,
            AssembleError::NotAxial {
                series_uid: uid_s,
                angle_deg: orientation.angle_from_z_deg(),
                max_deg: geometry::AXIAL_MAX_DEG,
            },
        ));
    }

    // Stage 5: sort along the normal; spacing from positions.
    let positions: Vec<geometry::Vec3> = placed.iter().map(|p| p.position).collect();
    let order = geometry::sort_along(&positions, orientation.normal);
    let distances: Vec<f64> = order
        .iter()
        .map(|&i| geometry::dot(positions[i], orientation.normal))
        .collect();
    let groups = geometry::group_same_position(&distances);
    let distinct: Vec<f64> = groups.iter().map(|g| distances[g.start]).collect();
    let too_few = |count: usize, spacing: Option<f64>, stage: u8| Rejection {
        stage,
        spacing,
        slices: count,
        error: AssembleError::TooFewSlices {
            series_uid: uid.to_string(),
            count,
            min: MIN_SLICES,
        },
    };
    let Some(median) = geometry::median_spacing(&distinct) else {
        return Err(too_few(distinct.len(), None, 5));
    };
    if median > MAX_SPACING_MM + SPACING_SLACK_MM {
        return Err(Rejection {
            stage: 5,
            spacing: Some(median),
            slices: distinct.len(),
            error: AssembleError::SpacingTooLarge {
                series_uid: uid_s,
                spacing_mm: median,
                max_mm: MAX_SPACING_MM,
            },
        });
    }
    let stage6 = |error: AssembleError| Rejection {
        stage: 6,
        spacing: Some(median),
        slices: distinct.len(),
        error,
    };

    // Stage 6: the stack is one regular, untilted grid of enough slices.
    if max_tilt > TILT_TOLERANCE_DEG {
        return Err(stage6(AssembleError::GantryTilt {
            series_uid: uid_s,
            tilt_deg: max_tilt,
        }));
    }
    let sorted_positions: Vec<geometry::Vec3> =
        groups.iter().map(|g| positions[order[g.start]]).collect();
    let shear = geometry::shear(&sorted_positions, orientation.normal);
    if geometry::is_sheared(&shear, pixel_spacing[0].min(pixel_spacing[1])) {
        return Err(stage6(AssembleError::ShearedStack {
            series_uid: uid_s,
            offset_mm: shear.offset_mm,
            angle_deg: shear.angle_deg,
        }));
    }
    let spacing_z = match geometry::regular_spacing(&distinct) {
        Ok(s) => s,
        Err(gap) => {
            return Err(stage6(AssembleError::IrregularSpacing {
                series_uid: uid_s,
                gap_mm: gap.gap_mm,
                after_mm: gap.after_mm,
                median_mm: gap.median_mm,
            }))
        }
    };
    if distinct.len() < MIN_SLICES {
        return Err(too_few(distinct.len(), Some(median), 6));
    }
    let (rows, cols) = (format0.rows as usize, format0.cols as usize);
    let voxels = distinct.len() as u128 * rows as u128 * cols as u128;
    if voxels > MAX_VOXELS as u128 {
        return Err(stage6(AssembleError::TooLarge {
            series_uid: uid_s,
            voxels,
            max: MAX_VOXELS,
        }));
    }

    let slice_ref = |sorted_index: usize| {
        let p = &placed[order[sorted_index]];
        SliceRef {
            instance: p.inst,
            frame: p.frame,
            rescale: p.rescale,
            distance: distances[sorted_index],
        }
    };
    let slices: Vec<SliceRef> = groups.iter().map(|g| slice_ref(g.start)).collect();
    let duplicates: Vec<(usize, Vec<SliceRef>)> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.len() > 1)
        .map(|(i, g)| (i, (g.start + 1..g.end).map(slice_ref).collect()))
        .collect();
    let first_slice = &all[slices[0].instance];
    let origin = placed[order[0]].position;
    Ok(Plan {
        series_uid: uid_s,
        rows,
        cols,
        geometry: Geometry {
            spacing: [spacing_z, pixel_spacing[0], pixel_spacing[1]],
            origin,
            row_dir: orientation.row,
            col_dir: orientation.col,
            normal: orientation.normal,
        },
        meta: first_slice.meta.clone(),
        slices,
        duplicates,
    })
}
