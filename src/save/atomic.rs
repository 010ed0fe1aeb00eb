//! Atomic file writes: a temporary file in the destination's folder, written, flushed to
//! disk, then renamed over the destination. On any error the temporary file is removed and
//! an existing destination is untouched (a reader that has it mapped keeps its bytes).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Buffer between the serializer and the file; large storages bypass it.
const BUFFER: usize = 1 << 20;

fn werr(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        what: what.to_string(),
        source: None,
    }
}

/// A write error caused by `e`, which stays its source.
fn werr_io(path: &Path, context: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        what: format!("{context}: {e}"),
        source: Some(e),
    }
}

/// The folder of `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A new temporary path next to `path`, removed when dropped unless persisted.
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    if path.is_dir() {
        return Err(werr(path, "it is a directory"));
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".ptfile-tmp")
        .tempfile_in(&dir)
        .map_err(|e| {
            werr_io(
                path,
                format!("cannot create a temporary file in {}", dir.display()),
                e,
            )
        })
}

/// Gives the file the permissions the destination has (or 0644 for a new one), flushes it
/// when `sync`, and renames it over `path`.
pub(crate) fn finish(tmp: tempfile::NamedTempFile, path: &Path, sync: bool) -> Result<()> {
    let (f, tmp) = tmp.into_parts();
    finish_path(tmp, f, path, sync)
}

/// Like [`finish`] for a temporary path another writer filled (`f` is it, opened).
pub(crate) fn finish_path(tmp: tempfile::TempPath, f: File, path: &Path, sync: bool) -> Result<()> {
    set_permissions(&f, path);
    if sync {
        f.sync_all()
            .map_err(|e| werr_io(path, "flushing to disk", e))?;
    }
    drop(f);
    tmp.persist(path)
        .map_err(|e| werr_io(path, "renaming the temporary file into place", e.error))?;
    if sync {
        sync_dir(&parent_dir(path));
    }
    Ok(())
}

/// Writes `path` atomically with `body`.
pub(crate) fn write<T>(
    path: &Path,
    sync: bool,
    body: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let tmp = temp_beside(path)?;
    let out = {
        let mut w = BufWriter::with_capacity(BUFFER, tmp.as_file());
        let out = body(&mut w)?;
        w.flush().map_err(|e| werr_io(path, "writing", e))?;
        out
    };
    finish(tmp, path, sync)?;
    Ok(out)
}

#[cfg(unix)]
fn set_permissions(f: &File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let perm = match std::fs::metadata(path) {
        Ok(m) => m.permissions(),
        Err(_) => std::fs::Permissions::from_mode(0o644),
    };
    let _ = f.set_permissions(perm);
}

#[cfg(not(unix))]
fn set_permissions(f: &File, path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        let _ = f.set_permissions(m.permissions());
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Makes the rename durable; best effort (some file systems refuse fsync on folders).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}
