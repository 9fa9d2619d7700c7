//! The C-STORE SCU of `forward` against real peers: DCMTK storescp and Orthanc receive what it
//! sends; an unknown called AE is a permanent failure, a closed port a transient one.

use std::time::Duration;

use cacd::config::Destination;
use cacd::forward::{store_files, ScuOptions, SendError};
use cacd_e2e::*;

fn opts() -> ScuOptions {
    ScuOptions {
        calling_ae: "CACD".into(),
        connect_timeout: Duration::from_secs(5),
        dimse_timeout: Duration::from_secs(30),
        max_pdu: 16384,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn stores_to_storescp_and_orthanc_and_classifies_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let study = phantom(tmp.path(), 21, 6);
    let files = dicom_files(&study);
    let rt = rt();

    // DCMTK storescp gets every object, byte-identical UIDs.
    let port = free_port();
    let recv = tmp.path().join("storescp");
    let scp = StoreScp::start(port, &recv);
    let dest = Destination {
        ae: "RECV".into(),
        host: "127.0.0.1".into(),
        port,
    };
    rt.block_on(store_files(&opts(), &dest, &files)).unwrap();
    let got = files_below(&recv);
    assert_eq!(got.len(), files.len());
    let study_uid = dcm_value(&files[0], "0020,000d").unwrap();
    assert!(got
        .iter()
        .all(|f| dcm_value(f, "0020,000d").as_deref() == Some(study_uid.as_str())));
    drop(scp);

    // Nobody listening: transient (retry later).
    let closed = Destination {
        ae: "RECV".into(),
        host: "127.0.0.1".into(),
        port,
    };
    assert!(matches!(
        rt.block_on(store_files(&opts(), &closed, &files)),
        Err(SendError::Transient(_))
    ));

    // Orthanc: a wrong called AE is refused permanently; the right one stores the study.
    let orthanc = Orthanc::start(&tmp.path().join("orthanc"), free_port());
    let wrong = Destination {
        ae: "NOT-ORTHANC".into(),
        host: "127.0.0.1".into(),
        port: orthanc.dicom_port,
    };
    let e = rt
        .block_on(store_files(&opts(), &wrong, &files))
        .unwrap_err();
    assert!(matches!(e, SendError::Permanent(_)), "{e}");
    let right = Destination {
        ae: "ORTHANC".into(),
        host: "127.0.0.1".into(),
        port: orthanc.dicom_port,
    };
    rt.block_on(store_files(&opts(), &right, &files)).unwrap();
    let studies = orthanc.get("/studies").unwrap();
    assert_eq!(studies.as_array().map(|a| a.len()), Some(1));
    let id = studies[0].as_str().unwrap();
    let s = orthanc.get(&format!("/studies/{id}")).unwrap();
    assert_eq!(
        s["MainDicomTags"]["StudyInstanceUID"].as_str(),
        Some(study_uid.as_str())
    );
}
