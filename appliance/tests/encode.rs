//! Result encoders: SEG, TID 1500 SR and the summary Secondary Capture.
//!
//! * dciodvfy (dicom3tools) validates all three objects, with and without calcium: any
//!   "Error" line fails, and so does any warning not in [`ALLOWED_WARNINGS`] (each with its
//!   reason).
//! * highdicom/pydicom (appliance/tests/encode_highdicom.py) read the SEG back, map every
//!   frame to its source slice and compare the mask with cacd's lesion mask voxel for voxel,
//!   and read the SR's Agatston values.
//! * The SEG's bits are also unpacked here, independently of Python.
//! * UIDs are deterministic and keyed on the result version.
//! * The summary image is written as a PNG for a person to look at.
//! * DCMTK renders them: `dsrdump` prints the SR with cacd's Agatston values, `dcmj2pnm`
//!   decodes the summary to exactly cacd's image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cacd::encode::{self, EncodeInput, EncodeOptions, Encoded};
use cacd::phantom::{self, Burden, PhantomSpec};
use cacd::result::ModelInfo;
use cacd::score::{self, Scores, Vessel};
use cacd::volume::{Geometry, SeriesMeta, Volume};
use dicom_core::value::Value;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use ndarray::Array3;

const ENHANCED_CT: &str = "1.2.840.10008.5.1.4.1.1.2.1";

/// dciodvfy warnings that remain, each with the reason it is acceptable.
const ALLOWED_WARNINGS: &[(&str, &str)] = &[(
    "Unrecognized defined term <99CACD> for value 1 of attribute <Coding Scheme Designator>",
    "99CACD is cacd's private coding scheme (PS3.16 §8: designators starting with 99 are \
     local) for concepts with no standard code: risk category, CAC-DRS, lesion count, notes. \
     It is declared in the SR's CodingSchemeIdentificationSequence; dciodvfy only knows the \
     standard designators. Only the SR uses it: the SEG and the summary have no warning at all.",
)];

fn model() -> ModelInfo {
    ModelInfo {
        name: "cacd-calcium-unet".into(),
        version: "0.3.1".into(),
        sha256: "5f1e0c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f".into(),
        precision: "int8".into(),
        engine: "tract-cpu".into(),
        preprocessing: None,
    }
}

struct Case {
    volume: Volume,
    /// cacd's lesion mask: vessel label of every lesion pixel, else 0.
    labels: Array3<u8>,
    scores: Scores,
}

/// A calcium blob: vessel, slice, centre y, centre x, half-size (y, x), peak HU.
type Blob = (Vessel, usize, usize, usize, (usize, usize), i16);

/// A synthetic chest-like series, 512×512, `slices` slices at 2.5 mm: a soft-tissue body,
/// bone and an unmasked bright aorta wall (never in the SEG), and calcium blobs in all four
/// vessels on chosen slices when `calcium`.
fn synthetic(slices: usize, calcium: bool, enhanced: bool) -> Case {
    let (rows, cols) = (512usize, 512usize);
    let spacing = [2.5, 0.683594, 0.683594];
    let mut hu = Array3::<i16>::from_elem((slices, rows, cols), -1000);
    let mut mask = Array3::<u8>::zeros((slices, rows, cols));
    for z in 0..slices {
        for y in 0..rows {
            for x in 0..cols {
                let (dy, dx) = ((y as f64 - 260.0) / 180.0, (x as f64 - 256.0) / 230.0);
                if dx * dx + dy * dy <= 1.0 {
                    // Mildly textured soft tissue, deterministic.
                    hu[[z, y, x]] = 30 + ((x * 7 + y * 13 + z * 5) % 31) as i16;
                }
            }
        }
        // Spine (bone, unmasked).
        for y in 380..430 {
            for x in 236..276 {
                hu[[z, y, x]] = 700;
            }
        }
    }
    if calcium {
        // (vessel, slice, y, x, half-size, HU): asymmetric shapes so a transposition shows.
        let blobs: &[Blob] = &[
            (Vessel::LM, 5, 230, 270, (2, 4), 450),
            (Vessel::LAD, 6, 210, 300, (3, 6), 380),
            (Vessel::LAD, 7, 214, 304, (4, 2), 520),
            (Vessel::LAD, 7, 190, 330, (1, 1), 260),
            (Vessel::LCX, 8, 250, 330, (2, 5), 220),
            (Vessel::RCA, 10, 240, 190, (5, 3), 610),
            (Vessel::RCA, slices - 1, 245, 185, (2, 2), 300),
        ];
        for &(v, z, cy, cx, (hy, hx), peak) in blobs {
            for y in cy - hy..=cy + hy {
                for x in cx - hx..=cx + hx {
                    hu[[z, y, x]] = peak - ((y + x) % 3) as i16 * 20;
                    mask[[z, y, x]] = v.label();
                }
            }
            // A generous network mask around the blob: soft tissue there is below 130 HU.
            for y in cy - hy - 2..=cy + hy + 2 {
                for x in cx - hx - 2..=cx + hx + 2 {
                    if mask[[z, y, x]] == 0 {
                        mask[[z, y, x]] = v.label();
                    }
                }
            }
        }
    }
    let scores = score::score(hu.view(), mask.view(), spacing);
    let mut labels = Array3::<u8>::zeros((slices, rows, cols));
    for l in &scores.lesions {
        for &(y, x) in &l.pixels {
            labels[[l.slice, y as usize, x as usize]] = l.vessel.label();
        }
    }
    let series = format!(
        "1.2.826.0.1.3680043.10.1.{}.{}",
        u8::from(calcium),
        u8::from(enhanced)
    );
    let (sop_class_uid, sop_instance_uids, source_frames) = if enhanced {
        (
            ENHANCED_CT.to_string(),
            vec![format!("{series}.100"); slices],
            (1..=slices as u32).collect(),
        )
    } else {
        (
            uids::CT_IMAGE_STORAGE.to_string(),
            (0..slices)
                .map(|z| format!("{series}.{}", 100 + z))
                .collect(),
            vec![1; slices],
        )
    };
    let volume = Volume {
        hu,
        geometry: Geometry::axial(spacing, [-175.0, -180.5, -312.25]),
        meta: SeriesMeta {
            study_instance_uid: "1.2.826.0.1.3680043.10.1.7".into(),
            series_instance_uid: series.clone(),
            frame_of_reference_uid: "1.2.826.0.1.3680043.10.1.8".into(),
            sop_class_uid,
            modality: "CT".into(),
            kvp: Some(120.0),
            slice_thickness_mm: Some(2.5),
            series_description: Some("Low dose chest 2.5 mm".into()),
            series_number: Some(3),
            manufacturer: Some("Phantom Inc".into()),
            contrast_agent: None,
            patient_name: Some("Müller^Anna".into()),
            patient_id: Some("PID-0042".into()),
            patient_birth_date: Some("19580312".into()),
            patient_sex: Some("F".into()),
            study_date: Some("20260114".into()),
            study_time: Some("101500".into()),
            study_id: Some("S1".into()),
            accession_number: Some("ACC123".into()),
            referring_physician_name: None,
        },
        sop_instance_uids,
        source_frames,
    };
    Case {
        volume,
        labels,
        scores,
    }
}

/// A real-size phantom study (512×512, 20 slices); its truth lesions are the scores.
fn phantom_case(seed: u64, burden: Burden) -> Case {
    let mut spec = PhantomSpec::new(seed, burden);
    spec.slices = Some(20);
    let p = phantom::generate(&spec);
    let mut labels = Array3::<u8>::zeros(p.volume.hu.dim());
    for l in &p.truth.lesions {
        for &(y, x) in &l.pixels {
            labels[[l.slice, y as usize, x as usize]] = l.vessel.label();
        }
    }
    Case {
        volume: p.volume,
        labels,
        scores: p.truth,
    }
}

fn encode_case(case: &Case, version: u32, warnings: &[String]) -> Encoded {
    let model = model();
    let options = EncodeOptions::default();
    let input = EncodeInput {
        volume: &case.volume,
        scores: &case.scores,
        model: &model,
        result_version: version,
        warnings,
        options: &options,
        refusal: None,
    };
    match encode::encode_all(&input) {
        Ok(e) => e,
        Err(e) => panic!("encode failed: {e}"),
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("encode")
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_all(enc: &Encoded, dir: &Path) -> Vec<PathBuf> {
    let _ = std::fs::remove_file(dir.join("seg.dcm"));
    let mut files = Vec::new();
    if let Some(seg) = &enc.seg {
        files.push(dir.join("seg.dcm"));
        encode::write_dicom(seg, &files[0]).unwrap();
    }
    for (name, obj) in [("sr.dcm", &enc.sr), ("summary.dcm", &enc.summary)] {
        let p = dir.join(name);
        encode::write_dicom(obj, &p).unwrap();
        files.push(p);
    }
    files
}

fn str_of(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    match obj.element(tag).unwrap().value() {
        Value::Sequence(s) => s.items(),
        _ => panic!("{tag} is not a sequence"),
    }
}

// ---------------------------------------------------------------------------------------

/// Phantoms with and without calcium, and synthetic single- and multi-frame sources.
fn test_cases() -> Vec<(&'static str, Case)> {
    let moderate = phantom_case(7, Burden::Moderate);
    assert!(!moderate.scores.lesions.is_empty());
    let none = phantom_case(8, Burden::None);
    assert!(none.scores.lesions.is_empty());
    vec![
        ("phantom-moderate", moderate),
        ("phantom-none", none),
        ("synthetic-calcium", synthetic(14, true, false)),
        ("synthetic-enhanced", synthetic(14, true, true)),
    ]
}

/// Runs dciodvfy on a file: the Error lines and the warnings not allowed (the allow-list
/// applies to the SR only: the SEG and the summary must come out with no warning).
fn dciodvfy(path: &Path) -> Option<(Vec<String>, Vec<String>)> {
    let is_sr = path.file_name().is_some_and(|n| n == "sr.dcm");
    let bin = Path::new("/usr/bin/dciodvfy");
    if !bin.exists() {
        return None;
    }
    let out = Command::new(bin).arg(path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Error"))
        .map(String::from)
        .collect();
    let warnings: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Warning"))
        .filter(|l| !is_sr || !ALLOWED_WARNINGS.iter().any(|(pat, _)| l.contains(pat)))
        .map(String::from)
        .collect();
    println!("--- dciodvfy {}\n{text}", path.display());
    Some((errors, warnings))
}

#[test]
fn dciodvfy_accepts_all_objects_with_and_without_calcium() {
    let warnings = vec!["Tube voltage 100 kVp: Agatston weights assume 120 kVp".to_string()];
    let mut problems = Vec::new();
    for (name, case) in test_cases() {
        let enc = encode_case(&case, 1, &warnings);
        assert_eq!(enc.seg.is_some(), !case.scores.lesions.is_empty());
        for f in write_all(&enc, &out_dir(&format!("dciodvfy-{name}"))) {
            let Some((errors, warns)) = dciodvfy(&f) else {
                println!("SKIP: /usr/bin/dciodvfy not installed (scripts/install-test-deps installs dicom3tools)");
                return;
            };
            for l in errors.iter().chain(&warns) {
                problems.push(format!("{}: {l}", f.display()));
            }
        }
    }
    assert!(problems.is_empty(), "dciodvfy:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------

/// Writes the case for the Python checker and runs it; false when python3/highdicom is missing.
fn run_highdicom_check(case: &Case, enc: &Encoded, warnings: &[String], dir: &Path) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import highdicom, pydicom, numpy"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            println!("SKIP: python3 with highdicom/pydicom/numpy not available (scripts/install-test-deps installs them)");
            return false;
        }
    }
    write_all(enc, dir);
    ndarray_npy::write_npy(dir.join("expected_labels.npy"), &case.labels).unwrap();
    let v = &case.volume;
    let positions: Vec<[f64; 3]> = (0..v.dims().0)
        .map(|z| v.geometry.index_to_patient(z as f64, 0.0, 0.0))
        .collect();
    let s = &case.scores;
    let expected = serde_json::json!({
        "study_instance_uid": v.meta.study_instance_uid,
        "frame_of_reference_uid": v.meta.frame_of_reference_uid,
        "sop_class_uid": v.meta.sop_class_uid,
        "sop_instance_uids": v.sop_instance_uids,
        "source_frames": v.source_frames,
        "multiframe": v.meta.sop_class_uid == ENHANCED_CT,
        "positions": positions,
        "agatston_total": s.agatston_total,
        "volume_mm3": s.volume_mm3,
        "per_vessel": s.per_vessel,
        "warnings": warnings,
    });
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/encode_highdicom.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "highdicom check failed for {}:\n{text}",
        dir.display()
    );
    true
}

#[test]
fn highdicom_reads_seg_mask_and_sr_values() {
    let warnings = vec!["Slice thickness above 3 mm is outside the validated range".to_string()];
    for (name, case) in test_cases() {
        let enc = encode_case(&case, 1, &warnings);
        if !run_highdicom_check(
            &case,
            &enc,
            &warnings,
            &out_dir(&format!("highdicom-{name}")),
        ) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------

/// Unpacks the SEG in Rust: every frame → (source slice via SourceImageSequence, segment →
/// vessel via AnatomicRegionSequence), compared with cacd's lesion mask.
fn seg_labels(seg: &DefaultDicomObject, volume: &Volume) -> Array3<u8> {
    let (slices, rows, cols) = volume.dims();
    let vessel_of_segment: HashMap<u16, u8> = items(seg, tags::SEGMENT_SEQUENCE)
        .iter()
        .map(|s| {
            let n = s
                .element(tags::SEGMENT_NUMBER)
                .unwrap()
                .to_int::<u16>()
                .unwrap();
            let code = str_of(
                &items(s, tags::ANATOMIC_REGION_SEQUENCE)[0],
                tags::CODE_VALUE,
            );
            let label = match code.as_str() {
                "3227004" => 1,
                "59438005" => 2,
                "57396003" => 3,
                "13647002" => 4,
                other => panic!("unexpected vessel code {other}"),
            };
            (n, label)
        })
        .collect();
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let frames = items(seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    assert_eq!(
        str_of(seg, tags::NUMBER_OF_FRAMES),
        frames.len().to_string()
    );
    assert_eq!(
        bits.len(),
        (frames.len() * rows * cols).div_ceil(8).next_multiple_of(2)
    );
    let mut out = Array3::<u8>::zeros((slices, rows, cols));
    for (i, fg) in frames.iter().enumerate() {
        let deriv = &items(fg, tags::DERIVATION_IMAGE_SEQUENCE)[0];
        let src = &items(deriv, tags::SOURCE_IMAGE_SEQUENCE)[0];
        let uid = str_of(src, tags::REFERENCED_SOP_INSTANCE_UID);
        let frame: u32 = src
            .element(tags::REFERENCED_FRAME_NUMBER)
            .map_or(1, |e| e.to_int().unwrap());
        let z = (0..slices)
            .find(|&z| volume.sop_instance_uids[z] == uid && volume.source_frames[z] == frame)
            .unwrap_or_else(|| panic!("frame {i} references unknown source {uid} frame {frame}"));
        let seg_no: u16 = items(fg, tags::SEGMENT_IDENTIFICATION_SEQUENCE)[0]
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int()
            .unwrap();
        let mut any = false;
        for y in 0..rows {
            for x in 0..cols {
                let bit = i * rows * cols + y * cols + x;
                if bits[bit / 8] >> (bit % 8) & 1 == 1 {
                    assert_eq!(out[[z, y, x]], 0, "overlapping segments at {z},{y},{x}");
                    out[[z, y, x]] = vessel_of_segment[&seg_no];
                    any = true;
                }
            }
        }
        assert!(any, "frame {i} is empty");
    }
    out
}

#[test]
fn seg_bits_are_cacds_lesion_mask_for_single_and_multiframe_sources() {
    for enhanced in [false, true] {
        let case = synthetic(14, true, enhanced);
        let enc = encode_case(&case, 1, &[]);
        let seg = enc.seg.as_ref().unwrap();
        assert_eq!(
            seg_labels(seg, &case.volume),
            case.labels,
            "enhanced={enhanced}"
        );
        // One segment per vessel with calcium, numbered in LM, LAD, LCX, RCA order.
        let segs = items(seg, tags::SEGMENT_SEQUENCE);
        let labels: Vec<String> = segs
            .iter()
            .map(|s| str_of(s, tags::SEGMENT_LABEL))
            .collect();
        assert_eq!(
            labels,
            ["LM calcium", "LAD calcium", "LCX calcium", "RCA calcium"]
        );
        // ReferencedFrameNumber only for the multi-frame source.
        let first = &items(seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)[0];
        let src = &items(
            &items(first, tags::DERIVATION_IMAGE_SEQUENCE)[0],
            tags::SOURCE_IMAGE_SEQUENCE,
        )[0];
        assert_eq!(src.element(tags::REFERENCED_FRAME_NUMBER).is_ok(), enhanced);
        // The whole source series is referenced once per instance.
        let series = &items(seg, tags::REFERENCED_SERIES_SEQUENCE)[0];
        let n_refs = items(series, tags::REFERENCED_INSTANCE_SEQUENCE).len();
        assert_eq!(n_refs, if enhanced { 1 } else { 14 });
        assert_eq!(
            str_of(seg, tags::FRAME_OF_REFERENCE_UID),
            case.volume.meta.frame_of_reference_uid
        );
    }
}

#[test]
fn seg_plane_positions_are_the_source_slice_positions() {
    let case = synthetic(14, true, false);
    let enc = encode_case(&case, 1, &[]);
    let seg = enc.seg.unwrap();
    for fg in items(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE) {
        let src = &items(
            &items(fg, tags::DERIVATION_IMAGE_SEQUENCE)[0],
            tags::SOURCE_IMAGE_SEQUENCE,
        )[0];
        let uid = str_of(src, tags::REFERENCED_SOP_INSTANCE_UID);
        let z = case
            .volume
            .sop_instance_uids
            .iter()
            .position(|u| *u == uid)
            .unwrap();
        let pos: Vec<f64> = items(fg, tags::PLANE_POSITION_SEQUENCE)[0]
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let want = case.volume.geometry.index_to_patient(z as f64, 0.0, 0.0);
        for k in 0..3 {
            assert!(
                (pos[k] - want[k]).abs() < 1e-4,
                "slice {z}: {pos:?} vs {want:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------

fn all_uids(enc: &Encoded) -> Vec<String> {
    let mut objs = vec![&enc.sr, &enc.summary];
    objs.extend(enc.seg.as_ref());
    let mut out = Vec::new();
    for o in objs {
        out.push(str_of(o, tags::SOP_INSTANCE_UID));
        out.push(str_of(o, tags::SERIES_INSTANCE_UID));
    }
    out
}

#[test]
fn uids_are_deterministic_and_keyed_on_the_result_version() {
    let case = synthetic(12, true, false);
    let a = all_uids(&encode_case(&case, 1, &[]));
    let b = all_uids(&encode_case(&case, 1, &[]));
    let c = all_uids(&encode_case(&case, 2, &[]));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "encoding twice must give the same UIDs");
    for (x, y) in a.iter().zip(&c) {
        assert_ne!(x, y, "result version 2 must get new UIDs");
    }
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert_eq!(
        distinct.len(),
        a.len(),
        "every object and series has its own UID"
    );
    for u in &a {
        assert!(u.len() <= 64 && u.starts_with("2.25."), "{u}");
    }
    let src = &case.volume.meta.series_instance_uid;
    assert_eq!(a[0], encode::result_uid(src, 1, &model().sha256, "sr"));
}

#[test]
fn results_share_the_source_study_and_patient_in_new_series() {
    let case = synthetic(12, true, false);
    let enc = encode_case(&case, 1, &[]);
    let seg = enc.seg.as_ref().unwrap();
    let mut series_numbers = Vec::new();
    for o in [seg, &enc.sr, &enc.summary] {
        assert_eq!(o.meta().transfer_syntax(), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        assert_eq!(
            str_of(o, tags::STUDY_INSTANCE_UID),
            case.volume.meta.study_instance_uid
        );
        assert_ne!(
            str_of(o, tags::SERIES_INSTANCE_UID),
            case.volume.meta.series_instance_uid
        );
        assert_eq!(str_of(o, tags::PATIENT_NAME), "Müller^Anna");
        assert_eq!(str_of(o, tags::PATIENT_ID), "PID-0042");
        assert_eq!(str_of(o, tags::ACCESSION_NUMBER), "ACC123");
        assert_eq!(str_of(o, tags::MANUFACTURER), "cacd");
        series_numbers.push(str_of(o, tags::SERIES_NUMBER));
    }
    series_numbers.sort();
    series_numbers.dedup();
    assert_eq!(series_numbers.len(), 3);
    assert!(!series_numbers.contains(&"3".to_string()));
}

#[test]
fn no_calcium_gives_no_seg_and_the_sr_says_so() {
    let case = synthetic(10, false, false);
    assert!(case.scores.lesions.is_empty());
    let enc = encode_case(&case, 1, &[]);
    assert!(enc.seg.is_none());
    fn texts(items_: &[InMemDicomObject], out: &mut Vec<String>) {
        for it in items_ {
            if let Ok(t) = it.element(tags::TEXT_VALUE) {
                out.push(t.to_str().unwrap().to_string());
            }
            if it.element(tags::CONTENT_SEQUENCE).is_ok() {
                texts(items(it, tags::CONTENT_SEQUENCE), out);
            }
        }
    }
    let mut t = Vec::new();
    texts(items(&enc.sr, tags::CONTENT_SEQUENCE), &mut t);
    assert!(t.iter().any(|s| s == encode::sr::NO_CALCIUM_TEXT), "{t:?}");
    assert!(enc
        .sr
        .element(tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE)
        .is_err());
}

#[test]
fn summary_image_shows_outlines_in_vessel_colours_and_is_saved_as_png() {
    for (name, case) in [
        ("phantom-moderate", phantom_case(7, Burden::Moderate)),
        ("phantom-none", phantom_case(8, Burden::None)),
        ("synthetic", synthetic(14, true, false)),
    ] {
        let warnings = vec![
            "Slice thickness 2.5 mm: within range".to_string(),
            "Heart partly outside the scanned range; scores may be underestimated".to_string(),
        ];
        let model = model();
        let options = EncodeOptions::default();
        let input = EncodeInput {
            volume: &case.volume,
            scores: &case.scores,
            model: &model,
            result_version: 1,
            warnings: &warnings,
            options: &options,
            refusal: None,
        };
        let img = encode::summary::render(&input).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (encode::summary::WIDTH, encode::summary::HEIGHT)
        );
        let png = out_dir("summary").join(format!("summary-{name}.png"));
        img.save(&png).unwrap();
        println!("summary image: {}", png.display());
        // Each vessel's outline colour appears in the panels exactly when it has calcium on
        // a key slice (the legend swatches are always there, so look at the panels only).
        let keys = encode::summary::key_slices(&case.scores, case.volume.dims().0);
        for v in Vessel::ALL {
            let colour = encode::vessel_colour(v);
            let in_panels = (96..736)
                .flat_map(|y| (12..652).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == colour)
                .count();
            let has = case
                .scores
                .lesions
                .iter()
                .any(|l| l.vessel == v && keys.contains(&l.slice));
            assert_eq!(
                in_panels > 20,
                has,
                "{name}: {v:?} outline pixels {in_panels}"
            );
        }
        // The DICOM pixel data is that image.
        let enc = encode_case(&case, 1, &warnings);
        let data = enc
            .summary
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(&*data, img.as_raw().as_slice());
    }
}

/// The Agatston values DCMTK's `dsrdump` prints, keyed by the measurement group's Tracking
/// Identifier ("LAD calcium", …, "Coronary calcium, all arteries").
fn dsrdump_agatston(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut group = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) =
            line.strip_prefix("<has obs context TEXT:(,,\"Tracking Identifier\")=\"")
        {
            group = rest.trim_end_matches("\">").to_string();
        } else if let Some(rest) =
            line.strip_prefix("<contains NUM:(,,\"Coronary artery calcium score\")=\"")
        {
            let value = rest.split('"').next().unwrap_or_default();
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("dsrdump printed a non-number {value:?}"));
            out.insert(group.clone(), v);
        }
    }
    out
}

/// DCMTK renders our objects: `dsrdump` reads the SR's content tree (and prints the same
/// Agatston values as cacd computed), `dcmj2pnm` decodes the summary to exactly the image cacd
/// rendered (and that image is not blank).
#[test]
fn dcmtk_renders_the_sr_and_the_summary() {
    let (dsrdump, dcmj2pnm) = (
        Path::new("/usr/bin/dsrdump"),
        Path::new("/usr/bin/dcmj2pnm"),
    );
    if !dsrdump.exists() || !dcmj2pnm.exists() {
        println!("SKIP: DCMTK not installed (scripts/install-test-deps installs dcmtk)");
        return;
    }
    let warnings = vec!["Tube voltage 100 kVp: Agatston weights assume 120 kVp".to_string()];
    for (name, case) in [
        ("phantom-moderate", phantom_case(7, Burden::Moderate)),
        ("phantom-none", phantom_case(8, Burden::None)),
    ] {
        let enc = encode_case(&case, 1, &warnings);
        let dir = out_dir(&format!("dcmtk-{name}"));
        write_all(&enc, &dir);

        let out = Command::new(dsrdump)
            .arg(dir.join("sr.dcm"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: dsrdump failed:\n{text}");
        assert!(
            text.starts_with("Comprehensive SR Document"),
            "{name}:\n{text}"
        );
        let values = dsrdump_agatston(&text);
        let total = values
            .get("Coronary calcium, all arteries")
            .unwrap_or_else(|| panic!("{name}: no total in dsrdump output:\n{text}"));
        assert!(
            (total - case.scores.agatston_total).abs() < 1e-3,
            "{name}: total {total}"
        );
        for v in Vessel::ALL {
            let key = format!("{} calcium", v.name());
            let got = values
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: no {key} in dsrdump output:\n{text}"));
            let want = case.scores.per_vessel.get(v);
            assert!((got - want).abs() < 1e-3, "{name}: {key} {got} vs {want}");
        }
        assert!(
            text.contains(&format!(
                "<contains TEXT:(,,\"Agatston risk category\")=\"{}\">",
                case.scores.risk_category
            )),
            "{name}: risk category missing:\n{text}"
        );

        let png = dir.join("summary-dcmj2pnm.png");
        let _ = std::fs::remove_file(&png);
        let out = Command::new(dcmj2pnm)
            .arg("+on")
            .arg(dir.join("summary.dcm"))
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: dcmj2pnm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = image::open(&png).unwrap().to_rgb8();
        assert_eq!(
            (rendered.width(), rendered.height()),
            (encode::summary::WIDTH, encode::summary::HEIGHT),
            "{name}: size"
        );
        let distinct: std::collections::HashSet<[u8; 3]> = rendered.pixels().map(|p| p.0).collect();
        assert!(
            distinct.len() > 16,
            "{name}: only {} colours",
            distinct.len()
        );
        let ours = encode::summary::render(&EncodeInput {
            volume: &case.volume,
            scores: &case.scores,
            model: &model(),
            result_version: 1,
            warnings: &warnings,
            options: &EncodeOptions::default(),
            refusal: None,
        })
        .unwrap();
        assert!(
            rendered.as_raw() == ours.as_raw(),
            "{name}: DCMTK's rendering differs from cacd's image"
        );
    }
}
