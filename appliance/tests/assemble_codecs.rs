//! Compressed transfer syntaxes made by real tools (DCMTK, GDCM): an uncompressed series is
//! converted file by file, assembled, and compared with the original HU. A missing tool skips
//! its case with a printed reason.

mod assemble_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use assemble_support::Series;
use cacd::assemble::assemble_paths;
use dicom_dictionary_std::{tags, uids};

/// Convert every file of `src` into `dst` with `tool args… in out`; `None` when the tool is
/// missing (the case is skipped).
fn convert(tool: &str, args: &[&str], files: &[PathBuf], dst: &Path) -> Option<Vec<PathBuf>> {
    if !Path::new(tool).exists() {
        println!("SKIP: {tool} not installed");
        return None;
    }
    std::fs::create_dir_all(dst).unwrap();
    let mut out = Vec::new();
    for f in files {
        let o = dst.join(f.file_name().unwrap());
        let status = Command::new(tool)
            .args(args)
            .arg(f)
            .arg(&o)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            status.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        out.push(o);
    }
    Some(out)
}

fn transfer_syntax(path: &Path) -> String {
    let o = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    o.meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string()
}

/// The daemon's store admits each file as a sender would put it on the wire: the dataset bytes
/// after the file meta group, in the file's transfer syntax (the store's length walk and parse
/// must accept every syntax the assembler decodes).
fn store_admits(files: &[PathBuf]) {
    let dir = tempfile::tempdir().unwrap();
    let store = cacd::store::Store::open(dir.path()).unwrap();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        // (0002,0000) UL group length, explicit VR LE: 12 bytes from offset 132.
        let group = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
        let dataset = &bytes[144 + group..];
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(f)
            .unwrap();
        let m = obj.meta();
        let mut inc = store
            .begin(
                m.media_storage_sop_class_uid(),
                m.media_storage_sop_instance_uid(),
                m.transfer_syntax(),
            )
            .unwrap();
        inc.write(dataset).unwrap();
        match inc.finish() {
            Ok(staged) => staged.discard(),
            Err(e) => panic!(
                "the store refused {} ({}): {e}",
                f.display(),
                m.transfer_syntax()
            ),
        }
    }
}

/// A series with signed 16-bit samples spanning air to dense bone, so codecs see negative values.
fn signed_series(uid: &str) -> Series {
    let mut s = Series::new(uid);
    s.rows = 48;
    s.cols = 40;
    s.slices = 18;
    s.signed = true;
    s.bits_stored = 16;
    s.intercept = 0.0;
    s
}

fn lossless_case(tool: &str, args: &[&str], expect_ts: &str, series: Series) {
    let dir = tempfile::tempdir().unwrap();
    let files = series.write(&dir.path().join("src"));
    let Some(out) = convert(tool, args, &files, &dir.path().join("dst")) else {
        return;
    };
    assert_eq!(
        transfer_syntax(&out[0]),
        expect_ts,
        "{tool} produced another syntax"
    );
    let v = assemble_paths(&out).unwrap_or_else(|e| panic!("{tool}: {}", e.reason()));
    assert_eq!(v.hu, series.hu(), "{tool} {args:?}: HU differ");
    store_admits(&out);
}

#[test]
fn jpeg_lossless_sv1_dcmtk() {
    lossless_case(
        "/usr/bin/dcmcjpeg",
        &[],
        uids::JPEG_LOSSLESS_SV1,
        Series::new("1.2.3.400"),
    );
    lossless_case(
        "/usr/bin/dcmcjpeg",
        &[],
        uids::JPEG_LOSSLESS_SV1,
        signed_series("1.2.3.401"),
    );
}

#[test]
fn rle_lossless_dcmtk() {
    lossless_case(
        "/usr/bin/dcmcrle",
        &[],
        uids::RLE_LOSSLESS,
        Series::new("1.2.3.410"),
    );
    lossless_case(
        "/usr/bin/dcmcrle",
        &[],
        uids::RLE_LOSSLESS,
        signed_series("1.2.3.411"),
    );
}

#[cfg(feature = "jpegls")]
#[test]
fn jpeg_ls_lossless_dcmtk() {
    lossless_case(
        "/usr/bin/dcmcjpls",
        &[],
        uids::JPEGLS_LOSSLESS,
        Series::new("1.2.3.420"),
    );
    lossless_case(
        "/usr/bin/dcmcjpls",
        &[],
        uids::JPEGLS_LOSSLESS,
        signed_series("1.2.3.421"),
    );
}

#[test]
fn jpeg_2000_lossless_gdcm() {
    lossless_case(
        "/usr/bin/gdcmconv",
        &["--j2k"],
        uids::JPEG2000_LOSSLESS,
        Series::new("1.2.3.430"),
    );
    lossless_case(
        "/usr/bin/gdcmconv",
        &["--j2k"],
        uids::JPEG2000_LOSSLESS,
        signed_series("1.2.3.431"),
    );
}

#[test]
#[allow(deprecated)] // Explicit VR Big Endian is retired, but old archives still hold it.
fn deflate_and_big_endian_dcmtk() {
    lossless_case(
        "/usr/bin/dcmconv",
        &["+td"],
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        Series::new("1.2.3.440"),
    );
    lossless_case(
        "/usr/bin/dcmconv",
        &["+tb"],
        uids::EXPLICIT_VR_BIG_ENDIAN,
        signed_series("1.2.3.441"),
    );
    lossless_case(
        "/usr/bin/dcmconv",
        &["+ti"],
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        Series::new("1.2.3.442"),
    );
}

#[test]
fn jpeg_2000_lossy_gdcm_stays_close() {
    let series = Series::new("1.2.3.450");
    let dir = tempfile::tempdir().unwrap();
    let files = series.write(&dir.path().join("src"));
    let Some(out) = convert(
        "/usr/bin/gdcmconv",
        &["--j2k", "--lossy", "-q", "60"],
        &files,
        &dir.path().join("dst"),
    ) else {
        return;
    };
    assert_eq!(transfer_syntax(&out[0]), uids::JPEG2000);
    // GDCM marks its lossy output DERIVED (rightly), which is not scored...
    let e = assemble_paths(&out).expect_err("DERIVED must be refused");
    assert!(e.reason().contains("DERIVED"), "{}", e.reason());
    // ...but scanners that compress at source keep ORIGINAL: decoding must work then.
    for f in &out {
        let mut o = dicom_object::open_file(f).unwrap();
        o.put(dicom_core::DataElement::new(
            tags::IMAGE_TYPE,
            dicom_core::VR::CS,
            dicom_core::PrimitiveValue::from("ORIGINAL\\PRIMARY\\AXIAL"),
        ));
        o.write_to_file(f).unwrap();
    }
    let v = assemble_paths(&out).unwrap_or_else(|e| panic!("lossy j2k: {}", e.reason()));
    let expect = series.hu();
    assert_eq!(v.dims(), expect.dim());
    // Lossy: close to, but not necessarily equal to, the original.
    let mean_abs: f64 =
        v.hu.iter()
            .zip(expect.iter())
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .sum::<f64>()
            / expect.len() as f64;
    println!("lossy JPEG 2000: mean |ΔHU| {mean_abs:.1}");
    assert!(mean_abs > 0.0 && mean_abs < 200.0, "mean |ΔHU| {mean_abs}");
}

/// Multi-frame Enhanced CT compressed frame by frame: every frame decodes to its slice.
#[test]
fn enhanced_ct_multiframe_compressed() {
    let mut cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("/usr/bin/dcmcjpeg", vec![], uids::JPEG_LOSSLESS_SV1),
        ("/usr/bin/dcmcrle", vec![], uids::RLE_LOSSLESS),
        ("/usr/bin/gdcmconv", vec!["--j2k"], uids::JPEG2000_LOSSLESS),
    ];
    if cfg!(feature = "jpegls") {
        cases.push(("/usr/bin/dcmcjpls", vec![], uids::JPEGLS_LOSSLESS));
    }
    for (k, (tool, args, ts)) in cases.into_iter().enumerate() {
        let mut series = signed_series(&format!("1.2.3.460.{k}"));
        series.slices = 17;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let file = src.join("enhanced.dcm");
        series.write_enhanced(&file, true);
        let Some(out) = convert(tool, &args, &[file], &dir.path().join("dst")) else {
            continue;
        };
        assert_eq!(transfer_syntax(&out[0]), ts, "{tool}");
        let v = assemble_paths(&out).unwrap_or_else(|e| panic!("{tool}: {}", e.reason()));
        assert_eq!(v.hu, series.hu(), "{tool}: HU differ");
        assert_eq!(v.source_frames, (1..=17).rev().collect::<Vec<u32>>());
        store_admits(&out);
    }
}
