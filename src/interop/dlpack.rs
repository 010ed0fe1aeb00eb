//! DLPack export (feature `dlpack`): a tensor or a whole storage as a versioned DLPack tensor
//! (`DLManagedTensorVersioned`, DLPack 1.x), zero-copy over the memory that holds it (the
//! read-only file map, an owned CPU buffer, a CUDA allocation), its owner kept alive until the
//! consumer calls the deleter.
//!
//! ```
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! let ckpt = ptfile::Checkpoint::open(path)?;
//! let t = ckpt.tensor("l0.weight")?.to_dlpack()?;
//! let raw = t.as_raw();
//! assert_eq!(raw.dl_tensor.ndim, 2);
//! assert_eq!(raw.flags & ptfile::dlpack::FLAG_READ_ONLY, ptfile::dlpack::FLAG_READ_ONLY);
//! // Hand it to a consumer with `into_raw()` (it calls the deleter), or drop it here.
//! drop(t);
//! # Ok::<(), ptfile::Error>(())
//! ```
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::device::load::Loaded;
use crate::error::{Error, Result};
use crate::torch::dtype::{DType, Float8, Kind, Part};
use crate::torch::tensor::{Anchor, TensorView};

/// The DLPack version this module produces.
pub const VERSION: DLPackVersion = DLPackVersion { major: 1, minor: 1 };
/// `DLPACK_FLAG_BITMASK_READ_ONLY`: the consumer must not write (the file map).
pub const FLAG_READ_ONLY: u64 = 1 << 0;
/// `DLPACK_FLAG_BITMASK_IS_COPIED`: the producer made a copy the consumer owns.
pub const FLAG_IS_COPIED: u64 = 1 << 1;
/// `kDLCPU`.
pub const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`.
pub const DEVICE_CUDA: i32 = 2;

/// `DLPackVersion`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLPackVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDevice {
    /// `DLDeviceType` (`kDLCPU` = 1, `kDLCUDA` = 2, ...).
    pub device_type: i32,
    /// The device index.
    pub device_id: i32,
}

/// `DLDataType`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDataType {
    /// `DLDataTypeCode` (`kDLInt` 0, `kDLUInt` 1, `kDLFloat` 2, `kDLBfloat` 4, `kDLComplex` 5,
    /// `kDLBool` 6, float8 codes 7-14).
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1).
    pub lanes: u16,
}

/// `DLTensor`.
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    /// Start of the memory (before `byte_offset`).
    pub data: *mut c_void,
    /// Where it lives.
    pub device: DLDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// Element type.
    pub dtype: DLDataType,
    /// Sizes (`ndim` of them).
    pub shape: *mut i64,
    /// Strides in elements (`ndim` of them).
    pub strides: *mut i64,
    /// Offset of the first element from `data`, in bytes.
    pub byte_offset: u64,
}

/// `DLManagedTensorVersioned`.
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensorVersioned {
    /// The DLPack version.
    pub version: DLPackVersion,
    /// The producer's context.
    pub manager_ctx: *mut c_void,
    /// Frees the tensor; called exactly once, by whoever owns it.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// The tensor.
    pub dl_tensor: DLTensor,
}

/// The allocation behind one exported tensor: the managed tensor first (its address is the
/// allocation's), then what its pointers point into and what keeps the data alive.
#[repr(C)]
struct Managed {
    tensor: DLManagedTensorVersioned,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _owner: Owner,
}

/// What keeps an exported tensor's memory alive.
enum Owner {
    /// The memory of a checkpoint or a load (a file map, a device storage).
    Shared(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>),
    /// A copy made for the export (resolved conj/neg bits, a byte-swapped file).
    Copy(#[allow(dead_code)] Vec<u8>),
}

/// Exported tensors whose deleter has not run yet (for leak checks).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many exported DLPack tensors are alive (made and not yet deleted), in this process.
pub fn live_tensors() -> usize {
    LIVE.load(Ordering::SeqCst)
}

unsafe extern "C" fn delete(t: *mut DLManagedTensorVersioned) {
    if t.is_null() {
        return;
    }
    // SAFETY: every DLManagedTensorVersioned this module hands out is the first field of a
    // `Box<Managed>` (`repr(C)`), leaked by `DlpackTensor::new`; its deleter runs once (the
    // DLPack contract: only the owner calls it, once), so the box is reclaimed exactly once.
    drop(unsafe { Box::from_raw(t.cast::<Managed>()) });
    LIVE.fetch_sub(1, Ordering::SeqCst);
}

/// An exported DLPack tensor, owned: dropping it calls the deleter; [`DlpackTensor::into_raw`]
/// gives ownership to a consumer (a DLPack capsule), which calls the deleter itself.
#[derive(Debug)]
pub struct DlpackTensor {
    ptr: NonNull<DLManagedTensorVersioned>,
}

// SAFETY: the tensor owns its allocation and what keeps its memory alive (`Arc`s of `Send +
// Sync` owners, or a `Vec<u8>`); nothing in it is tied to a thread.
unsafe impl Send for DlpackTensor {}

impl DlpackTensor {
    #[allow(clippy::too_many_arguments)]
    fn new(
        data: u64,
        device: DLDevice,
        dtype: DLDataType,
        shape: Vec<i64>,
        strides: Vec<i64>,
        byte_offset: u64,
        flags: u64,
        owner: Owner,
    ) -> DlpackTensor {
        let ndim = shape.len() as i32;
        let mut m = Box::new(Managed {
            tensor: DLManagedTensorVersioned {
                version: VERSION,
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete),
                flags,
                dl_tensor: DLTensor {
                    data: data as usize as *mut c_void,
                    device,
                    ndim,
                    dtype,
                    shape: std::ptr::null_mut(),
                    strides: std::ptr::null_mut(),
                    byte_offset,
                },
            },
            shape,
            strides,
            _owner: owner,
        });
        m.tensor.dl_tensor.shape = m.shape.as_mut_ptr();
        m.tensor.dl_tensor.strides = m.strides.as_mut_ptr();
        let raw = Box::into_raw(m);
        // SAFETY: `raw` is a fresh, non-null box allocation; the managed tensor is its first
        // field (`repr(C)`), so the two addresses are the same.
        unsafe { (*raw).tensor.manager_ctx = raw.cast() };
        LIVE.fetch_add(1, Ordering::SeqCst);
        DlpackTensor {
            // SAFETY: from `Box::into_raw`, never null.
            ptr: unsafe { NonNull::new_unchecked(raw.cast()) },
        }
    }

    /// The managed tensor.
    pub fn as_raw(&self) -> &DLManagedTensorVersioned {
        // SAFETY: `ptr` is the live allocation this value owns until it is dropped or given
        // away with `into_raw`.
        unsafe { self.ptr.as_ref() }
    }

    /// Gives the tensor away: the receiver must call its `deleter` exactly once.
    pub fn into_raw(self) -> *mut DLManagedTensorVersioned {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for DlpackTensor {
    fn drop(&mut self) {
        // SAFETY: this value still owns the tensor (it was not given away with `into_raw`),
        // and `delete` is its deleter.
        unsafe { delete(self.ptr.as_ptr()) }
    }
}

/// DLPack's type for a dtype, or an error naming the dtype.
pub fn dl_dtype(d: DType) -> Result<DLDataType> {
    let bits = (d.element_size() * 8) as u8;
    let code = match d.kind() {
        Kind::Int => 0,
        Kind::UInt => 1,
        Kind::Float => 2,
        Kind::BFloat => 4,
        Kind::Complex(Part::F16 | Part::F32 | Part::F64) => 5,
        Kind::Bool => 6,
        Kind::Float8(f) => match f {
            Float8::E4M3FN => 10,
            Float8::E4M3FNUZ => 11,
            Float8::E5M2 => 12,
            Float8::E5M2FNUZ => 13,
            Float8::E8M0FNU => 14,
        },
        _ => {
            return Err(Error::Unsupported {
                what: format!("DLPack has no type for {d}"),
                location: "to_dlpack".into(),
                hint: "read it with to_bytes() instead".into(),
            })
        }
    };
    Ok(DLDataType {
        code,
        bits,
        lanes: 1,
    })
}

fn dl_device(device: (&'static str, i32)) -> Result<DLDevice> {
    let device_type = match device.0 {
        "cpu" => DEVICE_CPU,
        "cuda" => DEVICE_CUDA,
        other => {
            return Err(Error::Unsupported {
                what: format!("DLPack export of {other} storages"),
                location: "to_dlpack".into(),
                hint: "load onto the CPU or CUDA, or read with to_vec()".into(),
            })
        }
    };
    Ok(DLDevice {
        device_type,
        device_id: device.1,
    })
}

impl TensorView<'_> {
    /// The tensor as a versioned DLPack tensor, strides in elements. Zero-copy over the
    /// memory that holds it (flag `READ_ONLY` for the file map and mapped loads); a conj/neg
    /// view or a big-endian file's tensor is a resolved CPU copy (flag `IS_COPIED`). Tensors on
    /// devices DLPack cannot name here (wgpu, custom backends) and dtypes it lacks (quantized,
    /// bits types, bcomplex32) are errors.
    pub fn to_dlpack(&self) -> Result<DlpackTensor> {
        let t = self.tensor();
        let dtype = dl_dtype(t.dtype)?;
        let shape = t.shape.clone();
        let plain = crate::torch::elements::Resolver::new(t).is_none();
        let anchor: Option<Anchor> = match t.storage {
            Some(i) if plain => self.src.anchor(i),
            _ => None,
        };
        let es = t.dtype.element_size() as u64;
        if let Some(a) = anchor {
            let flags = if a.read_only { FLAG_READ_ONLY } else { 0 };
            return Ok(DlpackTensor::new(
                a.addr,
                dl_device(a.device)?,
                dtype,
                shape,
                t.stride.clone(),
                (t.storage_offset.max(0) as u64).saturating_mul(es),
                flags,
                Owner::Shared(a.owner),
            ));
        }
        if let Some(i) = t.storage {
            let place = self.src.place(i);
            if place != "cpu" && place != "the file" {
                return Err(Error::View {
                    name: self.name().to_string(),
                    what: format!(
                        "a conjugate or negative view on {place} cannot be exported without a copy; resolve it in torch or read it with to_vec()"
                    ),
                });
            }
        }
        // A resolved, contiguous copy on the CPU.
        let bytes = self.to_bytes()?.into_owned();
        let strides = crate::torch::model::contiguous_strides(&shape);
        let addr = if bytes.is_empty() {
            // A valid, aligned address for a tensor without elements.
            std::ptr::NonNull::<u64>::dangling().as_ptr() as u64
        } else {
            bytes.as_ptr() as u64
        };
        Ok(DlpackTensor::new(
            addr,
            DLDevice {
                device_type: DEVICE_CPU,
                device_id: 0,
            },
            dtype,
            shape,
            strides,
            0,
            FLAG_IS_COPIED,
            Owner::Copy(bytes),
        ))
    }
}

impl Loaded {
    /// Storage `i` as a one-dimensional `uint8` DLPack tensor over its whole memory: what a
    /// consumer needs to rebuild every view of the storage as a view of one buffer (torch:
    /// `torch.from_dlpack(...)` then `set_` / `as_strided`), so sharing survives. Zero-copy;
    /// `READ_ONLY` for mapped storages.
    pub fn storage_to_dlpack(&self, i: usize) -> Result<DlpackTensor> {
        use crate::torch::tensor::ViewSource;
        let n = self
            .storage(i)
            .ok_or_else(|| Error::Usage(format!("no storage {i}")))?
            .nbytes();
        let a = self.anchor(i).ok_or_else(|| Error::Unsupported {
            what: format!(
                "DLPack export of storage {i} on {}",
                self.storage(i).map(|s| s.location()).unwrap_or_default()
            ),
            location: "storage_to_dlpack".into(),
            hint: "load onto the CPU or CUDA".into(),
        })?;
        let flags = if a.read_only { FLAG_READ_ONLY } else { 0 };
        let addr = if n == 0 && a.addr == 0 {
            std::ptr::NonNull::<u64>::dangling().as_ptr() as u64
        } else {
            a.addr
        };
        Ok(DlpackTensor::new(
            addr,
            dl_device(a.device)?,
            DLDataType {
                code: 1,
                bits: 8,
                lanes: 1,
            },
            vec![n as i64],
            vec![1],
            0,
            flags,
            Owner::Shared(a.owner),
        ))
    }
}
