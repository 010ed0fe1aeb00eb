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

pub mod archive;
pub mod checkpoint;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod describe;
pub mod dtype;
mod error;
pub mod host;
pub mod interpret;
pub mod legacy;
pub mod load;
pub mod map_location;
pub mod model;
pub mod modules;
pub mod pickle;
pub mod registry;
pub mod safety;
pub mod save;
pub mod source;
pub mod sparse;
pub mod torchscript;

pub use checkpoint::{ArchiveInfo, ByteOrder, Checkpoint, Format, LoadEndianness, OpenOptions};
pub use dtype::DType;
pub use error::{Error, Result};
pub use load::{CpuMode, LoadReport, Loaded, Loader, StorageReport};
pub use map_location::MapLocation;
pub use model::{Object, Storage, Tensor};
pub use registry::Registry;
