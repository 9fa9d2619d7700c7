//! Manifest parsing, validation, lookup and hash verification.

mod common;

use cacd_models::{sha256_hex, verify, Manifest, ModelError};
use common::*;

const GOOD: &str = r#"
[[model]]
name = "cacd-heart-locator"
role = "heart"
version = "1.0.0"
file = "heart_fp32.onnx"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
precision = "fp32"
input_name = "input"
output_name = "output"
spacing_mm = [4.0, 4.0, 4.0]
shape = [64, 96, 96]
channels = 1
hu_clip = [-1000.0, 2000.0]
hu_scale = 1000.0
labels = ["background", "heart"]
training = "test"

[[model]]
name = "cacd-calcium"
role = "calcium"
version = "1.0.0"
file = "sub/calcium_int8.onnx"
sha256 = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
precision = "int8"
input_name = "input"
output_name = "output"
spacing_mm = [2.0, 0.8, 0.8]
shape = [64, 192, 192]
channels = 4
hu_clip = [-1000.0, 2000.0]
hu_scale = 1000.0
labels = ["background", "LM", "LAD", "LCX", "RCA"]
training = "test"
min_lesion_confidence = 0.7
min_lesion_contrast_sigma = 6.5
min_lesion_contrast_sigma_large = 4.5
large_lesion_area_mm2 = 3.0
"#;

/// Parses GOOD with one `key = value` line of the `nth` model (0-based) replaced, and returns
/// the error text.
fn error_with(nth: usize, key: &str, value: &str) -> String {
    let mut seen = 0;
    let text: String = GOOD
        .lines()
        .map(|l| {
            if l.starts_with("[[model]]") {
                seen += 1;
            }
            if seen == nth + 1 && l.split('=').next().map(str::trim) == Some(key) {
                format!("{key} = {value}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    match Manifest::parse(&text, "test.toml") {
        Err(e @ ModelError::Manifest { .. }) => e.to_string(),
        Err(e) => panic!("{key} = {value}: wrong error kind {e}"),
        Ok(_) => panic!("{key} = {value} was accepted"),
    }
}

#[test]
fn parses_and_finds_by_role_and_precision() {
    let m = Manifest::parse(GOOD, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.models.len(), 2);
    let heart = m.find("heart", "fp32").map(|e| e.name.as_str());
    assert_eq!(heart, Some("cacd-heart-locator"));
    let calcium = m
        .find("calcium", "int8")
        .unwrap_or_else(|| panic!("no calcium int8"));
    assert_eq!(calcium.input_shape(), [1, 4, 64, 192, 192]);
    assert_eq!(calcium.output_shape(), [1, 5, 64, 192, 192]);
    assert!(m.find("calcium", "fp32").is_none());
    assert!(m.find("heart", "int8").is_none());
}

#[test]
fn validation_errors_name_the_model_and_the_problem() {
    let cases: &[(usize, &str, &str, &str)] = &[
        (
            0,
            "role",
            "\"lungs\"",
            "role \"lungs\" is not one of heart, calcium",
        ),
        (
            1,
            "precision",
            "\"fp16\"",
            "precision \"fp16\" is not one of fp32, int8",
        ),
        (
            0,
            "sha256",
            "\"abc\"",
            "sha256 must be 64 hexadecimal digits",
        ),
        (
            0,
            "sha256",
            "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\"",
            "sha256 must be 64 hexadecimal digits",
        ),
        (0, "shape", "[64, 0, 96]", "zero extent"),
        (1, "channels", "0", "channels is 0"),
        (
            0,
            "labels",
            "[\"background\"]",
            "at least two output channels",
        ),
        (
            1,
            "labels",
            "[\"background\", \"LAD\", \"LAD\"]",
            "label \"LAD\" appears twice",
        ),
        (0, "spacing_mm", "[4.0, -1.0, 4.0]", "spacing_mm"),
        (0, "hu_clip", "[2000.0, -1000.0]", "low < high"),
        (0, "hu_scale", "0.0", "hu_scale 0 must be finite and > 0"),
        (
            0,
            "file",
            "\"../elsewhere.onnx\"",
            "relative path inside the manifest's folder",
        ),
        (
            0,
            "file",
            "\"/etc/passwd\"",
            "relative path inside the manifest's folder",
        ),
        (0, "name", "\"\"", "name is empty"),
        (1, "shape", "[100000, 100000, 100000]", "larger than"),
        (1, "min_lesion_confidence", "1.5", "within 0..=1"),
        (1, "min_lesion_confidence", "nan", "within 0..=1"),
        (1, "min_lesion_contrast_sigma", "-1.0", "finite and >= 0"),
        (1, "min_lesion_contrast_sigma", "inf", "finite and >= 0"),
        (
            1,
            "min_lesion_contrast_sigma_large",
            "-2.0",
            "finite and >= 0",
        ),
        (1, "large_lesion_area_mm2", "nan", "finite and >= 0"),
    ];
    for (nth, key, value, want) in cases {
        let err = error_with(*nth, key, value);
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains(&format!("model #{}", nth + 1)), "{err}");
        assert!(
            err.contains(want),
            "{key} = {value}: {err:?} lacks {want:?}"
        );
    }
}

#[test]
fn structural_errors_are_clear() {
    let err = |text: &str| match Manifest::parse(text, "m.toml") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{text:?} was accepted"),
    };
    assert!(err("").contains("not a valid manifest"));
    assert!(err("model = []").contains("lists no [[model]] entries"));
    assert!(err("[[model]]\nname = \"x\"\n").contains("missing field"));
    assert!(err("[[model\n").contains("not a valid manifest"));
    // The large-lesion tier needs both its threshold and its area.
    assert!(err(&GOOD.replace("large_lesion_area_mm2 = 3.0\n", "")).contains("go together"));
    // Two models for the same role and precision would make `find` ambiguous.
    let twice = GOOD
        .replace("role = \"calcium\"", "role = \"heart\"")
        .replace("\"int8\"", "\"fp32\"");
    assert!(
        err(&twice).contains("a second heart model in fp32"),
        "{}",
        err(&twice)
    );
}

#[test]
fn load_reports_missing_files() {
    let path = fixture_dir().join("no-such-manifest.toml");
    match Manifest::load(&path) {
        Err(ModelError::Manifest { path: p, reason }) => {
            assert!(p.ends_with("no-such-manifest.toml"));
            assert!(reason.starts_with("cannot read"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn committed_fixture_manifests_verify() {
    for variant in VARIANTS {
        let (manifest, dir) = fixture_manifest(variant);
        for entry in &manifest.models {
            let bytes = verify(entry, &dir).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(sha256_hex(&bytes), entry.sha256);
        }
    }
}

#[test]
fn verify_refuses_changed_bytes_and_reports_missing_files() {
    let (entry, dir) = fixture_entry("convt", "int8");
    let tmp = tampered_copy(&entry, &dir);
    match verify(&entry, tmp.path()) {
        Err(ModelError::HashMismatch {
            file,
            expected,
            actual,
        }) => {
            assert!(file.ends_with(&entry.file));
            assert_eq!(expected, entry.sha256);
            assert_eq!(actual.len(), 64);
            assert_ne!(actual, expected);
        }
        other => panic!("{other:?}"),
    }
    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        verify(&entry, empty.path()),
        Err(ModelError::Load { .. })
    ));
}

#[test]
fn sha256_hex_is_lowercase_sha256() {
    // FIPS 180-2 test vector.
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
