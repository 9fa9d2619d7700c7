//! Broken peers that used to leave wrong or stuck results, with real peers on both sides and
//! what the PACS ends up holding:
//!
//! - a PACS (pynetdicom) that answers 0xC000 to one result object: the others are still sent,
//!   the series shows `failed` with the reason, health is `degraded` (/readyz stays 200), and
//!   `POST /api/series/{hash}/retry` sends only the refused object once the PACS takes it;
//! - a SOP Instance UID already stored under another study (DCMTK storescu): refused with an
//!   error status and a log line naming hashes only, never answered Success and dropped; both
//!   studies scored and delivered to Orthanc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cacd_e2e::*;

use crate::support::*;

const SR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.33";
const TOKEN: &str = "service-token-for-the-test";

#[test]
fn a_pacs_refusing_one_object_gets_the_others_and_the_series_can_be_retried() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, pacs_port) = (free_port(), free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", pacs_port)],
        "",
        &format!("[health]\nservice_token = \"{TOKEN}\"\n"),
    );
    let pacs = RefusingPacs::start(pacs_port, &tmp.path().join("pacs"), SR_CLASS);
    let serve = Serve::start(&cfg, port, &data);
    let files = dicom_files(&phantom(tmp.path(), 4960, 30));
    assert_eq!(send(port, &files).acked.len(), files.len());

    // The SR is refused (0xC000); the summary (and the SEG, when there is calcium) still go.
    assert!(
        wait_until(Duration::from_secs(300), || queue_counts(status)
            .get("failed")
            .copied()
            == Some(1)),
        "the series did not end failed: {:?}",
        status_json(status)
    );
    let log = pacs.log();
    let refused: Vec<_> = log.iter().filter(|l| l.0 == "C000").collect();
    let stored: Vec<_> = log.iter().filter(|l| l.0 == "0000").collect();
    assert_eq!(refused.len(), 1, "{log:?}");
    assert_eq!(refused[0].1, SR_CLASS);
    assert!(
        !stored.is_empty(),
        "the other objects were not sent: {log:?}"
    );
    assert!(stored.iter().all(|l| l.1 != SR_CLASS));
    // Visible, with the reason, and /readyz still 200.
    let v = status_json(status).unwrap();
    let series = v["series"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["state"] == "failed"))
        .cloned()
        .expect("the failed series on the status port");
    let hash = series["series_hash"].as_str().unwrap().to_string();
    let error = series["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("sr.dcm") && error.contains("0xC000"),
        "{error}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || status_json(status).is_some_and(
            |v| v["health"]["state"] == "degraded"
                && v["health"]["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r
                        .as_str()
                        .is_some_and(|r| r.contains(&hash) && r.contains("0xC000"))))
        )),
        "health not degraded with the reason: {:?}",
        status_json(status).map(|v| v["health"].clone())
    );
    assert_eq!(http(status, "GET", "/readyz", None).0, 200);
    let (_, page) = http(status, "GET", "/", None);
    assert!(page.contains(&hash) && page.contains("failed"));

    // A person fixes the PACS and retries; without the token nothing happens.
    pacs.accept_all();
    let path = format!("/api/series/{hash}/retry");
    assert_eq!(http(status, "POST", &path, None).0, 401);
    assert_eq!(
        http(
            status,
            "POST",
            "/api/series/000000000000/retry",
            Some(TOKEN)
        )
        .0,
        404
    );
    let (code, body) = http(status, "POST", &path, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("forwarding"), "{body}");
    assert!(
        wait_until(Duration::from_secs(60), || delivered(status) == 1),
        "not delivered after the retry: {:?}",
        status_json(status)
    );
    assert_eq!(
        http(status, "POST", &path, Some(TOKEN)).0,
        409,
        "no longer failed"
    );
    assert!(
        wait_until(Duration::from_secs(10), || status_json(status)
            .is_some_and(|v| v["health"]["state"] != "degraded")),
        "still degraded after delivery"
    );
    serve.terminate();
    // What the PACS holds: every result object once; the SR refused once, then taken; nothing
    // already delivered was sent again.
    let log = pacs.log();
    let mut per_uid = std::collections::BTreeMap::new();
    for (st, _, uid) in &log {
        per_uid
            .entry(uid.clone())
            .or_insert_with(Vec::new)
            .push(st.clone());
    }
    let results = final_result_uids(&data);
    assert_eq!(per_uid.len(), results.len(), "{log:?}");
    for (uid, seen) in &per_uid {
        assert!(results.contains(uid));
        let ok = seen.iter().filter(|s| *s == "0000").count();
        assert_eq!(ok, 1, "{uid} stored {ok} times: {seen:?}");
    }
    eprintln!(
        "broken peers: C000 PACS: {} result objects, the SR refused once then taken after the retry; \
         the others sent once ({} C-STOREs in all)",
        results.len(),
        log.len()
    );
}

/// `file` with its SOP Instance UID replaced by `uid` (dcmodify keeps the file meta in step).
fn with_sop_uid(file: &Path, uid: &str, out: &Path) -> PathBuf {
    std::fs::copy(file, out).unwrap();
    let st = Command::new("/usr/bin/dcmodify")
        .args(["-nb", "-m", &format!("(0008,0018)={uid}")])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success());
    out.to_path_buf()
}

#[test]
fn a_sop_instance_uid_stored_under_another_study_is_refused_not_dropped() {
    let _serial = serial();
    let models = models_present();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status) = (free_port(), free_port());
    let orthanc = models.then(|| Orthanc::start(&tmp.path().join("orthanc"), port));
    let dests: Vec<(&str, u16)> = orthanc.iter().map(|o| ("ORTHANC", o.dicom_port)).collect();
    let cfg = config(tmp.path(), &data, port, status, &dests, "", "");
    let serve = Serve::start(&cfg, port, &data);
    let a = dicom_files(&phantom(tmp.path(), 4970, 30));
    let b = dicom_files(&phantom(tmp.path(), 4971, 30));
    let a_uid = sop_uid(&a[0]);
    let a_study = dcm_value(&a[0], "0020,000d").unwrap();
    let b_series = dcm_value(&b[0], "0020,000e").unwrap();
    assert_ne!(dcm_value(&b[0], "0020,000d").unwrap(), a_study);
    // B's first image again, under A's first image's SOP Instance UID.
    let clash = with_sop_uid(&b[0], &a_uid, &tmp.path().join("clash.dcm"));
    assert_eq!(send(port, &a).acked.len(), a.len());
    let mut second = b.clone();
    second.push(clash.clone());
    let sent = send(port, &second);
    assert_eq!(sent.acked.len(), b.len(), "{:?}", sent.refused);
    assert_eq!(
        sent.refused.len(),
        1,
        "one answer for the clash: {:?}",
        sent.acked
    );
    assert_eq!(sent.refused[0].0, clash);
    assert!(
        sent.refused[0].1.contains("Error"),
        "an error status, not a warning: {}",
        sent.refused[0].1
    );
    // The log says so, with hashes only.
    assert!(serve.log_contains("instance refused: its UIDs clash"));
    let log = serve.log.lock().unwrap().clone();
    let leaks: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(&a_uid) || l.contains(&b_series) || l.contains(&a_study))
        .collect();
    assert!(leaks.is_empty(), "UIDs in the daemon's log: {leaks:?}");
    // A's instance is untouched; B is stored in full; nothing else.
    let stored = dicom_files_below(&data.join("studies"));
    assert_eq!(stored.len(), a.len() + b.len());
    let kept: Vec<&PathBuf> = stored
        .iter()
        .filter(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == a_uid))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        dcm_value(kept[0], "0020,000d").as_deref(),
        Some(a_study.as_str())
    );
    assert!(files_below(&data.join("tmp")).is_empty());
    let Some(orthanc) = orthanc else {
        eprintln!("broken peers: duplicate UID refused (no models: delivery not checked)");
        serve.terminate();
        return;
    };
    assert!(
        wait_until(Duration::from_secs(400), || delivered(status) == 2),
        "both studies not delivered: {:?}",
        status_json(status)
    );
    serve.terminate();
    // What the PACS holds: results for both studies, each in its own study.
    let studies = orthanc.get("/studies?expand").unwrap();
    let mut sr_per_study = std::collections::BTreeMap::new();
    for st in studies.as_array().unwrap() {
        let uid = st["MainDicomTags"]["StudyInstanceUID"]
            .as_str()
            .unwrap()
            .to_string();
        let mut n = 0;
        for se in st["Series"].as_array().unwrap() {
            let s = orthanc
                .get(&format!("/series/{}", se.as_str().unwrap()))
                .unwrap();
            if s["MainDicomTags"]["Modality"] == "SR" {
                n += s["Instances"].as_array().map(|a| a.len()).unwrap_or(0);
            }
        }
        sr_per_study.insert(uid, n);
    }
    assert_eq!(sr_per_study.len(), 2, "{sr_per_study:?}");
    assert!(sr_per_study.values().all(|&n| n == 1), "{sr_per_study:?}");
    eprintln!(
        "broken peers: duplicate UID refused with an error status; the PACS holds one SR in each \
         of the two studies"
    );
}

/// The SR instances Orthanc holds, as (SOP Instance UID, simplified tags).
fn orthanc_srs(orthanc: &Orthanc) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for id in orthanc.get("/instances").unwrap().as_array().unwrap() {
        let tags = orthanc
            .get(&format!(
                "/instances/{}/tags?simplify",
                id.as_str().unwrap()
            ))
            .unwrap();
        if tags["Modality"] == "SR" {
            out.push((tags["SOPInstanceUID"].as_str().unwrap().to_string(), tags));
        }
    }
    out
}

#[test]
fn a_series_cut_off_then_completed_is_delivered_again_superseding_the_first_result() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let status = free_port();
    let orthanc = Orthanc::start(&tmp.path().join("orthanc"), port);
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("ORTHANC", orthanc.dicom_port)],
        "",
        "",
    );
    let serve = Serve::start(&cfg, port, &data);
    // A whole chest (the phantom's default coverage), in slice order.
    let dir = tmp.path().join("chest");
    let st = Command::new(cacd_bin())
        .args(["phantom", "--out"])
        .arg(&dir)
        .args(["--seed", "4980", "--thickness", "2.5"])
        .args(["--transfer-syntax", "explicit", "--no-localizer"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut files = dicom_files(&dir);
    files.sort_by_key(|f| {
        dcm_value(f, "0020,0013")
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    });
    let half = files.len() / 2;
    // The transfer stops half-way, longer than the quiet period: version 1 goes out.
    assert_eq!(send(port, &files[..half]).acked.len(), half);
    assert!(
        wait_until(Duration::from_secs(300), || delivered(status) == 1),
        "the cut-off series was not delivered: {:?}",
        status_json(status)
    );
    let first = orthanc_srs(&orthanc);
    assert_eq!(first.len(), 1);
    // The rest arrives: version 2, superseding version 1.
    assert_eq!(send(port, &files[half..]).acked.len(), files.len() - half);
    assert!(
        wait_until(Duration::from_secs(300), || orthanc_srs(&orthanc).len()
            == 2
            && delivered(status) == 1),
        "version 2 was not delivered: {:?}",
        status_json(status)
    );
    serve.terminate();
    let srs = orthanc_srs(&orthanc);
    let (v1_uid, v1) = &first[0];
    let (_, v2) = srs.iter().find(|(u, _)| u != v1_uid).unwrap();
    assert!(v1.get("PredecessorDocumentsSequence").is_none());
    let predecessor = &v2["PredecessorDocumentsSequence"][0]["ReferencedSeriesSequence"][0];
    assert_eq!(
        predecessor["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"].as_str(),
        Some(v1_uid.as_str()),
        "version 2's SR references version 1's: {v2}"
    );
    assert_eq!(predecessor["SeriesInstanceUID"], v1["SeriesInstanceUID"]);
    assert_eq!(v2["SeriesNumber"], v1["SeriesNumber"]);
    // The summary image says so too, and the files are valid DICOM (dciodvfy).
    let q = cacd::queue::Queue::open(&data).unwrap();
    let rec = q.all_series().unwrap().pop().unwrap();
    drop(q);
    assert_eq!((rec.version, rec.supersedes), (2, Some(1)));
    let series_dir = cacd::store::Store::open(&data)
        .unwrap()
        .outbox_series_dir(&rec.study_uid, &rec.series_uid);
    let store_dir = series_dir.join("v2");
    let comments = dcm_value(&store_dir.join("summary.dcm"), "0020,4000").unwrap_or_default();
    assert!(
        comments.contains("supersedes result version 1"),
        "{comments}"
    );
    let dump = text(&run(
        Command::new("/usr/bin/dsrdump").arg(store_dir.join("sr.dcm"))
    ));
    assert!(dump.contains("Supersedes result version 1"), "{dump}");
    for f in ["sr.dcm", "summary.dcm"] {
        let out = run(Command::new("dciodvfy").arg(store_dir.join(f)));
        let errors: Vec<String> = text(&out)
            .lines()
            .filter(|l| l.starts_with("Error"))
            .map(String::from)
            .collect();
        assert!(errors.is_empty(), "{f}: {errors:?}");
    }
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store_dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["supersedes_version"], 1);
    // Marking again (a restart re-scores the same version) changes nothing.
    let earlier = dicom_object::open_file(series_dir.join("v1/sr.dcm")).unwrap();
    let earlier = cacd::encode::sr::Predecessor::of(&earlier, 1).unwrap();
    for (f, mark) in [
        (
            "sr.dcm",
            Box::new(|o: &mut dicom_object::DefaultDicomObject| {
                cacd::encode::sr::supersede(o, &earlier)
            }) as Box<dyn Fn(&mut dicom_object::DefaultDicomObject)>,
        ),
        (
            "summary.dcm",
            Box::new(|o: &mut dicom_object::DefaultDicomObject| {
                cacd::encode::summary::supersede(o, 2, 1).unwrap()
            }),
        ),
    ] {
        let path = store_dir.join(f);
        let mut o = dicom_object::open_file(&path).unwrap();
        mark(&mut o);
        let again = tmp.path().join(format!("again-{f}"));
        cacd::encode::write_dicom(&o, &again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&path).unwrap(),
            "{f}: marking twice differs"
        );
    }
    let headline = |v: &str| {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(series_dir.join(v).join("result.json")).unwrap())
                .unwrap();
        format!(
            "{} (Agatston {}, {})",
            r["status"],
            r["agatston_total"],
            r["reason"].as_str().unwrap_or("-")
        )
    };
    eprintln!(
        "broken peers: cut off after {half} of {} slices: version 1 delivered: {}; then version 2: \
         {}; the PACS holds 2 SRs, the second referencing the first",
        files.len(),
        headline("v1"),
        headline("v2")
    );
}
