//! # ptfile
//!
//! Read and write PyTorch checkpoints (`torch.save` / `torch.load` files, `.pt` / `.pth` /
//! `.bin`, the legacy pre-1.6 format, TorchScript archives) without Python or libtorch,
//! byte-compatibly with PyTorch, and put their storages straight into the memory of the
//! device you ask for.
//!
//! ## Reading a tensor
//!
//! Open (metadata only: milliseconds, whatever the size), name a tensor, take its values.
//! Strides, offsets, byte order and conj/neg bits are resolved; storages need not be aligned.
//!
//! ```
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! let ckpt = ptfile::Checkpoint::open(path)?;
//! let w = ckpt.tensor("l0.weight")?;
//! let sum: f32 = w.to_vec::<f32>()?.iter().sum();
//! println!("{} {:?} {:?}: sum {sum}", w.name(), w.dtype(), w.shape());
//!
//! for (name, t) in ckpt.tensors() {
//!     // Zero-copy where the layout allows (contiguous, aligned, little-endian).
//!     if let Ok(xs) = t.as_slice::<f32>() {
//!         println!("{name}: {} borrowed values", xs.len());
//!     }
//! }
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! [`TensorView::to_vec`] takes the dtype's own Rust type (`f32`, [`half::bf16`], `i64`,
//! `bool`, ...; see [`Element`]); another type is an error naming both, never a silent cast.
//! [`TensorView::to_bytes`] gives row-major little-endian bytes of any dtype.
//!
//! ## Loading onto a device
//!
//! A [`Loader`] carries torch's `map_location` ([`MapLocation`]), strict mode and the
//! [`Registry`] of backends; storages whose device is missing fall back to the CPU and the
//! [`LoadReport`] says why (strict mode refuses instead, as torch does).
//!
//! ```
//! use ptfile::{Loader, MapLocation};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cuda_state_dict.pt");
//! let loaded = Loader::new()
//!     .map_location(MapLocation::table([("cuda:1", "cuda:0")]))
//!     .load(path)?;
//! for r in &loaded.report.storages {
//!     println!("{} {} -> {} {:?}", r.key, r.saved_location, r.device, r.fallback);
//! }
//! let t = loaded.tensor("l0.weight")?;
//! println!("{} on {}: {:?}", t.name(), t.device(), t.to_vec::<f32>()?);
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! A checkpoint can be a directory: [`Checkpoint::open`] takes a Hugging Face repository
//! (`model.safetensors`, `pytorch_model.bin`, or the shards an `*.index.json` names), a
//! `torch.distributed.checkpoint` directory, or an index file, and gives one checkpoint that
//! `tensor(name)` / `tensors()` work on whatever the layout. A [`DeviceMap`] on the loader
//! spreads a model over several devices, as accelerate's `device_map`.
//!
//! [`LoadedTensor::storage`] is the backend's storage: downcast it through
//! [`backend::DeviceStorage::as_any`] for the CUDA device pointer or the `wgpu::Buffer`.
//!
//! ## Saving
//!
//! [`save::StateDict`] builds a state dict from borrowed or owned buffers; what it writes
//! `torch.load(weights_only=True)` reads identically. [`save::save_checkpoint`] converts an
//! open checkpoint (to zip, legacy or `.safetensors`).
//!
//! ```
//! use ptfile::save::{StateDict, TensorData};
//! let dir = tempfile::tempdir().unwrap();
//! let weight = vec![0.5f32; 6];
//! let mut sd = StateDict::new();
//! sd.insert("fc.weight", TensorData::from_slice(&weight, &[2, 3])?)?;
//! sd.save(dir.path().join("model.pt"))?;
//! let back = ptfile::Checkpoint::open(dir.path().join("model.pt"))?;
//! assert_eq!(back.tensor("fc.weight")?.to_vec::<f32>()?, weight);
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! ## A backend of your own
//!
//! Implement [`backend::Backend`] (device type, availability, materialize a storage from
//! host bytes) and register it with a priority, as `torch.serialization.register_package`:
//!
//! ```
//! use std::sync::Arc;
//! use ptfile::backend::{Availability, Backend, BackendError, DeviceStorage, HostStorage, StorageDesc};
//!
//! struct Ipu;
//! impl Backend for Ipu {
//!     fn device_type(&self) -> &str { "ipu" }
//!     fn availability(&self) -> Availability { Availability::Available { devices: 1 } }
//!     fn materialize(&self, _index: Option<usize>, _desc: &StorageDesc<'_>, bytes: &[u8])
//!         -> Result<Box<dyn DeviceStorage>, BackendError> {
//!         Ok(Box::new(HostStorage::new("ipu".into(), bytes.to_vec())))
//!     }
//! }
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/custom_ipu.pt");
//! let registry = ptfile::Registry::default().with(11, Arc::new(Ipu))?;
//! let loaded = ptfile::Loader::new().registry(Arc::new(registry)).load(path)?;
//! assert!(loaded.report.storages.iter().any(|r| r.device == "ipu"));
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! `examples/custom_backend.rs` is a complete one; the `ptfile::conformance` suite (feature
//! `conformance`) checks any backend against real torch files.
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `cli` | yes | the `ptfile` command (clap, indicatif); the library needs neither |
//! | `cuda` | | the CUDA backend (cudarc; the driver is loaded at run time, so it builds anywhere) |
//! | `wgpu` | | the wgpu backend (Vulkan, Metal, DX12) |
//! | `conformance` | | the public conformance suite for backends |
//! | `dlpack` | | `TensorView::to_dlpack`, `Loaded::storage_to_dlpack`: versioned DLPack tensors, zero-copy |
//! | `ndarray` | | `TensorView::to_ndarray` (a copy) and `TensorView::as_array_view` (zero-copy, strided) |
//! | `candle` | | `ptfile::candle`: `load` (every tensor as a `candle_core::Tensor`) and a lazy `var_builder` for candle-nn models (CPU candle; candle's own `cuda` feature cannot share a build with ptfile's `cuda`) |
//!
//! ## Layers
//!
//! - [`format`](mod@format): containers and encodings, knowing nothing of torch: the byte source (one
//!   file map), the pickle machine ([`format::pickle`]: values only, nothing called), the zip
//!   reader ([`format::zip`]), the tar reader.
//! - the torch data model ([`model`], [`dtype`], [`Checkpoint`], [`TensorView`]): rebuild
//!   functions interpreted over pickle values, storages and views, element access, the
//!   readers of each checkpoint format.
//! - devices ([`Registry`], [`registry`], [`MapLocation`], [`Loader`]): never see pickle.
//! - [`save`] and [`describe`] sit on top.
//!
//! ## Untrusted input
//!
//! Opening a file never executes anything from it. Globals that could only serve an attack
//! (`os.system`, `builtins.eval`, `subprocess.Popen`, `torch.load`, ...) refuse the whole file
//! ([`Error::Unsafe`]); unknown classes stay opaque data ([`model::Opaque`]). Every length,
//! count, shape, stride and offset read from a file is checked before use, and the costs a
//! file can cause are bounded by [`format::pickle::Limits`], [`InterpretOptions`] and
//! [`describe::DescribeOptions`] (all configurable through [`OpenOptions`]).
//!
//! ## Files that change while open
//!
//! A [`Checkpoint`] maps its file read-only, and storage bytes are read through that map
//! (or, when loading, with `pread` from the same file). The file must not be truncated or
//! rewritten in place while a `Checkpoint`, a [`Loaded`] in `CpuMode::Mapped`, or a
//! [`TensorView`] of it is alive: `torch.save(path)` truncates and rewrites the same inode,
//! and a reader of a truncated map is killed by `SIGBUS`. Write new checkpoints to a new
//! file and rename it over the old one (what ptfile's own writers do), or load with the
//! default `CpuMode::Owned` and drop the `Checkpoint` before the file is rewritten.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod describe;
mod device;
mod error;
pub mod format;
mod interop;
pub mod save;
mod torch;
mod watch;

#[cfg(feature = "conformance")]
pub use device::conformance;
pub use device::registry;
#[cfg(feature = "candle")]
pub use interop::candle;
#[cfg(feature = "dlpack")]
pub use interop::dlpack;
pub use torch::interpret::InterpretOptions;
pub use torch::{dtype, model};

pub use device::device_map;
pub use device::device_map::DeviceMap;
pub use device::load::{CpuMode, LoadReport, Loaded, Loader, StorageReport};
pub use device::map_location::MapLocation;
pub use device::registry::Registry;
pub use device::tensor::LoadedTensor;
pub use error::{one_line, Error, Result};
pub use torch::checkpoint::{
    ArchiveInfo, ByteOrder, Checkpoint, Format, LoadEndianness, OpenOptions,
};
pub use torch::dtype::DType;
pub use torch::model::{Object, Storage, Tensor};
pub use torch::tensor::{Element, TensorView};
pub use watch::FileWatch;

pub use bytemuck;
pub use half;
/// The ndarray crate (feature `ndarray`), re-exported: the version
/// [`TensorView::to_ndarray`] and [`TensorView::as_array_view`] return arrays of.
#[cfg(feature = "ndarray")]
pub use ndarray;
/// The backend contract (`ptfile-backend`), re-exported: implement [`backend::Backend`] to
/// register a device of your own.
pub use ptfile_backend as backend;
