//! The one place ptfile maps a file into memory. Everything else borrows slices of a
//! [`Source`].

use std::path::Path;
use std::sync::Arc;

use super::{FormatError as Error, Result};

/// The bytes of a checkpoint: a read-only memory map of a file, or owned bytes.
/// Cloning is cheap (shared).
#[derive(Clone)]
pub struct Source {
    backing: Arc<Backing>,
    /// The window of the backing bytes this source is (all of them unless made by `sub`).
    start: usize,
    len: usize,
}

enum Backing {
    Map(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.backing {
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
        let len = map.len();
        Ok(Source {
            backing: Arc::new(Backing::Map(map, file)),
            start: 0,
            len,
        })
    }

    /// Wraps owned bytes.
    pub fn from_vec(v: Vec<u8>) -> Source {
        let len = v.len();
        Source {
            backing: Arc::new(Backing::Owned(v)),
            start: 0,
            len,
        }
    }

    /// `len` bytes from `offset` of this source as a source of their own (a file embedded in
    /// another, such as the archives of a DCP `.distcp` file), sharing the same memory; None
    /// when the range is out of bounds.
    pub fn sub(&self, offset: u64, len: u64) -> Option<Source> {
        self.slice(offset, len)?;
        Some(Source {
            backing: self.backing.clone(),
            start: self.start + offset as usize,
            len: len as usize,
        })
    }

    /// Offset of this source's first byte in its file ([`Source::file`]); 0 unless made by
    /// [`Source::sub`].
    pub fn file_offset(&self) -> u64 {
        self.start as u64
    }

    /// All bytes.
    pub fn bytes(&self) -> &[u8] {
        let all: &[u8] = match &*self.backing {
            Backing::Map(m, _) => m,
            Backing::Owned(v) => v,
        };
        &all[self.start..self.start + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
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
    /// `i + file_offset()`).
    pub fn file(&self) -> Option<&std::fs::File> {
        match &*self.backing {
            Backing::Map(_, file) => Some(file),
            Backing::Owned(_) => None,
        }
    }

    /// Whether the bytes come from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.backing, Backing::Map(..))
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`. For a mapped file this reads
    /// with `pread`, so the bytes go straight from the page cache into `dst` without mapping
    /// the file's pages into this process (no page faults on the map, no resident map pages).
    pub fn read_into(&self, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
        match &*self.backing {
            #[cfg(unix)]
            Backing::Map(_, file) => {
                use std::os::unix::fs::FileExt;
                if offset.saturating_add(dst.len() as u64) > self.len as u64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "read past the end",
                    ));
                }
                file.read_exact_at(dst, offset + self.start as u64)
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
