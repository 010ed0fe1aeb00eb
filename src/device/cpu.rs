//! Host memory for CPU storages, filled as fast as the machine allows.
//!
//! Most of the cost of loading a checkpoint into memory is the first touch of fresh pages, not
//! the copy. Large storages therefore live in anonymous mappings advised to use transparent
//! huge pages (one fault per 2 MiB instead of per 4 KiB), and are filled with `pread` straight
//! from the page cache into place by several threads at once.

use std::any::Any;

use ptfile_backend::{BackendError, DeviceStorage, StorageDesc};

use crate::error::{Error, Result};
use crate::format::source::Source;
use crate::torch::checkpoint::Checkpoint;

/// Storages at least this large get their own huge-page mapping.
const MAP_MIN: usize = 2 << 20;
/// Unit of work for the filling threads.
const CHUNK: usize = 8 << 20;

enum Buf {
    Vec(Vec<u8>),
    Map(memmap2::MmapMut),
}

/// An owned, writable CPU storage.
pub struct CpuStorage {
    buf: Buf,
}

impl std::fmt::Debug for CpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuStorage({} bytes)", self.bytes().len())
    }
}

impl CpuStorage {
    /// A zero-filled storage of `len` bytes (pages are not touched until written).
    pub fn zeroed(len: usize) -> std::io::Result<CpuStorage> {
        if len < MAP_MIN {
            return Ok(CpuStorage {
                buf: Buf::Vec(vec![0u8; len]),
            });
        }
        let map = memmap2::MmapOptions::new().len(len).map_anon()?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: without transparent huge pages the mapping still works.
            if std::env::var_os("PTFILE_NO_THP").is_none() {
                let _ = map.advise(memmap2::Advice::HugePage);
            }
        }
        Ok(CpuStorage { buf: Buf::Map(map) })
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.buf {
            Buf::Vec(v) => v,
            Buf::Map(m) => m,
        }
    }
    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Buf::Vec(v) => v,
            Buf::Map(m) => m,
        }
    }
}

impl DeviceStorage for CpuStorage {
    fn location(&self) -> String {
        "cpu".into()
    }
    fn nbytes(&self) -> usize {
        self.bytes().len()
    }
    fn read_to_host(&self, dst: &mut [u8]) -> std::result::Result<(), BackendError> {
        ptfile_backend::copy_to_host("cpu", self.bytes(), dst)
    }
    fn host_bytes(&self) -> Option<&[u8]> {
        Some(self.bytes())
    }
    fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        Some(self.bytes_mut())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A CPU storage borrowed from the memory-mapped file (`CpuMode::Mapped`).
#[derive(Debug)]
pub struct MappedStorage {
    source: Source,
    offset: u64,
    len: u64,
}

impl MappedStorage {
    /// Storage `i` of `ckpt`, borrowed from its map.
    pub(crate) fn of(ckpt: &Checkpoint, i: usize) -> Result<MappedStorage> {
        let s = &ckpt.storages[i];
        let (off, _) = s
            .data
            .ok_or_else(|| Error::invalid("storage has no data", format!("storage {:?}", s.key)))?;
        Ok(MappedStorage {
            source: ckpt.storage_source(i).clone(),
            offset: off,
            len: s.nbytes,
        })
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.source.slice(self.offset, self.len).unwrap_or(&[])
    }
}

impl DeviceStorage for MappedStorage {
    fn location(&self) -> String {
        "cpu".into()
    }
    fn nbytes(&self) -> usize {
        self.len as usize
    }
    fn read_to_host(&self, dst: &mut [u8]) -> std::result::Result<(), BackendError> {
        ptfile_backend::copy_to_host("cpu", self.bytes(), dst)
    }
    fn host_bytes(&self) -> Option<&[u8]> {
        Some(self.bytes())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Where a chunk of a storage comes from.
enum From<'a> {
    /// `pread` from the checkpoint file at this offset (page cache straight into place).
    File(&'a std::fs::File, u64),
    /// A copy of these bytes.
    Bytes(&'a [u8]),
}

/// The built-in CPU backend's batch: every storage in owned memory (huge pages for large
/// ones), filled in parallel, straight from the file where its bytes lie there verbatim.
pub(crate) fn materialize_many(
    items: &[(StorageDesc<'_>, &[u8])],
) -> Vec<std::result::Result<Box<dyn DeviceStorage>, BackendError>> {
    let mut bufs: Vec<std::result::Result<CpuStorage, BackendError>> = items
        .iter()
        .map(|(d, b)| {
            CpuStorage::zeroed(b.len()).map_err(|e| BackendError::OutOfMemory {
                device: "cpu".into(),
                bytes: b.len() as u64,
                reason: format!("storage {:?}: {e}", d.key),
            })
        })
        .collect();
    // Jobs: (item, destination chunk, source).
    let mut jobs: Vec<(usize, &mut [u8], From<'_>)> = Vec::new();
    for (k, (buf, (desc, bytes))) in bufs.iter_mut().zip(items).enumerate() {
        let Ok(buf) = buf else { continue };
        for (c, chunk) in buf.bytes_mut().chunks_mut(CHUNK).enumerate() {
            let at = c * CHUNK;
            let from = match desc.file {
                #[cfg(unix)]
                Some(span) => From::File(span.file, span.offset + at as u64),
                _ => From::Bytes(&bytes[at..at + chunk.len()]),
            };
            jobs.push((k, chunk, from));
        }
    }
    let failed = run_jobs(jobs);
    for (k, e) in failed {
        // (a reader thread that died fails every storage)
        let which = if k < bufs.len() {
            k..k + 1
        } else {
            0..bufs.len()
        };
        for k in which {
            bufs[k] = Err(BackendError::Driver {
                device: "cpu".into(),
                message: format!("reading storage {:?} from the file: {e}", items[k].0.key),
            });
        }
    }
    bufs.into_iter()
        .map(|b| b.map(|b| Box::new(b) as Box<dyn DeviceStorage>))
        .collect()
}

/// Runs the fill jobs on up to 16 threads (`PTFILE_THREADS`), each over one contiguous
/// stretch in file order; returns the items whose reads failed.
fn run_jobs(mut jobs: Vec<(usize, &mut [u8], From<'_>)>) -> Vec<(usize, std::io::Error)> {
    let total: usize = jobs.iter().map(|j| j.1.len()).sum();
    let threads = std::env::var("PTFILE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .min(16)
        .min(jobs.len().max(1));
    let run = |part: Vec<(usize, &mut [u8], From<'_>)>| -> Vec<(usize, std::io::Error)> {
        let mut failed = Vec::new();
        for (k, dst, from) in part {
            let r = match from {
                #[cfg(unix)]
                From::File(f, off) => std::os::unix::fs::FileExt::read_exact_at(f, dst, off),
                #[cfg(not(unix))]
                From::File(..) => Err(std::io::Error::other("no positioned reads here")),
                From::Bytes(b) => {
                    dst.copy_from_slice(b);
                    Ok(())
                }
            };
            if let Err(e) = r {
                failed.push((k, e));
            }
        }
        failed
    };
    if threads <= 1 || total < (8 << 20) {
        return run(jobs);
    }
    // Sequential reads per thread keep the kernel's readahead working on a cold file.
    jobs.sort_by_key(|j| match j.2 {
        From::File(_, off) => off,
        From::Bytes(b) => b.as_ptr() as u64,
    });
    let share = total.div_ceil(threads);
    let mut parts: Vec<Vec<(usize, &mut [u8], From<'_>)>> = vec![Vec::new()];
    let mut acc = 0usize;
    for j in jobs {
        if acc >= share && parts.len() < threads {
            parts.push(Vec::new());
            acc = 0;
        }
        acc += j.1.len();
        if let Some(last) = parts.last_mut() {
            last.push(j);
        }
    }
    std::thread::scope(|sc| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| sc.spawn(move || run(p)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![(usize::MAX, std::io::Error::other("reader thread failed"))]
                })
            })
            .collect()
    })
}
