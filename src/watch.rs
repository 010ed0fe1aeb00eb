//! Noticing that a checkpoint changed while it was read. `torch.save` rewrites a file in place
//! (truncate, then write), so a reader running meanwhile may see a mix of two versions: note
//! each file's size and modification time before reading ([`FileWatch::new`]) and ask after
//! ([`FileWatch::changed`]); a change is [`crate::Error::Changed`], and nothing read should be
//! used.
//!
//! ```
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! let watch = ptfile::FileWatch::new(path);
//! let loaded = ptfile::Loader::new().load(path)?;
//! if let Some(e) = watch.changed() {
//!     return Err(e);
//! }
//! # Ok::<(), ptfile::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The files of a checkpoint (the file, or every file of a model directory) as they were.
#[derive(Debug, Clone)]
pub struct FileWatch {
    files: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

fn state(p: &Path) -> Option<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()))
}

impl FileWatch {
    /// Notes the size and modification time of `path`, or of each file of the directory.
    pub fn new(path: impl AsRef<Path>) -> FileWatch {
        let path = path.as_ref();
        let mut names = Vec::new();
        if path.is_dir() {
            names.extend(
                std::fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file()),
            );
            names.sort();
        } else {
            names.push(path.to_path_buf());
        }
        let files = names
            .into_iter()
            .filter_map(|p| state(&p).map(|(s, m)| (p, s, m)))
            .collect();
        FileWatch { files }
    }

    /// The files noted, with their sizes then.
    pub fn files(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.files.iter().map(|(p, s, _)| (p.as_path(), *s))
    }

    /// The first file whose size or modification time is no longer what it was, as the error
    /// to report.
    pub fn changed(&self) -> Option<crate::Error> {
        for (p, size, mtime) in &self.files {
            let what = match state(p) {
                None => format!("size {size} -> the file is gone"),
                Some((s, _)) if s != *size => format!("size {size} -> {s}"),
                Some((_, m)) if m != *mtime => {
                    "it was written to (modification time changed)".into()
                }
                _ => continue,
            };
            return Some(crate::Error::Changed {
                path: p.clone(),
                what,
            });
        }
        None
    }
}
