//! Tensors of a load: [`LoadedTensor`], the same view as [`TensorView`] over the storage
//! each tensor now lives in, on whatever device holds it.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;

use ptfile_backend::{BackendError, DeviceStorage};

use crate::device::load::Loaded;
use crate::error::{Error, Result};
use crate::torch::tensor::{Anchor, TensorView, ViewSource};

/// One tensor of a [`Loaded`] checkpoint: everything [`TensorView`] has (it derefs to one:
/// `dtype()`, `shape()`, `to_vec()`, ...), reading elements back from the device that holds
/// the storage, plus that device and the storage itself.
///
/// The device handle of a backend's storage comes from downcasting
/// [`DeviceStorage::as_any`] to the backend's storage type:
///
/// - CUDA (`--features cuda`): `ptfile_cuda::CudaStorage::device_ptr()` is the `CUdeviceptr`
///   of the storage's first byte, in the device's primary context (`ordinal()` names the
///   device).
/// - wgpu (`--features wgpu`): `ptfile_wgpu::WgpuStorage::buffer()` is the `wgpu::Buffer`
///   (the storage starts at offset 0; `device()` and `queue()` are its device and queue).
///
/// The tensor's first element is [`TensorView::storage_offset`] elements into the storage
/// (times the dtype's element size in bytes). `examples/device_handles.rs` runs this for
/// every tensor of a checkpoint:
///
/// ```ignore
/// let t = loaded.tensor("l0.weight")?;
/// let byte_offset = t.storage_offset() as u64 * t.dtype().element_size() as u64;
/// if let Some(s) = t.storage().as_any().downcast_ref::<ptfile_cuda::CudaStorage>() {
///     let ptr = s.device_ptr() + byte_offset; // hand to a kernel, cuBLAS, ...
/// }
/// if let Some(s) = t.storage().as_any().downcast_ref::<ptfile_wgpu::WgpuStorage>() {
///     let (buffer, offset) = (s.buffer(), byte_offset); // bind buffer at offset
/// }
/// ```
#[derive(Debug, Clone)]
pub struct LoadedTensor<'a> {
    view: TensorView<'a>,
    storage: &'a dyn DeviceStorage,
}

impl<'a> Deref for LoadedTensor<'a> {
    type Target = TensorView<'a>;
    fn deref(&self) -> &TensorView<'a> {
        &self.view
    }
}

impl<'a> LoadedTensor<'a> {
    /// Where the tensor lives (`cpu`, `cuda:0`, `wgpu:0`; `meta` for tensors without
    /// storage).
    pub fn device(&self) -> String {
        self.storage.location()
    }
    /// The device storage the tensor views (shared with every other view of it). For a
    /// tensor without storage (`meta`), an empty storage whose location is `meta`.
    pub fn storage(&self) -> &'a dyn DeviceStorage {
        self.storage
    }
    /// The view (also reachable through `Deref`).
    pub fn view(&self) -> &TensorView<'a> {
        &self.view
    }
}

/// The storage of tensors that have none (`meta`).
#[derive(Debug)]
struct NoStorage;

impl DeviceStorage for NoStorage {
    fn location(&self) -> String {
        "meta".into()
    }
    fn nbytes(&self) -> usize {
        0
    }
    fn read_to_host(&self, dst: &mut [u8]) -> std::result::Result<(), BackendError> {
        ptfile_backend::copy_to_host("meta", &[], dst)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

static NO_STORAGE: NoStorage = NoStorage;

impl ViewSource for Loaded {
    fn le_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let s = self
            .storage(i)
            .ok_or_else(|| Error::Usage(format!("no storage {i}")))?;
        if let Some(b) = s.host_bytes() {
            return Ok(Cow::Borrowed(b));
        }
        let mut v = vec![0u8; s.nbytes()];
        s.read_to_host(&mut v).map_err(|e| {
            Error::Device(format!(
                "reading storage {i} back from {}: {e}",
                s.location()
            ))
        })?;
        Ok(Cow::Owned(v))
    }
    fn borrowed(&self, i: usize) -> Option<&[u8]> {
        self.storage(i)?.host_bytes()
    }
    fn place(&self, i: usize) -> String {
        self.storage(i).map(|s| s.location()).unwrap_or_default()
    }
    fn anchor(&self, i: usize) -> Option<Anchor> {
        let s = self.shared_storage(i)?;
        let (addr, device, read_only) = if let Some(b) = s.host_bytes() {
            if s.location() != "cpu" {
                return None;
            }
            let mapped = s
                .as_any()
                .downcast_ref::<crate::device::cpu::MappedStorage>()
                .is_some();
            (b.as_ptr() as u64, ("cpu", 0), mapped)
        } else {
            device_address(&*s)?
        };
        Some(Anchor {
            owner: Arc::new(s),
            addr,
            device,
            read_only,
        })
    }
}

/// The device address of a storage that is not host memory, where ptfile knows it.
fn device_address(s: &dyn DeviceStorage) -> Option<(u64, (&'static str, i32), bool)> {
    #[cfg(feature = "cuda")]
    if let Some(c) = s.as_any().downcast_ref::<ptfile_cuda::CudaStorage>() {
        return Some((c.device_ptr(), ("cuda", c.ordinal() as i32), false));
    }
    let _ = s;
    None
}

impl Loaded {
    fn loaded_tensor<'a>(&'a self, view: TensorView<'a>) -> LoadedTensor<'a> {
        let storage = view
            .tensor()
            .storage
            .and_then(|i| self.storage(i))
            .unwrap_or(&NO_STORAGE);
        LoadedTensor { view, storage }
    }

    /// The tensor named `name` (as [`crate::Checkpoint::tensor`] names it), viewing the
    /// storage it was loaded into.
    pub fn tensor(&self, name: &str) -> Result<LoadedTensor<'_>> {
        let (n, t) = self.checkpoint.index().get(name)?;
        Ok(self.loaded_tensor(TensorView::new(n.clone(), t.clone(), self)))
    }

    /// Every dense tensor with its name, in the order of the object tree, over the loaded
    /// storages.
    pub fn tensors(&self) -> impl Iterator<Item = (String, LoadedTensor<'_>)> + '_ {
        self.checkpoint.index().list.iter().map(move |(n, t)| {
            (
                n.to_string(),
                self.loaded_tensor(TensorView::new(n.clone(), t.clone(), self)),
            )
        })
    }
}
