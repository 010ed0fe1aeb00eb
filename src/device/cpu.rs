//! Host memory for CPU storages, filled as fast as the machine allows.
//!
//! Most of the cost of loading a checkpoint into memory is the first touch of fresh pages, not
//! the copy. Large storages therefore live in anonymous mappings advised to use transparent
//! huge pages (one fault per 2 MiB instead of per 4 KiB), and are filled with `pread` straight
//! from the page cache into place by several threads at once.

use std::any::Any;

use ptfile_backend::{BackendError, DeviceStorage};

use crate::error::{Error, Result};
use crate::torch::checkpoint::{swap_in_place, ByteOrder, Checkpoint};

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

/// Loads storages `which` of `ckpt` into owned CPU memory, little-endian, in parallel.
pub fn load_cpu(ckpt: &Checkpoint, which: &[usize]) -> Result<Vec<CpuStorage>> {
    let mut out = Vec::with_capacity(which.len());
    let mut offsets = Vec::with_capacity(which.len());
    for &i in which {
        let s = &ckpt.storages[i];
        let (off, _) = s
            .data
            .ok_or_else(|| Error::invalid("storage has no data", format!("storage {:?}", s.key)))?;
        let n = usize::try_from(s.nbytes).map_err(|_| {
            Error::invalid(
                "storage too large for this machine",
                format!("storage {:?}", s.key),
            )
        })?;
        out.push(CpuStorage::zeroed(n).map_err(|e| {
            Error::Device(format!(
                "cannot allocate {n} bytes for storage {:?}: {e}",
                s.key
            ))
        })?);
        offsets.push((off, s.swap_unit()));
    }
    let swap = ckpt.byteorder == ByteOrder::Big;
    let source = ckpt.source();
    // Jobs: (destination chunk, file offset, swap unit).
    let mut jobs: Vec<(&mut [u8], u64, usize)> = Vec::new();
    for (st, &(off, unit)) in out.iter_mut().zip(&offsets) {
        for (k, chunk) in st.bytes_mut().chunks_mut(CHUNK).enumerate() {
            jobs.push((chunk, off + (k * CHUNK) as u64, unit));
        }
    }
    let total: usize = jobs.iter().map(|j| j.0.len()).sum();
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
    let run = |part: Vec<(&mut [u8], u64, usize)>| -> std::io::Result<()> {
        for (dst, off, unit) in part {
            source.read_into(off, dst)?;
            if swap {
                swap_in_place(dst, unit);
            }
        }
        Ok(())
    };
    let result = if threads <= 1 || total < (8 << 20) {
        run(jobs)
    } else {
        // Each thread reads one contiguous stretch of the file, in file order: sequential
        // reads keep the kernel's readahead working when the file is not cached.
        jobs.sort_by_key(|j| j.1);
        let share = total.div_ceil(threads);
        let mut parts: Vec<Vec<(&mut [u8], u64, usize)>> = vec![Vec::new()];
        let mut acc = 0usize;
        for j in jobs {
            if acc >= share && parts.len() < threads {
                parts.push(Vec::new());
                acc = 0;
            }
            acc += j.0.len();
            if let Some(last) = parts.last_mut() {
                last.push(j);
            }
        }
        std::thread::scope(|sc| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|p| sc.spawn(move || run(p)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("reader thread failed")))
            })
        })
    };
    result.map_err(|e| Error::Device(format!("reading storage data: {e}")))?;
    Ok(out)
}
