//! The tensor API: [`TensorView`], one tensor of a checkpoint by name, with its elements in
//! row-major order (strides, offset, byte order and conj/neg bits resolved) as typed values,
//! as bytes, or borrowed where the layout allows; and [`Element`], the Rust element types.

use std::borrow::Cow;
use std::sync::Arc;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::error::{Error, Result};
use crate::torch::checkpoint::{ByteOrder, Checkpoint};
use crate::torch::dtype::DType;
use crate::torch::elements::{for_each_element, Resolver};
use crate::torch::model::Tensor;
use crate::torch::walk::TensorIndex;

mod sealed {
    pub trait Sealed {}
}

/// A Rust element type with a torch dtype: `f32`, `f64`, [`half::f16`], [`half::bf16`],
/// `i8`, `i16`, `i32`, `i64`, `u8`, `u16`, `u32`, `u64`, `bool`.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// torch's name of the dtype (`float32`).
    const DTYPE: &'static str;
    /// The elements' bytes in host order, without copying.
    fn as_bytes(s: &[Self]) -> &[u8];
    /// The torch dtype.
    fn dtype() -> DType {
        DType::from_name(Self::DTYPE).unwrap_or(DType::UINT8)
    }
    /// One element from its little-endian bytes (`b.len()` is the element size).
    #[doc(hidden)]
    fn from_le(b: &[u8]) -> Self;
    /// The bytes as elements without a copy: None unless `b` is aligned for `Self`, a whole
    /// number of elements, and (bool) every byte is 0 or 1.
    #[doc(hidden)]
    fn cast(b: &[u8]) -> Option<&[Self]>;
}

macro_rules! pod_element {
    ($($t:ty => $n:expr),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: &'static str = $n;
            fn as_bytes(s: &[Self]) -> &[u8] {
                bytemuck::cast_slice(s)
            }
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn cast(b: &[u8]) -> Option<&[Self]> {
                bytemuck::try_cast_slice(b).ok()
            }
        }
    )*};
}

pod_element!(f32 => "float32", f64 => "float64", i8 => "int8", i16 => "int16", i32 => "int32",
    i64 => "int64", u8 => "uint8", u16 => "uint16", u32 => "uint32", u64 => "uint64");

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: &'static str = "bool";
    fn as_bytes(s: &[Self]) -> &[u8] {
        bytemuck::cast_slice(s)
    }
    fn from_le(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn cast(b: &[u8]) -> Option<&[Self]> {
        bytemuck::checked::try_cast_slice(b).ok()
    }
}

macro_rules! half_element {
    ($($t:ty => $n:expr),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: &'static str = $n;
            fn as_bytes(s: &[Self]) -> &[u8] {
                bytemuck::cast_slice(s.reinterpret_cast())
            }
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes([b[0], b[1]])
            }
            fn cast(b: &[u8]) -> Option<&[Self]> {
                let bits: &[u16] = bytemuck::try_cast_slice(b).ok()?;
                Some(bits.reinterpret_cast())
            }
        }
    )*};
}

half_element!(half::f16 => "float16", half::bf16 => "bfloat16");

/// The Rust element type of a dtype, for messages.
fn rust_name(d: DType) -> &'static str {
    match d.name() {
        "float32" => "f32",
        "float64" => "f64",
        "float16" => "half::f16",
        "bfloat16" => "half::bf16",
        "int8" => "i8",
        "int16" => "i16",
        "int32" => "i32",
        "int64" => "i64",
        "uint8" => "u8",
        "uint16" => "u16",
        "uint32" => "u32",
        "uint64" => "u64",
        "bool" => "bool",
        _ => "?",
    }
}

/// Where a view's storage bytes come from: the file of a checkpoint, or the device memory
/// of a load. Bytes are little-endian whatever the file's order.
pub(crate) trait ViewSource: Sync {
    /// Little-endian bytes of storage `i` (borrowed when they are already in memory that
    /// way, read back or byte-swapped otherwise).
    fn le_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
    /// Little-endian bytes of storage `i` that can be borrowed, if any.
    fn borrowed(&self, i: usize) -> Option<&[u8]>;
    /// Where storage `i` lives, for messages (`the file`, `cuda:0`).
    fn place(&self, i: usize) -> String;
    /// What keeps storage `i`'s little-endian bytes alive where they are, for hand-offs
    /// that outlive the view (DLPack); None where they are not in memory that way.
    #[allow(dead_code)]
    fn anchor(&self, i: usize) -> Option<Anchor> {
        let _ = i;
        None
    }
}

/// Storage bytes in place, and what keeps them there: the address of the storage's first
/// byte on its device, and an owner that keeps that memory alive while it is held.
#[allow(dead_code)]
pub(crate) struct Anchor {
    /// Keeps the memory alive (a file map, a device storage).
    pub(crate) owner: Arc<dyn std::any::Any + Send + Sync>,
    /// Address of the storage's first byte (a host address, or a device address).
    pub(crate) addr: u64,
    /// Where: (device type, index), with the type as a location names it (`cpu`, `cuda`).
    pub(crate) device: (&'static str, i32),
    /// Whether writes are forbidden (a read-only map).
    pub(crate) read_only: bool,
}

impl ViewSource for Checkpoint {
    fn le_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        self.storage_bytes(i)
    }
    fn borrowed(&self, i: usize) -> Option<&[u8]> {
        if self.byteorder == ByteOrder::Little {
            self.raw_storage_bytes(i).ok()
        } else {
            None
        }
    }
    fn place(&self, _i: usize) -> String {
        "the file".into()
    }
    fn anchor(&self, i: usize) -> Option<Anchor> {
        let b = self.borrowed(i)?;
        Some(Anchor {
            owner: Arc::new(self.storage_source(i).clone()),
            addr: b.as_ptr() as u64,
            device: ("cpu", 0),
            read_only: true,
        })
    }
}

/// One tensor of a checkpoint: its dtype, shape, strides and offset, and its elements.
///
/// Element access resolves everything torch resolves when it hands out values: strides and
/// the storage offset (row-major order), the file's byte order, and the conjugate / negative
/// bits of conj and neg views. Storages need not be aligned (legacy files place them at odd
/// offsets): [`TensorView::to_vec`] and [`TensorView::to_bytes`] work on any layout;
/// [`TensorView::as_slice`] borrows only when the layout allows.
///
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
/// let ckpt = ptfile::Checkpoint::open(path)?;
/// let w = ckpt.tensor("l0.weight")?;
/// assert_eq!(w.dtype(), ptfile::DType::FLOAT32);
/// let values: Vec<f32> = w.to_vec()?;
/// assert_eq!(values.len(), w.numel());
/// # Ok::<(), ptfile::Error>(())
/// ```
#[derive(Clone)]
pub struct TensorView<'a> {
    name: Arc<str>,
    tensor: Arc<Tensor>,
    pub(crate) src: &'a dyn ViewSource,
}

impl std::fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("dtype", &self.tensor.dtype)
            .field("shape", &self.tensor.shape)
            .field("strides", &self.tensor.stride)
            .field("storage_offset", &self.tensor.storage_offset)
            .finish()
    }
}

impl<'a> TensorView<'a> {
    pub(crate) fn new(name: Arc<str>, tensor: Arc<Tensor>, src: &'a dyn ViewSource) -> Self {
        TensorView { name, tensor, src }
    }

    /// The tensor's name (its dotted key path).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.tensor.dtype
    }
    /// Sizes, one per dimension.
    pub fn shape(&self) -> &[i64] {
        &self.tensor.shape
    }
    /// Strides in elements, one per dimension.
    pub fn strides(&self) -> &[i64] {
        &self.tensor.stride
    }
    /// Offset of the first element in the storage, in elements.
    pub fn storage_offset(&self) -> i64 {
        self.tensor.storage_offset
    }
    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        usize::try_from(self.tensor.numel()).unwrap_or(usize::MAX)
    }
    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.tensor.is_contiguous()
    }
    /// The tensor as the data model holds it (requires_grad, parameter flag, metadata).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    fn view_err(&self, what: impl Into<String>) -> Error {
        Error::View {
            name: self.name.to_string(),
            what: what.into(),
        }
    }

    fn storage_index(&self) -> Result<usize> {
        self.tensor.storage.ok_or_else(|| {
            self.view_err(format!(
                "it has no storage (a tensor on {}): it has a shape and dtype but no values",
                self.tensor.device.as_deref().unwrap_or("meta")
            ))
        })
    }

    fn check_type<T: Element>(&self) -> Result<()> {
        if T::dtype() == self.tensor.dtype {
            return Ok(());
        }
        Err(Error::DTypeMismatch {
            name: self.name.to_string(),
            dtype: self.tensor.dtype.name().to_string(),
            requested: T::DTYPE.to_string(),
            rust: rust_name(self.tensor.dtype),
        })
    }

    /// Whether the elements are exactly one run of the storage's bytes, unchanged.
    fn is_plain_run(&self) -> bool {
        self.tensor.is_contiguous() && Resolver::new(&self.tensor).is_none()
    }

    /// The element bytes in row-major order, little-endian, with strides, offset, byte order
    /// and conj/neg bits resolved. Borrowed (no copy) when the view is contiguous, has no
    /// conj/neg bit and its storage is little-endian in memory already.
    pub fn to_bytes(&self) -> Result<Cow<'a, [u8]>> {
        let es = self.tensor.dtype.element_size();
        let n = self.tensor.numel() as usize;
        if n == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let i = self.storage_index()?;
        let len = n.saturating_mul(es);
        let start = (self.tensor.storage_offset.max(0) as usize).saturating_mul(es);
        let end = start.saturating_add(len);
        let past = || self.view_err("its elements lie outside its storage");
        if self.is_plain_run() {
            if let Some(b) = self.src.borrowed(i) {
                return b.get(start..end).map(Cow::Borrowed).ok_or_else(past);
            }
            let all = self.src.le_bytes(i)?;
            return all
                .get(start..end)
                .map(|b| Cow::Owned(b.to_vec()))
                .ok_or_else(past);
        }
        let all = self.src.le_bytes(i)?;
        gather(&self.tensor, &all).map(Cow::Owned).ok_or_else(past)
    }

    /// The elements in row-major order as `T`, which must be the dtype's own Rust type
    /// (`f32` for float32, [`half::bf16`] for bfloat16, ...); another type is an error naming
    /// both (ptfile never casts silently). Works on every layout, aligned or not.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_type::<T>()?;
        let es = self.tensor.dtype.element_size();
        let bytes = self.to_bytes()?;
        if let Some(s) = T::cast(&bytes).filter(|_| cfg!(target_endian = "little")) {
            return Ok(s.to_vec());
        }
        Ok(bytes.chunks_exact(es).map(T::from_le).collect())
    }

    /// The elements borrowed in place, without a copy: only when the view is contiguous, has
    /// no conj/neg bit, and its bytes are in host memory, little-endian and aligned for `T`.
    /// Otherwise an error that says why; [`TensorView::to_vec`] works in every case.
    pub fn as_slice<T: Element>(&self) -> Result<&'a [T]> {
        self.check_type::<T>()?;
        let n = self.tensor.numel() as usize;
        if n == 0 {
            return Ok(&[]);
        }
        let i = self.storage_index()?;
        let use_vec = "; use to_vec, which copies";
        if !self.tensor.is_contiguous() {
            return Err(self.view_err(format!(
                "it is not contiguous (shape {:?}, strides {:?}){use_vec}",
                self.tensor.shape, self.tensor.stride
            )));
        }
        if Resolver::new(&self.tensor).is_some() {
            return Err(self.view_err(format!(
                "it is a conjugate or negative view: its values differ from its storage's{use_vec}"
            )));
        }
        if cfg!(target_endian = "big") {
            return Err(self.view_err(format!(
                "this machine is big-endian and storages are little-endian{use_vec}"
            )));
        }
        let Some(all) = self.src.borrowed(i) else {
            return Err(self.view_err(format!(
                "its storage on {} is not little-endian host memory{use_vec}",
                self.src.place(i)
            )));
        };
        let es = self.tensor.dtype.element_size();
        let start = (self.tensor.storage_offset.max(0) as usize).saturating_mul(es);
        let bytes = all
            .get(start..start.saturating_add(n.saturating_mul(es)))
            .ok_or_else(|| self.view_err("its elements lie outside its storage"))?;
        T::cast(bytes).ok_or_else(|| {
            self.view_err(format!(
                "its data at address {:#x} is not aligned to {} bytes (legacy files place storages at any offset){use_vec}",
                bytes.as_ptr() as usize,
                std::mem::align_of::<T>()
            ))
        })
    }
}

impl Checkpoint {
    pub(crate) fn index(&self) -> &TensorIndex {
        self.tensor_index
            .get_or_init(|| Arc::new(TensorIndex::build(&self.root)))
    }

    /// The tensor named `name`: a dotted key path as [`Checkpoint::tensors`] yields it
    /// (`l0.weight`, `model.layers.0.weight`, list items by index). An unknown name is an
    /// [`Error::NoTensor`] that lists a few close names. The names are indexed on first use
    /// (from [`Checkpoint::root`] as it is then).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (n, t) = self.index().get(name)?;
        Ok(TensorView::new(n.clone(), t.clone(), self))
    }

    /// Every dense tensor with its name, in the order of the object tree (state-dict order).
    /// Whole pickled modules and TorchScript archives give their state dicts' names.
    pub fn tensors(&self) -> impl Iterator<Item = (String, TensorView<'_>)> + '_ {
        self.index()
            .list
            .iter()
            .map(move |(n, t)| (n.to_string(), TensorView::new(n.clone(), t.clone(), self)))
    }
}

/// The elements of `t` in row-major order, little-endian, conj/neg bits resolved, from its
/// storage's little-endian bytes `all`; None when an element lies outside them.
pub(crate) fn gather(t: &Tensor, all: &[u8]) -> Option<Vec<u8>> {
    let es = t.dtype.element_size();
    let resolver = Resolver::new(t);
    let mut out = Vec::with_capacity((t.numel() as usize).saturating_mul(es));
    let mut missing = false;
    let mut k = 0u64;
    for_each_element(t, |o| {
        match all.get(o..o.saturating_add(es)) {
            Some(b) => {
                let at = out.len();
                out.extend_from_slice(b);
                if let Some(r) = &resolver {
                    r.apply(&mut out[at..], k, o / es.max(1));
                }
            }
            None => missing = true,
        }
        k += 1;
    });
    (!missing).then_some(out)
}
