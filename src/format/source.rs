//! The one place ptfile maps a file into memory. Everything else borrows slices of a
//! [`Source`].

use std::path::Path;
use std::sync::Arc;

use super::{FormatError as Error, Result};

/// The bytes of a checkpoint: a read-only memory map of a file, or owned bytes.
/// Cloning is cheap (shared).
#[derive(Clone)]
pub struct Source(Arc<Backing>);

enum Backing {
    Map(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.0 {
            Backing::Map(..) => "mmap",
            Backing::Owned(_) => "owned",
        };
        write!(f, "Source({kind}, {} bytes)", self.len())
    }
}

impl Source {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Source> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        if meta.len() == 0 {
            return Ok(Source::from_vec(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process. The invariant memmap2
        // needs is that no one truncates or rewrites the file while it is mapped; like every
        // mmap-based loader (torch's mmap=True, safetensors) ptfile documents it on the crate
        // page ("Files that change while open") and on `Checkpoint::open`. Every access is
        // bounds-checked against `len()`.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Ok(Source(Arc::new(Backing::Map(map, file))))
    }

    /// Wraps owned bytes.
    pub fn from_vec(v: Vec<u8>) -> Source {
        Source(Arc::new(Backing::Owned(v)))
    }

    /// All bytes.
    pub fn bytes(&self) -> &[u8] {
        match &*self.0 {
            Backing::Map(m, _) => m,
            Backing::Owned(v) => v,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `bytes()[start..start+len]`, or None when out of range (checked arithmetic).
    pub fn slice(&self, start: u64, len: u64) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        if end > self.len() as u64 {
            return None;
        }
        Some(&self.bytes()[start as usize..end as usize])
    }

    /// The mapped file, when the bytes come from a memory map (`bytes()[i]` is the file's byte
    /// `i`).
    pub fn file(&self) -> Option<&std::fs::File> {
        match &*self.0 {
            Backing::Map(_, file) => Some(file),
            Backing::Owned(_) => None,
        }
    }

    /// Whether the bytes come from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.0, Backing::Map(..))
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`. For a mapped file this reads
    /// with `pread`, so the bytes go straight from the page cache into `dst` without mapping
    /// the file's pages into this process (no page faults on the map, no resident map pages).
    pub fn read_into(&self, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
        match &*self.0 {
            #[cfg(unix)]
            Backing::Map(_, file) => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(dst, offset)
            }
            _ => {
                let src = self.slice(offset, dst.len() as u64).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end")
                })?;
                dst.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

impl AsRef<[u8]> for Source {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}
