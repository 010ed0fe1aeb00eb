//! # ptfile
//!
//! Read and write PyTorch checkpoints (`torch.save` / `torch.load` files, `.pt` / `.pth` /
//! `.bin`, TorchScript archives) without Python or libtorch, byte-compatibly with PyTorch, and
//! put their storages straight into the memory of the device you ask for.
//!
//! ```no_run
//! let ckpt = ptfile::Checkpoint::open("model.pt")?;
//! for (name, t) in ckpt.root.tensors(usize::MAX) {
//!     println!("{name}: {} {:?}", t.dtype, t.shape);
//! }
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! ## Layers
//! - [`pickle`]: a complete, safe pickle machine (values only, nothing called).
//! - [`archive`]: the zip container, through one memory map ([`source`]).
//! - [`interpret`], [`model`], [`dtype`]: the torch data model (tensors as views over storages).
//! - [`Checkpoint`]: format dispatch and storage bytes; [`describe`]: descriptions.
//!
//! ## Untrusted input
//! Opening a file never executes anything from it. Globals that could only serve an attack
//! (`os.system`, `builtins.eval`, `subprocess.Popen`, `torch.load`, ...) refuse the whole file
//! ([`Error::Unsafe`]); unknown classes stay opaque data ([`model::Opaque`]). Every length,
//! count, shape, stride and offset read from a file is checked before use, and the costs a
//! file can cause are bounded by [`pickle::Limits`], [`interpret::InterpretOptions`] and
//! [`describe::DescribeOptions`] (all configurable through [`OpenOptions`]).
#![warn(missing_docs)]

pub mod describe;
mod device;
mod error;
pub mod format;
pub mod save;
mod torch;

#[cfg(feature = "conformance")]
pub use device::conformance;
pub use device::registry;
pub use torch::{dtype, model};

pub use device::load::{CpuMode, LoadReport, Loaded, Loader, StorageReport};
pub use device::map_location::MapLocation;
pub use device::registry::Registry;
pub use device::tensor::LoadedTensor;
pub use error::{Error, Result};
pub use torch::checkpoint::{
    ArchiveInfo, ByteOrder, Checkpoint, Format, LoadEndianness, OpenOptions,
};
pub use torch::dtype::DType;
pub use torch::model::{Object, Storage, Tensor};
pub use torch::tensor::{Element, TensorView};

pub use bytemuck;
pub use half;
/// The backend contract (`ptfile-backend`), re-exported: implement [`backend::Backend`] to
/// register a device of your own.
pub use ptfile_backend as backend;
