//! Malformed input on the wire: random bytes, truncated PDUs, wrong and huge declared lengths
//! (a 4 GB PDU, a 4 GB element), an association abandoned mid-instance, connections that send
//! nothing. The daemon must keep serving other associations, store nothing it did not
//! acknowledge, leave no temp files behind, and keep its memory bounded.
//!
//! The PDUs are built by hand here (PS3.8 §9.3): a DICOM library would refuse to produce them.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cacd_e2e::wire::*;
use cacd_e2e::*;

use crate::support::*;

/// A CT dataset in which `tag` (a long-form VR `vr`) declares `declared` bytes but 64 follow.
fn lying_dataset(sop_instance: &str, tag: (u16, u16), vr: &[u8; 2], declared: u32) -> Vec<u8> {
    let mut d = explicit(0x0008, 0x0016, b"UI", &padded_uid(CT));
    d.extend(explicit(0x0008, 0x0018, b"UI", &padded_uid(sop_instance)));
    d.extend(explicit(0x0008, 0x0060, b"CS", b"CT"));
    d.extend(explicit(0x0020, 0x000D, b"UI", &padded_uid("1.2.3.4.5")));
    d.extend(explicit(0x0020, 0x000E, b"UI", &padded_uid("1.2.3.4.5.6")));
    d.extend_from_slice(&tag.0.to_le_bytes());
    d.extend_from_slice(&tag.1.to_le_bytes());
    d.extend_from_slice(vr);
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&declared.to_le_bytes());
    d.extend_from_slice(&[0x55; 64]);
    d
}

#[test]
fn malformed_wire_input_is_refused_and_the_daemon_keeps_serving_in_bounded_memory() {
    let _serial = serial();
    let mut rng = Rng::new(seed("malformed"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status) = (free_port(), free_port());
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[],
        "read_timeout_s = 3\nidle_timeout_s = 3\nmin_free_bytes = 1048576\nmin_free_percent = 0.0",
        "",
    );
    let serve = Serve::start(&cfg, port, &data);
    let pid = serve.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let baseline = peak_rss(pid).unwrap_or(0);
    let mut cases = 0;

    // 1. Random bytes.
    for _ in 0..rounds(40, 2000) {
        let mut s = connect(port);
        let n = 1 + rng.below(8192) as usize;
        let _ = s.write_all(&rng.bytes(n));
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = read_pdu(&mut s);
        cases += 1;
    }
    // 2. An A-ASSOCIATE-RQ declaring 4 GB, then the connection goes away.
    for _ in 0..3 {
        let mut s = connect(port);
        let mut rq = associate_rq();
        rq[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        let _ = s.write_all(&rq);
        let _ = read_pdu(&mut s);
        cases += 1;
    }
    // 3. Truncated A-ASSOCIATE-RQs at every length class.
    let rq = associate_rq();
    for cut in [1, 5, 6, 10, 74, rq.len() / 2, rq.len() - 1] {
        let mut s = connect(port);
        let _ = s.write_all(&rq[..cut]);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = read_pdu(&mut s);
        cases += 1;
    }
    // 4. An association, then a P-DATA-TF declaring 4 GB and stalling.
    {
        let mut s = associate(port);
        let mut pd = vec![0x04, 0];
        pd.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        pd.extend_from_slice(&[0; 32]);
        let _ = s.write_all(&pd);
        let t = Instant::now();
        let _ = read_pdu(&mut s);
        assert!(
            t.elapsed() < Duration::from_secs(14),
            "a stalled PDU held the association"
        );
        cases += 1;
    }
    // 5. C-STOREs whose dataset declares a 4 GB (or 2 GB) element and carries 64 bytes: pixel
    //    data (after which the store used to stop reading, and acknowledged), and a text
    //    element before it (which the parser would zero-fill to its declared size first).
    let lies: [((u16, u16), &[u8; 2], u32); 3] = [
        ((0x7FE0, 0x0010), b"OW", 0xFFFF_FFF0),
        ((0x7FE0, 0x0010), b"OW", 0x7FFF_FFFF),
        ((0x0040, 0xA160), b"UT", 0xFFFF_FFF0),
    ];
    for (i, (tag, vr, declared)) in lies.into_iter().enumerate() {
        let uid = format!("1.2.3.4.5.6.{}", 100 + i);
        let mut s = associate(port);
        s.write_all(&p_data(true, true, &c_store_rq(&uid))).unwrap();
        s.write_all(&p_data(
            false,
            true,
            &lying_dataset(&uid, tag, vr, declared),
        ))
        .unwrap();
        let answer = read_pdu(&mut s);
        if let Some((0x04, body)) = &answer {
            let st = store_status(body).expect("a C-STORE-RSP");
            assert_ne!(st, 0, "an instance with a lying length was acknowledged");
        }
        assert!(!stored_uids(&data).contains(&uid));
        cases += 1;
    }
    // 6. An instance abandoned mid-transfer: 16 MiB of fragments, then the connection drops.
    {
        let mut s = associate(port);
        s.write_all(&p_data(true, true, &c_store_rq("1.2.3.4.5.6.200")))
            .unwrap();
        let chunk = vec![0u8; 16000];
        for _ in 0..1000 {
            if s.write_all(&p_data(false, false, &chunk)).is_err() {
                break;
            }
        }
        drop(s);
        cases += 1;
    }
    // 7. Connections that never speak, while a real sender works beside them.
    let silent: Vec<TcpStream> = (0..4).map(|_| connect(port)).collect();
    let files = dicom_files(&phantom(tmp.path(), 4700, 12));
    let sent = send(port, &files);
    assert_eq!(sent.acked.len(), files.len(), "{:?}", sent.refused);
    drop(silent);
    cases += 1;

    std::thread::sleep(Duration::from_secs(4));
    assert!(echo(port), "the daemon stopped answering");
    let tmp_left: Vec<_> = files_below(&data.join("tmp"));
    assert!(tmp_left.is_empty(), "temp files left behind: {tmp_left:?}");
    assert_eq!(
        stored_uids(&data).len(),
        files.len(),
        "only the real instances stored"
    );
    let peak = peak_rss(pid).unwrap_or(0);
    serve.terminate();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "malformed: {cases} malformed connections; peak RSS {} MiB (baseline {} MiB)",
        peak >> 20,
        baseline >> 20
    );
    assert!(
        growth < 256 << 20,
        "memory grew by {} MiB under malformed input",
        growth >> 20
    );
}
