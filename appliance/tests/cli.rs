//! The command line as a person meets it: `cacd score` on a calcium-free study and on a study
//! it refuses, run as the binary cargo built for these tests.

use std::path::Path;
use std::process::Command;

fn cacd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cacd"))
}

fn phantom(dir: &Path, seed: u64, burden: &str, thickness: &str, slices: &str) {
    let st = cacd()
        .args(["phantom", "--out"])
        .arg(dir)
        .args(["--seed", &seed.to_string(), "--burden", burden])
        .args(["--thickness", thickness, "--slices", slices])
        .args(["--transfer-syntax", "explicit", "--no-localizer"])
        .status()
        .expect("cacd phantom");
    assert!(st.success());
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("result.json")).expect("JSON")
}

/// A calcium-free study prints and writes 0, never "-0.0"; the log on a file has no colour codes.
#[test]
fn calcium_free_study_scores_plain_zero_and_logs_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    phantom(&study, 424_242, "none", "2.5", "60");
    let out = dir.path().join("out");
    let o = cacd()
        .arg("score")
        .arg(&study)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cacd score");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stdout.contains("Agatston 0.0"), "{stdout}");
    assert!(!stdout.contains("-0.0"), "negative zero printed: {stdout}");
    assert!(!stderr.is_empty(), "the score command logs its stages");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in a log written to a file: {stderr:?}"
    );
    let text = std::fs::read_to_string(out.join("result.json")).unwrap();
    assert!(
        !text.contains("-0.0"),
        "negative zero in result.json: {text}"
    );
    let r = read_json(&out.join("result.json"));
    assert_eq!(r["agatston_total"].as_f64(), Some(0.0));
    assert!(r["agatston_total"].as_f64().unwrap().is_sign_positive());
}

/// A refused study's result.json names the study and series it read.
#[test]
fn refused_study_result_carries_the_uids_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    // 6 mm slices: thicker than any series cacd scores.
    phantom(&study, 424_243, "low", "6.0", "30");
    let truth = read_json(&study.join("truth.json"));
    let out = dir.path().join("out");
    let o = cacd()
        .arg("score")
        .arg(&study)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cacd score");
    assert!(!o.status.success(), "a 6 mm series must be refused");
    let r = read_json(&out.join("result.json"));
    assert_eq!(r["status"], "rejected");
    let study_uid = r["study_instance_uid"].as_str().unwrap();
    let series_uid = r["series_instance_uid"].as_str().unwrap();
    assert!(!study_uid.is_empty() && !series_uid.is_empty(), "{r}");
    assert_eq!(
        study_uid,
        truth["study_instance_uid"].as_str().unwrap(),
        "{r}"
    );
    assert_eq!(
        series_uid,
        truth["series_instance_uid"].as_str().unwrap(),
        "{r}"
    );
}
