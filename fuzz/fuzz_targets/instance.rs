//! A received C-STORE instance, through the checks the daemon makes before acknowledging it:
//! `Store::begin` (file meta from the command) → `Incoming::write` (the dataset bytes as they
//! arrived) → `Incoming::finish` (parse up to Pixel Data, SOP class/instance, study/series).
//!
//! Input layout (see fuzz/README.md and make_corpus.py):
//!   byte 0: bit 7 = Enhanced CT (else CT) as the command's SOP class, bits 0-6 pick the
//!           command's transfer syntax among those the receiver accepts;
//!   byte 1: length L of the command's SOP Instance UID, then L bytes of it;
//!   rest:   the dataset, as the peer sent it in P-DATA.
#![no_main]

use std::sync::OnceLock;

use cacd::receive::accepted_transfer_syntaxes;
use cacd::store::{Store, StoreError, CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    store: Store,
    syntaxes: Vec<String>,
    // Kept alive for the process; scripts/fuzz points TMPDIR at a scratch folder it removes.
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir for the fuzz store");
        let store = Store::open(dir.path()).expect("open the fuzz store");
        Fixture {
            store,
            syntaxes: accepted_transfer_syntaxes(),
            _dir: dir,
        }
    })
}

/// FUZZ_SHOW=1: print each input's outcome (to check what the seeds reach).
fn show() -> bool {
    static SHOW: OnceLock<bool> = OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("FUZZ_SHOW").is_some())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&uid_len, rest)) = rest.split_first() else {
        return;
    };
    let uid_len = usize::from(uid_len).min(rest.len());
    let (uid, dataset) = rest.split_at(uid_len);
    let uid = String::from_utf8_lossy(uid);

    let f = fixture();
    let class = if selector & 0x80 != 0 {
        ENHANCED_CT_IMAGE_STORAGE
    } else {
        CT_IMAGE_STORAGE
    };
    let ts = &f.syntaxes[usize::from(selector & 0x7f) % f.syntaxes.len()];

    let mut incoming = match f.store.begin(class, &uid, ts) {
        Ok(i) => i,
        Err(StoreError::Invalid(_)) => return,
        Err(e @ StoreError::Io { .. }) => panic!("fuzz store I/O failed: {e}"),
    };
    // The receiver writes each P-DATA fragment as it comes; two writes cover the buffering.
    let (a, b) = dataset.split_at(dataset.len() / 2);
    if let Err(e) = incoming.write(a).and_then(|()| incoming.write(b)) {
        panic!("fuzz store I/O failed: {e}");
    }
    let result = incoming.finish();
    if show() {
        match &result {
            Ok(_) => eprintln!("instance: accepted"),
            Err(e) => eprintln!("instance: refused: {e}"),
        }
    }
    match result {
        Ok(staged) => {
            assert!(!staged.study_uid.is_empty() && !staged.series_uid.is_empty());
            staged.discard();
        }
        Err(StoreError::Invalid(_)) => {}
        Err(e @ StoreError::Io { .. }) => panic!("fuzz store I/O failed: {e}"),
    }
});
