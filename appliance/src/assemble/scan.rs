//! Header scan: find the files, read each one's header (up to Pixel Data, never the pixels),
//! and keep what series choice, geometry and decoding need.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;

use super::enhanced;
use super::geometry::{Orientation, Vec3};
use super::AssembleError;
use crate::volume::SeriesMeta;

/// What the scan saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Regular files found under the inputs.
    pub files: usize,
    /// Distinct DICOM image instances kept.
    pub instances: usize,
    /// Files without the DICOM signature (e.g. truth.json), skipped quietly.
    pub non_dicom: usize,
    /// Files with the DICOM signature whose header could not be parsed, or unreadable entries.
    pub unreadable: usize,
    /// DICOM files that are not part of an image series (DICOMDIR, no Series Instance UID).
    pub non_image: usize,
    /// Files repeating a SOP Instance UID already seen (kept once).
    pub repeated_instances: usize,
}

/// Slope and intercept of the modality LUT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

/// Geometry and rescale of one frame (a single-frame image has one). Header problems are kept
/// as text and turned into a typed refusal once the series is known.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 1-based frame number in its instance.
    pub number: u32,
    pub position: Result<Vec3, String>,
    pub orientation: Result<Orientation, String>,
    /// (row spacing, column spacing) in mm.
    pub pixel_spacing: Result<[f64; 2], String>,
    pub rescale: Result<Rescale, String>,
}

/// How the stored samples are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelFormat {
    pub rows: u32,
    pub cols: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    /// PixelPaddingValue and optional PixelPaddingRangeLimit, in stored-value space.
    pub padding: Option<(i64, Option<i64>)>,
}

/// The header of one DICOM image instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_uid: String,
    pub modality: String,
    pub image_type: Vec<String>,
    pub frame_of_reference: Option<String>,
    pub pixel: Result<PixelFormat, String>,
    /// Largest |GantryDetectorTilt| given (degrees).
    pub gantry_tilt: Result<Option<f64>, String>,
    pub frames: Result<Vec<Frame>, String>,
    pub meta: SeriesMeta,
}

/// Expand files and folders (recursively) into a sorted list of regular files.
pub fn collect_files(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, usize), AssembleError> {
    let mut files = Vec::new();
    let mut unreadable = 0;
    let mut seen_dirs = HashSet::new();
    for input in inputs {
        let md = fs::metadata(input).map_err(|source| AssembleError::Input {
            path: input.clone(),
            source,
        })?;
        if md.is_dir() {
            walk(input, &mut files, &mut unreadable, &mut seen_dirs);
        } else if md.is_file() {
            files.push(input.clone());
        }
    }
    files.sort();
    files.dedup();
    Ok((files, unreadable))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, unreadable: &mut usize, seen: &mut HashSet<PathBuf>) {
    // Symlinked folders can loop; visit each real folder once.
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !seen.insert(real) {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        *unreadable += 1;
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            *unreadable += 1;
            continue;
        };
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(md) if md.is_dir() => walk(&path, files, unreadable, seen),
            Ok(md) if md.is_file() => files.push(path),
            Ok(_) => {}
            Err(_) => *unreadable += 1,
        }
    }
}

enum Scanned {
    NotDicom,
    Unreadable,
    NonImage,
    Image(Box<Instance>),
}

/// Read every file's header in parallel; keep image instances once per SOP Instance UID.
pub fn scan_headers(files: &[PathBuf], walk_unreadable: usize) -> (Vec<Instance>, ScanStats) {
    let scanned: Vec<Scanned> = files.par_iter().map(|p| scan_file(p)).collect();
    let mut stats = ScanStats {
        files: files.len(),
        unreadable: walk_unreadable,
        ..ScanStats::default()
    };
    let mut seen = HashSet::new();
    let mut instances = Vec::new();
    for s in scanned {
        match s {
            Scanned::NotDicom => stats.non_dicom += 1,
            Scanned::Unreadable => stats.unreadable += 1,
            Scanned::NonImage => stats.non_image += 1,
            Scanned::Image(inst) => {
                if seen.insert(inst.sop_instance_uid.clone()) {
                    instances.push(*inst);
                } else {
                    stats.repeated_instances += 1;
                }
            }
        }
    }
    stats.instances = instances.len();
    (instances, stats)
}

/// True when the file carries the DICOM signature (after a 128-byte preamble, or at the start).
fn has_dicom_signature(path: &Path) -> Option<bool> {
    let mut f = fs::File::open(path).ok()?;
    let mut buf = [0u8; 132];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    Some((n >= 132 && &buf[128..132] == b"DICM") || (n >= 4 && &buf[0..4] == b"DICM"))
}

fn scan_file(path: &Path) -> Scanned {
    match has_dicom_signature(path) {
        None => return Scanned::Unreadable,
        Some(false) => return Scanned::NotDicom,
        Some(true) => {}
    }
    // dicom-rs allocates a value's declared length before reading it: a file that lies about
    // a length would take gigabytes. Lengths are walked first (see `crate::lengths`).
    // A cut or lying Pixel Data is reported when the series is decoded (decode.rs walks the
    // file again before reading it whole); reading the header up to it is safe.
    match crate::lengths::check_file(path) {
        Ok(()) | Err(crate::lengths::LengthError::Truncated(0x7FE0, 0x0010, _)) => {}
        Err(_) => return Scanned::Unreadable,
    }
    let Ok(obj) = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
    else {
        return Scanned::Unreadable;
    };
    let Some(series_uid) = text(&obj, tags::SERIES_INSTANCE_UID) else {
        return Scanned::NonImage;
    };
    let meta_table = obj.meta();
    let sop_instance_uid = text(&obj, tags::SOP_INSTANCE_UID)
        .unwrap_or_else(|| clean(&meta_table.media_storage_sop_instance_uid));
    let sop_class_uid = text(&obj, tags::SOP_CLASS_UID)
        .unwrap_or_else(|| clean(&meta_table.media_storage_sop_class_uid));
    let modality = text(&obj, tags::MODALITY).unwrap_or_default();
    let image_type = texts(&obj, tags::IMAGE_TYPE);
    let multi_frame = sop_class_uid == uids::ENHANCED_CT_IMAGE_STORAGE
        || obj
            .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .is_some();

    let mut meta = series_meta(&obj, &series_uid, &sop_class_uid, &modality);
    let (frames, gantry_tilt) = if multi_frame {
        enhanced::frames(&obj, &mut meta)
    } else {
        (
            Ok(vec![single_frame(&obj)]),
            float(&obj, tags::GANTRY_DETECTOR_TILT).map(|t| t.map(f64::abs)),
        )
    };

    Scanned::Image(Box::new(Instance {
        path: path.to_path_buf(),
        sop_instance_uid,
        sop_class_uid,
        series_uid,
        modality,
        image_type,
        frame_of_reference: text(&obj, tags::FRAME_OF_REFERENCE_UID),
        pixel: pixel_format(&obj),
        gantry_tilt,
        frames,
        meta,
    }))
}

fn single_frame(obj: &InMemDicomObject) -> Frame {
    Frame {
        number: 1,
        position: position(obj),
        orientation: orientation(obj),
        pixel_spacing: pixel_spacing(obj),
        rescale: rescale(obj),
    }
}

pub(super) fn position(obj: &InMemDicomObject) -> Result<Vec3, String> {
    match floats(obj, tags::IMAGE_POSITION_PATIENT)? {
        Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Some(v) => Err(format!("ImagePositionPatient has {} values", v.len())),
        None => Err("ImagePositionPatient missing".into()),
    }
}

pub(super) fn orientation(obj: &InMemDicomObject) -> Result<Orientation, String> {
    match floats(obj, tags::IMAGE_ORIENTATION_PATIENT)? {
        Some(v) => Orientation::from_iop(&v)
            .ok_or_else(|| "ImageOrientationPatient is not two orthogonal unit vectors".into()),
        None => Err("ImageOrientationPatient missing".into()),
    }
}

pub(super) fn pixel_spacing(obj: &InMemDicomObject) -> Result<[f64; 2], String> {
    match floats(obj, tags::PIXEL_SPACING)? {
        Some(v) if v.len() == 2 && v.iter().all(|&s| s > 0.0) => Ok([v[0], v[1]]),
        Some(_) => Err("PixelSpacing is not two positive values".into()),
        None => Err("PixelSpacing missing".into()),
    }
}

/// RescaleSlope/Intercept; absent means identity (slope 1, intercept 0).
pub(super) fn rescale(obj: &InMemDicomObject) -> Result<Rescale, String> {
    let slope = float(obj, tags::RESCALE_SLOPE)?.unwrap_or(1.0);
    let intercept = float(obj, tags::RESCALE_INTERCEPT)?.unwrap_or(0.0);
    Ok(Rescale { slope, intercept })
}

fn pixel_format(obj: &InMemDicomObject) -> Result<PixelFormat, String> {
    let req = |tag: Tag, name: &str| -> Result<i64, String> {
        int(obj, tag)?.ok_or_else(|| format!("{name} missing"))
    };
    let rows = req(tags::ROWS, "Rows")?;
    let cols = req(tags::COLUMNS, "Columns")?;
    let bits_allocated = req(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let bits_stored = int(obj, tags::BITS_STORED)?.unwrap_or(bits_allocated);
    let high_bit = int(obj, tags::HIGH_BIT)?.unwrap_or(bits_stored - 1);
    let representation = int(obj, tags::PIXEL_REPRESENTATION)?.unwrap_or(0);
    let samples = int(obj, tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    if !(1..=65535).contains(&rows) || !(1..=65535).contains(&cols) {
        return Err(format!("image size {rows}×{cols} out of range"));
    }
    if samples != 1 {
        return Err(format!("SamplesPerPixel {samples}: CT is single-sample"));
    }
    if ![8, 16, 32].contains(&bits_allocated) {
        return Err(format!("BitsAllocated {bits_allocated} not supported"));
    }
    if !(1..=bits_allocated).contains(&bits_stored)
        || high_bit < bits_stored - 1
        || high_bit >= bits_allocated
    {
        return Err(format!(
            "BitsStored {bits_stored} / HighBit {high_bit} do not fit BitsAllocated {bits_allocated}"
        ));
    }
    if representation != 0 && representation != 1 {
        return Err(format!("PixelRepresentation {representation}"));
    }
    let padding = match int(obj, tags::PIXEL_PADDING_VALUE)? {
        Some(v) => Some((v, int(obj, tags::PIXEL_PADDING_RANGE_LIMIT)?)),
        None => None,
    };
    // Ranges checked above, so the narrowing casts below are exact.
    Ok(PixelFormat {
        rows: rows as u32,
        cols: cols as u32,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        high_bit: high_bit as u16,
        signed: representation == 1,
        padding,
    })
}

fn series_meta(
    obj: &InMemDicomObject,
    series_uid: &str,
    sop_class: &str,
    modality: &str,
) -> SeriesMeta {
    SeriesMeta {
        study_instance_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_instance_uid: series_uid.to_string(),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        sop_class_uid: sop_class.to_string(),
        modality: modality.to_string(),
        kvp: float(obj, tags::KVP).ok().flatten(),
        slice_thickness_mm: float(obj, tags::SLICE_THICKNESS).ok().flatten(),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        series_number: int(obj, tags::SERIES_NUMBER)
            .ok()
            .flatten()
            .and_then(|n| i32::try_from(n).ok()),
        manufacturer: text(obj, tags::MANUFACTURER),
        contrast_agent: text(obj, tags::CONTRAST_BOLUS_AGENT),
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        study_id: text(obj, tags::STUDY_ID),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME),
    }
}

/// Strip DICOM padding (trailing spaces and NULs) and surrounding blanks.
fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// Single text value, trimmed; `None` when absent or empty.
pub(super) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = clean(&obj.get(tag)?.to_str().ok()?);
    (!s.is_empty()).then_some(s)
}

/// All values of a multi-valued text element, trimmed and upper-cased.
pub(super) fn texts(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.split('\\')
                .map(|v| clean(v).to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_default()
}

/// All numeric values of an element: `Ok(None)` when absent or empty, `Err` when present but
/// not finite numbers.
pub(super) fn floats(obj: &InMemDicomObject, tag: Tag) -> Result<Option<Vec<f64>>, String> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    if e.value()
        .primitive()
        .is_some_and(|p| p.to_str().trim().is_empty())
    {
        return Ok(None);
    }
    let name = tag_name(tag);
    match e.to_multi_float64() {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) if v.iter().all(|x| x.is_finite()) => Ok(Some(v)),
        Ok(_) => Err(format!("{name} is not finite")),
        Err(_) => Err(format!("{name} is not numeric")),
    }
}

pub(super) fn float(obj: &InMemDicomObject, tag: Tag) -> Result<Option<f64>, String> {
    match floats(obj, tag)? {
        Some(v) if v.len() == 1 => Ok(Some(v[0])),
        Some(_) => Err(format!("{} has several values", tag_name(tag))),
        None => Ok(None),
    }
}

pub(super) fn int(obj: &InMemDicomObject, tag: Tag) -> Result<Option<i64>, String> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    if e.value()
        .primitive()
        .is_some_and(|p| p.to_str().trim().is_empty())
    {
        return Ok(None);
    }
    match e.to_int::<i64>() {
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(format!("{} is not an integer", tag_name(tag))),
    }
}

fn tag_name(tag: Tag) -> String {
    use dicom_core::dictionary::DataDictionary;
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias.to_string())
        .unwrap_or_else(|| tag.to_string())
}
