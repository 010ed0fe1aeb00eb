//! Uploads (host bytes into a new buffer) and read-backs (buffer into host bytes), both in
//! bounded chunks.

use std::any::Any;
use std::sync::{Arc, Mutex};

use ptfile_backend::{BackendError, DeviceStorage, StorageDesc};

use crate::gpu::{lock, Gpu};
use crate::layout;

/// A storage in a wgpu buffer.
///
/// The buffer has usage `STORAGE | COPY_SRC | COPY_DST` and is [`padded_size`] bytes long:
/// the logical size ([`DeviceStorage::nbytes`]) rounded up to 4 (wgpu's
/// `COPY_BUFFER_ALIGNMENT`), at least 4; the padding bytes are zero. Use [`buffer`],
/// [`device`] and [`queue`] to work on it with your own wgpu code.
///
/// [`padded_size`]: WgpuStorage::padded_size
/// [`buffer`]: WgpuStorage::buffer
/// [`device`]: WgpuStorage::device
/// [`queue`]: WgpuStorage::queue
pub struct WgpuStorage {
    gpu: Arc<Gpu>,
    buffer: wgpu::Buffer,
    nbytes: usize,
    chunk: u64,
}

impl std::fmt::Debug for WgpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuStorage")
            .field("location", &self.gpu.location())
            .field("adapter", &self.gpu.name)
            .field("nbytes", &self.nbytes)
            .field("padded_size", &self.buffer.size())
            .finish()
    }
}

impl WgpuStorage {
    /// The buffer holding the bytes.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The device the buffer lives on (shared by every storage on this adapter).
    pub fn device(&self) -> &Arc<wgpu::Device> {
        &self.gpu.device
    }

    /// The queue of [`device`](Self::device); work submitted to it is ordered after the upload.
    pub fn queue(&self) -> &Arc<wgpu::Queue> {
        &self.gpu.queue
    }

    /// The adapter index `N` of the location `wgpu:N`.
    pub fn adapter_index(&self) -> usize {
        self.gpu.index
    }

    /// The buffer's size: [`nbytes`](DeviceStorage::nbytes) rounded up to 4, at least 4.
    pub fn padded_size(&self) -> u64 {
        self.buffer.size()
    }

    /// Whether the whole buffer fits in one storage binding
    /// (`max_storage_buffer_binding_size`); larger storages must be bound in ranges.
    pub fn fits_one_binding(&self) -> bool {
        self.buffer.size() <= self.gpu.max_storage_buffer_binding_size
    }
}

impl DeviceStorage for WgpuStorage {
    fn location(&self) -> String {
        self.gpu.location()
    }

    fn nbytes(&self) -> usize {
        self.nbytes
    }

    fn read_to_host(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        if dst.len() != self.nbytes {
            return Err(self.gpu.driver(format!(
                "read_to_host: destination has {} bytes, storage has {}",
                dst.len(),
                self.nbytes
            )));
        }
        if self.nbytes == 0 {
            return Ok(());
        }
        crate::gpu::catch("reading a storage back", || self.read_back(dst))
            .unwrap_or_else(|message| Err(self.gpu.driver(message)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

type MapResult = Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>;

impl WgpuStorage {
    fn read_back(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        let gpu = &*self.gpu;
        gpu.check_alive()?;
        let padded = self.buffer.size();
        let stage_size = self.chunk.min(padded);
        let scopes = gpu.scopes();
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ptfile read-back staging"),
            size: stage_size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        scopes.finish(gpu, "creating the read-back staging buffer", stage_size)?;
        let scopes = gpu.scopes();
        let result = self.read_chunks(&staging, dst);
        let popped = scopes.finish(gpu, "reading the storage back", self.nbytes as u64);
        result.and(popped)
    }

    fn read_chunks(&self, staging: &wgpu::Buffer, dst: &mut [u8]) -> Result<(), BackendError> {
        let gpu = &*self.gpu;
        let total = dst.len() as u64;
        for (off, len) in layout::chunks(self.buffer.size(), self.chunk) {
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("ptfile read-back"),
                });
            encoder.copy_buffer_to_buffer(&self.buffer, off, staging, 0, Some(len));
            let submission = gpu.queue.submit([encoder.finish()]);
            let mapped: MapResult = Arc::default();
            let sink = Arc::clone(&mapped);
            staging.map_async(wgpu::MapMode::Read, 0..len, move |r| {
                *lock(&sink) = Some(r);
            });
            gpu.wait(Some(submission))?;
            // The callback normally ran inside the wait; poll a little more if it did not.
            for _ in 0..3 {
                if lock(&mapped).is_some() {
                    break;
                }
                gpu.wait(None)?;
            }
            let outcome = lock(&mapped).take();
            match outcome {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(gpu.driver(format!("mapping the staging buffer: {e}"))),
                None => {
                    return Err(gpu.driver(
                        "mapping the staging buffer: the map callback never ran".to_string(),
                    ))
                }
            }
            let logical = len.min(total - off.min(total));
            {
                let view = staging
                    .get_mapped_range(0..len)
                    .map_err(|e| gpu.driver(format!("reading the staging buffer: {e}")))?;
                let (start, n) = (off as usize, logical as usize);
                dst[start..start + n].copy_from_slice(&view[..n]);
            }
            staging.unmap();
        }
        Ok(())
    }
}

/// Streams host bytes into buffers: `write_buffer` in pieces of at most `chunk` bytes (each
/// piece is copied into a staging allocation that wgpu frees once the submission using it has
/// completed), with the device's shared accounting submitting every `chunk` bytes and waiting
/// for the submission before, so staging memory stays bounded.
///
/// Less than a chunk may stay written but unsubmitted when a call returns: the bytes are
/// already copied out of the caller's slice, and wgpu runs pending writes before any later
/// submission on the queue (a read-back, the caller's own work), so every observer sees them.
/// This saves a submit per small storage (about 65 µs on lavapipe).
///
/// A storage whose place in the checkpoint file is known (`StorageDesc::file`) is read with
/// `pread` into a reused chunk-sized buffer rather than through the (mapped) slice, so the
/// file's pages never become resident in the process.
pub(crate) struct Uploader<'g> {
    gpu: &'g Gpu,
    chunk: u64,
    bounce: Vec<u8>,
}

impl<'g> Uploader<'g> {
    pub(crate) fn new(gpu: &'g Gpu, chunk: u64) -> Self {
        Uploader {
            gpu,
            chunk,
            bounce: Vec::new(),
        }
    }

    /// Creates the buffer for one storage and queues its upload.
    pub(crate) fn materialize(
        &mut self,
        gpu_arc: &Arc<Gpu>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<WgpuStorage, BackendError> {
        let gpu = self.gpu;
        if bytes.len() != desc.nbytes {
            return Err(gpu.driver(format!(
                "storage {:?}: the descriptor says {} bytes but {} bytes were given",
                desc.key,
                desc.nbytes,
                bytes.len()
            )));
        }
        let nbytes = bytes.len() as u64;
        let oom = |reason: String| BackendError::OutOfMemory {
            device: gpu.location(),
            bytes: nbytes,
            reason,
        };
        let padded = layout::padded_size(nbytes)
            .ok_or_else(|| oom("the size overflows when padded to 4 bytes".to_string()))?;
        layout::check_limit(nbytes, padded, gpu.max_buffer_size).map_err(oom)?;

        let scopes = gpu.scopes();
        let label = format!("ptfile storage {}", desc.key);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&label),
            size: padded,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        scopes.finish(gpu, "creating the buffer", nbytes)?;

        let scopes = gpu.scopes();
        let written = self.write(&buffer, bytes, desc.file);
        scopes.finish(gpu, "uploading the storage", nbytes)?;
        written?;
        Ok(WgpuStorage {
            gpu: Arc::clone(gpu_arc),
            buffer,
            nbytes: bytes.len(),
            chunk: self.chunk,
        })
    }

    fn write(
        &mut self,
        buffer: &wgpu::Buffer,
        bytes: &[u8],
        file: Option<ptfile_backend::FileSpan<'_>>,
    ) -> Result<(), BackendError> {
        let queue = &self.gpu.queue;
        if bytes.is_empty() {
            // The 4-byte buffer of an empty storage: all padding, all zeros.
            queue.write_buffer(buffer, 0, &[0u8; 4]);
            return self.gpu.account_upload(4, self.chunk);
        }
        for (off, len) in layout::chunks(bytes.len() as u64, self.chunk) {
            let piece = match file {
                #[cfg(unix)]
                Some(span) => {
                    use std::os::unix::fs::FileExt;
                    self.bounce.resize(len as usize, 0);
                    let at = span.offset.saturating_add(off);
                    span.file.read_exact_at(&mut self.bounce, at).map_err(|e| {
                        self.gpu.driver(format!(
                            "cannot read the storage from the checkpoint at byte {at}: {e}"
                        ))
                    })?;
                    &self.bounce[..]
                }
                _ => &bytes[off as usize..(off + len) as usize],
            };
            let split = layout::split_tail(piece);
            if split.aligned > 0 {
                queue.write_buffer(buffer, off, &piece[..split.aligned]);
            }
            if let Some((at, word)) = split.tail {
                queue.write_buffer(buffer, off + at as u64, &word);
            }
            self.gpu.account_upload(len, self.chunk)?;
        }
        Ok(())
    }
}
