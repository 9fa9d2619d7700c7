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
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsync the parent of every directory it created: the new entries
/// must survive a power cut as surely as the files later written (and fsynced) inside them.
pub fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    let mut created = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && !p.exists() {
        created.push(p);
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for d in created {
        let parent = match d.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_dir_creation_makes_every_level_and_tolerates_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a").join("b").join("c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        // Again, and one level more: nothing to create at the existing levels.
        create_dir_all_durable(&deep).unwrap();
        create_dir_all_durable(&deep.join("d")).unwrap();
        assert!(deep.join("d").is_dir());
        write_atomic(&deep.join("d").join("f"), b"x").unwrap();
        assert_eq!(std::fs::read(deep.join("d").join("f")).unwrap(), b"x");
    }
}
