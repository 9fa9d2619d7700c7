//! Durable file writes shared by every stage that leaves files behind.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// torn one: temp name beside it → fsync → rename → fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or(std::ffi::OsStr::new("out")));
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// `create_dir_all` that also fsyncs each parent whose entry it created: the new entries must
/// survive a power cut as surely as the files later written (and fsynced) inside them.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_dir_creation_makes_every_level_and_tolerates_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a").join("b").join("c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        // Again, and one level more: nothing to create at the existing levels.
        create_dir_durable(&deep).unwrap();
        create_dir_durable(&deep.join("d")).unwrap();
        assert!(deep.join("d").is_dir());
        write_atomic(&deep.join("d").join("f"), b"x").unwrap();
        assert_eq!(std::fs::read(deep.join("d").join("f")).unwrap(), b"x");
    }
}
