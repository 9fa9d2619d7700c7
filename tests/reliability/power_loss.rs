//! Power loss: the data directory is on a loop-mounted ext4 image. At a random moment while a
//! series is being received and scored, the image is snapshotted as it stands — what reached
//! the "disk" and nothing of the page cache, which a power cut loses — and the daemon is killed.
//! The snapshot is mounted (ext4 replays its journal), the daemon starts on it: the redb
//! database must open, every instance acknowledged before the cut must be there, and once the
//! scanner resends, the series is delivered.
//!
//! The snapshot is atomic: the image lives on an XFS file system of its own (a loop image too)
//! and is cloned with a reflink (`cp --reflink=always`, FICLONE), which XFS performs under the
//! image's I/O lock — every write the loop device completed before the clone is in it, none
//! after, as a disk has them at the instant its power goes. Where `mkfs.xfs` is missing the
//! test falls back to a plain copy and says so (the kernel's journal thread could then write
//! during the copy). The daemon and its scoring worker are frozen (SIGSTOP) before the
//! snapshot, so nothing acknowledged after the cut is counted; the file system stays live, as
//! a power cut would find it; the ext4 mount uses `commit=300` so that only what cacd fsyncs is
//! forced to the image in the seconds the test runs (the kernel's own write-back, 30 s by
//! default, rarely fires that soon). Once, with only the daemon frozen, a series came back
//! `forwarding` with a result file missing and the daemon failed it; since then a missing
//! result file sends the series back to scoring (the outage suite tests that on its own) and
//! new outbox folders are fsynced into their parents.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use cacd::queue::SeriesState;
use cacd_e2e::*;

use crate::support::*;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The folder the disk images live in: an XFS file system of its own, so that a reflink clone
/// snapshots an image atomically; or, without `mkfs.xfs`, a plain folder (and a plain copy).
fn image_host(tmp: &std::path::Path) -> (std::path::PathBuf, Option<Mount>) {
    let img = tmp.join("host.img");
    let img_s = img.to_str().unwrap();
    if sh(&["truncate", "-s", "2G", img_s]) && sh(&["/usr/sbin/mkfs.xfs", "-q", img_s]) {
        if let Some(host) = Mount::new(&tmp.join("host"), &["-o", "loop", img_s]) {
            return (host.dir.clone(), Some(host));
        }
    }
    eprintln!(
        "power_loss: no XFS host for the images (install xfsprogs); the snapshot is a plain \
         copy, not atomic"
    );
    (tmp.to_path_buf(), None)
}

#[test]
fn power_cut_on_a_loop_mounted_ext4_keeps_every_acknowledged_instance() {
    let _serial = serial();
    if no_models() {
        return;
    }
    let mut rng = Rng::new(seed("power_loss"));
    let cycles = rounds(2, 12);
    let tmp = tempfile::tempdir().unwrap();
    let (images, host) = image_host(tmp.path());
    let clone = if host.is_some() {
        "--reflink=always"
    } else {
        "--sparse=always"
    };
    for cycle in 0..cycles {
        let dir = tmp.path().join(format!("cycle-{cycle}"));
        std::fs::create_dir_all(&dir).unwrap();
        let image = images.join(format!("disk-{cycle}.img"));
        let image_s = image.to_str().unwrap();
        assert!(sh(&["truncate", "-s", "400M", image_s]));
        if !sh(&["/usr/sbin/mkfs.ext4", "-q", "-F", image_s]) {
            eprintln!("skipped: mkfs.ext4 failed");
            return;
        }
        let Some(mut live) = Mount::new(&dir.join("live"), &["-o", "loop,commit=300", image_s])
        else {
            return;
        };
        let data = live.dir.join("data");
        let (port, status, recv_port) = (free_port(), free_port(), free_port());
        let cfg = config(&dir, &data, port, status, &[("RECV", recv_port)], "", "");
        let files = dicom_files(&phantom(&dir, 4300 + cycle as u64, 80));
        let serve = Serve::start(&cfg, port, &data);
        let sender = {
            let files = files.clone();
            std::thread::spawn(move || send(port, &files))
        };
        // Even cycles cut while the series is arriving, odd ones while it is scored and sent.
        let at = if cycle % 2 == 0 {
            20 + rng.below(400)
        } else {
            1500 + rng.below(5000)
        };
        std::thread::sleep(Duration::from_millis(at));

        // The cut: freeze the process (no acknowledgement after this instant), snapshot the
        // image as it stands, then kill.
        let pid = serve.child.id();
        assert!(sh(&["kill", "-STOP", &pid.to_string()]));
        // The scoring worker writes to the same disk (results, fsyncs that commit the
        // journal): frozen too, or the copy would mix moments no power cut could.
        let workers = children(pid);
        for w in &workers {
            sh(&["kill", "-STOP", &w.to_string()]);
        }
        let snapshot = images.join(format!("after-cut-{cycle}.img"));
        assert!(sh(&["cp", clone, image_s, snapshot.to_str().unwrap()]));
        serve.kill();
        // A stopped worker would never see its pipe close: end it, or the image stays busy.
        for w in &workers {
            sh(&["kill", "-KILL", &w.to_string()]);
        }
        let sent = sender.join().unwrap();
        let acked: BTreeSet<String> = sent.acked.iter().map(|f| sop_uid(f)).collect();
        live.unmount();

        // Power back: the copy is the disk.
        let Some(after) = Mount::new(
            &dir.join("after"),
            &["-o", "loop", snapshot.to_str().unwrap()],
        ) else {
            return;
        };
        let data = after.dir.join("data");
        let cfg = config(&dir, &data, port, status, &[("RECV", recv_port)], "", "");
        let receiver = Receiver::start(recv_port, &dir.join("received"));
        // Serve::start fails the test if the daemon cannot open its database and exits.
        let serve = Serve::start(&cfg, port, &data);
        let on_disk = stored_uids(&data);
        let lost: Vec<_> = acked.difference(&on_disk).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} of {} acknowledged instances lost",
            lost.len(),
            acked.len()
        );
        let resent = send(port, &files);
        assert!(resent.refused.is_empty(), "{:?}", resent.refused);
        assert!(
            wait_until(Duration::from_secs(300), || delivered(status) == 1),
            "cycle {cycle}: not delivered after the power came back"
        );
        std::thread::sleep(Duration::from_secs(1));
        serve.terminate();
        assert_eq!(states(&data), vec![SeriesState::Delivered]);
        assert_eq!(stored_uids(&data).len(), files.len());
        let copies = receiver.copies();
        assert!(final_result_uids(&data)
            .iter()
            .all(|u| copies.contains_key(u)));
        eprintln!(
            "power_loss cycle {cycle}: cut at {at} ms ({} snapshot); {} of {} instances \
             acknowledged before the cut, all present after it; {} on the image unacknowledged",
            if host.is_some() { "atomic" } else { "copied" },
            acked.len(),
            files.len(),
            on_disk.len() - acked.len().min(on_disk.len())
        );
        drop(after);
        // The XFS host is small: each cycle's images go once it is done.
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&snapshot);
    }
    drop(host);
}
