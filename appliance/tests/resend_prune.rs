//! A scanner resends a delivered study while the disk is short: the receiver answers each
//! resent instance "already stored", and a prune for space runs between two of them (the race
//! the disk-full reliability test met by chance, made here on purpose). The series must stay
//! whole: pruning it under the sender would drop the instances just acknowledged and turn the
//! rest of the resend into a new series missing its first slices.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cacd::config::{Config, Destination};
use cacd::forward::{store_each, ScuOptions};
use cacd::health::Monitor;
use cacd::housekeeping::prune_for_space;
use cacd::phantom::{self, Burden, PhantomSpec};
use cacd::queue::{Queue, ScoringEnd, SeriesState};
use cacd::receive::{self, Receiver};
use cacd::store::Store;
use tokio::sync::watch;

/// A receiver on a free loopback port over `store` and `queue`; stops when the sender drops.
async fn receiver(
    data: &std::path::Path,
    store: Store,
    queue: Queue,
) -> (Destination, watch::Sender<bool>) {
    // The free-space watermark off: this test is about the prune race, and a nearly full
    // build disk (CI's is) must not turn its resend into A700 refusals.
    let cfg = Config::parse(&format!(
        "ae_title = \"CACD\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
         [receive]\nmin_free_bytes = 0\nmin_free_percent = 0.0\n\
         [[peer]]\nae = \"CT01\"\nhost = \"127.0.0.1\"\n",
        data.display()
    ))
    .unwrap();
    let rx =
        Arc::new(Receiver::new(Arc::new(cfg), store, queue, Arc::new(Monitor::default())).unwrap());
    let listener = receive::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, stop) = watch::channel(false);
    tokio::spawn(receive::run(listener, rx, stop, Duration::from_secs(5)));
    let dest = Destination {
        ae: "CACD".into(),
        host: "127.0.0.1".into(),
        port,
    };
    (dest, tx)
}

fn scanner() -> ScuOptions {
    ScuOptions {
        calling_ae: "CT01".into(),
        connect_timeout: Duration::from_secs(10),
        dimse_timeout: Duration::from_secs(30),
        max_pdu: 65536,
    }
}

/// Sends `files` over one association; every one must be acknowledged. Returns how many.
async fn send(dest: &Destination, files: &[PathBuf]) -> usize {
    let batch = store_each(&scanner(), dest, files).await;
    assert!(batch.stopped.is_none(), "{:?}", batch.stopped);
    assert!(batch.refused.is_empty(), "{:?}", batch.refused);
    batch.delivered.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_series_being_resent_is_not_pruned_under_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut spec = PhantomSpec::new(4700, Burden::Low);
    spec.slices = Some(6);
    // The CT series alone (no localizer), in the order the scanner sends it.
    let no_localizer = phantom::WriteOptions { localizer: false };
    let mut files: Vec<PathBuf> = phantom::write_study_with(
        &phantom::generate(&spec),
        &tmp.path().join("study"),
        &no_localizer,
    )
    .unwrap()
    .into_iter()
    .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
    .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    let queue = Queue::open(&data).unwrap();

    // Received yesterday (a store of its own, whose arrivals are long forgotten), then scored
    // and delivered.
    {
        let yesterday = Store::open(&data)
            .unwrap()
            .with_assembly_window(Duration::ZERO);
        let (dest, stop) = receiver(&data, yesterday, queue.clone()).await;
        assert_eq!(send(&dest, &files).await, files.len());
        let _ = stop.send(true);
    }
    let all = queue.all_series().unwrap();
    assert_eq!(all.len(), 1);
    let series = all[0].series_uid.clone();
    assert_eq!(
        queue.complete_quiet(Duration::ZERO).unwrap(),
        vec![series.clone()]
    );
    let s = queue.start_scoring().unwrap().unwrap();
    let end = ScoringEnd::Scored {
        results: Vec::new(),
        agatston_total: Some(1.0),
        not_scored: None,
        timings: None,
    };
    assert!(queue.finish_scoring(&series, s.generation, end).unwrap());
    queue.start_forwarding(&[]).unwrap();
    let delivered = queue.series(&series).unwrap().unwrap();
    assert_eq!(delivered.state, SeriesState::Delivered);
    assert_eq!(delivered.instances, files.len() as u64);

    // Today: the daemon's store (the quiet period as its assembly window) and a disk under any
    // watermark, so every finished series that may go goes.
    let store = Store::open(&data)
        .unwrap()
        .with_assembly_window(Duration::from_secs(60));
    let series_dir = store.series_dir(&delivered.study_uid, &series);
    let (dest, stop) = receiver(&data, store.clone(), queue.clone()).await;
    // The scanner resends: the first two instances are answered "already stored"...
    assert_eq!(send(&dest, &files[..2]).await, 2);
    // ...housekeeping prunes for space before the rest comes...
    assert_eq!(
        prune_for_space(&queue, &store, u64::MAX, 0.0).unwrap(),
        0,
        "a series being resent was pruned under its sender"
    );
    // ...and the rest are resends of stored instances too: nothing new, nothing lost.
    assert_eq!(send(&dest, &files[2..]).await, files.len() - 2);
    let after = queue.series(&series).unwrap().unwrap();
    assert_eq!(
        (after.state, after.instances, after.generation),
        (
            SeriesState::Delivered,
            delivered.instances,
            delivered.generation
        ),
        "the resend changed the series"
    );
    assert_eq!(
        std::fs::read_dir(&series_dir).unwrap().count(),
        files.len(),
        "acknowledged instances missing from disk"
    );
    let _ = stop.send(true);

    // Kept only because it was arriving: with its arrivals past the window (a store that
    // remembers none), the delivered series goes.
    let store = Store::open(&data)
        .unwrap()
        .with_assembly_window(Duration::ZERO);
    assert_eq!(prune_for_space(&queue, &store, u64::MAX, 0.0).unwrap(), 1);
    assert!(!series_dir.exists());
}
