//! Hostile peers from an allowed address (127.0.0.2, a peer CIDR block), before their AE title
//! is checked: a PDU declaring 4 GiB with bytes streaming after it (four at once), an invalid
//! PDU type with a huge length, command fragments that never end, item lengths past their PDU,
//! and twenty half-open connections held open while another address (127.0.0.1) sends a study.
//! Each must end with an A-ABORT at once, the other sender's study must be stored in full (and
//! delivered, where models are present), and the daemon's memory must stay under the bound its
//! `[receive]` limits state (`cacd check-config` prints it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacd_e2e::wire::*;
use cacd_e2e::*;

use crate::support::*;

/// The attacker's address, allowed by the `[[peer]]` CIDR block of the config below.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

/// Resident memory now (VmRSS), bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Sends `head`, then streams zeros after it (up to `stream` bytes, until the daemon closes)
/// on a thread of its own, while reading the daemon's answer. Returns (answer, bytes streamed,
/// time until the connection ended).
fn flood(port: u16, head: &[u8], stream: u64) -> (Option<(u8, Vec<u8>)>, u64, Duration) {
    let mut s = connect_from(ATTACKER, port).expect("connect from 127.0.0.2");
    let t = Instant::now();
    s.write_all(head).expect("header written");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < stream {
            match w.write(&chunk) {
                Ok(n) if n > 0 => sent += n as u64,
                _ => break,
            }
        }
        sent
    });
    let answer = read_pdu(&mut s);
    // The daemon closed after its answer: the writer fails within moments.
    let _ = s.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().unwrap_or(0);
    (answer, sent, t.elapsed())
}

/// An established association from 127.0.0.2 as CT02.
fn associate_attacker(port: u16) -> TcpStream {
    let mut s = connect_from(ATTACKER, port).expect("connect from 127.0.0.2");
    s.write_all(&associate_rq_with("CT02", &[(1, CT), (3, VERIFICATION)]))
        .unwrap();
    let (kind, _) = read_pdu(&mut s).expect("an answer to A-ASSOCIATE-RQ");
    assert_eq!(kind, 0x02, "CT02 from 127.0.0.2 is an allowed peer");
    s
}

fn metric(status: u16, name: &str) -> u64 {
    let out = std::process::Command::new("/usr/bin/curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:{status}/metrics"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_peers_from_an_allowed_address_cannot_take_the_box_down() {
    let _serial = serial();
    let models = models_present();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (port, status, recv_port) = (free_port(), free_port(), free_port());
    // The [receive] defaults (the limits under test) with the test watermark.
    let cfg = config(
        tmp.path(),
        &data,
        port,
        status,
        &[("RECV", recv_port)],
        "",
        "[[peer]]\nae = \"CT02\"\nhost = \"127.0.0.0/29\"\n",
    );
    let check = run(std::process::Command::new(cacd_bin())
        .arg("check-config")
        .arg(&cfg));
    let stated = text(&check);
    assert!(check.status.success(), "{stated}");
    // "receive memory bound: 1496 KiB per association, 128 KiB per pending connection, 20 MiB in all"
    let bound_mib: u64 = stated
        .lines()
        .find_map(|l| {
            l.strip_prefix("receive memory bound:")?
                .split(',')
                .nth(2)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("check-config states the memory bound");
    let receiver = Receiver::start(recv_port, &tmp.path().join("received"));
    let serve = Serve::start(&cfg, port, &data);
    let pid = serve.child.id();
    assert!(echo(port));
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss(pid);

    // 1. A-ASSOCIATE-RQ declaring 4 GiB, 512 MiB streamed after it; then four at once.
    let mut rq = associate_rq();
    rq[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    let (answer, sent, took) = flood(port, &rq[..6], (rounds(512, 2048) as u64) << 20);
    let answer = answer.expect("an answer, not a bare close");
    assert_eq!(
        abort_reason(&answer),
        Some((2, 6)),
        "A-ABORT (provider, invalid parameter)"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!(
        "hostile: 4 GiB A-ASSOCIATE-RQ: A-ABORT after {} ms, {} MiB streamed before the close",
        took.as_millis(),
        sent >> 20
    );
    let four: Vec<_> = (0..4)
        .map(|_| {
            let rq = rq.clone();
            std::thread::spawn(move || flood(port, &rq[..6], 512 << 20))
        })
        .collect();
    for h in four {
        let (a, _, took) = h.join().unwrap();
        assert_eq!(a.as_ref().and_then(abort_reason), Some((2, 6)));
        assert!(took < Duration::from_secs(5));
    }
    // ... and a P-DATA-TF declaring 4 GiB inside an association, bytes streaming after it.
    {
        let mut s = associate_attacker(port);
        let mut pd = vec![0x04, 0];
        pd.extend_from_slice(&u32::MAX.to_be_bytes());
        s.write_all(&pd).unwrap();
        let _ = s.write_all(&vec![0u8; 8 << 20]);
        let answer = read_pdu(&mut s);
        assert_eq!(
            answer.as_ref().and_then(abort_reason),
            Some((2, 6)),
            "{answer:?}"
        );
    }

    // 2. An invalid PDU type with a huge length: A-ABORT, unrecognized PDU.
    let (answer, sent, took) = flood(port, &[0x4A, 0, 0xFF, 0xFF, 0xFF, 0xF0], 256 << 20);
    assert_eq!(answer.as_ref().and_then(abort_reason), Some((2, 1)));
    eprintln!(
        "hostile: PDU type 0x4A of 4 GiB: A-ABORT after {} ms, {} MiB streamed",
        took.as_millis(),
        sent >> 20
    );

    // 3. Command fragments that never end (190 MiB of "command, not last", 4 kB each).
    {
        let mut s = associate_attacker(port);
        let fragment = p_data(true, false, &[0x55u8; 4000]);
        let t = Instant::now();
        let mut sent = 0u64;
        while sent < (rounds(190, 1024) as u64) << 20 {
            if s.write_all(&fragment).is_err() {
                break;
            }
            sent += fragment.len() as u64;
        }
        let answer = read_pdu(&mut s);
        // The A-ABORT may be lost to the reset our own writes cause after the close; what
        // matters is that the daemon stopped reading after the first fragments.
        if let Some(a) = &answer {
            assert_eq!(abort_reason(a), Some((2, 6)), "{a:?}");
        }
        assert!(
            sent < 64 << 20,
            "the daemon kept reading command fragments: {} MiB",
            sent >> 20
        );
        eprintln!(
            "hostile: endless command fragments: closed after {} MiB, {} ms",
            sent >> 20,
            t.elapsed().as_millis()
        );
    }

    // 4. Item lengths past their PDU: a presentation-context item in the A-ASSOCIATE-RQ, and
    //    a PDV item in a P-DATA-TF.
    {
        let mut rq = associate_rq();
        let pc_at = 6 + 68 + 4 + "1.2.840.10008.3.1.1.1".len();
        assert_eq!(rq[pc_at], 0x20, "the first presentation-context item");
        rq[pc_at + 2..pc_at + 4].copy_from_slice(&0xFFF0u16.to_be_bytes());
        let mut s = connect_from(ATTACKER, port).unwrap();
        s.write_all(&rq).unwrap();
        assert_eq!(
            read_pdu(&mut s).as_ref().and_then(abort_reason),
            Some((2, 6))
        );
        let mut s = associate_attacker(port);
        let mut pd = p_data(true, true, &c_store_rq("1.2.3.4.5.6.7"));
        pd[6..10].copy_from_slice(&0x00FF_FFFFu32.to_be_bytes());
        s.write_all(&pd).unwrap();
        assert_eq!(
            read_pdu(&mut s).as_ref().and_then(abort_reason),
            Some((2, 6))
        );
        // Even presentation-context IDs are refused too.
        let mut s = connect_from(ATTACKER, port).unwrap();
        s.write_all(&associate_rq_with("CT02", &[(2, CT)])).unwrap();
        assert_eq!(
            read_pdu(&mut s).as_ref().and_then(abort_reason),
            Some((2, 6))
        );
    }

    // 5. Twenty half-open connections from 127.0.0.2 (20 bytes of an A-ASSOCIATE-RQ each),
    //    renewed as they time out, while 127.0.0.1 sends a study.
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rq = associate_rq();
            let mut opened = 0u32;
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.retain_mut(|s| {
                    // Closed by the daemon (request timeout, or over the per-source cap)?
                    s.set_nonblocking(true).ok();
                    let mut b = [0u8; 16];
                    let alive = matches!(s.read(&mut b),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                    s.set_nonblocking(false).ok();
                    alive
                });
                while held.len() < 20 {
                    match connect_from(ATTACKER, port) {
                        Ok(mut s) => {
                            let _ = s.write_all(&rq[..20]);
                            held.push(s);
                            opened += 1;
                        }
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let files = dicom_files(&phantom(tmp.path(), 4900, 30));
    let t = Instant::now();
    let sent = send(port, &files);
    let send_s = t.elapsed().as_secs_f64();
    // Keep the flood going past a request timeout, with a C-ECHO from 127.0.0.1 after it.
    std::thread::sleep(Duration::from_secs(6));
    let echo_ok = echo(port);
    stop.store(true, Ordering::Relaxed);
    let opened = holder.join().unwrap_or(0);
    assert_eq!(sent.acked.len(), files.len(), "{:?}", sent.refused);
    assert!(
        echo_ok,
        "127.0.0.1 locked out by 127.0.0.2's half-open connections"
    );
    assert!(opened > 20, "half-open connections were renewed ({opened})");
    eprintln!(
        "hostile: {opened} half-open connections from 127.0.0.2; 127.0.0.1's {} instances acknowledged in {send_s:.1} s",
        files.len()
    );

    // What the status port counted.
    let violations = |r: &str| {
        metric(
            status,
            &format!("cacd_receive_violations_total{{reason=\"{r}\"}}"),
        )
    };
    let refused = |r: &str| {
        metric(
            status,
            &format!("cacd_connections_refused_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(violations("associate_rq_too_long") >= 5);
    assert!(violations("pdu_too_long") >= 1);
    assert!(violations("unknown_pdu_type") >= 1);
    assert!(violations("command_too_long") >= 1);
    assert!(violations("item_length") >= 2);
    assert!(violations("invalid_parameter") >= 1);
    assert!(
        refused("pending_per_source") >= 1,
        "the per-source cap held"
    );
    assert!(refused("request_timeout") >= 1);

    let peak = peak_rss(pid).unwrap_or(0);
    let growth = peak.saturating_sub(baseline);
    // The bound covers the peers' bytes; the allowance covers the daemon's own work beside
    // them (one instance stored at a time, tokio and allocator bookkeeping).
    let limit = (bound_mib + 24) << 20;
    eprintln!(
        "hostile: peak RSS {} MiB, baseline {} MiB, growth {} MiB (stated bound {bound_mib} MiB + 24 MiB allowance)",
        peak >> 20,
        baseline >> 20,
        growth >> 20
    );
    assert!(
        growth < limit,
        "memory grew by {} MiB under attack",
        growth >> 20
    );
    assert!(files_below(&data.join("tmp")).is_empty(), "temp files left");
    assert_eq!(
        stored_uids(&data).len(),
        files.len(),
        "only the real study stored"
    );

    if !models {
        eprintln!("hostile: no models: delivery not checked (the study was stored in full)");
        serve.terminate();
        return;
    }
    assert!(
        wait_until(Duration::from_secs(300), || delivered(status) == 1),
        "127.0.0.1's study was not delivered: {:?}",
        status_json(status)
    );
    serve.terminate();
    let copies = receiver.copies();
    let results = final_result_uids(&data);
    assert!(!results.is_empty() && results.iter().all(|u| copies.contains_key(u)));
    eprintln!(
        "hostile: 127.0.0.1's study scored and delivered ({} result objects at the receiver)",
        results.len()
    );
}
