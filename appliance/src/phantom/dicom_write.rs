//! DICOM output of a phantom: one CT Image Storage file per slice (random file names), an
//! optional localizer in its own series, and `truth.json`.

use super::{rle, Phantom, PhantomError, TransferSyntaxChoice};
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const IMPLEMENTATION_CLASS_UID: &str = "2.25.299792458000000000000000000000000001";

/// Options of [`write_study_with`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Also write a coronal LOCALIZER image in its own series (the assembler must skip it).
    pub localizer: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { localizer: true }
    }
}

/// Writes the series (and a localizer) into `dir` as `IM_<hex>.dcm`, plus `truth.json`.
/// Returns every written path, the truth file last.
pub fn write_study(p: &Phantom, dir: &Path) -> Result<Vec<PathBuf>, PhantomError> {
    write_study_with(p, dir, &WriteOptions::default())
}

/// Decimal string of at most 16 characters.
fn ds(v: f64) -> String {
    for prec in (0..=6).rev() {
        let s = format!("{v:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        let s = if s == "-0" { "0".to_string() } else { s };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{}", v.round() as i64)
}

fn strs(v: &[&str]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|s| s.to_string()).collect())
}

fn ds_multi(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| ds(*x)).collect())
}

fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    o.put(DataElement::new(tag, vr, v.into()));
}

fn dicom_err(what: &str, e: impl std::fmt::Display) -> PhantomError {
    PhantomError::Dicom {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// The attributes every image of the study shares (patient, study, equipment, acquisition).
fn common(p: &Phantom) -> InMemDicomObject {
    let m = &p.volume.meta;
    let i = &p.info;
    let mut o = InMemDicomObject::new_empty();
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE);
    put(&mut o, tags::STUDY_DATE, VR::DA, opt(&m.study_date));
    put(&mut o, tags::SERIES_DATE, VR::DA, opt(&m.study_date));
    put(&mut o, tags::ACQUISITION_DATE, VR::DA, opt(&m.study_date));
    put(&mut o, tags::CONTENT_DATE, VR::DA, opt(&m.study_date));
    put(&mut o, tags::STUDY_TIME, VR::TM, opt(&m.study_time));
    put(&mut o, tags::SERIES_TIME, VR::TM, opt(&m.study_time));
    put(&mut o, tags::ACQUISITION_TIME, VR::TM, opt(&m.study_time));
    put(&mut o, tags::CONTENT_TIME, VR::TM, opt(&m.study_time));
    put(
        &mut o,
        tags::ACCESSION_NUMBER,
        VR::SH,
        opt(&m.accession_number),
    );
    put(&mut o, tags::MODALITY, VR::CS, "CT");
    put(&mut o, tags::MANUFACTURER, VR::LO, opt(&m.manufacturer));
    put(&mut o, tags::INSTITUTION_NAME, VR::LO, "CACD SYNTHETIC");
    put(
        &mut o,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        opt(&m.referring_physician_name),
    );
    put(&mut o, tags::STATION_NAME, VR::SH, "PHANTOM01");
    put(&mut o, tags::STUDY_DESCRIPTION, VR::LO, "CT CHEST LOW DOSE");
    put(
        &mut o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "cacd-phantom",
    );
    put(&mut o, tags::PATIENT_NAME, VR::PN, opt(&m.patient_name));
    put(&mut o, tags::PATIENT_ID, VR::LO, opt(&m.patient_id));
    put(
        &mut o,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        opt(&m.patient_birth_date),
    );
    put(&mut o, tags::PATIENT_SEX, VR::CS, opt(&m.patient_sex));
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    put(&mut o, tags::KVP, VR::DS, ds(i.kvp));
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    put(&mut o, tags::PATIENT_POSITION, VR::CS, "HFS");
    put(
        &mut o,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        m.study_instance_uid.as_str(),
    );
    put(&mut o, tags::STUDY_ID, VR::SH, opt(&m.study_id));
    put(&mut o, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        m.frame_of_reference_uid.as_str(),
    );
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
    put(&mut o, tags::BITS_STORED, VR::US, i.bits_stored);
    put(&mut o, tags::HIGH_BIT, VR::US, i.bits_stored - 1);
    put(
        &mut o,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        if i.signed { 1u16 } else { 0u16 },
    );
    put(
        &mut o,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        ds(i.rescale_intercept),
    );
    put(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    put(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
    o
}

/// Stored pixel values (as u16 bit patterns) of HU samples.
fn stored(hu: impl Iterator<Item = i16>, signed: bool) -> Vec<u16> {
    if signed {
        hu.map(|v| v as u16).collect()
    } else {
        hu.map(|v| (v as i32 + 1024).clamp(0, 65535) as u16)
            .collect()
    }
}

fn put_pixels(
    o: &mut InMemDicomObject,
    px: &[u16],
    rows: usize,
    cols: usize,
    ts: TransferSyntaxChoice,
) {
    match ts {
        TransferSyntaxChoice::Rle => {
            let frag = rle::encode_frame_u16(px, rows, cols);
            let seq: PixelFragmentSequence<Vec<u8>> =
                PixelFragmentSequence::new(Vec::<u32>::new(), vec![frag]);
            o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
        }
        _ => {
            let mut bytes = Vec::with_capacity(px.len() * 2);
            for v in px {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            put(
                o,
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U8(bytes.into()),
            );
        }
    }
}

fn file_name(sop_uid: &str) -> String {
    let h = Sha256::digest(sop_uid.as_bytes());
    format!("IM_{}.dcm", hex::encode(&h[..8]))
}

fn save(o: InMemDicomObject, ts: TransferSyntaxChoice, path: &Path) -> Result<(), PhantomError> {
    let native = match ts {
        // The JPEG-LS encoder is CharLS behind dicom-pixeldata's transcoder: start native.
        TransferSyntaxChoice::JpegLs => TransferSyntaxChoice::Explicit,
        other => other,
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(native.uid())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("CACD_PHANTOM");
    let mut f = o.with_meta(meta).map_err(|e| dicom_err("file meta", e))?;
    if native != ts {
        let target = TransferSyntaxRegistry.get(ts.uid()).ok_or_else(|| {
            dicom_err("transfer syntax", format!("{} is not registered", ts.uid()))
        })?;
        f.transcode(target).map_err(|e| {
            let what = if cfg!(feature = "jpegls") {
                "JPEG-LS encoding"
            } else {
                "JPEG-LS encoding (this build has no JPEG-LS codec: build with --features jpegls)"
            };
            dicom_err(what, e)
        })?;
    }
    f.write_to_file(path)
        .map_err(|e| dicom_err(&path.display().to_string(), e))
}

/// Writes the series into `dir` (created if needed).
pub fn write_study_with(
    p: &Phantom,
    dir: &Path,
    opts: &WriteOptions,
) -> Result<Vec<PathBuf>, PhantomError> {
    std::fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let base = common(p);
    let m = &p.volume.meta;
    let i = &p.info;
    let g = &p.volume.geometry;
    let (nz, ny, nx) = p.volume.dims();
    let ts = i.transfer_syntax;
    let wc_ww = (40.0, 400.0);

    let mut files: Vec<PathBuf> = (0..nz)
        .into_par_iter()
        .map(|k| -> Result<PathBuf, PhantomError> {
            let mut o = base.clone();
            let uid = &p.volume.sop_instance_uids[k];
            let pos = g.index_to_patient(k as f64, 0.0, 0.0);
            put(
                &mut o,
                tags::IMAGE_TYPE,
                VR::CS,
                strs(&["ORIGINAL", "PRIMARY", "AXIAL"]),
            );
            put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, uid.as_str());
            put(
                &mut o,
                tags::SERIES_DESCRIPTION,
                VR::LO,
                m.series_description.clone().unwrap_or_default(),
            );
            put(
                &mut o,
                tags::SLICE_THICKNESS,
                VR::DS,
                ds(i.slice_thickness_mm),
            );
            put(&mut o, tags::DATA_COLLECTION_DIAMETER, VR::DS, "500");
            put(
                &mut o,
                tags::RECONSTRUCTION_DIAMETER,
                VR::DS,
                ds(i.pixel_spacing_mm[1] * nx as f64),
            );
            put(&mut o, tags::GANTRY_DETECTOR_TILT, VR::DS, "0");
            put(&mut o, tags::TABLE_HEIGHT, VR::DS, "150");
            put(&mut o, tags::ROTATION_DIRECTION, VR::CS, "CW");
            put(&mut o, tags::EXPOSURE_TIME, VR::IS, "500");
            put(
                &mut o,
                tags::X_RAY_TUBE_CURRENT,
                VR::IS,
                format!("{}", (1500.0 / i.noise_sigma_hu).round() as i64),
            );
            put(
                &mut o,
                tags::EXPOSURE,
                VR::IS,
                format!("{}", (750.0 / i.noise_sigma_hu).round() as i64),
            );
            put(
                &mut o,
                tags::CONVOLUTION_KERNEL,
                VR::SH,
                i.convolution_kernel.as_str(),
            );
            put(
                &mut o,
                tags::CTD_IVOL,
                VR::FD,
                PrimitiveValue::F64([(30.0 / i.noise_sigma_hu).min(3.0)].into_iter().collect()),
            );
            put(
                &mut o,
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                m.series_instance_uid.as_str(),
            );
            put(
                &mut o,
                tags::SERIES_NUMBER,
                VR::IS,
                format!("{}", m.series_number.unwrap_or(2)),
            );
            put(&mut o, tags::INSTANCE_NUMBER, VR::IS, format!("{}", nz - k));
            put(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, ds_multi(&pos));
            put(
                &mut o,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                ds_multi(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            );
            put(&mut o, tags::SLICE_LOCATION, VR::DS, ds(pos[2]));
            put(&mut o, tags::ROWS, VR::US, ny as u16);
            put(&mut o, tags::COLUMNS, VR::US, nx as u16);
            put(
                &mut o,
                tags::PIXEL_SPACING,
                VR::DS,
                ds_multi(&i.pixel_spacing_mm),
            );
            put(&mut o, tags::WINDOW_CENTER, VR::DS, ds(wc_ww.0));
            put(&mut o, tags::WINDOW_WIDTH, VR::DS, ds(wc_ww.1));
            let slice = p.volume.hu.index_axis(ndarray::Axis(0), k);
            let px = stored(slice.iter().copied(), i.signed);
            put_pixels(&mut o, &px, ny, nx, ts);
            let path = dir.join(file_name(uid));
            save(o, ts, &path)?;
            Ok(path)
        })
        .collect::<Result<_, _>>()?;

    if opts.localizer && nz > 0 {
        files.push(write_localizer(p, dir, &base)?);
    }

    let mut truth = serde_json::to_value(&p.truth)?;
    if let Some(obj) = truth.as_object_mut() {
        obj.insert(
            "study_instance_uid".into(),
            m.study_instance_uid.clone().into(),
        );
        obj.insert(
            "series_instance_uid".into(),
            m.series_instance_uid.clone().into(),
        );
        obj.insert("phantom".into(), serde_json::to_value(&p.info)?);
    }
    let tp = super::truth_path(dir);
    let text = serde_json::to_string_pretty(&truth)?;
    std::fs::write(&tp, text).map_err(|source| PhantomError::Io {
        path: tp.clone(),
        source,
    })?;
    files.push(tp);
    Ok(files)
}

/// A coronal projection (mean HU front to back) as a LOCALIZER image in series 1.
fn write_localizer(
    p: &Phantom,
    dir: &Path,
    base: &InMemDicomObject,
) -> Result<PathBuf, PhantomError> {
    let i = &p.info;
    let g = &p.volume.geometry;
    let (nz, ny, nx) = p.volume.dims();
    let px = i.pixel_spacing_mm[1];
    let dz = g.spacing[0];
    let z_top = g.origin[2] + (nz as f64 - 1.0) * dz;
    let rows = (((nz as f64) * dz / px).round() as usize).clamp(1, 1024);
    let mut hu = Vec::with_capacity(rows * nx);
    for r in 0..rows {
        let z = z_top - r as f64 * px;
        let k = (((z - g.origin[2]) / dz).round().max(0.0) as usize).min(nz - 1);
        let slice = p.volume.hu.index_axis(ndarray::Axis(0), k);
        for x in 0..nx {
            let s: i64 = (0..ny).map(|y| slice[[y, x]] as i64).sum();
            hu.push((s / ny as i64) as i16);
        }
    }
    let uid = super::uid_for(i.seed, "localizer");
    let mut o = base.clone();
    put(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        strs(&["ORIGINAL", "PRIMARY", "LOCALIZER"]),
    );
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, uid.as_str());
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "Topogram");
    put(&mut o, tags::SLICE_THICKNESS, VR::DS, "");
    put(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        super::uid_for(i.seed, "localizer-series").as_str(),
    );
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "1");
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    let y_mid = g.origin[1] + (ny as f64 - 1.0) * 0.5 * g.spacing[1];
    put(
        &mut o,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        ds_multi(&[g.origin[0], y_mid, z_top]),
    );
    put(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        ds_multi(&[1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
    );
    put(&mut o, tags::ROWS, VR::US, rows as u16);
    put(&mut o, tags::COLUMNS, VR::US, nx as u16);
    put(&mut o, tags::PIXEL_SPACING, VR::DS, ds_multi(&[px, px]));
    put(&mut o, tags::WINDOW_CENTER, VR::DS, "-300");
    put(&mut o, tags::WINDOW_WIDTH, VR::DS, "1200");
    let pxv = stored(hu.into_iter(), i.signed);
    put_pixels(&mut o, &pxv, rows, nx, i.transfer_syntax);
    let path = dir.join(file_name(&uid));
    save(o, i.transfer_syntax, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit() {
        assert_eq!(ds(0.0), "0");
        assert_eq!(ds(-0.0000001), "0");
        assert_eq!(ds(0.7), "0.7");
        assert_eq!(ds(-1024.0), "-1024");
        assert!(ds(-123456.123456789).len() <= 16);
        assert!(ds(1.0 / 3.0).len() <= 16);
    }
}
