//! # ptfile-wgpu: PyTorch storages in wgpu buffers
//!
//! A [`Backend`] that puts each storage of a checkpoint into a [`wgpu::Buffer`] on any
//! Vulkan, Metal or DX12 adapter (whichever this build has: Vulkan on Linux, Metal on Apple
//! platforms, DX12 and Vulkan on Windows). The `ptfile` crate registers it for the device type
//! `wgpu`; locations are `wgpu` (adapter 0) and `wgpu:N`, where `N` indexes the adapters in the
//! order `wgpu::Instance::enumerate_adapters` lists them.
//!
//! * Adapters are enumerated once per process; each adapter's device and queue are created on
//!   first use with the adapter's own limits (so `max_buffer_size` is the hardware's, not
//!   WebGPU's 256 MiB default).
//! * Every storage becomes a buffer with usage `STORAGE | COPY_SRC | COPY_DST`, padded to a
//!   multiple of 4 bytes (at least 4) with zeros. Uploads go through `Queue::write_buffer` in
//!   pieces of at most [`WgpuBackend::chunk_size`] bytes (16 MiB by default); every chunk's
//!   worth of written bytes is submitted and the submission before it waited for, so at most
//!   about two chunks of staging memory exist per device whatever the storages' sizes. Less
//!   than a chunk may still be queued when `materialize` returns: wgpu runs it before any later
//!   submission on the queue, so every reader sees the bytes ([`WgpuBackend::synchronize`]
//!   waits for it explicitly). Read-backs go through one `MAP_READ` staging buffer of at most
//!   one chunk.
//! * A storage larger than the adapter's `max_buffer_size` is refused with
//!   [`BackendError::OutOfMemory`] naming the limit; the registry then keeps it on the CPU.
//! * wgpu errors are captured with error scopes and returned as [`BackendError`]s; panics
//!   inside wgpu or the driver are caught and returned as errors too.
//!
//! ```no_run
//! use ptfile_backend::{BackendExt, StorageDesc};
//! use ptfile_wgpu::WgpuStorage;
//!
//! let backend = ptfile_wgpu::backend();
//! let bytes = [1u8, 2, 3, 4, 5];
//! let desc = StorageDesc::new("0", "uint8", 1, 5, "cpu");
//! let storage = backend.materialize(Some(0), &desc, &bytes)?;
//! assert_eq!(storage.location(), "wgpu:0");
//! let buffer: &wgpu::Buffer = storage.as_any().downcast_ref::<WgpuStorage>().unwrap().buffer();
//! assert_eq!(buffer.size(), 8);
//! assert_eq!(backend.read_back(&*storage)?, bytes);
//! # Ok::<(), ptfile_backend::BackendError>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod gpu;
pub mod layout;
mod storage;

use std::sync::Arc;

use ptfile_backend::{
    Availability, Backend, BackendError, BackendExt, Capabilities, DeviceStorage, StorageDesc,
};

pub use storage::WgpuStorage;
pub use wgpu;

/// The backend, for the registry (device type `wgpu`, default chunk size).
pub fn backend() -> Arc<dyn Backend> {
    Arc::new(WgpuBackend::new())
}

/// The wgpu backend. Cheap to create: adapters, devices and queues are process-wide and
/// shared by every `WgpuBackend`.
#[derive(Debug, Clone)]
pub struct WgpuBackend {
    chunk: u64,
}

impl Default for WgpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl WgpuBackend {
    /// A backend with the default chunk size ([`layout::DEFAULT_CHUNK`], 16 MiB).
    pub fn new() -> Self {
        WgpuBackend {
            chunk: layout::DEFAULT_CHUNK,
        }
    }

    /// The same backend with another upload/read-back chunk size (raised to at least 4 KiB and
    /// rounded down to a multiple of 8).
    pub fn with_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk = layout::normalize_chunk(bytes);
        self
    }

    /// Bytes per upload / read-back chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk
    }

    /// The device and queue of adapter `index` (created on first use), for running your own
    /// wgpu work next to the storages.
    pub fn device(
        &self,
        index: usize,
    ) -> Result<(Arc<wgpu::Device>, Arc<wgpu::Queue>), BackendError> {
        let gpu = self.gpu(Some(index))?;
        Ok((Arc::clone(&gpu.device), Arc::clone(&gpu.queue)))
    }

    /// Submits the uploads still queued on adapter `index` and waits until every upload has
    /// landed in its buffer. Never needed for correctness (later work on the queue is ordered
    /// after the uploads); useful for timing and to release staging memory at once.
    pub fn synchronize(&self, index: usize) -> Result<(), BackendError> {
        let gpu = self.gpu(Some(index))?;
        let location = gpu.location();
        gpu::catch("synchronizing", || {
            let scopes = gpu.scopes();
            let waited = gpu.synchronize();
            scopes.finish(&gpu, "synchronizing", 0)?;
            waited
        })
        .unwrap_or_else(|message| {
            Err(BackendError::Driver {
                device: location,
                message,
            })
        })
    }

    /// The adapter's description and limits, if adapter `index` exists.
    pub fn adapter_info(&self, index: usize) -> Option<(wgpu::AdapterInfo, wgpu::Limits)> {
        let slot = gpu::adapters().ok()?.slots.get(index)?;
        Some((slot.info.clone(), slot.limits.clone()))
    }

    /// The last wgpu error on adapter `index` that no error scope captured (ptfile replaces
    /// wgpu's panicking default handler with one that records the error here).
    pub fn last_uncaptured_error(&self, index: usize) -> Option<String> {
        self.gpu(Some(index)).ok()?.last_uncaptured_error()
    }

    fn gpu(&self, index: Option<usize>) -> Result<Arc<gpu::Gpu>, BackendError> {
        let i = self.check_index(index)?;
        let slots = &gpu::adapters()
            .map_err(|reason| BackendError::Unavailable {
                device: "wgpu".into(),
                reason: reason.into(),
            })?
            .slots;
        let slot = slots.get(i).ok_or(BackendError::NoSuchDevice {
            device: "wgpu".into(),
            index: i,
            count: slots.len(),
        })?;
        let gpu = slot.gpu()?;
        gpu.check_alive()?;
        Ok(gpu)
    }

    fn materialize_all(
        &self,
        index: Option<usize>,
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Vec<Result<Box<dyn DeviceStorage>, BackendError>> {
        let gpu = match self.gpu(index) {
            Ok(gpu) => gpu,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut uploader = storage::Uploader::new(&gpu, self.chunk);
        items
            .iter()
            .map(|(desc, bytes)| {
                uploader
                    .materialize(&gpu, desc, bytes)
                    .map(|s| Box::new(s) as Box<dyn DeviceStorage>)
            })
            .collect()
    }
}

impl Backend for WgpuBackend {
    fn device_type(&self) -> &str {
        "wgpu"
    }

    fn availability(&self) -> Availability {
        match gpu::adapters() {
            Err(reason) => Availability::Unavailable(reason.to_string()),
            Ok(a) if a.slots.is_empty() => {
                Availability::Unavailable(match std::env::var("WGPU_BACKEND") {
                    Ok(v) => format!(
                        "{} (WGPU_BACKEND={v:?} restricts the search)",
                        gpu::NO_ADAPTER
                    ),
                    Err(_) => gpu::NO_ADAPTER.to_string(),
                })
            }
            Ok(a) => Availability::Available {
                devices: a.slots.len(),
            },
        }
    }

    fn materialize(
        &self,
        index: Option<usize>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        self.materialize_via_batch(index, desc, bytes)
    }

    fn materialize_many(
        &self,
        index: Option<usize>,
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Vec<Result<Box<dyn DeviceStorage>, BackendError>> {
        let location = gpu::location(index.unwrap_or(0));
        gpu::catch("uploading storages", || self.materialize_all(index, items)).unwrap_or_else(
            |message| {
                items
                    .iter()
                    .map(|_| {
                        Err(BackendError::Driver {
                            device: location.clone(),
                            message: message.clone(),
                        })
                    })
                    .collect()
            },
        )
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default().with_batched(true);
        caps.max_allocation = gpu::adapters()
            .ok()
            .and_then(|a| a.slots.first())
            .map(|s| s.limits.max_buffer_size);
        caps
    }

    fn describe_device(&self, index: usize) -> Option<String> {
        gpu::adapters()
            .ok()?
            .slots
            .get(index)
            .map(gpu::AdapterSlot::describe)
    }
}
