//! Assemble stage: DICOM files → one [`Volume`] in HU, or a refusal with a stated reason.
//!
//! 1. [`scan`]: walk the inputs, read headers only (up to Pixel Data), skip non-DICOM files,
//!    drop repeated SOP instances.
//! 2. [`select`]: group by Series Instance UID, check every series on its headers (CT, ORIGINAL,
//!    axial, spacing ≤ 5 mm, no tilt, no gaps, enough slices) and pick the thinnest that passes.
//! 3. [`decode`]: decode only the chosen series, frame by frame, into one preallocated array.

mod decode;
mod enhanced;
pub mod geometry;
mod scan;
mod select;

use std::path::PathBuf;

use crate::volume::Volume;

pub use scan::ScanStats;

/// Largest series we agree to allocate (voxels): 2 GiB of i16, far above any chest CT
/// (512×512×1000 is 0.26 G) but it stops corrupt Rows/Columns from exhausting memory.
pub const MAX_VOXELS: usize = 1 << 30;

/// Why no volume could be assembled. Every variant reads as one line through [`AssembleError::reason`].
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("cannot read input {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no DICOM image files among the inputs ({files} files examined, {non_dicom} not DICOM, {unreadable} unreadable, {non_image} without an image series)")]
    NoDicom {
        files: usize,
        non_dicom: usize,
        unreadable: usize,
        non_image: usize,
    },
    #[error("no CT series: series {series_uid} has modality {modality}")]
    NotCt {
        series_uid: String,
        modality: String,
    },
    #[error("no CT Image Storage or Enhanced CT Image Storage series: series {series_uid} has SOP class {sop_class_uid}")]
    UnsupportedSopClass {
        series_uid: String,
        sop_class_uid: String,
    },
    #[error("no ORIGINAL CT series: series {series_uid} has ImageType {image_type}")]
    NotOriginal {
        series_uid: String,
        image_type: String,
    },
    #[error("no CT series other than localizers: series {series_uid} is a LOCALIZER")]
    Localizer { series_uid: String },
    #[error("no axial CT series: series {series_uid} has its slice normal {angle_deg:.1}° from the patient z axis (at most {max_deg}° allowed)")]
    NotAxial {
        series_uid: String,
        angle_deg: f64,
        max_deg: f64,
    },
    #[error("no axial ORIGINAL CT series with slice spacing ≤ {max_mm} mm: series {series_uid} has {spacing_mm:.1} mm")]
    SpacingTooLarge {
        series_uid: String,
        spacing_mm: f64,
        max_mm: f64,
    },
    #[error("series {series_uid} has {count} slices; at least {min} are needed")]
    TooFewSlices {
        series_uid: String,
        count: usize,
        min: usize,
    },
    #[error("series {series_uid} was acquired with gantry tilt {tilt_deg:.1}°; tilted stacks are not scored")]
    GantryTilt { series_uid: String, tilt_deg: f64 },
    #[error("series {series_uid}: slice positions do not lie along the slice normal (sheared stack, {offset_mm:.2} mm in-plane drift, {angle_deg:.1}°), as from gantry tilt")]
    ShearedStack {
        series_uid: String,
        offset_mm: f64,
        angle_deg: f64,
    },
    #[error("series {series_uid}: missing slices or irregular spacing: gap of {gap_mm:.2} mm after slice at {after_mm:.2} mm along the normal, median spacing {median_mm:.2} mm")]
    IrregularSpacing {
        series_uid: String,
        gap_mm: f64,
        after_mm: f64,
        median_mm: f64,
    },
    #[error("series {series_uid}: two different images at the same position ({position_mm:.2} mm along the normal): {first} and {second}")]
    DuplicatePosition {
        series_uid: String,
        position_mm: f64,
        first: String,
        second: String,
    },
    #[error("series {series_uid}: inconsistent geometry within the series: {detail}")]
    InconsistentGeometry { series_uid: String, detail: String },
    #[error("series {series_uid}: invalid header in instance {sop_instance_uid}: {detail}")]
    BadHeader {
        series_uid: String,
        sop_instance_uid: String,
        detail: String,
    },
    #[error("series {series_uid} is too large: {voxels} voxels (at most {max})")]
    TooLarge {
        series_uid: String,
        voxels: u128,
        max: usize,
    },
    #[error("series {series_uid}: pixel data of instance {sop_instance_uid} cannot be decoded: {detail}")]
    Undecodable {
        series_uid: String,
        sop_instance_uid: String,
        detail: String,
    },
    #[error(
        "series {series_uid}: pixel data of instance {sop_instance_uid} is truncated: {detail}"
    )]
    TruncatedPixelData {
        series_uid: String,
        sop_instance_uid: String,
        detail: String,
    },
}

impl AssembleError {
    /// The series the refusal names, when it names one.
    pub fn series_uid(&self) -> Option<&str> {
        use AssembleError::*;
        match self {
            Input { .. } | NoDicom { .. } => None,
            NotCt { series_uid, .. }
            | UnsupportedSopClass { series_uid, .. }
            | NotOriginal { series_uid, .. }
            | Localizer { series_uid }
            | NotAxial { series_uid, .. }
            | SpacingTooLarge { series_uid, .. }
            | TooFewSlices { series_uid, .. }
            | GantryTilt { series_uid, .. }
            | ShearedStack { series_uid, .. }
            | IrregularSpacing { series_uid, .. }
            | DuplicatePosition { series_uid, .. }
            | InconsistentGeometry { series_uid, .. }
            | BadHeader { series_uid, .. }
            | TooLarge { series_uid, .. }
            | Undecodable { series_uid, .. }
            | TruncatedPixelData { series_uid, .. } => Some(series_uid),
        }
    }

    /// One line for `result.json` "reason" and the command line.
    pub fn reason(&self) -> String {
        // Messages embed header text; keep it on one line whatever the header held.
        self.to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// A volume plus what the scan saw on the way (for logs and reports).
#[derive(Debug, Clone)]
pub struct Assembly {
    pub volume: Volume,
    pub stats: ScanStats,
}

/// A refusal with the identity of what was refused, as far as the headers told it: the
/// refused series and its study (empty when no header named them).
#[derive(Debug)]
pub struct Refused {
    pub error: AssembleError,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
}

/// [`assemble_with_stats`], and on refusal the UIDs of the series it refused (for a
/// `result.json` that says which series was not scored).
pub fn assemble_identified(inputs: &[PathBuf]) -> Result<Assembly, Box<Refused>> {
    let mut seen: Vec<(String, String)> = Vec::new();
    assemble_inner(inputs, &mut seen).map_err(|error| {
        let named = error.series_uid().map(str::to_string);
        // The named series' study; with no series named, the one study all inputs share.
        let (study, series) = match named {
            Some(series) => {
                let study = seen
                    .iter()
                    .find(|(_, s)| *s == series)
                    .map(|(st, _)| st.clone())
                    .unwrap_or_default();
                (study, series)
            }
            None => {
                let mut studies: Vec<&String> = seen.iter().map(|(st, _)| st).collect();
                studies.dedup();
                match studies.as_slice() {
                    [one] => ((*one).clone(), String::new()),
                    _ => (String::new(), String::new()),
                }
            }
        };
        Box::new(Refused {
            error,
            study_instance_uid: study,
            series_instance_uid: series,
        })
    })
}

/// Assemble the one series to score from files and/or folders (recursive), in any order.
pub fn assemble_paths(inputs: &[PathBuf]) -> Result<Volume, AssembleError> {
    assemble_with_stats(inputs).map(|a| a.volume)
}

/// [`assemble_paths`], also returning the scan counts (skipped files, repeated instances).
pub fn assemble_with_stats(inputs: &[PathBuf]) -> Result<Assembly, AssembleError> {
    assemble_inner(inputs, &mut Vec::new())
}

/// The assembly; `seen` gets each scanned series' (study, series) UIDs, in order.
fn assemble_inner(
    inputs: &[PathBuf],
    seen: &mut Vec<(String, String)>,
) -> Result<Assembly, AssembleError> {
    let (files, walk_unreadable) = scan::collect_files(inputs)?;
    let (instances, stats) = scan::scan_headers(&files, walk_unreadable);
    for inst in &instances {
        let ids = (
            inst.meta.study_instance_uid.clone(),
            inst.series_uid.clone(),
        );
        if seen.last() != Some(&ids) && !seen.contains(&ids) {
            seen.push(ids);
        }
    }
    tracing::info!(
        files = stats.files,
        dicom = stats.instances,
        non_dicom = stats.non_dicom,
        unreadable = stats.unreadable,
        repeated = stats.repeated_instances,
        "assemble: headers scanned"
    );
    if instances.is_empty() {
        return Err(AssembleError::NoDicom {
            files: stats.files,
            non_dicom: stats.non_dicom,
            unreadable: stats.unreadable,
            non_image: stats.non_image,
        });
    }
    let plan = select::choose(&instances)?;
    tracing::info!(
        slices = plan.slices.len(),
        spacing_z = plan.geometry.spacing[0],
        "assemble: series chosen"
    );
    let volume = decode::decode_plan(&plan, &instances)?;
    Ok(Assembly { volume, stats })
}
