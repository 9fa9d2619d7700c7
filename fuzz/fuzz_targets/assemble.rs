//! Volume assembly from 1-4 files: `cacd::assemble::assemble_with_stats` must return a volume
//! or a typed refusal, never panic, abort, hang or allocate without bound.
//!
//! Input layout (see fuzz/README.md and make_corpus.py):
//!   byte 0: number of files n = 1 + (byte 0 % 4);
//!   then, for each of the first n-1 files, a u32 little-endian length (clamped to what is
//!   left) followed by that many bytes; the last file takes the rest.
//! Files are written as f0.dcm .. f3.dcm into one folder, which is the only input.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const MAX_FILES: usize = 4;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Kept for the process; scripts/fuzz points TMPDIR at a scratch folder it removes.
        tempfile::tempdir()
            .expect("temp dir for the fuzz inputs")
            .keep()
    })
}

/// FUZZ_SHOW=1: print each input's outcome (to check what the seeds reach).
fn show() -> bool {
    static SHOW: OnceLock<bool> = OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("FUZZ_SHOW").is_some())
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let Some((&first, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let n = 1 + usize::from(first) % MAX_FILES;
    let mut files = Vec::with_capacity(n);
    for _ in 1..n {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = (u32::from_le_bytes(*len) as usize).min(tail.len());
        let (file, tail) = tail.split_at(len);
        files.push(file);
        rest = tail;
    }
    files.push(rest);
    files
}

fuzz_target!(
    init: {
        // One rayon worker, not one per core: steadier runs beside the other CI jobs.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
        // libfuzzer-sys aborts on every panic, even one the product catches on purpose (the
        // decoder runs third-party codecs under catch_unwind and refuses the series). Report
        // a panic without aborting; one that escapes assemble still aborts in libfuzzer-sys's
        // own catch_unwind around each input, so it is found. Message and location only: a
        // backtrace per caught codec panic would cost about a second each.
        std::panic::set_hook(Box::new(|info| {
            static SHOWN: AtomicUsize = AtomicUsize::new(0);
            if SHOWN.fetch_add(1, Ordering::Relaxed) < 10 {
                eprintln!("panic (a caught one is refused as Undecodable): {info}");
            }
        }));
    },
    |data: &[u8]| {
        let dir = dir();
        for i in 0..MAX_FILES {
            let _ = fs::remove_file(dir.join(format!("f{i}.dcm")));
        }
        for (i, bytes) in split(data).into_iter().enumerate() {
            fs::write(dir.join(format!("f{i}.dcm")), bytes).expect("write a fuzz input file");
        }
        let result = cacd::assemble::assemble_with_stats(std::slice::from_ref(dir));
        if show() {
            match &result {
                Ok(a) => eprintln!("assemble: volume {:?}", a.volume.hu.shape()),
                Err(e) => eprintln!("assemble: refused: {}", e.reason()),
            }
        }
        match result {
            Ok(a) => {
                let v = &a.volume;
                assert_eq!(v.hu.shape()[0], v.sop_instance_uids.len());
                assert_eq!(v.hu.shape()[0], v.source_frames.len());
            }
            Err(e) => {
                // The one-line reason is what result.json and the CLI show; it must not panic.
                let _ = e.reason();
            }
        }
    }
);
