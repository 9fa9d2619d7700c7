//! Durable instance store: `data/studies/<study>/<series>/<sop>.dcm`.
//!
//! An instance is streamed into a temp file under `data/tmp/` (preamble, file meta built from the
//! C-STORE command, then the dataset bytes exactly as they arrived), fsynced, checked, renamed into
//! place and its directory fsynced. Only after that does the SCP answer 0x0000, so an
//! acknowledged instance survives a power cut.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};
use sha2::{Digest, Sha256};

use crate::fsutil;

/// CT Image Storage and Enhanced CT Image Storage: the only SOP classes we take.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
pub const ACCEPTED_SOP_CLASSES: [&str; 2] = [CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE];

/// Implementation identity written into the file meta of stored instances.
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1481.1";
pub const IMPLEMENTATION_VERSION: &str = "CACD";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing failed (disk full, I/O error): the instance is not stored; answer A700.
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The data cannot be what it claims: answer C000-class.
    #[error("invalid instance: {0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Short, stable stand-in for a UID in logs (no patient-linkable identifiers in log lines).
pub fn uid_hash(uid: &str) -> String {
    let digest = Sha256::digest(uid.trim_end_matches(['\0', ' ']).as_bytes());
    hex::encode(&digest[..6])
}

/// A UID as a single path component: UIDs are digits and dots; anything else is replaced, and
/// a hash suffix keeps replaced names from colliding.
pub fn sanitize_uid(uid: &str) -> String {
    let uid = uid.trim_end_matches(['\0', ' ']);
    let clean: String = uid
        .chars()
        .map(|c| match c {
            '0'..='9' | 'a'..='z' | 'A'..='Z' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .take(96)
        .collect();
    if clean == uid && !clean.is_empty() && clean != "." && clean != ".." {
        clean
    } else {
        format!("x{}-{}", clean.replace('.', "_"), uid_hash(uid))
    }
}

/// The instance store rooted at the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Admitting an instance (duplicate check, rename into place, queue record) holds this
    /// shared; pruning holds it exclusively, so a delivered series is never removed while an
    /// instance of it is being admitted (it would be acknowledged and then deleted).
    admission: Arc<RwLock<()>>,
    /// When an instance of each series last arrived (stored or a resend of a stored one), for
    /// the series that had one within `assembly_window`: housekeeping never removes those.
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    /// How long after its last instance a series counts as still arriving: the quiet period
    /// (`quiet_period_s`) after which a series is taken as complete.
    assembly_window: Duration,
}

/// The assembly window of a store nobody configured: the default `quiet_period_s`.
pub const DEFAULT_ASSEMBLY_WINDOW: Duration = Duration::from_secs(30);

/// A temp file under `data/tmp/` that removes itself when dropped, unless it was moved into
/// place: every way out of receiving an instance (a failed write, a refusal, an aborted
/// association, a panic in a blocking task) leaves no `.part` file behind.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The path, no longer removed on drop (it was renamed away).
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// An instance whose bytes are being written to a temp file (removed if it is dropped).
pub struct Incoming {
    tmp: TempFile,
    file: BufWriter<File>,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: String,
    /// Where the dataset starts (after the preamble and the file meta group).
    dataset_offset: u64,
}

/// An instance checked and fsynced in its temp file, ready to be moved into place (the temp
/// file is removed if it is dropped instead).
#[derive(Debug)]
pub struct Staged {
    tmp: TempFile,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
}

impl Store {
    /// Opens (creating) the store under `data_dir`; leftover temp files of a crash are removed
    /// (their instances were never acknowledged).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: data_dir.to_path_buf(),
            admission: Arc::new(RwLock::new(())),
            arrivals: Arc::new(Mutex::new(HashMap::new())),
            assembly_window: DEFAULT_ASSEMBLY_WINDOW,
        };
        for dir in [store.studies_dir(), store.tmp_dir(), store.outbox_dir()] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = store.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Held while one instance is admitted (see the `admission` field).
    pub fn admitting(&self) -> RwLockReadGuard<'_, ()> {
        self.admission.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held while series are pruned; no instance is admitted meanwhile.
    pub fn pruning(&self) -> RwLockWriteGuard<'_, ()> {
        self.admission.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The same store, counting a series as still arriving for `window` after its last
    /// instance (the daemon passes its quiet period).
    pub fn with_assembly_window(mut self, window: Duration) -> Store {
        self.assembly_window = window;
        self
    }

    /// An instance of `series_uid` arrived: a new one, or a resend of one already stored. The
    /// receiver calls this while it holds [`Store::admitting`], in the same critical section
    /// that decides New or Duplicate, so a prune (which holds [`Store::pruning`] and asks
    /// [`Store::arriving`]) either ran before the decision (the instance is then new and
    /// stored) or sees the series as arriving and keeps it. A resend acknowledged as a
    /// duplicate therefore never loses its stored copy to a prune while the rest of the
    /// series is still coming.
    pub fn arrived(&self, series_uid: &str) {
        let now = Instant::now();
        let window = self.assembly_window;
        let mut a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        // Only series inside the window are kept: the map stays as small as what is arriving.
        a.retain(|_, t| now.duration_since(*t) < window);
        if !window.is_zero() {
            a.insert(series_uid.to_string(), now);
        }
    }

    /// Whether an instance of `series_uid` arrived within the assembly window: its sender may
    /// still be sending the rest of it, so housekeeping must not remove it now.
    pub fn arriving(&self, series_uid: &str) -> bool {
        let a = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        a.get(series_uid)
            .is_some_and(|t| t.elapsed() < self.assembly_window)
    }

    pub fn studies_dir(&self) -> PathBuf {
        self.root.join("studies")
    }
    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn series_dir(&self, study_uid: &str, series_uid: &str) -> PathBuf {
        self.studies_dir()
            .join(sanitize_uid(study_uid))
            .join(sanitize_uid(series_uid))
    }

    pub fn study_dir(&self, study_uid: &str) -> PathBuf {
        self.studies_dir().join(sanitize_uid(study_uid))
    }

    /// Where the results of one series (one folder per result version) are written.
    pub fn outbox_series_dir(&self, study_uid: &str, series_uid: &str) -> PathBuf {
        self.outbox_dir()
            .join(sanitize_uid(study_uid))
            .join(sanitize_uid(series_uid))
    }

    /// The folder of one result version of a series (`result.json`, SEG, SR, summary): the one
    /// place that knows the result folder layout.
    pub fn result_dir(&self, study_uid: &str, series_uid: &str, version: u32) -> PathBuf {
        self.outbox_series_dir(study_uid, series_uid)
            .join(format!("v{version}"))
    }

    /// Starts a temp file for an instance announced by a C-STORE command.
    pub fn begin(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
    ) -> Result<Incoming, StoreError> {
        let sop_class_uid = sop_class_uid.trim_end_matches(['\0', ' ']).to_string();
        let sop_instance_uid = sop_instance_uid.trim_end_matches(['\0', ' ']).to_string();
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid.as_str())
            .media_storage_sop_instance_uid(sop_instance_uid.as_str())
            .transfer_syntax(transfer_syntax)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION)
            .build()
            .map_err(|e| StoreError::Invalid(format!("file meta: {e}")))?;
        let unique = format!(
            "{}-{}-{:x}.part",
            std::process::id(),
            uid_hash(&sop_instance_uid),
            rand::random::<u64>()
        );
        let path = self.tmp_dir().join(unique);
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        meta.write(&mut head)
            .map_err(|e| StoreError::Invalid(format!("file meta: {e}")))?;
        let file = File::create(&path).map_err(io(&path))?;
        let tmp = TempFile(Some(path));
        let mut file = BufWriter::with_capacity(crate::config::FILE_BUFFER_BYTES, file);
        file.write_all(&head).map_err(io(tmp.path()))?;
        Ok(Incoming {
            tmp,
            file,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax: transfer_syntax.trim_end_matches(['\0', ' ']).to_string(),
            dataset_offset: head.len() as u64,
        })
    }

    /// Moves a staged instance into `studies/<study>/<series>/<sop>.dcm` and fsyncs the
    /// directories it touched. Replaces an earlier copy of the same instance.
    pub fn commit(&self, staged: Staged) -> Result<PathBuf, StoreError> {
        let dir = self.series_dir(&staged.study_uid, &staged.series_uid);
        // Paths hold UIDs: errors name hashes instead, so log lines carry no identifiers.
        let label = PathBuf::from(format!(
            "studies/{}/{}",
            uid_hash(&staged.study_uid),
            uid_hash(&staged.series_uid)
        ));
        fsutil::create_dir_durable(&dir).map_err(io(&label))?;
        let dest = dir.join(format!("{}.dcm", sanitize_uid(&staged.sop_instance_uid)));
        fs::rename(staged.tmp.path(), &dest).map_err(io(&label))?;
        staged.tmp.keep();
        fsutil::fsync_dir(&dir).map_err(io(&label))?;
        Ok(dest)
    }

    /// Free bytes and free percentage of the file system holding the store.
    pub fn free_space(&self) -> Result<(u64, f64), StoreError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| StoreError::Io {
            path: self.root.display().to_string(),
            source: e.into(),
        })?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let total = st.f_blocks.saturating_mul(st.f_frsize).max(1);
        Ok((free, free as f64 * 100.0 / total as f64))
    }

    /// Whether there is room for more instances under the configured watermark.
    pub fn has_room(&self, min_free_bytes: u64, min_free_percent: f64) -> bool {
        match self.free_space() {
            Ok((bytes, pct)) => bytes >= min_free_bytes && pct >= min_free_percent,
            Err(_) => false,
        }
    }
}

impl Incoming {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(io(self.tmp.path()))
    }

    /// Drops the temp file (a failed or aborted transfer); dropping does the same.
    pub fn discard(self) {}

    /// Flushes and fsyncs the temp file, then checks the dataset: it must parse, be the SOP
    /// class and instance the command announced, be CT, and carry valid study and series UIDs.
    /// On any error the temp file is gone.
    pub fn finish(self) -> Result<Staged, StoreError> {
        let Incoming {
            tmp,
            file,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax,
            dataset_offset,
        } = self;
        let path = tmp.path();
        let file = file.into_inner().map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(path))?;
        drop(file);
        check_lengths(path, dataset_offset, &transfer_syntax)?;
        let (study_uid, series_uid) = check_instance(path, &sop_class_uid, &sop_instance_uid)?;
        Ok(Staged {
            tmp,
            study_uid,
            series_uid,
            sop_instance_uid,
        })
    }
}

impl Staged {
    /// Drops the temp file (e.g. a duplicate that is already stored); dropping does the same.
    pub fn discard(self) {}
}

/// Deflated datasets are inflated for the walk; this caps what a small deflate bomb can make
/// the walk read (a CT instance is a few MB; an Enhanced CT series a few hundred).
const MAX_INFLATED: u64 = 4 << 30;

/// Every declared length must fit before the dataset is parsed (see `lengths`).
fn check_lengths(path: &Path, offset: u64, transfer_syntax: &str) -> Result<(), StoreError> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(io(path))?;
    f.seek(SeekFrom::Start(offset)).map_err(io(path))?;
    let r = BufReader::with_capacity(64 * 1024, f);
    let invalid = |e: crate::lengths::LengthError| StoreError::Invalid(format!("dataset: {e}"));
    if transfer_syntax == DEFLATED_EXPLICIT_LE {
        let mut inflated = flate2::read::DeflateDecoder::new(r).take(MAX_INFLATED);
        crate::lengths::check(&mut inflated, crate::lengths::Encoding::of(transfer_syntax))
            .map_err(invalid)
    } else {
        let mut r = r;
        crate::lengths::check(&mut r, crate::lengths::Encoding::of(transfer_syntax))
            .map_err(invalid)
    }
}

const DEFLATED_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1.99";

fn check_instance(
    path: &Path,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<(String, String), StoreError> {
    if !ACCEPTED_SOP_CLASSES.contains(&sop_class_uid) {
        return Err(StoreError::Invalid(format!(
            "SOP class {sop_class_uid} is not CT image storage"
        )));
    }
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| StoreError::Invalid(format!("dataset does not parse: {e}")))?;
    let get = |tag, name: &str| -> Result<String, StoreError> {
        let v = obj
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default();
        if v.is_empty() {
            Err(StoreError::Invalid(format!("missing {name}")))
        } else {
            Ok(v)
        }
    };
    let uid = |tag, name: &str| -> Result<String, StoreError> {
        let v = get(tag, name)?;
        crate::uid::check(&v).map_err(|e| StoreError::Invalid(format!("{name} {e}")))?;
        Ok(v)
    };
    let class = get(tags::SOP_CLASS_UID, "SOPClassUID")?;
    let instance = uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    if class != sop_class_uid {
        return Err(StoreError::Invalid(
            "dataset SOPClassUID differs from the C-STORE command".into(),
        ));
    }
    if instance != sop_instance_uid {
        return Err(StoreError::Invalid(
            "dataset SOPInstanceUID differs from the C-STORE command".into(),
        ));
    }
    let study = uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series = uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    Ok((study, series))
}

/// The `.dcm` files of one series folder, sorted by name.
pub fn list_instances(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

    fn dataset(class: &str, sop: &str, study: Option<&str>) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class),
        ));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop),
        ));
        if let Some(study) = study {
            obj.put(DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(study),
            ));
        }
        obj.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4"),
        ));
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        out
    }

    #[test]
    fn stores_a_valid_instance_durably_and_readably() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = store
            .begin(CT_IMAGE_STORAGE, "1.2.3.4.5\0", "1.2.840.10008.1.2.1")
            .unwrap();
        let bytes = dataset(CT_IMAGE_STORAGE, "1.2.3.4.5", Some("1.2.3"));
        let (a, b) = bytes.split_at(bytes.len() / 2);
        inc.write(a).unwrap();
        inc.write(b).unwrap();
        let staged = inc.finish().unwrap();
        assert_eq!(staged.study_uid, "1.2.3");
        assert_eq!(staged.series_uid, "1.2.3.4");
        let path = store.commit(staged).unwrap();
        assert_eq!(path, dir.path().join("studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm"));
        let obj = dicom_object::open_file(&path).unwrap();
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.3.4.5");
        assert_eq!(list_instances(path.parent().unwrap()), vec![path]);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_mismatched_incomplete_or_garbage_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cases = [
            (
                CT_IMAGE_STORAGE,
                "9.9",
                dataset(CT_IMAGE_STORAGE, "1.1", Some("1")),
            ),
            (
                CT_IMAGE_STORAGE,
                "1.1",
                dataset(CT_IMAGE_STORAGE, "1.1", None),
            ),
            (
                "1.2.840.10008.5.1.4.1.1.4",
                "1.1",
                dataset("1.2.840.10008.5.1.4.1.1.4", "1.1", Some("1")),
            ),
            (
                CT_IMAGE_STORAGE,
                "1.1",
                b"\x08\x00\x18\x00UI\xff\x7fgarbage".to_vec(),
            ),
        ];
        for (class, sop, bytes) in cases {
            let mut inc = store.begin(class, sop, "1.2.840.10008.1.2.1").unwrap();
            inc.write(&bytes).unwrap();
            assert!(matches!(inc.finish(), Err(StoreError::Invalid(_))));
        }
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn invalid_uids_in_the_dataset_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long = format!("1.{}", "2".repeat(70));
        for (sop, study) in [
            (".", "1.2.3"),
            ("1.2.3.9", "1..3"),
            ("1.2.3.9", long.as_str()),
        ] {
            let mut inc = store
                .begin(CT_IMAGE_STORAGE, sop, "1.2.840.10008.1.2.1")
                .unwrap();
            inc.write(&dataset(CT_IMAGE_STORAGE, sop, Some(study)))
                .unwrap();
            let e = inc.finish().unwrap_err();
            assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        }
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    /// Every way an instance can be abandoned removes its temp file: dropped while being
    /// written (a failed write, an aborted association, a panic in the writing task), or
    /// after it was checked.
    #[test]
    fn dropped_instances_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inc = store
            .begin(CT_IMAGE_STORAGE, "1.2.3.4.5", "1.2.840.10008.1.2.1")
            .unwrap();
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 1);
        drop(inc);
        let mut inc = store
            .begin(CT_IMAGE_STORAGE, "1.2.3.4.5", "1.2.840.10008.1.2.1")
            .unwrap();
        inc.write(&dataset(CT_IMAGE_STORAGE, "1.2.3.4.5", Some("1.2.3")))
            .unwrap();
        let staged = inc.finish().unwrap();
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 1);
        drop(staged);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn odd_uids_become_safe_distinct_names() {
        assert_eq!(sanitize_uid("1.2.840.1\0"), "1.2.840.1");
        let a = sanitize_uid("../etc");
        let b = sanitize_uid("__/etc");
        assert!(!a.contains('/') && !a.starts_with('.'));
        assert_ne!(a, b);
        assert_ne!(sanitize_uid(".."), "..");
        assert_eq!(uid_hash("1.2.3").len(), 12);
    }

    /// A series counts as arriving for the assembly window after its last instance, in every
    /// clone of the store (the receiver's and housekeeping's), and not at all with no window.
    #[test]
    fn a_series_is_arriving_for_the_assembly_window_after_its_last_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path())
            .unwrap()
            .with_assembly_window(Duration::from_millis(300));
        let other = store.clone();
        assert!(!other.arriving("1.2.3.1"));
        store.arrived("1.2.3.1");
        assert!(other.arriving("1.2.3.1") && !other.arriving("1.2.3.2"));
        std::thread::sleep(Duration::from_millis(400));
        assert!(!other.arriving("1.2.3.1"), "quiet longer than the window");
        store.arrived("1.2.3.2");
        assert!(
            store.arrivals.lock().unwrap().len() == 1,
            "expired entries dropped"
        );

        let none = Store::open(dir.path())
            .unwrap()
            .with_assembly_window(Duration::ZERO);
        none.arrived("1.2.3.1");
        assert!(!none.arriving("1.2.3.1"));
    }
}
