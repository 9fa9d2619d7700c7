//! Assemble stage: DICOM files → Volume, series choice, and every refusal with its reason.

mod assemble_support;

use std::path::PathBuf;

use assemble_support::{ds3, set_str, write_object, Series};
use cacd::assemble::{assemble_paths, assemble_with_stats, AssembleError};
use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use ndarray::s;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Deterministic shuffle (no RNG dependency in the order under test).
fn shuffled(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    let n = v.len();
    for i in 0..n {
        let j = (i * 7919 + 13) % n;
        v.swap(i, j);
    }
    v
}

fn refuse(inputs: &[PathBuf]) -> AssembleError {
    match assemble_paths(inputs) {
        Ok(v) => panic!("expected a refusal, got a volume {:?}", v.dims()),
        Err(e) => e,
    }
}

fn assert_reason(e: &AssembleError, parts: &[&str]) {
    let r = e.reason();
    assert!(!r.contains('\n'), "reason must be one line: {r:?}");
    for p in parts {
        assert!(r.contains(p), "reason {r:?} lacks {p:?}");
    }
}

#[test]
fn assembles_shuffled_files_with_exact_hu_geometry_and_meta() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.100");
    s.slices = 24;
    s.spacing = [1.25, 0.7, 0.65];
    let files = s.write_with(dir.path(), |_, o| {
        // SliceThickness is not the spacing: spacing must come from positions.
        set_str(o, tags::SLICE_THICKNESS, VR::DS, "3.0");
    });
    std::fs::write(dir.path().join("truth.json"), b"{\"total\": 0}").unwrap();
    let mut inputs = shuffled(files);
    inputs.push(dir.path().join("truth.json"));

    let a = assemble_with_stats(&inputs).unwrap();
    let v = &a.volume;
    assert_eq!(v.dims(), (24, 32, 32));
    assert_eq!(v.hu, s.hu());
    assert!((v.geometry.spacing[0] - 1.25).abs() < 1e-9);
    assert_eq!(&v.geometry.spacing[1..], &[0.7, 0.65]);
    assert_eq!(v.geometry.origin, s.position(0));
    assert_eq!(v.geometry.normal, [0.0, 0.0, 1.0]);
    let uids: Vec<String> = (0..24).map(|z| s.sop_uid(z)).collect();
    assert_eq!(v.sop_instance_uids, uids);
    assert_eq!(v.source_frames, vec![1; 24]);
    assert_eq!(a.stats.non_dicom, 1);
    assert_eq!(a.stats.instances, 24);

    let m = &v.meta;
    assert_eq!(m.series_instance_uid, "1.2.3.100");
    assert_eq!(m.study_instance_uid, s.study_uid);
    assert_eq!(m.frame_of_reference_uid, s.for_uid);
    assert_eq!(m.sop_class_uid, uids::CT_IMAGE_STORAGE);
    assert_eq!(m.modality, "CT");
    assert_eq!(m.kvp, Some(120.0));
    assert_eq!(m.slice_thickness_mm, Some(3.0));
    assert_eq!(m.series_description.as_deref(), Some("Ca score 2.5mm"));
    assert_eq!(m.series_number, Some(3));
    assert_eq!(m.manufacturer.as_deref(), Some("cacd tests"));
    assert_eq!(m.patient_name.as_deref(), Some("Phantom^Assemble"));
    assert_eq!(m.patient_id.as_deref(), Some("ASM-001"));
    assert_eq!(m.patient_birth_date.as_deref(), Some("19600101"));
    assert_eq!(m.patient_sex.as_deref(), Some("O"));
    assert_eq!(m.study_date.as_deref(), Some("20260101"));
    assert_eq!(m.study_time.as_deref(), Some("120000"));
    assert_eq!(m.study_id.as_deref(), Some("S1"));
    assert_eq!(m.accession_number.as_deref(), Some("ACC1"));
    assert_eq!(m.referring_physician_name.as_deref(), Some("Ref^Doc"));
}

#[test]
fn folder_input_recurses_and_skips_non_dicom_and_repeated_instances() {
    let dir = tmp();
    let s = Series::new("1.2.3.101");
    let files = s.write(&dir.path().join("a/b"));
    // The same instance again under another name: kept once.
    std::fs::copy(&files[3], dir.path().join("copy_of_3.dcm")).unwrap();
    std::fs::write(dir.path().join("DICOMDIR.txt"), b"not dicom").unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let a = assemble_with_stats(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(a.volume.hu, s.hu());
    assert_eq!(a.stats.repeated_instances, 1);
    assert_eq!(a.stats.non_dicom, 2);
    assert_eq!(a.stats.files, 23);
}

#[test]
fn dicomdir_is_skipped_as_non_image() {
    let dir = tmp();
    let s = Series::new("1.2.3.102");
    s.write(dir.path());
    let mut o = InMemDicomObject::new_empty();
    set_str(&mut o, tags::FILE_SET_ID, VR::CS, "CACD");
    let file = o
        .with_meta(
            dicom_object::meta::FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::MEDIA_STORAGE_DIRECTORY_STORAGE)
                .media_storage_sop_instance_uid("1.2.3.102.999"),
        )
        .unwrap();
    file.write_to_file(dir.path().join("DICOMDIR")).unwrap();
    let a = assemble_with_stats(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(a.stats.non_image, 1);
    assert_eq!(a.volume.dims().0, 20);
}

#[test]
fn feet_first_orientation_sorts_along_its_own_normal() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.103");
    // Row direction flipped: normal points to -z; slices must run along it.
    s.iop = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    let files = s.write(dir.path());
    let v = assemble_paths(&shuffled(files)).unwrap();
    assert_eq!(v.geometry.normal, [0.0, 0.0, -1.0]);
    assert_eq!(v.hu, s.hu());
    assert_eq!(v.geometry.origin, s.position(0));
    assert!((v.geometry.spacing[0] - 2.5).abs() < 1e-9);
}

#[test]
fn slightly_oblique_axial_is_accepted() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.104");
    let a = 5f64.to_radians();
    s.iop = [1.0, 0.0, 0.0, 0.0, a.cos(), a.sin()];
    let v = assemble_paths(&s.write(dir.path())).unwrap();
    assert_eq!(v.hu, s.hu());
    assert!((v.geometry.spacing[0] - 2.5).abs() < 1e-4);
}

#[test]
fn signed_pixels_with_slope_and_padding() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.105");
    s.signed = true;
    s.bits_stored = 16;
    s.intercept = 0.0;
    s.padding = Some((-3000i16) as u16);
    let files = s.write_with(dir.path(), |z, o| {
        if z == 0 {
            // Put padding in the corner of the first slice.
            let mut hu = s.hu().slice(s![0..1, .., ..]).to_owned();
            hu[[0, 0, 0]] = -3000;
            hu[[0, 0, 1]] = -3000;
            let px: Vec<u16> = hu.iter().map(|&v| v as u16).collect();
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(px.into()),
            ));
        }
    });
    let v = assemble_paths(&files).unwrap();
    let mut expect = s.hu();
    expect[[0, 0, 0]] = -1024;
    expect[[0, 0, 1]] = -1024;
    assert_eq!(v.hu, expect);

    // Slope 2, intercept -1000 with unsigned 16-bit storage.
    let dir = tmp();
    let mut s = Series::new("1.2.3.106");
    s.slope = 0.5;
    s.intercept = -1024.0;
    s.bits_stored = 16;
    let v = assemble_paths(&s.write(dir.path())).unwrap();
    assert_eq!(v.hu, s.hu());
}

#[test]
#[allow(deprecated)] // Explicit VR Big Endian is retired, but old archives still hold it.
fn uncompressed_transfer_syntaxes_written_by_dicom_object() {
    for (i, ts) in [
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        uids::EXPLICIT_VR_BIG_ENDIAN,
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ]
    .iter()
    .enumerate()
    {
        let dir = tmp();
        let mut s = Series::new(&format!("1.2.3.107.{i}"));
        s.transfer_syntax = ts.to_string();
        let files = s.write(dir.path());
        let v = assemble_paths(&files).unwrap_or_else(|e| panic!("{ts}: {}", e.reason()));
        assert_eq!(v.hu, s.hu(), "transfer syntax {ts}");
    }
}

#[test]
fn enhanced_ct_frames_become_slices_with_frame_numbers() {
    for per_frame in [false, true] {
        let dir = tmp();
        let mut s = Series::new("1.2.3.108");
        s.slices = 18;
        let path = dir.path().join("enhanced.dcm");
        s.write_enhanced(&path, per_frame);
        let v = assemble_paths(std::slice::from_ref(&path)).unwrap();
        assert_eq!(v.hu, s.hu());
        assert_eq!(v.meta.sop_class_uid, uids::ENHANCED_CT_IMAGE_STORAGE);
        assert_eq!(v.meta.slice_thickness_mm, Some(2.5));
        assert_eq!(v.sop_instance_uids, vec!["1.2.3.108.1".to_string(); 18]);
        // Frames were written in reverse slice order.
        let frames: Vec<u32> = (1..=18).rev().collect();
        assert_eq!(v.source_frames, frames);
        assert_eq!(v.geometry.origin, s.position(0));
    }
}

#[test]
fn thinnest_original_axial_series_is_chosen_and_decoys_ignored() {
    let dir = tmp();
    let mut thick = Series::new("1.2.3.110");
    thick.spacing[0] = 3.0;
    thick.write(&dir.path().join("thick"));
    let mut thin = Series::new("1.2.3.111");
    thin.spacing[0] = 1.0;
    thin.slices = 30;
    thin.seed = 2;
    thin.write(&dir.path().join("thin"));
    // Thinner still, but DERIVED, a LOCALIZER, and a non-CT.
    let mut derived = Series::new("1.2.3.112");
    derived.spacing[0] = 0.5;
    derived.image_type = "DERIVED\\SECONDARY\\MPR".into();
    derived.write(&dir.path().join("derived"));
    let mut scout = Series::new("1.2.3.113");
    scout.image_type = "ORIGINAL\\PRIMARY\\LOCALIZER".into();
    scout.spacing[0] = 0.5;
    scout.write(&dir.path().join("scout"));
    let mut pet = Series::new("1.2.3.114");
    pet.modality = "PT".into();
    pet.spacing[0] = 0.5;
    pet.write(&dir.path().join("pet"));
    let v = assemble_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(v.meta.series_instance_uid, "1.2.3.111");
    assert_eq!(v.hu, thin.hu());
}

#[test]
fn localizer_image_filed_inside_the_axial_series_is_ignored() {
    let dir = tmp();
    let s = Series::new("1.2.3.115");
    s.write(dir.path());
    let mut scout = s.clone();
    scout.image_type = "ORIGINAL\\PRIMARY\\LOCALIZER".into();
    scout.iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
    scout.slices = 1;
    scout.write_with(&dir.path().join("scout"), |_, o| {
        set_str(o, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.115.999");
    });
    let v = assemble_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(v.hu, s.hu());
    assert!(!v.sop_instance_uids.contains(&"1.2.3.115.999".to_string()));
}

#[test]
fn equal_spacing_prefers_more_slices() {
    let dir = tmp();
    let mut short = Series::new("1.2.3.120");
    short.slices = 20;
    short.write(&dir.path().join("a"));
    let mut long = Series::new("1.2.3.121");
    long.slices = 40;
    long.write(&dir.path().join("b"));
    let v = assemble_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(v.meta.series_instance_uid, "1.2.3.121");
}

#[test]
fn a_broken_thin_series_falls_back_to_a_good_thicker_one() {
    let dir = tmp();
    let mut thin = Series::new("1.2.3.130");
    thin.spacing[0] = 1.0;
    let files = thin.write(&dir.path().join("thin"));
    std::fs::remove_file(&files[7]).unwrap();
    let good = Series::new("1.2.3.131");
    good.write(&dir.path().join("good"));
    let v = assemble_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(v.meta.series_instance_uid, "1.2.3.131");
}

#[test]
fn same_position_same_pixels_is_kept_once() {
    let dir = tmp();
    let s = Series::new("1.2.3.140");
    s.write(dir.path());
    // A second instance (new SOP UID) at slice 5's position with the same pixels.
    let hu = s.hu().slice(s![5..6, .., ..]).to_owned();
    let mut o = s.slice_object(5, s.position(5), &hu);
    set_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.140.999");
    write_object(
        o,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        &dir.path().join("dup.dcm"),
    );
    let v = assemble_paths(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(v.hu, s.hu());
}

// ---- refusals: one test per variant, checking the reason text ----

#[test]
fn refuses_missing_input_and_no_dicom() {
    let e = refuse(&[PathBuf::from("/nonexistent/cacd/input")]);
    assert!(matches!(e, AssembleError::Input { .. }));
    assert_reason(&e, &["/nonexistent/cacd/input"]);

    let dir = tmp();
    std::fs::write(dir.path().join("truth.json"), b"{}").unwrap();
    let e = refuse(&[dir.path().to_path_buf()]);
    assert!(matches!(e, AssembleError::NoDicom { non_dicom: 1, .. }));
    assert_reason(&e, &["no DICOM image files", "1 not DICOM"]);
}

#[test]
fn refuses_non_ct() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.200");
    s.modality = "MR".into();
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::NotCt { .. }));
    assert_reason(&e, &["no CT series", "1.2.3.200", "MR"]);
}

#[test]
fn refuses_other_storage_class() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.201");
    s.sop_class = uids::SECONDARY_CAPTURE_IMAGE_STORAGE.into();
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::UnsupportedSopClass { .. }));
    assert_reason(
        &e,
        &["CT Image Storage", uids::SECONDARY_CAPTURE_IMAGE_STORAGE],
    );
}

#[test]
fn refuses_derived_and_localizer() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.202");
    s.image_type = "DERIVED\\SECONDARY".into();
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::NotOriginal { .. }));
    assert_reason(&e, &["no ORIGINAL CT series", "DERIVED\\SECONDARY"]);

    let dir = tmp();
    let mut s = Series::new("1.2.3.203");
    s.image_type = "ORIGINAL\\PRIMARY\\LOCALIZER".into();
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::Localizer { .. }));
    assert_reason(&e, &["LOCALIZER", "1.2.3.203"]);
}

#[test]
fn refuses_non_axial() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.204");
    s.iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::NotAxial { .. }));
    assert_reason(&e, &["no axial CT series", "90.0°"]);
}

#[test]
fn refuses_thick_slices_naming_the_best_candidate() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.205");
    s.spacing[0] = 6.0;
    s.write(&dir.path().join("a"));
    let mut scout = Series::new("1.2.3.206");
    scout.image_type = "ORIGINAL\\PRIMARY\\LOCALIZER".into();
    scout.write(&dir.path().join("b"));
    let e = refuse(&[dir.path().to_path_buf()]);
    assert!(matches!(e, AssembleError::SpacingTooLarge { .. }));
    assert_reason(
        &e,
        &["no axial ORIGINAL CT series with slice spacing ≤ 5 mm: series 1.2.3.205 has 6.0 mm"],
    );
}

#[test]
fn refuses_too_few_slices() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.207");
    s.slices = 10;
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::TooFewSlices { count: 10, .. }));
    assert_reason(&e, &["10 slices", "at least 16"]);
}

#[test]
fn refuses_gantry_tilt_and_sheared_stacks() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.208");
    s.tilt = Some(12.0);
    let e = refuse(&s.write(dir.path()));
    assert!(matches!(e, AssembleError::GantryTilt { .. }));
    assert_reason(&e, &["gantry tilt 12.0°"]);

    // No tilt tag, but positions drift in y along z, as a tilted acquisition does.
    let dir = tmp();
    let s = Series::new("1.2.3.209");
    let t = 10f64.to_radians().tan();
    let files = s.write_with(dir.path(), |z, o| {
        let mut p = s.position(z);
        p[1] += t * z as f64 * s.spacing[0];
        set_str(o, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds3(&p));
    });
    let e = refuse(&files);
    assert!(matches!(e, AssembleError::ShearedStack { .. }));
    assert_reason(&e, &["sheared stack", "10.0°"]);
}

#[test]
fn refuses_missing_slices_and_irregular_spacing() {
    let dir = tmp();
    let s = Series::new("1.2.3.210");
    let mut files = s.write(dir.path());
    files.remove(9);
    let e = refuse(&files);
    assert!(matches!(e, AssembleError::IrregularSpacing { .. }));
    assert_reason(
        &e,
        &["missing slices", "gap of 5.00 mm", "median spacing 2.50 mm"],
    );
}

#[test]
fn refuses_two_different_images_at_one_position() {
    let dir = tmp();
    let s = Series::new("1.2.3.211");
    s.write(dir.path());
    let mut hu = s.hu().slice(s![5..6, .., ..]).to_owned();
    hu[[0, 3, 3]] += 100;
    let mut o = s.slice_object(5, s.position(5), &hu);
    set_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.211.999");
    write_object(
        o,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        &dir.path().join("dup.dcm"),
    );
    let e = refuse(&[dir.path().to_path_buf()]);
    assert!(matches!(e, AssembleError::DuplicatePosition { .. }));
    assert_reason(
        &e,
        &[
            "two different images at the same position",
            "1.2.3.211.999",
            "1.2.3.211.6",
        ],
    );
}

#[test]
fn refuses_inconsistent_geometry() {
    let dir = tmp();
    let s = Series::new("1.2.3.212");
    let files = s.write_with(dir.path(), |z, o| {
        if z == 4 {
            set_str(o, tags::PIXEL_SPACING, VR::DS, "0.8\\0.8");
        }
    });
    let e = refuse(&files);
    assert!(matches!(e, AssembleError::InconsistentGeometry { .. }));
    assert_reason(&e, &["inconsistent geometry", "PixelSpacing"]);

    let dir = tmp();
    let files = s.write_with(dir.path(), |z, o| {
        if z == 4 {
            o.put(DataElement::new(
                tags::ROWS,
                VR::US,
                PrimitiveValue::from(16u16),
            ));
        }
    });
    let e = refuse(&files);
    assert_reason(&e, &["inconsistent geometry", "32×32", "16×32"]);

    let dir = tmp();
    let files = s.write_with(dir.path(), |z, o| {
        if z == 4 {
            set_str(o, tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.3.999");
        }
    });
    assert_reason(&refuse(&files), &["FrameOfReferenceUID"]);

    let dir = tmp();
    let files = s.write_with(dir.path(), |z, o| {
        if z == 4 {
            set_str(
                o,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                "1\\0\\0\\0\\0.99\\0.1411",
            );
        }
    });
    assert_reason(&refuse(&files), &["ImageOrientationPatient differs"]);
}

#[test]
fn refuses_bad_headers() {
    let dir = tmp();
    let s = Series::new("1.2.3.213");
    let files = s.write_with(dir.path(), |z, o| {
        if z == 2 {
            o.remove_element(tags::IMAGE_POSITION_PATIENT);
        }
        if z == 3 {
            set_str(o, tags::RESCALE_SLOPE, VR::DS, "NaN");
        }
    });
    let e = refuse(&files[..3]);
    let all = refuse(&files);
    assert!(matches!(all, AssembleError::BadHeader { .. }));
    assert_reason(&all, &["invalid header", "ImagePositionPatient missing"]);
    // With only three files it is still the header that is wrong (not just too few slices).
    assert_reason(&e, &["ImagePositionPatient missing"]);
    let mut rest = files.clone();
    rest.remove(2);
    assert_reason(
        &refuse(&rest),
        &["RescaleSlope is not finite", "1.2.3.213.4"],
    );
}

#[test]
fn refuses_oversized_series_without_allocating() {
    let dir = tmp();
    let s = Series::new("1.2.3.214");
    let files = s.write_with(dir.path(), |_, o| {
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(65535u16),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(65535u16),
        ));
    });
    let e = refuse(&files);
    assert!(matches!(e, AssembleError::TooLarge { .. }));
    assert_reason(&e, &["too large"]);
}

#[test]
fn refuses_undecodable_pixel_data() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.215");
    s.transfer_syntax = uids::RLE_LOSSLESS.into();
    let files = s.write_with(dir.path(), |_, o| {
        // An RLE header promising 9 segments, then garbage.
        let mut frag = vec![0u8; 64];
        frag[0] = 9;
        frag.extend([0xAB; 100]);
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![frag])),
        ));
    });
    let e = refuse(&files);
    assert!(
        matches!(e, AssembleError::Undecodable { .. }),
        "{}",
        e.reason()
    );
    assert_reason(&e, &["cannot be decoded", "1.2.3.215."]);
}

#[test]
fn refuses_truncated_pixel_data() {
    // File cut in the middle of Pixel Data.
    let dir = tmp();
    let s = Series::new("1.2.3.216");
    let files = s.write(dir.path());
    let len = std::fs::metadata(&files[6]).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[6])
        .unwrap();
    f.set_len(len - 700).unwrap();
    let e = refuse(&files);
    assert!(
        matches!(e, AssembleError::TruncatedPixelData { .. }),
        "{}",
        e.reason()
    );
    assert_reason(&e, &["truncated", "1.2.3.216.7"]);

    // Well-formed element, but shorter than Rows × Columns.
    let dir = tmp();
    let files = s.write_with(dir.path(), |z, o| {
        if z == 2 {
            o.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(vec![0u16; 100].into()),
            ));
        }
    });
    let e = refuse(&files);
    assert!(
        matches!(e, AssembleError::TruncatedPixelData { .. }),
        "{}",
        e.reason()
    );
    assert_reason(&e, &["200 bytes of pixel data, 2048 needed"]);
}

#[test]
fn every_reason_is_one_line_even_with_hostile_header_text() {
    let dir = tmp();
    let mut s = Series::new("1.2.3.217");
    s.modality = "MR".into();
    let files = s.write_with(dir.path(), |_, o| {
        set_str(o, tags::MODALITY, VR::CS, "MR\nX");
    });
    let e = refuse(&files);
    assert!(!e.reason().contains('\n'));
}

/// Times assembly of a 512×512×N series (default 300, `CACD_ASM_SLICES`) and reports peak RSS.
/// Run by hand: `cargo test --release -p cacd --test assemble -- --ignored --nocapture`.
/// With `CACD_ASM_DIR` the series is written there once and reused, so a second run measures
/// assembly alone (RSS included).
#[test]
#[ignore = "performance check on a large series; run by hand in release"]
fn large_series_speed_and_memory() {
    let tmp_dir = tmp();
    let dir = std::env::var("CACD_ASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp_dir.path().to_path_buf());
    let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        let mut s = Series::new("1.2.3.300");
        s.rows = 512;
        s.cols = 512;
        s.slices = std::env::var("CACD_ASM_SLICES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        s.spacing = [1.0, 0.7, 0.7];
        s.write(&dir);
        println!(
            "wrote {} slices to {}; rerun to measure assembly alone",
            s.slices,
            dir.display()
        );
    }
    let t = std::time::Instant::now();
    let v = assemble_paths(&[dir]).unwrap();
    let elapsed = t.elapsed();
    println!(
        "assembled {:?} in {:.3} s, peak RSS {} kB",
        v.dims(),
        elapsed.as_secs_f64(),
        peak_rss_kb()
    );
    assert_eq!((v.dims().1, v.dims().2), (512, 512));
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

// ---- property tests: corrupt headers and pixel data never panic ----

mod corrupt {
    use super::*;
    use dicom_core::Tag;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub enum Corruption {
        /// Set a text/numeric-string element on one slice (or on all with `None`).
        Text(Option<usize>, Tag, VR, String),
        /// Set a US element.
        Short(Option<usize>, Tag, u16),
        Remove(Option<usize>, Tag),
        /// Keep only this fraction of one file's bytes.
        Truncate(usize, f64),
    }

    fn text_tag() -> impl Strategy<Value = (Tag, VR)> {
        prop::sample::select(vec![
            (tags::IMAGE_POSITION_PATIENT, VR::DS),
            (tags::IMAGE_ORIENTATION_PATIENT, VR::DS),
            (tags::PIXEL_SPACING, VR::DS),
            (tags::RESCALE_SLOPE, VR::DS),
            (tags::RESCALE_INTERCEPT, VR::DS),
            (tags::GANTRY_DETECTOR_TILT, VR::DS),
            (tags::SLICE_THICKNESS, VR::DS),
            (tags::KVP, VR::DS),
            (tags::NUMBER_OF_FRAMES, VR::IS),
            (tags::SERIES_NUMBER, VR::IS),
            (tags::IMAGE_TYPE, VR::CS),
            (tags::MODALITY, VR::CS),
            (tags::SOP_INSTANCE_UID, VR::UI),
            (tags::SERIES_INSTANCE_UID, VR::UI),
            (tags::FRAME_OF_REFERENCE_UID, VR::UI),
        ])
    }

    fn short_tag() -> impl Strategy<Value = Tag> {
        prop::sample::select(vec![
            tags::ROWS,
            tags::COLUMNS,
            tags::BITS_ALLOCATED,
            tags::BITS_STORED,
            tags::HIGH_BIT,
            tags::PIXEL_REPRESENTATION,
            tags::SAMPLES_PER_PIXEL,
            tags::PIXEL_PADDING_VALUE,
        ])
    }

    fn any_tag() -> impl Strategy<Value = Tag> {
        prop_oneof![
            text_tag().prop_map(|(t, _)| t),
            short_tag(),
            Just(tags::PIXEL_DATA)
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            any::<f64>().prop_map(|v| format!("{v}")),
            (-1000.0f64..1000.0).prop_map(|v| format!("{v:.3}")),
            prop::sample::select(vec![
                "NaN",
                "inf",
                "-inf",
                "",
                " ",
                "1e308",
                "-0",
                "abc",
                "0",
                "1.2.3",
                "ORIGINAL",
                "LOCALIZER",
                "CT",
                "1.2.3.217.1",
            ])
            .prop_map(str::to_string),
        ];
        prop::collection::vec(num, 1..8).prop_map(|v| v.join("\\"))
    }

    fn slice() -> impl Strategy<Value = Option<usize>> {
        prop_oneof![3 => (0usize..16).prop_map(Some), 1 => Just(None)]
    }

    pub fn corruption() -> impl Strategy<Value = Corruption> {
        prop_oneof![
            (slice(), text_tag(), value())
                .prop_map(|(s, (t, vr), v)| Corruption::Text(s, t, vr, v)),
            (slice(), short_tag(), any::<u16>()).prop_map(|(s, t, v)| Corruption::Short(s, t, v)),
            (slice(), short_tag(), 0u16..40).prop_map(|(s, t, v)| Corruption::Short(s, t, v)),
            (slice(), any_tag()).prop_map(|(s, t)| Corruption::Remove(s, t)),
            (0usize..16, 0.0f64..1.0).prop_map(|(s, f)| Corruption::Truncate(s, f)),
        ]
    }

    fn applies(target: Option<usize>, z: usize) -> bool {
        target.is_none_or(|t| t == z)
    }

    pub fn build(dir: &std::path::Path, cs: &[Corruption]) -> Vec<PathBuf> {
        let mut s = Series::new("1.2.3.217");
        s.slices = 16;
        let files = s.write_with(dir, |z, o| {
            for c in cs {
                match c {
                    Corruption::Text(t, tag, vr, v) if applies(*t, z) => set_str(o, *tag, *vr, v),
                    Corruption::Short(t, tag, v) if applies(*t, z) => {
                        o.put(DataElement::new(*tag, VR::US, PrimitiveValue::from(*v)));
                    }
                    Corruption::Remove(t, tag) if applies(*t, z) => {
                        o.remove_element(*tag);
                    }
                    _ => {}
                }
            }
        });
        for c in cs {
            if let Corruption::Truncate(z, f) = c {
                let len = std::fs::metadata(&files[*z]).unwrap().len();
                let f2 = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&files[*z])
                    .unwrap();
                f2.set_len((len as f64 * f) as u64).unwrap();
            }
        }
        files
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 160, ..Default::default() })]

    #[test]
    fn corrupt_series_never_panic(cs in proptest::collection::vec(corrupt::corruption(), 1..4)) {
        let dir = tmp();
        let files = corrupt::build(dir.path(), &cs);
        match assemble_paths(&files) {
            Ok(v) => {
                let (nz, ny, nx) = v.dims();
                proptest::prop_assert!(nz >= 16 && ny > 0 && nx > 0);
                proptest::prop_assert_eq!(v.sop_instance_uids.len(), nz);
                proptest::prop_assert_eq!(v.source_frames.len(), nz);
                proptest::prop_assert!(v.geometry.spacing.iter().all(|s| s.is_finite() && *s > 0.0));
            }
            Err(e) => proptest::prop_assert!(!e.reason().is_empty() && !e.reason().contains('\n')),
        }
    }
}

// ---- phantom studies from cacd::phantom ----

mod phantom_studies {
    use super::*;
    use cacd::phantom::{self, Burden, PhantomSpec, TransferSyntaxChoice};

    /// Generate, write (with its LOCALIZER decoy and truth.json), shuffle the files, assemble,
    /// and compare everything with the phantom's own volume.
    fn round_trip(seed: u64, ts: TransferSyntaxChoice, signed: bool, thickness: f64) {
        let mut spec = PhantomSpec::new(seed, Burden::Low);
        spec.slices = Some(40);
        spec.transfer_syntax = Some(ts);
        spec.signed = Some(signed);
        spec.thickness_mm = Some(thickness);
        let p = phantom::generate(&spec);
        let dir = tmp();
        let files = phantom::write_study(&p, dir.path()).unwrap();
        let a = assemble_with_stats(&shuffled(files))
            .unwrap_or_else(|e| panic!("{ts:?}: {}", e.reason()));
        let v = &a.volume;
        assert_eq!(v.hu, p.volume.hu, "{ts:?} signed={signed}: HU differ");
        assert_eq!(v.sop_instance_uids, p.volume.sop_instance_uids);
        assert_eq!(v.source_frames, p.volume.source_frames);
        let (g, e) = (&v.geometry, &p.volume.geometry);
        for i in 0..3 {
            assert!(
                (g.spacing[i] - e.spacing[i]).abs() < 1e-4,
                "spacing {:?} vs {:?}",
                g.spacing,
                e.spacing
            );
            assert!(
                (g.origin[i] - e.origin[i]).abs() < 1e-3,
                "origin {:?} vs {:?}",
                g.origin,
                e.origin
            );
            assert!((g.normal[i] - e.normal[i]).abs() < 1e-9);
        }
        assert_eq!(
            v.meta.series_instance_uid,
            p.volume.meta.series_instance_uid
        );
        assert_eq!(v.meta.study_instance_uid, p.volume.meta.study_instance_uid);
        assert_eq!(v.meta.patient_id, p.volume.meta.patient_id);
        assert_eq!(a.stats.non_dicom, 1, "truth.json counted as non-DICOM");
    }

    #[test]
    fn phantom_explicit_unsigned() {
        round_trip(11, TransferSyntaxChoice::Explicit, false, 2.5);
    }

    #[test]
    fn phantom_implicit_signed() {
        round_trip(12, TransferSyntaxChoice::Implicit, true, 1.25);
    }

    #[test]
    fn phantom_deflate() {
        round_trip(13, TransferSyntaxChoice::Deflate, false, 3.0);
    }

    #[test]
    fn phantom_rle_signed() {
        round_trip(14, TransferSyntaxChoice::Rle, true, 1.0);
    }
}
