//! Crash-safe file writes, for every crate of the workspace that writes a user's file or a
//! checkpoint: a temporary file in the same directory, flushed and fsynced, renamed over the
//! target, then the directory fsynced so the rename itself survives a power cut. A crash at
//! any moment leaves the old file or the new one under the real name, never a torn one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary sibling `path` is written through: hidden, and unique to this process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` atomically with what `fill` writes into the (buffered) temporary file. On any
/// error the temporary file is removed and `path` is left as it was.
///
/// ```
/// let path = std::env::temp_dir().join(format!("medify-atomic-doc-{}.txt", std::process::id()));
/// medify_quant::atomic::write_with(&path, |f| {
///     use std::io::Write;
///     f.write_all(b"streamed")
/// })
/// .unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"streamed");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp)?);
        fill(&mut out)?;
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically (see [`write_with`]).
///
/// ```
/// let path = std::env::temp_dir().join(format!("medify-atomic-bytes-{}.txt", std::process::id()));
/// std::fs::write(&path, b"old").unwrap();
/// medify_quant::atomic::write(&path, b"new").unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"new");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Fsyncs the directory holding `path`, making a rename or creation in it durable. A no-op
/// where directories cannot be opened (Windows).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs a directory (see [`sync_parent`]).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("medify-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write(&path, b"old").unwrap();
        let e = write_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temp_path(&path).exists());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
