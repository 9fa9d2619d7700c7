//! An engine that fails: the calcium segmenter's weights are broken (its output head's weights
//! made NaN, the manifest's sha256 updated, so the model loads and runs), and every study makes
//! it return NaN. That is our failure, not the study's: the series is retried
//! `max_scoring_attempts` times, then `failed` with the reason, kept (its instances stay on
//! disk, retention does not prune it), shown on the status port and in `/metrics`, and the box
//! is `degraded`. Before the check on the output, NaN probabilities read as "no heart" or
//! "no calcium": a study refused, or a calcium-free score sent to the PACS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cacd_e2e::*;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::support::*;

/// A copy of the committed models in `dir` whose fp32 calcium segmenter returns NaN.
fn broken_models(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let out = dir.join("models");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "heart_fp32.onnx",
        "heart_int8.onnx",
        "calcium_int8.onnx",
        "calcium_fp32.onnx",
    ] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("calcium_fp32.onnx")).unwrap();
    let mut model = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).expect("ONNX model");
    let graph = model.graph.as_mut().expect("graph");
    // The output head (the last convolution, after every ReLU, which would turn NaN into 0).
    let head = graph
        .node
        .iter()
        .rev()
        .find(|n| n.op_type == "Conv")
        .expect("a Conv node");
    let weight = head.input[1].clone();
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == weight)
        .expect("the head's weights are an initializer");
    if init.raw_data.is_empty() {
        init.float_data.iter_mut().for_each(|v| *v = f32::NAN);
    } else {
        let n = init.raw_data.len() / 4;
        init.raw_data = f32::NAN.to_le_bytes().repeat(n);
    }
    let broken = model.encode_to_vec();
    std::fs::write(out.join("calcium_fp32.onnx"), &broken).unwrap();

    // The manifest names the broken file's hash, as for any model (the hash check passes).
    let manifest = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
    let old = manifest
        .split("[[model]]")
        .find(|m| m.contains("file = \"calcium_fp32.onnx\""))
        .and_then(|m| m.lines().find(|l| l.starts_with("sha256 = ")))
        .expect("the calcium fp32 entry's sha256")
        .to_string();
    let new = format!("sha256 = \"{:x}\"", Sha256::digest(&broken));
    std::fs::write(out.join("manifest.toml"), manifest.replacen(&old, &new, 1)).unwrap();
    out
}

#[test]
fn an_engine_that_fails_leaves_the_series_failed_kept_and_shown() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let models = broken_models(tmp.path());
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        &format!(
            "[pipeline]\nmodel_dir = \"{}\"\nprecision = \"fp32\"\nmax_scoring_attempts = 2\n",
            models.display()
        ),
    );
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let serve = Serve::start(&cfg, port, &data);
    let files = dicom_files(&phantom_whole_heart(tmp.path(), 4900));
    assert_eq!(send(port, &files).acked.len(), files.len());

    assert!(
        wait_until(Duration::from_secs(300), || queue_counts(status)
            .get("failed")
            == Some(&1)),
        "the series was not failed: {:?}",
        queue_counts(status)
    );
    let v = status_json(status).expect("status");
    let series = &v["series"][0];
    let reason = series["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(series["state"], "failed", "{series}");
    assert!(
        reason.contains("scoring failed 2 times") && reason.contains("not numbers"),
        "the reason says what failed: {reason}"
    );
    assert!(series["agatston_total"].is_null(), "no score: {series}");
    assert!(
        wait_until(Duration::from_secs(15), || status_json(status)
            .is_some_and(|v| v["health"]["state"] == "degraded"
                && v["health"]["reasons"].to_string().contains("failed"))),
        "the box is not degraded: {}",
        status_json(status)
            .map(|v| v["health"].to_string())
            .unwrap_or_default()
    );
    assert!(serve.log_contains("scoring failed on our side; retried"));

    // Kept: every instance still on disk, nothing sent to the PACS, no result written.
    let stored = stored_uids(&data);
    assert!(files.iter().all(|f| stored.contains(&sop_uid(f))));
    assert!(receiver.copies().is_empty(), "nothing reached the PACS");
    let metrics = std::process::Command::new("/usr/bin/curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:{status}/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("cacd_series{state=\"failed\"} 1"),
        "metrics: {metrics}"
    );
    serve.terminate();
    assert!(
        states(&data).contains(&cacd::queue::SeriesState::Failed),
        "still held after shutdown"
    );
}
