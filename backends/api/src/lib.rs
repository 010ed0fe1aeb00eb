//! # ptfile-backend: the contract a ptfile device backend implements
//!
//! A backend puts the bytes of a PyTorch storage into the memory of one kind of device
//! (`cpu`, `cuda`, `wgpu`, or a custom accelerator such as torch's `ipu` example) and can read
//! them back. Backends never see pickle or zip: they receive a [`StorageDesc`] (what the
//! storage is) and its host bytes, which usually borrow the memory-mapped checkpoint so a
//! backend can stream straight from the file into device memory.
//!
//! The contract is deliberately small ([`Backend`] and [`DeviceStorage`]); conveniences live
//! in [`BackendExt`], implemented for every backend.
//!
//! ## Linking a backend
//! The `ptfile` crate's registry holds the CPU backend and the backends compiled in by
//! features. A backend crate can also register itself at link time:
//!
//! ```
//! use std::sync::Arc;
//! use ptfile_backend::{Availability, Backend, BackendError, BackendRegistration, DeviceStorage,
//!     HostStorage, StorageDesc};
//!
//! struct Ipu;
//! impl Backend for Ipu {
//!     fn device_type(&self) -> &str { "ipu" }
//!     fn availability(&self) -> Availability { Availability::Available { devices: 1 } }
//!     fn materialize(&self, index: Option<usize>, desc: &StorageDesc<'_>, bytes: &[u8])
//!         -> Result<Box<dyn DeviceStorage>, BackendError> {
//!         let _ = (index, desc);
//!         Ok(Box::new(HostStorage::new("ipu".to_string(), bytes.to_vec())))
//!     }
//! }
//! fn make() -> Arc<dyn Backend> { Arc::new(Ipu) }
//! ptfile_backend::inventory::submit! { BackendRegistration { priority: 11, make } }
//! ```
//!
//! Link-time registration only works when the backend crate is actually linked into the final
//! binary: a crate that nothing references may be dropped by the linker. Reference it (for
//! example `use my_backend as _;`) or register it explicitly at run time.
//!
//! One device type has one backend. Two linked backends for the same type, or a linked one for
//! a type the `ptfile` build already serves (`cpu`, or `cuda` with its `cuda` feature), are a
//! conflict the registry reports naming both ([`Backend::backend_name`]): ptfile's
//! `Registry::try_default` refuses it, `Registry::default` keeps the first and records it. A
//! backend registered explicitly at run time replaces a linked backend of its type.
#![warn(missing_docs)]

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use inventory;

/// Errors a backend reports. Every variant says what failed and on which device.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend cannot serve requests at all (no driver, no adapter).
    #[error("{device}: backend unavailable: {reason}")]
    Unavailable {
        /// Device type or location.
        device: String,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The device index does not exist.
    #[error("{device}:{index} requested, {count} device(s) present")]
    NoSuchDevice {
        /// Device type.
        device: String,
        /// Requested index.
        index: usize,
        /// Devices present.
        count: usize,
    },
    /// Allocation on the device failed or exceeds a device limit.
    #[error("{device}: cannot allocate {bytes} bytes: {reason}")]
    OutOfMemory {
        /// Device location.
        device: String,
        /// Requested size.
        bytes: u64,
        /// Driver message or limit that was hit.
        reason: String,
    },
    /// Any other driver or API failure.
    #[error("{device}: {message}")]
    Driver {
        /// Device location.
        device: String,
        /// What the driver said.
        message: String,
    },
}

/// Whether a backend can serve storages on this machine.
///
/// More states may be added (match with a `_` arm); [`Availability::devices`] is 0 for every
/// state but `Available`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Availability {
    /// Usable, with this many devices (indices `0..devices`).
    Available {
        /// Number of devices present.
        devices: usize,
    },
    /// Not usable; the reason is recorded in the load report when storages fall back.
    Unavailable(String),
}

impl Availability {
    /// Number of devices, 0 when unavailable.
    pub fn devices(&self) -> usize {
        match self {
            Availability::Available { devices } => *devices,
            Availability::Unavailable(_) => 0,
        }
    }

    /// Why the backend cannot serve storages, `None` when it is available. With
    /// [`Availability::devices`], this reads every state without a `match`:
    ///
    /// ```
    /// # use ptfile_backend::Availability;
    /// let a = Availability::Unavailable("no driver".into());
    /// let seen = match a.reason() {
    ///     None => Ok(a.devices()),
    ///     Some(reason) => Err(reason.to_string()),
    /// };
    /// assert_eq!(seen, Err("no driver".to_string()));
    /// ```
    pub fn reason(&self) -> Option<&str> {
        match self {
            Availability::Available { .. } => None,
            Availability::Unavailable(reason) => Some(reason),
        }
    }
}

/// What a storage is, as far as a device needs to know. Element size and dtype name let a
/// backend that cares about types (for example one that converts) do so; most copy bytes.
///
/// Fields may be added, so other crates build one with [`StorageDesc::new`] (and
/// [`StorageDesc::with_file`]) rather than a struct literal:
///
/// ```
/// let desc = ptfile_backend::StorageDesc::new("0", "float32", 4, 16, "cuda:0");
/// assert_eq!((desc.nbytes, desc.file.is_none()), (16, true));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StorageDesc<'a> {
    /// The storage's key in the checkpoint (`"0"`, `"1"`, ... in zip files).
    pub key: &'a str,
    /// torch's dtype name without `torch.` (`float32`, `bfloat16`, `uint8` for untyped storages).
    pub dtype: &'a str,
    /// Size of one element in bytes.
    pub element_size: usize,
    /// Number of bytes of the whole storage.
    pub nbytes: usize,
    /// The location tag saved in the file (`cpu`, `cuda:0`, `ipu`).
    pub saved_location: &'a str,
    /// Where the same bytes lie in the checkpoint file, when they are stored there verbatim
    /// (an uncompressed little-endian record); `None` otherwise. A backend that copies through
    /// staging buffers may read them from here with `pread` instead of through the byte slice:
    /// the slice usually borrows a memory map, and every page touched through it joins the
    /// process's resident set, while `pread` goes from the page cache straight into the staging
    /// buffer. The file is not modified while the load runs.
    pub file: Option<FileSpan<'a>>,
}

impl<'a> StorageDesc<'a> {
    /// A storage `key` of `nbytes` bytes holding `dtype` elements of `element_size` bytes,
    /// saved at `saved_location`, whose bytes are not known to lie in a file
    /// ([`StorageDesc::file`] is `None`).
    pub fn new(
        key: &'a str,
        dtype: &'a str,
        element_size: usize,
        nbytes: usize,
        saved_location: &'a str,
    ) -> Self {
        StorageDesc {
            key,
            dtype,
            element_size,
            nbytes,
            saved_location,
            file: None,
        }
    }

    /// The same storage, with its bytes at `file` ([`StorageDesc::file`]); takes a
    /// [`FileSpan`] or an `Option<FileSpan>` (`None` clears it).
    pub fn with_file(mut self, file: impl Into<Option<FileSpan<'a>>>) -> Self {
        self.file = file.into();
        self
    }
}

/// A storage's bytes in the checkpoint file: `nbytes` bytes at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct FileSpan<'a> {
    /// The open checkpoint file.
    pub file: &'a std::fs::File,
    /// Byte offset of the storage's first byte in the file.
    pub offset: u64,
}

/// What a backend can do; used by the registry and the conformance suite.
///
/// Fields may be added. Other crates start from [`Capabilities::default`] (nothing claimed)
/// and set what their backend has, with the `with_*` methods or by assigning fields:
///
/// ```
/// use ptfile_backend::Capabilities;
/// let caps = Capabilities::default().with_batched(true).with_max_allocation(1 << 30);
/// let mut same = Capabilities::default();
/// same.batched = true;
/// same.max_allocation = Some(1 << 30);
/// assert_eq!(caps, same);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Largest single allocation, if the device has such a limit (wgpu's `max_buffer_size`).
    pub max_allocation: Option<u64>,
    /// Whether [`DeviceStorage::host_bytes`] returns the bytes without a copy.
    pub host_visible: bool,
    /// Whether [`Backend::materialize_many`] is more than a loop (coalescing, pipelining).
    pub batched: bool,
}

impl Capabilities {
    /// With [`Capabilities::max_allocation`] set to `bytes`.
    pub fn with_max_allocation(mut self, bytes: u64) -> Self {
        self.max_allocation = Some(bytes);
        self
    }
    /// With [`Capabilities::host_visible`] set.
    pub fn with_host_visible(mut self, host_visible: bool) -> Self {
        self.host_visible = host_visible;
        self
    }
    /// With [`Capabilities::batched`] set.
    pub fn with_batched(mut self, batched: bool) -> Self {
        self.batched = batched;
        self
    }
}

/// A storage living on a device.
pub trait DeviceStorage: Send + Sync + fmt::Debug {
    /// Where it lives, as a torch location string (`cpu`, `cuda:0`, `wgpu:0`).
    fn location(&self) -> String;
    /// Logical size in bytes (padding a device needed is not counted).
    fn nbytes(&self) -> usize;
    /// Copies the whole storage back into `dst` (`dst.len() == self.nbytes()`).
    fn read_to_host(&self, dst: &mut [u8]) -> Result<(), BackendError>;
    /// The bytes, when the device memory is host memory.
    fn host_bytes(&self) -> Option<&[u8]> {
        None
    }
    /// The bytes, mutable, when the device memory is host memory and writable (torch storages
    /// are mutable: a write through one view is seen by every view of the storage).
    fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// For downcasting to the backend's concrete type (device pointers, buffers).
    fn as_any(&self) -> &dyn Any;
}

/// The minimal contract of a device backend.
pub trait Backend: Send + Sync + 'static {
    /// The device type this backend serves (`cuda` serves `cuda` and `cuda:N`).
    fn device_type(&self) -> &str;
    /// Probes the driver and devices; cheap after the first call.
    fn availability(&self) -> Availability;
    /// Materializes one storage from host bytes on device `index` (None = the default device).
    fn materialize(
        &self,
        index: Option<usize>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError>;
    /// Materializes many storages on one device. Backends that pipeline or coalesce uploads
    /// override this; the default materializes one at a time.
    fn materialize_many(
        &self,
        index: Option<usize>,
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Vec<Result<Box<dyn DeviceStorage>, BackendError>> {
        items
            .iter()
            .map(|(d, b)| self.materialize(index, d, b))
            .collect()
    }
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// A human description of device `index` (adapter or GPU name).
    fn describe_device(&self, index: usize) -> Option<String> {
        let _ = index;
        None
    }
    /// Bytes free on device `index` now, where the backend can tell (device maps fill devices
    /// up to it); None when unknown.
    fn free_memory(&self, index: usize) -> Option<u64> {
        let _ = index;
        None
    }
    /// Which implementation this is, for messages that must tell two backends of one device
    /// type apart (a registry refusing a duplicate names both). By default the Rust type
    /// name, which starts with the crate's name (`ptfile_cuda::CudaBackend`).
    fn backend_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// Conveniences every backend has.
pub trait BackendExt: Backend {
    /// Whether at least one device is usable.
    fn is_available(&self) -> bool {
        self.availability().devices() > 0
    }
    /// Number of usable devices.
    fn device_count(&self) -> usize {
        self.availability().devices()
    }
    /// Checks that `index` names a present device; the error is the reason a storage falls back.
    fn check_index(&self, index: Option<usize>) -> Result<usize, BackendError> {
        match self.availability() {
            Availability::Unavailable(reason) => Err(BackendError::Unavailable {
                device: self.device_type().to_string(),
                reason,
            }),
            Availability::Available { devices } => {
                let i = index.unwrap_or(0);
                if i < devices {
                    Ok(i)
                } else {
                    Err(BackendError::NoSuchDevice {
                        device: self.device_type().to_string(),
                        index: i,
                        count: devices,
                    })
                }
            }
        }
    }
    /// `materialize` for backends whose batch path is the real one: one storage through
    /// [`Backend::materialize_many`].
    fn materialize_via_batch(
        &self,
        index: Option<usize>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        self.materialize_many(index, &[(desc.clone(), bytes)])
            .pop()
            .unwrap_or_else(|| {
                Err(BackendError::Driver {
                    device: self.device_type().to_string(),
                    message: "materialize_many returned no result".to_string(),
                })
            })
    }
    /// Reads a storage back into a new vector.
    fn read_back(&self, storage: &dyn DeviceStorage) -> Result<Vec<u8>, BackendError> {
        let mut v = vec![0u8; storage.nbytes()];
        storage.read_to_host(&mut v)?;
        Ok(v)
    }
}

impl<T: Backend + ?Sized> BackendExt for T {}

/// A storage kept in host memory: the CPU backend's storage, and a ready-made storage for
/// backends whose device memory is simulated or host-visible.
#[derive(Debug)]
pub struct HostStorage {
    location: String,
    bytes: Vec<u8>,
}

impl HostStorage {
    /// Wraps owned bytes as a storage at `location`.
    pub fn new(location: String, bytes: Vec<u8>) -> Self {
        HostStorage { location, bytes }
    }
    /// The bytes, mutable (torch storages are mutable; views see the change).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl DeviceStorage for HostStorage {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn nbytes(&self) -> usize {
        self.bytes.len()
    }
    fn read_to_host(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        copy_to_host(&self.location, &self.bytes, dst)
    }
    fn host_bytes(&self) -> Option<&[u8]> {
        Some(&self.bytes)
    }
    fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.bytes)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `read_to_host` for storages whose bytes are host memory: copies `src` into `dst`, which
/// must have the storage's size.
pub fn copy_to_host(location: &str, src: &[u8], dst: &mut [u8]) -> Result<(), BackendError> {
    if dst.len() != src.len() {
        return Err(BackendError::Driver {
            device: location.to_string(),
            message: format!(
                "read_to_host: destination has {} bytes, storage has {}",
                dst.len(),
                src.len()
            ),
        });
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// A backend registered at link time with [`inventory::submit!`]. Its device type must be one
/// no other backend of the build serves (see the crate documentation on conflicts).
pub struct BackendRegistration {
    /// Registry priority: lower runs first (torch: cpu 10, cuda 20).
    pub priority: i32,
    /// Creates the backend (called once per registry).
    pub make: fn() -> Arc<dyn Backend>,
}

inventory::collect!(BackendRegistration);

/// Iterates over the backends linked in with [`inventory::submit!`].
pub fn linked_backends() -> impl Iterator<Item = &'static BackendRegistration> {
    inventory::iter::<BackendRegistration>.into_iter()
}

/// A parsed torch location string: `cuda:1` is `("cuda", Some(1))`, `cpu` is `("cpu", None)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// Device type (`cpu`, `cuda`, `ipu`, ...).
    pub device_type: String,
    /// Device index, if the location names one.
    pub index: Option<usize>,
}

impl Location {
    /// Parses `type` or `type:index`. The type must be a non-empty identifier
    /// (letters, digits, `_`, `-`), the index a decimal number.
    pub fn parse(s: &str) -> Result<Location, String> {
        let (ty, idx) = match s.split_once(':') {
            Some((t, i)) => (t, Some(i)),
            None => (s, None),
        };
        if ty.is_empty()
            || !ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "invalid location {s:?}: expected a device type such as `cpu` or `cuda:0`"
            ));
        }
        let index = match idx {
            None => None,
            Some(i) => Some(i.parse::<usize>().map_err(|_| {
                format!("invalid location {s:?}: the device index {i:?} is not a number")
            })?),
        };
        Ok(Location {
            device_type: ty.to_string(),
            index,
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}:{}", self.device_type, i),
            None => f.write_str(&self.device_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_locations() {
        assert_eq!(
            Location::parse("cuda:1").unwrap(),
            Location {
                device_type: "cuda".into(),
                index: Some(1)
            }
        );
        assert_eq!(Location::parse("ipu").unwrap().index, None);
        assert!(Location::parse("cuda:x").is_err());
        assert!(Location::parse("").is_err());
        assert!(Location::parse("a b").is_err());
        assert_eq!(Location::parse("wgpu:0").unwrap().to_string(), "wgpu:0");
    }

    #[test]
    fn constructors_fill_every_field() {
        let d = StorageDesc::new("3", "bfloat16", 2, 10, "cuda:1");
        assert_eq!(
            (d.key, d.dtype, d.element_size, d.nbytes, d.saved_location),
            ("3", "bfloat16", 2, 10, "cuda:1")
        );
        assert!(d.file.is_none());
        let f = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let d = d.with_file(FileSpan {
            file: &f,
            offset: 7,
        });
        assert_eq!(d.file.map(|s| s.offset), Some(7));
        assert!(d.with_file(None).file.is_none());

        let c = Capabilities::default()
            .with_max_allocation(5)
            .with_host_visible(true)
            .with_batched(true);
        assert_eq!(
            (c.max_allocation, c.host_visible, c.batched),
            (Some(5), true, true)
        );
    }

    #[test]
    fn backend_name_is_the_type_name() {
        struct Mine;
        impl Backend for Mine {
            fn device_type(&self) -> &str {
                "mine"
            }
            fn availability(&self) -> Availability {
                Availability::Unavailable("test".into())
            }
            fn materialize(
                &self,
                _: Option<usize>,
                _: &StorageDesc<'_>,
                _: &[u8],
            ) -> Result<Box<dyn DeviceStorage>, BackendError> {
                unreachable!()
            }
        }
        let b: Arc<dyn Backend> = Arc::new(Mine);
        assert!(b.backend_name().ends_with("::Mine"), "{}", b.backend_name());
        assert!(b.backend_name().starts_with("ptfile_backend::"));
    }

    #[test]
    fn host_storage_round_trip() {
        let s = HostStorage::new("cpu".into(), vec![1, 2, 3]);
        let mut out = [0u8; 3];
        s.read_to_host(&mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert!(s.read_to_host(&mut [0u8; 2]).is_err());
    }
}
